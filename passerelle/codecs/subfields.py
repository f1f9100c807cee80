"""Sub-element codecs: the TLV layouts that live inside one ISO 8583 field.

A sub-element field's value is a tuple of `(tag, value)` pairs, in wire order, repeats kept
(CB2A repeats tag 0101 in field 59, and order matters to the acquirer).

- `AsciiTLV`  fields 44/47 in CB2A: 2-char tag + 2-digit decimal length + text value.
- `CBTLV`     fields 55/59 in CB2A: 2-byte tag + 1-byte length + binary value; one-byte
              EMV tags are left-padded with 00 (tag `0057`), so tags are 4 hex digits.
- `BerTLV`    plain EMV BER-TLV (multi-byte tags, short and long lengths), for acquirer
              profiles that carry field 55 the ISO way.
"""

from __future__ import annotations

from collections.abc import Sequence

from passerelle.codecs.masking import Mask, apply_mask

SubValue = tuple[tuple[str, str], ...] | tuple[tuple[str, bytes], ...]

# EMV tags holding a PAN or track data: they are masked wherever the field is shown.
SENSITIVE_EMV_TAGS: dict[int, Mask] = {
    0x5A: Mask.PAN,  # Application PAN
    0x57: Mask.TRACK,  # Track 2 equivalent data
    0x56: Mask.TRACK,  # Track 1 equivalent data
    0x9F6B: Mask.TRACK,  # Track 2 data (contactless)
    0x9F1F: Mask.SECRET,  # Track 1 discretionary data
    0x9F20: Mask.SECRET,  # Track 2 discretionary data
    0x99: Mask.SECRET,  # Transaction PIN data
}


