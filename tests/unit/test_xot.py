"""RFC 1613 XOT framing: round trips in any chunking, bounded, one error type."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs import x25, xot
from passerelle.codecs.xot import XotDecoder, XotError

packets = st.binary(min_size=3, max_size=600)


@given(
    items=st.lists(packets, max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_round_trip_in_any_chunks(items: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(xot.encode(p) for p in items)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = XotDecoder(max_packet=600)
    out = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed(stream[a:b])
    assert out == items
    assert decoder.pending == 0


def test_header_layout() -> None:
    assert xot.encode(b"\x10\x01\x0b") == b"\x00\x00\x00\x03\x10\x01\x0b"


@pytest.mark.parametrize(
    ("data", "diagnostic"),
    [
        (b"\x00\x01\x00\x03abc", x25.DIAG_MISCELLANEOUS),  # version 1
        (b"\x00\x00\x00\x02ab", x25.DIAG_PACKET_TOO_SHORT),  # shorter than a header
        (b"\x00\x00\x00\x00", x25.DIAG_PACKET_TOO_SHORT),
        (b"\x00\x00\x10\x00", x25.DIAG_PACKET_TOO_LONG),  # 4096 > the 600 we allow
    ],
)
def test_bad_headers(data: bytes, diagnostic: int) -> None:
    decoder = XotDecoder(max_packet=600)
    with pytest.raises(XotError) as caught:
        decoder.feed(data)
    assert caught.value.diagnostic == diagnostic
    assert isinstance(caught.value, x25.X25Error)


def test_oversize_refused_before_its_bytes_arrive() -> None:
    with pytest.raises(XotError):
        XotDecoder(max_packet=100).feed(b"\x00\x00\xff\xff")


def test_encode_bounds() -> None:
    with pytest.raises(XotError):
        xot.encode(b"ab")
    with pytest.raises(XotError):
        xot.encode(b"x" * 65_536)
    with pytest.raises(ValueError):
        XotDecoder(max_packet=2)


@given(st.lists(st.binary(max_size=40), max_size=30))
def test_random_bytes_only_xot_error(chunks: list[bytes]) -> None:
    decoder = XotDecoder(max_packet=256)
    for chunk in chunks:
        try:
            for packet in decoder.feed(chunk):
                assert 3 <= len(packet) <= 256
        except XotError:
            return
