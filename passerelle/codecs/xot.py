"""RFC 1613 XOT framing (X.25 over TCP), sans-I/O.

Each X.25 packet travels on the TCP stream behind a 4-byte header: a 2-byte version
(always 0) and the 2-byte big-endian length of the packet that follows. Usage::

    decoder = XotDecoder(max_packet=4096 + 4)
    for packet in decoder.feed(chunk):      # X.25 packets (bytes), header removed
        ...
    wire = encode(packet_bytes)             # header + packet

Errors are :class:`XotError`, an :class:`~passerelle.codecs.x25.X25Error` carrying the
X.25 diagnostic the problem maps to (38 packet too short, 39 packet too long), so a circuit
can answer a framing error with a Clear like any other bad packet. After an error the
stream is out of step for good: the caller clears the call and closes the connection.
"""

from __future__ import annotations

from typing import Final

from passerelle.codecs.x25 import (
    DIAG_MISCELLANEOUS,
    DIAG_PACKET_TOO_LONG,
    DIAG_PACKET_TOO_SHORT,
    MAX_DATA_FIELD,
    X25Error,
)

__all__ = ["HEADER_SIZE", "XotDecoder", "XotError", "encode"]

HEADER_SIZE: Final = 4
#: An X.25 packet is at least 3 bytes (GFI + LCN + packet type).
MIN_PACKET: Final = 3
#: A Data packet of the largest packet size, modulo 128: 4 header bytes + 4096.
DEFAULT_MAX_PACKET: Final = MAX_DATA_FIELD + 4


class XotError(X25Error):
    """An XOT header we cannot accept (bad version, length out of bounds)."""


class XotDecoder:
    """Incremental XOT decoder: feed TCP bytes, get whole X.25 packets."""

    __slots__ = ("_buf", "max_packet")

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        if not MIN_PACKET <= max_packet <= 0xFFFF:
            raise ValueError(f"max_packet {max_packet} outside {MIN_PACKET}..65535")
        self.max_packet = max_packet
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received and not yet returned as a packet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes from the stream; return the X.25 packets they complete, in order."""
        buf = self._buf
        buf += data
        packets: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            version = buf[pos] << 8 | buf[pos + 1]
            length = buf[pos + 2] << 8 | buf[pos + 3]
            if version != 0:
                del buf[:]
                raise XotError(f"XOT version {version} is not 0", DIAG_MISCELLANEOUS)
            if length < MIN_PACKET:
                del buf[:]
                raise XotError(
                    f"XOT length {length} is shorter than a packet header", DIAG_PACKET_TOO_SHORT
                )
            if length > self.max_packet:
                del buf[:]
                raise XotError(
                    f"XOT length {length} exceeds the maximum of {self.max_packet}",
                    DIAG_PACKET_TOO_LONG,
                )
            start = pos + HEADER_SIZE
            if end - start < length:
                break
            packets.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return packets


def encode(packet: bytes | bytearray | memoryview) -> bytes:
    """One X.25 packet behind its XOT header."""
    n = len(packet)
    if not MIN_PACKET <= n <= 0xFFFF:
        raise XotError(f"an XOT packet must be {MIN_PACKET}..65535 bytes, not {n}")
    return b"\x00\x00" + n.to_bytes(2, "big") + bytes(packet)
