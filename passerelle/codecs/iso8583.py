"""The ISO 8583 engine: lazy, zero-copy decoding and building answers from views.

`Message.parse` reads the MTI and the bitmaps, then locates every field through the
bitmap's compiled `Layout` (one length-prefix read per variable field); nothing is copied
or converted. `get(n)` converts one field when asked, so routing (fields 2, 3, 4, 41, 42)
converts five fields and no more. `respond` builds an answer from its request: each run of
fields it does not change is copied as one raw slice, only new or changed fields are
encoded, and the result is one `bytes.join`.

Every failure is a `CodecError(field, offset, reason)`. The fast path only answers "valid or
not"; an invalid message is parsed again by a careful field-by-field walk that says which
field broke and where, and attaches `.partial`, the fields read before it, so a format-error
reply can still echo the request's keys.

A frame that is not `bytes` (a reused `bytearray`, a view into a receive buffer) is copied
once on parse: lazy reads must never see a buffer that changed under them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from passerelle.codecs.errors import CodecError
from passerelle.codecs.fields import Encoded, FieldSpec, Parse
from passerelle.codecs.layout import Layout, Recipe, read_units
from passerelle.codecs.masking import apply_mask
from passerelle.codecs.profile import MAX_CACHED_LAYOUTS, Profile
from passerelle.codecs.subfields import SUBFIELD_CODECS

Value = Any  # str | bytes | int | tuple[tuple[str, str | bytes], ...]

# For each byte value, the 1-based positions of its set bits, most significant first.
_BITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(k + 1 for k in range(8) if byte & (0x80 >> k)) for byte in range(256)
)
_LOW64 = (1 << 64) - 1
# Field n's bit in a bitmap held as a 128-bit integer (field 1 is the top bit).
_FIELD_BIT: tuple[int, ...] = tuple(1 << (128 - n) if n else 0 for n in range(129))


class Message:
    """One decoded ISO 8583 message: its bytes, its layout, and the layout's anchors."""

    __slots__ = ("_anchors", "_data", "_layout", "mti", "profile")

    def __init__(self, profile: Profile, mti: str, data: bytes, layout: Layout,
                 anchors: list[int]) -> None:
        self.profile = profile
        self.mti = mti
        self._data = data
        self._layout = layout
        self._anchors = anchors

    # -- decoding -------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, profile: Profile) -> Message:
        """Locate every field of `data`; convert nothing. Raises `CodecError`."""
        if data.__class__ is not bytes:
            data = bytes(data)
        # The MTI and bitmap(s) as they are on the wire select a compiled head: the MTI
        # already decoded and the bitmap's layout, so a known head costs one dict lookup.
        header = profile.mti_size
        second = len(data) > header and (
            data[header] >= 0x38 if profile.bitmap_hex else data[header] & 0x80)
        key = data[: header + (profile.bitmap_size << 1 if second else profile.bitmap_size)]
        head = profile.heads.get(key)
        if head is None:
            head = _head(profile, data, key)
        anchors = head[1].walk(data) if head is not None else None
        if anchors is None:
            _parse_slowly(data, profile)  # raises the precise CodecError
            raise CodecError(None, 0, "inconsistent message")  # pragma: no cover
        return cls(profile, head[0], data, head[1], anchors)  # type: ignore[index]

    def __contains__(self, number: object) -> bool:
        return number in self._layout.where

    @property
    def numbers(self) -> tuple[int, ...]:
        """Present field numbers, in wire order."""
        return self._layout.numbers

    @property
    def wire(self) -> bytes:
        return self._data

    @property
    def layout(self) -> Layout:
        """The compiled layout of this message's bitmap (shared by every message with it)."""
        return self._layout

    @property
    def anchors(self) -> list[int]:
        """Where this message's variable fields end: with `layout.where`, what a caller
        copying many fields by position needs (`routing.translate`), one lookup per run."""
        return self._anchors

    def raw(self, number: int) -> memoryview:
        """The field's bytes as sent, length prefix included (a view, not a copy)."""
        start, _, end = self._layout.span(self._anchors, number)
        return memoryview(self._data)[start:end]

    def body(self, number: int) -> bytes:
        """The field's bytes as sent, without its length prefix (a copy; KeyError when
        the field is absent): for a caller converting them itself."""
        anchor, delta, fixed, prefix_size, _ = self._layout.where[number]
        start = self._anchors[anchor] + delta
        return self._data[start + prefix_size:start + fixed if fixed else
                          self._anchors[anchor + 1]]

    def get(self, number: int, default: Value = None) -> Value:
        """The field converted: str (n, an, ans, z), bytes (b) or sub-element pairs."""
        entry = self._layout.where.get(number)
        if entry is None:
            return default
        anchor, delta, fixed, prefix_size, convert = entry
        anchors = self._anchors
        start = anchors[anchor] + delta
        end = start + fixed if fixed else anchors[anchor + 1]
        return convert(self._data, start, start + prefix_size, end)

    def pick(self, numbers: tuple[int, ...]) -> list[Value]:
        """The values of `numbers`, in that order, None for an absent field: what a hot
        path reads from each message in one call, converting those fields and no others
        (`to_dict` converts every field and builds a dict). Raises `CodecError` as `get`."""
        layout = self._layout
        plan = layout.plans.get(numbers)
        if plan is None:
            plan = layout.plan(numbers)
        return layout.pick(self._data, self._anchors, plan, len(numbers))

    def __getitem__(self, number: int) -> Value:
        if number not in self._layout.where:
            raise KeyError(number)
        return self.get(number)

    def to_dict(self, *, subelements: bool = True) -> dict[int, Value]:
        """Every present field converted; with `subelements=False`, sub-element fields
        (44, 47, 55, 59 in CB2A) stay as their raw bodies, as they are stored or relayed."""
        return self._layout.convert_all(self._data, self._anchors, subelements)

    # -- building ------------------------------------------------------------------------
    def respond(self, mti: str, changes: Mapping[int, Value | None] | None = None) -> bytes:
        """An answer built from this message: unchanged fields are copied as raw slices.

        `changes` maps a field to its new value (or its `Encoded` wire bytes), or to None to
        leave the field out.
        """
        if changes is None:
            changes = {}
        layout, profile = self._layout, self.profile
        recipe = layout.recipes.get(tuple(changes))
        if recipe is None:
            recipe = _recipe(profile, layout, tuple(changes))
        mti_wire = profile.mti_wire.get(mti)
        if mti_wire is None:
            mti_wire = _mti_bytes(profile, mti)
        data, anchors, encoders = self._data, self._anchors, profile.encoders
        left_out = 0
        parts: list[bytes] = [mti_wire, recipe.bitmap]
        append = parts.append
        for segment in recipe.segments:
            if segment.__class__ is int:
                value = changes[segment]  # type: ignore[index]
                if value is None:
                    left_out |= _FIELD_BIT[segment]  # type: ignore[index]
                elif value.__class__ is Encoded:
                    append(value)
                else:
                    append(encoders[segment](value))  # type: ignore[index,misc]
            else:
                first, first_delta, last, last_delta = segment  # type: ignore[misc]
                append(data[anchors[first] + first_delta : anchors[last] + last_delta])
        if left_out:  # fields left out: another bitmap, made once per set left out
            bitmap = recipe.without.get(left_out)
            if bitmap is None:
                bitmap = _bitmap_bytes(profile, recipe.bits & ~left_out)
                if len(recipe.without) < 64:
                    recipe.without[left_out] = bitmap
            parts[1] = bitmap
        return b"".join(parts)

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
        return iter(self._layout.numbers)

    def __len__(self) -> int:
        return len(self._layout.numbers)

    def __repr__(self) -> str:
        fields = " ".join(f"{n}={self.shown(n)}" for n in self._layout.numbers)
        return f"<Message {self.profile.name} {self.mti or '????'} {fields}>"

    def __str__(self) -> str:
        return self.__repr__()


