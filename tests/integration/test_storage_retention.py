"""Retention and the `mpctl db` commands against a real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import psycopg
import pytest
from click.testing import CliRunner

from passerelle.cli.main import cli
from passerelle.storage.migrate import available_migrations
from passerelle.storage.remises import RemiseWriter
from passerelle.storage.retention import add_months, apply_retention, partitions
from tests.integration.storage_helpers import make_remise, run_with_writer, setup_fleet

pytestmark = pytest.mark.integration


def _mid_month(month: date) -> datetime:
    return datetime(month.year, month.month, 15, 12, tzinfo=UTC)


def _ensure(dsn: str, table: str, month: date) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT passerelle_ensure_month_partition(%s, %s)", (table, month))


def test_retention_drops_old_months_and_creates_the_months_ahead(db_dsn: str) -> None:
    setup_fleet(db_dsn)
    today = datetime.now(UTC).date()
    this_month = add_months(today, 0)
    very_old, too_old, oldest_kept = (add_months(this_month, -n) for n in (20, 16, 15))
    for table in ("remises", "transactions"):
        _ensure(db_dsn, table, too_old)
    remises = {
        "very_old": make_remise(remise_number=1, collected_at=_mid_month(very_old)),
        "too_old": make_remise(remise_number=2, collected_at=_mid_month(too_old)),
        "oldest_kept": make_remise(remise_number=3, collected_at=_mid_month(oldest_kept)),
        "current": make_remise(remise_number=4),
    }

    async def store_all(writer: RemiseWriter) -> None:
        for remise in remises.values():
            await writer.store(remise)

    run_with_writer(db_dsn, store_all)
    for table in ("remises", "transactions"):  # rows parked in the default partition move in
        _ensure(db_dsn, table, oldest_kept)
    progress: list[str] = []

    report = apply_retention(
        db_dsn, keep_months=15, months_ahead=5, today=today, progress=progress.append
    )

    assert report.cutoff == oldest_kept
    assert sorted(report.dropped) == [f"remises_p{too_old:%Y%m}", f"transactions_p{too_old:%Y%m}"]
    assert report.deleted_default_rows == 1 + 5  # the very old remise and its transactions
    assert report.deleted_keys == 2
    ahead = {f"{t}_p{add_months(this_month, n):%Y%m}" for t in
             ("remises", "transactions", "authorizations") for n in (4, 5)}
    assert set(report.created) == ahead
    assert any(line.startswith("dropped remises_p") for line in progress)
    with psycopg.connect(db_dsn) as conn:
        kept = conn.execute("SELECT remise_number FROM remises ORDER BY 1").fetchall()
        keys = conn.execute("SELECT remise_number FROM remise_keys ORDER BY 1").fetchall()
        moved = conn.execute(
            f"SELECT count(*) FROM remises_p{oldest_kept:%Y%m}"
        ).fetchone()
        months = [m for _, m in partitions(conn, "transactions")]
    assert kept == keys == [(3,), (4,)]
    assert moved == (1,)
    assert months[0] == oldest_kept and months[-1] == add_months(this_month, 5)

    again = apply_retention(db_dsn, keep_months=15, months_ahead=5, today=today)
    assert (again.created, again.dropped, again.deleted_keys) == ([], [], 0)


def test_mpctl_db_migrate_and_retention(empty_db_dsn: str) -> None:
    runner = CliRunner()

    first = runner.invoke(cli, ["db", "migrate", "--dsn", empty_db_dsn])
    second = runner.invoke(cli, ["db", "migrate", "--json"], env={"PASSERELLE_DSN": empty_db_dsn})
    retention = runner.invoke(
        cli, ["db", "retention", "--dsn", empty_db_dsn, "--keep-months", "2", "--months-ahead",
              "4"]
    )

    assert first.exit_code == 0, first.output
    count = len(available_migrations())
    assert "applying 0001_initial" in first.output
    assert f"{count} migration(s) applied" in first.output
    assert second.exit_code == 0 and json.loads(second.output) == {"applied": []}
    assert retention.exit_code == 0, retention.output
    assert "created remises_p" in retention.output and "retention done" in retention.output


def test_mpctl_db_reports_an_unreachable_database() -> None:
    result = CliRunner().invoke(
        cli, ["db", "retention", "--dsn", "host=127.0.0.1 port=1 user=postgres"]
    )
    assert result.exit_code == 1
    assert "error: cannot connect to PostgreSQL at" in result.output


def test_mpctl_db_names_a_malformed_dsn_as_bad_input() -> None:
    result = CliRunner().invoke(cli, ["db", "migrate", "--dsn", "nonsense=1"])
    assert result.exit_code == 2
    assert 'error: invalid PostgreSQL DSN: invalid connection option "nonsense"' in result.output
