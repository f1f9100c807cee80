"""Hypothesis round-trips: build -> encode -> decode -> equal, for every profile."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs.errors import CodecError
from passerelle.codecs.fields import Data, Encoded, FieldSpec, Kind, Prefix
from passerelle.codecs.iso8583 import Message, encode, encode_field
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles import PROFILES
from passerelle.codecs.subfields import SUBFIELD_CODECS
from tests.strategies import (
    MEDIUM,
    QUICK,
    ROUND_TRIP,
    ber_tags,
    defined_numbers,
    field_values,
    messages,
    mixed_profiles,
    sub_elements,
)

PROFILE_NAMES = sorted(PROFILES)
ALL_PROFILES: dict[str, Profile] = {**PROFILES, **mixed_profiles()}
ALL_NAMES = sorted(ALL_PROFILES)


def _specs(profile: Profile) -> list[FieldSpec]:
    return [spec for spec in profile.specs if spec is not None]


def test_profiles_cover_every_format() -> None:
    """The round-trips below reach every length kind, prefix, data encoding and sub codec."""
    specs = [s for p in ALL_PROFILES.values() for s in _specs(p)]
    assert {s.var for s in specs} == {0, 2, 3}
    assert {s.prefix for s in specs if s.var} == {
        Prefix.BINARY, Prefix.BCD, Prefix.ASCII, Prefix.EBCDIC,
    }
    assert {s.data for s in specs} == set(Data)
    assert {s.sub for s in specs} - {None} == set(SUBFIELD_CODECS)
    assert any(s.data is Data.BCD and s.var and not s.count_digits for s in specs)
    assert any(s.var == 3 and s.prefix is Prefix.BINARY for s in specs)  # 2-byte prefix
    for profile in ALL_PROFILES.values():
        assert any(n > 64 for n in defined_numbers(profile)), profile.name


@pytest.mark.parametrize("name", ALL_NAMES)
@ROUND_TRIP
@given(data=st.data())
def test_message_round_trip(name: str, data: st.DataObject) -> None:
    profile = ALL_PROFILES[name]
    mti, values = data.draw(messages(profile))
    wire = encode(profile, mti, values)
    msg = Message.parse(wire, profile)
    assert msg.mti == mti
    assert list(msg.numbers) == sorted(values)
    assert msg.to_dict() == values
    for number, value in values.items():
        assert msg.get(number) == value
        spec = profile.specs[number]
        assert spec is not None
        assert msg.body(number) == bytes(msg.raw(number))[spec.prefix_size:]
    # pick: the asked fields in the asked order, None for the absent ones.
    wanted = tuple(data.draw(st.lists(st.integers(2, 128), max_size=8)))
    assert msg.pick(wanted) == [values.get(number) for number in wanted]
    assert msg.pick(wanted) == msg.pick(wanted)  # from the cached plan, the same
    # Re-encoding, from values or from the view, gives the same bytes.
    assert encode(profile, mti, msg.to_dict()) == wire
    assert msg.respond(mti) == wire


@pytest.mark.parametrize("name", ALL_NAMES)
@MEDIUM
@given(data=st.data())
def test_pick_of_a_damaged_message_converts_and_fails_as_get(name: str,
                                                            data: st.DataObject) -> None:
    """pick converts a run of fields at once; a bad byte anywhere must still give exactly
    get's values, or a CodecError when get raises for one of the asked fields (and none
    for a bad field that was not asked)."""
    profile = ALL_PROFILES[name]
    mti, values = data.draw(messages(profile))
    wire = bytearray(encode(profile, mti, values))
    wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        msg = Message.parse(bytes(wire), profile)
    except CodecError:
        return
    wanted = tuple(data.draw(st.lists(st.sampled_from([*msg.numbers, 2, 128]), max_size=6)))
    try:
        expected = [msg.get(number) for number in wanted]
    except CodecError:
        with pytest.raises(CodecError):
            msg.pick(wanted)
        return
    assert msg.pick(wanted) == expected


@pytest.mark.parametrize("name", ALL_NAMES)
@MEDIUM
@given(data=st.data())
def test_secondary_bitmap_round_trip(name: str, data: st.DataObject) -> None:
    """At least one field above 64: the secondary bitmap is sent, and only then."""
    profile = ALL_PROFILES[name]
    high = [n for n in defined_numbers(profile) if n > 64]
    low = [n for n in defined_numbers(profile) if n <= 64]
    mti, values = data.draw(messages(profile, min_fields=1, max_fields=3,
                                     numbers=st.sampled_from(high)))
    _, more = data.draw(messages(profile, max_fields=4, numbers=st.sampled_from(low)))
    values = dict(sorted({**values, **more}.items()))
    wire = encode(profile, mti, values)
    bitmap_at = 2 if profile.mti_bcd else 4
    first = wire[bitmap_at] if not profile.bitmap_hex else int(wire[bitmap_at:bitmap_at + 2], 16)
    assert first & 0x80
    assert Message.parse(wire, profile).to_dict() == values
    without_high = {n: v for n, v in values.items() if n <= 64}
    low_wire = encode(profile, mti, without_high)
    first = low_wire[bitmap_at] if not profile.bitmap_hex else int(
        low_wire[bitmap_at:bitmap_at + 2], 16
    )
    assert not first & 0x80
    assert Message.parse(low_wire, profile).to_dict() == without_high


def _every_field() -> list[tuple[str, int]]:
    return [(p, n) for p in ALL_NAMES for n in defined_numbers(ALL_PROFILES[p])]


@pytest.mark.parametrize("name", ALL_NAMES)
@MEDIUM
@given(data=st.data())
def test_single_field_round_trip(name: str, data: st.DataObject) -> None:
    """Any one field alone, at its extreme lengths too (0, max) for variable fields."""
    profile = ALL_PROFILES[name]
    number = data.draw(st.sampled_from(defined_numbers(profile)))
    spec = profile.specs[number]
    assert spec is not None
    value = data.draw(field_values(spec))
    wire = encode(profile, "0200", {number: value})
    assert Message.parse(wire, profile).get(number) == value


@pytest.mark.parametrize(("name", "number"), _every_field())
def test_every_field_at_its_maximum(name: str, number: int) -> None:
    """Each field of each profile at its maximum length (fixed size for fixed fields)."""
    profile = ALL_PROFILES[name]
    spec = profile.specs[number]
    assert spec is not None
    value = _max_value(spec)
    raw = encode_field(spec, value)
    wire = encode(profile, "0800", {number: value})
    assert wire.endswith(raw)
    msg = Message.parse(wire, profile)
    assert msg.get(number) == value
    assert bytes(msg.raw(number)) == raw


def _max_value(spec: FieldSpec) -> object:
    """The longest value `spec` takes (its exact size when fixed)."""
    room = spec.max_len // 2 if spec.data is Data.HEX else spec.max_len  # in bytes
    if spec.sub == "ascii-tlv":  # items of at most 4 + 99 bytes
        items, tag = [], 0
        while room >= 4:
            size = min(99, room - 4)
            items.append((f"T{tag % 10}", "x" * size))
            room -= 4 + size
            tag += 1
        return tuple(items)
    if spec.sub == "cb-tlv":
        items2 = []
        while room >= 3:
            size = min(255, room - 3)
            items2.append(("9F26", bytes(i & 0xFF for i in range(size))))
            room -= 3 + size
        return tuple(items2)
    if spec.sub == "ber-tlv":  # 3-byte tag, long-form length
        size = room - 3 - (1 if room - 4 < 0x80 else 2 if room - 5 <= 0xFF else 3)
        return (("DF8101", b"\x5a" * size),)
    if spec.data is Data.BINARY:
        return bytes(i & 0xFF for i in range(spec.max_len))
    if spec.data is Data.HEX:
        return b"\xab" * room
    if spec.data is Data.BCD and spec.var and not spec.count_digits:
        return "9" * (2 * spec.max_len)  # the prefix counts bytes
    if spec.kind.value == "z":
        return ("4" * 16 + "=" + "7" * spec.max_len)[: spec.max_len]
    if spec.kind.value == "n":
        return "9" * spec.max_len
    return ("A~ !" * spec.max_len)[: spec.max_len]


@pytest.mark.parametrize(("name", "number"), _every_field())
def test_every_field_over_its_maximum_is_refused(name: str, number: int) -> None:
    """One unit more than the maximum (or than a fixed size) is a CodecError naming the field."""
    spec = ALL_PROFILES[name].specs[number]
    assert spec is not None
    value = _max_value(spec)
    if spec.sub is not None:
        extra_item = {"ascii-tlv": ("AA", ""), "cb-tlv": ("0101", b""), "ber-tlv": ("5A", b"")}
        longer: object = (*value, extra_item[spec.sub])  # type: ignore[misc]
    elif isinstance(value, bytes):
        longer = value + b"\x00"
    else:
        longer = value + ("11" if spec.data is Data.BCD and not spec.count_digits else "1")  # type: ignore[operator]
    with pytest.raises(CodecError) as caught:
        encode(ALL_PROFILES[name], "0800", {number: longer})
    assert caught.value.field == number


# -- sub-elements -------------------------------------------------------------------------
@pytest.mark.parametrize("codec", sorted(SUBFIELD_CODECS))
@MEDIUM
@given(data=st.data())
def test_sub_element_codec_round_trip(codec: str, data: st.DataObject) -> None:
    spec = FieldSpec(55, "test", _kind_for(codec), 999, 3, Prefix.ASCII, Data.BINARY, sub=codec)
    items = data.draw(sub_elements(spec))
    sub = SUBFIELD_CODECS[codec]
    assert sub.decode(sub.encode(items)) == items


def _kind_for(codec: str) -> Kind:
    return Kind.ANS if codec == "ascii-tlv" else Kind.B


@QUICK
@given(tags=st.lists(st.sampled_from(["0101", "0102", "0057"]), min_size=2, max_size=8),
       payload=st.binary(max_size=10))
def test_cb_tlv_keeps_repeats_in_order(tags: list[str], payload: bytes) -> None:
    items = tuple((tag, payload + bytes([i])) for i, tag in enumerate(tags))
    profile = PROFILES["cb2a"]
    wire = encode(profile, "0100", {59: items})
    assert Message.parse(wire, profile)[59] == items


@QUICK
@given(tag=ber_tags(), size=st.integers(0x80, 0xF0))
def test_ber_tlv_long_lengths_and_multibyte_tags(tag: str, size: int) -> None:
    """iso93-binary field 55: long-form lengths (0x81 nn) and multi-byte tags survive."""
    profile = PROFILES["iso93-binary"]
    size = min(size, 255 - 11 - len(tag) // 2 - 2)  # room left beside the 9F26 item
    value = bytes(size)
    wire = encode(profile, "1100", {55: ((tag, value), ("9F26", b"\x01" * 8))})
    got = Message.parse(wire, profile)[55]
    assert got == ((tag, value), ("9F26", b"\x01" * 8))
    assert b"\x81" + bytes([size]) in bytes(Message.parse(wire, profile).raw(55))


# -- building answers from views -------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
@ROUND_TRIP
@given(data=st.data())
def test_respond_equals_encode_of_changed_dict(name: str, data: st.DataObject) -> None:
    """respond(mti, changes) == encode(mti, request values with the changes applied)."""
    profile = ALL_PROFILES[name]
    mti, values = data.draw(messages(profile))
    request = Message.parse(encode(profile, mti, values), profile)
    numbers = defined_numbers(profile)
    touched = data.draw(st.lists(st.sampled_from(numbers), max_size=6, unique=True)
                        | st.just(list(values)[:3]))
    changes: dict[int, object] = {}
    for number in touched:
        spec = profile.specs[number]
        assert spec is not None
        changes[number] = data.draw(st.none() | field_values(spec))
    reply_mti = data.draw(st.sampled_from([mti, "0110", "1110", "0810"]))
    expected = {**values, **changes}
    expected = {n: v for n, v in sorted(expected.items()) if v is not None}
    reply = request.respond(reply_mti, changes)
    assert reply == encode(profile, reply_mti, expected)
    assert Message.parse(reply, profile).to_dict() == expected
    # The same changes given as their wire bytes (`Encoded`) are copied as they are.
    encoded = {number: None if value is None else Encoded(encode_field(
        profile.specs[number], value)) for number, value in changes.items()}  # type: ignore[arg-type]
    assert request.respond(reply_mti, encoded) == reply


@pytest.mark.parametrize("data", [Data.ASCII, Data.EBCDIC])
def test_sub_elements_over_text_data_round_trip(data: Data) -> None:
    """A field 48 carried as text holding ASCII TLV (a common acquirer layout)."""
    spec = FieldSpec(48, "Additional data", Kind.ANS, 999, 3, Prefix.ASCII, data, sub="ascii-tlv")
    profile = Profile.build("text-tlv", [spec], mti_bcd=False, bitmap_hex=True)
    items = (("01", "ABC"), ("02", ""))
    wire = b"0100" + b"0000000000010000" + b"011" + "0103ABC0200".encode(data.value)
    assert Message.parse(wire, profile)[48] == items
    assert encode(profile, "0100", {48: items}) == wire