def show_value(spec: FieldSpec, value: Value) -> str:
    """Render a converted value under the field's mask policy (sub-elements included)."""
    if spec.sub is not None and isinstance(value, tuple):
        codec = SUBFIELD_CODECS[spec.sub]
        return " ".join(f"{tag}={codec.show(tag, item)}" for tag, item in value)
    text = value.hex().upper() if isinstance(value, bytes) else str(value)
    return apply_mask(spec.mask, text)


# -- encoding ------------------------------------------------------------------------------
def encode(profile: Profile, mti: str, values: Mapping[int, Value]) -> bytes:
    """Encode a whole message from field values. Raises `CodecError`."""
    bits = 0
    parts: list[bytes] = [b"", b""]
    for number in sorted(values):
        value = values[number]
        if value is None:
            continue
        parts.append(profile.encoders[_spec(profile, number).number](value))  # type: ignore[misc]
        bits |= 1 << (128 - number)
    parts[0] = _mti_bytes(profile, mti)
    parts[1] = _bitmap_bytes(profile, bits)
    return b"".join(parts)


def encode_field(spec: FieldSpec, value: Value) -> bytes:
    """One field's wire bytes, length prefix included (for callers holding a spec)."""
    from passerelle.codecs.layout import make_encoder  # noqa: PLC0415 - rare path

    return make_encoder(spec)(value)


