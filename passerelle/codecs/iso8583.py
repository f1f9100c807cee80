"""The ISO 8583 engine: lazy, zero-copy decoding and building answers from views.

`Message.parse` reads the MTI and the bitmaps and records where each field starts and ends
in a `memoryview` of the caller's buffer; nothing is copied or converted. `get(n)` converts
one field when asked, so routing (fields 2, 3, 4, 41, 42) converts five fields and no more.
`respond` builds an answer from its request: fields it does not change are copied as raw
slices, only new or changed fields are encoded, and the result is one `bytes.join`.

Every failure is a `CodecError(field, offset, reason)`; a decode failure carries `.partial`,
the fields read before it, so a format-error reply can still echo the request's keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from passerelle.codecs.errors import CodecError
from passerelle.codecs.fields import Data, FieldSpec, Kind, Parse, Prefix
from passerelle.codecs.masking import Mask, apply_mask
from passerelle.codecs.profile import Profile
from passerelle.codecs.subfields import SUBFIELD_CODECS, SubElementError

Value = Any  # str | bytes | int | tuple[tuple[str, str | bytes], ...]

# For each byte value, the 1-based positions of its set bits, most significant first.
_BITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(k + 1 for k in range(8) if byte & (0x80 >> k)) for byte in range(256)
)
_TRACK_CHARS = frozenset("0123456789=")


class Message:
    """One decoded ISO 8583 message: a view over its bytes plus field boundaries."""

    __slots__ = ("_buf", "_spans", "mti", "profile")

    def __init__(
        self, profile: Profile, mti: str, buf: memoryview, spans: dict[int, tuple[int, int, int]]
    ) -> None:
        self.profile = profile
        self.mti = mti
        self._buf = buf
        self._spans = spans  # field -> (prefix start, body start, end)

    # -- decoding -------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, profile: Profile) -> Message:
        """Locate every field of `data`; convert nothing. Raises `CodecError`."""
        buf = data if isinstance(data, memoryview) else memoryview(data)
        if buf.ndim != 1 or buf.itemsize != 1:
            buf = buf.cast("B")
        size = len(buf)
        spans: dict[int, tuple[int, int, int]] = {}
        mti = ""
        try:
            mti, pos = _read_mti(buf, profile)
            bitmap, pos = _read_bitmap(buf, pos, profile)
            specs = profile.specs
            for index, byte in enumerate(bitmap):
                if not byte:
                    continue
                base = index << 3
                for bit in _BITS[byte]:
                    number = base + bit
                    if number == 1:
                        continue
                    spec = specs[number]
                    if spec is None:
                        raise CodecError(
                            number, pos, f"the bitmap names field {number}, "
                            f"which profile {profile.name} does not define"
                        )
                    parse = spec.parse
                    if parse is Parse.FIXED:
                        end = pos + spec.fixed_size
                        body = pos
                    else:
                        body = pos + spec.prefix_size
                        if body > size:
                            raise CodecError(number, pos, "truncated length prefix")
                        units = _read_units(buf, pos, body, spec)
                        if units > spec.max_len:
                            raise CodecError(
                                number, pos,
                                f"length {units} exceeds the maximum {spec.max_len}",
                            )
                        end = body + ((units + 1) >> 1 if spec.half else units)
                    if end > size:
                        raise CodecError(
                            number, pos, f"needs {end - pos} bytes, only {size - pos} left"
                        )
                    spans[number] = (pos, body, end)
                    pos = end
            if pos != size:
                raise CodecError(None, pos, f"{size - pos} bytes after the last field")
        except CodecError as exc:
            exc.partial = cls(profile, mti, buf, spans)
            raise
        return cls(profile, mti, buf, spans)

    def __contains__(self, number: object) -> bool:
        return number in self._spans

    @property
    def numbers(self) -> list[int]:
        """Present field numbers, in wire order."""
        return list(self._spans)

    def raw(self, number: int) -> memoryview:
        """The field's bytes as sent, length prefix included (a view, not a copy)."""
        start, _, end = self._spans[number]
        return self._buf[start:end]

    @property
    def wire(self) -> memoryview:
        return self._buf

    def get(self, number: int, default: Value = None) -> Value:
        """The field converted to str (n, an, ans, z), bytes (b) or sub-element pairs."""
        span = self._spans.get(number)
        if span is None:
            return default
        return _convert(self.profile.specs[number], self._buf, span)  # type: ignore[arg-type]

    def __getitem__(self, number: int) -> Value:
        if number not in self._spans:
            raise KeyError(number)
        return self.get(number)

    def to_dict(self) -> dict[int, Value]:
        """Every present field converted."""
        specs, buf = self.profile.specs, self._buf
        return {n: _convert(specs[n], buf, span) for n, span in self._spans.items()}  # type: ignore[arg-type]

    # -- building ------------------------------------------------------------------------
    def respond(self, mti: str, changes: Mapping[int, Value | None] | None = None) -> bytes:
        """An answer built from this message: unchanged fields are copied as raw slices.

        `changes` maps a field to its new value, or to None to leave the field out.
        """
        changes = changes or {}
        spans, buf = self._spans, self._buf
        numbers = set(spans)
        numbers.update(changes)
        parts: list[tuple[int, bytes | memoryview]] = []
        for number in sorted(numbers):
            if number in changes:
                value = changes[number]
                if value is None:
                    continue
                parts.append((number, encode_field(_spec(self.profile, number), value)))
            else:
                start, _, end = spans[number]
                parts.append((number, buf[start:end]))
        return _assemble(self.profile, mti, parts)

    # -- display -------------------------------------------------------------------------
    def shown(self, number: int) -> str:
        """The field as a person may see it: masked per the profile's policy."""
        spec = self.profile.specs[number]
        assert spec is not None
        try:
            value = self.get(number)
        except CodecError as exc:
            return f"<invalid: {exc.reason}>"
        return show_value(spec, value)

    def __iter__(self) -> Iterator[int]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def __repr__(self) -> str:
        fields = " ".join(f"{n}={self.shown(n)}" for n in self._spans)
        return f"<Message {self.profile.name} {self.mti or '????'} {fields}>"

    __str__ = __repr__


