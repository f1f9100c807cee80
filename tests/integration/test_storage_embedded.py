"""The embedded PostgreSQL: starts as root, stops, and a real outage is spooled over."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest

from passerelle.storage.db import DatabaseUnavailable, StorageSettings, connect, open_pool
from passerelle.storage.embedded import EmbeddedPostgres
from passerelle.storage.migrate import migrate
from passerelle.storage.remises import RemiseWriter
from passerelle.storage.runtime import Storage
from passerelle.storage.spool import RemiseSink, Spool, outcome_name
from tests.integration.storage_helpers import make_remise, setup_fleet

pytestmark = pytest.mark.integration


def test_embedded_server_starts_even_as_root_and_stops(embedded_state_dir: Path) -> None:
    server = EmbeddedPostgres(embedded_state_dir)
    try:
        dsn = server.start()
        postmaster = psutil.Process(server.pid)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT current_database(), current_user").fetchone()
        assert row == ("passerelle", "postgres")
        if os.geteuid() == 0:  # initdb refuses root: the server runs unprivileged
            assert postmaster.username() != "root"
        assert (embedded_state_dir / "pgdata" / "PG_VERSION").exists()
    finally:
        server.stop()

    assert not postmaster.is_running() or postmaster.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(DatabaseUnavailable):
        connect(dsn).close()


def test_remises_acknowledged_during_an_outage_are_stored_once_after_it(
    embedded_state_dir: Path,
) -> None:
    server = EmbeddedPostgres(embedded_state_dir)
    settings = StorageSettings(connect_timeout_s=1, pool_min_size=0, pool_max_size=4)
    remises = [make_remise(remise_number=n, transactions=6, seed=n) for n in range(1, 7)]

    async def scenario(spool: Spool) -> list[str]:
        outcomes = []
        async with open_pool(dsn, settings) as pool:
            sink = RemiseSink(RemiseWriter(pool), spool, retry_after_s=0)
            outcomes.append(outcome_name(await sink.store(remises[0])))
            outcomes.append(outcome_name(await sink.store(remises[1])))
            server.stop()  # PostgreSQL goes away with connections open in the pool
            for remise in (*remises[2:5], remises[1]):
                outcomes.append(outcome_name(await sink.store(remise)))
            server.start()
            stored = already = 0
            for _attempt in range(30):  # the pool reconnects with backoff, as in production
                report = await sink.replay()
                stored, already = stored + report.stored, already + report.already_stored
                if report.finished:
                    break
            outcomes.append(f"replayed {stored}+{already}")
            outcomes.append(outcome_name(await sink.store(remises[5])))
        return outcomes

    try:
        dsn = server.start()
        migrate(dsn)
        setup_fleet(dsn)
        with Spool(embedded_state_dir / "spool") as spool:
            outcomes = asyncio.run(scenario(spool))
        with psycopg.connect(dsn) as conn:
            numbers = conn.execute("SELECT remise_number FROM remises ORDER BY 1").fetchall()
            tx_count = conn.execute("SELECT count(*) FROM transactions").fetchone()
    finally:
        server.stop()

    assert outcomes == ["stored", "stored", "spooled", "spooled", "spooled", "spooled",
                        "replayed 3+1", "stored"]
    assert numbers == [(n,) for n in range(1, 7)]
    assert tx_count == (36,)


def test_storage_runtime_on_the_embedded_default_stores_and_stops(
    embedded_state_dir: Path,
) -> None:
    settings = StorageSettings(state_dir=str(embedded_state_dir))

    async def run() -> tuple[str, str, int | None]:
        async with Storage(settings) as storage:
            setup_fleet(storage.dsn)
            first = outcome_name(await storage.sink.store(make_remise(remise_number=1)))
            again = outcome_name(await storage.sink.store(make_remise(remise_number=1)))
            return first, again, storage.embedded.pid if storage.embedded else None

    first, again, pid = asyncio.run(run())

    assert (first, again) == ("stored", "already_stored")
    assert pid is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_storage_runtime_starts_with_the_database_away_and_catches_up(
    embedded_state_dir: Path, empty_db_dsn: str
) -> None:
    down = StorageSettings(dsn="host=127.0.0.1 port=1 user=postgres", connect_timeout_s=1,
                           pool_min_size=0, state_dir=str(embedded_state_dir))
    remise = make_remise(remise_number=7)

    async def outage() -> str:
        async with Storage(down, replay_interval_s=3600) as storage:
            return outcome_name(await storage.sink.store(remise))

    async def back() -> None:
        # The database returns empty: the schema is created before the spool is replayed.
        up = StorageSettings(dsn=empty_db_dsn, state_dir=str(embedded_state_dir))
        async with Storage(up, replay_interval_s=3600) as storage:
            setup_fleet(empty_db_dsn)  # migrated by Storage on entry
            await storage.replay_now()
            assert not storage.spool.has_pending()

    assert asyncio.run(outage()) == "spooled"
    asyncio.run(back())
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("SELECT remise_number, spooled FROM remises").fetchall() == [
            (7, True)
        ]


def test_server_left_by_a_killed_process_is_adopted_and_stopped(
    embedded_state_dir: Path,
) -> None:
    code = (
        "import sys\n"
        "from passerelle.storage.embedded import EmbeddedPostgres\n"
        "server = EmbeddedPostgres(sys.argv[1])\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(embedded_state_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert child.stdout is not None
        postmaster_pid = int(child.stdout.readline())
    finally:
        child.kill()  # SIGKILL: no atexit, the server keeps running
        child.communicate()

    server = EmbeddedPostgres(embedded_state_dir)
    try:
        dsn = server.start()
        assert server.pid == postmaster_pid  # adopted, not a second server
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
    postmaster = psutil.Process(postmaster_pid) if psutil.pid_exists(postmaster_pid) else None
    assert postmaster is None or postmaster.status() == psutil.STATUS_ZOMBIE
