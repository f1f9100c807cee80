"""The télécollecte dialogue's caches (switchd.telecollecte): field 47/55 values per
profile, the hour of a local time, against the uncached reading they replace."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.codecs.iso8583 import Message, encode
from passerelle.sim.telecollecte import CB2A, generate_batches, transaction_message
from passerelle.storage.pan import PanHmacKey
from passerelle.switchd.telecollecte import (
    Refused,
    Telecollecte,
    TelecollecteServices,
    _File,
    _local_time_of,
    _Subfields,
)

PARIS = ZoneInfo("Europe/Paris")
_KEPT_55 = ("9F06", "4F", "84", "50", "9F12")
# Card data EMV puts in a field 55: PAN, track 2 and 1 equivalents, PAN sequence number,
# cardholder name, expiry, track discretionary data, contactless track 2, a template.
_CARD_55 = ("5A", "57", "56", "5F34", "5F20", "5F24", "9F1F", "9F20", "9F6B", "70")
_BATCH = generate_batches(random.Random(3), "TPE00001", "1234567", "CONECS", days=1,
                          per_day=(1, 1))[0]


def _dialogue() -> Telecollecte:
    key = PanHmacKey(version=1, key=b"k" * 32)
    return Telecollecte(TelecollecteServices(sink=None, pan_key=key))  # type: ignore[arg-type]


def _message(field_55: tuple[tuple[str, bytes], ...],
             field_47: tuple[tuple[str, str], ...]) -> Message:
    values = Message.parse(transaction_message(_BATCH, 1, _BATCH.transactions[0]),
                           CB2A).to_dict()
    values[55], values[47] = field_55, field_47
    return Message.parse(encode(CB2A, "0246", values), CB2A)


_VALUE = st.binary(min_size=1, max_size=12)
_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                max_size=20)


@settings(max_examples=200, deadline=None)
@given(field_55=st.lists(st.tuples(st.sampled_from(_KEPT_55 + _CARD_55), _VALUE),
                         max_size=5),
       field_47=st.lists(st.tuples(st.sampled_from(("IS", "PR", "NA", "XX")), _TEXT),
                         max_size=4))
def test_only_fields_naming_issuer_product_or_application_are_kept(
        field_55: list[tuple[str, bytes]], field_47: list[tuple[str, str]]) -> None:
    """Whatever tags a terminal puts in 47 and 55: each 0246 reads what the codec reads,
    the second time as the first, and a field holding anything but the issuer, product
    or application tags (a card number, a track) is never kept."""
    _Subfields._BY_PROFILE.clear()
    message = _message(tuple(field_55), tuple(field_47))
    first = _dialogue()._read_transaction(message, _File("CONECS", 978, 1, 1, 1, 8), 1)
    again = _dialogue()._read_transaction(message, _File("CONECS", 978, 1, 1, 1, 8), 1)
    aid = next((v.hex().upper() for t, v in message.get(55) or () if t == "9F06"), None)
    assert first.aid == again.aid == aid
    assert (first.issuer, first.product) == (again.issuer, again.product)
    kept = _Subfields.of(message)
    # CB-TLV (field 55 of CB2A) spells a one-byte tag on two: "004F"
    application_only = all(t.removeprefix("00") in _KEPT_55 for t, _ in message.get(55) or ())
    assert len(kept._aids) == (1 if application_only else 0)
    assert len(kept._tags) == (1 if all(t in ("IS", "PR") for t, _ in field_47) else 0)


def test_the_field_cache_stays_bounded_whatever_terminals_send() -> None:
    _Subfields._BY_PROFILE.clear()
    dialogue = _dialogue()
    for n in range(_Subfields._MAX + 50):
        message = _message((("9F06", n.to_bytes(4, "big")),), (("IS", f"ISSUER {n}"),))
        read = dialogue._read_transaction(message, _File("CONECS", 978, 1, 1, 1, 8), 1)
        assert read.aid == n.to_bytes(4, "big").hex().upper()
    kept = _Subfields.of(message)
    assert 0 < len(kept._aids) <= _Subfields._MAX and 0 < len(kept._tags) <= _Subfields._MAX


def _reference(hms: str, mmdd: str, now: datetime) -> datetime | None:
    """A zoneinfo conversion per value: the latest year (this one or the last) that does
    not put the local time more than a day after `now`'s Paris time."""
    local_now = now.astimezone(PARIS)
    for year in (local_now.year, local_now.year - 1):
        at = datetime(year, int(mmdd[:2]), int(mmdd[2:]), int(hms[:2]), int(hms[2:4]),
                      int(hms[4:]), tzinfo=PARIS)
        if at <= local_now + timedelta(days=1):
            return at.astimezone(UTC)
    return None


def _last_sunday(year: int, month: int) -> int:
    day = 31
    while datetime(year, month, day).weekday() != 6:
        day -= 1
    return day


@st.composite
def _instants(draw: st.DrawFn, year: int) -> datetime:
    """A UTC instant near what the hour cache must get right in `year`: New Year (both
    sides), the spring and autumn clock changes, or anywhere."""
    edges = [datetime(year, 1, 1, tzinfo=PARIS), datetime(year + 1, 1, 1, tzinfo=PARIS),
             datetime(year, 3, _last_sunday(year, 3), 2, tzinfo=PARIS),
             datetime(year, 10, _last_sunday(year, 10), 2, tzinfo=PARIS)]
    edge = draw(st.sampled_from(edges)).astimezone(UTC)
    spread = draw(st.sampled_from((timedelta(hours=3), timedelta(days=2),
                                   timedelta(days=200))))
    return edge + timedelta(seconds=draw(st.integers(-int(spread.total_seconds()),
                                                     int(spread.total_seconds()))))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), year=st.integers(2020, 2035))
def test_local_times_match_zoneinfo_whatever_the_hour_cache_holds(
        data: st.DataObject, year: int) -> None:
    """Clocks and times drawn around New Year and the clock changes, several per hour,
    so that the hour cache answers most of them after clocks of other limits filled it:
    each is what zoneinfo says, and an impossible time is refused."""
    hours = data.draw(st.lists(_instants(year), min_size=1, max_size=4))
    for _ in range(data.draw(st.integers(1, 25))):
        now = data.draw(_instants(year))
        wall = data.draw(st.sampled_from(hours)).astimezone(PARIS)
        minute, second = data.draw(st.integers(0, 59)), data.draw(st.integers(0, 59))
        hms = f"{wall.hour:02d}{minute:02d}{second:02d}"
        mmdd = f"{wall.month:02d}{wall.day:02d}"
        try:
            expected = _reference(hms, mmdd, now)
        except ValueError:  # 29 February of a year without one
            with pytest.raises(Refused):
                _local_time_of(hms, mmdd, now)
            continue
        assert _local_time_of(hms, mmdd, now) == expected, (hms, mmdd, now)