class SubElementError(ValueError):
    """Raised with the offset inside the field body; the engine adds the field and base offset."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(reason)


class AsciiTLV:
    """2-char tag, 2 decimal digits of length, text value (CB2A fields 44 and 47)."""

    name = "ascii-tlv"
    binary = False

    def decode(self, body: bytes) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        pos, end = 0, len(body)
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError as exc:
            raise SubElementError(exc.start, "sub-element is not ASCII text") from None
        while pos < end:
            if end - pos < 4:
                raise SubElementError(pos, "truncated sub-element header")
            digits = text[pos + 2 : pos + 4]
            if not digits.isdigit():
                raise SubElementError(pos + 2, "sub-element length is not 2 decimal digits")
            start = pos + 4
            stop = start + int(digits)
            if stop > end:
                raise SubElementError(pos, f"sub-element length {digits} runs past the field")
            out.append((text[pos : pos + 2], text[start:stop]))
            pos = stop
        return tuple(out)

    def encode(self, items: Sequence[tuple[str, str]]) -> bytes:
        parts = []
        for tag, value in items:
            if not isinstance(value, str) or len(tag) != 2:
                raise SubElementError(0, f"sub-element {tag!r}: needs a 2-char tag and text")
            raw = value.encode("ascii")
            if len(raw) > 99:
                raise SubElementError(0, f"sub-element {tag}: {len(raw)} chars, at most 99")
            parts.append(tag.encode("ascii") + b"%02d" % len(raw) + raw)
        return b"".join(parts)

    def show(self, tag: str, value: str | bytes) -> str:
        return apply_mask(Mask.CLEAR, str(value))


class CBTLV:
    """2-byte tag, 1-byte length, binary value (CB2A fields 55 and 59)."""

    name = "cb-tlv"
    binary = True

    def decode(self, body: bytes) -> tuple[tuple[str, bytes], ...]:
        out: list[tuple[str, bytes]] = []
        append, names = out.append, _TAG_NAMES
        pos, end = 0, len(body)
        while pos < end:
            start = pos + 3
            if start > end:
                raise SubElementError(pos, "truncated sub-element header")
            stop = start + body[pos + 2]
            if stop > end:
                reason = f"sub-element length {body[pos + 2]} runs past the field"
                raise SubElementError(pos, reason)
            tag = body[pos : pos + 2]
            append((names.get(tag) or _remember_tag(tag), body[start:stop]))
            pos = stop
        return tuple(out)

    def encode(self, items: Sequence[tuple[str, bytes]]) -> bytes:
        parts = []
        for tag, item in items:
            tag_bytes = _TAG_BYTES.get(tag) or _cb_tag_bytes(tag)
            value = item if item.__class__ is bytes else _as_bytes(tag, item)
            if len(value) > 255:
                raise SubElementError(0, f"sub-element {tag}: {len(value)} bytes, at most 255")
            parts.append(tag_bytes + _LENGTH_BYTES[len(value)] + value)
        return b"".join(parts)

    def show(self, tag: str, value: str | bytes) -> str:
        return _show_emv(int(tag, 16), value if isinstance(value, bytes) else value.encode())


# Tag spellings seen so far, both ways; bounded so hostile input cannot grow them.
_TAG_NAMES: dict[bytes, str] = {}
_TAG_BYTES: dict[str, bytes] = {}
_LENGTH_BYTES = tuple(bytes((n,)) for n in range(256))


def _as_bytes(tag: str, value: object) -> bytes:
    if not isinstance(value, bytearray | memoryview):
        raise SubElementError(0, f"sub-element {tag}: needs bytes")
    return bytes(value)


def _remember_tag(tag: bytes) -> str:
    name = tag.hex().upper()
    if len(_TAG_NAMES) < 4096:
        _TAG_NAMES[tag] = name
    return name


def _cb_tag_bytes(tag: str) -> bytes:
    raw = _tag_bytes(tag)
    if len(raw) > 2:
        raise SubElementError(0, f"sub-element {tag}: tag longer than 2 bytes")
    raw = raw.rjust(2, b"\0")
    if len(_TAG_BYTES) < 4096:
        _TAG_BYTES[tag] = raw
    return raw


class BerTLV:
    """EMV BER-TLV: multi-byte tags (low 5 bits all set) and BER lengths."""

    name = "ber-tlv"
    binary = True

    def decode(self, body: bytes) -> tuple[tuple[str, bytes], ...]:
        out: list[tuple[str, bytes]] = []
        pos, end = 0, len(body)
        while pos < end:
            start = pos
            if body[pos] in (0x00, 0xFF):  # padding between objects (EMV Book 3, Annex B)
                pos += 1
                continue
            pos += 1
            if body[start] & 0x1F == 0x1F:
                while True:
                    if pos >= end:
                        raise SubElementError(start, "truncated multi-byte tag")
                    pos += 1
                    if not body[pos - 1] & 0x80:
                        break
                    if pos - start > 4:
                        raise SubElementError(start, "tag longer than 4 bytes")
            tag = body[start:pos].hex().upper()
            if pos >= end:
                raise SubElementError(start, f"tag {tag} has no length")
            size = body[pos]
            pos += 1
            if size & 0x80:
                width = size & 0x7F
                if width == 0 or width > 3 or pos + width > end:
                    raise SubElementError(pos - 1, f"tag {tag}: bad BER length")
                size = int.from_bytes(body[pos : pos + width], "big")
                pos += width
            if pos + size > end:
                raise SubElementError(start, f"tag {tag}: length {size} runs past the field")
            out.append((tag, body[pos : pos + size]))
            pos += size
        return tuple(out)

    def encode(self, items: Sequence[tuple[str, bytes]]) -> bytes:
        parts = []
        for tag, value in items:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise SubElementError(0, f"sub-element {tag}: needs bytes")
            size = len(value)
            if size < 0x80:
                length = bytes((size,))
            elif size <= 0xFF:
                length = b"\x81" + bytes((size,))
            elif size <= 0xFFFF:
                length = b"\x82" + size.to_bytes(2, "big")
            else:
                raise SubElementError(0, f"sub-element {tag}: {size} bytes is too long")
            parts.append(_tag_bytes(tag) + length + bytes(value))
        return b"".join(parts)

    def show(self, tag: str, value: str | bytes) -> str:
        return _show_emv(int(tag, 16), value if isinstance(value, bytes) else value.encode())


def _tag_bytes(tag: str) -> bytes:
    try:
        raw = bytes.fromhex(tag)
    except (ValueError, TypeError) as exc:
        raise SubElementError(0, f"sub-element tag {tag!r} is not hexadecimal") from exc
    if not raw:
        raise SubElementError(0, "empty sub-element tag")
    return raw


def _show_emv(tag: int, value: bytes) -> str:
    policy = SENSITIVE_EMV_TAGS.get(tag, Mask.CLEAR)
    return apply_mask(policy, value.hex().upper())


SUBFIELD_CODECS = {codec.name: codec for codec in (AsciiTLV(), CBTLV(), BerTLV())}
