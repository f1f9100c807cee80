"""Compiled layouts: what the engine precomputes so the hot path only adds integers.

For a given bitmap the order of fields is fixed, and so is the size of every fixed-length
field. A `Layout` folds each run of fixed fields into one constant: locating every field of a
message then costs one length-prefix read per *variable* field (`anchors`), and a field's
position is `anchors[i] + constant`. Layouts are cached per profile, keyed by the bitmap
bytes as received; terminals and acquirers send a handful of distinct bitmaps.

Each field also gets a converter and an encoder closure specialised on its format, so
converting a value does no format dispatch at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from passerelle.codecs.errors import CodecError
from passerelle.codecs.fields import Data, FieldSpec, Kind, Parse, Prefix
from passerelle.codecs.subfields import SUBFIELD_CODECS, SubElementError

# conv(data, start, body, end) -> value ; enc(value) -> wire bytes of the field
Converter = Callable[[bytes, int, int, int], Any]
Encoder = Callable[[Any], bytes]

_TRACK_CHARS = frozenset("0123456789=")
_LENGTH_BYTES = tuple(bytes((n,)) for n in range(256))
_BIN1 = 1  # step kinds: 1-byte binary prefix (CB2A), ASCII digits (iso87), any other prefix
_ASCII = 2
_OTHER = 3
# A packed-BCD prefix byte's value (iso93-binary's LL and LLL), 1000 when a nibble is not a
# digit: above every max_len, so `walk` refuses it and the careful parser says why.
_BCD_BYTE = tuple((b >> 4) * 10 + (b & 15) if b >> 4 < 10 and b & 15 < 10 else 1000
                  for b in range(256))


class Layout:
    """Where each field of one bitmap sits, as anchors + constants."""

    __slots__ = (
        "ascii_steps", "bcd_steps", "bin1_steps", "bits", "entries", "header", "memo",
        "numbers", "plans", "recipes", "runs", "steps", "tail", "where",
    )

    def __init__(self, specs: tuple[FieldSpec | None, ...], numbers: Iterable[int], header: int,
                 converters: tuple[Converter | None, ...],
                 plain_converters: tuple[Converter | None, ...]) -> None:
        self.header = header
        self.numbers: tuple[int, ...] = tuple(numbers)
        steps: list[tuple[int, int, int, bool, int, FieldSpec]] = []
        where: dict[int, tuple[int, int, int, int, Converter]] = {}
        entries = []
        bits = 0
        anchor, delta = 0, 0
        for number in self.numbers:
            spec = specs[number]
            assert spec is not None
            bits |= 1 << (128 - number)
            conv = converters[number]
            assert conv is not None
            if spec.parse is Parse.FIXED:
                entry = (anchor, delta, spec.fixed_size, 0, conv)
                delta += spec.fixed_size
            else:
                if spec.parse is Parse.BIN and spec.prefix_size == 1:
                    kind = _BIN1
                elif spec.prefix is Prefix.ASCII:
                    kind = _ASCII
                else:
                    kind = _OTHER
                steps.append((delta, spec.prefix_size, kind, spec.half, spec.max_len, spec))
                entry = (anchor, delta, 0, spec.prefix_size, conv)
                anchor, delta = anchor + 1, 0
            where[number] = entry
            entries.append((number, *entry, plain_converters[number]))
        self.steps = tuple(steps)
        self.bin1_steps = (tuple((step[0], step[4], step[3]) for step in steps)
                           if all(step[2] == _BIN1 for step in steps) else None)
        self.ascii_steps = (tuple((step[0], step[1], step[4], step[3]) for step in steps)
                            if all(step[2] == _ASCII for step in steps) else None)
        self.bcd_steps = (tuple((step[0], step[1] == 2, step[4], step[3]) for step in steps)
                          if steps and all(step[5].parse is Parse.BCD and step[1] in (1, 2)
                                           for step in steps) else None)
        self.runs = _group_runs(specs, entries)
        self.tail = delta
        self.where = where
        self.entries = tuple(entries)
        self.bits = bits
        self.recipes: dict[tuple[int, ...], Recipe] = {}
        self.plans: dict[tuple[int, ...], Plan] = {}
        # What a caller works out once per layout (`routing.translate`'s plans), so its
        # per-message lookup hashes a few short strings, not the field numbers.
        self.memo: dict[Any, Any] = {}

    def plan(self, numbers: tuple[int, ...]) -> Plan:
        """For `Message.pick`: the runs (see `convert_all`) that hold a wanted field, each
        with where its wanted fields go in the answer; absent fields stay None."""
        slots: dict[int, list[int]] = {}
        for index, number in enumerate(numbers):
            slots.setdefault(number, []).append(index)
        steps: list[_PickOne | _PickRun] = []
        for run in self.runs:
            if run[0] == _SINGLE:
                _, anchor, delta, fixed, prefix_size, number, convert, _ = run
                steps.extend(_PickOne(index, anchor, delta, fixed, prefix_size, convert)
                             for index in slots.get(number, ()))
                continue
            kind, anchor, delta, size, cuts, singles, extra = run
            wanted = tuple((index, begin, stop) for number, begin, stop in cuts
                           for index in slots.get(number, ()))
            if wanted:  # the fallback converts the wanted fields one by one
                one_by_one = tuple((index, single[0], single[5]) for single in singles
                                   for index in slots.get(single[0], ()))
                steps.append(_PickRun(kind, anchor, delta, size, wanted, one_by_one, extra))
        plan = tuple(steps)
        if len(self.plans) < 64:  # a dialogue asks for a handful of field sets
            self.plans[numbers] = plan
        return plan

    def pick(self, data: bytes, anchors: list[int], plan: Plan, size: int) -> list[Any]:
        """`Message.pick`'s work: `plan`'s fields converted, one conversion per run."""
        out: list[Any] = [None] * size
        for step in plan:
            if isinstance(step, _PickOne):
                anchor = step.anchor
                start = anchors[anchor] + step.delta
                fixed = step.fixed
                out[step.index] = step.convert(data, start, start + step.prefix_size,
                                               start + fixed if fixed else anchors[anchor + 1])
                continue
            start = anchors[step.anchor] + step.delta
            text = _run_text(step.kind, data[start : start + step.size], step.extra)
            if text is None:  # the culprit, if wanted, raises its precise CodecError
                for index, number, convert in step.one_by_one:
                    out[index] = self._one(data, anchors, number, convert)
                continue
            for index, begin, stop in step.wanted:
                out[index] = text[begin:stop]
        return out

    def walk(self, data: bytes) -> list[int] | None:
        """Anchors of `data` under this layout, or None if anything is off (the caller then
        runs the slow, precise parser to say what)."""
        pos = self.header
        anchors = [pos]
        if self.bin1_steps is not None:  # CB2A: every prefix is one binary byte
            try:
                for delta, max_len, half in self.bin1_steps:
                    start = pos + delta
                    units = data[start]
                    if units > max_len:
                        return None
                    pos = start + 1 + ((units + 1) >> 1 if half else units)
                    anchors.append(pos)
            except IndexError:
                return None
            return anchors if pos + self.tail == len(data) else None
        if self.bcd_steps is not None:  # iso93-binary: every prefix is 1 or 2 BCD bytes
            bcd = _BCD_BYTE
            try:
                for delta, wide, max_len, half in self.bcd_steps:
                    start = pos + delta
                    if wide:
                        units = bcd[data[start]] * 100 + bcd[data[start + 1]]
                        start += 2
                    else:
                        units = bcd[data[start]]
                        start += 1
                    if units > max_len:
                        return None
                    pos = start + ((units + 1) >> 1 if half else units)
                    anchors.append(pos)
            except IndexError:
                return None
            return anchors if pos + self.tail == len(data) else None
        if self.ascii_steps is not None:  # iso87-ascii: every prefix is ASCII digits
            for delta, prefix_size, max_len, half in self.ascii_steps:
                start = pos + delta
                digits = data[start : start + prefix_size]
                if not digits.isdigit() or len(digits) != prefix_size:
                    return None
                units = int(digits)
                if units > max_len:
                    return None
                pos = start + prefix_size + ((units + 1) >> 1 if half else units)
                anchors.append(pos)
            return anchors if pos + self.tail == len(data) else None
        try:
            for delta, prefix_size, kind, half, max_len, spec in self.steps:
                start = pos + delta
                if kind == _BIN1:
                    units = data[start]
                elif kind == _ASCII:
                    digits = data[start : start + prefix_size]
                    if not digits.isdigit() or len(digits) != prefix_size:
                        return None
                    units = int(digits)
                else:
                    units = read_units(data, start, start + prefix_size, spec)
                if units > max_len:
                    return None
                pos = start + prefix_size + ((units + 1) >> 1 if half else units)
                anchors.append(pos)
        except (IndexError, CodecError):
            return None
        if pos + self.tail != len(data):
            return None
        return anchors

    def convert_all(self, data: bytes, anchors: list[int], subelements: bool) -> dict[int, Any]:
        """Every field converted. Each run of fixed BCD (or fixed text) fields is converted
        with one `hex()` (or one `decode`) and cut into fields, instead of one call per field."""
        out: dict[int, Any] = {}
        for run in self.runs:
            if run[0] == _SINGLE:
                _, anchor, delta, fixed, prefix_size, number, convert, plain = run
                start = anchors[anchor] + delta
                end = start + fixed if fixed else anchors[anchor + 1]
                chosen = convert if subelements else plain
                out[number] = chosen(data, start, start + prefix_size, end)
                continue
            kind, anchor, delta, size, cuts, singles, extra = run
            start = anchors[anchor] + delta
            text = _run_text(kind, data[start : start + size], extra)
            if text is None:  # convert one by one: the culprit raises its precise CodecError
                for number, *_, convert, _ in singles:
                    out[number] = self._one(data, anchors, number, convert)
                continue
            for number, begin, stop in cuts:
                out[number] = text[begin:stop]
        return out

    def _one(self, data: bytes, anchors: list[int], number: int, convert: Converter) -> Any:
        start, body, end = self.span(anchors, number)
        return convert(data, start, body, end)

    def bits_with(self, numbers: Iterable[int]) -> int:
        """This layout's bitmap as an integer (field 1 = bit 127), plus `numbers`."""
        bits = self.bits
        for number in numbers:
            bits |= 1 << (128 - number)
        return bits

    def span(self, anchors: list[int], number: int) -> tuple[int, int, int]:
        anchor, delta, fixed, prefix_size, _ = self.where[number]
        start = anchors[anchor] + delta
        end = start + fixed if fixed else anchors[anchor + 1]
        return start, start + prefix_size, end


