"""X.25 packet layer (ITU-T X.25 PLP) packets: decode and encode, no I/O.

One X.25 packet is what RFC 1613 XOT carries after its 4-byte header (see ``xot.py``).
Every packet starts with a 3-byte header:

* GFI (high nibble of byte 0): Q bit (the A bit in call set-up packets), D bit and the
  modulo bits ``01`` = modulo 8, ``10`` = modulo 128;
* LCN: 12 bits (logical channel group number in the low nibble of byte 0, then byte 1);
* the packet type identifier (byte 2). Data, RR, RNR and REJ carry P(S)/P(R) in it
  (modulo 8) or in it and a fourth byte (modulo 128).

Packets are immutable dataclasses. ``decode(packet) -> Packet`` and ``encode(p) -> bytes``
(also ``p.encode()``). Call set-up packets use the basic (non-TOA/NPI) address format:
a byte holding the calling and called address lengths in digits, the X.121 digits in BCD
(called first, then calling, padded to a whole byte with a 0 nibble), then the facility
length, the facilities and the call user data.

Every error is :class:`X25Error`, carrying the ITU-T X.25 Annex E diagnostic code it maps
to (``DIAG_*`` constants), so a virtual circuit can answer with the right Clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from passerelle.codecs.framing import WireError

__all__ = [
    "CallAccepted",
    "CallRequest",
    "ClearConfirmation",
    "ClearRequest",
    "Data",
    "Diagnostic",
    "Facility",
    "Interrupt",
    "InterruptConfirmation",
    "Packet",
    "ReceiveNotReady",
    "ReceiveReady",
    "Reject",
    "ResetConfirmation",
    "ResetRequest",
    "RestartConfirmation",
    "RestartRequest",
    "X25Error",
    "decode",
    "encode",
    "packet_size_code",
    "packet_size_from_code",
]

# --- ITU-T X.25 Annex E diagnostic codes (those this stack emits or names) ---------------
DIAG_NONE: Final = 0
DIAG_INVALID_PS: Final = 1
DIAG_INVALID_PR: Final = 2
DIAG_PACKET_TYPE_INVALID: Final = 16
#: "packet type invalid for state X": 17 r1 ... 20 p1, 21 p2, ..., 26 p7, 27 d1, 28 d2, 29 d3
DIAG_INVALID_FOR_STATE: Final = {
    "r1": 17,
    "r2": 18,
    "r3": 19,
    "p1": 20,
    "p2": 21,
    "p3": 22,
    "p4": 23,
    "p5": 24,
    "p6": 25,
    "p7": 26,
    "d1": 27,
    "d2": 28,
    "d3": 29,
}
DIAG_PACKET_NOT_ALLOWED: Final = 32
DIAG_UNIDENTIFIABLE_PACKET: Final = 33
DIAG_UNASSIGNED_CHANNEL: Final = 36
DIAG_REJECT_NOT_SUBSCRIBED: Final = 37
DIAG_PACKET_TOO_SHORT: Final = 38
DIAG_PACKET_TOO_LONG: Final = 39
DIAG_INVALID_GFI: Final = 40
DIAG_RESTART_NONZERO_LCN: Final = 41
DIAG_NOT_COMPATIBLE_WITH_FACILITY: Final = 42
DIAG_UNAUTHORIZED_INTERRUPT_CONFIRMATION: Final = 43
DIAG_UNAUTHORIZED_INTERRUPT: Final = 44
DIAG_TIMER_EXPIRED: Final = 48
DIAG_TIMER_EXPIRED_INCOMING_CALL: Final = 49
DIAG_TIMER_EXPIRED_CLEAR: Final = 50
DIAG_TIMER_EXPIRED_RESET: Final = 51
DIAG_CALL_SETUP_PROBLEM: Final = 64
DIAG_FACILITY_CODE_NOT_ALLOWED: Final = 65
DIAG_FACILITY_PARAMETER_NOT_ALLOWED: Final = 66
DIAG_INVALID_CALLED_ADDRESS: Final = 67
DIAG_INVALID_CALLING_ADDRESS: Final = 68
DIAG_INVALID_FACILITY_LENGTH: Final = 69
DIAG_DUPLICATE_FACILITY: Final = 73
DIAG_MISCELLANEOUS: Final = 80
DIAG_NOT_ALIGNED_OCTET: Final = 82
DIAG_INCONSISTENT_Q_BIT: Final = 83

# --- Clearing causes (X.25 §5.2.3.2.1): a DTE may only send 0x00 or 0x80-0xFF -------------
CAUSE_DTE_ORIGINATED: Final = 0x00
CAUSE_NUMBER_BUSY: Final = 0x01
CAUSE_INVALID_FACILITY_REQUEST: Final = 0x03
CAUSE_NETWORK_CONGESTION: Final = 0x05
CAUSE_OUT_OF_ORDER: Final = 0x09
CAUSE_ACCESS_BARRED: Final = 0x0B
CAUSE_NOT_OBTAINABLE: Final = 0x0D
CAUSE_REMOTE_PROCEDURE_ERROR: Final = 0x11
CAUSE_LOCAL_PROCEDURE_ERROR: Final = 0x13
CAUSE_INCOMPATIBLE_DESTINATION: Final = 0x21

# --- Reset causes (X.25 §5.4.3.2.1) ------------------------------------------------------
RESET_DTE_ORIGINATED: Final = 0x00
RESET_OUT_OF_ORDER: Final = 0x01
RESET_REMOTE_PROCEDURE_ERROR: Final = 0x03
RESET_LOCAL_PROCEDURE_ERROR: Final = 0x05
RESET_NETWORK_CONGESTION: Final = 0x07

# --- Facility codes ----------------------------------------------------------------------
FAC_PACKET_SIZE: Final = 0x42
FAC_WINDOW_SIZE: Final = 0x43
FAC_THROUGHPUT_CLASS: Final = 0x02
FAC_REVERSE_CHARGING: Final = 0x01

# --- Packet type identifiers -------------------------------------------------------------
PT_CALL_REQUEST: Final = 0x0B
PT_CALL_ACCEPTED: Final = 0x0F
PT_CLEAR_REQUEST: Final = 0x13
PT_CLEAR_CONFIRMATION: Final = 0x17
PT_INTERRUPT: Final = 0x23
PT_INTERRUPT_CONFIRMATION: Final = 0x27
PT_RR: Final = 0x01
PT_RNR: Final = 0x05
PT_REJ: Final = 0x09
PT_RESET_REQUEST: Final = 0x1B
PT_RESET_CONFIRMATION: Final = 0x1F
PT_RESTART_REQUEST: Final = 0xFB
PT_RESTART_CONFIRMATION: Final = 0xFF
PT_DIAGNOSTIC: Final = 0xF1

#: Largest user data field of one Data packet (the largest X.25 packet size).
MAX_DATA_FIELD: Final = 4096
#: Call user data: 16 bytes, or 128 with fast select; we accept the larger everywhere.
MAX_CALL_USER_DATA: Final = 128
#: Facility field: at most 109 bytes (X.25 §7.1).
MAX_FACILITY_LENGTH: Final = 109
MAX_INTERRUPT_DATA: Final = 32


class X25Error(WireError):
    """A packet that cannot be decoded or encoded, with the Annex E diagnostic it maps to."""

    def __init__(self, reason: str, diagnostic: int = DIAG_NONE) -> None:
        super().__init__(f"{reason} (X.25 diagnostic {diagnostic})")
        self.reason = reason
        self.diagnostic = diagnostic


def packet_size_from_code(code: int) -> int:
    """Packet size in bytes of a 0x42 facility parameter (log2: 4 -> 16 ... 12 -> 4096)."""
    if not 4 <= code <= 12:
        raise X25Error(
            f"packet size code {code} outside 4..12", DIAG_FACILITY_PARAMETER_NOT_ALLOWED
        )
    return 1 << code


def packet_size_code(size: int) -> int:
    """The 0x42 facility parameter for a packet size (a power of two, 16..4096)."""
    code = size.bit_length() - 1
    if size <= 0 or 1 << code != size or not 4 <= code <= 12:
        raise X25Error(f"packet size {size} is not a power of two in 16..4096")
    return code


@dataclass(frozen=True, slots=True)
class Facility:
    """One facility: its code and parameter bytes (class A 1, B 2, C 3, D variable)."""

    code: int
    value: bytes

    def encode(self) -> bytes:
        cls = self.code >> 6
        if not 0 <= self.code <= 0xFF:
            raise X25Error(f"facility code {self.code} outside 0..255")
        if cls < 3:
            if len(self.value) != cls + 1:
                raise X25Error(
                    f"facility 0x{self.code:02X} needs {cls + 1} parameter byte(s), "
                    f"not {len(self.value)}"
                )
            return bytes((self.code,)) + self.value
        if len(self.value) > 0xFF:
            raise X25Error(f"facility 0x{self.code:02X} parameter longer than 255 bytes")
        return bytes((self.code, len(self.value))) + self.value

    @staticmethod
    def packet_size(called_to_calling: int, calling_to_called: int) -> Facility:
        """Facility 0x42 from sizes in bytes (first: from the called DTE, second: towards it)."""
        return Facility(
            FAC_PACKET_SIZE,
            bytes((packet_size_code(called_to_calling), packet_size_code(calling_to_called))),
        )

    @staticmethod
    def window_size(called_to_calling: int, calling_to_called: int) -> Facility:
        """Facility 0x43 (first: window from the called DTE, second: towards it)."""
        if not (1 <= called_to_calling <= 127 and 1 <= calling_to_called <= 127):
            raise X25Error("window sizes must be in 1..127")
        return Facility(FAC_WINDOW_SIZE, bytes((called_to_calling, calling_to_called)))


def find_facility(facilities: tuple[Facility, ...], code: int) -> Facility | None:
    """The first facility with ``code`` (before any marker), or None."""
    for fac in facilities:
        if fac.code == 0x00:  # facility marker: what follows is not X.25 facilities
            return None
        if fac.code == code:
            return fac
    return None


def _check_lcn(lcn: int) -> None:
    if not 0 <= lcn <= 0xFFF:
        raise X25Error(f"logical channel {lcn} outside 0..4095")


def _check_modulo(modulo: int) -> None:
    if modulo not in (8, 128):
        raise X25Error(f"modulo must be 8 or 128, not {modulo}")


def _header(lcn: int, modulo: int, pti: int, q: bool = False, d: bool = False) -> bytearray:
    _check_lcn(lcn)
    _check_modulo(modulo)
    gfi = (0x8 if q else 0) | (0x4 if d else 0) | (0x1 if modulo == 8 else 0x2)
    return bytearray((gfi << 4 | lcn >> 8, lcn & 0xFF, pti))


def _check_seq(name: str, value: int, modulo: int) -> None:
    if not 0 <= value < modulo:
        raise X25Error(f"{name} {value} outside 0..{modulo - 1}")


# --- Addresses and facilities ------------------------------------------------------------


def _encode_addresses(called: str, calling: str) -> bytes:
    for name, addr in (("called", called), ("calling", calling)):
        if len(addr) > 15 or not ((addr.isascii() and addr.isdigit()) or addr == ""):
            raise X25Error(f"{name} address {addr!r} is not 0-15 decimal digits")
    digits = called + calling
    if len(digits) % 2:
        digits += "0"
    return bytes((len(calling) << 4 | len(called),)) + bytes.fromhex(digits)


def _decode_addresses(buf: bytes, pos: int) -> tuple[str, str, int]:
    if pos >= len(buf):
        raise X25Error("address block missing", DIAG_PACKET_TOO_SHORT)
    lengths = buf[pos]
    calling_len, called_len = lengths >> 4, lengths & 0x0F
    nbytes = (calling_len + called_len + 1) // 2
    pos += 1
    if pos + nbytes > len(buf):
        raise X25Error("address block truncated", DIAG_PACKET_TOO_SHORT)
    digits = buf[pos : pos + nbytes].hex()
    if nbytes and not digits[: called_len + calling_len].isdigit():
        diag = (
            DIAG_INVALID_CALLED_ADDRESS
            if not digits[:called_len].isdigit()
            else DIAG_INVALID_CALLING_ADDRESS
        )
        raise X25Error("address digit is not BCD", diag)
    called = digits[:called_len]
    calling = digits[called_len : called_len + calling_len]
    return called, calling, pos + nbytes


def _encode_facilities(facilities: tuple[Facility, ...]) -> bytes:
    body = b"".join(f.encode() for f in facilities)
    if len(body) > MAX_FACILITY_LENGTH:
        raise X25Error(f"facility field of {len(body)} bytes exceeds {MAX_FACILITY_LENGTH}")
    return bytes((len(body),)) + body


def _decode_facilities(buf: bytes, pos: int) -> tuple[tuple[Facility, ...], int]:
    if pos >= len(buf):
        return (), pos
    length = buf[pos]
    pos += 1
    end = pos + length
    if length > MAX_FACILITY_LENGTH or end > len(buf):
        raise X25Error(f"facility length {length} invalid", DIAG_INVALID_FACILITY_LENGTH)
    facilities: list[Facility] = []
    while pos < end:
        code = buf[pos]
        cls = code >> 6
        if cls < 3:
            vlen = cls + 1
            vstart = pos + 1
        else:
            if pos + 1 >= end:
                raise X25Error("facility length byte missing", DIAG_INVALID_FACILITY_LENGTH)
            vlen = buf[pos + 1]
            vstart = pos + 2
        if vstart + vlen > end:
            raise X25Error(
                f"facility 0x{code:02X} overruns the field", DIAG_INVALID_FACILITY_LENGTH
            )
        facilities.append(Facility(code, bytes(buf[vstart : vstart + vlen])))
        pos = vstart + vlen
    return tuple(facilities), end


# --- Packets -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRequest:
    """Call Request (DTE -> DCE) / Incoming Call (DCE -> DTE): same encoding.

    ``modulo`` is the GFI's: 128 asks for extended sequencing on this call. ``d_bit``
    asks for the D-bit procedure.
    """

    lcn: int
    called: str
    calling: str
    facilities: tuple[Facility, ...] = ()
    user_data: bytes = b""
    modulo: int = 8
    d_bit: bool = False

    def encode(self) -> bytes:
        if len(self.user_data) > MAX_CALL_USER_DATA:
            raise X25Error(f"call user data longer than {MAX_CALL_USER_DATA} bytes")
        out = _header(self.lcn, self.modulo, PT_CALL_REQUEST, d=self.d_bit)
        out += _encode_addresses(self.called, self.calling)
        out += _encode_facilities(self.facilities)
        out += self.user_data
        return bytes(out)


@dataclass(frozen=True, slots=True)
class CallAccepted:
    """Call Accepted (DTE -> DCE) / Call Connected (DCE -> DTE).

    The address block, facilities and user data are optional on the wire; they are
    written when any of them is set (an empty address block then precedes the facilities).
    """

    lcn: int
    called: str = ""
    calling: str = ""
    facilities: tuple[Facility, ...] = ()
    user_data: bytes = b""
    modulo: int = 8
    d_bit: bool = False

    def encode(self) -> bytes:
        if len(self.user_data) > MAX_CALL_USER_DATA:
            raise X25Error(f"called user data longer than {MAX_CALL_USER_DATA} bytes")
        out = _header(self.lcn, self.modulo, PT_CALL_ACCEPTED, d=self.d_bit)
        if self.called or self.calling or self.facilities or self.user_data:
            out += _encode_addresses(self.called, self.calling)
            out += _encode_facilities(self.facilities)
            out += self.user_data
        return bytes(out)


@dataclass(frozen=True, slots=True)
class ClearRequest:
    """Clear Request (DTE -> DCE) / Clear Indication (DCE -> DTE).

    ``diagnostic`` is optional on the wire (None: absent). The extended format (addresses,
    facilities, clear user data) is written when any of them is set, and then needs a
    diagnostic byte before it (0 if None).
    """

    lcn: int
    cause: int = CAUSE_DTE_ORIGINATED
    diagnostic: int | None = None
    modulo: int = 8
    called: str = ""
    calling: str = ""
    facilities: tuple[Facility, ...] = ()
    user_data: bytes = b""

    def encode(self) -> bytes:
        out = _header(self.lcn, self.modulo, PT_CLEAR_REQUEST)
        if not 0 <= self.cause <= 0xFF:
            raise X25Error(f"clearing cause {self.cause} outside 0..255")
        out.append(self.cause)
        extended = bool(self.called or self.calling or self.facilities or self.user_data)
        if self.diagnostic is not None or extended:
            diag = self.diagnostic or 0
            if not 0 <= diag <= 0xFF:
                raise X25Error(f"diagnostic {diag} outside 0..255")
            out.append(diag)
        if extended:
            if len(self.user_data) > MAX_CALL_USER_DATA:
                raise X25Error(f"clear user data longer than {MAX_CALL_USER_DATA} bytes")
            out += _encode_addresses(self.called, self.calling)
            out += _encode_facilities(self.facilities)
            out += self.user_data
        return bytes(out)


@dataclass(frozen=True, slots=True)
class ClearConfirmation:
    lcn: int
    modulo: int = 8

    def encode(self) -> bytes:
        return bytes(_header(self.lcn, self.modulo, PT_CLEAR_CONFIRMATION))


@dataclass(frozen=True, slots=True)
class Data:
    """A Data packet: P(S), P(R), the M (more data) bit, the Q and D bits, user data."""

    lcn: int
    ps: int
    pr: int
    data: bytes = b""
    m: bool = False
    q: bool = False
    d: bool = False
    modulo: int = 8

    def encode(self) -> bytes:
        _check_seq("P(S)", self.ps, self.modulo)
        _check_seq("P(R)", self.pr, self.modulo)
        if len(self.data) > MAX_DATA_FIELD:
            raise X25Error(f"data field longer than {MAX_DATA_FIELD} bytes")
        if self.modulo == 8:
            pti = self.pr << 5 | (0x10 if self.m else 0) | self.ps << 1
            out = _header(self.lcn, 8, pti, q=self.q, d=self.d)
        else:
            out = _header(self.lcn, 128, self.ps << 1, q=self.q, d=self.d)
            out.append(self.pr << 1 | (1 if self.m else 0))
        out += self.data
        return bytes(out)


@dataclass(frozen=True, slots=True)
class _FlowControl:
    lcn: int
    pr: int
    modulo: int = 8

    _PTI = 0

    def encode(self) -> bytes:
        _check_seq("P(R)", self.pr, self.modulo)
        if self.modulo == 8:
            return bytes(_header(self.lcn, 8, self.pr << 5 | self._PTI))
        out = _header(self.lcn, 128, self._PTI)
        out.append(self.pr << 1)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class ReceiveReady(_FlowControl):
    """RR: acknowledges up to P(R) - 1 and opens the window."""

    _PTI = PT_RR


@dataclass(frozen=True, slots=True)
class ReceiveNotReady(_FlowControl):
    """RNR: acknowledges up to P(R) - 1 and asks the peer to stop sending Data."""

    _PTI = PT_RNR


@dataclass(frozen=True, slots=True)
class Reject(_FlowControl):
    """REJ: asks for retransmission from P(R) (an optional user facility)."""

    _PTI = PT_REJ


def _cause_diag_encode(
    lcn: int, modulo: int, pti: int, cause: int, diagnostic: int | None
) -> bytes:
    out = _header(lcn, modulo, pti)
    for name, value in (("cause", cause), ("diagnostic", diagnostic)):
        if value is not None and not 0 <= value <= 0xFF:
            raise X25Error(f"{name} {value} outside 0..255")
    out.append(cause)
    if diagnostic is not None:
        out.append(diagnostic)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """Reset Request (DTE -> DCE) / Reset Indication (DCE -> DTE)."""

    lcn: int
    cause: int = RESET_DTE_ORIGINATED
    diagnostic: int | None = None
    modulo: int = 8

    def encode(self) -> bytes:
        return _cause_diag_encode(
            self.lcn, self.modulo, PT_RESET_REQUEST, self.cause, self.diagnostic
        )


@dataclass(frozen=True, slots=True)
class ResetConfirmation:
    lcn: int
    modulo: int = 8

    def encode(self) -> bytes:
        return bytes(_header(self.lcn, self.modulo, PT_RESET_CONFIRMATION))


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Interrupt: 1 to 32 bytes of interrupt user data, outside flow control."""

    lcn: int
    data: bytes = b"\x00"
    modulo: int = 8

    def encode(self) -> bytes:
        if not 1 <= len(self.data) <= MAX_INTERRUPT_DATA:
            raise X25Error(f"interrupt data must be 1..{MAX_INTERRUPT_DATA} bytes")
        return bytes(_header(self.lcn, self.modulo, PT_INTERRUPT) + self.data)


