"""Translation between the terminal's CB2A and each acquirer profile, and the MUX keys."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.codecs.subfields import SUBFIELD_CODECS
from passerelle.routing import translate
from passerelle.routing.settings import AcquirerSettings

CB2A = get_profile("cb2a")
VECTORS = Path("/work/shared/vectors/cb2a")
NOW = datetime(2026, 1, 24, 16, 37, tzinfo=UTC)


def _vector(name: str) -> Message:
    return Message.parse(bytes.fromhex((VECTORS / f"{name}.hex").read_text().strip()), CB2A)


def _acquirer(profile: str, **extra: object) -> AcquirerSettings:
    return AcquirerSettings(name="a", host="h", port=1, profile=profile,  # type: ignore[arg-type]
                            acquirer_id="12345", **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("vector", ["0100-emv", "0100-stripe"])
@pytest.mark.parametrize("profile", ["iso93-binary", "iso87-ascii"])
def test_raw_copied_fields_give_the_same_bytes_as_encoding_every_value(
        vector: str, profile: str) -> None:
    request = _vector(vector)
    wire, key = translate.to_acquirer(request, _acquirer(profile), NOW)
    target = get_profile(profile)
    out = Message.parse(wire, target)
    assert wire == encode(target, out.mti, out.to_dict())
    for n in (2, 3, 4, 11, 14, 35, 37, 41, 42, 49):
        if n in request:
            assert out.get(n) == request.get(n)
    assert out.get(32) == "12345"
    assert key == translate.key_of(out, translate.answer_mti(out.mti))
    if profile == "iso93-binary":
        assert out.mti == "1100" and out.get(12) == f"26{request.get(13)}{request.get(12)}"
    if 55 in request:
        icc = out.get(55)
        pairs = translate.ber_decode(icc) if isinstance(icc, bytes) else icc
        sent = tuple(item for item in request.get(55) if item[0] not in ("DF80", "DF81"))
        assert translate.ber_to_cb(pairs) == sent


_FIELDS: dict[int, object] = {
    2: "4970101234567893", 3: "000000", 11: "000123", 12: "163700", 13: "0124", 14: "3012",
    18: "5411", 22: "051", 25: "00", 32: "49730030003", 35: "4970101234567893=30121011234",
    37: "000000000012", 41: "TPE00001", 42: "1234567        ", 49: "978",
    55: (("9F06", bytes.fromhex("A0000000421010")), ("DF80", b"x"), ("9F27", b"\x80")),
}


@given(st.sets(st.sampled_from(sorted(_FIELDS))), st.sampled_from(["0100", "0101", "0200"]),
       st.sampled_from(["iso93-binary", "iso87-ascii"]))
def test_any_shape_of_request_gives_the_values_it_carries(
        present: set[int], mti: str, profile: str) -> None:
    """Whatever fields a request has (so whichever runs are copied as one slice), the
    acquirer's request is a well-formed message of its profile carrying the same values."""
    values = {n: _FIELDS[n] for n in present} | {4: "000000001500"}
    request = Message.parse(encode(CB2A, mti, values), CB2A)
    wire, key = translate.to_acquirer(request, _acquirer(profile), NOW)
    target = get_profile(profile)
    out = Message.parse(wire, target)
    assert wire == encode(target, out.mti, out.to_dict())
    for n in (2, 3, 4, 11, 14, 35, 37, 41, 42, 49):
        assert out.get(n) == request.get(n)
    assert out.get(32) == "12345" and key == translate.key_of(out, translate.answer_mti(out.mti))
    if profile == "iso93-binary":
        assert out.get(12) == (f"26{request.get(13)}{request.get(12)}" if {12, 13} <= present
                               else f"26{request.get(13) or '0124'}{request.get(12) or '163700'}")
    if 55 in present:
        icc = out.get(55)
        pairs = translate.ber_decode(icc) if isinstance(icc, bytes) else icc
        assert pairs == (("9F06", bytes.fromhex("A0000000421010")), ("9F27", b"\x80"))


def test_a_reversal_shares_the_key_but_never_the_answer_mti() -> None:
    acquirer = _acquirer("iso93-binary")
    wire, key = translate.to_acquirer(_vector("0100-emv"), acquirer, NOW)
    reversal, reversal_key = translate.follow_up(wire, acquirer, "reversal")
    _, advice_key = translate.follow_up(wire, acquirer, "advice", {38: "S00001"})
    assert key[0] == "1110" and reversal_key[0] == "1430" and advice_key[0] == "1130"
    assert key[1:] == reversal_key[1:] == advice_key[1:]
    message = Message.parse(reversal, get_profile("iso93-binary"))
    assert 35 not in message and 55 not in message and message.get(56).startswith("1100000351")


