"""Authorization under load with faults: acquirers killed and restarted, stray answers on
the wire, the route table reloaded mid-flight. Real sockets and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from passerelle.sim.acquirer import Rules
from passerelle.sim.terminal import Terminal
from tests.integration.auth_helpers import (
    Stack,
    answer_of,
    auth_request,
    auth_stack,
    setup_directory,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")
TERMINALS = tuple(f"TPE{n:05d}" for n in range(16))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))


async def _until(condition: Any, timeout: float = 10.0) -> None:
    """Poll state driven by real sockets, bounded in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _terminal(stack: Stack, terminal: str, amounts: list[int],
                    results: list[tuple[int, Any, float]], pause: asyncio.Event | None = None
                    ) -> None:
    async with await Terminal.dial_cbcom("127.0.0.1", stack.port) as tpe:
        for stan, amount in enumerate(amounts, 1):
            if pause is not None:
                await pause.wait()
            started = time.monotonic()
            data = await tpe.exchange(auth_request(stan=stan, amount=amount, terminal=terminal))
            results.append((amount, answer_of(data), time.monotonic() - started))


def test_acquirers_killed_under_load(tmp_path: Path, db_dsn: str) -> None:
    """Every terminal is answered before its deadline; stand-in only under the floor limit;
    after the acquirers return, every advice and reversal is delivered exactly once."""
    setup_directory(db_dsn, TERMINALS)
    deadline = 1.0

    async def scenario() -> None:
        rng = random.Random(5)
        async with auth_stack(tmp_path, dsn=db_dsn, deadline=deadline) as stack:
            results: list[tuple[int, Any, float]] = []
            amounts = {t: [rng.randrange(100, 6000) for _ in range(25)] for t in TERMINALS}
            load = [asyncio.create_task(_terminal(stack, t, amounts[t], results))
                    for t in TERMINALS]
            await _until(lambda: len(results) >= 80)
            for sim in stack.sims.values():
                await sim.stop()  # both acquirers crash with requests in flight
            await _until(lambda: len(results) >= 250)
            for sim in stack.sims.values():
                await sim.start()  # ...and come back on the same ports
            await asyncio.gather(*load)
            total = len(TERMINALS) * 25
            assert len(results) == total
            assert max(elapsed for _, _, elapsed in results) < deadline
            codes = [answer.get(39) for _, answer, _ in results]
            assert set(codes) <= {"00", "91"}
            stand_ins = [(amount, answer) for amount, answer, _ in results
                         if answer.get(39) == "00" and answer.get(38).startswith("S")]
            assert stand_ins, "the outage produced no stand-in"
            assert all(amount <= 3000 for amount, _ in stand_ins)
            assert all(amount > 3000 for amount, answer, _ in results
                       if answer.get(39) == "91")
            await _until(lambda: stack.sims["acq-a"].received["advice"].total()
                         >= len(stand_ins), timeout=20)
            with psycopg.connect(db_dsn) as conn:
                await _until(lambda: conn.execute(
                    "SELECT count(*) FROM saf WHERE delivered_at IS NULL").fetchone()[0] == 0,
                    timeout=20)
                queued = dict(conn.execute(
                    "SELECT kind, count(*) FROM saf GROUP BY kind").fetchall())
            received = {kind: sum(sim.received[kind].total() for sim in stack.sims.values())
                        for kind in ("advice", "reversal")}
            assert queued.get("advice", 0) == len(stand_ins) == received["advice"]
            assert queued.get("reversal", 0) == received["reversal"]
            for sim in stack.sims.values():
                for kind in ("advice", "reversal"):
                    assert set(sim.received[kind].values()) <= {1}  # once per key
            await stack.services.authlog.flush()
        with psycopg.connect(db_dsn) as conn:
            logged = conn.execute("SELECT count(*), count(*) FILTER (WHERE stand_in)"
                                  " FROM authorizations").fetchone()
        assert logged == (total, len(stand_ins))

    run(scenario())


@pytest.mark.parametrize("with_close", [False, True])
def test_strays_on_the_wire_never_shift_correlation(tmp_path: Path, with_close: bool) -> None:
    """Late, doubled and garbage answers (and, in the second run, connections closed
    mid-flight) interleaved with normal traffic: each terminal gets the decision made
    for its own request."""

    async def scenario() -> None:
        faults = {7001: "twice", 7002: "garbage", 7003: "delay", 7004: "drop", 7005: "close"}
        rules = {"acq-a": Rules(decline_above=5000, faults=faults, fault_delay=0.3),
                 "acq-b": Rules(decline_above=5000)}
        async with auth_stack(tmp_path, rules=rules, deadline=1.0, terminals=TERMINALS,
                              acquirer_extra={"response_timeout": 0.25}) as stack:
            rng = random.Random(11)
            results: list[tuple[int, Any, float]] = []
            amounts = [1200, 5200, 7001, 7002, 7003, 7004, 900] + ([7005] if with_close else [])
            plan = {t: [rng.choice(amounts) for _ in range(20)] for t in TERMINALS[:8]}
            await asyncio.gather(*(_terminal(stack, t, a, results) for t, a in plan.items()))
            assert len(results) == 160
            for amount, answer, _ in results:
                expected = "00" if amount in (900, 1200) else "51"
                # faulty ones fail over to acq-b, which declines above 5000 too
                assert answer.get(39) == expected, (amount, answer)
            approvals = [a.get(38) for _, a, _ in results if a.get(39) == "00"]
            assert len(approvals) == len(set(approvals))
            strays = stack.services.links["acq-a"].mux.strays
            if not with_close:  # (closed links send many requests to acq-b instead)
                assert strays["duplicate"] > 0 and strays["late"] > 0, strays

    run(scenario())


def test_route_reload_under_load_loses_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with auth_stack(tmp_path, routes='[[route]]\nacquirers = ["acq-a"]\n',
                              terminals=TERMINALS) as stack:
            results: list[tuple[int, Any, float]] = []
            load = [asyncio.create_task(_terminal(stack, t, [1000] * 30, results))
                    for t in TERMINALS[:8]]
            reloads = 0
            while not all(task.done() for task in load) and reloads < 200:
                target = "acq-b" if reloads % 2 == 0 else "acq-a"
                stack.routes.write_text(f'[[route]]\nacquirers = ["{target}"]\n')
                assert stack.services.reload_routes()
                reloads += 1
                await asyncio.sleep(0.01)
            await asyncio.gather(*load)
            assert len(results) == 240
            assert all(answer.get(39) == "00" for _, answer, _ in results)
            served = stack.sims["acq-a"].approved + stack.sims["acq-b"].approved
            assert served == 240 and reloads > 2
            assert stack.sims["acq-a"].approved and stack.sims["acq-b"].approved

    run(scenario())