@dataclass(frozen=True, slots=True)
class InterruptConfirmation:
    lcn: int
    modulo: int = 8

    def encode(self) -> bytes:
        return bytes(_header(self.lcn, self.modulo, PT_INTERRUPT_CONFIRMATION))


@dataclass(frozen=True, slots=True)
class RestartRequest:
    """Restart Request / Indication (LCN 0). Not carried over XOT; decoded to be refused."""

    cause: int = 0
    diagnostic: int | None = None
    modulo: int = 8

    def encode(self) -> bytes:
        return _cause_diag_encode(0, self.modulo, PT_RESTART_REQUEST, self.cause, self.diagnostic)


@dataclass(frozen=True, slots=True)
class RestartConfirmation:
    modulo: int = 8

    def encode(self) -> bytes:
        return bytes(_header(0, self.modulo, PT_RESTART_CONFIRMATION))


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """Diagnostic packet (LCN 0): a code and, usually, the first bytes of the bad packet."""

    code: int
    explanation: bytes = b""
    modulo: int = 8

    def encode(self) -> bytes:
        if not 0 <= self.code <= 0xFF:
            raise X25Error(f"diagnostic {self.code} outside 0..255")
        if len(self.explanation) > 4:
            raise X25Error("diagnostic explanation longer than 4 bytes")
        out = _header(0, self.modulo, PT_DIAGNOSTIC)
        out.append(self.code)
        return bytes(out + self.explanation)


