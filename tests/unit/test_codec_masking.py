"""Masking: no repr/str of a message, no `shown()`, no CodecError text shows a full PAN or
track 2 (PCI DSS: first 6 and last 4 digits at most; nothing after the track separator)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs.errors import CodecError
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.masking import luhn
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles import get_profile
from tests.cb2a_vectors import NAMES, SECRETS, load
from tests.strategies import FUZZ, MEDIUM, QUICK, ROUND_TRIP, full_pans_in, pans, tracks2

CB2A = get_profile("cb2a")


def masked(pan: str) -> str:
    """The display rule of DESIGN.md §7: first 6 and last 4 digits."""
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def texts_of(msg: Message) -> list[str]:
    """Everything a message shows a person or a log."""
    return [repr(msg), str(msg), f"{msg}", *(msg.shown(n) for n in msg.numbers)]


def assert_clean(text: str, secrets: tuple[str, ...] | list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"clear card data in {text!r}"
        assert secret.upper() not in text.upper(), f"clear card data in {text!r}"


# -- the reference vectors ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_vector_display_is_masked(name: str) -> None:
    msg = Message.parse(load(name), CB2A)
    pan = msg[2]
    for text in texts_of(msg):
        assert_clean(text, SECRETS[name])
        assert full_pans_in(text) == [], text
    assert msg.shown(2) == masked(pan)
    assert masked(pan) in repr(msg)


def test_vector_track2_hides_everything_after_the_separator() -> None:
    msg = Message.parse(load("0100-stripe"), CB2A)
    shown = msg.shown(35)
    pan_part, sep, rest = shown.partition("=")
    assert pan_part == masked("4539795755326151") and sep == "="
    assert rest == "*" * len("13082018550000001001")


def test_vector_emv_track2_equivalent_is_masked() -> None:
    """Field 55 tag 57 (track 2 equivalent) shows like field 35; other tags stay readable."""
    shown = Message.parse(load("0100-emv"), CB2A).shown(55)
    assert "0057=497301******0485D" in shown
    assert "D12122016278272031583F" not in shown
    assert "9F26=93D1A69155ACA8CD" in shown


@pytest.mark.parametrize("name", NAMES)
def test_truncated_vectors_show_no_card_data(name: str) -> None:
    """Cut at every byte: the error text and the partial view (fields before it) are clean."""
    data = load(name)
    for cut in range(len(data)):
        with pytest.raises(CodecError) as caught:
            Message.parse(data[:cut], CB2A)
        exc = caught.value
        for text in (str(exc), repr(exc), exc.reason, *texts_of(exc.partial)):
            assert_clean(text, SECRETS[name])
            assert full_pans_in(text) == [], text


def _flipped(data: bytes) -> list[bytes]:
    return [data[:i] + bytes([data[i] ^ x]) + data[i + 1 :]
            for i in range(len(data)) for x in (0x01, 0x5A, 0x80)]


def _display_after_flips(name: str) -> list[str]:
    """Every text shown for the vector with one byte flipped, at every offset."""
    texts = []
    for candidate in _flipped(load(name)):
        try:
            msg = Message.parse(candidate, CB2A)
        except CodecError as exc:
            texts += [str(exc), repr(exc), *texts_of(exc.partial)]
            continue
        texts += texts_of(msg)
        for number in msg.numbers:
            try:
                msg.get(number)
            except CodecError as exc:
                texts.append(str(exc))
    return texts


@pytest.mark.parametrize("name", ["0110-emv", "0100-stripe", "0110-stripe"])
def test_flipped_vectors_show_no_card_data(name: str) -> None:
    for text in _display_after_flips(name):
        assert_clean(text, SECRETS[name])


def test_flipped_emv_vector_shows_no_card_data() -> None:
    for text in _display_after_flips("0100-emv"):
        assert_clean(text, SECRETS["0100-emv"])


def test_track2_under_a_corrupted_tag_is_masked() -> None:
    data = bytearray(load("0100-emv"))
    at = data.index(bytes.fromhex("005713"))
    data[at] = 0x5A  # tag 0057 -> 5A57
    shown = Message.parse(bytes(data), CB2A).shown(55)
    assert "4973019600600485" not in shown


# -- generated card data -----------------------------------------------------------------------
def _bcd(text: str) -> bytes:
    """Packed BCD as EMV writes it: separator D, odd lengths right-padded with F."""
    text = text.replace("=", "D")
    return bytes.fromhex(text + "F" * (len(text) & 1))


@st.composite
def card_messages(draw: st.DrawFn, profile: Profile) -> tuple[dict[int, object], list[str]]:
    """A message with a PAN in 2, track 2 in 35, and EMV 57/5A in 55; plus its secrets."""
    pan = draw(pans())
    track = draw(tracks2(pan))
    other_pan = draw(pans())  # the chip may carry its own PAN
    discretionary = track.split("=")[1]
    values: dict[int, object] = {2: pan, 35: track, 11: "000001", 41: "TERM0001"}
    emv = [("57", _bcd(track)), ("5A", _bcd(other_pan)), ("9F26", bytes(8))]
    if profile.name.startswith("cb2a"):
        values[55] = tuple((tag.rjust(4, "0"), value) for tag, value in emv)
    elif profile.name == "iso93-binary":
        values[55] = tuple(emv)
    secrets = [pan, other_pan, track, track.replace("=", "D")]
    if len(discretionary) >= 7:
        secrets.append(discretionary)
    return values, secrets


@pytest.mark.parametrize("name", ["cb2a", "cb2a-ebcdic", "iso93-binary", "iso87-ascii"])
@MEDIUM
@given(data=st.data())
def test_generated_card_data_is_masked(name: str, data: st.DataObject) -> None:
    profile = get_profile(name)
    values, secrets = data.draw(card_messages(profile))
    msg = Message.parse(encode(profile, "0100", values), profile)
    for text in texts_of(msg):
        assert_clean(text, secrets)
    assert msg.shown(2) == masked(values[2])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["cb2a", "iso93-binary", "iso87-ascii"])
@FUZZ
@given(data=st.data())
def test_errors_about_card_data_show_none(name: str, data: st.DataObject) -> None:
    """Mutated messages carrying card data: no CodecError text (parse or get) shows it.

    """
    profile = get_profile(name)
    values, secrets = data.draw(card_messages(profile))
    wire = bytearray(encode(profile, "0100", values))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.integers(0, 255))
    try:
        msg = Message.parse(bytes(wire), profile)
    except CodecError as exc:
        assert_clean(str(exc), secrets)
        assert_clean(repr(exc), secrets)
        msg = exc.partial
    for number in msg.numbers:
        try:
            msg.get(number)
        except CodecError as exc:
            assert_clean(str(exc), secrets)


@given(pan=pans())
@QUICK
def test_encode_errors_show_no_card_data(pan: str) -> None:
    for values in ({2: pan + "X"}, {2: pan + "0" * 19}, {35: pan + "=X"},
                   {35: pan + "=" + "1" * 40}, {2: pan, 3: "bad"}):
        with pytest.raises(CodecError) as caught:
            encode(CB2A, "0100", values)
        assert_clean(str(caught.value), [pan])


def test_secret_fields_show_only_their_length() -> None:
    msg = Message.parse(encode(CB2A, "0100", {52: bytes.fromhex("0123456789ABCDEF")}), CB2A)
    assert "0123456789ABCDEF" not in repr(msg)
    assert "8" in msg.shown(52) or "16" in msg.shown(52)


@given(data=st.data())
@ROUND_TRIP
def test_iso87_ascii_field_55_card_data_is_masked(data: st.DataObject) -> None:
    profile = get_profile("iso87-ascii")
    pan = data.draw(pans())
    track = data.draw(tracks2(pan))
    icc = b"\x57" + bytes([len(_bcd(track))]) + _bcd(track) + b"\x5a\x08" + _bcd(pan)[:8]
    msg = Message.parse(encode(profile, "0100", {55: icc}), profile)
    for text in texts_of(msg):
        assert_clean(text, [pan])


# -- Luhn ---------------------------------------------------------------------------------------


def luhn_by_definition(digits: str) -> bool:
    """Luhn as ISO/IEC 7812 states it: from the right, double every second digit, add the
    digits of every product and every other digit; valid when the sum ends in 0."""
    total = 0
    for position, digit in enumerate(int(c) for c in reversed(digits)):
        product = digit * 2 if position % 2 else digit
        total += sum(int(c) for c in str(product))
    return total % 10 == 0


@ROUND_TRIP
@given(st.text(st.sampled_from("0123456789"), max_size=40))
def test_luhn_agrees_with_the_definition(digits: str) -> None:
    assert luhn(digits) is luhn_by_definition(digits)


@ROUND_TRIP
@given(pans(), st.integers(0, 18), st.integers(1, 9))
def test_luhn_refuses_any_single_changed_digit(pan: str, where: int, change: int) -> None:
    where %= len(pan)
    wrong = pan[:where] + str((int(pan[where]) + change) % 10) + pan[where + 1:]
    assert luhn(pan) and not luhn(wrong)


@QUICK
@given(st.text(min_size=1, max_size=30).filter(lambda s: not (s.isascii() and s.isdigit())))
def test_luhn_refuses_anything_but_ascii_digits(text: str) -> None:
    # Arabic-Indic, fullwidth or superscript digits pass str.isdigit; no card number has them.
    assert not luhn(text)