_SINGLE, _BCD_RUN, _TEXT_RUN = 0, 1, 2


class _PickOne:
    """A `Layout.plan` step: one field converted alone (variable, sub-elements, binary),
    into slot `index` of `pick`'s answer. A class with typed attributes, not a tuple: the
    compiled build reads them as C fields where a tuple's items are unpacked generically
    (`pick` runs about three times per authorization)."""

    __slots__ = ("anchor", "convert", "delta", "fixed", "index", "prefix_size")

    def __init__(self, index: int, anchor: int, delta: int, fixed: int,  # noqa: PLR0917
                 prefix_size: int, convert: Converter) -> None:
        self.index = index
        self.anchor = anchor
        self.delta = delta
        self.fixed = fixed
        self.prefix_size = prefix_size
        self.convert = convert


class _PickRun:
    """A `Layout.plan` step: a run of fixed fields converted as one text, cut into the
    wanted fields (`wanted`: slot, begin, end), or converted one by one (`one_by_one`:
    slot, number, converter) when the text is not valid."""

    __slots__ = ("anchor", "delta", "extra", "kind", "one_by_one", "size", "wanted")

    def __init__(self, kind: int, anchor: int, delta: int, size: int,  # noqa: PLR0917
                 wanted: tuple[tuple[int, int, int], ...],
                 one_by_one: tuple[tuple[int, int, Converter], ...], extra: Any) -> None:
        self.kind = kind
        self.anchor = anchor
        self.delta = delta
        self.size = size
        self.wanted = wanted
        self.one_by_one = one_by_one
        self.extra = extra


