"""HAProxy PROXY protocol version 2 header parser, sans-I/O and bounded.

HAProxy (TCP mode, ``send-proxy-v2``) writes one binary header before the client's bytes::

    12-byte signature  \\r\\n\\r\\n\\x00\\r\\nQUIT\\n
    1 byte             version (high nibble, 2) and command (low nibble: 0 LOCAL, 1 PROXY)
    1 byte             address family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX)
                       and transport (low nibble: 0 UNSPEC, 1 STREAM, 2 DGRAM)
    2 bytes            big-endian length of what follows
    addresses          INET 12 bytes, INET6 36, UNIX 216; then TLVs (type, 2-byte length, value)

Usage, on the bytes received so far::

    parsed = parse_proxy_header(buf)       # None: need more bytes
    if parsed is not None:
        header, used = parsed              # the terminal's bytes start at buf[used:]

A wrong signature is refused from its first differing byte, without waiting for the rest;
a header longer than ``max_length`` is refused as soon as its length field is read. Every
error is :class:`ProxyHeaderError`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from passerelle.codecs.framing import WireError

__all__ = [
    "SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "build_proxy_header",
    "parse_proxy_header",
]

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_SIZE: Final = 16
#: Default bound on the whole header: addresses plus a few TLVs (HAProxy's SSL TLVs fit).
DEFAULT_MAX_LENGTH: Final = 16 + 1024

_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_ADDRESS_SIZES: Final = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_FAMILY_NAMES: Final = {
    _AF_UNSPEC: "UNSPEC",
    _AF_INET: "INET",
    _AF_INET6: "INET6",
    _AF_UNIX: "UNIX",
}
_PROTOCOL_NAMES: Final = {0: "UNSPEC", 1: "STREAM", 2: "DGRAM"}


class ProxyHeaderError(WireError):
    """Not a PROXY v2 header, or a malformed or oversize one."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. Addresses are None for LOCAL, UNSPEC and (as ``host, port``) UNIX."""

    command: str  # "LOCAL" (health check: use the real peer) or "PROXY"
    family: str  # "UNSPEC", "INET", "INET6", "UNIX"
    protocol: str  # "UNSPEC", "STREAM", "DGRAM"
    source_address: tuple[str, int] | None = None
    destination_address: tuple[str, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def source(self) -> str | None:
        """The client as ``host:port`` (IPv6 in brackets), or None."""
        return _format(self.source_address)

    @property
    def destination(self) -> str | None:
        return _format(self.destination_address)


def _format(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_proxy_header(
    data: bytes | bytearray | memoryview, max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[ProxyHeader, int] | None:
    """Parse the header at the start of ``data``.

    Returns ``(header, bytes used)``, or None if more bytes are needed to decide.
    """
    view = memoryview(data)
    n = len(view)
    head = bytes(view[: min(n, len(SIGNATURE))])
    if head != SIGNATURE[: len(head)]:
        raise ProxyHeaderError("no PROXY protocol v2 signature")
    if n < FIXED_SIZE:
        return None
    ver_cmd, fam_proto = view[12], view[13]
    length = view[14] << 8 | view[15]
    total = FIXED_SIZE + length
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY protocol version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"unknown PROXY command {command}")
    family, protocol = fam_proto >> 4, fam_proto & 0x0F
    if family not in _ADDRESS_SIZES or protocol not in _PROTOCOL_NAMES:
        raise ProxyHeaderError(f"unknown address family/protocol byte 0x{fam_proto:02X}")
    if total > max_length:
        raise ProxyHeaderError(f"header of {total} bytes exceeds the maximum of {max_length}")
    addr_size = _ADDRESS_SIZES[family]
    if length < addr_size:
        raise ProxyHeaderError(
            f"length {length} too short for the {_FAMILY_NAMES[family]} addresses"
        )
    if n < total:
        return None

    body = bytes(view[FIXED_SIZE:total])
    source = destination = None
    if command == 1 and family == _AF_INET:
        source = (str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big"))
        destination = (str(ipaddress.IPv4Address(body[4:8])), int.from_bytes(body[10:12], "big"))
    elif command == 1 and family == _AF_INET6:
        source = (str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big"))
        destination = (str(ipaddress.IPv6Address(body[16:32])), int.from_bytes(body[34:36], "big"))

    tlvs: list[tuple[int, bytes]] = []
    pos = addr_size
    while pos < length:
        if length - pos < 3:
            raise ProxyHeaderError("truncated TLV header")
        tlv_type = body[pos]
        tlv_len = body[pos + 1] << 8 | body[pos + 2]
        if pos + 3 + tlv_len > length:
            raise ProxyHeaderError(f"TLV 0x{tlv_type:02X} of {tlv_len} bytes overruns the header")
        tlvs.append((tlv_type, body[pos + 3 : pos + 3 + tlv_len]))
        pos += 3 + tlv_len

    header = ProxyHeader(
        "PROXY" if command == 1 else "LOCAL",
        _FAMILY_NAMES[family],
        _PROTOCOL_NAMES[protocol],
        source,
        destination,
        tuple(tlvs),
    )
    return header, total


def build_proxy_header(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A PROXY v2 header (for tests and the terminal simulator): PROXY/STREAM over IPv4 or
    IPv6 when both addresses are given, LOCAL/UNSPEC when neither is."""
    tail = b"".join(bytes((t,)) + len(v).to_bytes(2, "big") + v for t, v in tlvs)
    if source is None or destination is None:
        return SIGNATURE + bytes((0x20, 0x00)) + len(tail).to_bytes(2, "big") + tail
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ProxyHeaderError("source and destination of different IP versions")
    family = 0x11 if src.version == 4 else 0x21
    addresses = (
        src.packed + dst.packed + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    )
    body = addresses + tail
    return SIGNATURE + bytes((0x21, family)) + len(body).to_bytes(2, "big") + body
