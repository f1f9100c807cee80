"""The télécollecte field usage: what a terminal sends is what the remise holds."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.codecs.errors import CodecError
from passerelle.codecs.iso8583 import Message, encode
from passerelle.sim.telecollecte import (
    CB2A,
    Batch,
    SimTransaction,
    end_message,
    generate_batches,
    header_message,
    sign_on_message,
    transaction_message,
)
from passerelle.storage.pan import PanHmacKey, mask_pan, pan_hmac
from passerelle.storage.remises import RemiseTotals
from passerelle.switchd.dispatch import SessionContext
from passerelle.switchd.telecollecte import (
    Phase,
    Refused,
    Telecollecte,
    TelecollecteServices,
    _declared_totals,
    _Dialogue,
    _File,
    _local_time,
    _local_time_of,
    _Subfields,
    totals_fields,
)

KEY = PanHmacKey(version=3, key=b"k" * 32)


class Log:
    """A logger that drops events (the dialogue's answers are what these tests read)."""

    def __getattr__(self, _name: str) -> object:
        return lambda *_a, **_k: None


def _dialogue(now: datetime | None = None) -> Telecollecte:
    services = TelecollecteServices(sink=None, pan_key=KEY)  # type: ignore[arg-type]
    if now is not None:
        services.now = lambda: now
    return Telecollecte(services)


def _batch(count: int = 60, seed: int = 5) -> Batch:
    return generate_batches(random.Random(seed), "TPE00001", "1234567", "CONECS", days=1,
                            per_day=(count, count))[0]


def test_every_transaction_field_reads_back_as_sent() -> None:
    batch = _batch()
    dialogue = _dialogue()
    file = _File("CONECS", 978, 1, 1, len(batch.transactions), 8)
    for number, tx in enumerate(batch.transactions, 1):
        message = Message.parse(transaction_message(batch, number, tx), CB2A)
        read = dialogue._read_transaction(message, file, number)
        assert (read.seq, read.operation, read.amount, read.currency) == (
            number, tx.operation, tx.amount, 978)
        assert read.result == ("approved" if tx.response_code == "00" else "declined")
        assert read.pan_masked == mask_pan(tx.pan)
        assert (read.pan_hmac, read.pan_hmac_key_version) == pan_hmac(KEY, tx.pan)
        assert tx.pan not in repr(read)
        assert read.at == tx.at.replace(microsecond=0)
        assert (read.expiry, read.rrn, read.authorization_number, read.response_code) == (
            tx.expiry, tx.rrn, tx.authorization_number, tx.response_code)
        assert (read.issuer, read.product, read.aid) == (tx.issuer, tx.product, tx.aid)
        assert read.stan == f"{tx.stan:06d}"
    assert {t.operation for t in batch.transactions} == {"purchase", "refund", "cancellation"}


_TAG_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(max_examples=150, deadline=None)
@given(issuer=_TAG_TEXT, product=_TAG_TEXT, aid=st.binary(min_size=5, max_size=16),
       extra=st.booleans())
def test_issuer_product_and_aid_read_the_same_every_time(
        issuer: str, product: str, aid: bytes, extra: bool) -> None:
    """Fields 47 and 55 are read once per distinct value (`_Subfields`): the second 0246
    with the same bytes reads what the codec reads, as the first did."""
    batch = _batch(count=2)
    tags = (*((("XX", "1"),) if extra else ()), ("IS", issuer), ("PR", product),
            ("IS", "SECOND"))
    emv = (*((("9F02", b"\x00\x01"),) if extra else ()), ("9F06", aid))
    dialogue = _dialogue()
    file = _File("CONECS", 978, 1, 1, 2, 8)
    for number, tx in enumerate(batch.transactions, 1):
        values = Message.parse(transaction_message(batch, number, tx), CB2A).to_dict()
        values[47], values[55] = tags, emv
        message = Message.parse(encode(CB2A, "0246", values), CB2A)
        read = dialogue._read_transaction(message, file, number)
        decoded = message.get(47)  # a repeated tag: its first value that is not blank
        assert (read.issuer, read.product) == tuple(
            next((v.strip()[:64] for t, v in decoded if t == tag and v.strip()), None)
            for tag in ("IS", "PR"))
        assert read.aid == dict(message.get(55))["9F06"].hex().upper()


def test_card_data_in_fields_47_and_55_is_read_but_not_kept() -> None:
    """A field 55 carrying the card (EMV 5A, 57) next to the AID, or a 47 with a tag of
    its own, is read for every 0246 and never kept by the issuer/AID cache."""
    batch = _batch(count=2)
    tx = batch.transactions[0]
    track2 = tx.pan + "D2812201"  # BCD, padded with F as EMV does
    track2_equivalent = bytes.fromhex(track2 + "F" * (len(track2) % 2))
    card = bytes.fromhex(tx.pan + "F" * (len(tx.pan) % 2))
    dialogue = _dialogue()
    file = _File("CONECS", 978, 1, 1, 2, 8)
    for number, tx in enumerate(batch.transactions, 1):
        values = Message.parse(transaction_message(batch, number, tx), CB2A).to_dict()
        values[55] = (("5A", card), ("57", track2_equivalent),
                      ("9F06", bytes.fromhex("A0000000421010")))
        values[47] = (("IS", "EDENRED"), ("XX", tx.pan[-8:]), ("PR", "TICKET"))
        message = Message.parse(encode(CB2A, "0246", values), CB2A)
        read = dialogue._read_transaction(message, file, number)
        assert (read.issuer, read.product, read.aid) == ("EDENRED", "TICKET",
                                                         "A0000000421010")
    kept = _Subfields.of(message)
    for raw in (*kept._tags, *kept._aids):
        assert card not in raw and tx.pan[-8:].encode() not in raw


def test_a_damaged_field_47_is_refused_every_time_it_comes() -> None:
    batch = _batch(count=1)
    tx = dataclasses.replace(batch.transactions[0], issuer="EDENRED", product="TICKET")
    good = transaction_message(batch, 1, tx)
    offset = good.index(b"IS07EDENRED")
    damaged = good[:offset] + b"IS99" + good[offset + 4:]  # a tag longer than its field
    dialogue = _dialogue()
    read = dialogue._read_transaction(Message.parse(good, CB2A),
                                      _File("CONECS", 978, 1, 1, 1, 8), 1)
    assert read.issuer == "EDENRED"
    for _ in range(2):
        with pytest.raises(CodecError) as error:
            dialogue._read_transaction(Message.parse(damaged, CB2A),
                                       _File("CONECS", 978, 1, 1, 1, 8), 1)
        assert error.value.field == 47


def test_a_file_collected_across_new_year_dates_each_window_by_its_own_clock() -> None:
    """The services' clock is read at the first 0246 of each window: a window received
    after midnight on 31 December dates a 1 January 00:30 transaction in the new year."""
    paris = ZoneInfo("Europe/Paris")
    clock = [datetime(2026, 12, 31, 22, 58, tzinfo=UTC)]  # 23:58 in Paris
    dialogue = _dialogue()
    dialogue.services.now = lambda: clock[0]
    times = [datetime(2026, 12, 31, 23, 50, tzinfo=paris)] * 2 + [
        datetime(2027, 1, 1, 0, 1, tzinfo=paris)] * 2
    batch = Batch("TPE00001", "1234567", "CBEMV", 1, 1, transactions=[
        SimTransaction("4970101234567899", "purchase", 100 + n, at)
        for n, at in enumerate(times)])
    file = _File("CBEMV", 978, 1, 1, 4, 2)
    read = []
    for number, tx in enumerate(batch.transactions, 1):
        if number == 3:
            clock[0] = datetime(2026, 12, 31, 23, 2, tzinfo=UTC)  # 00:02, 1 January
        message = Message.parse(transaction_message(batch, number, tx), CB2A)
        read.append(dialogue._read_transaction(message, file, number))
        if number % 2 == 0:
            file.last_acknowledged = number  # the window's 0256
    assert [r.at for r in read] == [t.astimezone(UTC) for t in times]


def test_declared_totals_read_back_and_answer_in_the_same_fields() -> None:
    batch = _batch()
    declared = _declared_totals(Message.parse(end_message(batch), CB2A))
    assert declared == RemiseTotals(**batch.totals())
    answer = encode(CB2A, "0516", totals_fields(declared))
    assert _declared_totals(Message.parse(answer, CB2A)) == declared


def test_a_total_field_without_remise_meaning_must_be_zero() -> None:
    message = Message.parse(encode(CB2A, "0506", {75: "0000000001"}), CB2A)
    with pytest.raises(Refused) as refused:
        _declared_totals(message)
    assert (refused.value.code, refused.value.field) == ("30", 75)


def test_a_date_without_year_is_the_latest_not_in_the_future() -> None:
    # 31 December, 23:50 in Paris, read just after New Year: last year's.
    message = Message.parse(encode(CB2A, "0246", {12: "235000", 13: "1231"}), CB2A)
    at = _local_time(message, datetime(2027, 1, 1, 0, 5, tzinfo=UTC))
    assert at == datetime(2026, 12, 31, 22, 50, tzinfo=UTC)
    bad = Message.parse(encode(CB2A, "0246", {12: "250000", 13: "0230"}), CB2A)
    with pytest.raises(Refused) as refused:
        _local_time(bad, datetime(2027, 1, 1, tzinfo=UTC))
    assert refused.value.code == "30"


def _zoneinfo_local_time(hms: str, mmdd: str, now: datetime) -> datetime | None:
    """The reference: a zoneinfo conversion per value (what the hourly offsets replace)."""
    paris = ZoneInfo("Europe/Paris")
    local_now = now.astimezone(paris)
    for year in (local_now.year, local_now.year - 1):
        at = datetime(year, int(mmdd[:2]), int(mmdd[2:]), int(hms[:2]), int(hms[2:4]),
                      int(hms[4:]), tzinfo=paris)
        if at <= local_now + timedelta(days=1):
            return at.astimezone(UTC)
    return None


@settings(deadline=None, max_examples=400)
@given(at=st.datetimes(datetime(2019, 1, 1), datetime(2031, 1, 1)),
       now=st.datetimes(datetime(2019, 1, 1), datetime(2031, 1, 1)))
def test_local_times_match_zoneinfo_across_clock_changes(at: datetime, now: datetime) -> None:
    # Times in the hour the clocks skip or repeat included, as terminals may send them.
    hms, mmdd = at.strftime("%H%M%S"), at.strftime("%m%d")
    aware_now = now.replace(tzinfo=UTC)
    try:
        expected = _zoneinfo_local_time(hms, mmdd, aware_now)
    except ValueError:  # 29 February of a year that has none: refused
        with pytest.raises(Refused):
            _local_time_of(hms, mmdd, aware_now)
        return
    assert _local_time_of(hms, mmdd, aware_now) == expected


def test_a_minute_or_second_out_of_range_is_refused_in_an_hour_already_seen() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert _local_time_of("101500", "1120", now) == datetime(2026, 11, 20, 9, 15, tzinfo=UTC)
    assert _local_time_of("105959", "1120", now) == datetime(2026, 11, 20, 9, 59, 59,
                                                             tzinfo=UTC)
    for hms in ("106000", "100060", "109999"):
        with pytest.raises(Refused):
            _local_time_of(hms, "1120", now)


@pytest.mark.parametrize(("hms", "mmdd"), [("023000", "0329"), ("023000", "1025"),
                                           ("015959", "0329"), ("030000", "1025")])
def test_local_times_in_the_hours_the_clocks_change(hms: str, mmdd: str) -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    assert _local_time_of(hms, mmdd, now) == _zoneinfo_local_time(hms, mmdd, now)


@pytest.mark.parametrize(("change", "field"), [
    ({"operation": "refund", "cancel": True}, 90),
    ({"processing": "310000"}, 3),
    ({"pan": "4970ABCD"}, 2),
])
def test_a_transaction_the_remise_cannot_hold_is_refused_naming_the_field(
        change: dict[str, object], field: int) -> None:
    batch = _batch(count=1)
    tx = batch.transactions[0]
    if change.get("cancel"):
        tx = dataclasses.replace(tx, operation="cancellation")
    message = transaction_message(batch, 1, tx)
    values = Message.parse(message, CB2A).to_dict()
    if change.get("cancel"):
        values[3] = "200000"  # a refund with field 90: cancelling a refund
    if "processing" in change:
        values[3] = change["processing"]
    if "pan" in change:
        values[2] = "4970123"  # 7 digits: no card number
    file = _File("CONECS", 978, 1, 1, 1, 8)
    with pytest.raises(Refused) as refused:
        _dialogue()._read_transaction(Message.parse(encode(CB2A, "0246", values), CB2A),
                                      file, 1)
    assert (refused.value.code, refused.value.field) == ("30", field)


def test_a_refund_is_a_credit_and_a_declined_purchase_is_unauthorized() -> None:
    at = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    batch = Batch("TPE00001", "1234567", "CBEMV", 1, 1, transactions=[
        SimTransaction("4970101234567899", "refund", 500, at),
        SimTransaction("4970101234567899", "purchase", 700, at, response_code="51"),
    ])
    assert _declared_totals(Message.parse(end_message(batch), CB2A)) == RemiseTotals(
        refunds_count=1, refunds_amount=500, unauthorized_count=1, unauthorized_amount=700)


def test_mutated_transactions_always_get_an_answer_and_never_a_card_number() -> None:
    """Any 0246 that decodes, however wrong, is read or refused with a 0256 naming why."""
    rng = random.Random(11)
    batch = _batch(count=40)
    dialogue = _dialogue()
    answered = refused = 0
    for round_ in range(1500):
        tx = batch.transactions[round_ % len(batch.transactions)]
        wire = bytearray(transaction_message(batch, 1, tx))
        for _ in range(rng.randint(1, 4)):
            wire[rng.randrange(10, len(wire))] = rng.randrange(256)
        try:
            message = Message.parse(bytes(wire), CB2A)
        except CodecError:
            continue
        context = SessionContext("cbcom", "test", CB2A, Log())
        context.state["telecollecte"] = _Dialogue(
            phase=Phase.RECEIVING, terminal="TPE00001", contract="1234567",
            file=_File("CONECS", 978, 1, 1, 1, 8))
        answer = dialogue(message, context)
        assert isinstance(answer, bytes)  # the last (only) message of its window
        assert tx.pan.encode() not in answer
        code = Message.parse(answer, CB2A).get(39)
        answered += code == "00"
        refused += code != "00"
        if code != "00":
            assert context.state["telecollecte"].file is None  # nothing half-kept
    assert answered and refused


def test_mutated_sign_ons_and_headers_always_get_an_answer() -> None:
    rng = random.Random(12)
    batch = _batch(count=3)
    dialogue = _dialogue()
    originals = [sign_on_message(batch.terminal, batch.contract), header_message(batch, 8)]

    async def one(message: Message, signed_on: bool) -> object:
        context = SessionContext("cbcom", "test", CB2A, Log())
        if signed_on:
            context.state["telecollecte"] = _Dialogue(
                phase=Phase.SIGNED_ON, terminal=batch.terminal, contract=batch.contract)
        answer = dialogue(message, context)
        return await answer if not isinstance(answer, bytes | None) else answer

    codes = set()
    for round_ in range(1000):
        wire = bytearray(originals[round_ % 2])
        for _ in range(rng.randint(1, 3)):
            wire[rng.randrange(10, len(wire))] = rng.randrange(256)
        try:
            message = Message.parse(bytes(wire), CB2A)
        except CodecError:
            continue
        answer = asyncio.run(one(message, signed_on=round_ % 2 == 1))
        assert isinstance(answer, bytes)
        codes.add(Message.parse(answer, CB2A).get(39))
    assert "00" in codes and codes - {"00"}
