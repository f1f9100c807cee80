"""CBCOM IPDUs (the pseudo-session layer under CB2A): decode and encode, no I/O.

An IPDU is::

    PGI (1 byte)  LGI (1 byte)  parameters (LGI bytes)  APDU (the rest)

and each parameter is ``PI code (1 byte), LI length (1 byte), value (LI bytes)``.
The IPDUs (DESIGN.md §2):

* CN 0xC2, connection: PI05 protocol identifier (mandatory), optional timers
  PI16 TNR, PI17 TSI, PI18 TMA (2-byte big-endian seconds);
* AC 0xC3, acceptance: PI01 = 0x00, the negotiated timers;
* DE 0xC1, data: PI07 = APDU length, then the APDU (one CB2A message, opaque here);
  a response may carry PI01 = 0x00;
* AB 0xC4, abort / logout: PI01 = the reason code.

The CBCOM specification is not public. Where it is silent, this module does what the
tinyCbCom4jPos implementation (used against real terminals) does, and says so:

* PI05 is 4 bytes: CBCOM version in BCD (0x12 = 1.2), protocol type (0x02 transactional,
  0x01 transfer/télécollecte), CB2A version in 2 BCD bytes (01 23 = 1.2.3);
* timers are 2-byte big-endian seconds;
* PI07 is read as a 1- to 4-byte big-endian length; we write it on 2 bytes
  (tinyCbCom writes 4; decoders, theirs included, accept any width up to 4);
* PIs are written in ascending PI order;
* decoding errors map to AB codes: 0x02 bad PGI/LGI, 0x27 truncated parameter,
  0x04 unknown PI or one not allowed in this IPDU, 0x25 mandatory PI missing,
  0x13 APDU length inconsistent with PI07.

Every error is :class:`CbcomError` with ``code``, the PI01 value an AB answering it carries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from passerelle.codecs.framing import WireError

__all__ = [
    "AB",
    "AC",
    "CN",
    "DE",
    "CbcomError",
    "Ipdu",
    "ProtocolId",
    "abort",
    "accept",
    "connect",
    "data",
    "data_apdu",
    "decode",
    "encode_data",
    "framed_data",
    "framed_data_apdu",
]

# --- PGI ---------------------------------------------------------------------------------
DE: Final = 0xC1
CN: Final = 0xC2
AC: Final = 0xC3
AB: Final = 0xC4
PGI_NAMES: Final = {DE: "DE", CN: "CN", AC: "AC", AB: "AB"}

# --- PI codes ----------------------------------------------------------------------------
PI01_RETURN_CODE: Final = 0x01
PI04_SESSION_ID: Final = 0x04
PI05_PROTOCOL_ID: Final = 0x05
PI06_MAX_IPDU_LENGTH: Final = 0x06
PI07_APDU_LENGTH: Final = 0x07
PI08_DATA_FORMAT: Final = 0x08
PI15_TOTAL_LENGTH: Final = 0x0F
PI16_TNR: Final = 0x10
PI17_TSI: Final = 0x11
PI18_TMA: Final = 0x12
PI25_EXTENDED_SESSION_ID: Final = 0x19

#: Which PIs each IPDU may carry, and which it must (tinyCbCom's table).
ALLOWED_PIS: Final = {
    CN: frozenset(
        {
            PI25_EXTENDED_SESSION_ID,
            PI04_SESSION_ID,
            PI05_PROTOCOL_ID,
            PI06_MAX_IPDU_LENGTH,
            PI08_DATA_FORMAT,
            PI15_TOTAL_LENGTH,
            PI16_TNR,
            PI17_TSI,
            PI18_TMA,
        }
    ),
    AC: frozenset(
        {PI01_RETURN_CODE, PI06_MAX_IPDU_LENGTH, PI08_DATA_FORMAT, PI16_TNR, PI17_TSI, PI18_TMA}
    ),
    DE: frozenset({PI01_RETURN_CODE, PI07_APDU_LENGTH, PI16_TNR, PI17_TSI, PI18_TMA}),
    AB: frozenset({PI01_RETURN_CODE}),
}
REQUIRED_PIS: Final = {
    CN: (PI05_PROTOCOL_ID,),
    AC: (PI01_RETURN_CODE,),
    DE: (PI07_APDU_LENGTH,),
    AB: (PI01_RETURN_CODE,),
}

# --- PI01 codes (AB reasons) -------------------------------------------------------------
CODE_OK: Final = 0x00
CODE_INVALID_IPDU: Final = 0x02
CODE_INVALID_PI: Final = 0x04
CODE_APDU_LENGTH: Final = 0x13
CODE_TNR_REFUSED: Final = 0x15
CODE_TSI_REFUSED: Final = 0x16
CODE_TMA_REFUSED: Final = 0x17
CODE_TSI_EXPIRED: Final = 0x19
CODE_TGR_EXPIRED: Final = 0x1A
CODE_TNR_EXPIRED: Final = 0x1B
CODE_BAD_VERSION: Final = 0x1E
CODE_UNEXPECTED_IPDU: Final = 0x24
CODE_MISSING_PI: Final = 0x25
CODE_BAD_PI05: Final = 0x26
CODE_TRUNCATED: Final = 0x27
CODE_NORMAL_END: Final = 0x80

PROTOCOL_TRANSFER: Final = 0x01
PROTOCOL_TRANSACTIONAL: Final = 0x02

#: Width on which we write PI07 (see the module docstring).
PI07_WIDTH: Final = 2


class CbcomError(WireError):
    """An IPDU we cannot decode or encode; ``code`` is the PI01 of the AB that answers it."""

    def __init__(self, reason: str, code: int = CODE_INVALID_IPDU) -> None:
        super().__init__(f"{reason} (CBCOM code 0x{code:02X})")
        self.reason = reason
        self.code = code


def _is_bcd(raw: bytes) -> bool:
    return raw.hex().isdigit()


@dataclass(frozen=True, slots=True)
class ProtocolId:
    """PI05: CBCOM version, protocol type, CB2A version (versions as BCD digit strings)."""

    cbcom_version: str = "12"
    protocol_type: int = PROTOCOL_TRANSACTIONAL
    cb2a_version: str = "0123"

    def encode(self) -> bytes:
        if len(self.cbcom_version) != 2 or not self.cbcom_version.isdigit():
            raise CbcomError(f"CBCOM version {self.cbcom_version!r} is not 2 digits", CODE_BAD_PI05)
        if len(self.cb2a_version) != 4 or not self.cb2a_version.isdigit():
            raise CbcomError(f"CB2A version {self.cb2a_version!r} is not 4 digits", CODE_BAD_PI05)
        if not 0 <= self.protocol_type <= 0xFF:
            raise CbcomError(f"protocol type {self.protocol_type} outside 0..255", CODE_BAD_PI05)
        return (
            bytes.fromhex(self.cbcom_version)
            + bytes((self.protocol_type,))
            + bytes.fromhex(self.cb2a_version)
        )

    @classmethod
    def decode(cls, raw: bytes) -> ProtocolId:
        if len(raw) != 4:
            raise CbcomError(f"PI05 of {len(raw)} bytes, not 4", CODE_BAD_PI05)
        if not (_is_bcd(raw[0:1]) and _is_bcd(raw[2:4])):
            raise CbcomError(f"PI05 {raw.hex()} has a version that is not BCD", CODE_BAD_PI05)
        return cls(raw[0:1].hex(), raw[1], raw[2:4].hex())


@dataclass(frozen=True, slots=True)
class Ipdu:
    """One IPDU: its PGI, its parameters in wire order as ``(pi, value)``, its APDU."""

    pgi: int
    params: tuple[tuple[int, bytes], ...] = ()
    apdu: bytes = b""

    @property
    def name(self) -> str:
        return PGI_NAMES.get(self.pgi, f"0x{self.pgi:02X}")

    def param(self, pi: int) -> bytes | None:
        """The value of parameter ``pi``, or None if absent."""
        for code, value in self.params:
            if code == pi:
                return value
        return None

    def timer(self, pi: int) -> int | None:
        """A timer parameter (PI16/17/18) in seconds, or None if absent."""
        value = self.param(pi)
        if value is None:
            return None
        if not 1 <= len(value) <= 2:
            raise CbcomError(f"timer PI{pi:02X} of {len(value)} bytes", CODE_INVALID_PI)
        return int.from_bytes(value, "big")

    @property
    def code(self) -> int | None:
        """PI01 (the return or abort code), or None if absent."""
        value = self.param(PI01_RETURN_CODE)
        return value[0] if value else None

    @property
    def protocol_id(self) -> ProtocolId | None:
        value = self.param(PI05_PROTOCOL_ID)
        return None if value is None else ProtocolId.decode(value)

    def encode(self) -> bytes:
        if self.pgi not in ALLOWED_PIS:
            raise CbcomError(f"unknown PGI 0x{self.pgi:02X}")
        body = bytearray()
        for pi, value in self.params:
            if not 0 <= pi <= 0xFF or len(value) > 0xFF:
                raise CbcomError(f"parameter {pi} of {len(value)} bytes cannot be encoded")
            body.append(pi)
            body.append(len(value))
            body += value
        if len(body) > 0xFF:
            raise CbcomError(f"parameters of {len(body)} bytes exceed the 255 an LGI can say")
        if self.apdu and self.param(PI07_APDU_LENGTH) is None:
            raise CbcomError("an APDU needs PI07", CODE_MISSING_PI)
        return bytes((self.pgi, len(body))) + bytes(body) + self.apdu


# --- DE fast path ---------------------------------------------------------------------
# Nearly every IPDU of a session is a DE whose only parameter is PI07, and every DE we send
# has a fixed head: these functions handle them without building an `Ipdu`. Anything
# else goes through `decode`, which also says precisely what is wrong.
#
# Heads and lengths are read and written with precompiled `struct`s: one C call where
# `int.from_bytes(ipdu[4:6], "big")` / `int.to_bytes(2, "big")` cost a slice, a bound class
# method and keyword parsing each (several times as many instructions, per message).
# The `framed_` pair does the same for stream mode (TCP, TLS), with the 4-byte length of
# the frame read or written in the same call.

_DE_HEAD: Final = bytes((DE, 2 + PI07_WIDTH, PI07_APDU_LENGTH, PI07_WIDTH))
_DE_RESPONSE_HEAD: Final = bytes((DE, 5 + PI07_WIDTH, PI01_RETURN_CODE, 1, CODE_OK,
                                  PI07_APDU_LENGTH, PI07_WIDTH))
_DE_HEAD_4: Final = bytes((DE, 2 + 4, PI07_APDU_LENGTH, 4))  # tinyCbCom's PI07 width
_DE_MAX_APDU: Final = (1 << (8 * PI07_WIDTH)) - 1
# PI07_WIDTH is 2: the "H" below. Unpack: head (PGI, LGI, PI, LI) and PI07's value.
_UNPACK_DE: Final = struct.Struct(">4sH").unpack_from
_UNPACK_FRAMED_DE: Final = struct.Struct(">I4sH").unpack_from
_UNPACK_FRAMED_DE_4: Final = struct.Struct(">I4sI").unpack_from
_PACK_DE: Final = struct.Struct(">4sH").pack
_PACK_DE_RESPONSE: Final = struct.Struct(">7sH").pack
_PACK_FRAMED_DE: Final = struct.Struct(">I4sH").pack
_PACK_FRAMED_DE_RESPONSE: Final = struct.Struct(">I7sH").pack


def data_apdu(ipdu: bytes) -> bytes | None:
    """The APDU of a valid DE whose only parameter is PI07 (1 to 4 bytes), else None.

    None does not mean invalid: the caller then runs `decode`, which accepts the other
    valid forms (PI01, timers) and raises the precise error for the invalid ones.
    """
    n = len(ipdu)
    if n >= 6:
        head, declared = _UNPACK_DE(ipdu)
        if head == _DE_HEAD:  # PI07 on 2 bytes: what we write, and the usual
            return ipdu[6:] if declared == n - 6 else None
    if n < 5 or ipdu[0] != DE or ipdu[2] != PI07_APDU_LENGTH:
        return None
    width = ipdu[3]
    end = 4 + width
    if ipdu[1] != 2 + width or not 1 <= width <= 4 or n < end:
        return None
    declared = 0
    for index in range(4, end):
        declared = declared << 8 | ipdu[index]
    if declared != n - end:
        return None
    return ipdu[end:]


def framed_data_apdu(data: bytes, max_frame: int) -> bytes | None:
    """Stream mode: the APDU when `data` is exactly one frame (4-byte big-endian length,
    at most `max_frame`) holding a DE whose only parameter is PI07 on 2 or 4 bytes; else
    None, and the caller goes the long way (framer, then `data_apdu` or `decode`)."""
    n = len(data)
    if n < 10:
        return None
    length, head, declared = _UNPACK_FRAMED_DE(data)
    if head == _DE_HEAD:
        end = 10
    elif head == _DE_HEAD_4 and n >= 12:
        length, head, declared = _UNPACK_FRAMED_DE_4(data)
        end = 12
    else:
        return None
    if length != n - 4 or declared != n - end or length > max_frame:
        return None
    return data[end:]


def encode_data(apdu: bytes | bytearray | memoryview, *, response: bool = False) -> bytes:
    """The bytes of `data(apdu, response=response)`, built without the `Ipdu` object."""
    size = len(apdu)
    if size > _DE_MAX_APDU:
        raise CbcomError(f"APDU of {size} bytes too long for PI07", CODE_APDU_LENGTH)
    if response:
        return _PACK_DE_RESPONSE(_DE_RESPONSE_HEAD, size) + apdu
    return _PACK_DE(_DE_HEAD, size) + apdu


def framed_data(apdu: bytes | bytearray | memoryview, *, response: bool = False) -> bytes:
    """`encode_data(apdu, response=response)` behind its 4-byte frame length (stream mode),
    in one piece."""
    size = len(apdu)
    if size > _DE_MAX_APDU:
        raise CbcomError(f"APDU of {size} bytes too long for PI07", CODE_APDU_LENGTH)
    if response:
        return _PACK_FRAMED_DE_RESPONSE(size + 7 + PI07_WIDTH, _DE_RESPONSE_HEAD, size) + apdu
    return _PACK_FRAMED_DE(size + 4 + PI07_WIDTH, _DE_HEAD, size) + apdu


def decode(ipdu: bytes | bytearray | memoryview, max_apdu: int | None = None) -> Ipdu:
    """Decode one IPDU (without the 4-byte TCP length); raise :class:`CbcomError` if bad.

    ``max_apdu`` bounds the APDU length (the frame length already bounds it too).
    """
    buf = bytes(ipdu)
    n = len(buf)
    if n < 2:
        raise CbcomError(f"IPDU of {n} bytes has no PGI and LGI", CODE_TRUNCATED)
    pgi, lgi = buf[0], buf[1]
    allowed = ALLOWED_PIS.get(pgi)
    if allowed is None:
        raise CbcomError(f"unknown PGI 0x{pgi:02X}", CODE_INVALID_IPDU)
    end = 2 + lgi
    if end > n:
        raise CbcomError(f"LGI {lgi} runs past the IPDU's {n} bytes", CODE_INVALID_IPDU)
    params: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    pos = 2
    while pos < end:
        if end - pos < 2:
            raise CbcomError("parameter header truncated", CODE_TRUNCATED)
        pi, li = buf[pos], buf[pos + 1]
        if pos + 2 + li > end:
            raise CbcomError(f"PI 0x{pi:02X} length {li} runs past LGI", CODE_TRUNCATED)
        if pi not in allowed:
            raise CbcomError(f"PI 0x{pi:02X} not allowed in {PGI_NAMES[pgi]}", CODE_INVALID_PI)
        if pi in seen:
            raise CbcomError(f"PI 0x{pi:02X} repeated", CODE_INVALID_PI)
        seen.add(pi)
        params.append((pi, buf[pos + 2 : pos + 2 + li]))
        pos += 2 + li
    for pi in REQUIRED_PIS[pgi]:
        if pi not in seen:
            raise CbcomError(f"{PGI_NAMES[pgi]} without its PI 0x{pi:02X}", CODE_MISSING_PI)
    result = Ipdu(pgi, tuple(params), buf[end:])
    pi07 = result.param(PI07_APDU_LENGTH)
    if pi07 is None:
        if end != n:
            raise CbcomError(
                f"{n - end} bytes after the parameters of {result.name}", CODE_INVALID_IPDU
            )
    else:
        if not 1 <= len(pi07) <= 4:
            raise CbcomError(f"PI07 of {len(pi07)} bytes", CODE_APDU_LENGTH)
        declared = int.from_bytes(pi07, "big")
        if declared != n - end:
            raise CbcomError(f"PI07 says {declared} APDU bytes, {n - end} follow", CODE_APDU_LENGTH)
        if max_apdu is not None and declared > max_apdu:
            raise CbcomError(f"APDU of {declared} bytes exceeds {max_apdu}", CODE_APDU_LENGTH)
    if pgi in (AC, AB) and len(result.param(PI01_RETURN_CODE) or b"") != 1:
        raise CbcomError(f"PI01 of {result.name} is not 1 byte", CODE_INVALID_PI)
    return result


# --- Constructors ------------------------------------------------------------------------


def _timer_params(tnr: int | None, tsi: int | None, tma: int | None) -> list[tuple[int, bytes]]:
    out = []
    for pi, value in ((PI16_TNR, tnr), (PI17_TSI, tsi), (PI18_TMA, tma)):
        if value is not None:
            if not 0 <= value <= 0xFFFF:
                raise CbcomError(f"timer PI{pi:02X} of {value} s outside 0..65535")
            out.append((pi, value.to_bytes(2, "big")))
    return out


def connect(
    protocol: ProtocolId = ProtocolId(),
    *,
    tnr: int | None = None,
    tsi: int | None = None,
    tma: int | None = None,
) -> Ipdu:
    """A CN IPDU: PI05 and the timers the terminal asks for."""
    params = [(PI05_PROTOCOL_ID, protocol.encode()), *_timer_params(tnr, tsi, tma)]
    return Ipdu(CN, tuple(params))


def accept(*, tnr: int | None = None, tsi: int | None = None, tma: int | None = None) -> Ipdu:
    """An AC IPDU: PI01 = 0 and the negotiated timers."""
    params = [(PI01_RETURN_CODE, b"\x00"), *_timer_params(tnr, tsi, tma)]
    return Ipdu(AC, tuple(params))


def data(apdu: bytes | bytearray | memoryview, *, response: bool = False) -> Ipdu:
    """A DE IPDU carrying ``apdu``; a response also carries PI01 = 0 (as tinyCbCom does)."""
    apdu = bytes(apdu)
    if len(apdu) >= 1 << (8 * PI07_WIDTH):
        raise CbcomError(f"APDU of {len(apdu)} bytes too long for PI07", CODE_APDU_LENGTH)
    params: tuple[tuple[int, bytes], ...] = (
        (PI07_APDU_LENGTH, len(apdu).to_bytes(PI07_WIDTH, "big")),
    )
    if response:
        params = ((PI01_RETURN_CODE, b"\x00"), *params)
    return Ipdu(DE, params, apdu)


def abort(code: int) -> Ipdu:
    """An AB IPDU with PI01 = ``code``."""
    if not 0 <= code <= 0xFF:
        raise CbcomError(f"abort code {code} outside 0..255")
    return Ipdu(AB, ((PI01_RETURN_CODE, bytes((code,))),))