Plan = tuple[_PickOne | _PickRun, ...]


def _run_text(kind: int, chunk: bytes, extra: Any) -> str | None:
    """A run of fixed fields as one text (BCD digits, or decoded text), None when any of
    its fields is not valid (the caller then converts them one by one)."""
    if kind == _BCD_RUN:
        text = chunk.hex()
        if not text.isdigit():
            return None
        for pad in extra:  # odd-length fields: their pad nibble must be 0
            if text[pad] != "0":
                return None
        return text
    encoding, numeric = extra
    try:
        text = chunk.decode(encoding)
    except UnicodeDecodeError:
        return None
    for b, e in numeric:
        if not (text[b:e].isascii() and text[b:e].isdigit()):
            return None
    return text


def _run_kind(spec: FieldSpec) -> int:
    if spec.var or spec.sub is not None:
        return _SINGLE
    if spec.data is Data.BCD and spec.kind is Kind.N:
        return _BCD_RUN
    if spec.data in (Data.ASCII, Data.EBCDIC) and spec.kind in (Kind.N, Kind.AN, Kind.ANS):
        return _TEXT_RUN
    return _SINGLE


def _group_runs(specs: tuple[FieldSpec | None, ...], entries: list[tuple[Any, ...]]) -> tuple:
    """Consecutive fixed fields of one conversion kind, so `convert_all` treats them at once."""
    runs: list[tuple[Any, ...]] = []
    group: list[tuple[Any, ...]] = []

    def close() -> None:
        if not group:
            return
        spec0 = specs[group[0][0]]
        assert spec0 is not None
        kind = _run_kind(spec0)
        anchor, delta = group[0][1], group[0][2]
        size = sum(entry[3] for entry in group)
        if kind == _SINGLE or len(group) == 1:
            runs.extend((_SINGLE, e[1], e[2], e[3], e[4], e[0], e[5], e[6]) for e in group)
        elif kind == _BCD_RUN:
            cuts, pads, nibble = [], [], 0
            for entry in group:
                spec = specs[entry[0]]
                assert spec is not None
                width = 2 * entry[3]
                begin = nibble + width - spec.max_len
                if begin > nibble:
                    pads.append(nibble)
                cuts.append((entry[0], begin, nibble + width))
                nibble += width
            runs.append((_BCD_RUN, anchor, delta, size, tuple(cuts), tuple(group), tuple(pads)))
        else:
            cuts, offset, numeric = [], 0, []
            for entry in group:
                cuts.append((entry[0], offset, offset + entry[3]))
                spec = specs[entry[0]]
                if spec is not None and spec.kind is Kind.N:
                    numeric.append((offset, offset + entry[3]))
                offset += entry[3]
            runs.append((_TEXT_RUN, anchor, delta, size, tuple(cuts), tuple(group),
                         (spec0.data.value, tuple(numeric))))
        group.clear()

    for entry in entries:
        spec = specs[entry[0]]
        assert spec is not None
        kind = _run_kind(spec)
        if group:
            head = specs[group[0][0]]
            assert head is not None
            same = (kind != _SINGLE and kind == _run_kind(head) and spec.data is head.data
                    and entry[1] == group[-1][1])
            if not same:
                close()
        group.append(entry)
        if kind == _SINGLE:
            close()
    close()
    return tuple(runs)


