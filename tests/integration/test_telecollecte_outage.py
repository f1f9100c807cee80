"""PostgreSQL stops in the middle of 20 concurrent télécollectes: nothing acknowledged is
lost (the spool carries it over), nothing is stored twice.

The database is a private embedded PostgreSQL started and stopped by this test, never the
machine's server.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest

from passerelle.sim.telecollecte import FileResult, dial, generate_batches, telecollecte
from passerelle.storage.embedded import EmbeddedPostgres
from passerelle.storage.migrate import migrate
from passerelle.storage.spool import outcome_name
from tests.integration.storage_helpers import setup_fleet
from tests.integration.telecollecte_helpers import (
    assert_stored_as_sent,
    card_numbers_in,
    pki_in,
    port,
    running_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
TERMINALS = 20
STOP_AFTER = 8  # remises stored before PostgreSQL goes away
RESTART_AFTER = 12  # remises spooled before it comes back


def _restart(server: EmbeddedPostgres, timeout: float = 30.0) -> None:
    """Start the server again once the stopped postmaster has really exited (its pid file
    gone): attaching to a postmaster still shutting down would fail."""
    deadline = time.monotonic() + timeout
    pid_file = server.pgdata / "postmaster.pid"
    while pid_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pid_file} still there after {timeout} s")
        time.sleep(0.05)
    server.start()


def test_postgres_stopped_mid_run_loses_nothing_acknowledged(
        embedded_state_dir: Path, tmp_path: Path) -> None:
    server = EmbeddedPostgres(embedded_state_dir)
    dsn = server.start()
    try:
        migrate(dsn)
        setup_fleet(dsn, terminals=TERMINALS)
        rng = random.Random(7)
        fleet = [generate_batches(rng, f"TPE{n:04d}", "1234567", "CBEMV", days=3,
                                  per_day=(10, 30)) for n in range(TERMINALS)]
        pki = pki_in(tmp_path)
        outcomes: list[str] = []
        down = asyncio.Event()
        journal: list[bytes] = []  # the spool as it was while PostgreSQL was away

        async def scenario() -> list[FileResult]:
            async with running_gateway(dsn, tmp_path / "state", pki) as gateway:
                assert gateway.storage is not None
                sink = gateway.storage.sink
                real_store = sink.store

                async def store(remise: Any) -> Any:
                    outcome = await real_store(remise)
                    outcomes.append(outcome_name(outcome))
                    if outcomes.count("stored") == STOP_AFTER and not down.is_set():
                        down.set()
                        await asyncio.to_thread(server.stop)  # mid-run, connections open
                    elif outcomes.count("spooled") == RESTART_AFTER:
                        journal.extend(p.read_bytes() for p in
                                       (tmp_path / "state" / "spool").glob("journal-*"))
                        await asyncio.to_thread(_restart, server)
                    return outcome

                sink.store = store  # type: ignore[method-assign]
                results = await asyncio.gather(*(
                    telecollecte(lambda: dial("cbcom", "127.0.0.1", port(gateway, "cbcom")),
                                 batches, window=4) for batches in fleet))
                if server.dsn is None:  # every remise went by before the threshold
                    await asyncio.to_thread(_restart, server)
                for _ in range(50):  # each pass is a real replay; the pool reconnects
                    await gateway.storage.replay_now()
                    if not await asyncio.to_thread(gateway.storage.spool.has_pending):
                        break
                assert not gateway.storage.spool.has_pending()
                assert gateway.daemon is not None
                metrics = generate_latest(gateway.daemon.metrics.registry).decode()
                assert 'telecollecte_remises_total{outcome="spooled"}' in metrics
                assert "storage_spool_pending_bytes 0.0" in metrics
            return [r for rs in results for r in rs]

        results = asyncio.run(scenario())
        assert all(r.code == "00" for r in results), [r.code for r in results]
        assert down.is_set() and "spooled" in outcomes and "stored" in outcomes
        batches = [b for batches in fleet for b in batches]
        with psycopg.connect(dsn) as conn:
            keys = conn.execute("SELECT terminal_serial, remise_number, spooled FROM remises"
                                ).fetchall()
            duplicates = conn.execute("SELECT count(*) FROM (SELECT remise_id, seq FROM"
                                      " transactions GROUP BY 1, 2 HAVING count(*) > 1) d"
                                      ).fetchone()
        assert sorted((t, n) for t, n, _ in keys) == sorted(
            (b.terminal, b.remise_number) for b in batches)
        assert duplicates == (0,)
        assert any(spooled for _, _, spooled in keys)  # some went through the spool
        assert_stored_as_sent(dsn, batches)
        spooled_text = b"".join(journal).decode("latin-1")
        assert "497010" in spooled_text or "513100" in spooled_text  # masked PANs only
        assert card_numbers_in(spooled_text, batches) == []
    finally:
        server.stop()