Packet = (
    CallRequest
    | CallAccepted
    | ClearRequest
    | ClearConfirmation
    | Data
    | ReceiveReady
    | ReceiveNotReady
    | Reject
    | ResetRequest
    | ResetConfirmation
    | Interrupt
    | InterruptConfirmation
    | RestartRequest
    | RestartConfirmation
    | Diagnostic
)


def encode(packet: Packet) -> bytes:
    """The wire bytes of ``packet`` (the X.25 packet alone, without the XOT header)."""
    return packet.encode()


def _no_body(buf: bytes, n: int = 3) -> None:
    if len(buf) > n:
        raise X25Error("packet longer than its type allows", DIAG_PACKET_TOO_LONG)


def _cause_diag(buf: bytes, name: str) -> tuple[int, int | None]:
    if len(buf) < 4:
        raise X25Error(f"{name} without a cause", DIAG_PACKET_TOO_SHORT)
    return buf[3], (buf[4] if len(buf) > 4 else None)


def decode(packet: bytes | bytearray | memoryview) -> Packet:
    """Decode one X.25 packet; raise :class:`X25Error` with its diagnostic if it is bad."""
    buf = bytes(packet)
    n = len(buf)
    if n < 3:
        raise X25Error(f"packet of {n} bytes is shorter than a header", DIAG_PACKET_TOO_SHORT)
    gfi = buf[0] >> 4
    mod_bits = gfi & 0x3
    if mod_bits == 1:
        modulo = 8
    elif mod_bits == 2:
        modulo = 128
    else:
        raise X25Error(
            f"general format identifier 0x{gfi:X} is not modulo 8 or 128", DIAG_INVALID_GFI
        )
    q = bool(gfi & 0x8)
    d = bool(gfi & 0x4)
    lcn = (buf[0] & 0x0F) << 8 | buf[1]
    pti = buf[2]

    if n - (4 if modulo == 128 else 3) > MAX_DATA_FIELD:
        raise X25Error(f"packet of {n} bytes is too long", DIAG_PACKET_TOO_LONG)

    if not pti & 1:  # Data
        if modulo == 8:
            return Data(lcn, pti >> 1 & 7, pti >> 5, buf[3:], bool(pti & 0x10), q, d, 8)
        if n < 4:
            raise X25Error("modulo 128 data packet without its P(R) byte", DIAG_PACKET_TOO_SHORT)
        return Data(lcn, pti >> 1, buf[3] >> 1, buf[4:], bool(buf[3] & 1), q, d, 128)

    flow = pti & 0x1F if modulo == 8 else pti
    if flow in (PT_RR, PT_RNR, PT_REJ):
        cls = {PT_RR: ReceiveReady, PT_RNR: ReceiveNotReady, PT_REJ: Reject}[flow]
        if modulo == 8:
            _no_body(buf)
            return cls(lcn, pti >> 5, 8)
        if n < 4:
            raise X25Error("modulo 128 flow control packet without P(R)", DIAG_PACKET_TOO_SHORT)
        _no_body(buf, 4)
        return cls(lcn, buf[3] >> 1, 128)

    if pti == PT_CALL_REQUEST:
        if q:  # the A bit: TOA/NPI address format, not used by terminals
            raise X25Error("TOA/NPI address format (A bit) is not supported", DIAG_INVALID_GFI)
        called, calling, pos = _decode_addresses(buf, 3)
        facilities, pos = _decode_facilities(buf, pos)
        user_data = buf[pos:]
        if len(user_data) > MAX_CALL_USER_DATA:
            raise X25Error("call user data too long", DIAG_PACKET_TOO_LONG)
        return CallRequest(lcn, called, calling, facilities, user_data, modulo, d)

    if pti == PT_CALL_ACCEPTED:
        if q:
            raise X25Error("TOA/NPI address format (A bit) is not supported", DIAG_INVALID_GFI)
        if n == 3:
            return CallAccepted(lcn, modulo=modulo, d_bit=d)
        called, calling, pos = _decode_addresses(buf, 3)
        facilities, pos = _decode_facilities(buf, pos)
        user_data = buf[pos:]
        if len(user_data) > MAX_CALL_USER_DATA:
            raise X25Error("called user data too long", DIAG_PACKET_TOO_LONG)
        return CallAccepted(lcn, called, calling, facilities, user_data, modulo, d)

    if pti == PT_CLEAR_REQUEST:
        cause, diagnostic = _cause_diag(buf, "clear request")
        if n <= 5:
            return ClearRequest(lcn, cause, diagnostic, modulo)
        called, calling, pos = _decode_addresses(buf, 5)
        facilities, pos = _decode_facilities(buf, pos)
        user_data = buf[pos:]
        if len(user_data) > MAX_CALL_USER_DATA:
            raise X25Error("clear user data too long", DIAG_PACKET_TOO_LONG)
        return ClearRequest(lcn, cause, diagnostic, modulo, called, calling, facilities, user_data)

    if pti == PT_CLEAR_CONFIRMATION:
        # An extended-format confirmation (addresses, facilities) is accepted and ignored.
        return ClearConfirmation(lcn, modulo)

    if pti == PT_RESET_REQUEST:
        _no_body(buf, 5)
        cause, diagnostic = _cause_diag(buf, "reset request")
        return ResetRequest(lcn, cause, diagnostic, modulo)

    if pti == PT_RESET_CONFIRMATION:
        _no_body(buf)
        return ResetConfirmation(lcn, modulo)

    if pti == PT_INTERRUPT:
        if n < 4:
            raise X25Error("interrupt without user data", DIAG_PACKET_TOO_SHORT)
        if n - 3 > MAX_INTERRUPT_DATA:
            raise X25Error("interrupt user data too long", DIAG_PACKET_TOO_LONG)
        return Interrupt(lcn, buf[3:], modulo)

    if pti == PT_INTERRUPT_CONFIRMATION:
        _no_body(buf)
        return InterruptConfirmation(lcn, modulo)

    if pti in (PT_RESTART_REQUEST, PT_RESTART_CONFIRMATION, PT_DIAGNOSTIC):
        if lcn:
            raise X25Error(
                "restart or diagnostic packet on a non-zero LCN", DIAG_RESTART_NONZERO_LCN
            )
        if pti == PT_RESTART_REQUEST:
            _no_body(buf, 5)
            cause, diagnostic = _cause_diag(buf, "restart request")
            return RestartRequest(cause, diagnostic, modulo)
        if pti == PT_RESTART_CONFIRMATION:
            _no_body(buf)
            return RestartConfirmation(modulo)
        if n < 4:
            raise X25Error("diagnostic packet without a code", DIAG_PACKET_TOO_SHORT)
        _no_body(buf, 8)
        return Diagnostic(buf[3], buf[4:], modulo)

    raise X25Error(f"unknown packet type 0x{pti:02X}", DIAG_UNIDENTIFIABLE_PACKET)