def show_value(spec: FieldSpec, value: Value) -> str:
    """Render a converted value under the field's mask policy (sub-elements included)."""
    if spec.sub is not None and isinstance(value, tuple):
        codec = SUBFIELD_CODECS[spec.sub]
        return " ".join(f"{tag}={codec.show(tag, item)}" for tag, item in value)
    text = value.hex().upper() if isinstance(value, bytes) else str(value)
    if spec.mask is Mask.CLEAR and isinstance(value, bytes):
        return text
    return apply_mask(spec.mask, text)


# -- encoding ------------------------------------------------------------------------------
def encode(profile: Profile, mti: str, values: Mapping[int, Value]) -> bytes:
    """Encode a whole message from field values. Raises `CodecError`."""
    parts = [
        (number, encode_field(_spec(profile, number), value))
        for number, value in sorted(values.items())
        if value is not None
    ]
    return _assemble(profile, mti, parts)


def encode_field(spec: FieldSpec, value: Value) -> bytes:
    """One field's wire bytes, length prefix included."""
    number = spec.number
    if spec.sub is not None and isinstance(value, tuple | list):
        try:
            value = SUBFIELD_CODECS[spec.sub].encode(value)
        except SubElementError as exc:
            raise CodecError(number, 0, exc.reason) from None
    data = spec.data
    if data is Data.BCD:
        text = _numeric_text(spec, value)
        units = len(text) if spec.count_digits or not spec.var else (len(text) + 1) >> 1
        if len(text) & 1:
            text = "0" + text
        body = bytes.fromhex(text.replace("=", "D"))
    elif data is Data.BINARY or data is Data.HEX:
        if isinstance(value, str) and spec.sub is not None:
            value = value.encode("ascii")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise CodecError(number, 0, f"expects bytes, got {type(value).__name__}")
        body = bytes(value)
        if data is Data.HEX:
            body = body.hex().upper().encode("ascii")
        units = len(body)
    else:
        text = _numeric_text(spec, value) if spec.kind is Kind.N else value
        if not isinstance(text, str):
            raise CodecError(number, 0, f"expects text, got {type(value).__name__}")
        try:
            body = text.encode(data.value)
        except UnicodeEncodeError:
            reason = f"holds characters that {data.value} cannot encode"
            raise CodecError(number, 0, reason) from None
        units = len(body)
    if not spec.var:
        if units != spec.max_len:
            raise CodecError(number, 0, f"fixed length {spec.max_len}, got {units}")
        return body
    if units > spec.max_len:
        raise CodecError(number, 0, f"length {units} exceeds the maximum {spec.max_len}")
    return _prefix(spec, units) + body


