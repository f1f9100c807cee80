"""Matching acquirer answers to requests on one multiplexed link, and its in-flight window.

Answers are matched by key, never by order: (answer MTI, terminal, STAN, local date/time).
A request that timed out is forgotten at once, so its late answer finds no waiter and is
dropped (counted as "late"); a second answer to an already answered key is "duplicate";
an answer nobody asked for is "unknown". None of them can complete another request, which
is what keeps the correlation of every later request right.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Any, Protocol

from passerelle.routing.deadlines import Cancellable, Deadlines
from passerelle.routing.errors import LinkBusy, LinkDown, LinkTimeout, RoutingError

Key = tuple[str, str, str, str]
_REMEMBERED = 4096  # recently answered / abandoned keys kept to classify strays


class DuplicateKey(RoutingError):
    """A request with this key is already in flight on the link (a terminal repeat)."""


class Waiter(Protocol):
    """What the MUX completes: an asyncio future, or `AcquirerLink.send`'s waiter, which
    acts at once where a future would wake a task. (Typed so, not as a future: the
    compiled build checks the types it is told.)"""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...
    def cancel(self) -> bool: ...


class Mux:
    """Pending requests by key, and a window bounding how many are in flight."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0
        self._pending: dict[Key, Any] = {}  # futures, or `expect`'s waiters
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._answered: OrderedDict[Key, None] = OrderedDict()
        self._abandoned: OrderedDict[Key, None] = OrderedDict()
        self.strays = {"late": 0, "duplicate": 0, "unknown": 0}
        self._deadlines = Deadlines()
        self._expire_one = self._expire  # bound once: one object less per request

    def __len__(self) -> int:
        return len(self._pending)

    def try_acquire(self) -> bool:
        """Take a free window slot now if there is one (no coroutine: the usual case)."""
        if self.in_flight < self.window and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, timeout: float) -> None:
        """Take a window slot, waiting at most `timeout` for one (LinkBusy: not sent)."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except (TimeoutError, asyncio.CancelledError) as error:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as we gave up: pass it on
            if isinstance(error, TimeoutError):
                raise LinkBusy("the link's in-flight window stayed full") from None
            raise
        # release() handed its slot to us: in_flight was not decremented.

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self.in_flight -= 1

    def expect(self, key: Key, waiter: Any = None) -> Any:
        """A future completed by the answer carrying `key`; or `waiter`, any object with a
        future's `done`, `set_result`, `set_exception` and `cancel`, called at once where a
        future would wake a task later (`AcquirerLink.send`: no task, no future)."""
        if key in self._pending:
            raise DuplicateKey(f"a request with key {key} is already in flight")
        future = waiter if waiter is not None else self._deadlines.loop.create_future()
        self._pending[key] = future
        self._abandoned.pop(key, None)
        self._answered.pop(key, None)
        return future

    def deliver(self, key: Key, answer: Any) -> str:
        """Complete the request waiting for `key`: "matched", or the kind of stray it is."""
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            _remember(self._answered, key)  # first: a waiter may run its requester now
            future.set_result(answer)
            return "matched"
        if key in self._abandoned:
            kind = "late"
        elif key in self._answered:
            kind = "duplicate"
        else:
            kind = "unknown"
        self.strays[kind] += 1
        return kind

    def abandon(self, key: Key) -> None:
        """The requester gave up on `key` (timeout, deadline): its answer will be a stray."""
        future = self._pending.pop(key, None)
        if future is not None:
            if not future.done():
                future.cancel()
            _remember(self._abandoned, key)

    def fail_all(self, reason: str) -> list[Key]:
        """The link went down: every waiter gets LinkDown; returns their keys."""
        keys = list(self._pending)
        for key in keys:
            future = self._pending.pop(key)
            _remember(self._abandoned, key)
            if not future.done():
                future.set_exception(LinkDown(reason))
        return keys

    async def wait(self, key: Key, future: asyncio.Future[Any], timeout: float) -> Any:
        """The answer to `key`, or LinkTimeout after `timeout` (the key is then abandoned).

        One shared deadline queue rather than a timer per request (`routing.deadlines`):
        this runs for every request and nearly every request is answered in time.
        """
        timer = self.deadline(key, future, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            self.abandon(key)  # the requester itself was cancelled (its deadline)
            raise
        finally:
            timer.cancel()

    def deadline(self, key: Key, future: Waiter, timeout: float) -> Cancellable:
        """LinkTimeout into `future` after `timeout` unless the returned handle is cancelled
        first (`wait` without its coroutine, for a caller that awaits `future` itself)."""
        deadlines = self._deadlines
        return deadlines.add(deadlines.loop.time() + timeout, self._expire_one, key, future,
                             timeout)

    def _expire(self, key: Key, future: Waiter, timeout: float) -> None:
        if self._pending.get(key) is future:
            del self._pending[key]
            _remember(self._abandoned, key)
        if not future.done():
            future.set_exception(LinkTimeout(f"no answer within {timeout:.3f} s"))


def _remember(keys: OrderedDict[Key, None], key: Key) -> None:
    keys[key] = None
    if len(keys) > _REMEMBERED:
        keys.popitem(last=False)
