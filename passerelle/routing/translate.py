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
from datetime import UTC, datetime
from typing import Any

from passerelle.codecs.fields import CbTlv, Data, Encoded, FieldSpec, Kind, Prefix
from passerelle.codecs.iso8583 import CodecError, Message, encode
from passerelle.codecs.layout import read_units
from passerelle.codecs.profiles import get_profile
from passerelle.codecs.subfields import SUBFIELD_CODECS
from passerelle.routing.settings import AcquirerSettings

Key = tuple[str, str, str, str]

# Never sent on in an advice or reversal, never echoed to the terminal.
SENSITIVE = (35, 36, 45, 52)
_COPIED = (2, 3, 4, 11, 14, 23, 32, 37, 41, 42, 49)


@functools.lru_cache(maxsize=256)
def answer_mti(mti: str) -> str:
    """0100 -> 0110, 1420 -> 1430, 1804 -> 1814 (repeats answered as the original).
    Cached: a few MTIs, asked several times per authorization."""
    return f"{mti[:2]}{int(mti[2]) + 1}{int(mti[3]) & ~1}"


_KEY93 = (11, 12, 41)
_KEY = (11, 12, 13, 41)


def key_of(message: Message, mti: str | None = None) -> Key:
    """The MUX key; `mti` is the answer MTI expected (for a request) or None (an answer).
    Its fields are read in one `pick` (every answer from an acquirer is keyed)."""
    if message.profile.name == "iso93-binary":
        stan, when, terminal = message.pick(_KEY93)
        when = when or ""
    else:
        stan, hhmmss, mmdd, terminal = message.pick(_KEY)
        when = f"{mmdd or ''}{hhmmss or ''}"
    return (mti or message.mti, (terminal or "").strip(), stan or "", when)


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


def _prefix_bytes(spec: FieldSpec, units: int) -> bytes:
    """A variable field's length prefix as `spec` writes it."""
    size = spec.prefix_size
    if spec.prefix is Prefix.BINARY:
        return units.to_bytes(size, "big")
    if spec.prefix is Prefix.BCD:
        return bytes.fromhex(f"{units:0{2 * size}d}")
    return f"{units:0{spec.var}d}".encode(spec.prefix.value)


class _Reprefix:
    """A variable field copied with another length prefix: the source's prefix read, the
    target's written from a table (both are tiny: LL or LLL)."""

    __slots__ = ("number", "prefixes", "source", "source_size", "target_name")

    def __init__(self, source: FieldSpec, target: FieldSpec, target_name: str) -> None:
        self.number = source.number
        self.source = source
        self.source_size = source.prefix_size
        self.prefixes = tuple(_prefix_bytes(target, units) for units in range(target.max_len + 1))
        self.target_name = target_name

    def units(self, data: bytes, start: int) -> int:
        """The length the source's prefix at `start` announces (CodecError if too long)."""
        if self.source.prefix is Prefix.BINARY and self.source_size == 1:
            units: int = data[start]
        else:
            units = read_units(data, start, start + self.source_size, self.source)
        if units >= len(self.prefixes):
            raise CodecError(self.number, 0, f"{units} units, at most "
                             f"{len(self.prefixes) - 1} towards {self.target_name}")
        return units


def _reprefixable(x: FieldSpec, y: FieldSpec) -> bool:
    """Variable fields whose bodies are the same bytes in both profiles; only the length
    prefix may be written differently (CB2A's binary LL against ISO 93's BCD LL)."""
    return (bool(x.var) and bool(y.var) and x.sub is None and y.sub is None
            and (x.kind, x.data, x.half, x.count_digits) == (y.kind, y.data, y.half,
                                                             y.count_digits))


# CB2A 55 tag (2 bytes) -> its BER tag bytes, or b"" for a CB-only tag that is left out.
_BER_TAGS: dict[bytes, bytes] = {}


def _ber_tag_of(tag: bytes) -> bytes:
    ber = _BER_TAGS.get(tag)
    if ber is None:
        name = tag[1:] if tag[0] == 0 else tag
        ber = name if _ber_tag(name.hex().upper()) else b""
        if len(_BER_TAGS) < 4096:
            _BER_TAGS[tag] = ber
    return ber