class Recipe:
    """How to build an answer from a message of one layout, for one set of changed fields:
    runs of untouched fields are copied as one slice each, changed fields are encoded."""

    __slots__ = ("bitmap", "bits", "segments", "without")

    def __init__(self, layout: Layout, changed: tuple[int, ...], bitmap: bytes) -> None:
        changed_set = set(changed)
        numbers = sorted(set(layout.numbers) | changed_set)
        segments: list[Any] = []
        run: list[int] = []
        bits = layout.bits

        def flush() -> None:
            if run:
                first, last = layout.where[run[0]], layout.where[run[-1]]
                end = (last[0], last[1] + last[2]) if last[2] else (last[0] + 1, 0)
                segments.append((first[0], first[1], *end))
                run.clear()

        for number in numbers:
            if number in changed_set:
                flush()
                segments.append(number)
                bits |= 1 << (128 - number)
            else:
                run.append(number)
        flush()
        self.segments = tuple(segments)
        self.bits = bits
        self.bitmap = bitmap  # the wire bitmap of `bits`: no field left out
        self.without: dict[int, bytes] = {}  # bits left out -> the wire bitmap then


def read_units(data: bytes, start: int, body: int, spec: FieldSpec) -> int:
    """The length a prefix announces, in the field's unit."""
    if body > len(data):
        raise CodecError(spec.number, start, "truncated length prefix")
    if spec.parse is Parse.BIN:
        return int.from_bytes(data[start:body], "big")
    if spec.parse is Parse.BCD:
        text = data[start:body].hex()
    else:
        try:
            text = data[start:body].decode(spec.prefix.value)
        except UnicodeDecodeError:
            text = ""
    if not (text.isascii() and text.isdigit()):
        raise CodecError(spec.number, start, "the length prefix is not decimal")
    return int(text)


