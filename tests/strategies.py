"""Hypothesis strategies for ISO 8583 messages, driven by a profile's field table.

Every value these strategies build is *canonical*: it is exactly what the codec gives back
when it decodes the bytes it encoded, so `decode(encode(v)) == v` is the property to test.

- `field_values(spec)`   a valid value for one `FieldSpec` (any kind, length kind, encoding,
                         sub-element codec);
- `messages(profile)`    `(mti, {field: value})` for a whole message (secondary bitmap
                         included when a field above 64 is drawn);
- `pans()` / `tracks2()` Luhn-valid card numbers and track 2 data, for masking tests;
- `full_pans_in(text)`   the Luhn-valid 13-19 digit runs of a text (what must never leak).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from passerelle.codecs.fields import Data, FieldSpec, Kind
from passerelle.codecs.profile import Profile

Value = Any  # str | bytes | tuple[tuple[str, str | bytes], ...]

# Moderate example counts: the whole suite runs on 2 CI cores.
ROUND_TRIP = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MEDIUM = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
QUICK = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

DIGITS = "0123456789"
ASCII = st.characters(min_codepoint=0, max_codepoint=0x7F)
LATIN1 = st.characters(min_codepoint=0, max_codepoint=0xFF)  # cp500 maps all of latin-1

# Tags that CB2A repeats or that carry card data, drawn often so that repeats happen.
_CB_TAGS = ("0101", "0102", "0200", "0057", "005A", "9F26", "5F24", "DF80")
_ASCII_TAGS = ("08", "96", "97", "A0", "AA")


def defined_numbers(profile: Profile) -> list[int]:
    return [n for n, spec in enumerate(profile.specs) if spec is not None]


def _length(spec: FieldSpec, limit: int) -> st.SearchStrategy[int]:
    """Fixed fields take their whole size; variable ones anything from 0 to `limit`."""
    if not spec.var:
        return st.just(limit)
    if limit > 40:  # reach both short values and values near the maximum
        return st.one_of(st.integers(0, 20), st.integers(limit - 20, limit))
    return st.integers(0, limit)


def field_values(spec: FieldSpec) -> st.SearchStrategy[Value]:
    """A value that `spec` can encode and that decodes back to itself."""
    if spec.sub is not None:
        return sub_elements(spec)
    if spec.data is Data.BINARY:
        return _length(spec, spec.max_len).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    if spec.data is Data.HEX:  # the length counts hex characters: two per byte
        return _length(spec, spec.max_len // 2).flatmap(
            lambda n: st.binary(min_size=n, max_size=n)
        )
    if spec.data is Data.BCD and spec.var and not spec.count_digits:
        # The prefix counts bytes: only even digit counts have one reading.
        return _length(spec, spec.max_len).flatmap(
            lambda n: st.text(st.sampled_from(DIGITS), min_size=2 * n, max_size=2 * n)
        )
    if spec.kind is Kind.N:
        alphabet: Any = st.sampled_from(DIGITS)
    elif spec.kind is Kind.Z:
        alphabet = st.sampled_from(DIGITS + "=")
    elif spec.data is Data.EBCDIC:
        alphabet = LATIN1
    else:
        alphabet = ASCII
    return _length(spec, spec.max_len).flatmap(
        lambda n: st.text(alphabet, min_size=n, max_size=n)
    )


def ber_tags() -> st.SearchStrategy[str]:
    """EMV BER-TLV tags: one byte, or a 0x1F-class first byte and 1-2 more (last < 0x80)."""
    # 0x00 and 0xFF are padding between objects, never a tag's first byte.
    single = st.integers(0x01, 0xFE).filter(lambda b: b & 0x1F != 0x1F).map(lambda b: [b])
    first = st.integers(0x1F, 0xFE).filter(lambda b: b & 0x1F == 0x1F)
    multi = st.tuples(
        first, st.lists(st.integers(0x80, 0xFF), max_size=1), st.integers(0x00, 0x7F)
    ).map(lambda t: [t[0], *t[1], t[2]])
    known = st.sampled_from(["57", "5A", "9F26", "5F24", "9F6B", "BF0C", "DF8101"])
    return st.one_of(known, st.one_of(single, multi).map(lambda b: bytes(b).hex().upper()))


@st.composite
def sub_elements(draw: st.DrawFn, spec: FieldSpec) -> tuple[tuple[str, Any], ...]:
    """Sub-element pairs, in order, repeats allowed, whose encoding fits the field."""
    budget = spec.max_len if spec.data is not Data.HEX else spec.max_len // 2
    items: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(0, 6))):
        if spec.sub == "ascii-tlv":
            if budget < 4:
                break
            tag = draw(st.sampled_from(_ASCII_TAGS) | st.text(ASCII, min_size=2, max_size=2))
            value: Any = draw(st.text(ASCII, max_size=min(99, budget - 4)))
            size = 4 + len(value)
        elif spec.sub == "cb-tlv":
            if budget < 3:
                break
            tag = draw(
                st.sampled_from(_CB_TAGS)
                | st.binary(min_size=2, max_size=2).map(lambda b: b.hex().upper())
            )
            value = draw(st.binary(max_size=min(255, budget - 3)))
            size = 3 + len(value)
        else:  # ber-tlv
            tag = draw(ber_tags())
            room = budget - len(tag) // 2 - 1
            if room < 0:
                break
            if room >= 0x80 + 1:  # long form: 0x81 then one length byte
                long_size = st.integers(0x80, min(0xFF, room - 1))
                n = draw(st.one_of(st.integers(0, min(20, room)), long_size))
            else:
                n = draw(st.integers(0, min(room, 0x7F)))
            value = draw(st.binary(min_size=n, max_size=n))
            size = len(tag) // 2 + (1 if n < 0x80 else 2) + n
        if size > budget:
            break
        items.append((tag, value))
        budget -= size
    return tuple(items)


@st.composite
def messages(
    draw: st.DrawFn,
    profile: Profile,
    *,
    min_fields: int = 0,
    max_fields: int = 12,
    numbers: st.SearchStrategy[int] | None = None,
) -> tuple[str, dict[int, Value]]:
    """`(mti, values)` for a random message of `profile`."""
    pool = numbers if numbers is not None else st.sampled_from(defined_numbers(profile))
    chosen = draw(st.lists(pool, min_size=min_fields, max_size=max_fields, unique=True))
    mti = draw(st.text(st.sampled_from(DIGITS), min_size=4, max_size=4))
    values = {n: draw(field_values(profile.specs[n])) for n in sorted(chosen)}  # type: ignore[arg-type]
    return mti, values


# -- card data -----------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _luhn_digit(body: str) -> str:
    return next(c for c in DIGITS if luhn_ok(body + c))


@st.composite
def pans(draw: st.DrawFn, min_size: int = 13, max_size: int = 19) -> str:
    """A Luhn-valid card number starting with a real scheme digit (2-6)."""
    size = draw(st.integers(min_size, max_size))
    body = draw(st.sampled_from("23456")) + draw(
        st.text(st.sampled_from(DIGITS), min_size=size - 2, max_size=size - 2)
    )
    return body + _luhn_digit(body)


@st.composite
def tracks2(draw: st.DrawFn, pan: str | None = None) -> str:
    """Track 2: PAN, '=', expiry YYMM, service code, discretionary data (<= 37 chars)."""
    pan = pan if pan is not None else draw(pans())
    tail_room = 37 - len(pan) - 1 - 7
    tail = draw(st.text(st.sampled_from(DIGITS), min_size=0, max_size=max(0, tail_room)))
    expiry = draw(st.from_regex(r"\A[0-9]{2}(0[1-9]|1[0-2])\Z"))
    service = draw(st.sampled_from(["101", "201", "221", "601"]))
    return f"{pan}={expiry}{service}{tail}"


_DIGIT_RUN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def full_pans_in(text: str) -> list[str]:
    """Digit runs of `text` (13-19 digits, not part of a longer run) that look like a card
    number: Luhn-valid and starting with a scheme digit (2-6).

    Zero-filled numerics (field 53, amounts) are Luhn-valid yet start with 0; windows inside
    longer runs are not searched, as any long numeric would yield false positives.
    """
    return [run for run in _DIGIT_RUN.findall(text) if run[0] in "23456" and luhn_ok(run)]


# -- synthetic profiles ------------------------------------------------------------------
# The shipped profiles leave some combinations unused (EBCDIC length prefixes, 2-byte binary
# LLL prefixes, BCD lengths counted in bytes, sub-elements over hex text ...). These two
# profiles hold every combination, once with a BCD MTI and binary bitmaps, once with an
# EBCDIC MTI and hexadecimal bitmaps, so the round-trips reach all of the engine.
def _mixed_specs() -> list[FieldSpec]:
    from passerelle.codecs.fields import Prefix

    # (kind, data, extra FieldSpec arguments, fixed size or None when only variable)
    variants: list[tuple[Kind, Data, dict[str, Any], int | None]] = [
        (Kind.N, Data.BCD, {}, 7),
        (Kind.N, Data.BCD, {"count_digits": False}, None),
        (Kind.N, Data.ASCII, {}, 5),
        (Kind.N, Data.EBCDIC, {}, 3),
        (Kind.Z, Data.BCD, {}, 9),
        (Kind.Z, Data.ASCII, {}, None),
        (Kind.AN, Data.ASCII, {}, 6),
        (Kind.ANS, Data.EBCDIC, {}, 4),
        (Kind.B, Data.BINARY, {}, 8),
        (Kind.B, Data.HEX, {}, 16),
        (Kind.ANS, Data.BINARY, {"sub": "ascii-tlv"}, None),
        (Kind.ANS, Data.ASCII, {"sub": "ascii-tlv"}, None),
        (Kind.ANS, Data.EBCDIC, {"sub": "ascii-tlv"}, None),
        (Kind.B, Data.BINARY, {"sub": "cb-tlv"}, None),
        (Kind.B, Data.BINARY, {"sub": "ber-tlv"}, None),
        (Kind.B, Data.HEX, {"sub": "ber-tlv"}, None),
    ]
    every_prefix = [(var, prefix, 99 if var == 2 else 300) for prefix in Prefix for var in (2, 3)]
    # Sub-element fields: each prefix once, both prefix widths.
    some_prefixes = [(2, Prefix.BINARY, 99), (3, Prefix.BCD, 300), (2, Prefix.ASCII, 99),
                     (3, Prefix.EBCDIC, 300)]
    specs: list[FieldSpec] = []
    number = 2
    for kind, data, extra, fixed in variants:
        layouts = [(0, Prefix.BINARY, fixed)] if fixed is not None else []
        layouts += some_prefixes if "sub" in extra else every_prefix
        for var, prefix, max_len in layouts:
            if number == 65:  # keep 65 free: some engines treat it as a bitmap
                number += 1
            name = f"{kind}/{data}/{'fixed' if not var else f'L{var} {prefix}'}"
            specs.append(FieldSpec(number, name, kind, max_len, var, prefix, data, **extra))
            number += 1
    return specs


def mixed_profiles() -> dict[str, Profile]:
    specs = _mixed_specs()
    return {
        "mixed-binary": Profile.build("mixed-binary", specs, mti_bcd=True, bitmap_hex=False),
        "mixed-text": dataclasses.replace(
            Profile.build("mixed-text", specs, mti_bcd=False, bitmap_hex=True),
            mti_encoding="cp500",
        ),
    }
