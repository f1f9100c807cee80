"""Between the terminal's CB2A message and an acquirer's profile, both ways.

Towards an `iso93-binary` acquirer a 0100 becomes a 1100 (12 = YYMMDDhhmmss built from the
terminal's 13 MMDD + 12 hhmmss, 55 as BER-TLV); `iso87-ascii` keeps the 1987 numbering
(55 as raw BER-TLV bytes); `cb2a` forwards the terminal's own bytes. Answers come back as
CB response code (39, through the acquirer's table), approval code (38), additional
response data (44, when it is CB sub-elements) and issuer data (55).

The MUX key of a message is (answer MTI, terminal 41, STAN 11, local date/time), so an
answer only ever completes the request that asked for it: a reversal (1420 -> 1430) shares
its original's terminal, STAN and time but never its answer MTI.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from passerelle.codecs.iso8583 import CodecError, Message, encode
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles import get_profile
from passerelle.routing.settings import AcquirerSettings

Key = tuple[str, str, str, str]

# Never sent on in an advice or reversal, never echoed to the terminal.
SENSITIVE = (35, 36, 45, 52)
_COPIED = (2, 3, 4, 11, 14, 23, 32, 37, 41, 42, 49)


def answer_mti(mti: str) -> str:
    """0100 -> 0110, 1420 -> 1430, 1804 -> 1814 (repeats answered as the original)."""
    return f"{mti[:2]}{int(mti[2]) + 1}{int(mti[3]) & ~1}"


def key_of(message: Message, mti: str | None = None) -> Key:
    """The MUX key; `mti` is the answer MTI expected (for a request) or None (an answer)."""
    if message.profile.name == "iso93-binary":
        when = str(message.get(12, ""))
    else:
        when = f"{message.get(13, '')}{message.get(12, '')}"
    return (mti or message.mti, str(message.get(41, "")).strip(), str(message.get(11, "")), when)


def ber_encode(items: Any) -> bytes:
    """EMV BER-TLV bytes of (hex tag, value) pairs."""
    out = bytearray()
    for tag, value in items:
        out += bytes.fromhex(tag)
        size = len(value)
        out += bytes([size]) if size < 0x80 else bytes([0x81, size])
        out += value
    return bytes(out)


def ber_decode(data: bytes) -> tuple[tuple[str, bytes], ...]:
    """(hex tag, value) pairs of EMV BER-TLV bytes; CodecError on a truncated item."""
    items: list[tuple[str, bytes]] = []
    pos, size = 0, len(data)
    while pos < size:
        start = pos
        pos += 1
        if data[start] & 0x1F == 0x1F:
            while pos < size and data[pos] & 0x80:
                pos += 1
            pos += 1
        if pos >= size:
            raise CodecError(55, start, "truncated BER-TLV tag")
        tag = data[start:pos].hex().upper()
        length = data[pos]
        pos += 1
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        if pos + length > size:
            raise CodecError(55, start, "BER-TLV value runs past the field")
        items.append((tag, data[pos:pos + length]))
        pos += length
    return tuple(items)


@functools.lru_cache(maxsize=1024)
def _ber_tag(tag: str) -> bool:
    """True when `tag` is a well-formed BER tag (a multi-byte tag ends with a byte < 0x80)."""
    raw = bytes.fromhex(tag)
    if raw[0] & 0x1F != 0x1F:
        return len(raw) == 1
    return len(raw) > 1 and all(b & 0x80 for b in raw[1:-1]) and not raw[-1] & 0x80


def cb_to_ber(items: Any) -> tuple[tuple[str, bytes], ...]:
    """CB2A 55 pairs use 2-byte tags ("0091"); BER tags drop the 00 padding ("91").

    CB's own tags that are not valid BER (DF80, DF81: the terminal's CB-specific data)
    mean nothing to a BER-TLV acquirer and would corrupt its parse: they are left out.
    """
    out = []
    for tag, value in items:
        ber = tag[2:] if tag.startswith("00") else tag
        if _ber_tag(ber):
            out.append((ber, value))
    return tuple(out)


def ber_to_cb(items: Any) -> tuple[tuple[str, bytes], ...]:
    return tuple((tag.zfill(4), value) for tag, value in items)


@functools.cache
def _same_wire(source: str, target: str) -> frozenset[int]:
    """Fixed-size fields encoded identically by both profiles: copied as raw bytes."""
    a, b = get_profile(source).specs, get_profile(target).specs
    same = set()
    for n in range(2, 65):
        x, y = a[n], b[n]
        if (x is not None and y is not None and not x.var and not y.var and x.sub is None
                and (x.kind, x.max_len, x.data, x.half) == (y.kind, y.max_len, y.data, y.half)):
            same.add(n)
    return frozenset(same)


@functools.lru_cache(maxsize=256)
def _field_wire(profile: str, number: int, value: str) -> memoryview:
    """One constant field's wire bytes (an acquirer's own identifiers), encoded once."""
    return memoryview(get_profile(profile).encoders[number](value))  # type: ignore[misc]


def _build(profile: Profile, mti: str, fields: dict[int, Any]) -> bytes:
    """`encode()` for fields 2-64, where a `memoryview` value is already wire bytes."""
    bits = 0
    parts: list[Any] = [b"", b""]
    encoders = profile.encoders
    for number in sorted(fields):
        value = fields[number]
        bits |= 1 << (64 - number)
        parts.append(value if type(value) is memoryview else encoders[number](value))  # type: ignore[misc]
    parts[0] = bytes.fromhex(mti) if profile.mti_bcd else mti.encode(profile.mti_encoding)
    bitmap = bits.to_bytes(8, "big")
    parts[1] = bitmap.hex().upper().encode() if profile.bitmap_hex else bitmap
    return b"".join(parts)


def to_acquirer(request: Message, acquirer: AcquirerSettings, now: datetime,
                known: dict[int, Any] | None = None) -> tuple[bytes, Key]:
    """The acquirer's request for a terminal's 0100, and the key its answer will carry.

    Fields both profiles encode alike are copied as raw slices; only the others are
    converted and encoded (this runs for every authorization). `known` holds fields the
    caller has already converted (2, 11, 12, 13, 41, 55), so they are not converted twice.
    """
    profile_name = acquirer.profile
    if profile_name == "cb2a":
        return request.wire, key_of(request, answer_mti(request.mti))
    known = known or {}

    def get(number: int, default: Any = None) -> Any:
        value = known.get(number)
        return request.get(number, default) if value is None else value

    same = _same_wire(request.profile.name, profile_name)
    fields: dict[int, Any] = {n: request.raw(n) if n in same else get(n)
                              for n in _COPIED if n in request}
    fields[32] = _field_wire(profile_name, 32, acquirer.acquirer_id)
    if 35 in request:
        fields[35] = get(35)
    mmdd = get(13) or f"{now.month:02d}{now.day:02d}"
    hhmmss = get(12) or f"{now.hour:02d}{now.minute:02d}{now.second:02d}"
    if profile_name == "iso93-binary":
        mti = "1" + request.mti[1:]
        fields[12] = when = f"{now.year % 100:02d}{mmdd}{hhmmss}"
        if 55 in request:
            fields[55] = cb_to_ber(get(55))
    else:
        mti = request.mti
        fields[12], fields[13] = hhmmss, mmdd
        when = mmdd + hhmmss
        for n in (22, 25):
            if n in request:
                fields[n] = request.raw(n) if n in same else get(n)
        if 55 in request:
            fields[55] = ber_encode(cb_to_ber(get(55)))
    wire = _build(get_profile(profile_name), mti, fields)
    terminal = str(get(41, "")).strip()
    return wire, (answer_mti(mti), terminal, str(get(11, "")), when)


def follow_up(original: bytes, acquirer: AcquirerSettings, kind: str,
              changes: dict[int, Any] | None = None) -> tuple[bytes, Key]:
    """An advice (x120) or reversal (x420) of an acquirer request, and its answer key.

    Track and PIN data are left out; 90 (iso87/cb2a) or 56 (iso93) names the original.
    """
    profile = get_profile(acquirer.profile)
    message = Message.parse(original, profile)
    base = message.mti[0] + ("420" if kind == "reversal" else "120")
    edits: dict[int, Any] = dict.fromkeys(n for n in (*SENSITIVE, 53, 55) if n in message)
    stan = str(message.get(11, "000000"))
    if acquirer.profile == "iso93-binary":
        edits[56] = f"{message.mti}{stan}{message.get(12, '')}"[:35]
    else:
        when = f"{message.get(13, '0000')}{message.get(12, '000000')}"
        edits[90] = f"{message.mti}{stan}{when}".ljust(42, "0")[:42]
    edits.update(changes or {})
    wire = message.respond(base, edits)
    return wire, key_of(Message.parse(wire, profile), answer_mti(base))


def sign_on(acquirer: AcquirerSettings, stan: int, now: datetime, echo: bool) -> tuple[bytes, Key]:
    """Network management: 1804 (24 = 801 sign-on, 831 echo) or 0800 (70 = 001 / 301)."""
    profile = get_profile(acquirer.profile)
    values: dict[int, Any] = {11: f"{stan % 1_000_000:06d}", 7: now.strftime("%m%d%H%M%S")}
    if acquirer.profile == "iso93-binary":
        mti = "1804"
        values[24] = "831" if echo else "801"
        values[12] = now.strftime("%y%m%d%H%M%S")
    else:
        mti = "0800"
        values[70] = "301" if echo else "001"
        values[12], values[13] = now.strftime("%H%M%S"), now.strftime("%m%d")
    wire = encode(profile, mti, values)
    return wire, key_of(Message.parse(wire, profile), answer_mti(mti))


class Outcome:
    """What the acquirer decided, in CB terms."""

    __slots__ = ("additional", "approval", "code", "issuer_data", "raw_code")

    def __init__(self, code: str, raw_code: str, approval: str | None,
                 issuer_data: tuple[tuple[str, bytes], ...] | None,
                 additional: tuple[tuple[str, str], ...] | None) -> None:
        self.code = code
        self.raw_code = raw_code
        self.approval = approval
        self.issuer_data = issuer_data
        self.additional = additional


def from_acquirer(answer: Message, acquirer: AcquirerSettings) -> Outcome:
    """The acquirer's answer in CB terms. Raises CodecError for an unreadable answer."""
    raw = str(answer.get(39, ""))
    code = acquirer.cb_code(raw) if raw else "96"
    approval = str(answer.get(38)) if 38 in answer else None
    issuer: tuple[tuple[str, bytes], ...] | None = None
    if 55 in answer:
        value = answer.get(55)
        issuer = value if acquirer.profile == "cb2a" else ber_to_cb(
            ber_decode(value) if isinstance(value, bytes) else value)
    additional = None
    if 44 in answer:
        value = answer.get(44)
        additional = value if isinstance(value, tuple) else _ascii_tlv(str(value))
    return Outcome(code, raw, approval, issuer, additional)


def _ascii_tlv(text: str) -> tuple[tuple[str, str], ...] | None:
    """CB field 44 sub-elements (2-char tag, 2-digit length) from plain text, if it is that."""
    items: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        size = text[pos + 2:pos + 4]
        if not size.isdigit() or pos + 4 + int(size) > len(text):
            return None
        items.append((text[pos:pos + 2], text[pos + 4:pos + 4 + int(size)]))
        pos += 4 + int(size)
    return tuple(items) or None


def terminal_answer(request: Message, code: str, approval: str | None = None,
                    issuer_data: Any = None, additional: Any = None) -> bytes:
    """The 0110 built from the terminal's 0100: its fields copied, 38/39/44/55 set."""
    changes: dict[int, Any] = dict.fromkeys(n for n in (*SENSITIVE, 55) if n in request)
    changes[38] = approval
    changes[39] = code
    changes[44] = additional
    if issuer_data:
        changes[55] = issuer_data
    if 59 in request:  # what the terminal said about itself, minus its capabilities (0101)
        kept = tuple(item for item in request.get(59) if item[0] != "0101")
        changes[59] = kept or None
    return request.respond(answer_mti(request.mti), changes)