# -- converters --------------------------------------------------------------------------
def make_converter(spec: FieldSpec, *, subelements: bool = True) -> Converter:
    """A converter specialised on the field's format; `subelements=False` leaves a
    sub-element field as its raw body (bytes), as a store-and-forward path wants it."""
    base = _base_converter(spec)
    if spec.sub is None or not subelements:
        return base
    codec = SUBFIELD_CODECS[spec.sub]
    number = spec.number

    def convert_sub(data: bytes, start: int, body: int, end: int) -> Any:
        value = base(data, start, body, end)
        try:
            if isinstance(value, str):  # a text field (ASCII or EBCDIC) holding TLV text
                value = _tlv_text_bytes(value)
            return codec.decode(value)
        except SubElementError as exc:
            raise CodecError(number, body + exc.offset, exc.reason) from None

    if spec.data is Data.BINARY or (spec.data is Data.ASCII and _text_check(spec) is None):
        # The body's bytes are what the sub-element codec reads: no text round trip. A
        # non-ASCII text body takes the general path, which names the error as before.
        binary = spec.data is Data.BINARY

        def convert_sub_bytes(data: bytes, start: int, body: int, end: int) -> Any:
            raw = data[body:end]
            if not (binary or raw.isascii()):
                return convert_sub(data, start, body, end)
            try:
                return codec.decode(raw)
            except SubElementError as exc:
                raise CodecError(number, body + exc.offset, exc.reason) from None

        return convert_sub_bytes
    return convert_sub


def _tlv_text_bytes(text: str) -> bytes:
    """Sub-element codecs read ASCII bytes; a text field's TLV is ASCII once decoded."""
    try:
        return text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise SubElementError(exc.start, "sub-element is not ASCII text") from None


def _base_converter(spec: FieldSpec) -> Converter:
    number, data_enc = spec.number, spec.data
    if data_enc is Data.BCD:
        return _bcd_converter(spec)
    if data_enc is Data.BINARY:
        def convert_binary(data: bytes, start: int, body: int, end: int) -> bytes:
            return data[body:end]
        return convert_binary
    if data_enc is Data.HEX:
        def convert_hex(data: bytes, start: int, body: int, end: int) -> bytes:
            try:
                value = bytes.fromhex(data[body:end].decode("ascii"))
            except ValueError:
                value = None
            if value is None or 2 * len(value) != end - body:
                raise CodecError(number, body, "expected hexadecimal characters")
            return value
        return convert_hex
    encoding = data_enc.value
    check = _text_check(spec)
    if check is None:
        def convert_plain_text(data: bytes, start: int, body: int, end: int) -> str:
            try:
                return data[body:end].decode(encoding)
            except UnicodeDecodeError:
                raise CodecError(number, body, f"the value is not {encoding} text") from None
        return convert_plain_text

    def convert_text(data: bytes, start: int, body: int, end: int) -> str:
        try:
            value = data[body:end].decode(encoding)
        except UnicodeDecodeError:
            raise CodecError(number, body, f"the value is not {encoding} text") from None
        if check is not None and not check(value):
            raise CodecError(number, body, _CHECK_REASON[spec.kind])
        return value

    return convert_text


