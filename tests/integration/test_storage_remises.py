"""The télécollecte writer against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from passerelle.storage.db import DatabaseUnavailable, StorageError, StorageSettings, open_pool
from passerelle.storage.fleet import upsert_terminal
from passerelle.storage.pan import luhn_valid
from passerelle.storage.remises import (
    COPY_TRANSACTIONS,
    COPY_TYPES,
    STATUS_CORRECT,
    InvalidRemise,
    RemiseTotals,
    RemiseWriter,
    UnknownReference,
    copy_transactions,
    transaction_rows,
)
from tests.integration.storage_helpers import make_remise, run_with_writer, setup_fleet

pytestmark = pytest.mark.integration
T = TypeVar("T")


def _count(dsn: str, query: str, *params: object) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_remise_is_stored_with_rows_matching_what_the_terminal_sent(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    remise = make_remise(transactions=25, seed=1)

    outcome = run_with_writer(db_dsn, lambda w: w.store(remise))

    assert outcome.stored and outcome.is_correct and outcome.status == STATUS_CORRECT
    assert outcome.transaction_count == 25
    with psycopg.connect(db_dsn) as conn:
        header = conn.execute(
            "SELECT terminal_serial, maker, contract_number, rang, bank_code, application,"
            " label, trade_name, siret, remise_number, file_number, transaction_count, status,"
            " purchases_count, purchases_amount FROM remises WHERE id = %s",
            (outcome.remise_id,),
        ).fetchone()
        rows = conn.execute(
            "SELECT seq, tx_at, operation, result, amount, currency, pan_masked, pan_hmac,"
            " expiry, authorization_number, rrn, direction, remise_state"
            " FROM transactions WHERE remise_id = %s ORDER BY seq",
            (outcome.remise_id,),
        ).fetchall()
    assert header == (
        "TPE0000", "Ingenico", "1234567", "001", "30004", "CBEMV", "BOULANGERIE CENTRE",
        "Au Bon Pain", "99900000000011", 1, 1, 25, STATUS_CORRECT,
        remise.declared.purchases_count, remise.declared.purchases_amount,
    )
    sent = [
        (t.seq, t.at, t.operation, t.result, t.amount, t.currency, t.pan_masked, t.pan_hmac,
         t.expiry, t.authorization_number, t.rrn)
        for t in remise.transactions
    ]
    assert [row[:11] for row in rows] == sent
    assert {row[11] for row in rows if row[2] == "purchase"} == {"debit"}
    assert {row[12] for row in rows} == {"correct"}


def test_encoded_copy_stores_what_psycopg_rows_store(db_dsn: str) -> None:
    """The writer's own binary COPY and psycopg's adapters, fed the same rows, store the
    same values in every column: NULLs, non-ASCII text, extreme integers and times."""
    remise = make_remise(transactions=40, seed=7)
    odd = [
        msgspec.structs.replace(tx, expiry=None, authorization_number=None, issuer=None,
                                product="TITRE RESTAURANT ÉTÉ", rrn=None, stan=None, aid=None,
                                amount=2**62, at=datetime(1999, 12, 31, 23, 59, 59, 999999,
                                                          tzinfo=UTC))
        if tx.seq % 3 == 0 else tx for tx in remise.transactions
    ]
    remise = msgspec.structs.replace(remise, transactions=odd, file_number=2**31 - 1)
    context = (0, None, None, 7, "001", "30004", None, "CAFÉ\\TAB", None, "99900000000011")
    columns = ", ".join(c.split()[0] for c in COPY_TRANSACTIONS.split("(", 2)[1]
                        .split(")")[0].split(", ") if c != "remise_id")
    with psycopg.connect(db_dsn) as conn, conn.cursor() as cur:
        with cur.copy(COPY_TRANSACTIONS) as copy:
            copy.write(copy_transactions(remise, 1, "difference", context))
        with cur.copy(COPY_TRANSACTIONS) as copy:
            copy.set_types(COPY_TYPES)
            for row in transaction_rows(remise, 2, "difference", context):
                copy.write_row(row)
        ours, theirs = (cur.execute(f"SELECT {columns} FROM transactions WHERE remise_id = %s"
                                    " ORDER BY seq", (remise_id,)).fetchall()
                        for remise_id in (1, 2))
    assert len(ours) == 40 and ours == theirs
    assert ours[2][columns.split(", ").index("product")] == "TITRE RESTAURANT ÉTÉ"


def test_repeated_remise_is_acknowledged_and_stored_once(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    remise = make_remise(transactions=10)

    async def twice(writer: RemiseWriter) -> tuple[object, object]:
        return await writer.store(remise), await writer.store(remise)

    first, second = run_with_writer(db_dsn, twice)

    assert first.stored and not second.stored
    assert second.remise_id == first.remise_id and second.status == first.status
    assert _count(db_dsn, "SELECT count(*) FROM remises") == 1
    assert _count(db_dsn, "SELECT count(*) FROM transactions") == 10


def test_concurrent_duplicates_are_stored_once(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    remise = make_remise(transactions=200, seed=7)

    async def race(writer: RemiseWriter) -> list[object]:
        return list(await asyncio.gather(*(writer.store(remise) for _ in range(6))))

    outcomes = run_with_writer(db_dsn, race, size=6)

    assert sorted(o.stored for o in outcomes) == [False] * 5 + [True]
    assert len({o.remise_id for o in outcomes}) == 1
    assert _count(db_dsn, "SELECT count(*) FROM remises") == 1
    assert _count(db_dsn, "SELECT count(*) FROM transactions") == 200


def test_a_file_of_the_largest_size_is_stored_whole(db_dsn: str) -> None:
    # 9999 transactions (the dialogue's max_messages): a COPY payload of megabytes, sent
    # in the one message with the claim, more than a socket buffer takes at once.
    setup_fleet(db_dsn)
    remise = make_remise(transactions=9999, seed=11)

    outcome = run_with_writer(db_dsn, lambda w: w.store(remise))

    assert outcome.stored and outcome.transaction_count == 9999
    assert _count(db_dsn, "SELECT count(*) FROM transactions") == 9999
    assert _count(db_dsn, "SELECT sum(amount) FROM transactions") == sum(
        tx.amount for tx in remise.transactions)


def test_empty_remise_is_stored(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    remise = make_remise(transactions=0)

    outcome = run_with_writer(db_dsn, lambda w: w.store(remise))

    assert outcome.stored and outcome.status == STATUS_CORRECT
    assert _count(db_dsn, "SELECT transaction_count FROM remises WHERE id = %s",
                  outcome.remise_id) == 0


def test_totals_that_disagree_are_named_in_the_status(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    remise = make_remise(transactions=10, seed=3)
    computed = remise.declared
    declared = msgspec.structs.replace(
        computed,
        purchases_count=computed.purchases_count + 1,
        purchases_amount=computed.purchases_amount + 1250,
    )
    remise = msgspec.structs.replace(remise, declared=declared)

    outcome = run_with_writer(db_dsn, lambda w: w.store(remise))

    assert not outcome.is_correct
    assert outcome.status == (
        f"ECART ACHATS NB DECLARE {declared.purchases_count} CALCULE "
        f"{computed.purchases_count} MONTANT DECLARE "
        f"{declared.purchases_amount // 100},{declared.purchases_amount % 100:02d} CALCULE "
        f"{computed.purchases_amount // 100},{computed.purchases_amount % 100:02d}"
    )
    assert _count(db_dsn, "SELECT count(*) FROM transactions WHERE remise_state = 'difference'"
                  ) == 10


def test_unknown_terminal_or_contract_stores_nothing(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    stranger = make_remise(terminal="TPE9999")
    other_app = make_remise(application="AMEX")

    with pytest.raises(UnknownReference, match="unknown terminal 'TPE9999'"):
        run_with_writer(db_dsn, lambda w: w.store(stranger))
    with pytest.raises(UnknownReference, match="unknown contract '1234567' for application"):
        run_with_writer(db_dsn, lambda w: w.store(other_app))
    assert _count(db_dsn, "SELECT count(*) FROM remise_keys") == 0


def test_names_with_quotes_and_backslashes_are_stored_as_sent(db_dsn: str) -> None:
    # The claim travels as literals (one message with the COPY): whatever a terminal's
    # identifiers hold, they are data, stored as they came, never SQL.
    serial, contract = "TPE'0\\1", "12'; DROP TABLE remises; --"
    with psycopg.connect(db_dsn) as conn:
        (contract_id,) = conn.execute(
            "INSERT INTO contracts (contract_number, application, bank_code, label)"
            " VALUES (%s, 'CBEMV', '10278', 'L''ÉTÉ \\ CAFÉ') RETURNING id", (contract,)
        ).fetchone()
        upsert_terminal(conn, serial, contract_id)
        conn.commit()
    remise = msgspec.structs.replace(make_remise(transactions=3), terminal_serial=serial,
                                     contract_number=contract)

    outcome = run_with_writer(db_dsn, lambda w: w.store(remise))
    again = run_with_writer(db_dsn, lambda w: w.store(remise))

    assert outcome.stored and not again.stored and again.remise_id == outcome.remise_id
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT DISTINCT terminal_serial, contract_number, label FROM transactions"
        ).fetchall()
        header = conn.execute("SELECT terminal_serial, contract_number FROM remises").fetchall()
    assert rows == [(serial, contract, "L'ÉTÉ \\ CAFÉ")]
    assert header == [(serial, contract)]


def test_a_row_the_database_refuses_leaves_nothing_and_the_remise_stores_later(
    db_dsn: str,
) -> None:
    # Claim, remise row and COPY are one transaction: a refused row undoes the claim too,
    # so the terminal's next try is not taken for a repeat of a remise never stored.
    setup_fleet(db_dsn)
    remise = make_remise(transactions=30, seed=5)
    victim = remise.transactions[17].amount
    with psycopg.connect(db_dsn) as conn:
        conn.execute(f"ALTER TABLE transactions ADD CONSTRAINT test_refuse CHECK "
                     f"(amount <> {victim})")
        conn.commit()

    async def failing_then_next(writer: RemiseWriter) -> object:
        with pytest.raises(StorageError, match="test_refuse"):
            await writer.store(remise)
        # the pooled connection is usable again at once
        return await writer.store(make_remise(remise_number=2, transactions=2))

    other = run_with_writer(db_dsn, failing_then_next, size=1)

    assert other.stored
    assert _count(db_dsn, "SELECT count(*) FROM remise_keys WHERE remise_number = 1") == 0
    assert _count(db_dsn, "SELECT count(*) FROM remises WHERE remise_number = 1") == 0
    assert _count(db_dsn, "SELECT count(*) FROM transactions WHERE remise_number = 1") == 0
    with psycopg.connect(db_dsn) as conn:
        conn.execute("ALTER TABLE transactions DROP CONSTRAINT test_refuse")
        conn.commit()
    later = run_with_writer(db_dsn, lambda w: w.store(remise))
    assert later.stored
    assert _count(db_dsn, "SELECT count(*) FROM transactions WHERE remise_number = 1") == 30


def test_a_repeat_of_a_remise_removed_by_retention_is_an_error(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    remise = make_remise(transactions=2)
    run_with_writer(db_dsn, lambda w: w.store(remise))
    with psycopg.connect(db_dsn) as conn:
        conn.execute("DELETE FROM transactions")
        conn.execute("DELETE FROM remises")  # what dropping its partition does
        conn.commit()

    with pytest.raises(StorageError, match="removed by retention"):
        run_with_writer(db_dsn, lambda w: w.store(remise))
    assert _count(db_dsn, "SELECT count(*) FROM remises") == 0


def test_bad_remise_is_refused_with_the_field_named(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    naive = msgspec.structs.replace(make_remise(), collected_at=datetime(2026, 1, 1))
    tx = make_remise().transactions[0]
    leaking = msgspec.structs.replace(
        make_remise(), transactions=[msgspec.structs.replace(tx, pan_masked="4970101234567890")]
    )
    negative = msgspec.structs.replace(
        make_remise(), declared=RemiseTotals(purchases_amount=-1)
    )

    with pytest.raises(InvalidRemise, match="collected_at 2026-01-01T00:00:00 has no time zone"):
        run_with_writer(db_dsn, lambda w: w.store(naive))
    with pytest.raises(InvalidRemise, match="transaction 1: pan_masked must be"):
        run_with_writer(db_dsn, lambda w: w.store(leaking))
    with pytest.raises(InvalidRemise, match="declared purchases_amount must be"):
        run_with_writer(db_dsn, lambda w: w.store(negative))
    assert _count(db_dsn, "SELECT count(*) FROM remise_keys") == 0


def test_moved_terminal_keeps_its_history_under_the_old_contract(db_dsn: str) -> None:
    setup_fleet(db_dsn, applications=("CBEMV", "CBCLESS"))
    first = make_remise(remise_number=1)
    run_with_writer(db_dsn, lambda w: w.store(first))
    with psycopg.connect(db_dsn) as conn:
        (new_contract,) = conn.execute(
            "INSERT INTO contracts (contract_number, application, bank_code, label)"
            " VALUES ('7654321', 'CBEMV', '10278', 'NOUVEAU') RETURNING id"
        ).fetchone()
        upsert_terminal(conn, "TPE0000", new_contract)
        conn.commit()
    second = msgspec.structs.replace(make_remise(remise_number=2), contract_number="7654321")
    run_with_writer(db_dsn, lambda w: w.store(second))

    with psycopg.connect(db_dsn) as conn:
        by_contract = conn.execute(
            "SELECT contract_number, label, remise_number FROM remises ORDER BY remise_number"
        ).fetchall()
        moves = conn.execute(
            "SELECT count(*), count(valid_to) FROM terminal_contracts"
        ).fetchone()
    assert by_contract == [("1234567", "BOULANGERIE CENTRE", 1), ("7654321", "NOUVEAU", 2)]
    assert moves == (2, 1)


def test_database_dump_contains_no_card_number(db_dsn: str) -> None:
    from passerelle.storage.embedded import postgres_bin_dir

    setup_fleet(db_dsn, terminals=3)
    pans: list[str] = []
    remises = [
        make_remise(terminal=f"TPE{n:04d}", remise_number=n + 1, transactions=40, seed=n,
                    pans=pans)
        for n in range(3)
    ]

    async def store_all(writer: RemiseWriter) -> None:
        for remise in remises:
            await writer.store(remise)

    run_with_writer(db_dsn, store_all)
    dump = subprocess.run(
        [str(postgres_bin_dir() / "pg_dump"), "--no-owner", db_dsn],
        check=True, capture_output=True, text=True,
    ).stdout

    assert "Au Bon Pain" in dump  # the dump holds the data
    digit_runs = re.findall(r"\d{12,}", dump)
    candidates = {
        run[i:j]
        for run in digit_runs
        for i in range(len(run))
        for j in range(i + 12, min(len(run), i + 19) + 1)
    }
    assert not set(pans) & candidates
    card_like = {c for c in candidates if c[:6] in {p[:6] for p in pans} and luhn_valid(c)}
    assert card_like == set()
    assert len(pans) == 120 and all(luhn_valid(p) for p in pans)


def test_collected_remise_time_is_stored_in_utc(db_dsn: str) -> None:
    from zoneinfo import ZoneInfo

    setup_fleet(db_dsn)
    paris = datetime(2026, 7, 14, 23, 30, tzinfo=ZoneInfo("Europe/Paris"))
    remise = make_remise(collected_at=paris)

    outcome = run_with_writer(db_dsn, lambda w: w.store(remise))

    with psycopg.connect(db_dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        (stored,) = conn.execute(
            "SELECT collected_at FROM remises WHERE id = %s", (outcome.remise_id,)
        ).fetchone()
    assert stored == datetime(2026, 7, 14, 21, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("table", "where", "index"),
    [
        ("transactions", "pan_hmac = '\\x00'::bytea", "pan_hmac"),
        ("transactions", "right(pan_masked, 4) = '1234' AND tx_at >= now() - interval '1 day'",
         "right_tx_at"),
        ("transactions", "rrn = '000000000001'", "rrn"),
        ("transactions", "authorization_number = '123456'", "authorization_number"),
        ("transactions", "contract_number = '1234567' AND tx_at >= now() - interval '1 day'",
         "contract_number_tx_at"),
        ("transactions", "terminal_serial = 'TPE0000' AND tx_at >= now() - interval '1 day'",
         "terminal_serial_tx_at"),
        ("transactions", "siret = '99900000000011' AND tx_at >= now() - interval '1 day'",
         "siret_tx_at"),
        ("transactions", "amount = 1500 AND tx_at >= now() - interval '1 day'", "amount_tx_at"),
        ("remises", "contract_number = '1234567' AND collected_at >= now() - interval '1 day'",
         "contract_number_collected_at"),
        ("remises", "terminal_serial = 'TPE0000'", "terminal_serial_collected_at"),
        ("remises", "remise_number = 12", "remise_number"),
        ("remises", "net_amount BETWEEN 100 AND 200", "net_amount_collected_at"),
        ("remises", "file_number = 12", "file_number"),
        ("remises", "lower(trade_name) = 'au bon pain'", "lower_collected_at"),
        ("remises", "bank_code = '30004' AND rang = '001'", "bank_code_rang_collected_at"),
    ],
)
def test_search_filters_have_an_index(db_dsn: str, table: str, where: str, index: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            row[0] for row in conn.execute(f"EXPLAIN SELECT * FROM {table} WHERE {where}")
        )
    assert f"_{index}_idx" in plan, plan


# -- failures of the one-message claim + COPY (storage.remises._store_once) -------------------
def _run(dsn: str, body: Callable[[RemiseWriter], Awaitable[T]], *,
         statement_timeout_ms: int = 30_000) -> T:
    """`body(writer)` on a fresh pool of one connection, as switchd opens it."""

    async def main() -> T:
        settings = StorageSettings(dsn=dsn, pool_max_size=1,
                                   statement_timeout_ms=statement_timeout_ms)
        async with open_pool(dsn, settings) as pool:
            return await body(RemiseWriter(pool))

    return asyncio.run(main())


async def _pool_is_clean(writer: RemiseWriter) -> None:
    """The pool's connection is back idle, with no result pending: a query runs on it."""
    async with writer.pool.connection() as conn:
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