def _mti_bytes(profile: Profile, mti: str) -> bytes:
    if len(mti) != 4 or not (mti.isascii() and mti.isdigit()):
        raise CodecError(None, 0, "the MTI must be 4 decimal digits")
    wire = bytes.fromhex(mti) if profile.mti_bcd else mti.encode(profile.mti_encoding)
    if len(profile.mti_wire) < MAX_CACHED_LAYOUTS:
        profile.mti_wire[mti] = wire
    return wire


def _recipe(profile: Profile, layout: Layout, keys: tuple[int, ...]) -> Recipe:
    for number in keys:
        _spec(profile, number)
    recipe = Recipe(layout, keys, _bitmap_bytes(profile, layout.bits_with(keys)))
    if len(layout.recipes) < 64:
        layout.recipes[keys] = recipe
    return recipe


def _bitmap_bytes(profile: Profile, bits: int) -> bytes:
    if bits & _LOW64:
        bitmap = (bits | 1 << 127).to_bytes(16, "big")
    else:
        bitmap = (bits >> 64).to_bytes(8, "big")
    return bitmap.hex().upper().encode("ascii") if profile.bitmap_hex else bitmap


def _spec(profile: Profile, number: int) -> FieldSpec:
    spec = profile.specs[number] if 1 < number <= 128 else None
    if spec is None:
        raise CodecError(number, 0, f"profile {profile.name} does not define field {number}")
    return spec


# -- layouts and the careful parser -----------------------------------------------------------
def _binary_bitmap(profile: Profile, key: bytes) -> bytes | None:
    if not profile.bitmap_hex:
        return key
    try:
        return bytes.fromhex(key.decode("ascii"))
    except ValueError:
        return None


def _numbers(bitmap: bytes) -> list[int]:
    numbers: list[int] = []
    for index, byte in enumerate(bitmap):
        base = index << 3
        numbers.extend(base + bit for bit in _BITS[byte] if base + bit != 1)
    return numbers


def _head(profile: Profile, data: bytes, key: bytes) -> tuple[str, Layout] | None:
    """The MTI and layout that `key` (MTI + bitmaps as on the wire) stands for, or None
    when either is not valid (the careful parser then says why)."""
    header = profile.mti_size
    if profile.mti_bcd:
        mti = data[:2].hex()
    else:
        try:
            mti = data[:4].decode(profile.mti_encoding)
        except UnicodeDecodeError:
            return None
    if not (mti.isascii() and mti.isdigit()):
        return None
    bitmap_key = key[header:]
    layout = profile.layouts.get(bitmap_key)
    if layout is None:
        if len(mti) != 4 or len(bitmap_key) not in (8, 16, 32):
            return None
        layout = _compile(profile, bitmap_key, header)
        if layout is None:
            return None
    head = (mti, layout)
    if len(profile.heads) < MAX_CACHED_LAYOUTS:
        profile.heads[key] = head
    return head