_CHECK_REASON = {
    Kind.N: "a numeric field holds a non-digit",
    Kind.Z: "track data holds characters other than 0-9 and =",
}


def _text_check(spec: FieldSpec) -> Callable[[str], bool] | None:
    if spec.kind is Kind.N:
        return lambda value: value.isascii() and (value.isdigit() or not value)
    if spec.kind is Kind.Z:
        return lambda value: set(value) <= _TRACK_CHARS
    return None


def _bcd_converter(spec: FieldSpec) -> Converter:
    number, track = spec.number, spec.kind is Kind.Z
    fixed_odd = not spec.var and spec.max_len & 1
    bin1 = spec.parse is Parse.BIN and spec.prefix_size == 1
    if not spec.var and not track:
        return _fixed_bcd_converter(number, bool(fixed_odd))

    def convert_bcd(data: bytes, start: int, body: int, end: int) -> str:
        digits = data[body:end].hex()
        if spec.var:
            units = data[start] if bin1 else read_units(data, start, body, spec)
            odd = units & 1 if spec.count_digits else 0
        else:
            odd = fixed_odd
        if odd:
            if digits[0] != "0":
                raise CodecError(number, body, "the BCD pad nibble is not 0")
            digits = digits[1:]
        if track:
            digits = digits.replace("d", "=")
            if not set(digits) <= _TRACK_CHARS:
                raise CodecError(number, body, "track data holds a nibble other than 0-9 or D")
        elif digits and not digits.isdigit():  # empty only for LLVAR, where it is legal
            raise CodecError(number, body, "a BCD nibble is not a decimal digit")
        return digits

    return convert_bcd


def _fixed_bcd_converter(number: int, odd: bool) -> Converter:
    """Fixed numerics (3, 4, 11, 12, 13...): the commonest converter, with nothing to look
    up at run time; same checks, same errors as the general one."""
    if odd:
        def convert_fixed_odd(data: bytes, start: int, body: int, end: int) -> str:
            digits = data[body:end].hex()
            if digits[0] != "0":
                raise CodecError(number, body, "the BCD pad nibble is not 0")
            digits = digits[1:]
            if digits and not digits.isdigit():
                raise CodecError(number, body, "a BCD nibble is not a decimal digit")
            return digits
        return convert_fixed_odd

    def convert_fixed(data: bytes, start: int, body: int, end: int) -> str:
        digits = data[body:end].hex()
        if digits and not digits.isdigit():
            raise CodecError(number, body, "a BCD nibble is not a decimal digit")
        return digits

    return convert_fixed


