"""A persistent, multiplexed link to one acquirer host (TCP or TLS), with reconnection.

One connection carries many requests at once (bounded by the MUX window); answers are
matched by key in `mux.Mux`. The link signs on after connecting, sends an echo when it has
been idle for `echo_interval` (an unanswered echo closes the connection: a half-dead TCP
peer must not swallow authorizations), and reconnects with exponential backoff and jitter.
Everything runs on the caller's event loop (asyncio or uvloop); reading is a `Protocol`, so
no task per request and no copy beyond the framer's.

With `mac_key` in the acquirer's settings (and an HSM), every request sent through
`request()` (authorizations, advices, reversals) carries a MAC in field 64 (128 when the
message has a secondary bitmap) over the message up to that field, and every answer must
carry a valid one: an answer with a missing or bad MAC is logged, counted as a stray and
treated as no answer (LinkTimeout), so the dialogue reverses and fails over as for a
timeout. Sign-on and echo are not MACed (they carry no transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from passerelle.codecs.framing import FramingError, LengthPrefixFramer
from passerelle.codecs.iso8583 import CodecError, Message
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles import get_profile
from passerelle.routing import translate
from passerelle.routing.errors import LinkDown, LinkLost, LinkTimeout
from passerelle.routing.metrics import RoutingMetrics
from passerelle.routing.mux import DuplicateKey, Key, Mux
from passerelle.routing.settings import AcquirerSettings

_log = structlog.get_logger("passerelle.routing")
_MAC_LENGTH = 8


def _mac_field(numbers: tuple[int, ...]) -> int:
    """64, or 128 when the message has a secondary bitmap: the MAC is the last field."""
    return 128 if any(n > 64 for n in numbers) else 64


async def add_mac(wire: bytes, profile: Profile, hsm: Any, key: str, algorithm: str) -> bytes:
    """`wire` with its MAC field set, computed by the HSM over everything before it."""
    message = Message.parse(wire, profile)
    number = _mac_field(tuple(n for n in message.numbers if n not in (64, 128)))
    encoder = profile.encoders[number]
    assert encoder is not None
    tail = len(encoder(bytes(_MAC_LENGTH)))
    data = message.respond(message.mti, {64: None, 128: None, number: bytes(_MAC_LENGTH)})
    data = data[:-tail]
    mac = await hsm.generate_mac(key, data, algorithm, _MAC_LENGTH)
    return data + encoder(mac)


async def mac_valid(message: Message, hsm: Any, key: str, algorithm: str) -> bool:
    """True when `message` ends with a MAC field that the HSM verifies."""
    numbers = message.numbers
    if not numbers or numbers[-1] not in (64, 128):
        return False
    number = numbers[-1]
    mac = message.get(number)
    if not isinstance(mac, bytes) or len(mac) != _MAC_LENGTH:
        return False
    data = message.wire[:len(message.wire) - len(message.raw(number))]
    return bool(await hsm.verify_mac(key, data, mac, algorithm))


class _Wire(asyncio.Protocol):
    """Bytes in: frames -> messages -> the MUX. Bytes out: framed writes."""

    def __init__(self, link: AcquirerLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.framer = LengthPrefixFramer(link.settings.framing, link.settings.max_frame)
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()  # asked once: a system call on 3.11
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FramingError as error:
            self.link.stray("garbage")
            _log.warning("acquirer.framing_error", acquirer=self.link.name, error=str(error))
            self.close()
            return
        for frame in frames:
            self.link.received(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.link.lost(self, str(exc) if exc else "closed by the acquirer")

    def write(self, wire: bytes) -> None:
        """Queue a frame; frames written in one loop iteration leave in one send()."""
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(self.framer.frame(wire))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Sent:
    """`AcquirerLink.send`'s waiter in the MUX: what `request` does after its `await`,
    called by the MUX at once (answer, link lost, timeout), with no task to wake."""

    __slots__ = ("arg", "finished", "function", "mux", "timer")

    def __init__(self, mux: Mux, function: Any, arg: Any) -> None:
        self.mux = mux
        self.function = function
        self.arg = arg
        self.finished = False
        self.timer: Any = None

    def done(self) -> bool:
        return self.finished

    def _end(self) -> None:
        self.finished = True
        timer, self.timer = self.timer, None  # no cycle: the timer's entry holds us
        if timer is not None:
            timer.cancel()
        self.mux.release()

    def set_result(self, answer: Message) -> None:
        self._end()
        self.function(self.arg, answer, None)

    def set_exception(self, error: BaseException) -> None:
        self._end()
        if isinstance(error, LinkDown):
            error = LinkLost(str(error))  # it was sent: the acquirer may have decided
        self.function(self.arg, None, error)

    def cancel(self) -> bool:  # abandoned: nobody is told
        self._end()
        return True


class AcquirerLink:
    """The link to one acquirer: `request()` sends and waits; `start()`/`close()` run it."""

    def __init__(self, settings: AcquirerSettings, metrics: RoutingMetrics | None = None,
                 hsm: Any = None) -> None:
        self.settings = settings
        self.hsm = hsm  # MACs, when settings.mac_key names one
        self.name = settings.name
        self.profile = get_profile(settings.profile)
        self.metrics = metrics
        self.mux = Mux(settings.window)
        self.state = "down"
        self._wire: _Wire | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._stan = itertools.count(1)
        self._last_activity = time.monotonic()
        self._set_state("down")

    # -- public ----------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.state == "up"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"link-{self.name}")

    async def wait_up(self, timeout: float) -> bool:
        """True once the link is up (for start-up and tests), False after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()
        self._up.clear()
        self.mux.fail_all("link closed")
        self._set_state("down")

    async def request(self, wire: bytes, key: Key, timeout: float) -> Message:
        """Send `wire` and return the answer carrying `key`.

        LinkDown: not sent (link down; LinkBusy: no window slot in time).
        LinkLost: sent, then the link died. LinkTimeout: sent, no answer within `timeout`.
        """
        if not self.up or self._wire is None:
            raise LinkDown(f"acquirer {self.name} is {self.state}")
        deadline = time.monotonic() + timeout
        mac_key = self.settings.mac_key
        if mac_key is not None:
            wire = await self._mac(wire, mac_key)
        if not self.mux.try_acquire():
            await self.mux.acquire(max(deadline - time.monotonic(), 0.0))
        try:
            conn = self._wire
            if not self.up or conn is None:
                raise LinkDown(f"acquirer {self.name} is {self.state}")
            future = self.mux.expect(key)
            conn.write(wire)
            self._last_activity = now = time.monotonic()
            # `Mux.wait` inlined: one coroutine less for every authorization.
            timer = self.mux.deadline(key, future, max(deadline - now, 0.0))
            try:
                answer = await future
            except asyncio.CancelledError:
                self.mux.abandon(key)  # the requester itself was cancelled (its deadline)
                raise
            except LinkDown as error:
                raise LinkLost(str(error)) from None
            finally:
                timer.cancel()
        finally:
            self.mux.release()
        if mac_key is not None and not await self._answer_mac_valid(answer, mac_key):
            self.stray("bad_mac")
            _log.warning("acquirer.bad_mac", acquirer=self.name, mti=answer.mti,
                         stan=key[2])
            raise LinkTimeout(f"acquirer {self.name}: answer with a missing or bad MAC")
        return answer

    def send(self, wire: bytes, key: Key, timeout: float, function: Any, arg: Any) -> bool:
        """`request` without a coroutine, for a caller that continues from a callback.

        False, with nothing sent, when that cannot be done at once (link down, a MAC to
        compute, no free window slot): the caller takes `request` instead. Otherwise `wire`
        leaves and exactly one `function(arg, answer, None)` or `function(arg, None, error)`
        follows, `error` being LinkLost (sent, then the link died) or LinkTimeout (no answer
        within `timeout`), as `request` raises them. DuplicateKey: not sent.
        """
        conn = self._wire
        if self.state != "up" or conn is None or self.settings.mac_key is not None:
            return False
        mux = self.mux
        if not mux.try_acquire():
            return False
        sent = _Sent(mux, function, arg)
        try:
            mux.expect(key, sent)
        except DuplicateKey:
            mux.release()
            raise
        conn.write(wire)
        self._last_activity = time.monotonic()
        sent.timer = mux.deadline(key, sent, timeout)
        return True

    async def _mac(self, wire: bytes, key: str) -> bytes:
        """The request with its MAC; LinkDown (not sent) when the HSM cannot make it."""
        if self.hsm is None:
            raise LinkDown(f"acquirer {self.name}: mac_key is set but no [hsm] is configured")
        try:
            return await add_mac(wire, self.profile, self.hsm, key,
                                 self.settings.mac_algorithm)
        except Exception as error:  # HSM away or refusing: this acquirer cannot be used now
            _log.warning("acquirer.mac_failed", acquirer=self.name,
                         error=str(error) or type(error).__name__)
            raise LinkDown(f"acquirer {self.name}: cannot MAC the request") from None

    async def _answer_mac_valid(self, answer: Message, key: str) -> bool:
        try:
            return await mac_valid(answer, self.hsm, key, self.settings.mac_algorithm)
        except Exception as error:  # an unreadable MAC field or the HSM away: not valid
            _log.warning("acquirer.mac_verify_failed", acquirer=self.name,
                         error=str(error) or type(error).__name__)
            return False

    # -- the wire ------------------------------------------------------------------------
    def received(self, frame: bytes) -> None:
        self._last_activity = time.monotonic()
        try:
            message = Message.parse(frame, self.profile)
            key = translate.key_of(message)
        except CodecError as error:
            self.stray("garbage")
            _log.warning("acquirer.unreadable", acquirer=self.name, field=error.field,
                         reason=error.reason)
            return
        outcome = self.mux.deliver(key, message)
        if outcome != "matched":
            self.stray(outcome)
            _log.info("acquirer.stray_answer", acquirer=self.name, kind=outcome, mti=key[0],
                      stan=key[2])

    def stray(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.link_strays.labels(self.name, kind).inc()

    def lost(self, wire: _Wire, reason: str) -> None:
        if wire is not self._wire:
            return
        self._wire = None
        self._up.clear()
        self._set_state("down")
        keys = self.mux.fail_all(reason)
        _log.warning("acquirer.link_lost", acquirer=self.name, reason=reason,
                     in_flight=len(keys))

    # -- lifecycle -----------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        self.state = state
        if self.metrics is not None:
            self.metrics.state(self.name, state)

    def _ssl(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls:
            return None
        context = ssl.create_default_context(cafile=s.tls_ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if s.tls_cert:
            context.load_cert_chain(s.tls_cert, s.tls_key)
        return context

    async def _run(self) -> None:
        s = self.settings
        delay = s.reconnect_min
        loop = asyncio.get_running_loop()
        while True:
            self._set_state("connecting")
            try:
                context = self._ssl()
                async with asyncio.timeout(s.connect_timeout):
                    _, wire = await loop.create_connection(
                        lambda: _Wire(self), s.host, s.port, ssl=context,
                        server_hostname=(s.tls_server_name or s.host) if context else None)
                self._wire = wire
                if s.sign_on:
                    self._set_state("signing_on")
                    await self._network("sign-on", echo=False)
                self._set_state("up")
                self._up.set()
                _log.info("acquirer.link_up", acquirer=self.name, host=s.host, port=s.port)
                delay = s.reconnect_min
                await self._keep_alive(wire)
            except (OSError, TimeoutError, ssl.SSLError, LinkDown, LinkTimeout,
                    CodecError) as error:
                _log.warning("acquirer.connect_failed", acquirer=self.name,
                             error=str(error) or type(error).__name__)
            except Exception:  # a bug must not leave the link down for good
                _log.exception("acquirer.link_error", acquirer=self.name)
            if self._wire is not None:
                self._wire.close()
                self.lost(self._wire, "reconnecting")
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            delay = min(delay * 2, s.reconnect_max)

    async def _network(self, what: str, *, echo: bool) -> None:
        """Sign-on or echo on the current connection; raises if it is not answered 00."""
        wire, key = translate.sign_on(self.settings, next(self._stan), datetime.now(UTC), echo)
        conn = self._wire
        if conn is None:
            raise LinkDown("no connection")
        future = self.mux.expect(key)
        conn.write(wire)
        answer = await self.mux.wait(key, future, self.settings.response_timeout)
        code = str(answer.get(39, ""))
        if code not in ("00", "000", "800"):
            raise LinkDown(f"{what} refused with code {code or 'none'}")

    async def _keep_alive(self, wire: _Wire) -> None:
        """Until the connection closes: an echo after every idle `echo_interval`."""
        interval = self.settings.echo_interval
        while True:
            idle = time.monotonic() - self._last_activity
            try:
                async with asyncio.timeout(max(interval - idle, 0.01)):
                    await asyncio.shield(wire.closed)
                return
            except TimeoutError:
                pass
            if time.monotonic() - self._last_activity >= interval:
                await self._network("echo", echo=True)
                self._last_activity = time.monotonic()

