"""The MUX keeps every request's answer its own, whatever strays arrive in between.

Thousands of random interleavings of requests, answers in any order, late answers (after
the requester gave up), duplicate answers, answers for keys nobody sent, and reversals
sharing their original's terminal/STAN/time: each request must get exactly its answer.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from passerelle.routing.errors import LinkBusy, LinkDown, LinkTimeout
from passerelle.routing.mux import DuplicateKey, Mux


def _key(mti: str, terminal: int, stan: int) -> tuple[str, str, str, str]:
    return (mti, f"T{terminal:07d}", f"{stan:06d}", "0124163700")


async def _interleaving(seed: int, requests: int = 60) -> dict[str, int]:
    rng = random.Random(seed)
    mux = Mux(window=requests)
    waiting: dict[tuple[str, str, str, str], asyncio.Future[object]] = {}
    given_up: set[tuple[str, str, str, str]] = set()
    answered: set[tuple[str, str, str, str]] = set()
    for index in range(requests):
        # A reversal (1430) shares terminal, STAN and time with its original (1110).
        mti = "1430" if index % 7 == 3 else "1110"
        key = _key(mti, rng.randrange(4), index // 2)
        if key in waiting:  # a terminal repeating a request still in flight
            with pytest.raises(DuplicateKey):
                mux.expect(key)
            continue
        waiting[key] = mux.expect(key)
    events: list[tuple[str, tuple[str, str, str, str]]] = []
    for key in waiting:
        events.append(("answer", key))
        if rng.random() < 0.2:
            events.append(("duplicate", key))
        if rng.random() < 0.15:
            events.append(("give_up", key))
    for _ in range(requests // 4):
        events.append(("unknown", _key(rng.choice(["1110", "1430", "1814"]),
                                       rng.randrange(4, 8), rng.randrange(10**6))))
    rng.shuffle(events)
    for kind, key in events:
        if kind == "give_up" and key not in answered:
            mux.abandon(key)
            given_up.add(key)
        elif kind in ("answer", "duplicate", "unknown"):
            outcome = mux.deliver(key, ("answer-for", key))
            if key in waiting and key not in answered and key not in given_up:
                assert outcome == "matched"
                answered.add(key)
            elif key in given_up:
                assert outcome == "late"
            elif key in answered:
                assert outcome == "duplicate"
            else:
                assert outcome == "unknown"
    for key, future in waiting.items():
        if key in given_up:
            assert future.cancelled()
        else:
            assert future.result() == ("answer-for", key)
    assert len(mux) == 0
    return mux.strays


def test_thousands_of_interleavings_keep_every_answer_with_its_request() -> None:
    async def main() -> dict[str, int]:
        totals = {"late": 0, "duplicate": 0, "unknown": 0}
        for seed in range(2000):
            for kind, count in (await _interleaving(seed)).items():
                totals[kind] += count
        return totals

    totals = asyncio.run(main())
    assert all(count > 100 for count in totals.values()), totals


def test_window_bounds_requests_in_flight_and_hands_slots_over_in_order() -> None:
    async def main() -> None:
        mux = Mux(window=2)
        await mux.acquire(1)
        await mux.acquire(1)
        order: list[int] = []

        async def later(n: int) -> None:
            await mux.acquire(1)
            order.append(n)

        tasks = [asyncio.create_task(later(n)) for n in range(3)]
        await asyncio.sleep(0)
        assert mux.in_flight == 2 and order == []
        mux.release()
        mux.release()
        await asyncio.gather(*tasks[:2])
        assert order == [0, 1] and mux.in_flight == 2
        with pytest.raises(LinkBusy):
            await asyncio.wait_for(tasks[2], 2)
        assert mux.in_flight == 2  # the timed-out waiter took no slot

    asyncio.run(main())


def test_wait_times_out_then_the_late_answer_is_a_stray_and_link_loss_fails_all() -> None:
    async def main() -> None:
        mux = Mux(window=4)
        key = _key("1110", 1, 1)
        future = mux.expect(key)
        with pytest.raises(LinkTimeout):
            await mux.wait(key, future, 0.01)
        assert mux.deliver(key, "late") == "late"
        other = _key("1110", 1, 2)
        pending = mux.expect(other)
        assert mux.fail_all("gone") == [other]
        with pytest.raises(LinkDown):
            await pending

    asyncio.run(main())
