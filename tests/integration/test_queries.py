"""The query layer against real PostgreSQL data made by the history generator.

Each filter is checked against an oracle: the same predicate applied in Python to every
stored row. A filter must return exactly the rows the oracle keeps, at least one, and
(except where noted) fewer than all: a filter silently ignored would fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import date, datetime
from typing import Any

import psycopg
import pytest

from passerelle.sim.history import HISTORY_KEYS, KNOWN_PAN, luhn_complete
from passerelle.storage import queries
from passerelle.storage.filters import (
    PARIS,
    FilterError,
    RemiseFilters,
    TransactionFilters,
    card_digests,
)
from tests.integration.history_db import END, SPEC, history_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hist_dsn(pg_dsn: str, _migrated_template: str) -> Iterator[str]:
    with history_database(pg_dsn, _migrated_template) as dsn:
        yield dsn


@pytest.fixture
def conn(hist_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(hist_dsn) as connection:
        yield connection


@pytest.fixture(scope="module")
def all_remises(hist_dsn: str) -> list[queries.RemiseRow]:
    with psycopg.connect(hist_dsn) as connection:
        return list(queries.iter_remises(connection, RemiseFilters()))


@pytest.fixture(scope="module")
def all_transactions(hist_dsn: str) -> list[queries.TransactionRow]:
    with psycopg.connect(hist_dsn) as connection:
        return list(queries.iter_transactions(connection, TransactionFilters()))


def every_id(conn: psycopg.Connection, filters: Any, **options: Any) -> list[int]:
    """All ids of a search, walking its keyset pages."""
    ids: list[int] = []
    cursor = None
    while True:
        page = queries.search(conn, filters, limit=500, cursor=cursor, **options)
        ids.extend(r.id for r in page.rows)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def paris_day(at: datetime) -> date:
    return at.astimezone(PARIS).date()


def check(conn: psycopg.Connection, rows: list[Any], filters: Any,
          keep: Callable[[Any], bool], *, restricts: bool = True) -> list[Any]:
    expected = {r.id for r in rows if keep(r)}
    found = every_id(conn, filters)
    assert len(found) == len(set(found)), "a row came twice"
    assert set(found) == expected
    assert expected, f"{filters!r} matches nothing in the history: the test proves nothing"
    if restricts:
        assert len(expected) < len(rows)
    return [r for r in rows if r.id in expected]


def test_history_has_the_cases_searches_must_show(all_remises, all_transactions) -> None:
    assert {r.application for r in all_remises} == {"CBEMV", "CBCLESS", "AMEX", "CONECS"}
    assert [r for r in all_remises if r.transaction_count == 0], "no empty remise"
    assert [r for r in all_remises if not r.is_correct], "no remise with a difference"
    assert {t.operation for t in all_transactions} == {"purchase", "refund", "cancellation"}
    assert {t.result for t in all_transactions} == {"approved", "declined"}
    assert {t.pan_masked for t in all_transactions if t.pan_masked.endswith(KNOWN_PAN[-4:])}
    first, last = min(r.collected_at for r in all_remises), max(
        r.collected_at for r in all_remises)
    assert (paris_day(first), paris_day(last)) == (SPEC.first_day(), END)


REMISE_CASES: list[tuple[str, dict[str, Any], Callable[[Any], bool]]] = [
    ("date range", {"date_from": date(2026, 11, 1), "date_to": date(2026, 11, 5)},
     lambda r: date(2026, 11, 1) <= paris_day(r.collected_at) <= date(2026, 11, 5)),
    ("application", {"application": "CONECS"}, lambda r: r.application == "CONECS"),
    ("contract", {"contract_number": "0012345"}, lambda r: r.contract_number == "0012345"),
    ("label", {"label": "bon PAIN"}, lambda r: "bon pain" in (r.label or "").lower()),
    ("rang", {"rang": "002"}, lambda r: r.rang == "002"),
    ("status difference", {"status": "difference"}, lambda r: not r.is_correct),
    ("status correct", {"status": "correct"}, lambda r: r.is_correct),
    ("empty remise", {"transaction_count": 0}, lambda r: r.transaction_count == 0),
    ("count range", {"transaction_count_min": 10, "transaction_count_max": 12},
     lambda r: 10 <= r.transaction_count <= 12),
    ("bank code", {"bank_code": "30003"}, lambda r: r.bank_code == "30003"),
    ("maker, any case", {"maker": "pax"}, lambda r: r.maker == "PAX"),
    ("remise number", {"remise_number": 7}, lambda r: r.remise_number == 7),
    ("file number", {"file_number": 12}, lambda r: r.file_number == 12),
    ("trade name", {"trade_name": "brasserie"},
     lambda r: "brasserie" in (r.trade_name or "").lower()),
    ("amount range", {"amount_min": 50000, "amount_max": 100000},
     lambda r: 50000 <= r.net_amount <= 100000),
]


@pytest.mark.parametrize(("name", "values", "keep"), REMISE_CASES,
                         ids=[c[0] for c in REMISE_CASES])
def test_remise_filter(conn, all_remises, name, values, keep) -> None:
    check(conn, all_remises, RemiseFilters(**values), keep)


def test_remise_filters_by_exact_values_taken_from_rows(conn, all_remises) -> None:
    sample = all_remises[len(all_remises) // 2]
    check(conn, all_remises, RemiseFilters(amount=sample.net_amount),
          lambda r: r.net_amount == sample.net_amount)
    check(conn, all_remises, RemiseFilters(terminal_serial=sample.terminal_serial),
          lambda r: r.terminal_serial == sample.terminal_serial)
    check(conn, all_remises, RemiseFilters(siret=sample.siret),
          lambda r: r.siret == sample.siret)
    check(conn, all_remises, RemiseFilters(currency=978), lambda r: True, restricts=False)


def test_the_difference_remise_says_what_differs(conn) -> None:
    (remise,) = queries.search(conn, RemiseFilters(status="difference")).rows
    assert remise.declared_purchases_count == remise.purchases_count + 1
    assert remise.status.startswith("ECART ACHATS NB DECLARE")
    assert remise.application == "CBEMV"


def test_empty_remise_is_stored_and_found(conn) -> None:
    (empty,) = queries.search(conn, RemiseFilters(transaction_count=0)).rows
    assert empty.application == "CBCLESS" and empty.is_correct
    assert empty.net_amount == 0
    txs = queries.search(conn, TransactionFilters(remise_id=empty.id)).rows
    assert txs == []


def test_replaced_terminal_history_stays_under_its_contracts(conn, all_remises) -> None:
    old = [r for r in all_remises if r.terminal_serial == "VER0100001"]
    new = [r for r in all_remises if r.terminal_serial == "PAX01R0001"]
    move_day = SPEC.first_day().toordinal() + SPEC.days // 2
    assert 5 <= date.fromordinal(move_day).day <= 25, "the replacement must be mid-month"
    before = {r.contract_number for r in old if paris_day(r.collected_at).toordinal()
              < move_day}
    after = {r.contract_number for r in old if paris_day(r.collected_at).toordinal()
             >= move_day}
    assert before == {"0117074", "9000000001", "C0000001"}  # merchant 1, all applications
    assert after == {"0012345"}  # moved to merchant 0's contract
    assert {r.contract_number for r in new} == before
    assert min(paris_day(r.collected_at).toordinal() for r in new) == move_day
    # The contract's history, searched by contract: the old terminal until the move, the
    # new one from then on (terminal 4 works for the same merchant all along).
    by_contract = queries.search(conn, RemiseFilters(contract_number="0117074",
                                                     application="CBEMV"), limit=500).rows
    days = {serial: {paris_day(r.collected_at).toordinal() for r in by_contract
                     if r.terminal_serial == serial} for serial in ("VER0100001", "PAX01R0001")}
    assert days["VER0100001"] and max(days["VER0100001"]) == move_day - 1
    assert days["PAX01R0001"] and min(days["PAX01R0001"]) == move_day
    terminal_row = conn.execute(
        "SELECT c.contract_number FROM terminals t JOIN contracts c ON c.id = t.contract_id"
        " WHERE t.serial = 'VER0100001'").fetchone()
    assert terminal_row == ("0012345",)


TRANSACTION_CASES: list[tuple[str, dict[str, Any], Callable[[Any], bool]]] = [
    ("date range", {"date_from": date(2026, 10, 24), "date_to": date(2026, 10, 25)},
     lambda t: date(2026, 10, 24) <= paris_day(t.tx_at) <= date(2026, 10, 25)),
    ("remise state", {"remise_state": "difference"}, lambda t: t.remise_state == "difference"),
    ("application", {"application": "AMEX"}, lambda t: t.application == "AMEX"),
    ("contract", {"contract_number": "0221803"}, lambda t: t.contract_number == "0221803"),
    ("label", {"label": "titres"}, lambda t: "titres" in (t.label or "").lower()),
    ("rang", {"rang": "003"}, lambda t: t.rang == "003"),
    ("bank code", {"bank_code": "30004"}, lambda t: t.bank_code == "30004"),
    ("amount range", {"amount_min": 1000, "amount_max": 1500},
     lambda t: 1000 <= t.amount <= 1500),
    ("type credit", {"direction": "credit"}, lambda t: t.direction == "credit"),
    ("type debit", {"direction": "debit"}, lambda t: t.direction == "debit"),
    ("cancellations", {"operation": "cancellation"}, lambda t: t.operation == "cancellation"),
    ("declined", {"result": "declined"}, lambda t: t.result == "declined"),
    ("response code", {"response_code": "51"}, lambda t: t.response_code == "51"),
    ("last 4", {"last4": KNOWN_PAN[-4:]}, lambda t: t.pan_masked.endswith(KNOWN_PAN[-4:])),
    ("expiry", {"expiry": "2903"}, lambda t: t.expiry == "2903"),
    ("issuer, any case", {"issuer": "swile"}, lambda t: t.issuer == "SWILE"),
    ("product", {"product": "TITRE-RESTAURANT"}, lambda t: t.product == "TITRE-RESTAURANT"),
    ("remise number", {"remise_number": 3}, lambda t: t.remise_number == 3),
    ("file number", {"file_number": 9}, lambda t: t.file_number == 9),
    ("terminal", {"terminal_serial": "PAX0100002"}, lambda t: t.terminal_serial == "PAX0100002"),
    ("maker", {"maker": "Verifone"}, lambda t: t.maker == "Verifone"),
    ("trade name", {"trade_name": "pharmacie"},
     lambda t: "pharmacie" in (t.trade_name or "").lower()),
    ("combined", {"application": "CBEMV", "direction": "credit", "maker": "ingenico",
                  "date_from": date(2026, 10, 25)},
     lambda t: t.application == "CBEMV" and t.direction == "credit"
     and t.maker == "Ingenico" and paris_day(t.tx_at) >= date(2026, 10, 25)),
]


@pytest.mark.parametrize(("name", "values", "keep"), TRANSACTION_CASES,
                         ids=[c[0] for c in TRANSACTION_CASES])
def test_transaction_filter(conn, all_transactions, name, values, keep) -> None:
    check(conn, all_transactions, TransactionFilters(**values), keep)


def test_transaction_filters_by_exact_values_taken_from_rows(conn, all_transactions) -> None:
    sample = next(t for t in all_transactions[100:] if t.authorization_number)
    for field in ("amount", "authorization_number", "rrn", "siret", "remise_id"):
        value = getattr(sample, field)
        check(conn, all_transactions, TransactionFilters(**{field: value}),
              lambda t, f=field, v=value: getattr(t, f) == v)


def test_card_number_is_found_under_every_key_version(conn, all_transactions) -> None:
    digests = card_digests(KNOWN_PAN, HISTORY_KEYS)
    rows = check(conn, all_transactions, TransactionFilters(card_digests=digests),
                 lambda t: t.pan_masked == "497010******7893")
    stored_versions = {r[0] for r in conn.execute(
        "SELECT DISTINCT pan_hmac_key_version FROM transactions WHERE id = ANY(%s)",
        ([r.id for r in rows],)).fetchall()}
    assert stored_versions == {1, 2}, "the card must have been used before and after rotation"
    # Only the old key: only the rows written before the rotation.
    old_only = every_id(conn, TransactionFilters(card_digests=card_digests(
        KNOWN_PAN, HISTORY_KEYS[:1])))
    assert 0 < len(old_only) < len(rows)
    # Another card is not this card, whatever digits they share.
    other = card_digests(luhn_complete("497010123456780"), HISTORY_KEYS)
    assert every_id(conn, TransactionFilters(card_digests=other)) == []


def test_application_and_contract_filters_within_a_scope(conn, all_transactions) -> None:
    """The scope narrowed by application or contract number finds exactly the rows the
    filters alone would find inside the scope: no meal voucher lost, none from outside."""
    merchant = conn.execute("SELECT merchant_id FROM contracts WHERE application = 'CONECS'"
                            " ORDER BY id LIMIT 1").fetchone()[0]
    user_id = conn.execute("INSERT INTO users (email, role) VALUES ('mv@example.fr',"
                           " 'merchant') RETURNING id").fetchone()[0]
    conn.execute("INSERT INTO user_scopes (user_id, contract_id) SELECT %s, id FROM contracts"
                 " WHERE merchant_id = %s", (user_id, merchant))
    scoped = {r[0] for r in conn.execute("SELECT id FROM contracts WHERE merchant_id = %s",
                                         (merchant,)).fetchall()}
    number = conn.execute("SELECT contract_number FROM contracts WHERE merchant_id = %s AND"
                          " application = 'CBEMV'", (merchant,)).fetchone()[0]
    conn.commit()
    try:
        vouchers = TransactionFilters(application="CONECS")
        expected = {t.id for t in all_transactions
                    if t.contract_id in scoped and t.application == "CONECS"}
        assert expected and set(every_id(conn, vouchers, user_id=user_id)) == expected
        (total,) = queries.totals(conn, vouchers, user_id=user_id)
        assert total.count == len(expected)
        by_number = TransactionFilters(contract_number=number)
        expected = {t.id for t in all_transactions
                    if t.contract_id in scoped and t.contract_number == number}
        assert {t.application for t in all_transactions if t.id in expected} == {
            "CBEMV", "CBCLESS"}
        assert set(every_id(conn, by_number, user_id=user_id)) == expected
        # A contract number of someone else's gives nothing, not everything.
        other = next(t.contract_number for t in all_transactions if t.contract_id not in scoped)
        assert every_id(conn, TransactionFilters(contract_number=other), user_id=user_id) == []
    finally:
        conn.rollback()
        conn.execute("DELETE FROM users")
        conn.commit()


def test_scope_restricts_to_the_users_contracts(conn, all_remises, all_transactions) -> None:
    user_id = conn.execute("INSERT INTO users (email, role) VALUES ('m@example.fr',"
                           " 'merchant') RETURNING id").fetchone()[0]
    conn.execute("INSERT INTO user_scopes (user_id, contract_id) SELECT %s, id FROM contracts"
                 " WHERE contract_number = '0012345' AND application = 'CBEMV'", (user_id,))
    operator = conn.execute("INSERT INTO users (email, role) VALUES ('op@example.fr',"
                            " 'operator') RETURNING id").fetchone()[0]
    conn.commit()
    try:
        seen = every_id(conn, RemiseFilters(), user_id=user_id)
        assert set(seen) == {r.id for r in all_remises if r.contract_number == "0012345"
                             and r.application == "CBEMV"}
        tx = queries.search(conn, TransactionFilters(direction="credit"), user_id=user_id,
                            limit=500).rows
        assert tx and {t.contract_number for t in tx} == {"0012345"}
        outside = next(r for r in all_remises if r.contract_number != "0012345")
        assert queries.get_remise(conn, outside.id, user_id) is None
        assert queries.get_remise(conn, outside.id, operator) == outside
        totals = queries.totals(conn, RemiseFilters(), user_id=user_id)
        assert sum(t.count for t in totals) == len(seen)
        assert len(every_id(conn, RemiseFilters(), user_id=operator)) == len(all_remises)
        conn.execute("UPDATE users SET active = false WHERE id = %s", (user_id,))
        assert every_id(conn, RemiseFilters(), user_id=user_id) == []
        assert every_id(conn, RemiseFilters(), user_id=999_999) == []
    finally:
        conn.rollback()
        conn.execute("DELETE FROM users")
        conn.commit()


def test_totals_match_the_rows_by_group_and_currency(conn, all_transactions,
                                                    all_remises) -> None:
    for group_by, key in (("application", "application"), ("contract", "contract_number"),
                          ("issuer", "issuer")):
        totals = {t.group: t for t in queries.totals(conn, TransactionFilters(),
                                                     group_by=group_by)}
        assert set(totals) == {getattr(t, key) for t in all_transactions}
        for group, total in totals.items():
            rows = [t for t in all_transactions if getattr(t, key) == group]
            approved = [t for t in rows if t.result == "approved"]
            assert total.currency == 978
            assert total.count == len(rows)
            assert total.debit_amount == sum(t.amount for t in approved
                                             if t.direction == "debit")
            assert total.credit_amount == sum(t.amount for t in approved
                                              if t.direction == "credit")
            assert total.declined_count == sum(t.result == "declined" for t in rows)
            assert total.net_amount == total.debit_amount - total.credit_amount
    (remise_total,) = queries.totals(conn, RemiseFilters())
    (tx_total,) = queries.totals(conn, TransactionFilters())
    assert remise_total.count == len(all_remises)
    assert remise_total.transaction_count == tx_total.count == len(all_transactions)
    for field in ("debit_count", "debit_amount", "credit_count", "credit_amount",
                  "declined_count", "declined_amount", "net_amount"):
        assert getattr(remise_total, field) == getattr(tx_total, field), field
    with pytest.raises(FilterError, match=r"group_by|--group-by"):
        queries.totals(conn, RemiseFilters(), group_by="issuer")


def test_keyset_and_offset_paging_agree_and_page_size_is_capped(conn, all_remises) -> None:
    walked, cursor = [], None
    while True:
        page = queries.search(conn, RemiseFilters(), sort="amount", descending=False,
                              limit=37, cursor=cursor)
        walked.extend(page.rows)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert len(walked) == len(all_remises)
    assert [(r.net_amount, r.id) for r in walked] == sorted(
        (r.net_amount, r.id) for r in all_remises)
    second = queries.search(conn, RemiseFilters(), sort="amount", descending=False,
                            limit=37, offset=37).rows
    assert second == walked[37:74]
    big = queries.search(conn, TransactionFilters(), limit=100_000)
    assert len(big.rows) == queries.MAX_PAGE_SIZE and big.next_cursor


def test_bad_sort_cursor_and_limit_name_the_field(conn) -> None:
    with pytest.raises(FilterError, match=r"^--sort: 'pan_hmac' is not one of"):
        queries.search(conn, TransactionFilters(), sort="pan_hmac")
    with pytest.raises(FilterError, match=r"^--cursor: is not a cursor"):
        queries.search(conn, RemiseFilters(), cursor="garbage!")
    page = queries.search(conn, RemiseFilters(), limit=2)
    with pytest.raises(FilterError, match="was made for sort 'date'"):
        queries.search(conn, RemiseFilters(), sort="amount", cursor=page.next_cursor)
    with pytest.raises(FilterError, match=r"^--limit"):
        queries.search(conn, RemiseFilters(), limit=0)


def test_text_filters_are_parameters_not_sql(conn) -> None:
    hostile = "x' OR '1'='1"
    assert queries.search(conn, RemiseFilters(trade_name=hostile)).rows == []
    assert queries.search(conn, RemiseFilters(contract_number=hostile)).rows == []
    assert queries.search(conn, RemiseFilters(trade_name="%")).rows == []  # literal %


def test_export_streams_through_a_server_side_cursor(conn) -> None:
    stream = queries.iter_transactions(conn, TransactionFilters(), batch=100)
    first = next(stream)
    open_cursors = [r[0] for r in conn.execute("SELECT name FROM pg_cursors").fetchall()]
    assert [c for c in open_cursors if c.startswith("export_transactions_")]
    rest = sum(1 for _ in stream)
    assert first.id and rest > 100
    assert queries.count(conn, TransactionFilters()) == rest + 1


def test_async_search_and_totals_give_the_same_answers(hist_dsn, conn) -> None:
    filters = TransactionFilters(application="CONECS", direction="debit")

    async def run() -> tuple[Any, Any]:
        async with await psycopg.AsyncConnection.connect(hist_dsn) as aconn:
            return (await queries.asearch(aconn, filters, limit=20),
                    await queries.atotals(aconn, filters, group_by="issuer"))

    page, totals = asyncio.run(run())
    assert page == queries.search(conn, filters, limit=20)
    assert totals == queries.totals(conn, filters, group_by="issuer")
    assert {t.group for t in totals} == {"SWILE", "EDENRED", "UP", "PLUXEE"}


def test_searches_are_planned_with_their_values_every_time(conn) -> None:
    """A search repeated on one connection (a portal pool's) is never prepared: a prepared
    statement ends on a generic plan blind to the scope and period, measured 10 to 20
    times slower on the benchmark's data."""
    filters = TransactionFilters(date_from=date(2026, 1, 1), date_to=END)
    for _ in range(12):
        queries.search(conn, filters, limit=5)
        queries.totals(conn, filters)
        queries.count(conn, filters)
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
