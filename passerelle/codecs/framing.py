"""Length-prefix framing for byte streams, sans-I/O.

Two framings share one incremental decoder (DESIGN.md §2):

* ``cbcom`` / ``cbcom-tls``: a 4-byte big-endian length, then one CBCOM IPDU;
* ``iso``: a 2-byte big-endian length, then one bare ISO 8583 message.

Usage::

    framer = LengthPrefixFramer(header_size=4, max_frame=8192)
    for payload in framer.feed(chunk):   # zero or more complete frames
        ...
    wire = framer.frame(answer)           # header + payload

``feed`` raises :class:`FramingError` as soon as a header announces a frame longer than
``max_frame`` (no waiting for the bytes of a frame we would refuse anyway). After an error
the stream cannot be re-synchronised: the caller closes the connection.

:class:`WireError` is the base of every error of the terminal wire stack
(framing, XOT, X.25, CBCOM, PROXY protocol), so a listener can catch the whole stack with
one ``except``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

__all__ = [
    "FramingError",
    "LengthPrefixFramer",
    "WireError",
    "cbcom_framer",
    "frame2",
    "frame4",
    "iso_framer",
]

_UNPACK_U32: Final = struct.Struct(">I").unpack_from
_UNPACK_U16: Final = struct.Struct(">H").unpack_from
_PACK_U32: Final = struct.Struct(">I").pack
_PACK_U16: Final = struct.Struct(">H").pack

#: Largest frame accepted by default: well above any CB2A message or télécollecte block.
DEFAULT_MAX_FRAME = 64 * 1024


class WireError(ValueError):
    """Base of every error raised by the terminal wire-stack codecs."""


class FramingError(WireError):
    """A length prefix announced a frame we refuse (too long), or a payload to send is."""


class LengthPrefixFramer:
    """Incremental decoder/encoder of ``<big-endian length><payload>`` frames.

    ``header_size`` is 2 or 4. ``max_frame`` bounds the payload length (not counting the
    header); it must fit the header. Empty frames (length 0) are passed up as ``b""``:
    the layer above decides whether they mean anything.
    """

    __slots__ = ("_buf", "header_size", "max_frame")

    def __init__(self, header_size: int = 4, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if header_size not in (2, 4):
            raise ValueError(f"header_size must be 2 or 4, not {header_size}")
        if not 0 < max_frame < 1 << (8 * header_size):
            raise ValueError(f"max_frame {max_frame} does not fit a {header_size}-byte length")
        self.header_size = header_size
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received and not yet returned as a frame (a partial header or frame)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes from the stream; return the frames they complete, in order."""
        buf = self._buf
        hs = self.header_size
        if not buf and data.__class__ is bytes and len(data) > hs:
            # The usual chunk: exactly one whole frame, nothing buffered. No copy into
            # the buffer and out again. (A precompiled struct reads the length in one C
            # call; int.from_bytes on a slice costs a few times as much.)
            unpack = _UNPACK_U32 if hs == 4 else _UNPACK_U16
            length = unpack(data)[0]
            if length == len(data) - hs and length <= self.max_frame:
                return [data[hs:]]
            return self._split(data, unpack)
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= hs:
            length = int.from_bytes(buf[pos : pos + hs], "big")
            if length > self.max_frame:
                del buf[:]
                raise FramingError(
                    f"frame length {length} exceeds the maximum of {self.max_frame} bytes"
                )
            if end - pos - hs < length:
                break
            start = pos + hs
            frames.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames

    def _split(self, data: bytes, unpack: Callable[[bytes, int], tuple[int]]) -> list[bytes]:
        """`feed` of a chunk arriving with nothing buffered: whole frames cut straight out of
        it (one copy each; a multiplexed link reads many per chunk), only a partial tail
        kept in the buffer."""
        hs, limit = self.header_size, self.max_frame
        frames: list[bytes] = []
        pos, end = 0, len(data)
        while end - pos >= hs:
            length = unpack(data, pos)[0]
            if length > limit:
                raise FramingError(
                    f"frame length {length} exceeds the maximum of {limit} bytes"
                )
            start = pos + hs
            if end - start < length:
                break
            frames.append(data[start : start + length])
            pos = start + length
        if pos < end:
            self._buf += memoryview(data)[pos:]
        return frames

    def frame(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Return ``payload`` with its length header; refuse one over ``max_frame``."""
        n = len(payload)
        if n > self.max_frame:
            raise FramingError(f"payload of {n} bytes exceeds the maximum of {self.max_frame}")
        return n.to_bytes(self.header_size, "big") + bytes(payload)


def cbcom_framer(max_frame: int = DEFAULT_MAX_FRAME) -> LengthPrefixFramer:
    """The ``cbcom`` listener's framer: 4-byte big-endian length."""
    return LengthPrefixFramer(4, max_frame)


def iso_framer(max_frame: int = DEFAULT_MAX_FRAME) -> LengthPrefixFramer:
    """The ``iso`` listener's framer: 2-byte big-endian length."""
    return LengthPrefixFramer(2, min(max_frame, 0xFFFF))


def frame4(payload: bytes | bytearray | memoryview) -> bytes:
    """``payload`` behind a 4-byte big-endian length (no maximum but the header's)."""
    n = len(payload)
    if n > 0xFFFFFFFF:
        raise FramingError(f"payload of {n} bytes does not fit a 4-byte length")
    return _PACK_U32(n) + payload


def frame2(payload: bytes | bytearray | memoryview) -> bytes:
    """``payload`` behind a 2-byte big-endian length; refuse one over 65,535 bytes."""
    n = len(payload)
    if n > 0xFFFF:
        raise FramingError(f"payload of {n} bytes does not fit a 2-byte length")
    return _PACK_U16(n) + payload
