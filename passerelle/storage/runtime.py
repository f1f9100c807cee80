"""Storage as switchd runs it: one object that opens everything, and closes it on exit.

`async with Storage(settings) as storage:` resolves the database (the configured DSN, or the
embedded server of the state directory), migrates the schema, opens the connection pool and
the spools, and keeps replaying the remise spool in the background. `storage.authlog_spool`
is the authorization log's own journal, for `storage.authlog.AuthLogWriter`. The
télécollecte dialogue then only calls `await storage.sink.store(remise)` and answers 0516
when it returns.

PostgreSQL being away at start is not fatal: remises are spooled, and the schema is migrated
before the first replay once the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from passerelle.storage.db import DatabaseUnavailable, StorageSettings, open_pool
from passerelle.storage.embedded import EmbeddedPostgres
from passerelle.storage.migrate import migrate
from passerelle.storage.remises import RemiseWriter
from passerelle.storage.spool import RemiseSink, Spool

log = structlog.get_logger("passerelle.storage")


class Storage:
    """Pool, writer, spool and sink of one switchd process (see the module docstring)."""

    def __init__(self, settings: StorageSettings, *, replay_interval_s: float = 5.0) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.replay_interval_s = replay_interval_s
        self.embedded: EmbeddedPostgres | None = None
        self.dsn = settings.dsn or ""
        self._schema_ready = False
        self._replayer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Storage:
        async with contextlib.AsyncExitStack() as stack:
            if not self.settings.dsn:
                self.embedded = EmbeddedPostgres(self.state_dir)
                self.dsn = await asyncio.to_thread(self.embedded.start)
                stack.push_async_callback(asyncio.to_thread, self.embedded.stop)
            await self.ensure_schema()
            self.pool = await stack.enter_async_context(open_pool(self.dsn, self.settings))
            self.spool = stack.enter_context(Spool(self.state_dir / "spool"))
            # The authorization log has its own journal and replayer (storage.authlog): a
            # replayer removes the segments it has read, so two must never share one.
            self.authlog_spool = stack.enter_context(
                Spool(self.state_dir / "spool-authorizations")
            )
            self.writer = RemiseWriter(self.pool)
            self.sink = RemiseSink(self.writer, self.spool)
            self._replayer = asyncio.create_task(self._replay_forever(), name="spool-replay")
            stack.push_async_callback(self._stop_replayer)
            self._resources = stack.pop_all()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._resources.aclose()

    async def _stop_replayer(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer

    async def ensure_schema(self) -> bool:
        """Migrate once; False (and a log line) while the database is unreachable."""
        if not self._schema_ready:
            try:
                await asyncio.to_thread(migrate, self.dsn)
            except DatabaseUnavailable as exc:
                log.warning("storage.migrate_deferred", error=str(exc))
                return False
            self._schema_ready = True
        return True

    async def replay_now(self) -> None:
        """One replay pass, if anything is spooled and the schema is in place. A pass the
        database cut short migrates again before the next: a database back from a restore
        older than a migration (the writer's claim function of 0008 missing: unavailable,
        not a bad remise) is brought up to date instead of waiting for a restart."""
        if (await asyncio.to_thread(self.spool.has_pending) and await self.ensure_schema()
                and not (await self.sink.replay()).finished):
            self._schema_ready = False

    async def _replay_forever(self) -> None:
        while True:
            try:
                await self.replay_now()
            except Exception as exc:  # keep the replayer alive; the next pass retries
                log.error("spool.replay_failed", error=str(exc))
            await asyncio.sleep(self.replay_interval_s)