# -- encoders ----------------------------------------------------------------------------
def make_encoder(spec: FieldSpec) -> Encoder:
    """An encoder specialised on the field's format: value -> wire bytes, prefix included."""
    number, data_enc = spec.number, spec.data
    prefix = _prefix_writer(spec)
    max_len = spec.max_len
    if prefix is None and spec.sub is None and data_enc in (Data.ASCII, Data.EBCDIC) \
            and spec.kind not in (Kind.N, Kind.Z):
        return _fixed_text_encoder(number, data_enc.value, max_len)

    if data_enc is Data.BCD:
        half = spec.count_digits or not spec.var

        def body_of(value: Any) -> tuple[bytes, int]:
            text = _numeric_text(spec, value)
            units = len(text) if half else (len(text) + 1) >> 1
            if len(text) & 1:
                text = "0" + text
            return bytes.fromhex(text.replace("=", "D")), units
    elif data_enc is Data.BINARY or data_enc is Data.HEX:
        as_hex = data_enc is Data.HEX

        def body_of(value: Any) -> tuple[bytes, int]:
            if value.__class__ is not bytes:
                if isinstance(value, str) and spec.sub is not None:
                    value = value.encode("ascii")
                elif not isinstance(value, bytearray | memoryview):
                    raise CodecError(number, 0, f"expects bytes, got {type(value).__name__}")
                value = bytes(value)
            if as_hex:
                value = value.hex().upper().encode("ascii")
            return value, len(value)
    else:
        encoding, numeric = data_enc.value, spec.kind in (Kind.N, Kind.Z)

        def body_of(value: Any) -> tuple[bytes, int]:
            if numeric:
                value = _numeric_text(spec, value)
            elif value.__class__ is not str:
                raise CodecError(number, 0, f"expects text, got {type(value).__name__}")
            try:
                raw = value.encode(encoding)
            except UnicodeEncodeError:
                reason = f"holds characters that {encoding} cannot encode"
                raise CodecError(number, 0, reason) from None
            return raw, len(raw)

    if spec.sub is not None:
        codec, plain = SUBFIELD_CODECS[spec.sub], body_of
        as_text = data_enc in (Data.ASCII, Data.EBCDIC)

        def body_of(value: Any) -> tuple[bytes, int]:
            if isinstance(value, tuple | list):
                try:
                    value = codec.encode(value)
                except SubElementError as exc:
                    raise CodecError(number, 0, exc.reason) from None
                if as_text:  # TLV text, written in the field's own text encoding
                    value = value.decode("ascii")
            return plain(value)

    if prefix is None:
        def encode_fixed(value: Any) -> bytes:
            body, units = body_of(value)
            if units != max_len:
                raise CodecError(number, 0, f"fixed length {max_len}, got {units}")
            return body
        return encode_fixed

    def encode_variable(value: Any) -> bytes:
        body, units = body_of(value)
        if units > max_len:
            raise CodecError(number, 0, f"length {units} exceeds the maximum {max_len}")
        return prefix(units) + body

    return encode_variable


def _fixed_text_encoder(number: int, encoding: str, max_len: int) -> Encoder:
    """The commonest encoder (fixed an/ans: 39, 41, 42...) in one call, same errors."""

    def encode_fixed_text(value: Any) -> bytes:
        if value.__class__ is not str:
            raise CodecError(number, 0, f"expects text, got {type(value).__name__}")
        try:
            raw = value.encode(encoding)
        except UnicodeEncodeError:
            reason = f"holds characters that {encoding} cannot encode"
            raise CodecError(number, 0, reason) from None
        if len(raw) != max_len:
            raise CodecError(number, 0, f"fixed length {max_len}, got {len(raw)}")
        return raw  # type: ignore[no-any-return]

    return encode_fixed_text


def _prefix_writer(spec: FieldSpec) -> Callable[[int], bytes] | None:
    if not spec.var:
        return None
    size = spec.prefix_size
    if spec.prefix is Prefix.BINARY:
        if size == 1:
            return _LENGTH_BYTES.__getitem__
        return lambda units: units.to_bytes(size, "big")
    if spec.prefix is Prefix.BCD:
        return lambda units: bytes.fromhex(f"{units:0{2 * size}d}")
    encoding, width = spec.prefix.value, spec.var
    return lambda units: f"{units:0{width}d}".encode(encoding)


def _numeric_text(spec: FieldSpec, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and spec.kind is Kind.N:
        if value < 0:
            raise CodecError(spec.number, 0, "a numeric field cannot be negative")
        text = str(value)
        return text if spec.var else text.rjust(spec.max_len, "0")
    if not isinstance(value, str):
        raise CodecError(spec.number, 0, f"expects digits, got {type(value).__name__}")
    if spec.kind is Kind.Z:
        text = value.replace("D", "=").replace("d", "=")
        if not set(text) <= _TRACK_CHARS:
            raise CodecError(spec.number, 0, "track data holds characters other than 0-9 and =")
        return text
    if not (value.isascii() and value.isdigit()) and (value or not spec.var):
        raise CodecError(spec.number, 0, "expects decimal digits only")
    return value
