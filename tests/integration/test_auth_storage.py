"""SAF shared by two switchd nodes (exactly once, in order) and the authorization log when
the database is away (spooled, then replayed). Real PostgreSQL, real acquirer sockets."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from passerelle.codecs.iso8583 import Message
from passerelle.codecs.profiles import get_profile
from passerelle.routing import translate
from passerelle.routing.link import AcquirerLink
from passerelle.routing.settings import AcquirerSettings
from passerelle.sim.acquirer import AcquirerSimulator
from passerelle.storage.authlog import AuthLogWriter, AuthRecord
from passerelle.storage.db import StorageSettings, open_pool
from passerelle.storage.pan import PanHmacKey, pan_hmac
from passerelle.storage.saf import AesGcmSealer, SafItem, SafStore
from passerelle.storage.spool import Spool
from tests.integration.auth_helpers import CB2A, auth_request

pytestmark = pytest.mark.integration
DOWN_DSN = "host=127.0.0.1 port=1 user=postgres dbname=postgres"
FAST = StorageSettings(connect_timeout_s=1, pool_min_size=0, pool_max_size=4)


def test_two_nodes_deliver_every_saf_message_once_and_in_order(db_dsn: str) -> None:
    async def scenario() -> None:
        sim = AcquirerSimulator("iso93-binary", 2)
        port = await sim.start()
        acquirer = AcquirerSettings(name="acq-a", host="127.0.0.1", port=port)
        sealer = AesGcmSealer(os.urandom(32))
        pools = [open_pool(db_dsn), open_pool(db_dsn)]
        links = [AcquirerLink(acquirer), AcquirerLink(acquirer)]
        try:
            for pool, link in zip(pools, links, strict=True):
                await pool.open()
                link.start()
                assert await link.wait_up(5)
            stores = [SafStore(pool, sealer) for pool in pools]
            expected = []
            now = datetime.now(UTC)
            for stan in range(1, 121):
                request = Message.parse(auth_request(stan=stan), CB2A)
                wire, _ = translate.to_acquirer(request, acquirer, now)
                kind = "reversal" if stan % 3 else "advice"
                message, key = translate.follow_up(wire, acquirer, kind)
                store = stores[stan % 2]
                assert await store.enqueue("acq-a", kind, "|".join(key), message)
                assert not await store.enqueue("acq-a", kind, "|".join(key), message)
                expected.append((kind, translate.key_of(Message.parse(
                    message, get_profile("iso93-binary")))))

            def sender(link: AcquirerLink):
                async def send(item: SafItem) -> None:
                    request = Message.parse(item.payload, link.profile)
                    key = translate.key_of(request, translate.answer_mti(request.mti))
                    answer = await link.request(item.payload, key, 2.0)
                    assert answer.get(39) == "000"
                return send

            async def node(store: SafStore, link: AcquirerLink) -> int:
                done = 0
                for _ in range(200):
                    done += await store.deliver("acq-a", sender(link), limit=7)
                    if sim.received["advice"].total() + sim.received["reversal"].total() >= 120:
                        break
                    await asyncio.sleep(0.005)
                return done

            counts = await asyncio.gather(*(node(s, lk) for s, lk in
                                            zip(stores, links, strict=True)))
            assert sum(counts) == 120
            assert sim.arrivals == expected  # every message once, in queue order
            assert await stores[0].depth() == {}
        finally:
            for link in links:
                await link.close()
            for pool in pools:
                await pool.close()
            await sim.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_refused_message_backs_off_and_holds_back_the_ones_behind_it(db_dsn: str) -> None:
    async def scenario() -> None:
        async with open_pool(db_dsn) as pool:
            store = SafStore(pool, AesGcmSealer(os.urandom(32)))
            for n in range(3):
                await store.enqueue("acq-b", "advice", f"k{n}", f"message {n}".encode())
            seen: list[str] = []

            async def refuse_first(item: SafItem) -> None:
                seen.append(item.message_key)
                if item.message_key == "k0" and item.attempts < 2:
                    raise RuntimeError("acquirer said 909")

            assert await store.deliver("acq-b", refuse_first, backoff_min=0.01) == 0
            assert seen == ["k0"]
            # Refused again, or still backing off: either way k1 and k2 wait behind k0.
            assert await store.deliver("acq-b", refuse_first, backoff_min=0.01) == 0
            for _ in range(100):
                if await store.deliver("acq-b", refuse_first, backoff_min=0.01):
                    break
                await asyncio.sleep(0.02)
            await store.deliver("acq-b", refuse_first)
            assert seen[-3:] == ["k0", "k1", "k2"] and await store.depth() == {}
        with psycopg.connect(db_dsn) as conn:
            row = conn.execute("SELECT attempts, last_error FROM saf WHERE message_key = 'k0'"
                               ).fetchone()
            stored = conn.execute("SELECT payload_encrypted FROM saf").fetchall()
        assert row == (3, "acquirer said 909")
        assert all(b"message" not in bytes(blob) for (blob,) in stored)  # sealed at rest

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_message_sealed_under_another_key_waits_and_says_why(db_dsn: str) -> None:
    async def scenario() -> None:
        async with open_pool(db_dsn) as pool:
            await SafStore(pool, AesGcmSealer(os.urandom(32))).enqueue(
                "acq-c", "reversal", "k0", b"message")
            store = SafStore(pool, AesGcmSealer(os.urandom(32)))  # the key was lost

            async def send(item: SafItem) -> None:
                raise AssertionError("never reached")

            assert await store.deliver("acq-c", send) == 0
            assert await store.depth() == {"acq-c": 1}
        with psycopg.connect(db_dsn) as conn:
            assert conn.execute("SELECT last_error FROM saf").fetchone() == ("InvalidTag",)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def _record(n: int, *, hashed: bool = True) -> AuthRecord:
    """A row; `hashed=False`: its PAN HMAC is still to be computed by the writer."""
    return AuthRecord(
        at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n), mti="0100",
        terminal_serial="TPE00001", contract_number="1234567", application="CBEMV",
        acquirer="acq-a", stan=f"{n:06d}", rrn=None, amount=n, currency=978,
        pan_masked="497010******7893", pan_hmac=b"h" * 32 if hashed else None,
        pan_hmac_key_version=1 if hashed else None, expiry="3012", response_code="00",
        authorization_number="123456", stand_in=False, latency_ms=3)


def test_authorization_log_spools_while_the_database_is_away(db_dsn: str,
                                                               tmp_path: Path) -> None:
    """Half the records come with their card number: the writer hashes them (batched, off
    the answer's path) before they go anywhere, the spool included."""
    pan = "4970101234567893"

    async def hasher(card: str) -> tuple[bytes, int]:
        return pan_hmac(PanHmacKey(version=3, key=b"k" * 32), card)

    async def scenario() -> None:
        with Spool(tmp_path / "spool") as spool:
            async with open_pool(DOWN_DSN, FAST) as down:
                writer = AuthLogWriter(down, spool, batch=100, flush_interval=0.01,
                                       hasher=hasher)
                writer.start()
                for n in range(1, 451):
                    writer.log(_record(n, hashed=n % 2 == 1), pan if n % 2 == 0 else None)
                await writer.flush(timeout=20)
                await writer.close()
                assert writer.spooled == 450 and writer.written == 0
            journal = b"".join(path.read_bytes() for path in spool.segments())
            assert pan.encode() not in journal
            async with open_pool(db_dsn) as pool:
                writer = AuthLogWriter(pool, spool, batch=100, flush_interval=0.01,
                                       hasher=hasher)
                writer.start()
                for n in range(451, 501):
                    writer.log(_record(n, hashed=n % 2 == 1), pan if n % 2 == 0 else None)
                await writer.flush()
                await writer.replay()  # at once (the writer also replays on its own)
                await writer.close()
            assert spool.pending_records() == 0
        digest, _ = await hasher(pan)
        with psycopg.connect(db_dsn) as conn:
            rows = conn.execute("SELECT amount, pan_hmac, pan_hmac_key_version"
                                " FROM authorizations ORDER BY at").fetchall()
        assert [amount for amount, _, _ in rows] == list(range(1, 501))
        for amount, stored, version in rows:
            expected = (digest, 3) if amount % 2 == 0 else (b"h" * 32, 1)
            assert (bytes(stored), version) == expected

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_directory_serves_cache_then_configuration_while_the_database_is_away(
        db_dsn: str) -> None:
    from passerelle.routing.settings import routing_settings
    from passerelle.switchd.authorization import Directory
    from tests.integration.auth_helpers import setup_directory

    setup_directory(db_dsn, ("TPE00001", "TPE00002"))
    settings = routing_settings({"authorization": {
        "directory_timeout": 0.3, "directory_ttl": 0.01,
        "terminals": [{"terminal_id": "TPE00009", "contract": "999"}]}})

    async def scenario() -> None:
        async with open_pool(db_dsn) as pool:
            directory = Directory(settings, pool)
            assert (await directory.lookup("TPE00001")).contract == "1234567"
            assert await directory.lookup("NOBODY") is None
        async with open_pool(DOWN_DSN, FAST) as down:
            directory.pool = down  # the database goes away
            await asyncio.sleep(0.02)  # past the cache TTL
            started = asyncio.get_running_loop().time()
            assert (await directory.lookup("TPE00001")).contract == "1234567"  # stale cache
            assert (await directory.lookup("TPE00009")).contract == "999"  # configuration
            assert await directory.lookup("TPE00002") is None  # never cached, not configured
            assert asyncio.get_running_loop().time() - started < 1.0

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_writer_that_falls_behind_spools_the_overflow_off_the_loop(db_dsn: str,
                                                                     tmp_path: Path) -> None:
    async def scenario() -> None:
        with Spool(tmp_path / "spool") as spool:
            async with open_pool(db_dsn) as pool:
                writer = AuthLogWriter(pool, spool, max_queue=10, batch=5)
                writer.start()
                for n in range(1, 31):  # no await: the writer cannot run meanwhile
                    writer.log(_record(n))
                await writer.flush()
                assert (writer.written, writer.spooled, writer.dropped) == (10, 10, 10)
                await writer.replay()
                await writer.close()
        with psycopg.connect(db_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM authorizations").fetchone() == (20,)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_services_from_switchd_settings_without_an_hsm(db_dsn: str, tmp_path: Path) -> None:
    from passerelle.config import parse_config
    from passerelle.switchd.authorization import build_from_config

    (tmp_path / "routes.toml").write_text('[[route]]\nacquirers = ["a"]\n')
    config = parse_config({"switchd": {"state_dir": str(tmp_path / "state")}, "routes": {
        "path": str(tmp_path / "routes.toml"),
        "acquirers": [{"name": "a", "host": "127.0.0.1", "port": 9}]}})

    async def scenario() -> None:
        async with open_pool(db_dsn) as pool:
            first = build_from_config(config, registry=None, pool=pool)
            assert first.saf is not None and first.authlog is not None
            await first.saf.enqueue("a", "advice", "k1", b"payload")
            await first.close()
            again = build_from_config(config, registry=None, pool=pool)  # after a restart
            seen: list[bytes] = []

            async def send(item: SafItem) -> None:
                seen.append(item.payload)

            assert again.saf is not None
            assert await again.saf.deliver("a", send) == 1 and seen == [b"payload"]
            await again.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    key = tmp_path / "state" / "saf-data.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state" / "spool-authlog").is_dir()
