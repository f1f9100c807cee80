"""Filters from text: what an operator types, and the one-line errors naming the option.

No database here: these are the checks every search goes through before any SQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from passerelle.sim.history import HISTORY_KEYS, KNOWN_PAN
from passerelle.storage.filters import (
    FilterError,
    RemiseFilters,
    TransactionFilters,
    check_export_window,
    parse_remise_filters,
    parse_transaction_filters,
)


def test_text_becomes_typed_filters() -> None:
    f = parse_transaction_filters({
        "date_from": "01/11/2026", "date_to": "2026-11-30", "amount_min": "12,5",
        "amount_max": "1 000.99", "application": "cbemv", "direction": "CREDIT",
        "expiry": "03/29", "last4": "7893", "maker": "", "issuer": None,
    })
    assert (f.date_from, f.date_to) == (date(2026, 11, 1), date(2026, 11, 30))
    assert (f.amount_min, f.amount_max) == (1250, 100099)
    assert (f.application, f.direction, f.expiry, f.last4) == ("CBEMV", "credit", "2903", "7893")
    assert f.maker is None and f.issuer is None


def test_paris_days_become_utc_bounds() -> None:
    start, end = RemiseFilters(date_from=date(2026, 7, 1), date_to=date(2026, 7, 1)).utc_bounds()
    assert start == datetime(2026, 6, 30, 22, tzinfo=UTC)  # CEST, UTC+2
    assert end == datetime(2026, 7, 1, 22, tzinfo=UTC)
    start, _ = RemiseFilters(date_from=date(2026, 12, 1)).utc_bounds()
    assert start == datetime(2026, 11, 30, 23, tzinfo=UTC)  # CET, UTC+1


@pytest.mark.parametrize(("params", "message"), [
    ({"date_from": "2026-13-01"},
     "--from: 2026-13-01 is not a date (YYYY-MM-DD or DD/MM/YYYY)"),
    ({"date_from": "2026-11-20", "date_to": "2026-11-10"},
     "--from: 2026-11-20 is after --to 2026-11-10"),
    ({"amount": "12,345"}, "--amount: 12,345 is not an amount (e.g. 12,50)"),
    ({"amount": "-3"}, "--amount: -3 is not an amount (e.g. 12,50)"),
    ({"amount_min": "20", "amount_max": "10"}, "--amount-min: is greater than --amount-max"),
    ({"card_number": "4970 1012 3456 7890"},
     "--card: malformed card number (fails the Luhn check)"),
    ({"card_number": "12ab"}, "--card: malformed card number (12 to 19 digits)"),
    ({"last4": "12a4"}, "--last4: 12a4 is not the last 4 digits of a card"),
    ({"expiry": "13/29"}, "--expiry: 13/29 is not an expiry date (MM/YY)"),
    ({"bank_code": "3000"}, "--bank-code: 3000 is not a bank code (5 digits)"),
    ({"siret": "123"}, "--siret: 123 is not a SIRET (14 digits)"),
    ({"direction": "both"}, "--type: both is not one of debit, credit"),
    ({"remise_number": "12x"}, "--remise: 12x is not a whole number"),
    ({"pan_hmac": "00"}, "--pan-hmac: is not a filter here"),
])
def test_bad_input_names_the_option(params, message) -> None:
    with pytest.raises(FilterError) as caught:
        parse_transaction_filters(params, HISTORY_KEYS)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_card_number_needs_a_key_and_is_never_kept() -> None:
    with pytest.raises(FilterError, match=r"^--card: no PAN HMAC key"):
        parse_transaction_filters({"card_number": KNOWN_PAN}, [])
    f = parse_transaction_filters({"card_number": KNOWN_PAN}, HISTORY_KEYS)
    assert [v for v, _ in f.card_digests or ()] == [1, 2]
    assert KNOWN_PAN not in repr(f) and KNOWN_PAN[-4:] not in repr(f)
    assert "2 digests" in repr(f)


def test_remise_only_and_transaction_only_filters_stay_apart() -> None:
    with pytest.raises(FilterError, match="--last4: is not a filter here"):
        parse_remise_filters({"last4": "1234"})
    with pytest.raises(FilterError, match="--status: is not a filter here"):
        parse_transaction_filters({"status": "correct"})


def test_export_window_is_31_days_at_most() -> None:
    check_export_window(TransactionFilters(date_from=date(2026, 1, 1),
                                           date_to=date(2026, 1, 31)))
    with pytest.raises(FilterError, match=r"^--to: the export covers 32 days; at most 31"):
        check_export_window(TransactionFilters(date_from=date(2026, 1, 1),
                                               date_to=date(2026, 2, 1)))
    with pytest.raises(FilterError, match=r"^--from: an export needs --from and --to"):
        check_export_window(RemiseFilters(date_to=date(2026, 2, 1)))
