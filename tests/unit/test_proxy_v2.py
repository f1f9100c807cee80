"""PROXY protocol v2 header: addresses, need-more-bytes on every prefix, bounded errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs.framing import WireError
from passerelle.codecs.proxy_v2 import (
    SIGNATURE,
    ProxyHeaderError,
    build_proxy_header,
    parse_proxy_header,
)


def test_ipv4_header_and_the_bytes_after_it() -> None:
    wire = build_proxy_header(("192.0.2.10", 51000), ("127.0.0.1", 4000), ((0x04, b"x"),))
    parsed = parse_proxy_header(wire + b"\x00\x00\x00\x05CBCOM")
    assert parsed is not None
    header, used = parsed
    assert used == len(wire) == 16 + 12 + 4
    assert (header.command, header.family, header.protocol) == ("PROXY", "INET", "STREAM")
    assert header.source_address == ("192.0.2.10", 51000)
    assert header.source == "192.0.2.10:51000"
    assert header.destination == "127.0.0.1:4000"
    assert header.tlvs == ((0x04, b"x"),)


def test_ipv6_header() -> None:
    header, used = parse_proxy_header(build_proxy_header(("2001:db8::1", 1), ("::1", 1998)))
    assert used == 16 + 36
    assert header.family == "INET6"
    assert header.source == "[2001:db8::1]:1"
    assert header.destination_address == ("::1", 1998)


def test_local_command_has_no_address() -> None:
    header, used = parse_proxy_header(build_proxy_header(None, None))
    assert (header.command, header.source, header.destination, used) == ("LOCAL", None, None, 16)


def test_unix_family_is_accepted_without_addresses() -> None:
    wire = SIGNATURE + bytes((0x21, 0x31)) + (216).to_bytes(2, "big") + b"\x00" * 216
    header, used = parse_proxy_header(wire)
    assert (header.family, header.source, used) == ("UNIX", None, 232)


def test_every_prefix_needs_more_bytes() -> None:
    wire = build_proxy_header(("10.0.0.1", 1234), ("10.0.0.2", 4000), ((0x01, b"h2"),))
    for n in range(len(wire)):
        assert parse_proxy_header(wire[:n]) is None, n
    assert parse_proxy_header(memoryview(wire)) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # refused from the first differing byte
        b"\x00\x00\x00\x05",  # a CBCOM frame without the header HAProxy should have sent
        b"\r\n\r\n\x00\r\nQUIX",
        SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1
        SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # command 2
        SIGNATURE + b"\x21\x41\x00\x00",  # family 4
        SIGNATURE + b"\x21\x13\x00\x0c" + b"\x00" * 12,  # transport 3
        SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8,  # too short for IPv4 addresses
        SIGNATURE + b"\x21\x11\xff\xff",  # longer than the bound, refused without waiting
        SIGNATURE + b"\x21\x11\x00\x0e" + b"\x00" * 12 + b"\x01\x00",  # truncated TLV
        SIGNATURE + b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\x01\x00\x05x",  # TLV overruns
    ],
)
def test_bad_headers(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


def test_bound_is_configurable() -> None:
    wire = build_proxy_header(("10.0.0.1", 1), ("10.0.0.2", 2), ((0xE0, b"x" * 100),))
    assert parse_proxy_header(wire) is not None
    with pytest.raises(ProxyHeaderError, match="exceeds"):
        parse_proxy_header(wire, max_length=64)


def test_builder_refuses_mixed_families() -> None:
    with pytest.raises(ProxyHeaderError):
        build_proxy_header(("10.0.0.1", 1), ("::1", 2))


@given(st.binary(max_size=80))
def test_random_bytes(data: bytes) -> None:
    for candidate in (data, SIGNATURE + data):
        try:
            parsed = parse_proxy_header(candidate)
        except WireError:
            continue
        if parsed is not None:
            assert 16 <= parsed[1] <= len(candidate)
