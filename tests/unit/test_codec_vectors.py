"""The four CB2A reference messages decode to their README's values and re-encode exactly."""

from __future__ import annotations

import pytest

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from tests.cb2a_vectors import EXPECTED, MTIS, NAMES, SIZES, VECTORS, load

CB2A = get_profile("cb2a")



def test_vectors_are_there() -> None:
    """The vectors are required: a checkout without them fails here, loudly, not by skips."""
    assert sorted(p.stem for p in VECTORS.glob("*.hex")) == sorted(NAMES), VECTORS


@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_to_readme_values(name: str) -> None:
    data = load(name)
    assert len(data) == SIZES[name]
    msg = Message.parse(data, CB2A)
    assert msg.mti == MTIS[name]
    # Same fields, same order (wire order is ascending), same values, sub-elements included.
    assert list(msg.numbers) == list(EXPECTED[name])
    assert msg.to_dict() == EXPECTED[name]
    assert list(msg.to_dict().items()) == list(EXPECTED[name].items())


@pytest.mark.parametrize("name", NAMES)
def test_vector_fields_read_one_at_a_time(name: str) -> None:
    """Lazy reads (`get`, `[]`, `in`) agree with the README field by field."""
    msg = Message.parse(load(name), CB2A)
    for number in range(2, 129):
        if number in EXPECTED[name]:
            assert number in msg
            assert msg.get(number) == EXPECTED[name][number], number
            assert msg[number] == EXPECTED[name][number], number
        else:
            assert number not in msg
            assert msg.get(number) is None
            with pytest.raises(KeyError):
                msg[number]


@pytest.mark.parametrize("name", NAMES)
def test_vector_raw_slices_cover_the_message(name: str) -> None:
    """MTI (2) + bitmap (8) + each field's raw bytes, in order, are the whole message."""
    data = load(name)
    msg = Message.parse(data, CB2A)
    body = b"".join(bytes(msg.raw(n)) for n in msg.numbers)
    assert data[:2] == bytes.fromhex(MTIS[name])
    assert data[10:] == body


def test_repeated_tag_kept_in_order() -> None:
    """0100-emv field 59 repeats tag 0101 (1510 then 1660): both kept, in wire order."""
    msg = Message.parse(load("0100-emv"), CB2A)
    tags = [tag for tag, _ in msg[59]]
    assert tags[:3] == ["0101", "0101", "0102"]
    assert [v for t, v in msg[59] if t == "0101"] == [b"\x15\x10", b"\x16\x60"]


@pytest.mark.parametrize("name", NAMES)
def test_readme_values_encode_to_vector(name: str) -> None:
    """Encoding the README's values (not our decode of them) gives the vector's bytes."""
    assert encode(CB2A, MTIS[name], EXPECTED[name]) == load(name)


@pytest.mark.parametrize("name", NAMES)
def test_vector_reencodes_byte_for_byte(name: str) -> None:
    data = load(name)
    msg = Message.parse(data, CB2A)
    assert encode(CB2A, msg.mti, msg.to_dict()) == data
    assert msg.respond(msg.mti) == data
    assert msg.respond(msg.mti, {}) == data


