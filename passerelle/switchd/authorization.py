"""The authorization dialogue: 0100 -> validate -> route -> acquirer -> 0110 (DESIGN.md §4-5);
a financial 0200 -> 0210 the same way (`AUTH_MTIS`).

Every request is answered before its deadline (`authorization.deadline`, the terminal's TNR
minus a margin): approved or declined by an acquirer, approved in stand-in under a floor
limit, or `91` when nothing could decide. The response codes we choose ourselves:

====  ==========================================================================
14    no PAN, or a PAN failing Luhn (field 2, else the PAN part of track 2)
54    card expired (field 14, else track 2's YYMM)
13    amount zero or above `authorization.max_amount`
12    currency not accepted (`authorization.currencies`)
03    terminal unknown, or field 42 is not its active contract (accepteur invalide)
92    no route for (application, BIN, contract, currency)
94    the same request (terminal, STAN, date/time) is already in flight
91    no acquirer decided and stand-in was not allowed (or could not queue its advice)
30    a field that cannot be decoded (44 AA names it): raised as CodecError, answered by
      the dispatcher
====  ==========================================================================

Failover: the route's acquirers are tried in order while at least `min_attempt` seconds
remain; a link that is down is skipped at once. An attempt that times out, or whose link
died after sending, may have been approved: a reversal is queued for it (SAF), so a late
approval never stands. Stand-in approvals queue an advice to the route's first acquirer.

A terminal's own reversal (0400/0420, the original named by field 90 or else by its STAN)
goes to the SAF for the acquirer that approved it. The approval is found in this node's
memory (recent approvals, with the acquirer request as it was sent), else in the auth log
that every node writes to the shared PostgreSQL: its row names the acquirer, the original's
MTI and the time part of its acquirer key (migration 0009), and the reversal repeats the
card and amounts, so the acquirer request is rebuilt (`translate.original_request`) exactly
as the approving node built it. No copy of the acquirer request (it holds the PAN) is kept
on disk for this. The log is written in batches, so a row not there yet is asked for again
every `authlog.flush_interval` for `authorization.reversal_lookup` s (then
`auth.terminal_reversal matched=false` in the log). Either way the SAF key is the one the
approving node would use, so a reversal seen by two nodes, or repeated by the terminal, is
queued and delivered once.

With an HSM (`[hsm]`): a PIN block (52) is re-enciphered from the terminals' TPK
(`authorization.pin_key`) to the acquirer's ZPK (`pin_key` of the acquirer) before it
leaves, and an acquirer with no ZPK, or a translation the HSM refuses, is skipped like an
untranslatable request; links MAC their messages (see `routing.link`); the auth log's PAN
HMAC comes from `hsm.pan_hmac` (newest key version, recorded with the row). Without an
HSM, as before: a PIN block is left out towards iso93/iso87 acquirers (a cb2a one gets the
terminal's bytes as they are) and the PAN HMAC uses the configured key. Either way the auth
log writer computes it, for all the records of an event-loop iteration together, after the
answers went: the terminal's answer never waits for it (`storage.authlog`).

Per request, nothing arms a timer of its own: the terminal's deadline and the acquirer's
response timeout are entries in shared deadline queues (`routing.deadlines`).

The usual request runs without a task (`Authorizer.__call__`): a refusal is answered at
once, and a request its first usable acquirer can take now (link up, no PIN to translate,
no MAC, a free window slot) is sent there and answered from the link's read callback
(`AcquirerLink.send`, a `dispatch.Later`), with no coroutine or future. The acquirer's
timeout is capped by the terminal's deadline, so no other timer is needed meanwhile. A
step that has to be awaited (directory query, PIN, MAC, a full window) and whatever comes
after a failed attempt (the next acquirers, stand-in) run as a task under the deadline,
from the acquirer where the shortcut stopped, with the same steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from passerelle.codecs.iso8583 import CodecError, Message
from passerelle.codecs.profiles import get_profile
from passerelle.hsm.errors import HSMError
from passerelle.routing import translate
from passerelle.routing.application import icc_aid, read_application
from passerelle.routing.deadlines import Deadlines
from passerelle.routing.errors import LinkDown, LinkLost, LinkTimeout, RoutingError
from passerelle.routing.link import AcquirerLink
from passerelle.routing.metrics import RoutingMetrics
from passerelle.routing.mux import DuplicateKey
from passerelle.routing.settings import AcquirerSettings, RoutingSettings, routing_settings
from passerelle.routing.table import Router
from passerelle.storage.authlog import Approval, AuthLogWriter, AuthRecord, find_approval
from passerelle.storage.db import StorageError
from passerelle.storage.pan import PanHmacKey, luhn_valid, mask_pan, pan_hmac
from passerelle.storage.saf import AesGcmSealer, HsmSealer, SafItem, SafStore
from passerelle.storage.spool import Spool
from passerelle.switchd.dispatch import Later

log = structlog.get_logger("passerelle.auth")

# A financial request (0200, answered 0210) is an authorization that is also the clearing
# record: the same validation, routing, stand-in and log; its acquirer message is class 2
# (1200/0200), an advice of it 1220/0220, a reversal 1420/0420 as for a 0100.
AUTH_MTIS = ("0100", "0101", "0200", "0201")
REVERSAL_MTIS = ("0400", "0401", "0420", "0421")
_APPROVED = ("00", "08", "10", "11")
_ACCEPTED = ("00", "000", "400", "800")  # SAF acknowledgements


@dataclass(frozen=True, slots=True)
class TerminalInfo:
    contract: str
    application: str | None
    active: bool


class Directory:
    """Terminal -> contract, from PostgreSQL (cached `directory_ttl` s) or configuration.

    A slow or failed query serves the cached entry, however old, then configuration, and
    leaves the database alone for `directory_retry` s: terminals must not be refused, or
    kept waiting, because the database is away.
    """

    def __init__(self, settings: RoutingSettings, pool: Any = None) -> None:
        auth = settings.authorization
        self.pool = pool
        self.ttl = auth.directory_ttl
        self.timeout = auth.directory_timeout
        self.retry = auth.directory_retry
        self._down_until = 0.0
        contracts = {c.number: c for c in auth.contracts}
        self._configured = {
            t.terminal_id.strip(): TerminalInfo(
                t.contract.strip(),
                contracts[t.contract].application if t.contract in contracts else None,
                contracts[t.contract].active if t.contract in contracts else True)
            for t in auth.terminals}
        self._cache: dict[str, tuple[float, TerminalInfo | None]] = {}

    def cached(self, terminal_id: str) -> tuple[bool, TerminalInfo | None]:
        """(True, answer) without waiting when there is one (configuration, or a fresh
        cache entry), else (False, None): `lookup` has to be awaited. Most requests take
        this path, which saves them a coroutine."""
        if self.pool is None:
            return True, self._configured.get(terminal_id)
        cached = self._cache.get(terminal_id)
        if cached is not None and cached[0] > time.monotonic():
            return True, cached[1] or self._configured.get(terminal_id)
        return False, None

    async def lookup(self, terminal_id: str) -> TerminalInfo | None:
        if self.pool is None:
            return self._configured.get(terminal_id)
        now = time.monotonic()
        cached = self._cache.get(terminal_id)
        if cached is not None and (cached[0] > now or now < self._down_until):
            return cached[1] or self._configured.get(terminal_id)
        if now < self._down_until:
            return self._configured.get(terminal_id)
        try:
            async with asyncio.timeout(self.timeout), self.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT c.contract_number, c.application, c.active AND t.active"
                    " FROM terminals t JOIN contracts c ON c.id = t.contract_id"
                    " WHERE t.serial = %s", (terminal_id,))
                row = await cursor.fetchone()
        except Exception as error:  # any database failure: serve the cache
            self._down_until = time.monotonic() + self.retry
            log.warning("auth.directory_unavailable", error=str(error) or type(error).__name__)
            if cached is not None and cached[1] is not None:
                return cached[1]
            return self._configured.get(terminal_id)
        info = TerminalInfo(row[0], row[1], bool(row[2])) if row else None
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[terminal_id] = (now + self.ttl, info)
        return info or self._configured.get(terminal_id)


@dataclass
class AuthServices:
    """Everything the dialogue uses; built by `build_services`, run by `start()`/`close()`."""

    settings: RoutingSettings
    router: Router
    links: dict[str, AcquirerLink]
    directory: Directory
    metrics: RoutingMetrics
    authlog: AuthLogWriter | None = None
    saf: SafStore | None = None
    pan_key: PanHmacKey | None = None
    hsm: Any = None  # passerelle.hsm.HSM: PAN HMAC, PIN translation, MACs (links hold it too)
    spool: Spool | None = None  # the auth-log journal, when these services opened it
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, wait_links: float = 0.0) -> None:
        for link in self.links.values():
            link.start()
        if self.authlog is not None:
            self.authlog.start()
        if self.saf is not None:
            for name in self.links:
                self.tasks.append(asyncio.create_task(self._deliver_saf(name),
                                                      name=f"saf-{name}"))
        if wait_links:
            await asyncio.gather(*(link.wait_up(wait_links) for link in self.links.values()))

    async def close(self) -> None:
        """Stop SAF delivery, let queued SAF writes finish, close links, flush the log.

        SAF delivery is asked to stop, not cancelled: a message the acquirer acknowledged
        must be marked delivered before we go, or another node would send it again.
        """
        self.stopping.set()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.settings.saf.attempt_timeout + 2)
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        if self.background:
            await asyncio.wait(self.background, timeout=5.0)
        for link in self.links.values():
            await link.close()
        if self.authlog is not None:
            await self.authlog.close()
        if self.spool is not None:
            self.spool.close()

    def reload_routes(self) -> bool:
        """SIGHUP: a new route table, or the old one kept (and the error logged)."""
        try:
            table = self.router.reload()
        except RoutingError as error:
            log.error("auth.routes_reload_failed", error=str(error))
            return False
        log.info("auth.routes_reloaded", routes=len(table.routes))
        return True

    def queue_saf(self, acquirer: AcquirerSettings, kind: str, wire: bytes,
                  changes: dict[int, Any] | None = None) -> asyncio.Task[bool] | None:
        """Queue an advice/reversal of `wire` in the background; None without a SAF store."""
        if self.saf is None:
            log.error("auth.saf_unavailable", acquirer=acquirer.name, kind=kind)
            return None
        message, key = translate.follow_up(wire, acquirer, kind, changes)
        task = asyncio.create_task(self._enqueue(acquirer.name, kind, "|".join(key), message))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def _enqueue(self, acquirer: str, kind: str, key: str, message: bytes) -> bool:
        assert self.saf is not None
        try:
            queued = await self.saf.enqueue(acquirer, kind, key, message)
        except (StorageError, HSMError) as error:  # database away, or the HSM cannot seal
            log.error("auth.saf_enqueue_failed", acquirer=acquirer, kind=kind, error=str(error))
            return False
        log.info("auth.saf_queued", acquirer=acquirer, kind=kind, new=queued)
        return True

    async def _deliver_saf(self, name: str) -> None:
        """Deliver this acquirer's advices and reversals whenever its link is up."""
        assert self.saf is not None
        link = self.links[name]
        s = self.settings.saf
        profile = get_profile(link.settings.profile)

        async def send(item: SafItem) -> None:
            request = Message.parse(item.payload, profile)
            key = translate.key_of(request, translate.answer_mti(request.mti))
            answer = await link.request(item.payload, key, s.attempt_timeout)
            code = str(answer.get(39, ""))
            if code not in _ACCEPTED:
                raise RoutingError(f"{item.kind} refused with code {code or 'none'}")
            self.metrics.saf_delivered.labels(name, item.kind).inc()

        while not self.stopping.is_set():
            try:
                depth = (await self.saf.depth()).get(name, 0)
                self.metrics.saf_depth.labels(name).set(depth)
                if depth and link.up:
                    await self.saf.deliver(name, send, limit=s.batch,
                                           backoff_min=s.backoff_min, backoff_max=s.backoff_max)
            except StorageError as error:
                log.warning("auth.saf_delivery_failed", acquirer=name, error=str(error))
            except Exception:  # a bug must not stop SAF delivery for good
                log.exception("auth.saf_delivery_error", acquirer=name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), s.interval)