def cb_raw_to_ber(body: bytes) -> bytes:
    """`ber_encode(cb_to_ber(...))` straight from CB2A 55 bytes (2-byte tag, 1-byte
    length, value), without building the pairs: this runs for every chip authorization."""
    out: list[bytes] = []
    pos, end = 0, len(body)
    while pos < end:
        start = pos + 3
        if start > end:
            raise CodecError(55, pos, "truncated sub-element header")
        size = body[pos + 2]
        if start + size > end:
            raise CodecError(55, pos, f"sub-element length {size} runs past the field")
        tag = _ber_tag_of(body[pos:pos + 2])
        if tag:
            out.append(tag)
            out.append(_BER_LENGTHS[size])
            out.append(body[start:start + size])
        pos = start + size
    return b"".join(out)


_BER_LENGTHS = tuple(bytes((n,)) if n < 0x80 else bytes((0x81, n)) for n in range(256))


def _bcd_fixed(spec: FieldSpec | None, digits: int) -> bool:
    return (spec is not None and not spec.var and spec.kind is Kind.N and spec.data is Data.BCD
            and spec.max_len == digits)


# What the acquirer's message carries, piece by piece (how each is made; `_plan`).
_SLICE, _PREFIX, _CONST, _WHEN93, _ICC, _VALUE = range(6)
# ISO 93's YYMMDDhhmmss starts with the year: its BCD byte, by year of the century.
_YEAR_BYTES = tuple(bytes(((n // 10) << 4 | n % 10,)) for n in range(100))


class _Plan:
    """How to build one acquirer request from one shape of terminal request (its MTI and
    fields): the MTI and bitmap bytes, then one step per piece, in wire order. A piece is
    a run of fields copied as one slice (`_SLICE`: consecutive in both messages, the same
    bytes in both profiles) or one field made another way. A step is (kind, anchor,
    delta, end anchor, end delta, extra): positions as the request's layout has them, so
    building reads `anchors[i] + delta` and nothing else."""

    __slots__ = ("head", "mti", "steps", "when93")

    def __init__(self, head: bytes, mti: str, steps: tuple[tuple[Any, ...], ...],
                 when93: tuple[int, int, int, int] | None) -> None:
        self.head = head
        self.mti = mti
        self.steps = steps
        self.when93 = when93  # (13's anchor, delta, 12's anchor, delta) when BCD-built


_MAX_PLANS = 1024  # shapes of request x acquirers; hostile input cannot grow it


def _plan(request: Message, target_name: str, acquirer_id: str) -> _Plan:
    """The plan for this request's shape, kept with its layout (the codec bounds those)."""
    memo = request.layout.memo
    key = (request.mti, target_name, acquirer_id)
    plan = memo.get(key)
    if plan is None:
        if len(memo) >= 64:
            memo.clear()
        plan = memo[key] = _make_plan(request, target_name, acquirer_id)
    return plan  # type: ignore[no-any-return]


def _make_plan(request: Message, target_name: str, acquirer_id: str) -> _Plan:
    source, target = request.profile, get_profile(target_name)
    where = request.layout.where
    numbers = request.numbers
    present = set(numbers)
    iso93 = target_name == "iso93-binary"
    wanted = {n for n in _COPIED if n in present} | {12, 32}
    wanted |= {35, 55} & present
    if not iso93:
        wanted |= {13} | ({22, 25} & present)
    same = _same_wire(source.name, target_name)
    bcd93 = iso93 and {12, 13} <= present and _bcd_fixed(source.specs[12], 6) \
        and _bcd_fixed(source.specs[13], 4) and _bcd_fixed(target.specs[12], 12)
    steps: list[tuple[Any, ...]] = []
    previous = None  # the source field copied last, while a slice is open
    for n in sorted(wanted):
        x, y = source.specs[n], target.specs[n]
        assert y is not None
        if n in present:
            anchor, delta, fixed = where[n][:3]
            # The field's end, as (anchor, delta): a fixed field ends `fixed` bytes on, a
            # variable one where the next anchor starts.
            end = (anchor, delta + fixed) if fixed else (anchor + 1, 0)
        if n == 32:
            step: tuple[Any, ...] = (_CONST, 0, 0, 0, 0, target.encoders[32](acquirer_id))  # type: ignore[misc]
        elif n == 12 and bcd93:
            step = (_WHEN93, 0, 0, 0, 0, None)
        elif n == 55 and x is not None and x.sub == "cb-tlv" and y.data is Data.BINARY \
                and y.sub in ("ber-tlv", None) and y.var:
            step = (_ICC, anchor, delta, *end, _Reprefix(x, y, target_name))
        elif n in (12, 13, 55) or x is None:
            step = (_VALUE, 0, 0, 0, 0, n)
        elif n in same:
            if previous is not None and numbers.index(n) == numbers.index(previous) + 1:
                steps[-1] = (*steps[-1][:3], *end, None)  # the open slice grows
            else:
                steps.append((_SLICE, anchor, delta, *end, None))
            previous = n
            continue
        elif _reprefixable(x, y):
            step = (_PREFIX, anchor, delta, *end, _Reprefix(x, y, target_name))
        else:
            step = (_VALUE, 0, 0, 0, 0, n)
        steps.append(step)
        previous = None
    mti = "1" + request.mti[1:] if iso93 else request.mti
    bits = 0
    for n in wanted:
        bits |= 1 << (64 - n)
    bitmap = bits.to_bytes(8, "big")
    head = (bytes.fromhex(mti) if target.mti_bcd else mti.encode(target.mti_encoding)) + (
        bitmap.hex().upper().encode() if target.bitmap_hex else bitmap)
    when93 = (*where[13][:2], *where[12][:2]) if bcd93 else None
    return _Plan(head, mti, tuple(steps), when93)  # type: ignore[arg-type]


def to_acquirer(request: Message, acquirer: AcquirerSettings, now: datetime,
                known: dict[int, Any] | None = None) -> tuple[bytes, Key]:
    """The acquirer's request for a terminal's 0100, and the key its answer will carry.

    Built from raw slices (this runs for every authorization): runs of fields both profiles
    encode alike are copied as one slice each, variable fields whose bodies agree get the
    target's length prefix, ISO 93's YYMMDDhhmmss is the year's BCD byte before the
    terminal's own 13 and 12 bytes; only the rest is converted and encoded. The steps for a
    shape of request are worked out once (`_plan`). `known` holds fields the caller has
    already converted (11, 41, 55), so they are not converted twice.
    """
    profile_name = acquirer.profile
    if profile_name == "cb2a":
        return request.wire, key_of(request, answer_mti(request.mti))
    known = known or {}
    plan = _plan(request, profile_name, acquirer.acquirer_id)
    data, anchors = request.wire, request.anchors
    parts: list[bytes] = [plan.head]
    append = parts.append
    when = ""
    for step, anchor, delta, last, last_delta, extra in plan.steps:
        if step == _SLICE:
            append(data[anchors[anchor] + delta:anchors[last] + last_delta])
        elif step == _CONST:
            append(extra)
        elif step == _WHEN93:
            a13, d13, a12, d12 = plan.when93  # type: ignore[misc]
            start13, start12 = anchors[a13] + d13, anchors[a12] + d12
            when_wire = _YEAR_BYTES[now.year % 100] + data[start13:start13 + 2] + \
                data[start12:start12 + 3]
            when = when_wire.hex()
            if not when.isdigit():
                raise CodecError(12, 0, "local date/time is not BCD digits")
            append(when_wire)
        elif step == _VALUE:
            append(get_profile(profile_name).encoders[extra](  # type: ignore[misc]
                _value(request, extra, known, now, profile_name)))
        else:
            start = anchors[anchor] + delta
            body = data[start + extra.source_size:anchors[last] + last_delta]
            if step == _PREFIX:
                append(extra.prefixes[extra.units(data, start)])
                append(body)
            else:  # _ICC
                icc = cb_raw_to_ber(body)
                if len(icc) >= len(extra.prefixes):
                    raise CodecError(55, 0, f"{len(icc)} bytes of chip data, at most "
                                     f"{len(extra.prefixes) - 1} towards {profile_name}")
                append(extra.prefixes[len(icc)])
                append(icc)
    if plan.when93 is None:
        mmdd = request.get(13) or f"{now.month:02d}{now.day:02d}"
        hhmmss = request.get(12) or f"{now.hour:02d}{now.minute:02d}{now.second:02d}"
        when = f"{now.year % 100:02d}{mmdd}{hhmmss}" if profile_name == "iso93-binary" \
            else mmdd + hhmmss
    terminal = known.get(41)
    if terminal is None:
        terminal = str(request.get(41, "")).strip()
    stan = known.get(11)
    if stan is None:
        stan = str(request.get(11, ""))
    return b"".join(parts), (answer_mti(plan.mti), terminal, stan, when)


def _value(request: Message, n: int, known: dict[int, Any], now: datetime,
           profile_name: str) -> Any:
    """A field of the acquirer's request that is converted, not copied."""
    if n in (12, 13):
        mmdd = request.get(13) or f"{now.month:02d}{now.day:02d}"
        hhmmss = request.get(12) or f"{now.hour:02d}{now.minute:02d}{now.second:02d}"
        if n == 13:
            return mmdd
        return f"{now.year % 100:02d}{mmdd}{hhmmss}" if profile_name == "iso93-binary" \
            else hhmmss
    value = known.get(n)
    if value is None:
        value = request.get(n)
    if n == 55:
        pairs = cb_to_ber(value)
        return pairs if profile_name == "iso93-binary" else ber_encode(pairs)
    return value


def original_request(reversal: Message, acquirer: AcquirerSettings, mti: str, stan: str,
                     when: str) -> bytes:
    """The acquirer request of an approval, rebuilt from the terminal's reversal of it.

    A node that did not approve it has only the auth log row (the original's MTI, STAN
    and `when`, the time part of its MUX key) and the reversal, which repeats the card and
    amounts. The reversal's fields are taken as the original's, with its STAN and local
    date/time (13, 12) set from the row; the result goes through `to_acquirer` like any
    request, so its key, and the key of the reversal made of it, are the ones the
    approving node used. CodecError when that cannot be built.
    """
    local = when[-10:]
    if len(local) != 10 or not when.isdigit() or len(when) not in (10, 12):
        raise CodecError(12, 0, f"logged acquirer time {when!r} is not [YY]MMDDhhmmss")
    changes: dict[int, Any] = {11: stan, 13: local[:4], 12: local[4:]}
    changes.update(dict.fromkeys(n for n in (38, 39, 90, 95) if n in reversal))
    original = Message.parse(reversal.respond(mti, changes), reversal.profile)
    year = 2000 + int(when[:2]) if len(when) == 12 else datetime.now(UTC).year
    wire, key = to_acquirer(original, acquirer, datetime(year, 1, 1, tzinfo=UTC))
    if key[3] != when:
        raise CodecError(12, 0, f"rebuilt time {key[3]!r} differs from the logged {when!r}")
    return wire


def follow_up(original: bytes, acquirer: AcquirerSettings, kind: str,
              changes: dict[int, Any] | None = None) -> tuple[bytes, Key]:
    """An advice (x120, or x220 for a financial x200) or reversal (x420 for both) of an
    acquirer request, and its answer key.

    Track and PIN data are left out; 90 (iso87/cb2a) or 56 (iso93) names the original.
    """
    profile = get_profile(acquirer.profile)
    message = Message.parse(original, profile)
    base = message.mti[0] + ("420" if kind == "reversal" else message.mti[1] + "20")
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
                 issuer_data: tuple[tuple[str, bytes], ...] | CbTlv | None,
                 additional: tuple[tuple[str, str], ...] | None) -> None:
        self.code = code
        self.raw_code = raw_code
        self.approval = approval
        self.issuer_data = issuer_data
        self.additional = additional


def ber_raw_to_cb(body: bytes) -> CbTlv | None:
    """`ber_to_cb(ber_decode(body))` as CB2A bytes, straight from the BER bytes, when every
    item has the plain form an issuer sends (a 1- or 2-byte tag, a short length); None
    for anything else (padding, long lengths or tags, a value running past the end): the
    caller then decodes the pairs, which says what is wrong, or encodes what is unusual."""
    out: list[bytes] = []
    append = out.append
    pos, end = 0, len(body)
    while pos < end:
        first = body[pos]
        if first in (0x00, 0xFF):
            return None
        if first & 0x1F == 0x1F:
            if pos + 1 >= end or body[pos + 1] & 0x80:
                return None
            tag, pos = body[pos:pos + 2], pos + 2
        else:
            tag, pos = _CB_TAGS[first], pos + 1
        if pos >= end:
            return None
        size = body[pos]
        start, pos = pos + 1, pos + 1 + size
        if size & 0x80 or pos > end:
            return None
        append(tag)
        append(_BER_LENGTHS[size])
        append(body[start:pos])
    encoded = b"".join(out)
    return CbTlv(encoded) if len(encoded) < 256 else None


_CB_TAGS = tuple(bytes((0, n)) for n in range(256))  # a 1-byte BER tag as CB's 2 bytes


def from_acquirer(answer: Message, acquirer: AcquirerSettings) -> Outcome:
    """The acquirer's answer in CB terms. Raises CodecError for an unreadable answer."""
    approval, raw, additional_value = answer.pick(_OUTCOME)
    raw = raw or ""
    code = acquirer.cb_code(raw) if raw else "96"
    issuer: tuple[tuple[str, bytes], ...] | CbTlv | None = None
    if 55 in answer:
        if acquirer.profile != "cb2a":  # BER-TLV: most often converted byte for byte
            spec = answer.profile.specs[55]
            if spec is not None and spec.data is Data.BINARY:
                issuer = ber_raw_to_cb(answer.body(55))
        if issuer is None:
            value = answer.get(55)
            issuer = value if acquirer.profile == "cb2a" else ber_to_cb(
                ber_decode(value) if isinstance(value, bytes) else value)
    additional = None
    if additional_value is not None:
        additional = additional_value if isinstance(additional_value, tuple) else _ascii_tlv(
            str(additional_value))
    return Outcome(code, raw, approval, issuer, additional)


_OUTCOME = (38, 39, 44)  # approval code, response code, additional response data


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


def _answer_template(request: Message) -> dict[int, Any]:
    """The request's fields an answer leaves out, worked out once per shape of request
    (kept with its layout)."""
    memo = request.layout.memo
    left_out = memo.get("answer")
    if left_out is None:
        numbers = request.numbers
        left_out = memo["answer"] = tuple(n for n in (*SENSITIVE, 55) if n in numbers)
    return dict.fromkeys(left_out)


_LENGTH_PREFIX = tuple(bytes((n,)) for n in range(256))


def terminal_answer(request: Message, code: str, approval: str | None = None,
                    issuer_data: Any = None, additional: Any = None) -> bytes:
    """The 0110 built from the terminal's 0100: its fields copied, 38/39/44/55 set
    (`issuer_data` as pairs, or a `CbTlv` copied as it is)."""
    changes = _answer_template(request)
    changes[38] = approval
    changes[39] = code
    changes[44] = additional
    if issuer_data:
        if issuer_data.__class__ is CbTlv:
            if _cb_tlv_bin1(request, 55):
                issuer_data = Encoded(_LENGTH_PREFIX[len(issuer_data)] + issuer_data)
            else:
                issuer_data = SUBFIELD_CODECS["cb-tlv"].decode(issuer_data)
        changes[55] = issuer_data
    if 59 in request:  # what the terminal said about itself, minus its capabilities (0101)
        changes[59] = _without_capabilities(request)
    return request.respond(answer_mti(request.mti), changes)


def _cb_tlv_bin1(request: Message, number: int) -> bool:
    """Field `number` of the request's profile is CB-TLV behind a 1-byte binary length."""
    spec = request.profile.specs[number]
    return spec is not None and spec.sub == "cb-tlv" and spec.prefix is Prefix.BINARY \
        and spec.prefix_size == 1


def _without_capabilities(request: Message) -> Any:
    """Field 59 of the request without its 0101 sub-element, for the answer (None: left
    out). Cut from the field's bytes when they are well formed (a terminal sends 59 with
    every request), else through the pairs, which names what is wrong."""
    if _cb_tlv_bin1(request, 59):
        body = request.body(59)
        kept: list[bytes] = []
        pos, end = 0, len(body)
        while pos < end:
            stop = pos + 3 + body[pos + 2] if pos + 3 <= end else end + 1
            if stop > end:
                break
            if body[pos:pos + 2] != b"\x01\x01":
                kept.append(body[pos:stop])
            pos = stop
        else:
            joined = b"".join(kept)
            return Encoded(_LENGTH_PREFIX[len(joined)] + joined) if joined else None
    kept_pairs = tuple(item for item in request.get(59) if item[0] != "0101")
    return kept_pairs or None
