"""Bad input: only `CodecError`, with the right field and offset, and `.partial` kept.

Whatever the bytes, `Message.parse`, `to_dict`, `get` of every field, `shown`, `repr` and
`respond` raise nothing but `CodecError` (and `repr`/`shown` raise nothing at all), and they
never hang.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs.errors import CodecError
from passerelle.codecs.fields import Data, Prefix
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles import PROFILES, get_profile
from tests.cb2a_vectors import EXPECTED, NAMES, load
from tests.strategies import FUZZ, messages, mixed_profiles

CB2A = get_profile("cb2a")
ISO87 = get_profile("iso87-ascii")
ALL_PROFILES: dict[str, Profile] = {**PROFILES, **mixed_profiles()}



def spans(data: bytes, profile: Profile = CB2A) -> dict[int, tuple[int, int]]:
    """field -> (start, end) in `data`, from the raw slices of a valid message."""
    msg = Message.parse(data, profile)
    pos = len(data) - sum(len(msg.raw(n)) for n in msg.numbers)  # MTI + bitmaps
    out = {}
    for number in msg.numbers:
        size = len(msg.raw(number))
        out[number] = (pos, pos + size)
        pos += size
    return out


_HEX = frozenset(b"0123456789ABCDEFabcdef")


def reference_fields(data: bytes, profile: Profile) -> dict[int, bytes] | None:
    """An independent, plain reading of the message structure: field -> raw bytes (length
    prefix included), or None when the structure is invalid. The oracle for `parse`."""
    size = 2 if profile.mti_bcd else 4
    head = data[:size]
    mti = head.hex() if profile.mti_bcd else head.decode(profile.mti_encoding, "replace")
    if len(head) < size or not (len(mti) == 4 and mti.isascii() and mti.isdigit()):
        return None
    pos, width, bitmap = size, 16 if profile.bitmap_hex else 8, b""
    for _ in range(2):
        chunk = data[pos : pos + width]
        if len(chunk) < width or (profile.bitmap_hex and not set(chunk) <= _HEX):
            return None
        bitmap += bytes.fromhex(chunk.decode()) if profile.bitmap_hex else chunk
        pos += width
        if not bitmap[0] & 0x80:
            break
    out: dict[int, bytes] = {}
    for number in range(2, 8 * len(bitmap) + 1):
        if not bitmap[(number - 1) // 8] & (0x80 >> ((number - 1) % 8)):
            continue
        spec = profile.specs[number]
        if spec is None:
            return None
        half = spec.data is Data.BCD and (spec.count_digits or not spec.var)
        if not spec.var:
            units, body = spec.max_len, pos
        else:
            plen = spec.var if spec.prefix in (Prefix.ASCII, Prefix.EBCDIC) else spec.var - 1
            raw_len, body = data[pos : pos + plen], pos + plen
            if len(raw_len) < plen:
                return None
            if spec.prefix is Prefix.BINARY:
                units = int.from_bytes(raw_len, "big")
            else:
                text = raw_len.hex() if spec.prefix is Prefix.BCD else raw_len.decode(
                    spec.prefix.value, "replace")
                if not (text.isascii() and text.isdigit()):
                    return None
                units = int(text)
            if units > spec.max_len:
                return None
        end = body + ((units + 1) // 2 if half else units)
        if end > len(data):
            return None
        out[number] = data[pos:end]
        pos = end
    return out if pos == len(data) else None


def exercise(data: bytes, profile: Profile) -> None:
    """Use every reading API on `data`; fail on anything but a well-formed CodecError."""
    expected = reference_fields(data, profile)
    try:
        msg = Message.parse(data, profile)
    except CodecError as exc:
        check_error(exc, data)
        assert expected is None, "parse refused a well-formed message"
        assert exc.partial is not None
        _read_everything(exc.partial, data)
        return
    assert expected is not None, "parse accepted a malformed message"
    assert {n: bytes(msg.raw(n)) for n in msg.numbers} == expected
    assert list(msg.numbers) == list(expected)
    _read_everything(msg, data)
    try:
        values = msg.to_dict()
    except CodecError:
        return
    # Whatever decodes re-encodes (what `mpctl decode --verify` does), to the same values.
    again = encode(profile, msg.mti, values)
    assert Message.parse(again, profile).to_dict() == values
    try:
        msg.respond(msg.mti)
    except CodecError as exc:
        check_error(exc, data)


def _read_everything(msg: Message, data: bytes) -> None:
    repr(msg)
    str(msg)
    for number in msg.numbers:
        msg.shown(number)
        try:
            msg.get(number)
        except CodecError as exc:
            check_error(exc, data)
            assert exc.field == number
    try:
        msg.to_dict()
    except CodecError as exc:
        check_error(exc, data)


def check_error(exc: CodecError, data: bytes) -> None:
    assert type(exc) is CodecError
    assert exc.field is None or 2 <= exc.field <= 128
    assert isinstance(exc.offset, int) and 0 <= exc.offset <= len(data)
    assert exc.reason and isinstance(exc.reason, str)
    # The fast path and the careful walk agree on what is valid.
    assert exc.reason != "inconsistent message"
    assert exc.reason in str(exc)


# -- truncated, over-long ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_truncated_at_every_byte(name: str) -> None:
    data = load(name)
    where = spans(data)
    for cut in range(len(data)):
        with pytest.raises(CodecError) as caught:
            Message.parse(data[:cut], CB2A)
        exc = caught.value
        check_error(exc, data[:cut])
        if cut < 2:
            assert (exc.field, exc.offset) == (None, 0), cut
            continue
        if cut < 10:
            assert (exc.field, exc.offset) == (None, 2), cut  # the bitmap
            continue
        # The first field that does not fit is named, at the byte where it starts.
        broken = next(n for n, (_, end) in where.items() if end > cut)
        assert (exc.field, exc.offset) == (broken, where[broken][0]), cut
        before = [n for n in where if n < broken]
        assert list(exc.partial.numbers) == before, cut
        assert exc.partial.to_dict() == {n: EXPECTED[name][n] for n in before}
        assert exc.partial.mti == data[:2].hex()


@pytest.mark.parametrize("name", NAMES)
def test_trailing_bytes(name: str) -> None:
    data = load(name)
    for extra in (b"\x00", b"\xff" * 7, data):
        with pytest.raises(CodecError) as caught:
            Message.parse(data + extra, CB2A)
        assert (caught.value.field, caught.value.offset) == (None, len(data))
        assert "after the last field" in caught.value.reason
        assert caught.value.partial.to_dict() == EXPECTED[name]


def test_broken_at_field_55_still_gives_the_keys() -> None:
    """A request cut inside field 55: 2, 11, 41 can still be echoed in a format-error answer."""
    data = load("0100-emv")
    start, _ = spans(data)[55]
    with pytest.raises(CodecError) as caught:
        Message.parse(data[: start + 20], CB2A)
    exc = caught.value
    assert (exc.field, exc.offset) == (55, start)
    partial = exc.partial
    assert partial.get(2) == "4973019600600485"
    assert partial.get(11) == "000351"
    assert partial.get(41) == "PUBLIPHO"
    assert 55 not in partial and 59 not in partial
    # ... and the answer built from the partial view echoes them.
    answer = Message.parse(partial.respond("0110", {39: "30", 44: (("AA", "05501"),)}), CB2A)
    assert answer.to_dict() == {
        **{n: EXPECTED["0100-emv"][n] for n in partial.numbers}, 39: "30", 44: (("AA", "05501"),)
    }


# -- lengths ---------------------------------------------------------------------------------
def test_length_above_maximum() -> None:
    data = bytearray(load("0100-stripe"))
    where = spans(bytes(data))
    for number, too_long in ((2, 20), (35, 38), (32, 12)):
        broken = bytearray(data)
        broken[where[number][0]] = too_long
        with pytest.raises(CodecError) as caught:
            Message.parse(bytes(broken), CB2A)
        assert (caught.value.field, caught.value.offset) == (number, where[number][0])
        assert "exceeds the maximum" in caught.value.reason
        assert list(caught.value.partial.numbers) == [n for n in where if n < number]


@pytest.mark.parametrize("name", NAMES)
def test_length_past_the_end(name: str) -> None:
    """The last field (59) claims one byte more than the message holds."""
    data = bytearray(load(name))
    where = spans(bytes(data))
    start = where[59][0]
    data[start] += 1
    with pytest.raises(CodecError) as caught:
        Message.parse(bytes(data), CB2A)
    assert (caught.value.field, caught.value.offset) == (59, start)
    assert 59 not in caught.value.partial


def test_ascii_length_prefix_not_digits() -> None:
    wire = bytearray(encode(ISO87, "0200", {2: "4539795755326151", 11: "000001"}))
    wire[20:22] = b"1A"  # field 2's LL prefix, right after MTI (4) and bitmap (16)
    with pytest.raises(CodecError) as caught:
        Message.parse(bytes(wire), ISO87)
    assert (caught.value.field, caught.value.offset) == (2, 20)


def test_bcd_length_prefix_not_decimal() -> None:
    iso93 = get_profile("iso93-binary")
    wire = bytearray(encode(iso93, "1100", {2: "4539795755326151", 11: "000001"}))
    assert wire[10] == 0x16  # BCD "16"
    wire[10] = 0x1A
    with pytest.raises(CodecError) as caught:
        Message.parse(bytes(wire), iso93)
    assert (caught.value.field, caught.value.offset) == (2, 10)


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
def test_any_bcd_length_prefix_byte(pan_prefix: int, icc_high: int, icc_low: int) -> None:
    """iso93-binary's LL (field 2) and LLL (field 55) prefixes, whatever their bytes: a
    message parses exactly when each prefix is BCD digits announcing the bytes that follow,
    and is refused otherwise, naming the first field whose prefix is wrong."""
    iso93 = get_profile("iso93-binary")
    pan, icc = "4539795755326151", bytes(range(40))
    wire = bytearray(encode(iso93, "1110", {2: pan, 11: "000001", 55: icc}))
    assert (wire[10], wire[22], wire[23]) == (0x16, 0x00, 0x40)
    wire[10], wire[22], wire[23] = pan_prefix, icc_high, icc_low

    def digits(*values: int) -> int | None:
        text = bytes(values).hex()
        return int(text) if text.isdigit() else None

    pan_ok = digits(pan_prefix) == 16
    icc_ok = digits(icc_high, icc_low) == 40
    if pan_ok and icc_ok:
        message = Message.parse(bytes(wire), iso93)
        assert (message.get(2), message.get(55)) == (pan, icc)
        return
    with pytest.raises(CodecError) as caught:
        Message.parse(bytes(wire), iso93)
    # A prefix that is not BCD digits is named; a wrong length shows further on.
    if not pan_ok:
        expected = (2,) if digits(pan_prefix) is None else (2, 11, 55, None)
    else:
        expected = (55,) if digits(icc_high, icc_low) is None else (55, None)
    assert caught.value.field in expected


# -- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("number", "at", "byte"), [
    (3, 0, 0x0A),   # n6 processing code: nibble A
    (4, 5, 0xF0),   # n12 amount
    (11, 2, 0x5C),  # STAN
    (2, 3, 0xB4),   # inside the PAN (LLVAR)
    (22, 0, 0x10),  # n3: the pad nibble is not 0
    (32, 1, 0x0E),  # LLVAR, odd digit count: the pad nibble is not 0
])
def test_bad_bcd_nibbles(number: int, at: int, byte: int) -> None:
    data = bytearray(load("0100-emv"))
    start, end = spans(bytes(data))[number]
    body = start + (CB2A.specs[number].prefix_size)  # type: ignore[union-attr]
    data[body + at] = byte
    msg = Message.parse(bytes(data), CB2A)  # lazy: locating fields converts nothing
    with pytest.raises(CodecError) as caught:
        msg.get(number)
    assert caught.value.field == number
    assert start <= caught.value.offset < end
    with pytest.raises(CodecError) as caught:
        msg.to_dict()
    assert caught.value.field == number
    assert "invalid" in msg.shown(number)
    assert f"{number}=<invalid" in repr(msg)
    # The other fields still read.
    assert msg.get(41) == "PUBLIPHO"


def test_bad_track2_nibble() -> None:
    data = bytearray(load("0100-stripe"))
    start, end = spans(bytes(data))[35]
    data[start + 10] = 0xAB  # nibbles A and B: not digits, not the D separator
    msg = Message.parse(bytes(data), CB2A)
    with pytest.raises(CodecError) as caught:
        msg.get(35)
    assert caught.value.field == 35 and start <= caught.value.offset < end


def test_sub_element_running_past_its_field() -> None:
    data = bytearray(load("0100-emv"))
    start, end = spans(bytes(data))[55]
    assert data[start + 1 : start + 3] == b"\x00\x57"
    data[start + 3] = 0xF0  # tag 0057 claims 240 bytes
    msg = Message.parse(bytes(data), CB2A)
    with pytest.raises(CodecError) as caught:
        msg.get(55)
    assert caught.value.field == 55 and start <= caught.value.offset < end
    assert msg.get(59) == EXPECTED["0100-emv"][59]


def test_ascii_tlv_bad_length() -> None:
    data = bytearray(load("0100-stripe"))
    start, end = spans(bytes(data))[47]
    assert bytes(data[start + 1 : start + 5]) == b"0808"
    data[start + 3 : start + 5] = b"x8"
    msg = Message.parse(bytes(data), CB2A)
    with pytest.raises(CodecError) as caught:
        msg.get(47)
    assert caught.value.field == 47 and start <= caught.value.offset < end


# -- MTI and bitmaps ---------------------------------------------------------------------------
def test_bitmap_naming_an_undefined_field() -> None:
    """cb2a defines no field 65: a secondary bitmap naming it is refused, where 65 would sit."""
    data = load("0100-emv")
    bitmap = bytearray(data[2:10])
    bitmap[0] |= 0x80
    broken = data[:2] + bytes(bitmap) + b"\x80" + bytes(7) + data[10:]
    with pytest.raises(CodecError) as caught:
        Message.parse(broken, CB2A)
    exc = caught.value
    assert exc.field == 65
    assert exc.offset == len(broken)  # after every primary field
    assert "65" in exc.reason
    assert exc.partial.to_dict() == EXPECTED["0100-emv"]


def test_iso93_has_no_field_65() -> None:
    iso93 = get_profile("iso93-binary")
    wire = b"\x11\x00" + b"\x80" + bytes(7) + b"\x80" + bytes(7)
    with pytest.raises(CodecError) as caught:
        Message.parse(wire, iso93)
    assert (caught.value.field, caught.value.offset) == (65, 18)


@pytest.mark.parametrize(("profile_name", "wire"), [
    ("cb2a", b"\x0a\x00" + bytes(8)),
    ("cb2a", b"\x01\xf0" + bytes(8)),
    ("iso87-ascii", b"01X0" + b"0" * 16),
    ("iso87-ascii", b"\xff100" + b"0" * 16),
    ("iso87-ascii", "０１００".encode() + b"0" * 16),  # full-width digits are not ASCII digits
])
def test_bad_mti(profile_name: str, wire: bytes) -> None:
    with pytest.raises(CodecError) as caught:
        Message.parse(wire, get_profile(profile_name))
    assert (caught.value.field, caught.value.offset) == (None, 0)


def test_mti_must_be_ascii_digits_in_any_encoding() -> None:
    """A text MTI is 4 ASCII digits: cp500 bytes DA/EA/FA read as superscript digits."""
    ebcdic_mti = dataclasses.replace(ISO87, name="iso87-cp500-mti", mti_encoding="cp500")
    good = encode(ebcdic_mti, "0100", {11: "000001"})
    assert good[:4] == "0100".encode("cp500")
    assert Message.parse(good, ebcdic_mti).mti == "0100"
    bad = bytes([0xF0, 0xDA, 0xF0, 0xF0]) + good[4:]  # "0¹00"
    with pytest.raises(CodecError) as caught:
        Message.parse(bad, ebcdic_mti)
    assert (caught.value.field, caught.value.offset) == (None, 0)


@pytest.mark.parametrize("bitmap", [
    b"70G8000000000000",  # not hex
    b"70 3800000000000",  # whitespace (bytes.fromhex would skip it)
    b"7038 00000000000",
    b"\x00" * 16,
])
def test_bad_hex_bitmap(bitmap: bytes) -> None:
    with pytest.raises(CodecError) as caught:
        Message.parse(b"0100" + bitmap, ISO87)
    assert (caught.value.field, caught.value.offset) == (None, 4)


def test_truncated_secondary_bitmap() -> None:
    with pytest.raises(CodecError) as caught:
        Message.parse(b"\x01\x00" + b"\x80" + bytes(7) + b"\x00" * 3, CB2A)
    assert (caught.value.field, caught.value.offset) == (None, 10)
    with pytest.raises(CodecError) as caught:
        Message.parse(b"0100" + b"8" + b"0" * 15 + b"00", ISO87)
    assert (caught.value.field, caught.value.offset) == (None, 20)


def test_empty_and_tiny_inputs() -> None:
    for profile in PROFILES.values():
        for data in (b"", b"\x01", b"\x01\x00\x70"):
            with pytest.raises(CodecError) as caught:
                Message.parse(data, profile)
            assert caught.value.field is None


def test_encode_errors_are_codec_errors() -> None:
    for values, field in (
        ({2: "45397957553261X"}, 2),
        ({3: "12345"}, 3),  # fixed n6
        ({4: -1}, 4),
        ({41: "PUBLIPHO€"}, 41),
        ({52: "not bytes"}, 52),
        ({65: "1"}, 65),  # not in cb2a
        ({59: (("XYZ", b""),)}, 59),  # tag not hex
        ({47: (("TOO", "x"),)}, 47),  # 3-char tag
    ):
        with pytest.raises(CodecError) as caught:
            encode(CB2A, "0100", values)
        assert caught.value.field == field
    with pytest.raises(CodecError) as caught:
        encode(CB2A, "01A0", {})
    assert caught.value.field is None


# -- fuzz ---------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(ALL_PROFILES))
@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(name: str, data: bytes) -> None:
    exercise(data, ALL_PROFILES[name])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(ALL_PROFILES))
@FUZZ
@given(data=st.data())
def test_random_bytes_after_a_valid_header(name: str, data: st.DataObject) -> None:
    """A real MTI and bitmap, then random bytes: reaches the field walk, not just the MTI."""
    profile = ALL_PROFILES[name]
    mti, values = data.draw(messages(profile, max_fields=8))
    wire = encode(profile, mti, values)
    header = len(wire) - sum(len(encode(profile, mti, {n: v})) - len(encode(profile, mti, {}))
                             for n, v in values.items())
    body = data.draw(st.binary(max_size=300))
    exercise(wire[:header] + body, profile)


def _mutate(data: bytes, draw: Any) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete" and out:
            del out[at : at + draw(st.integers(1, 3))]
        elif out:
            out[at] = draw(st.sampled_from([0x00, 0xFF, 0x80, 0x7F, 0x0D, 0xD0, 0x3D]))
    return bytes(out)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile_name", ["cb2a", "cb2a-ebcdic"])
@FUZZ
@given(data=st.data())
def test_mutated_vectors(profile_name: str, data: st.DataObject) -> None:
    original = load(data.draw(st.sampled_from(NAMES)))
    exercise(_mutate(original, data.draw), get_profile(profile_name))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(ALL_PROFILES))
@FUZZ
@given(data=st.data())
def test_mutated_messages(name: str, data: st.DataObject) -> None:
    profile = ALL_PROFILES[name]
    mti, values = data.draw(messages(profile, min_fields=1))
    exercise(_mutate(encode(profile, mti, values), data.draw), profile)
