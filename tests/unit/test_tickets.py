"""Tickets against reviewed golden files, one per application family, and their rules.

The golden files in tests/golden/tickets/ were written to match how French terminals
print (see the docstring of passerelle.tickets) and reviewed line by line; a change in
rendering must come with a reviewed change of the file, never a blind copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from passerelle.storage.queries import RemiseRow, TransactionRow
from passerelle.tickets import WIDTH, money, render_payment, render_remise

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "tickets"

CB = TransactionRow(
    id=6728, tx_at=datetime(2026, 11, 21, 15, 55, 13, tzinfo=UTC), remise_id=480, seq=1,
    collected_at=datetime(2026, 11, 21, 20, 30, tzinfo=UTC), remise_state="correct",
    remise_number=30, file_number=30, terminal_serial="ING0100000", maker="Ingenico",
    contract_id=1, contract_number="0012345", rang="001", bank_code="30004",
    application="CBEMV", label="AU BON PAIN CBEMV", trade_name="Au Bon Pain",
    siret="21113819493806", operation="purchase", direction="debit", result="approved",
    response_code="00", amount=6547, currency=978, pan_masked="497010******7893",
    expiry="2903", authorization_number="916943", issuer="BNP PARIBAS", product="CB VISA",
    rrn="263250009361", stan="000936", aid="A0000000421010",
)
CONTACTLESS = msgspec.structs.replace(
    CB, id=6740, application="CBCLESS", amount=2169, authorization_number="117056",
    tx_at=datetime(2026, 7, 14, 10, 5, 8, tzinfo=UTC), stan="000941")  # summer time
AMEX = msgspec.structs.replace(
    CB, id=7001, application="AMEX", contract_number="9000000001", bank_code="99001",
    rang="002", trade_name="Brasserie du Port", pan_masked="374245*****1005",
    product="AMERICAN EXPRESS", issuer="AMERICAN EXPRESS", aid="A000000025010801",
    amount=48250, authorization_number="552201", stan="000312", remise_number=12)
CONECS = msgspec.structs.replace(
    CB, id=7002, application="CONECS", contract_number="C0000001", bank_code="99002",
    rang="002", trade_name="Brasserie du Port", pan_masked="534210******4410",
    product="TITRE-RESTAURANT", issuer="SWILE", aid=None, amount=1890,
    authorization_number="004512", stan="000313", remise_number=12)
REFUND = msgspec.structs.replace(
    CB, id=6729, operation="refund", direction="credit", amount=1250,
    authorization_number=None, stan="000937")
DECLINED = msgspec.structs.replace(
    CB, id=6730, result="declined", response_code="51", authorization_number=None,
    amount=12999, stan="000938")

REMISE = RemiseRow(
    id=480, collected_at=datetime(2026, 10, 26, 20, 30, tzinfo=UTC),
    terminal_serial="ING0100000", maker="Ingenico", contract_id=1, contract_number="0012345",
    rang="001", bank_code="30004", application="CBEMV", label="AU BON PAIN CBEMV",
    trade_name="Au Bon Pain", siret="21113819493806", remise_number=4, file_number=4,
    currency=978, purchases_count=21, purchases_amount=172156, refunds_count=3,
    refunds_amount=24018, cancellations_count=1, cancellations_amount=1250,
    unauthorized_count=2, unauthorized_amount=8990, declared_purchases_count=21,
    declared_purchases_amount=172156, declared_refunds_count=3, declared_refunds_amount=24018,
    declared_cancellations_count=1, declared_cancellations_amount=1250,
    declared_unauthorized_count=2, declared_unauthorized_amount=8990, transaction_count=27,
    net_amount=146888, is_correct=True, status="REMISE CORRECTE",
)
REMISE_DIFFERENCE = msgspec.structs.replace(
    REMISE, declared_purchases_count=22, declared_purchases_amount=173406, is_correct=False,
    status="ECART ACHATS NB DECLARE 22 CALCULE 21 MONTANT DECLARE 1734,06 CALCULE 1721,56")
REMISE_EMPTY = msgspec.structs.replace(
    REMISE, application="CBCLESS", remise_number=3, file_number=3, **{
        f"{prefix}{kind}_{what}": 0 for prefix in ("", "declared_")
        for kind in ("purchases", "refunds", "cancellations", "unauthorized")
        for what in ("count", "amount")}, transaction_count=0, net_amount=0)

CASES = {
    "cb_contact_client": (lambda: render_payment(CB, city="Paris")),
    "cb_contact_merchant": (lambda: render_payment(CB, city="Paris", copy="merchant")),
    "cb_contactless_client": (lambda: render_payment(CONTACTLESS, city="Paris")),
    "amex_client": (lambda: render_payment(AMEX, city="Marseille")),
    "conecs_client": (lambda: render_payment(CONECS, city="Marseille")),
    "refund_client": (lambda: render_payment(REFUND, city="Paris")),
    "declined_client": (lambda: render_payment(DECLINED, city="Paris")),
    "remise_correct": (lambda: render_remise(REMISE, city="Paris")),
    "remise_difference": (lambda: render_remise(REMISE_DIFFERENCE, city="Paris")),
    "remise_empty": (lambda: render_remise(REMISE_EMPTY, city="Paris")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ticket_matches_its_reviewed_golden_file(name: str) -> None:
    expected = (GOLDEN / f"{name}.txt").read_text(encoding="utf-8")
    assert CASES[name]() == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_line_fits_24_columns(name: str) -> None:
    for line in CASES[name]().splitlines():
        assert len(line) <= WIDTH, line
        assert line == line.rstrip()


def test_cardholder_copy_shows_the_last_4_digits_only() -> None:
    for row in (CB, CONTACTLESS, AMEX, CONECS, REFUND):
        text = render_payment(row)
        assert row.pan_masked[:6] not in text
        card_line = next(line for line in text.splitlines() if line.startswith("#"))
        assert card_line == "#" * (len(row.pan_masked) - 4) + row.pan_masked[-4:]


def test_merchant_copy_shows_no_more_than_the_stored_mask() -> None:
    text = render_payment(CB, copy="merchant")
    assert "497010******7893" in text
    assert "TICKET COMMERCANT" in text and "TICKET CLIENT" not in text


def test_times_are_europe_paris_summer_and_winter() -> None:
    assert "LE 21/11/26 A 16:55:13" in render_payment(CB)  # UTC+1
    assert "LE 14/07/26 A 12:05:08" in render_payment(CONTACTLESS)  # UTC+2


def test_money_is_minor_units_with_a_comma() -> None:
    assert money(6547, 978) == "65,47 EUR"
    assert money(5, 978) == "0,05 EUR"
    assert money(123456789012, 978) == "1234567890,12 EUR"
    assert money(-1250, 978) == "-12,50 EUR"
    assert money(1500, 392) == "1500 JPY"


def test_long_names_wrap_instead_of_overflowing() -> None:
    row = msgspec.structs.replace(CB, trade_name="Boulangerie-pâtisserie de la Gare Saint-Lazare")
    lines = render_payment(row).splitlines()
    assert "BOULANGERIE-PATISSERIE" in lines and "DE LA GARE SAINT-LAZARE" in lines
