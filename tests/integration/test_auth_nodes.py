"""Two switchd nodes on one PostgreSQL: a terminal's reversal reaching the node that did not
approve its 0100 still reaches the acquirer, once, naming the right original."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from passerelle.codecs.iso8583 import Message, encode
from passerelle.sim.acquirer import AcquirerSimulator, Rules
from passerelle.sim.terminal import Terminal
from tests.integration.auth_helpers import (
    CB2A,
    PAN,
    TERMINAL,
    answer_of,
    auth_request,
    auth_stack,
    setup_directory,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")
WHEN = "0124163700"  # the 0100s' local date/time (13 + 12)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _ask(port: int, *requests: bytes) -> list[Message]:
    async with await Terminal.dial_cbcom("127.0.0.1", port) as tpe:
        return [answer_of(await tpe.exchange(request)) for request in requests]


def _reversal_of(original: bytes, stan: int) -> bytes:
    """The terminal's 0400: the 0100's card and amounts, its own STAN, 90 naming the 0100."""
    values = Message.parse(original, CB2A).to_dict()
    values[11] = f"{stan + 500:06d}"
    values[90] = f"0100{stan:06d}{WHEN}" + "0" * 22
    for number in (35, 55, 59):
        values.pop(number, None)
    return encode(CB2A, "0400", values)


async def _until(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not condition():
        if loop.time() > give_up:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_a_reversal_through_the_other_node_reaches_the_acquirer_once(tmp_path: Path,
                                                                      db_dsn: str) -> None:
    setup_directory(db_dsn)

    async def scenario() -> None:
        sims = {"acq-a": AcquirerSimulator("iso93-binary", 2, Rules()),
                "acq-b": AcquirerSimulator("iso93-binary", 2, Rules(), first_approval=500001)}
        for sim in sims.values():
            await sim.start()
        key = os.urandom(32)  # one SAF data key for the deployment
        for node in ("a", "b"):
            (tmp_path / node).mkdir()
        try:
            # Node A logs in 1 s batches: B asks the log before A's row is there.
            async with auth_stack(tmp_path / "a", dsn=db_dsn, shared_sims=sims, saf_key=key,
                                  flush_interval=1.0) as node_a, \
                    auth_stack(tmp_path / "b", dsn=db_dsn, shared_sims=sims,
                               saf_key=key) as node_b:
                first, second = auth_request(stan=5, amount=4200), auth_request(stan=6)
                approvals = await _ask(node_a.port, first, second)
                assert [a.get(39) for a in approvals] == ["00", "00"]
                # 5: reversed through B only, and repeated; 6: through B, then A.
                answers = await _ask(node_b.port, _reversal_of(first, 5),
                                     _reversal_of(first, 5), _reversal_of(second, 6))
                answers += await _ask(node_a.port, _reversal_of(second, 6))
                assert [(a.mti, a.get(39)) for a in answers] == [("0410", "00")] * 4
                with psycopg.connect(db_dsn, autocommit=True) as conn:
                    await _until(lambda: conn.execute(
                        "SELECT count(*) FROM saf WHERE delivered_at IS NOT NULL"
                    ).fetchone()[0] == 2)
                    await _until(lambda: not node_a.services.background
                                 and not node_b.services.background)
                    await asyncio.sleep(0.3)  # SAF rounds of both nodes after the last lookup
                    assert conn.execute("SELECT count(*) FROM saf").fetchone()[0] == 2
        finally:
            for sim in sims.values():
                await sim.stop()
        reversals = sims["acq-a"].follow_ups
        assert sims["acq-b"].follow_ups == []
        assert sorted(m.get(11) for m in reversals) == ["000005", "000006"]
        year = f"{datetime.now(UTC).year % 100:02d}"
        for message in reversals:
            stan = message.get(11)
            assert message.mti == "1420" and message.get(41) == TERMINAL
            assert message.get(56) == f"1100{stan}{year}{WHEN}"  # names its original
            assert message.get(12) == year + WHEN and message.get(2) == PAN
            assert message.get(4) == ("000000004200" if stan == "000005" else "000000001500")

    run(scenario())
