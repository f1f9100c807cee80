"""Many timeouts, one timer: deadlines that mostly arrive in the order they were set.

Every authorization has a deadline (the terminal's) and every acquirer request a timeout,
and nearly all of them end well before it. An `asyncio.timeout` or `call_later` per request
costs a timer handle each time (3-10 us on uvloop, the larger part of a request's own
work). Here a deadline is a small entry appended to a FIFO queue, and one timer is armed
for the oldest entry still active: when it fires, finished entries are dropped, due ones
run, and the timer is re-armed for the next. A request that ends only marks its entry.

This is exact as long as deadlines are added in non-decreasing order, which is the common
case (a fixed duration from "now": the dialogue's deadline, a link's response timeout). A
deadline earlier than the last one queued (a shorter timeout, a failover attempt capped by
the terminal's deadline) gets a timer of its own, so no deadline ever fires late.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

# uvloop's timers have millisecond resolution: an entry this close to due is due, so a timer
# that fires a hair early never spins re-arming itself.
_RESOLUTION = 0.001


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class _Entry:
    __slots__ = ("active", "args", "callback", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.active = True

    def cancel(self) -> None:
        self.active = False
        # What the callback would have been given goes now: an owner that keeps its
        # handle (a request keeping its timer) would otherwise make a reference cycle
        # that only the garbage collector can free, once per request.
        self.args = ()


class Deadlines:
    """`add(when, callback, *args)` runs `callback(*args)` at loop time `when` unless the
    returned handle is cancelled first. One instance per event loop user (a link, a
    dialogue); it follows the running loop (a new loop starts an empty queue)."""

    def __init__(self) -> None:
        self._queue: deque[_Entry] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return sum(1 for entry in self._queue if entry.active)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, asked of asyncio only while nothing is queued (or the loop we
        had is closed): on Python 3.11 every `get_running_loop()` is a getpid() system
        call, and a busy queue means the loop has not changed."""
        loop = self._loop
        if loop is None or not self._queue or loop.is_closed():
            loop = asyncio.get_running_loop()
            if loop is not self._loop:  # first use, or a new loop (tests): nothing carries over
                self._loop, self._timer = loop, None
                self._queue.clear()
        return loop

    def add(self, when: float, callback: Callable[..., Any], *args: Any) -> Cancellable:
        loop = self.loop
        queue = self._queue
        if queue and when < queue[-1].when:
            return loop.call_at(when, callback, *args)  # out of order: a timer of its own
        while queue and not queue[0].active:  # finished heads go now: the queue stays short
            queue.popleft()
        entry = _Entry(when, callback, args)
        queue.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(when, self._fire)
        return entry

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        queue = self._queue
        now = loop.time() + _RESOLUTION
        while queue:
            head = queue[0]
            if not head.active:
                queue.popleft()
                continue
            if head.when > now:
                self._timer = loop.call_at(head.when, self._fire)
                return
            queue.popleft()
            head.active = False
            args, head.args = head.args, ()  # no cycle through a handle its owner keeps
            try:
                head.callback(*args)
            except Exception as error:  # one bad callback must not stall the others
                loop.call_exception_handler({"message": "deadline callback failed",
                                             "exception": error})