def test_a_financial_request_is_advised_as_1220_and_reversed_as_1420() -> None:
    acquirer = _acquirer("iso93-binary")
    financial = Message.parse(encode(CB2A, "0200", _vector("0100-emv").to_dict()), CB2A)
    wire, key = translate.to_acquirer(financial, acquirer, NOW)
    _, advice_key = translate.follow_up(wire, acquirer, "advice", {38: "S00001"})
    _, reversal_key = translate.follow_up(wire, acquirer, "reversal")
    assert (key[0], advice_key[0], reversal_key[0]) == ("1210", "1230", "1430")


def test_action_codes_map_to_cb_codes_with_per_acquirer_overrides() -> None:
    iso93 = get_profile("iso93-binary")
    default = _acquirer("iso93-binary")
    custom = _acquirer("iso93-binary", response_codes={"116": "05"})
    for code, cb in (("000", "00"), ("116", "51"), ("101", "54"), ("999", "05")):
        answer = Message.parse(encode(iso93, "1110", {39: code}), iso93)
        assert translate.from_acquirer(answer, default).code == cb
    answer = Message.parse(encode(iso93, "1110", {39: "116", 38: "A1B2C3", 44: "AB02XY"}), iso93)
    outcome = translate.from_acquirer(answer, custom)
    assert (outcome.code, outcome.approval, outcome.additional) == ("05", "A1B2C3",
                                                                     (("AB", "XY"),))


def test_the_0110_keeps_the_request_and_drops_track_data() -> None:
    request = _vector("0100-stripe")
    answer = Message.parse(translate.terminal_answer(request, "00", approval="123456"), CB2A)
    assert answer.mti == "0110" and answer.get(39) == "00" and answer.get(38) == "123456"
    assert 35 not in answer and answer.get(2) == request.get(2)
    assert all(tag != "0101" for tag, _ in answer.get(59))


@given(st.lists(st.tuples(st.sampled_from(["91", "71", "72", "5F24", "9F36", "DF8101"]),
                          st.binary(max_size=200)), max_size=5))
def test_ber_round_trip(items: list[tuple[str, bytes]]) -> None:
    assert translate.ber_decode(translate.ber_encode(items)) == tuple(items)


@given(st.lists(st.tuples(st.sampled_from(["91", "71", "72", "5F24", "9F36", "DF8101", "00"]),
                          st.binary(max_size=150)), max_size=5), st.binary(max_size=4))
def test_issuer_data_bytes_match_the_pairs_path(items: list[tuple[str, bytes]],
                                                tail: bytes) -> None:
    """The acquirer's chip data made CB bytes straight from its BER bytes is exactly what
    decoding, renaming and encoding the pairs gives; anything of another form (long tags
    or lengths, padding, a broken tail) is left to that path (None)."""
    body = translate.ber_encode(items) + tail
    fast = translate.ber_raw_to_cb(body)
    simple = all(len(tag) <= 4 and tag != "00" and len(value) < 0x80 for tag, value in items)
    if fast is None:
        assert not simple or tail or len(translate.ber_encode(items)) >= 256 - len(items)
        return
    pairs = translate.ber_to_cb(translate.ber_decode(body))
    assert fast == SUBFIELD_CODECS["cb-tlv"].encode(pairs)
    answer = Message.parse(translate.terminal_answer(_vector("0100-emv"), "00", "123456",
                                                     fast), CB2A)
    assert answer.get(55) == (pairs or None)  # no sub-element: no field 55


@given(st.lists(st.tuples(st.sampled_from(["0101", "0102", "0200", "020B"]),
                          st.binary(max_size=30)), max_size=6))
def test_the_answer_keeps_field_59_without_the_capabilities(
        items: list[tuple[str, bytes]]) -> None:
    """Whatever sub-elements a terminal puts in 59, its answer carries the same ones, in
    order, less 0101 (its capabilities), and no field 59 when nothing is left."""
    values = _vector("0100-emv").to_dict()
    values[59] = tuple(items)
    request = Message.parse(encode(CB2A, "0100", values), CB2A)
    answer = Message.parse(translate.terminal_answer(request, "00", "123456"), CB2A)
    kept = tuple(item for item in items if item[0] != "0101")
    assert answer.get(59) == (kept or None)
    assert answer.get(38) == "123456" and answer.get(2) == request.get(2)
