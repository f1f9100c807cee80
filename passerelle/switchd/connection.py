"""Terminal connections: asyncio Protocols that only move bytes through the sans-I/O stack.

A `Connection` owns the socket side: connection limits, the optional PROXY v2 header, the
optional TLS layer, flow control, timers, and the serialisation of messages handed to the
dispatcher. Everything protocol-specific is in a `Stack` (one per listener kind, see
`stacks.py`) built from the pure layers of `passerelle.codecs` and `passerelle.switchd`.
Nothing that arrives on the socket can raise out of here: every error closes that one
connection (after the protocol's error answer when there is one) and is logged and counted.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from passerelle.codecs.framing import WireError
from passerelle.codecs.proxy_v2 import ProxyHeaderError, parse_proxy_header
from passerelle.switchd.dispatch import Later, SessionContext
from passerelle.switchd.tls import TLSError, TLSLayer

if TYPE_CHECKING:
    from passerelle.switchd.server import Listener
    from passerelle.switchd.stacks import Stack

# A session's messages wait here while a slow dialogue runs; past this, stop reading.
_MAX_QUEUED = 16
# After close(), what is still unsent gets this long to leave before the socket is reset.
_CLOSE_GRACE = 10.0
# A PROXY v2 header is at most 16 + 65535 bytes; we accept far less (TLVs we do not use).
_MAX_PROXY_HEADER = 16 + 1024


class Connection(asyncio.Protocol):
    """One TCP connection of a terminal (or test tool) on one listener."""

    __slots__ = (
        "_handle", "_inflight", "_proxy_buf", "_queue", "_reading_paused", "_writing_paused",
        "closed", "closing", "context", "deadline", "handshake_deadline", "listener", "log", "peer",
        "reason", "stack", "tls", "transport",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.log: Any = listener.log
        self.stack: Stack | None = None
        self.tls: TLSLayer | None = None
        self._proxy_buf: bytearray | None = None
        self.context: SessionContext | None = None
        self._inflight: asyncio.Future[Any] | Later | None = None
        self._handle = listener.daemon.dispatcher.handle  # looked up once, not per message
        self._queue: deque[bytes] = deque()
        self._reading_paused = False
        self._writing_paused = False
        self.deadline = math.inf
        self.handshake_deadline = math.inf
        self.closing = False
        self.closed = False
        self.reason = "peer closed"

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        listener = self.listener
        address = transport.get_extra_info("peername")
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "local"
        metrics = listener.daemon.metrics
        if listener.draining or len(listener.connections) >= listener.settings.max_connections:
            reason = "draining" if listener.draining else "max_connections"
            metrics.connections_refused.labels(listener.name, reason).inc()
            listener.log.warning("conn.refused", peer=self.peer, reason=reason)
            self.closed = True
            self.reason = f"refused: {reason}"
            transport.abort()  # type: ignore[attr-defined]
            return
        listener.connections.add(self)
        listener.connections_open.inc()
        listener.connections_total.inc()
        self.log = listener.log.bind(peer=self.peer)
        self.log.info("conn.accepted")
        now = listener.daemon.loop.time()
        self.handshake_deadline = now + listener.daemon.settings.switchd.handshake_timeout
        try:
            if listener.settings.proxy_protocol:
                self._proxy_buf = bytearray()
            elif listener.ssl_context is not None:
                self.tls = TLSLayer(listener.ssl_context)
            else:
                self._start_stack()
        except Exception:
            metrics.error("switchd", "internal")
            self.log.exception("conn.internal_error")
            self.abort("internal error")
            return
        self.refresh_deadline()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            if self._proxy_buf is None and self.tls is None:
                # The usual case: plain TCP, the stack up (or closed, above). The stack
                # keeps `deadline` a lower bound of its own (see stacks.py): no refresh.
                self.stack.receive(data)  # type: ignore[union-attr]
                return
            if self._proxy_buf is not None:
                data = self._read_proxy_header(data)
            if data and self.tls is not None:
                data = self._tls_in(data)
            if data and self.stack is not None:
                self.stack.receive(data)
        except WireError as error:
            self.listener.daemon.metrics.error(_layer_of(error), type(error).__name__)
            self.close(f"{_layer_of(error)} error: {error}")
        except TLSError as error:
            self.listener.daemon.metrics.error("tls", "handshake" if self.stack is None
                                               else "record")
            self.close(f"tls error: {error}")
        except Exception:  # the daemon never dies from bad input
            self.listener.daemon.metrics.error("switchd", "internal")
            self.log.exception("conn.internal_error")
            self.abort("internal error")
            return
        self.refresh_deadline()

    def eof_received(self) -> bool | None:
        self.reason = "peer closed"
        if self.idle or self.closed:
            return None  # let the transport close itself
        self.closing = True  # half-closed with a dialogue in flight: answer, then close
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        was_closed = self.closed
        self.closed = True
        listener = self.listener
        if self in listener.connections:
            listener.connections.discard(self)
            listener.connections_open.dec()
        if self.stack is not None:
            self.stack.lost()
        if exc is not None and not was_closed:
            self.reason = f"connection lost: {exc}"
        self.log.info("conn.closed", reason=self.reason)
        listener.connection_gone()

    def pause_writing(self) -> None:
        """The peer reads slower than we answer: stop reading it until it catches up."""
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # -- used by the stack ---------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send `data` (plaintext: the TLS layer, when there is one, encrypts it)."""
        if self.closed or self.transport is None:
            return
        if self.tls is not None:
            try:
                data = self.tls.send(data)
            except TLSError as error:
                self.abort(f"tls error: {error}")
                return
        self.transport.write(data)

    def close(self, reason: str) -> None:
        """Close after what is already written has been sent (within _CLOSE_GRACE)."""
        if self.closed or self.transport is None:
            return
        self.closed = True
        self.reason = reason
        if self._writing_paused:  # a peer that does not read would keep us waiting
            self.transport.abort()
            return
        self.transport.close()
        self.deadline = self.listener.daemon.loop.time() + _CLOSE_GRACE

    def abort(self, reason: str) -> None:
        """Close now, dropping anything not yet sent."""
        if self.transport is None:
            return
        self.closed = True
        self.reason = reason
        self.transport.abort()

    def deliver(self, payload: bytes) -> None:
        """A whole CB2A / ISO 8583 message from the terminal: to the dispatcher, in order.

        A synchronous answer goes down the stack at once; an awaitable one runs as this
        connection's one dialogue in flight, and the messages after it wait in the queue."""
        if self._inflight is not None:
            self._queue.append(payload)
            self._update_reading()
            return
        context = self.context
        try:
            answer = self._handle(payload, context)  # type: ignore[arg-type]
        except Exception:
            self.listener.daemon.metrics.error("dialogue", "internal")
            self.log.exception("dialogue.failed")
            return
        if answer.__class__ is bytes:
            self.stack.answer(answer)  # type: ignore[union-attr]
        elif answer is None:
            self.stack.no_answer()  # type: ignore[union-attr]
        elif isinstance(answer, bytes):
            self.stack.answer(answer)  # type: ignore[union-attr]
        elif answer.__class__ is Later:  # settled from a callback: no task
            self._inflight = answer
            self.listener.daemon.inflight.add(answer)  # type: ignore[arg-type]
            answer.listen(self._later_done)  # type: ignore[union-attr]
            return
        else:
            self._start_dialogue(answer)  # type: ignore[arg-type]
            return
        if context.abort_code is not None:  # type: ignore[union-attr]
            self._abort_session()
        elif self.closing:
            self.drain()

    @property
    def idle(self) -> bool:
        """No dialogue running, queued, or expecting more messages (drain may close it)."""
        return (self._inflight is None and not self._queue
                and not (self.context is not None and self.context.busy))

    def session_started(self, mode: str | None = None) -> None:
        """The stack's session layer is up (X.25 call accepted, CBCOM CN accepted)."""
        if self.context is not None:
            self.context.mode = mode
        self.listener.sessions_open.inc()

    def session_ended(self) -> None:
        self.listener.sessions_open.dec()

    # -- timers and drain (called by the daemon) -----------------------------------------
    def on_deadline(self, now: float) -> None:
        """The earliest of our timers is due."""
        if self.closed:  # closed, yet the last bytes are still not taken: give up
            if self.transport is not None and now >= self.deadline:
                self.transport.abort()
            self.deadline = math.inf
            return
        try:
            if now >= self.handshake_deadline:
                self.listener.daemon.metrics.error("switchd", "handshake_timeout")
                self.log.info("conn.handshake_timeout")
                self.abort("handshake timeout")
                return
            if self.stack is not None:
                self.stack.tick(now)
        except Exception:
            self.listener.daemon.metrics.error("switchd", "internal")
            self.log.exception("conn.internal_error")
            self.abort("internal error")
            return
        self.refresh_deadline()

    def drain(self) -> None:
        """switchd is stopping: end the session politely once no dialogue is in flight."""
        self.closing = True
        if self.closed:
            return
        if self.stack is None:
            self.abort("draining")
        elif self.idle:
            self.stack.shutdown()
            self.close("draining")

    # -- internals -----------------------------------------------------------------------
    def _start_stack(self) -> None:
        listener = self.listener
        profile = listener.daemon.dispatcher.profile(listener.profile)
        client = self.tls.peer_subject if self.tls is not None else None
        self.context = SessionContext(listener.name, self.peer, profile, self.log, client)
        self.handshake_deadline = math.inf  # from here on, the stack's own timers rule
        self.stack = listener.make_stack(self)

    def _read_proxy_header(self, data: bytes) -> bytes:
        assert self._proxy_buf is not None
        buf = self._proxy_buf
        buf += data
        try:
            header = parse_proxy_header(buf)
        except ProxyHeaderError as error:
            self.listener.daemon.metrics.error("proxy", "bad_header")
            self.close(f"proxy error: {error}")
            return b""
        if header is None:
            if len(buf) > _MAX_PROXY_HEADER:
                self.listener.daemon.metrics.error("proxy", "too_long")
                self.close("proxy error: header too long")
            return b""
        result, used = header
        rest = bytes(buf[used:])
        self._proxy_buf = None
        if result.source is not None:
            self.peer = result.source
            self.log = self.listener.log.bind(peer=self.peer)
        self.log.info("proxy.header", command=result.command)
        if self.listener.ssl_context is not None:
            self.tls = TLSLayer(self.listener.ssl_context)
        else:
            self._start_stack()
        return rest

    def _tls_in(self, data: bytes) -> bytes:
        assert self.tls is not None and self.transport is not None
        was_done = self.tls.handshake_done
        plain, out = self.tls.receive(data)
        if out:
            self.transport.write(out)
        if not was_done and self.tls.handshake_done:
            self.log = self.log.bind(tls=self.tls.version, client=self.tls.peer_subject)
            self.log.info("tls.handshake_done")
            self._start_stack()
        return plain

    def _start_dialogue(self, pending: Awaitable[Any]) -> None:
        task = self.listener.daemon.loop.create_task(self._dialogue(pending))
        self._inflight = task
        self.listener.daemon.inflight.add(task)

    async def _dialogue(self, pending: Awaitable[Any]) -> None:
        """A slow dialogue's task: its answer goes down the stack as soon as it is there,
        in the same step (no done callback, one loop iteration later), then the queue."""
        answer = None
        failed = True
        cancelled: asyncio.CancelledError | None = None
        try:
            answer = await pending
            failed = False
        except asyncio.CancelledError as error:
            self.log.warning("dialogue.cancelled")
            cancelled = error
        except Exception as error:
            self.listener.daemon.metrics.error("dialogue", "internal")
            self.log.error("dialogue.failed", exc_info=error)
        self.listener.daemon.inflight.discard(self._inflight)  # type: ignore[arg-type]
        self._inflight = None
        if not (self.closed or self.stack is None):
            self._after_dialogue(answer, failed)
        if cancelled is not None:
            raise cancelled

    def _later_done(self, answer: bytes | None, failed: bool) -> None:
        """A `Later` dialogue settled: as `_dialogue` after its await (its errors were
        logged and counted where it failed)."""
        self.listener.daemon.inflight.discard(self._inflight)  # type: ignore[arg-type]
        self._inflight = None
        if not (self.closed or self.stack is None):
            self._after_dialogue(answer, failed)

    def _after_dialogue(self, answer: bytes | None, failed: bool) -> None:
        assert self.stack is not None
        try:
            if answer is not None:
                self.stack.answer(answer)
            elif not failed:
                self.stack.no_answer()
            if self.context is not None and self.context.abort_code is not None:
                self._abort_session()
                return
            while self._queue and self._inflight is None and not self.closed:
                self.deliver(self._queue.popleft())
        except Exception:
            self.listener.daemon.metrics.error("switchd", "internal")
            self.log.exception("conn.internal_error")
            self.abort("internal error")
            return
        self._update_reading()
        self.refresh_deadline()
        if self.closing:
            self.drain()

    def _abort_session(self) -> None:
        """A dialogue called `context.abort(code)`: the stack ends the session its way."""
        assert self.context is not None and self.stack is not None
        code = self.context.abort_code
        assert code is not None
        self._queue.clear()
        self.log.info("dialogue.abort", code=f"0x{code:02X}")
        self.stack.abort(code)
        self._update_reading()
        self.refresh_deadline()

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        want_pause = self._writing_paused or len(self._queue) >= _MAX_QUEUED
        if want_pause != self._reading_paused:
            self._reading_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def refresh_deadline(self) -> None:
        """Set `deadline` to exactly the earliest of our timers (the sweep's lower bound)."""
        if self.closed:
            return  # close() set the grace deadline
        stack_deadline = self.stack.deadline() if self.stack is not None else math.inf
        handshake = self.handshake_deadline
        self.deadline = handshake if handshake < stack_deadline else stack_deadline


def _layer_of(error: Exception) -> str:
    """The layer an error belongs to, for logs and metrics (module of its class)."""
    module = type(error).__module__.rsplit(".", 1)[-1]
    return {"framing": "framing", "xot": "xot", "x25": "x25", "x25_circuit": "x25",
            "cbcom": "cbcom", "cbcom_session": "cbcom", "proxy_v2": "proxy"}.get(module, module)

