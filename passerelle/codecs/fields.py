"""Field formats: the data a profile is made of.

A `FieldSpec` says how one ISO 8583 field sits on the wire: its kind (n, an, ans, b, z), fixed
or LL/LLL variable length, what the length prefix counts and how it is written, how the value
is written (packed BCD, ASCII, EBCDIC, raw binary, or binary as hex characters), an optional
sub-element codec, and its mask policy. The engine reads nothing else, so a new acquirer
layout is a new table, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from passerelle.codecs.masking import Mask


class Encoded(bytes):
    """A field's wire bytes, length prefix included: `Message.respond` copies such a value
    as it is, for a caller that made it straight from another message's bytes (an
    acquirer's chip data turned into the terminal's sub-elements) rather than from a
    value. (Here, not in the engine: mypyc compiles the engine, and a compiled class
    cannot subclass bytes.)"""

    __slots__ = ()


class CbTlv(bytes):
    """CB2A sub-elements already encoded (2-byte tag, 1-byte length, value), for
    `routing.translate.terminal_answer` to copy into field 55 rather than encode pairs
    again. (Here beside `Encoded`, for the same reason: mypyc compiles `translate`.)"""

    __slots__ = ()


class Kind(StrEnum):
    N = "n"  # numeric digits
    AN = "an"  # alphanumeric
    ANS = "ans"  # alphanumeric and special
    B = "b"  # binary
    Z = "z"  # track data: digits and a separator


class Data(StrEnum):
    BCD = "bcd"  # packed BCD, odd digit counts left-padded with a 0 nibble
    ASCII = "ascii"
    EBCDIC = "cp500"
    BINARY = "binary"  # raw bytes
    HEX = "hex"  # bytes written as hexadecimal ASCII characters


class Prefix(StrEnum):
    BINARY = "binary"  # unsigned big-endian integer: 1 byte for LL, 2 bytes for LLL
    BCD = "bcd"  # packed BCD: 1 byte for LL, 2 bytes for LLL
    ASCII = "ascii"  # 2 or 3 ASCII digits
    EBCDIC = "cp500"  # 2 or 3 EBCDIC digits


class Parse(IntEnum):
    """How the engine finds the end of a field; precomputed so the hot loop only branches."""

    FIXED = 0
    BIN = 1
    BCD = 2
    TEXT = 3


@dataclass(frozen=True, slots=True)
class FieldSpec:
    number: int
    name: str
    kind: Kind
    max_len: int  # in the prefix's unit: digits (BCD numerics), characters, or bytes
    var: int = 0  # 0 fixed, 2 for LLVAR, 3 for LLLVAR
    prefix: Prefix = Prefix.BINARY
    data: Data = Data.ASCII
    count_digits: bool = True  # BCD only: the prefix counts digits (True) or bytes (False)
    sub: str | None = None  # sub-element codec name (see subfields.SUBFIELD_CODECS)
    mask: Mask = Mask.CLEAR
    # Derived, for the parser:
    parse: Parse = field(init=False)
    prefix_size: int = field(init=False)
    fixed_size: int = field(init=False)
    half: bool = field(init=False)  # prefix counts nibbles of a packed-BCD body

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        half = self.data is Data.BCD and (self.count_digits or not self.var)
        set_(self, "half", half)
        if not self.var:
            set_(self, "parse", Parse.FIXED)
            set_(self, "prefix_size", 0)
            set_(self, "fixed_size", (self.max_len + 1) // 2 if half else self.max_len)
            return
        set_(self, "fixed_size", 0)
        if self.prefix is Prefix.BINARY:
            set_(self, "parse", Parse.BIN)
            set_(self, "prefix_size", self.var - 1)
        elif self.prefix is Prefix.BCD:
            set_(self, "parse", Parse.BCD)
            set_(self, "prefix_size", self.var - 1)
        else:
            set_(self, "parse", Parse.TEXT)
            set_(self, "prefix_size", self.var)
        limit = (1 << (8 * self.prefix_size)) - 1 if self.parse is Parse.BIN else 10**self.var - 1
        if self.max_len > limit:
            raise ValueError(f"field {self.number}: max_len {self.max_len} exceeds its prefix")

    def body_size(self, units: int) -> int:
        """Bytes taken by `units` counted by the prefix."""
        return (units + 1) >> 1 if self.half else units

    @property
    def label(self) -> str:
        span = f"{self.max_len}" if not self.var else f"{'.' * self.var}{self.max_len}"
        return f"{self.kind}{span}"