@pytest.mark.parametrize("name", NAMES)
def test_vector_parses_from_bytearray_and_memoryview(name: str) -> None:
    data = load(name)
    for buf in (bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        msg = Message.parse(buf, CB2A)
        assert msg.to_dict() == EXPECTED[name]


def test_numeric_fields_accept_int() -> None:
    """n fields take int on encode, zero-padded to a fixed field's length."""
    values = dict(EXPECTED["0100-emv"])
    values.update({3: 0, 4: 3000, 11: 351, 22: 51, 49: 978, 2: 4973019600600485})
    assert encode(CB2A, "0100", values) == load("0100-emv")


def test_0110_stripe_from_0100_stripe_view() -> None:
    """The format-error answer to 0100-stripe: 39=30, 44 AA=04701, 59 reduced, 35/47 out."""
    request = Message.parse(load("0100-stripe"), CB2A)
    reduced_59 = tuple(item for item in request[59] if item[0] != "0101")
    answer = request.respond(
        "0110",
        {35: None, 47: None, 39: "30", 44: (("AA", "04701"),), 59: reduced_59},
    )
    assert answer == load("0110-stripe")


def test_0110_emv_from_0100_emv_view() -> None:
    """The approval of 0100-emv: request keys echoed, 7/38/39 added, 55/59 replaced."""
    request = Message.parse(load("0100-emv"), CB2A)
    want = EXPECTED["0110-emv"]
    dropped = {n: None for n in request.numbers if n not in want}
    changed = {n: want[n] for n in want if n not in request or request[n] != want[n]}
    assert set(dropped) == {12, 18, 22, 25, 33, 43, 47}
    assert set(changed) == {7, 38, 39, 55, 59}
    assert request.respond("0110", {**dropped, **changed}) == load("0110-emv")


def test_respond_does_not_touch_the_request() -> None:
    data = load("0100-stripe")
    request = Message.parse(data, CB2A)
    request.respond("0110", {2: None, 39: "00", 4: "000000009999"})
    assert request.to_dict() == EXPECTED["0100-stripe"]
    assert bytes(request.wire) == data


@pytest.mark.parametrize("name", NAMES)
def test_ebcdic_profile_round_trips_vector_values(name: str) -> None:
    """cb2a-ebcdic: same layout, text in cp500; the README's values survive the round trip."""
    ebcdic = get_profile("cb2a-ebcdic")
    data = encode(ebcdic, MTIS[name], EXPECTED[name])
    assert len(data) == SIZES[name]
    assert data[2:10] == load(name)[2:10]  # same bitmap
    assert "FRANCE TELECOM".encode("cp500") in data or 43 not in EXPECTED[name]
    assert Message.parse(data, ebcdic).to_dict() == EXPECTED[name]


@pytest.mark.parametrize("name", NAMES)
def test_sub_element_fields_as_raw_bodies(name: str) -> None:
    """to_dict(subelements=False) keeps 44/47/55/59 as their bodies; they re-encode as is."""
    data = load(name)
    msg = Message.parse(data, CB2A)
    plain = msg.to_dict(subelements=False)
    for number, value in EXPECTED[name].items():
        if isinstance(value, tuple):
            assert plain[number] == bytes(msg.raw(number))[1:]  # after the 1-byte length
        else:
            assert plain[number] == value
    assert encode(CB2A, msg.mti, plain) == data


def test_parsed_frame_does_not_follow_a_reused_buffer() -> None:
    """A receive buffer reused after parse must not change the message already parsed."""
    buffer = bytearray(load("0100-stripe"))
    msg = Message.parse(buffer, CB2A)
    buffer[:] = bytes(len(buffer))
    assert msg.to_dict() == EXPECTED["0100-stripe"]
    assert msg.respond(msg.mti) == load("0100-stripe")


def test_routing_fields_read_despite_broken_other_fields() -> None:
    """Lazy decoding: bad BCD in 12 and a broken TLV in 55 do not stop reading 2, 3, 4, 41, 42."""
    data = bytearray(load("0100-emv"))
    data[data.index(bytes.fromhex("163700"))] = 0xA6  # field 12: nibble A
    data[data.index(bytes.fromhex("005713")) + 2] = 0xFF  # 55: tag 0057 runs past the field
    msg = Message.parse(bytes(data), CB2A)
    assert [msg.get(n) for n in (2, 3, 4, 41, 42)] == [
        EXPECTED["0100-emv"][n] for n in (2, 3, 4, 41, 42)
    ]
    assert msg.get(59) == EXPECTED["0100-emv"][59]


def test_respond_with_the_same_keys_dropping_then_setting() -> None:
    """The same change keys, once dropping and once setting a field, give different answers."""
    request = Message.parse(load("0100-emv"), CB2A)
    base = {n: v for n, v in EXPECTED["0100-emv"].items()}
    for changes in ({39: None, 41: None}, {39: "00", 41: "TERM0002"}, {39: None, 41: None},
                    {41: "TERM0003", 39: "05"}, {39: "00", 41: None}):
        expected = {n: v for n, v in sorted({**base, **changes}.items()) if v is not None}
        assert request.respond("0110", changes) == encode(CB2A, "0110", expected), changes