def test_a_copy_that_cannot_start_in_time_is_unavailable_not_a_bad_remise(
    db_dsn: str,
) -> None:
    # Retention drops a partition (ACCESS EXCLUSIVE on `transactions`) while a remise is
    # stored: its COPY waits, then statement_timeout cancels it. As every timeout, that is
    # "retry later" (the sink spools the remise), never a remise refused for good.
    setup_fleet(db_dsn)
    remise = make_remise(transactions=3)
    with psycopg.connect(db_dsn) as locker:
        locker.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")

        async def blocked(writer: RemiseWriter) -> None:
            with pytest.raises(DatabaseUnavailable, match="statement timeout"):
                await writer.store(remise)
            await _pool_is_clean(writer)

        _run(db_dsn, blocked, statement_timeout_ms=300)
        locker.rollback()
    assert _count(db_dsn, "SELECT count(*) FROM remise_keys") == 0
    assert run_with_writer(db_dsn, lambda w: w.store(remise)).stored


def test_a_database_without_the_claim_function_is_unavailable(db_dsn: str) -> None:
    # A database that came back empty (restored, recreated) lacks migration 0008's
    # function: like its missing tables, that is "retry once migrated", not a bad remise.
    setup_fleet(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        conn.execute("DROP FUNCTION passerelle_claim_remise")
        conn.commit()

    async def missing(writer: RemiseWriter) -> None:
        with pytest.raises(DatabaseUnavailable, match="schema not migrated"):
            await writer.store(make_remise())
        await _pool_is_clean(writer)
        # restored means restarted too: the pool's connection is dead, the retry finds
        # the function missing
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(DatabaseUnavailable, match="schema not migrated"):
            await writer.store(make_remise())

    _run(db_dsn, missing)


def test_texts_are_stored_as_sent_whatever_the_client_encoding(db_dsn: str) -> None:
    # The claim's literals are encoded for the connection; the COPY rows must be too.
    setup_fleet(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        conn.execute("UPDATE contracts SET label = 'CAFÉ DE L''ÉTÉ'")
        conn.commit()
    base = make_remise(transactions=2)
    remise = msgspec.structs.replace(base, transactions=[
        msgspec.structs.replace(tx, product="TITRE ÉTÉ") for tx in base.transactions])

    outcome = _run(f"{db_dsn} client_encoding=LATIN1", lambda w: w.store(remise))

    assert outcome.stored
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT DISTINCT label, product FROM transactions").fetchall()
    assert rows == [("CAFÉ DE L'ÉTÉ", "TITRE ÉTÉ")]


def test_quotes_and_backslashes_stay_data_without_standard_conforming_strings(
    db_dsn: str,
) -> None:
    serial = "TPE\\'; DROP TABLE remises; --"
    with psycopg.connect(db_dsn) as conn:
        (contract_id,) = conn.execute(
            "INSERT INTO contracts (contract_number, application, bank_code)"
            " VALUES ('1234567', 'CBEMV', '10278') RETURNING id").fetchone()
        upsert_terminal(conn, serial, contract_id)
        conn.execute(sql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off")
                     .format(sql.Identifier(conn.info.dbname)))
        conn.commit()
    remise = msgspec.structs.replace(make_remise(transactions=2), terminal_serial=serial)

    async def store(writer: RemiseWriter) -> object:
        async with writer.pool.connection() as conn:
            assert (await (await conn.execute("SHOW standard_conforming_strings"))
                    .fetchone()) == ("off",)
        return await writer.store(remise)

    outcome = _run(db_dsn, store)

    assert outcome.stored
    with psycopg.connect(db_dsn) as conn:
        stored = conn.execute("SELECT terminal_serial FROM remises").fetchall()
    assert stored == [(serial,)]


def test_connections_the_server_closed_are_replaced_and_the_remise_stored(
    db_dsn: str,
) -> None:
    # PostgreSQL restarted or an idle timeout closed the pool's connections: the first
    # use fails, the writer sorts the pool out and stores, once.
    setup_fleet(db_dsn)

    async def after_restart(writer: RemiseWriter) -> tuple[object, object]:
        first = await writer.store(make_remise(remise_number=1))
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        second = await writer.store(make_remise(remise_number=2))
        await _pool_is_clean(writer)
        return first, second

    first, second = _run(db_dsn, after_restart)

    assert first.stored and second.stored
    assert _count(db_dsn, "SELECT count(*) FROM remises") == 2


def test_a_claim_waits_for_a_concurrent_one_that_rolls_back_then_stores(
    db_dsn: str,
) -> None:
    # Another node claimed the same remise and failed (its COPY refused): the waiting
    # claim then takes the key and stores the remise, whole.
    setup_fleet(db_dsn)
    remise = make_remise(transactions=4)

    async def race(writer: RemiseWriter) -> object:
        other = await psycopg.AsyncConnection.connect(db_dsn)
        await other.execute(
            "INSERT INTO remise_keys (terminal_serial, contract_number, application,"
            " remise_number, collected_at) VALUES ('TPE0000', '1234567', 'CBEMV', 1, now())")
        waiting = asyncio.create_task(writer.store(remise))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # blocked on the other's key
        await other.rollback()
        await other.close()
        return await waiting

    outcome = _run(db_dsn, race)

    assert outcome.stored and outcome.transaction_count == 4
    assert _count(db_dsn, "SELECT count(*) FROM transactions") == 4


def test_a_cancelled_store_leaves_no_claim_and_a_clean_pool(db_dsn: str) -> None:
    # The dialogue's task cancelled while the claim waits: the remise is not half stored,
    # the next store on the same pool works and the terminal's retry stores it.
    setup_fleet(db_dsn)
    remise = make_remise(transactions=4)

    async def cancelled(writer: RemiseWriter) -> object:
        with psycopg.connect(db_dsn) as locker:
            locker.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
            task = asyncio.create_task(writer.store(remise))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            locker.rollback()
        await _pool_is_clean(writer)
        return await writer.store(remise)

    outcome = _run(db_dsn, cancelled)

    assert outcome.stored
    assert _count(db_dsn, "SELECT count(*) FROM transactions") == 4


def _slow_rows(dsn: str, seconds: float) -> None:
    """Each transaction row takes `seconds` to insert: a COPY that is still running."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"""
            CREATE FUNCTION test_slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$""")
        conn.execute("CREATE TRIGGER test_slow BEFORE INSERT ON transactions"
                     " FOR EACH ROW EXECUTE FUNCTION test_slow_row()")
        conn.commit()


def test_a_connection_lost_mid_copy_leaves_nothing_and_the_retry_stores_once(
    db_dsn: str,
) -> None:
    setup_fleet(db_dsn)
    _slow_rows(db_dsn, 0.1)
    remise = make_remise(transactions=5)

    async def killed(writer: RemiseWriter) -> object:
        storing = asyncio.create_task(writer.store(remise))
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            for _ in range(100):  # until the COPY runs (the claim made, rows going in)
                await asyncio.sleep(0.02)
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'SELECT * FROM passerelle_claim_remise(%'"
                    " AND wait_event = 'PgSleep'").fetchall()
                if killed:
                    break
            assert killed
        outcome = await storing  # the writer's one retry, on a fresh connection
        await _pool_is_clean(writer)
        return outcome

    outcome = _run(db_dsn, killed)

    assert outcome.stored and outcome.transaction_count == 5
    assert _count(db_dsn, "SELECT count(*) FROM remise_keys") == 1
    assert _count(db_dsn, "SELECT count(*) FROM transactions") == 5


def test_a_statement_timeout_mid_copy_leaves_nothing_and_is_unavailable(
    db_dsn: str,
) -> None:
    setup_fleet(db_dsn)
    _slow_rows(db_dsn, 0.2)
    remise = make_remise(transactions=5)

    async def too_slow(writer: RemiseWriter) -> None:
        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            await writer.store(remise)
        await _pool_is_clean(writer)

    _run(db_dsn, too_slow, statement_timeout_ms=500)

    assert _count(db_dsn, "SELECT count(*) FROM remise_keys") == 0
    assert _count(db_dsn, "SELECT count(*) FROM remises") == 0


_IDENTIFIER = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S"),
                                    include_characters=" "),
                      min_size=1, max_size=64).filter(lambda s: s.strip() != "")


def test_any_identifier_a_terminal_sends_is_stored_as_data(db_dsn: str) -> None:
    """The claim's literals (serial, contract number, application, status) for any
    printable text: quotes, backslashes, `$$`, comment marks, any script; with
    standard_conforming_strings on and off: stored exactly as sent, never SQL."""
    numbers = itertools.count(1)

    @settings(max_examples=40, deadline=None)
    @given(serial=_IDENTIFIER, contract=_IDENTIFIER, application=_IDENTIFIER,
           conforming=st.booleans())
    def stored_as_sent(serial: str, contract: str, application: str, conforming: bool) -> None:
        with psycopg.connect(db_dsn) as conn:
            (contract_id,) = conn.execute(
                "INSERT INTO contracts (contract_number, application, bank_code)"
                " VALUES (%s, %s, '10278') ON CONFLICT (contract_number, application)"
                " DO UPDATE SET bank_code = '10278' RETURNING id",
                (contract, application)).fetchone()
            upsert_terminal(conn, serial, contract_id)
            conn.execute(sql.SQL("ALTER DATABASE {} SET standard_conforming_strings = {}")
                         .format(sql.Identifier(conn.info.dbname),
                                 sql.SQL("on" if conforming else "off")))
            conn.commit()
        remise = msgspec.structs.replace(
            make_remise(transactions=1, remise_number=next(numbers)),
            terminal_serial=serial, contract_number=contract, application=application)

        outcome = _run(db_dsn, lambda w: w.store(remise))

        assert outcome.stored
        with psycopg.connect(db_dsn) as conn:
            row = conn.execute(
                "SELECT r.terminal_serial, r.contract_number, r.application, t.terminal_serial"
                " FROM remises r JOIN transactions t ON t.remise_id = r.id WHERE r.id = %s",
                (outcome.remise_id,)).fetchone()
        assert row == (serial, contract, application, serial)

    stored_as_sent()
    assert _count(db_dsn, "SELECT count(*) FROM remises") > 0  # the table is still there


def test_a_repeat_answers_what_was_stored_first_not_what_it_carries(db_dsn: str) -> None:
    # A terminal that lost our 0516 sends its remise again, here with other totals and
    # fewer transactions: the answer (0516) is built from the remise stored first.
    setup_fleet(db_dsn)
    first = make_remise(transactions=6, seed=3)
    again = msgspec.structs.replace(make_remise(transactions=2, seed=4),
                                    declared=RemiseTotals(purchases_count=9))

    async def twice(writer: RemiseWriter) -> tuple[object, object]:
        return await writer.store(first), await writer.store(again)

    stored, repeat = _run(db_dsn, twice)

    assert stored.stored and stored.is_correct and not repeat.stored
    assert (repeat.remise_id, repeat.status, repeat.is_correct, repeat.transaction_count) == (
        stored.remise_id, STATUS_CORRECT, True, 6)
    assert _count(db_dsn, "SELECT count(*) FROM transactions") == 6


@pytest.mark.parametrize("serial", ["TPE0000\x00; DROP TABLE remises", "TPE0000\n", "T" * 65])
def test_an_identifier_libpq_would_cut_or_bend_is_refused_before_the_claim(
    db_dsn: str, serial: str,
) -> None:
    # libpq's literal escaping stops at a NUL: "TPE0000\0..." would claim TPE0000's key.
    # Such identifiers (and unbounded ones) never reach the message.
    setup_fleet(db_dsn)
    remise = msgspec.structs.replace(make_remise(), terminal_serial=serial)

    with pytest.raises(InvalidRemise, match=r"terminal_serial .* not printable"):
        _run(db_dsn, lambda w: w.store(remise))
    assert _count(db_dsn, "SELECT count(*) FROM remise_keys") == 0