def _numeric_text(spec: FieldSpec, value: Value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise CodecError(spec.number, 0, "a numeric field cannot be negative")
        text = str(value)
        if not spec.var:
            text = text.rjust(spec.max_len, "0")
        return text
    if not isinstance(value, str):
        raise CodecError(spec.number, 0, f"expects digits, got {type(value).__name__}")
    if spec.kind is Kind.Z:
        text = value.replace("D", "=").replace("d", "=")
        if not set(text) <= _TRACK_CHARS:
            raise CodecError(spec.number, 0, "track data holds characters other than digits and =")
        return text
    if not (value.isascii() and value.isdigit()):
        raise CodecError(spec.number, 0, "expects decimal digits only")
    return value


def _prefix(spec: FieldSpec, units: int) -> bytes:
    if spec.prefix is Prefix.BINARY:
        return units.to_bytes(spec.prefix_size, "big")
    if spec.prefix is Prefix.BCD:
        return bytes.fromhex(f"{units:0{2 * spec.prefix_size}d}")
    return f"{units:0{spec.var}d}".encode(spec.prefix.value)


def _assemble(profile: Profile, mti: str, parts: list[tuple[int, bytes | memoryview]]) -> bytes:
    if len(mti) != 4 or not (mti.isascii() and mti.isdigit()):
        raise CodecError(None, 0, "the MTI must be 4 decimal digits")
    bits = 0
    for number, _ in parts:
        if number < 2 or number > 128:
            raise CodecError(number, 0, "field numbers run from 2 to 128")
        bits |= 1 << (128 - number)
    secondary = bits & ((1 << 64) - 1)
    if secondary:
        bits |= 1 << 127
        bitmap = bits.to_bytes(16, "big")
    else:
        bitmap = (bits >> 64).to_bytes(8, "big")
    if profile.bitmap_hex:
        bitmap = bitmap.hex().upper().encode("ascii")
    head = bytes.fromhex(mti) if profile.mti_bcd else mti.encode(profile.mti_encoding)
    return b"".join([head, bitmap, *(raw for _, raw in parts)])


# -- decoding helpers ------------------------------------------------------------------------
def _read_mti(buf: memoryview, profile: Profile) -> tuple[str, int]:
    if profile.mti_bcd:
        if len(buf) < 2:
            raise CodecError(None, 0, "truncated MTI: needs 2 bytes")
        mti = buf[:2].hex()
        pos = 2
    else:
        if len(buf) < 4:
            raise CodecError(None, 0, "truncated MTI: needs 4 bytes")
        try:
            mti = str(buf[:4], profile.mti_encoding)
        except UnicodeDecodeError:
            raise CodecError(None, 0, "the MTI is not text") from None
        pos = 4
    if not (mti.isascii() and mti.isdigit()):
        raise CodecError(None, 0, "the MTI is not 4 decimal digits")
    return mti, pos


def _read_bitmap(buf: memoryview, pos: int, profile: Profile) -> tuple[bytes, int]:
    if profile.bitmap_hex:
        bitmap = _hex_bitmap(buf, pos)
        pos += 16
        if bitmap[0] & 0x80:
            bitmap += _hex_bitmap(buf, pos)
            pos += 16
        return bitmap, pos
    if len(buf) < pos + 8:
        raise CodecError(None, pos, "truncated primary bitmap")
    bitmap = bytes(buf[pos : pos + 8])
    pos += 8
    if bitmap[0] & 0x80:
        if len(buf) < pos + 8:
            raise CodecError(None, pos, "truncated secondary bitmap")
        bitmap += bytes(buf[pos : pos + 8])
        pos += 8
    return bitmap, pos


def _hex_bitmap(buf: memoryview, pos: int) -> bytes:
    if len(buf) < pos + 16:
        raise CodecError(None, pos, "truncated bitmap: needs 16 hex characters")
    try:
        return bytes.fromhex(str(buf[pos : pos + 16], "ascii"))
    except ValueError:
        raise CodecError(None, pos, "the bitmap is not hexadecimal") from None


def _read_units(buf: memoryview, start: int, body: int, spec: FieldSpec) -> int:
    parse = spec.parse
    if parse is Parse.BIN:
        return buf[start] if body - start == 1 else int.from_bytes(buf[start:body], "big")
    if parse is Parse.BCD:
        text = buf[start:body].hex()
    else:
        try:
            text = str(buf[start:body], spec.prefix.value)
        except UnicodeDecodeError:
            text = ""
    if not (text.isascii() and text.isdigit()):
        raise CodecError(spec.number, start, "the length prefix is not decimal")
    return int(text)


def _convert(spec: FieldSpec, buf: memoryview, span: tuple[int, int, int]) -> Value:
    start, body, end = span
    data = spec.data
    raw = buf[body:end]
    if data is Data.BCD:
        digits = raw.hex()
        units = spec.max_len if not spec.var else _read_units(buf, start, body, spec)
        if len(digits) != units:
            if digits[0] != "0":
                raise CodecError(spec.number, body, "the BCD pad nibble is not 0")
            digits = digits[1:]
        if spec.kind is Kind.Z:
            digits = digits.replace("d", "=")
            if not set(digits) <= _TRACK_CHARS:
                raise CodecError(spec.number, body, "track data holds a nibble other than 0-9 or D")
        elif not digits.isdigit():
            raise CodecError(spec.number, body, "a BCD nibble is not a decimal digit")
        return digits
    if data is Data.BINARY:
        value: Any = bytes(raw)
    elif data is Data.HEX:
        try:
            value = bytes.fromhex(str(raw, "ascii"))
        except ValueError:
            raise CodecError(spec.number, body, "expected hexadecimal characters") from None
    else:
        try:
            value = str(raw, data.value)
        except UnicodeDecodeError:
            raise CodecError(spec.number, body, f"the value is not {data.value} text") from None
        if spec.kind is Kind.N and not (value.isascii() and value.isdigit()):
            raise CodecError(spec.number, body, "a numeric field holds a non-digit")
        if spec.kind is Kind.Z and not set(value) <= _TRACK_CHARS:
            raise CodecError(spec.number, body, "track data holds characters other than 0-9 and =")
    if spec.sub is not None:
        try:
            body_bytes = value if isinstance(value, bytes) else value.encode(data.value)
            return SUBFIELD_CODECS[spec.sub].decode(body_bytes)
        except SubElementError as exc:
            raise CodecError(spec.number, body + exc.offset, exc.reason) from None
    return value


def _spec(profile: Profile, number: int) -> FieldSpec:
    spec = profile.specs[number] if 1 < number <= 128 else None
    if spec is None:
        raise CodecError(number, 0, f"profile {profile.name} does not define field {number}")
    return spec
