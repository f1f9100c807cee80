"""Télécollecte end to end: simulated terminals, real sockets, real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import psycopg
import pytest

from passerelle.sim.telecollecte import (
    Faults,
    answer_code,
    dial,
    end_message,
    generate_batches,
    header_message,
    sign_on_message,
    telecollecte,
    transaction_message,
)
from tests.integration.storage_helpers import setup_fleet
from tests.integration.telecollecte_helpers import (
    LISTENERS,
    assert_stored_as_sent,
    pki_in,
    port,
    running_gateway,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
APPS = ("CBEMV", "CBCLESS", "AMEX", "CONECS")


def _remises(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT terminal_serial, application, remise_number, file_number, status,"
            " transaction_count, purchases_count, purchases_amount, refunds_count,"
            " refunds_amount, cancellations_count, cancellations_amount,"
            " unauthorized_count, unauthorized_amount, is_correct FROM remises"
            " ORDER BY terminal_serial, application, remise_number").fetchall()


@pytest.mark.parametrize("listener", LISTENERS)
def test_full_telecollecte_stores_what_the_terminal_sent(
        listener: str, db_dsn: str, tmp_path: Path) -> None:
    setup_fleet(db_dsn, terminals=1, applications=APPS)
    pki = pki_in(tmp_path)
    rng = random.Random(listener)
    batches = [b for app in APPS
               for b in generate_batches(rng, "TPE0000", "1234567", app, days=2,
                                         per_day=(0, 30), first_remise=10)]
    batches[0].transactions.clear()  # an empty remise is stored too: it proves the call

    async def scenario() -> list[object]:
        async with running_gateway(db_dsn, tmp_path / "state", pki) as gateway:
            tls = pki.client_context()
            return await telecollecte(
                lambda: dial(listener, "127.0.0.1", port(gateway, listener), tls=tls),
                batches, window=7)

    results = asyncio.run(scenario())

    assert [r.code for r in results] == ["00"] * len(batches)  # type: ignore[attr-defined]
    assert all(r.attempts == 1 for r in results)  # type: ignore[attr-defined]
    remises = _remises(db_dsn)
    assert len(remises) == len(batches)
    for batch in batches:
        totals = batch.totals()
        row = next(r for r in remises if r[1] == batch.application
                   and r[2] == batch.remise_number)
        assert row[4] == "REMISE CORRECTE" and row[14] is True
        assert row[3] == batch.file_number
        assert row[5] == len(batch.transactions)
        assert row[6:14] == tuple(totals[k] for k in (
            "purchases_count", "purchases_amount", "refunds_count", "refunds_amount",
            "cancellations_count", "cancellations_amount", "unauthorized_count",
            "unauthorized_amount"))
    assert_stored_as_sent(db_dsn, batches)


def test_a_repeated_batch_after_a_lost_0516_is_stored_once(db_dsn: str, tmp_path: Path
                                                           ) -> None:
    setup_fleet(db_dsn, terminals=1)
    pki = pki_in(tmp_path)
    batches = generate_batches(random.Random(2), "TPE0000", "1234567", "CBEMV", days=2)

    async def scenario() -> list[object]:
        async with running_gateway(db_dsn, tmp_path / "state", pki) as gateway:
            return await telecollecte(
                lambda: dial("cbcom", "127.0.0.1", port(gateway, "cbcom")), batches,
                faults=Faults(lose_0516=2))

    results = asyncio.run(scenario())

    # the first two 0516 are lost: the first batch is sent three times, stored once
    assert [(r.code, r.attempts) for r in results] == [("00", 3), ("00", 1)]  # type: ignore[attr-defined]
    remises = _remises(db_dsn)
    assert [(r[2], r[5]) for r in remises] == [
        (b.remise_number, len(b.transactions)) for b in batches]
    assert_stored_as_sent(db_dsn, batches)


def test_a_stop_waits_for_the_file_in_flight_then_ends_the_session(
        db_dsn: str, tmp_path: Path) -> None:
    setup_fleet(db_dsn, terminals=1)
    pki = pki_in(tmp_path)
    batch = generate_batches(random.Random(3), "TPE0000", "1234567", "CBEMV", days=1,
                             per_day=(12, 12))[0]

    async def scenario() -> tuple[str | None, bool]:
        async with running_gateway(db_dsn, tmp_path / "state", pki) as gateway:
            assert gateway.daemon is not None
            async with await dial("cbcom", "127.0.0.1", port(gateway, "cbcom")) as tpe:
                await tpe.exchange(sign_on_message(batch.terminal, batch.contract))
                await tpe.exchange(header_message(batch, 4))
                for number, tx in enumerate(batch.transactions[:4], 1):
                    tpe.send(transaction_message(batch, number, tx))
                await tpe.receive()
                # SIGTERM now: the terminal owes us the rest of the file, so we wait.
                stopping = asyncio.create_task(gateway.daemon.stop())
                for number, tx in enumerate(batch.transactions[4:], 5):
                    tpe.send(transaction_message(batch, number, tx))
                    if number % 4 == 0:
                        await tpe.receive()
                code = answer_code(await tpe.exchange(end_message(batch)))[1]
                await stopping
                await tpe.wait_closed()
                return code, tpe.aborted is not None

    code, aborted = asyncio.run(scenario())

    assert (code, aborted) == ("00", True)  # 0516, then AB: switchd stopping
    assert _remises(db_dsn)[0][2] == batch.remise_number


def test_a_terminal_that_hangs_up_mid_file_sends_it_again_and_it_is_stored_once(
        db_dsn: str, tmp_path: Path) -> None:
    setup_fleet(db_dsn, terminals=1)
    pki = pki_in(tmp_path)
    batches = generate_batches(random.Random(4), "TPE0000", "1234567", "CBEMV", days=1,
                               per_day=(20, 20))

    async def scenario() -> list[object]:
        async with running_gateway(db_dsn, tmp_path / "state", pki) as gateway:
            return await telecollecte(
                lambda: dial("xot", "127.0.0.1", port(gateway, "xot")), batches, window=4,
                faults=Faults(disconnect_after=9))

    results = asyncio.run(scenario())

    assert [(r.code, r.attempts) for r in results] == [("00", 2)]  # type: ignore[attr-defined]
    assert [(r[2], r[5]) for r in _remises(db_dsn)] == [(batches[0].remise_number, 20)]
    assert_stored_as_sent(db_dsn, batches)
