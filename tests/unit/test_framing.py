"""Length-prefix framers (cbcom: 4 bytes, iso: 2 bytes), fed in arbitrary chunks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs.framing import (
    FramingError,
    LengthPrefixFramer,
    WireError,
    cbcom_framer,
    frame2,
    frame4,
    iso_framer,
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(
    header=st.sampled_from([2, 4]),
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    kinds=st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=1),
)
def test_round_trip_in_any_chunks(header: int, payloads: list[bytes], cuts: list[int],
                                  kinds: list[type]) -> None:
    """Whatever the cuts (several frames and a partial one in a chunk, a header split in
    two) and whatever buffer type a chunk comes in, the frames come out whole, in order."""
    framer = LengthPrefixFramer(header, 1000)
    stream = b"".join(framer.frame(p) for p in payloads)
    received = []
    for chunk, kind in zip(_chunks(stream, cuts), itertools.cycle(kinds)):
        received += framer.feed(kind(chunk))
    assert received == payloads
    assert all(frame.__class__ is bytes for frame in received)
    assert framer.pending == 0


def test_helpers_frame_as_documented() -> None:
    assert frame4(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame2(b"abc") == b"\x00\x03abc"
    assert cbcom_framer().feed(b"\x00\x00\x00\x02hi\x00\x00") == [b"hi"]
    assert iso_framer().feed(b"\x00\x01x\x00\x00") == [b"x", b""]
    with pytest.raises(FramingError):
        frame2(b"x" * 70_000)


def test_partial_frame_waits() -> None:
    framer = LengthPrefixFramer(4, 100)
    assert framer.feed(b"\x00\x00") == []
    assert framer.feed(b"\x00\x05ab") == []
    assert framer.pending == 6
    assert framer.feed(b"cde\x00") == [b"abcde"]
    assert framer.pending == 1


def test_oversize_is_an_error_at_once_not_a_wait() -> None:
    framer = LengthPrefixFramer(4, 100)
    with pytest.raises(FramingError, match="exceeds"):
        framer.feed(b"\x00\x00\x00\x65")  # 101 announced, no payload sent yet
    framer = LengthPrefixFramer(2, 10)
    with pytest.raises(FramingError):
        framer.feed(b"\x00\x03abc\xff\xff")  # the good frame is lost with the stream
    with pytest.raises(FramingError):
        framer.frame(b"x" * 11)


def test_bad_construction() -> None:
    with pytest.raises(ValueError):
        LengthPrefixFramer(3)
    with pytest.raises(ValueError):
        LengthPrefixFramer(2, 70_000)


@given(header=st.sampled_from([2, 4]), data=st.lists(st.binary(max_size=64), max_size=20))
def test_garbage_gives_frames_or_framing_error_only(header: int, data: list[bytes]) -> None:
    framer = LengthPrefixFramer(header, 256)
    for chunk in data:
        try:
            for frame in framer.feed(chunk):
                assert len(frame) <= 256
        except WireError:
            break
