"""The spool journal: remises survive an unreachable database and a killed process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import psycopg
import pytest

from passerelle.storage.db import StorageSettings, open_pool
from passerelle.storage.remises import InvalidRemise, Remise, RemiseWriter, StoreOutcome
from passerelle.storage.spool import RemiseSink, ReplayReport, Spool, SpoolError, outcome_name
from tests.integration.storage_helpers import make_remise, setup_fleet

pytestmark = pytest.mark.integration

DOWN_DSN = "host=127.0.0.1 port=1 user=postgres dbname=postgres"
FAST = StorageSettings(connect_timeout_s=1, pool_min_size=0, pool_max_size=4)


async def _store_all(dsn: str, spool: Spool, remises: list[Remise]) -> list[str]:
    async with open_pool(dsn, FAST) as pool:
        sink = RemiseSink(RemiseWriter(pool), spool)
        return [outcome_name(await sink.store(r)) for r in remises]


async def _replay(dsn: str, spool: Spool) -> ReplayReport:
    async with open_pool(dsn, FAST) as pool:
        return await RemiseSink(RemiseWriter(pool), spool).replay()


def _stored_order(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT remise_number FROM remise_keys ORDER BY id").fetchall()
    return [n for (n,) in rows]


def test_database_down_spools_then_replays_in_order_and_nothing_twice(
    db_dsn: str, tmp_path: Path
) -> None:
    setup_fleet(db_dsn)
    remises = [make_remise(remise_number=n, transactions=3, seed=n) for n in (5, 3, 9, 4)]
    with Spool(tmp_path / "spool") as spool:
        # remise 5 reached the database before it went away; the terminal repeats it later.
        assert asyncio.run(_store_all(db_dsn, spool, remises[:1])) == ["stored"]
        outcomes = asyncio.run(_store_all(DOWN_DSN, spool, [*remises, remises[1]]))
        assert outcomes == ["spooled"] * 5
        assert spool.pending_records() == 5

        report = asyncio.run(_replay(db_dsn, spool))

        assert (report.stored, report.already_stored, report.rejected) == (3, 2, [])
        assert report.finished and spool.pending_records() == 0
        assert _stored_order(db_dsn) == [5, 3, 9, 4]
        again = asyncio.run(_replay(db_dsn, spool))
        assert (again.stored, again.already_stored) == (0, 0)
    with psycopg.connect(db_dsn) as conn:
        spooled = conn.execute("SELECT remise_number FROM remises WHERE spooled ORDER BY 1")
        assert [n for (n,) in spooled.fetchall()] == [3, 4, 9]
        assert conn.execute("SELECT count(*) FROM transactions").fetchone() == (12,)


def test_replay_with_the_database_still_down_keeps_everything(
    db_dsn: str, tmp_path: Path
) -> None:
    setup_fleet(db_dsn)
    with Spool(tmp_path / "spool") as spool:
        asyncio.run(_store_all(DOWN_DSN, spool, [make_remise(remise_number=1)]))
        report = asyncio.run(_replay(DOWN_DSN, spool))
        assert not report.finished and spool.pending_records() == 1
        asyncio.run(_store_all(DOWN_DSN, spool, [make_remise(remise_number=2)]))
        assert asyncio.run(_replay(db_dsn, spool)).stored == 2
    assert _stored_order(db_dsn) == [1, 2]


def test_unknown_terminal_in_the_spool_is_set_aside_not_blocking(
    db_dsn: str, tmp_path: Path
) -> None:
    setup_fleet(db_dsn)
    remises = [make_remise(remise_number=1), make_remise(terminal="GHOST", remise_number=2),
               make_remise(remise_number=3)]
    with Spool(tmp_path / "spool") as spool:
        asyncio.run(_store_all(DOWN_DSN, spool, remises))
        report = asyncio.run(_replay(db_dsn, spool))
    assert report.stored == 2 and len(report.rejected) == 1
    assert "unknown terminal 'GHOST'" in report.rejected[0]
    assert (tmp_path / "spool" / "rejected.log").stat().st_size > 0
    assert _stored_order(db_dsn) == [1, 3]


def test_torn_tail_is_ignored_and_appending_resumes_after_it(
    db_dsn: str, tmp_path: Path
) -> None:
    setup_fleet(db_dsn)
    with Spool(tmp_path / "spool") as spool:
        asyncio.run(_store_all(DOWN_DSN, spool, [make_remise(remise_number=n) for n in (1, 2)]))
        (segment,) = spool.segments()
    whole = segment.read_bytes()
    with open(segment, "ab") as handle:  # what a kill -9 in the middle of a write leaves
        handle.write(whole[: len(whole) // 4])  # part of one record

    with Spool(tmp_path / "spool") as spool:
        assert spool.torn_bytes_dropped == len(whole) // 4
        asyncio.run(_store_all(DOWN_DSN, spool, [make_remise(remise_number=3)]))
        report = asyncio.run(_replay(db_dsn, spool))
    assert (report.stored, report.damaged_bytes) == (3, 0)
    assert _stored_order(db_dsn) == [1, 2, 3]


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool"), pytest.raises(SpoolError, match="in use by another"):
        Spool(tmp_path / "spool").open()


def test_oversized_remise_is_refused_not_half_written(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", max_record=1024) as spool:
        with pytest.raises(SpoolError, match="exceeds the 1024-byte limit"):
            asyncio.run(_store_all(DOWN_DSN, spool, [make_remise(transactions=50)]))
        assert spool.pending_records() == 0


def test_segments_rotate_and_replay_across_them(db_dsn: str, tmp_path: Path) -> None:
    setup_fleet(db_dsn)
    remises = [make_remise(remise_number=n, transactions=4, seed=n) for n in range(1, 9)]
    with Spool(tmp_path / "spool", segment_bytes=3000) as spool:
        asyncio.run(_store_all(DOWN_DSN, spool, remises))
        assert len(spool.segments()) > 2
        report = asyncio.run(_replay(db_dsn, spool))
        assert report.stored == 8
        assert len(spool.segments()) == 1 and spool.pending_records() == 0
    assert _stored_order(db_dsn) == list(range(1, 9))


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from passerelle.storage.db import StorageSettings, open_pool
    from passerelle.storage.remises import RemiseWriter
    from passerelle.storage.spool import RemiseSink, Spool
    from tests.integration.storage_helpers import make_remise

    async def main():
        settings = StorageSettings(connect_timeout_s=1, pool_min_size=0)
        async with open_pool(sys.argv[2], settings) as pool:
            with Spool(sys.argv[1]) as spool:
                sink = RemiseSink(RemiseWriter(pool), spool)
                number = 0
                while True:
                    number += 1
                    remise = make_remise(remise_number=number, transactions=400, seed=number)
                    assert await sink.store(remise) is None  # spooled
                    print(number, flush=True)

    asyncio.run(main())
    """
)