def _compile(profile: Profile, key: bytes, header: int) -> Layout | None:
    bitmap = _binary_bitmap(profile, key)
    if bitmap is None or len(bitmap) != (16 if bitmap[0] & 0x80 else 8):
        return None
    numbers = _numbers(bitmap)
    if any(profile.specs[n] is None for n in numbers):
        return None
    layout = profile.layout(numbers, header + len(key))
    if len(profile.layouts) < MAX_CACHED_LAYOUTS:
        profile.layouts[key] = layout
    return layout


def _parse_slowly(data: bytes, profile: Profile) -> None:
    """Walk the message field by field and raise the precise `CodecError`."""
    size = len(data)
    done: list[int] = []
    mti, header = "", profile.mti_size
    try:
        if size < header:
            raise CodecError(None, 0, f"truncated MTI: needs {header} bytes")
        if profile.mti_bcd:
            mti = data[:2].hex()
        else:
            try:
                mti = data[:4].decode(profile.mti_encoding)
            except UnicodeDecodeError:
                raise CodecError(None, 0, "the MTI is not text") from None
        if not (mti.isascii() and mti.isdigit()):
            mti = ""
            raise CodecError(None, 0, "the MTI is not 4 decimal digits")
        bitmap, pos = _read_bitmap(data, header, profile)
        header = pos
        specs = profile.specs
        for number in _numbers(bitmap):
            spec = specs[number]
            if spec is None:
                raise CodecError(number, pos, f"the bitmap names field {number}, "
                                 f"which profile {profile.name} does not define")
            if spec.parse is Parse.FIXED:
                end = pos + spec.fixed_size
            else:
                body = pos + spec.prefix_size
                units = read_units(data, pos, body, spec)
                if units > spec.max_len:
                    raise CodecError(number, pos,
                                     f"length {units} exceeds the maximum {spec.max_len}")
                end = body + spec.body_size(units)
            if end > size:
                raise CodecError(number, pos, f"needs {end - pos} bytes, only {size - pos} left")
            done.append(number)
            pos = end
        if pos != size:
            raise CodecError(None, pos, f"{size - pos} bytes after the last field")
    except CodecError as exc:
        layout = profile.layout(done, header)
        anchors = _partial_anchors(layout, data)
        exc.partial = Message(profile, mti, data, layout, anchors)
        raise


def _partial_anchors(layout: Layout, data: bytes) -> list[int]:
    pos = layout.header
    anchors = [pos]
    for delta, prefix_size, _, half, _, spec in layout.steps:
        start = pos + delta
        units = read_units(data, start, start + prefix_size, spec)
        pos = start + prefix_size + ((units + 1) >> 1 if half else units)
        anchors.append(pos)
    return anchors


def _read_bitmap(data: bytes, pos: int, profile: Profile) -> tuple[bytes, int]:
    width = 16 if profile.bitmap_hex else 8
    chunk = _bitmap_chunk(data, pos, width, profile, "primary")
    if chunk[0] & 0x80:
        chunk += _bitmap_chunk(data, pos + width, width, profile, "secondary")
        return chunk, pos + 2 * width
    return chunk, pos + width


def _bitmap_chunk(data: bytes, pos: int, width: int, profile: Profile, which: str) -> bytes:
    if len(data) < pos + width:
        raise CodecError(None, pos, f"truncated {which} bitmap: needs {width} bytes")
    chunk = _binary_bitmap(profile, data[pos : pos + width])
    if chunk is None or len(chunk) != 8:
        raise CodecError(None, pos, f"the {which} bitmap is not 16 hexadecimal characters")
    return chunk
