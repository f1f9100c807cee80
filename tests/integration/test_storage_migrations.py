"""Schema migrations against a real PostgreSQL."""

from __future__ import annotations

import threading

import psycopg
import pytest

from passerelle.storage.db import StorageError
from passerelle.storage.migrate import available_migrations, migrate

pytestmark = pytest.mark.integration

EXPECTED_TABLES = {
    "merchants", "contracts", "terminals", "terminal_contracts", "remise_keys", "remises",
    "transactions", "authorizations", "saf", "users", "user_scopes", "password_tokens",
    "audit_log", "branding", "schema_migrations",
}


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        ).fetchall()
    return {r[0] for r in rows}


def test_migrations_apply_once_and_are_idempotent(empty_db_dsn: str) -> None:
    applied = migrate(empty_db_dsn)
    assert [m.version for m in applied] == [m.version for m in available_migrations()]
    assert _tables(empty_db_dsn) >= EXPECTED_TABLES

    assert migrate(empty_db_dsn) == []
    with psycopg.connect(empty_db_dsn) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert [v for (v,) in versions] == [m.version for m in available_migrations()]


def test_concurrent_migrations_apply_each_file_exactly_once(empty_db_dsn: str) -> None:
    results: list[object] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(empty_db_dsn))
        except Exception as exc:  # the assertion below names it
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(len(r) for r in results) == [0, 0, len(available_migrations())]


def test_an_applied_migration_edited_later_is_reported(empty_db_dsn: str) -> None:
    migrate(empty_db_dsn)
    with psycopg.connect(empty_db_dsn) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(StorageError, match=r"0001_initial\.sql was changed after it was applied"):
        migrate(empty_db_dsn)


def test_no_column_can_hold_card_secrets(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        ).fetchall()
    forbidden = ("track", "cvv", "cvc", "pin", "full_pan")
    offending = [
        (t, c) for t, c in columns
        if any(word in c for word in forbidden) or c == "pan"
    ]
    assert offending == []


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="cannot connect to PostgreSQL at"):
        migrate("host=127.0.0.1 port=1 user=postgres dbname=postgres connect_timeout=2")


def test_scope_indexes_reach_partitions_attached_later(empty_db_dsn: str) -> None:
    """0007's (contract_id, time) indexes live on the parents, so a month that retention
    attaches years later gets them too (a scoped search there must not scan the month)."""
    migrate(empty_db_dsn)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        for parent in ("remises", "transactions"):
            conn.execute("SELECT passerelle_ensure_month_partition(%s, '2031-02-01')",
                         (parent,))
        rows = conn.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN"
            " ('remises_p203102', 'transactions_p203102') AND indexdef LIKE '%(contract_id, %'"
        ).fetchall()
    assert sorted(rows) == [
        ("remises_p203102", "CREATE INDEX remises_p203102_contract_id_collected_at_idx ON"
         " public.remises_p203102 USING btree (contract_id, collected_at)"),
        ("transactions_p203102", "CREATE INDEX transactions_p203102_contract_id_tx_at_idx ON"
         " public.transactions_p203102 USING btree (contract_id, tx_at)"),
    ]
