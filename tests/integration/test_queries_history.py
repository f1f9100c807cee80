"""The history generator's two write paths store the same rows, deterministically."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from passerelle.sim.history import HistorySpec, write_history
from passerelle.storage.db import StorageError

pytestmark = pytest.mark.integration

SPEC = HistorySpec(terminals=4, days=5, end=date(2026, 11, 21), seed=7,
                   transactions_per_day=(0, 6))
REMISE_COLUMNS = (
    "collected_at, terminal_serial, maker, contract_number, rang, bank_code, application,"
    " label, trade_name, siret, remise_number, file_number, currency, purchases_count,"
    " purchases_amount, refunds_count, refunds_amount, cancellations_count,"
    " cancellations_amount, unauthorized_count, unauthorized_amount,"
    " declared_purchases_count, declared_purchases_amount, transaction_count, net_amount,"
    " is_correct, status")
TX_COLUMNS = (
    "tx_at, seq, remise_state, remise_number, file_number, terminal_serial, contract_number,"
    " application, operation, direction, result, response_code, amount, currency,"
    " pan_masked, pan_hmac, pan_hmac_key_version, expiry, authorization_number, issuer,"
    " product, rrn, stan, aid")


def snapshot(dsn: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        remises = conn.execute(f"SELECT {REMISE_COLUMNS} FROM remises"
                               " ORDER BY terminal_serial, application, remise_number"
                               ).fetchall()
        txs = conn.execute(f"SELECT {TX_COLUMNS} FROM transactions"
                           " ORDER BY terminal_serial, application, remise_number, seq"
                           ).fetchall()
    return remises, txs


def test_bulk_copy_and_remise_writer_store_the_same_history(db_dsn, empty_db_dsn) -> None:
    from passerelle.storage.migrate import migrate

    migrate(empty_db_dsn)
    bulk = write_history(db_dsn, SPEC, bulk=True)
    writer = write_history(empty_db_dsn, SPEC, bulk=False)
    assert bulk == writer
    bulk_rows, writer_rows = snapshot(db_dsn), snapshot(empty_db_dsn)
    assert bulk_rows[0] and bulk_rows[1]
    assert bulk_rows == writer_rows
    assert any(r[23] == 0 for r in bulk_rows[0]), "the empty remise is missing"


def test_another_seed_gives_another_history(db_dsn, empty_db_dsn) -> None:
    from passerelle.storage.migrate import migrate

    migrate(empty_db_dsn)
    write_history(db_dsn, SPEC)
    write_history(empty_db_dsn, HistorySpec(terminals=4, days=5, end=date(2026, 11, 21),
                                            seed=8, transactions_per_day=(0, 6)))
    assert snapshot(db_dsn)[1] != snapshot(empty_db_dsn)[1]


def test_a_database_without_schema_or_with_a_fleet_is_refused(db_dsn, empty_db_dsn) -> None:
    with pytest.raises(StorageError, match="no passerelle schema: run `mpctl db migrate`"):
        write_history(empty_db_dsn, SPEC)
    write_history(db_dsn, SPEC)
    with pytest.raises(StorageError, match=r"contract 0012345/CBEMV already exists"):
        write_history(db_dsn, SPEC)