# The request's fields the dialogue reads, converted in one `pick`: PAN, amount, STAN,
# expiry, entry mode, track 2, terminal, contract, currency; the chip data (55) is only
# walked for its AID (`icc_aid`). A field among them that cannot be decoded is answered 30
# (naming the first, in wire order, 55 last) before any check of the values.
_READ = (2, 4, 11, 14, 22, 35, 41, 42, 49)


# "00".."99": this month as YYMM from two lookups, not two format calls (compiled, the
# f-string's formats were half of `_expired`'s cost, once per authorization).
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(100))


def _expired(expiry: str, now: datetime) -> bool:
    if len(expiry) != 4 or not expiry.isdigit() or not 1 <= int(expiry[2:]) <= 12:
        raise CodecError(14, 0, f"expiry {expiry!r} is not YYMM")
    return expiry < _TWO_DIGITS[now.year % 100] + _TWO_DIGITS[now.month]


class Authorizer:
    """The 0100 handler; one instance per daemon."""

    def __init__(self, services: AuthServices) -> None:
        self.s = services
        auth = services.settings.authorization
        self._budget = auth.deadline - auth.margin  # settings are not reloaded
        self._max_amount = auth.max_amount
        self._min_attempt = auth.min_attempt
        self._currencies = frozenset(auth.currencies)
        self._deadlines = Deadlines()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reply = self._on_reply  # bound once: one object less per request
        self._stand_in_numbers = itertools.count(1)
        # (terminal, STAN) -> (acquirer name, its request) to reverse if the terminal
        # reverses it: recent approvals only, bounded; the acquirer message holds a PAN, so
        # it lives in memory only. Strings and bytes only: the garbage collector stops
        # tracking such tuples, so tens of thousands of them do not make each full
        # collection longer, nor their turnover bring one on (2-3 us per authorization).
        self._approved: OrderedDict[tuple[str, str], tuple[str, bytes]] = OrderedDict()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop, asked of asyncio again only once the one we had is closed (a
        test's next loop): on Python 3.11 each `get_running_loop()` is a getpid() call."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _remember(self, state: _Attempt, stan: str, acquirer: AcquirerSettings,
                  wire: bytes) -> None:
        self._approved[state.terminal, stan] = (acquirer.name, wire)
        if len(self._approved) > self.s.settings.authorization.reversal_memory:
            self._approved.popitem(last=False)

    def reverse(self, message: Message, context: Any) -> tuple[bytes, str]:
        """A terminal's 0400/0420: reverse the approval it names (field 90, else its STAN).

        The reversal goes to the SAF for the acquirer that approved (or was advised of a
        stand-in), and the terminal is answered 00 at once. The approval is looked for in
        this node's memory, then in the shared auth log (`_reverse_logged`, in the
        background): the 0100 may have gone through another node. A reversal of nothing
        we approved is answered 00 too (there is nothing to undo, and a refusal would only
        make the terminal repeat it); without a SAF store the answer is 91.
        """
        terminal = str(message.get(41, "")).strip()
        original = str(message.get(90, "")) if 90 in message else ""
        stan = original[4:10] if len(original) >= 10 else str(message.get(11, ""))
        code = "00"
        if self.s.saf is None:
            code = "91"
        else:
            entry = self._approved.pop((terminal, stan), None)
            link = self.s.links.get(entry[0]) if entry is not None else None
            if entry is not None and link is not None:
                self.s.queue_saf(link.settings, "reversal", entry[1])
                log.info("auth.terminal_reversal", terminal=terminal, stan=stan,
                         matched="memory", acquirer=link.name)
            else:
                task = asyncio.create_task(self._reverse_logged(message, terminal, stan))
                self.s.background.add(task)
                task.add_done_callback(self.s.background.discard)
        return translate.terminal_answer(message, code), code

    async def _reverse_logged(self, message: Message, terminal: str, stan: str) -> None:
        """The approval from the auth log that every node writes, then its reversal queued.

        The approving node writes its log in batches, so the row may not be there yet: the
        query is repeated every `authlog.flush_interval` for `authorization.reversal_lookup`
        seconds before the reversal is given up (`matched=false` in the log). Several nodes,
        or a terminal repeating its 0400, may queue the same reversal: its SAF key is the
        one the approving node would use, so the acquirer receives it once.
        """
        s = self.s
        assert s.saf is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + s.settings.authorization.reversal_lookup
        pause = s.settings.authlog.flush_interval
        found: Approval | None = None
        while found is None:
            try:
                found = await find_approval(s.saf.pool, terminal, stan)
            except StorageError as error:
                log.warning("auth.reversal_lookup_failed", terminal=terminal, stan=stan,
                            error=str(error))
            if found is None:
                if loop.time() + pause > give_up or s.stopping.is_set():
                    log.info("auth.terminal_reversal", terminal=terminal, stan=stan,
                             matched=False)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(s.stopping.wait(), pause)
        link = s.links.get(found.acquirer)
        if link is None or found.acquirer_time is None:
            log.warning("auth.terminal_reversal_unsent", terminal=terminal, stan=stan,
                        acquirer=found.acquirer, reason="unknown acquirer" if link is None
                        else "the logged approval has no acquirer time")
            return
        try:
            wire = translate.original_request(message, link.settings, found.mti, stan,
                                              found.acquirer_time)
        except CodecError as error:
            log.warning("auth.terminal_reversal_unsent", terminal=terminal, stan=stan,
                        acquirer=found.acquirer, reason=error.reason)
            return
        s.queue_saf(link.settings, "reversal", wire)
        log.info("auth.terminal_reversal", terminal=terminal, stan=stan, matched="auth_log",
                 acquirer=found.acquirer)

    def __call__(self, message: Message, context: Any) -> Any:
        """(answer, response code) at once when nothing has to be awaited (a refusal), a
        `Later` when the request went to an acquirer at once (`_at_once`), else an
        awaitable of it: the dispatcher counts messages by the code we chose."""
        state = _Attempt(message)
        loop = self._running_loop()
        state.deadline = loop.time() + self._budget
        decided: bytes | Later | None = self._check(message, state)
        if decided is None:
            known, info = self.s.directory.cached(state.terminal)
            if not known:
                return self._guarded(message, state, self._looked_up(message, state))
            decided = self._admit(message, state, info)
            if decided is None:
                decided = self._at_once(message, state, loop)
                if decided is None:  # no acquirer could take it at once: a task
                    return self._guarded(message, state,
                                         self._attempts(message, state, state.index))
                if decided.__class__ is Later:
                    return decided
        return decided, state.code

    async def authorize(self, message: Message) -> bytes:
        """The 0110 for `message`, always before the deadline."""
        return (await self._authorize(message))[0]

    async def _authorize(self, message: Message) -> tuple[bytes, str]:
        """The whole dialogue as one coroutine (what `__call__` does, with no shortcut)."""
        state = _Attempt(message)
        state.deadline = self._running_loop().time() + self._budget
        return await self._guarded(message, state, self._decide(message, state))

    async def _guarded(self, message: Message, state: _Attempt,
                       decide: Coroutine[Any, Any, bytes]) -> tuple[bytes, str]:
        """`decide` under the terminal's deadline.

        The deadline is an entry in one shared queue (`routing.deadlines`), not an
        `asyncio.timeout` per request: when it passes, the task is cancelled and the
        cancellation is turned into the 91 answer here, as `asyncio.timeout` would do.
        """
        deadline = state.deadline
        task = asyncio.current_task()
        if task is None:  # not in a task (never in switchd): a plain timeout
            try:
                async with asyncio.timeout_at(deadline):
                    return await decide, state.code
            except TimeoutError:
                return self._overdue_answer(message, state), state.code
        cancelling = task.cancelling()
        timer = self._deadlines.add(deadline, _overdue, task, state)
        try:
            return await decide, state.code
        except asyncio.CancelledError:
            if not state.overdue or task.uncancel() > cancelling:
                raise  # cancelled by someone else (shutdown)
        finally:
            timer.cancel()
        return self._overdue_answer(message, state), state.code

    def _overdue_answer(self, message: Message, state: _Attempt) -> bytes:
        if state.wire is not None and state.acquirer is not None:
            self.s.queue_saf(state.acquirer, "reversal", state.wire)
        return self._answer(message, state, "91")

    async def _decide(self, message: Message, state: _Attempt) -> bytes:
        decided = self._check(message, state)
        if decided is not None:
            return decided
        return await self._looked_up(message, state)

    async def _looked_up(self, message: Message, state: _Attempt) -> bytes:
        """The rest of the dialogue once the request is valid: terminal, route, acquirers."""
        directory = self.s.directory
        known, info = directory.cached(state.terminal)
        if not known:
            info = await directory.lookup(state.terminal)
        decided = self._admit(message, state, info)
        if decided is not None:
            return decided
        return await self._attempts(message, state, 0)

    def _check(self, message: Message, state: _Attempt) -> bytes | None:
        """Card, expiry, amount and currency: the 0110 refusing the request, or None."""
        (pan, amount_text, stan, expiry, mode, track, terminal, contract,
         currency_text) = message.pick(_READ)
        icc = None
        if 55 in message:
            icc = message.body(55)
            if not icc_aid(icc)[0]:
                message.get(55)  # raises the CodecError naming what is wrong
        pan = pan or ""
        if track is not None:
            head, _, tail = track.upper().replace("=", "D").partition("D")
            pan = pan or head
            expiry = expiry or (tail[:4] if len(tail) >= 4 else None)
        state.pan, state.expiry = pan, expiry
        if amount_text is None:
            raise CodecError(4, 0, "an authorization needs an amount (field 4)")
        state.amount = amount = int(amount_text)
        state.currency = currency = int(currency_text) if currency_text is not None else 978
        state.terminal = terminal = (terminal or "").strip()
        state.contract = (contract or "").strip()
        state.known = {2: pan, 11: stan or "", 41: terminal}
        state.entry_mode, state.icc = mode, icc
        if not luhn_valid(pan):
            return self._answer(message, state, "14")
        state.now = now = datetime.now(UTC)
        if expiry is None or _expired(expiry, now):
            return self._answer(message, state, "54")
        if amount <= 0 or amount > self._max_amount:
            return self._answer(message, state, "13")
        if currency not in self._currencies:
            return self._answer(message, state, "12")
        return None

    def _admit(self, message: Message, state: _Attempt, info: TerminalInfo | None) -> bytes | None:
        """Terminal and contract known, application read, route found: None (and the
        route's acquirers in `state.chain`), else the 0110 refusing the request."""
        if info is None or info.contract != state.contract or not info.active:
            return self._answer(message, state, "03")
        pan = state.pan
        state.application = application = read_application(
            message, pan, info.application, state.icc, state.entry_mode)
        route = self.s.router.match(application, pan, state.contract, state.currency or 0)
        if route is None:
            return self._answer(message, state, "92")
        state.chain = route.acquirers
        return None

    def _at_once(self, message: Message, state: _Attempt,
                 loop: asyncio.AbstractEventLoop) -> bytes | Later | None:
        """The usual case with no task: the first acquirer of the chain that can take the
        request now gets it (`AcquirerLink.send`), and its answer is handled in
        `_on_reply`; the 0110 when it is decided here (94); None when a step has to be
        awaited (PIN translation, MAC, a full window) or stand-in is next: `_attempts`
        goes on from `state.index` with the same steps as this."""
        deadline, chain, links = state.deadline, state.chain, self.s.links
        for index, name in enumerate(chain):
            state.index = index
            left = deadline - loop.time()
            if left < self._min_attempt:
                state.index = len(chain)
                return None
            ready = self._translated(message, state, links.get(name), name)
            if ready is None:
                continue
            link, acquirer, wire, key = ready
            if 52 in message and self.s.hsm is not None:
                return None
            state.acquirer, state.wire, state.link, state.key = acquirer, wire, link, key
            state.sent = loop.time()
            timeout = acquirer.response_timeout
            try:
                if not link.send(wire, key, timeout if timeout < left else left,
                                 self._reply, state):
                    return None
            except DuplicateKey:
                state.wire = None
                return self._answer(message, state, "94")
            state.later = later = Later()
            return later
        state.index = len(chain)
        return None

    @staticmethod
    def _translated(
        message: Message, state: _Attempt, link: AcquirerLink | None, name: str
    ) -> tuple[AcquirerLink, AcquirerSettings, bytes, translate.Key] | None:
        """`link`, its acquirer and the request in its profile with its MUX key, when the
        link is up and the request translates (else None, logged: the next one is tried).
        The one step `_at_once` and `_attempts` share."""
        if link is None or not link.up:
            return None
        acquirer = link.settings
        try:
            wire, key = translate.to_acquirer(message, acquirer, state.now, state.known)
        except CodecError as untranslatable:
            log.warning("auth.untranslatable", acquirer=name, field=untranslatable.field,
                        reason=untranslatable.reason)
            return None
        return link, acquirer, wire, key

    def _on_reply(self, state: _Attempt, answer: Message | None,
                  error: BaseException | None) -> None:
        """`_at_once`'s acquirer answered (or the link was lost, or timed out): the 0110,
        or the rest of the chain and stand-in in a task. Runs in the link's read callback:
        whatever goes wrong goes to the `Later`, nothing is raised."""
        later = state.later
        assert later is not None and state.link is not None
        try:
            decided = self._settle(state, answer, error)
            if decided is None:
                self._resume(state)
                return
        except Exception as failure:  # a CodecError or a bug: the dispatcher's to answer
            later.fail(failure)
            return
        later.give((decided, state.code))

    def _resume(self, state: _Attempt) -> None:
        """Failover from a callback: the rest of the chain as a task, under the deadline."""
        message, later = state.message, state.later
        assert later is not None
        if self._running_loop().time() >= state.deadline:
            later.give((self._overdue_answer(message, state), state.code))
            return

        async def rest() -> None:
            try:
                result = await self._guarded(message, state,
                                             self._attempts(message, state, state.index + 1))
            except BaseException as error:  # handed to the dispatcher, as for a Later
                later.fail(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            later.give(result)

        task = asyncio.create_task(rest())
        self.s.background.add(task)
        task.add_done_callback(self.s.background.discard)

    def _settle(self, state: _Attempt, answer: Message | None,
                error: BaseException | None) -> bytes | None:
        """After the request to `state.link`: the 0110 when the acquirer decided, else None
        (next acquirer), with a reversal queued when it may have approved (sent, then the
        link died or no answer came; or an answer we cannot read)."""
        message, link, key, wire = state.message, state.link, state.key, state.wire
        assert link is not None and wire is not None
        acquirer, name = link.settings, link.name
        if error is not None:
            if isinstance(error, LinkLost | LinkTimeout):
                self.s.queue_saf(acquirer, "reversal", wire)
            state.wire = None
            log.info("auth.failover", acquirer=name, reason=str(error))
            return None
        assert answer is not None
        self.s.metrics.observe(name, self._running_loop().time() - state.sent)
        try:
            outcome = translate.from_acquirer(answer, acquirer)
        except CodecError as failure:
            self.s.queue_saf(acquirer, "reversal", wire)
            state.wire = None
            log.warning("auth.bad_acquirer_answer", acquirer=name, reason=failure.reason)
            return None
        state.wire = None
        if outcome.code in _APPROVED:
            state.acquirer_time = key[3]
            self._remember(state, state.known[11], acquirer, wire)
        return self._answer(message, state, outcome.code, approval=outcome.approval,
                            issuer_data=outcome.issuer_data, additional=outcome.additional)

    async def _attempts(self, message: Message, state: _Attempt, start: int) -> bytes:
        """The route's acquirers from `start` on, in order, then stand-in."""
        loop = asyncio.get_running_loop()
        deadline, chain, links = state.deadline, state.chain, self.s.links
        for name in chain[start:]:
            left = deadline - loop.time()
            if left < self._min_attempt:
                break
            ready = self._translated(message, state, links.get(name), name)
            if ready is None:
                continue
            link, acquirer, wire, key = ready
            if 52 in message and self.s.hsm is not None:
                translated = await self._pin_for(message, acquirer, wire, state.pan)
                if translated is None:
                    continue
                wire = translated
            state.acquirer, state.wire, state.link, state.key = acquirer, wire, link, key
            state.sent = loop.time()
            timeout = acquirer.response_timeout
            error: BaseException | None = None
            answer: Message | None = None
            try:
                answer = await link.request(wire, key, timeout if timeout < left else left)
            except DuplicateKey:
                state.wire = None
                return self._answer(message, state, "94")
            except (LinkDown, LinkTimeout) as failure:
                error = failure
            decided = self._settle(state, answer, error)
            if decided is not None:
                return decided
        return await self._stand_in(message, state, chain, deadline, state.now)

    async def _pin_for(self, message: Message, acquirer: AcquirerSettings, wire: bytes,
                       pan: str) -> bytes | None:
        """`wire` with the terminal's PIN block re-enciphered under the acquirer's ZPK; None
        when this acquirer cannot take the PIN (no ZPK configured, or the HSM refused)."""
        if acquirer.pin_key is None:
            log.warning("auth.pin_untranslatable", acquirer=acquirer.name,
                        reason="no pin_key (ZPK) for this acquirer")
            return None
        auth = self.s.settings.authorization
        try:
            block = await self.s.hsm.translate_pin(
                bytes(message.get(52)), pan=pan, source_key=auth.pin_key,
                source_format=auth.pin_format, dest_key=acquirer.pin_key,
                dest_format=acquirer.pin_format)
            outgoing = Message.parse(wire, get_profile(acquirer.profile))
            return outgoing.respond(outgoing.mti, {52: block})
        except (HSMError, CodecError) as error:
            log.warning("auth.pin_untranslatable", acquirer=acquirer.name,
                        reason=type(error).__name__)
            return None

    async def _stand_in(self, message: Message, state: _Attempt, chain: tuple[str, ...],
                        deadline: float, now: datetime) -> bytes:
        """No acquirer decided: approve under the floor limit, with an advice queued."""
        state.acquirer = None
        first = self.s.links.get(chain[0])
        if first is None or self.s.saf is None:
            return self._answer(message, state, "91")
        acquirer = first.settings
        limit = acquirer.floor_limit(state.contract, state.application or "",
                                     state.currency or 0)
        if (state.amount or 0) > limit:
            return self._answer(message, state, "91")
        approval = f"S{next(self._stand_in_numbers) % 100_000:05d}"
        try:
            wire, key = translate.to_acquirer(message, acquirer, now)
        except CodecError:
            return self._answer(message, state, "91")
        code = "000" if acquirer.profile == "iso93-binary" else "00"
        task = self.s.queue_saf(acquirer, "advice", wire, {38: approval, 39: code})
        if task is None:
            return self._answer(message, state, "91")
        left = deadline - asyncio.get_running_loop().time()
        try:
            queued = await asyncio.wait_for(asyncio.shield(task), max(left, 0.0))
        except TimeoutError:
            queued = False
        if not queued:
            return self._answer(message, state, "91")
        state.stand_in = True
        state.acquirer = acquirer
        state.acquirer_time = key[3]
        self._remember(state, str(message.get(11, "")), acquirer, wire)
        self.s.metrics.stand_in.labels(state.application or "").inc()
        return self._answer(message, state, "00", approval=approval)

    def _answer(self, message: Message, state: _Attempt, code: str, *,
                approval: str | None = None, issuer_data: Any = None,
                additional: Any = None) -> bytes:
        """Build the 0110, count it and log it."""
        answer = translate.terminal_answer(message, code, approval, issuer_data, additional)
        state.code = code
        acquirer = state.acquirer.name if state.acquirer is not None and (
            code not in ("91",) or state.stand_in) else ""
        self.s.metrics.authorization(state.application or "", acquirer or "none",
                                     code + ("-standin" if state.stand_in else ""))
        if self.s.authlog is not None:
            self._log(message, state, code, approval, acquirer)
        return answer

    def _log(self, message: Message, state: _Attempt, code: str, approval: str | None,
             acquirer: str) -> None:
        writer = self.s.authlog
        assert writer is not None
        pan = state.pan
        hashed = pan.isdigit() and 12 <= len(pan) <= 19
        expiry = state.expiry if state.expiry and state.expiry.isdigit() and len(
            state.expiry) == 4 and "01" <= state.expiry[2:] <= "12" else None
        latency = int((time.monotonic() - state.started) * 1000)
        try:
            rrn = str(message.get(37)) if 37 in message else None
            stan = str(message.get(11)) if 11 in message else None
        except CodecError:
            rrn = stan = None
        record = AuthRecord(
            at=datetime.now(UTC), mti=message.mti, terminal_serial=state.terminal or None,
            contract_number=state.contract or None, application=state.application,
            acquirer=acquirer or None, stan=stan, rrn=rrn, amount=state.amount,
            currency=state.currency if state.currency and 0 < state.currency < 1000 else None,
            pan_masked=mask_pan(pan) if hashed else None, pan_hmac=None,
            pan_hmac_key_version=None, expiry=expiry, response_code=code,
            authorization_number=approval, stand_in=state.stand_in, latency_ms=latency,
            acquirer_time=state.acquirer_time or None)
        writer.log(record, pan if hashed else None)  # the HMAC is the writer's, batched


def _overdue(task: asyncio.Task[Any], state: _Attempt) -> None:
    """The terminal's deadline passed: stop the dialogue (`_authorize` answers 91)."""
    state.overdue = True
    task.cancel()


class _Attempt:
    """What one authorization learned so far (for the answer, the log and a reversal), and
    where it stands (the acquirer it waits for, as `_on_reply` needs it)."""

    __slots__ = ("acquirer", "acquirer_time", "amount", "application", "chain", "code",
                 "contract", "currency", "deadline", "entry_mode", "expiry", "icc", "index",
                 "key", "known",
                 "later", "link", "message", "now", "overdue", "pan", "sent", "stand_in",
                 "started", "terminal", "wire")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.started = time.monotonic()
        self.deadline = 0.0  # loop time by which the terminal has its answer
        self.now: datetime = _EPOCH  # when the request was checked
        self.pan = ""
        self.expiry: str | None = None
        self.amount: int | None = None
        self.currency: int | None = None
        self.terminal = ""
        self.contract = ""
        self.application: str | None = None
        self.known: dict[int, Any] = {}  # fields already converted (translate.to_acquirer)
        self.entry_mode: str | None = None  # field 22
        self.icc: bytes | None = None  # field 55's bytes, found well formed
        self.chain: tuple[str, ...] = ()  # the route's acquirers
        self.index = 0  # the one being tried
        self.acquirer: AcquirerSettings | None = None
        self.link: AcquirerLink | None = None
        self.key: Any = None  # its MUX key
        self.sent = 0.0  # loop time the request left
        self.later: Later | None = None
        self.acquirer_time = ""  # the time part of the approved request's key
        self.wire: bytes | None = None
        self.stand_in = False
        self.overdue = False
        self.code = ""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _pan_hasher(hsm: Any, pan_key: PanHmacKey | None) -> Any:
    """The auth log's PAN HMAC: the HSM's (newest key version), else the configured key's;
    None (rows without it) with neither."""
    if hsm is not None:
        async def by_hsm(pan: str) -> tuple[bytes, int]:
            found = await hsm.pan_hmac(pan)
            return found.digest, found.version

        return by_hsm
    if pan_key is not None:
        key = pan_key

        async def by_key(pan: str) -> tuple[bytes, int]:
            return pan_hmac(key, pan)

        return by_key
    return None


def build_services(settings: RoutingSettings, *, pool: Any = None, sealer: Any = None,
                   pan_key: PanHmacKey | None = None, registry: Any = None,
                   spool: Any = None, routes_path: str | Path | None = None,
                   hsm: Any = None) -> AuthServices:
    """The dialogue's services from settings; `pool` None = no database (config directory,
    no SAF, so no stand-in; the log goes to `spool` if given). RoutingError when an
    acquirer names a PIN or MAC key and there is no `hsm`."""
    if hsm is None:
        for acquirer in settings.acquirers:
            for key in ("pin_key", "mac_key"):
                if getattr(acquirer, key) is not None:
                    raise RoutingError(f"routes.acquirers ({acquirer.name}): {key} needs an "
                                       "[hsm] table")
    metrics = RoutingMetrics(registry)
    names = [a.name for a in settings.acquirers]
    router = Router(routes_path or settings.path, names)
    links = {a.name: AcquirerLink(a, metrics, hsm) for a in settings.acquirers}
    a = settings.authlog
    authlog = AuthLogWriter(pool, spool, max_queue=a.queue, batch=a.batch,
                            flush_interval=a.flush_interval,
                            on_spooled=metrics.authlog_spooled.inc,
                            hasher=_pan_hasher(hsm, pan_key)) if (pool or spool) else None
    saf = SafStore(pool, sealer) if pool is not None and sealer is not None else None
    return AuthServices(settings=settings, router=router, links=links,
                        directory=Directory(settings, pool), metrics=metrics,
                        authlog=authlog, saf=saf, pan_key=pan_key, hsm=hsm)


def build_from_config(config: Any, *, registry: Any, pool: Any = None, hsm: Any = None,
                      pan_key: PanHmacKey | None = None,
                      spool: Spool | None = None) -> AuthServices:
    """The services from switchd's whole `Settings`: its `[routes]` table, SAF sealed under
    the HSM data key `routes.saf.data_key`, the auth log journalled in `spool` (pass
    `storage.runtime.Storage.authlog_spool`), else in a journal of our own under
    `routes.authlog.spool_dir` or `<switchd.state_dir>/spool-authlog`, closed with the
    services. `registry` is the daemon's Prometheus registry. RoutingError (bad settings or
    routes file) names what to fix."""
    settings = routing_settings(config.routes)
    own: Spool | None = None
    if spool is None:
        spool_dir = settings.authlog.spool_dir or str(Path(config.switchd.state_dir) /
                                                      "spool-authlog")
        try:
            spool = own = Spool(spool_dir).open()
        except StorageError as error:
            raise RoutingError(f"routes.authlog.spool_dir: {error}") from None
    sealer: Any = None
    if hsm is not None:
        sealer = HsmSealer(hsm, settings.saf.data_key)
    elif pool is not None:
        sealer = AesGcmSealer(_local_saf_key(Path(config.switchd.state_dir)))
    try:
        services = build_services(settings, pool=pool, sealer=sealer, pan_key=pan_key,
                                  registry=registry, spool=spool, hsm=hsm)
    except RoutingError:
        if own is not None:
            own.close()
        raise
    services.spool = own
    return services


def _local_saf_key(state_dir: Path) -> bytes:
    """Without an HSM: a SAF data key generated once into `<state_dir>/saf-data.key` (0600).
    Fine for one node; several nodes sharing a SAF table need the HSM's data key."""
    path = state_dir / "saf-data.key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        log.warning("auth.saf_key_generated", path=str(path))
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise RoutingError(f"{path}: not a hexadecimal key") from None


def register(registry: Any, services: AuthServices) -> Authorizer:
    """Route 0100/0101, 0200/0201 (and the terminal's reversals 0400/0420) to the dialogue."""
    authorizer = Authorizer(services)
    registry.register(AUTH_MTIS, authorizer)
    registry.register(REVERSAL_MTIS, authorizer.reverse)
    return authorizer
