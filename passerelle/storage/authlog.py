"""The authorization log: every online authorization, written in batches off the hot path.

The dialogue calls `log()`, which only appends to a bounded in-memory queue. One task
drains the queue in batches with COPY (one round trip per batch). A record may come with
its card number for the keyed PAN HMAC (`hasher`: the HSM, or the configured key): the
digests of the records logged in one event-loop iteration are computed together, in one
task, right after it (so with the key version current when the terminal was answered), and
only then is the record queued: the terminal's answer never waits for them and the card
number never reaches the database or the spool; a digest that cannot be had (HSM away)
leaves the row without one. When
PostgreSQL is away the batch goes to the fsynced spool journal instead (one record per
batch) and is replayed in order, one segment per transaction, when the database answers
again. A full queue (the writer fell behind by `max_queue` records) sends the overflow to
the spool rather than drop it or block the terminal. Rows hold the masked PAN and its keyed
HMAC, never the PAN.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from passerelle.storage.db import DatabaseUnavailable, StorageError
from passerelle.storage.spool import KIND_AUTHORIZATION, Spool

log = structlog.get_logger("passerelle.storage")

_COLUMNS = ("at", "mti", "terminal_serial", "contract_number", "application", "acquirer",
            "stan", "rrn", "amount", "currency", "pan_masked", "pan_hmac",
            "pan_hmac_key_version", "expiry", "response_code", "authorization_number",
            "stand_in", "latency_ms", "error", "acquirer_time")
_COPY = f"COPY authorizations ({', '.join(_COLUMNS)}) FROM STDIN"


class AuthRecord(msgspec.Struct, array_like=True, frozen=True):
    """One row of `authorizations` (the column order of `_COLUMNS`)."""

    at: datetime
    mti: str
    terminal_serial: str | None
    contract_number: str | None
    application: str | None
    acquirer: str | None
    stan: str | None
    rrn: str | None
    amount: int | None
    currency: int | None
    pan_masked: str | None
    pan_hmac: bytes | None
    pan_hmac_key_version: int | None
    expiry: str | None
    response_code: str | None
    authorization_number: str | None
    stand_in: bool
    latency_ms: int | None
    error: str | None = None
    # The time part of the acquirer request's key (migration 0009): what a reversal of
    # this authorization must name. Last, so records spooled before it still decode.
    acquirer_time: str | None = None


APPROVED = ("00", "08", "10", "11")
AUTHORIZATION_MTIS = ("0100", "0101", "0200", "0201")


class Approval(msgspec.Struct, frozen=True):
    """What the log knows of an approval that a terminal may reverse."""

    mti: str
    acquirer: str
    acquirer_time: str | None
    stand_in: bool
    authorization_number: str | None


async def find_approval(pool: AsyncConnectionPool, terminal: str, stan: str, *,
                        within_hours: int = 48) -> Approval | None:
    """The newest approval of (terminal, STAN) logged in the last `within_hours`, by any node.

    A STAN comes round again after 999,999 messages of one terminal, so only recent rows
    can be the one a reversal names (a terminal reverses within minutes; 48 h is our margin).
    Raises StorageError when the database cannot answer.
    """
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT mti, acquirer, acquirer_time, stand_in, authorization_number"
                " FROM authorizations WHERE terminal_serial = %s AND stan = %s"
                " AND at > now() - make_interval(hours => %s) AND acquirer IS NOT NULL"
                " AND response_code = ANY(%s) AND mti = ANY(%s) ORDER BY at DESC LIMIT 1",
                (terminal, stan, within_hours, list(APPROVED), list(AUTHORIZATION_MTIS)))
            row = await cursor.fetchone()
    except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
        raise DatabaseUnavailable(f"finding an approval: {error}") from error
    except psycopg.Error as error:
        raise StorageError(f"finding an approval: {error}") from error
    except Exception as error:  # psycopg_pool.PoolTimeout and friends
        raise DatabaseUnavailable(f"finding an approval: {error}") from error
    return Approval(row[0], row[1], row[2] or None, bool(row[3]), row[4]) if row else None


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[AuthRecord])
# PAN -> (digest, key version): the HSM's `pan_hmac`, or the configured key's.
Hasher = Callable[[str], Awaitable[tuple[bytes, int]]]


class AuthLogWriter:
    """`log()` from the dialogue; `run()` as a task; `flush()` / `close()` at the end."""

    def __init__(self, pool: AsyncConnectionPool | None, spool: Spool | None, *,
                 max_queue: int = 10_000, batch: int = 500, flush_interval: float = 0.2,
                 replay_interval: float = 5.0,
                 on_spooled: Callable[[int], None] | None = None,
                 hasher: Hasher | None = None) -> None:
        self.pool = pool
        self.spool = spool
        self.max_queue = max_queue
        self.batch = batch
        self.flush_interval = flush_interval
        self.replay_interval = replay_interval
        self.on_spooled = on_spooled
        self.hasher = hasher
        self._queue: deque[AuthRecord] = deque()
        self._overflow: list[AuthRecord] = []
        self._unhashed: list[tuple[AuthRecord, str]] = []  # logged this loop iteration
        self._hashing: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._database_down = pool is None
        self._replay_lock = asyncio.Lock()  # two replays would store a segment twice
        self.written = 0
        self.spooled = 0

    def log(self, record: AuthRecord, pan: str | None = None) -> None:
        """Queue one record; never waits for I/O. With `pan` (and a `hasher`), its
        `pan_hmac` and key version are filled in first, in the background, batched.

        Past `max_queue` records the overflow is set aside for the spool (written by the
        writer task, off the loop); past twice that, records are counted as `dropped`.
        """
        if pan is not None and self.hasher is not None:
            if not self._unhashed:
                asyncio.get_running_loop().call_soon(self._hash_batch)
            self._unhashed.append((record, pan))
            self._idle.clear()
            return
        self._queue_record(record)

    def _queue_record(self, record: AuthRecord) -> None:
        if len(self._queue) >= self.max_queue:
            if len(self._overflow) >= self.max_queue:
                self.dropped += 1
                return
            self._overflow.append(record)
            self._idle.clear()
            self._wake.set()
            return
        self._queue.append(record)
        self._idle.clear()
        if len(self._queue) >= self.batch:
            self._wake.set()

    def _hash_batch(self) -> None:
        batch, self._unhashed = self._unhashed, []
        task = asyncio.get_running_loop().create_task(self._hash(batch))
        self._hashing.add(task)
        task.add_done_callback(self._hashing.discard)

    async def _hash(self, batch: list[tuple[AuthRecord, str]]) -> None:
        """The batch's digests together, then its records queued (kept without a digest if
        the hasher fails: the HSM away must not lose the rows)."""
        assert self.hasher is not None
        digests = await asyncio.gather(*(self.hasher(pan) for _, pan in batch),
                                       return_exceptions=True)
        failed: BaseException | None = None
        for (record, _), found in zip(batch, digests, strict=True):
            if isinstance(found, BaseException):
                failed = found
                self._queue_record(record)
            else:
                self._queue_record(msgspec.structs.replace(
                    record, pan_hmac=found[0], pan_hmac_key_version=found[1]))
        if failed is not None:
            log.warning("authlog.pan_hmac_failed", error=type(failed).__name__)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="authlog-writer")

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every record logged so far is stored or spooled."""
        self._wake.set()
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_replay = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._overflow:
                overflow, self._overflow = self._overflow, []
                await asyncio.to_thread(self._to_spool, overflow)
            while self._queue:
                count = min(len(self._queue), self.batch)
                rows = [self._queue.popleft() for _ in range(count)]
                await self._store(rows)
            if not self._unhashed and not self._hashing:  # else their rows are still to come
                self._idle.set()
            if self.spool is not None and self.pool is not None and loop.time() >= next_replay:
                next_replay = loop.time() + self.replay_interval
                await self.replay()

    async def _store(self, rows: list[AuthRecord]) -> None:
        if self.pool is not None and not self._database_down:
            try:
                await self._copy(rows)
                self.written += len(rows)
                return
            except StorageError as error:
                self._database_down = True
                log.warning("authlog.database_away", error=str(error), rows=len(rows))
        await asyncio.to_thread(self._to_spool, rows)

    def _to_spool(self, rows: list[AuthRecord]) -> None:
        if self.spool is None:
            log.error("authlog.lost", rows=len(rows), reason="no database and no spool")
            return
        self.spool.append(KIND_AUTHORIZATION, _ENCODER.encode(rows))
        self.spooled += len(rows)
        if self.on_spooled is not None:
            self.on_spooled(len(rows))

    async def _copy(self, rows: list[AuthRecord]) -> None:
        assert self.pool is not None
        try:
            async with (self.pool.connection() as conn, conn.cursor() as cursor,
                        cursor.copy(_COPY) as copy):
                for row in rows:
                    await copy.write_row(msgspec.structs.astuple(row))
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
            raise DatabaseUnavailable(f"authorization log: {error}") from error
        except psycopg.Error as error:
            raise StorageError(f"authorization log: {error}") from error
        except Exception as error:  # psycopg_pool.PoolTimeout and friends
            raise DatabaseUnavailable(f"authorization log: {error}") from error

    async def replay(self) -> int:
        """Store spooled batches, oldest first, one segment per transaction; rows stored."""
        if self.spool is None or self.pool is None:
            return 0
        async with self._replay_lock:
            return await self._replay()

    async def _replay(self) -> int:
        assert self.spool is not None
        stored = 0
        for segment in await asyncio.to_thread(self.spool.seal):
            parsed = await asyncio.to_thread(self.spool.read, segment)
            rows: list[AuthRecord] = []
            for record in parsed.records:
                if record.kind == KIND_AUTHORIZATION:
                    rows.extend(_DECODER.decode(record.payload))
            try:
                await self._copy(rows)
            except StorageError as error:
                self._database_down = True
                log.info("authlog.replay_deferred", error=str(error))
                return stored
            await asyncio.to_thread(self.spool.remove, segment)
            stored += len(rows)
        self._database_down = False
        if stored:
            log.info("authlog.replayed", rows=stored)
        return stored