def test_kill_9_mid_append_loses_no_acknowledged_remise(db_dsn: str, tmp_path: Path) -> None:
    setup_fleet(db_dsn)
    spool_dir = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(spool_dir), DOWN_DSN],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        acknowledged = []
        assert child.stdout is not None
        for line in child.stdout:
            acknowledged.append(int(line))
            if len(acknowledged) == 8:
                break
        os.kill(child.pid, signal.SIGKILL)  # while it is writing remise 9 or later
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    with Spool(spool_dir) as spool:
        report = asyncio.run(_replay(db_dsn, spool))
    stored = _stored_order(db_dsn)
    assert stored[: len(acknowledged)] == acknowledged
    assert stored == list(range(1, len(stored) + 1))  # in order, none twice, no gap
    assert report.stored == len(stored) and report.rejected == []


def test_the_sink_validates_once_and_returns_the_stored_outcome(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from passerelle.storage import remises as remises_module
    from passerelle.storage import spool as spool_module

    calls: list[int] = []
    real_validate = remises_module.validate

    def counted(remise: Remise) -> None:
        calls.append(remise.remise_number)
        real_validate(remise)

    monkeypatch.setattr(remises_module, "validate", counted)
    monkeypatch.setattr(spool_module, "validate", counted)
    setup_fleet(db_dsn)
    remise = make_remise(remise_number=7, transactions=4, seed=7)
    wrong = msgspec.structs.replace(remise, declared=msgspec.structs.replace(
        remise.declared, purchases_count=remise.declared.purchases_count + 1))

    async def scenario() -> tuple[object, object, object]:
        async with open_pool(db_dsn, FAST) as pool:
            with Spool(tmp_path / "spool") as spool:
                sink = RemiseSink(RemiseWriter(pool), spool)
                first = await sink.store(wrong)  # stored with its difference
                repeat = await sink.store(remise)  # same key: what was stored first
                direct = await RemiseWriter(pool).store(remise)  # the writer alone validates
                return first, repeat, direct

    first, repeat, direct = asyncio.run(scenario())
    assert calls == [7, 7, 7]  # once per store, never twice
    assert isinstance(first, StoreOutcome) and first.stored and not first.is_correct
    assert first.status.startswith("ECART")
    assert outcome_name(first) == "stored" and outcome_name(None) == "spooled"
    assert isinstance(repeat, StoreOutcome) and not repeat.stored
    assert (repeat.remise_id, repeat.status, repeat.transaction_count) == (
        first.remise_id, first.status, 4)
    assert outcome_name(repeat) == "already_stored" and direct == repeat


def test_the_sink_still_refuses_an_invalid_remise_before_storing(
    db_dsn: str, tmp_path: Path
) -> None:
    setup_fleet(db_dsn)
    remise = make_remise(remise_number=8, transactions=2, seed=8)
    bad = msgspec.structs.replace(remise, transactions=[
        msgspec.structs.replace(remise.transactions[0], pan_hmac=b"short"),
        *remise.transactions[1:]])

    async def scenario() -> None:
        async with open_pool(db_dsn, FAST) as pool:
            with Spool(tmp_path / "spool") as spool:
                await RemiseSink(RemiseWriter(pool), spool).store(bad)

    with pytest.raises(InvalidRemise, match="pan_hmac"):
        asyncio.run(scenario())
    assert _stored_order(db_dsn) == []


def test_a_database_restored_without_the_claim_function_is_migrated_then_replayed(
    db_dsn: str, tmp_path: Path,
) -> None:
    # Restored from a backup taken before migration 0008: remises are spooled (the
    # database is "unavailable", not the remise bad), and the replayer migrates again
    # and stores them, without a restart of switchd.
    from passerelle.storage.runtime import Storage

    setup_fleet(db_dsn)
    remise = make_remise(remise_number=3, transactions=4)
    settings = StorageSettings(dsn=db_dsn, state_dir=str(tmp_path), pool_min_size=0)

    async def restored() -> tuple[str, bool]:
        async with Storage(settings, replay_interval_s=3600) as storage:
            with psycopg.connect(db_dsn) as conn:
                conn.execute("DROP FUNCTION passerelle_claim_remise")
                conn.execute("DELETE FROM schema_migrations WHERE version = 8")
                conn.commit()
            outcome = outcome_name(await storage.sink.store(remise))
            for _ in range(2):  # the replayer's passes
                await storage.replay_now()
            return outcome, storage.spool.has_pending()

    outcome, pending = asyncio.run(restored())

    assert (outcome, pending) == ("spooled", False)
    assert _stored_order(db_dsn) == [3]
