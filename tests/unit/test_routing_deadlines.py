"""One timer for many deadlines: each fires on time, in order, and a cancelled one never."""

from __future__ import annotations

import asyncio

import uvloop

from passerelle.routing.deadlines import Deadlines


def test_deadlines_fire_on_time_and_cancelled_ones_never() -> None:
    for run in (asyncio.run, uvloop.run):  # both loops switchd may run on
        async def main() -> None:
            loop = asyncio.get_running_loop()
            deadlines = Deadlines()
            fired: list[tuple[int, float]] = []
            start = loop.time()
            handles = [deadlines.add(start + 0.02 * (n + 1),
                                     lambda n=n: fired.append((n, loop.time())))
                       for n in range(6)]
            handles[1].cancel()
            handles[4].cancel()
            # Earlier than the last one queued: it must not wait for the later ones.
            deadlines.add(start + 0.01, lambda: fired.append((-1, loop.time())))
            await asyncio.sleep(0.2)
            assert [n for n, _ in fired] == [-1, 0, 2, 3, 5]
            for n, when in fired:
                due = start + (0.01 if n == -1 else 0.02 * (n + 1))
                assert due - 0.002 <= when < due + 0.1
            assert len(deadlines) == 0

        run(main())


def test_a_failing_callback_does_not_stop_the_others() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _, context: errors.append(context["exception"]))
        deadlines = Deadlines()
        fired: list[int] = []
        deadlines.add(loop.time() + 0.01, lambda: 1 / 0)
        deadlines.add(loop.time() + 0.01, lambda: fired.append(1))
        await asyncio.sleep(0.05)
        assert fired == [1] and isinstance(errors[0], ZeroDivisionError)

    asyncio.run(main())
