"""The protocol stack of each listener kind, glued from the sans-I/O layers.

    xot          XOT/X.25 circuit -> CBCOM session -> CB2A
    cbcom(-tls)  4-byte framer -> CBCOM session -> CB2A
    iso          2-byte framer -> ISO 8583

A stack is fed plaintext bytes and the time, logs one `layer.step` event per session step,
hands whole messages to `Connection.deliver`, and writes whatever the layers queue. The
layers decide every protocol answer (Clear with cause and diagnostic, AB with its code);
the stack only carries them and closes the connection when a layer says the session is over.

Deadlines: `Connection.deadline` is a lower bound of the stack's `deadline()` (the daemon's
sweep ticks a connection whose bound is due, and the tick sets it exactly). `receive` keeps
it a lower bound: a CBCOM session's deadline only moves earlier when a DE starts TGR, which
the stack checks with one comparison; an iso idle timer only moves later. No call per
message to recompute it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from passerelle.codecs import cbcom
from passerelle.codecs.framing import FramingError, LengthPrefixFramer, frame2
from passerelle.switchd import cbcom_session as cs
from passerelle.switchd import x25_circuit as xc

if TYPE_CHECKING:
    from passerelle.switchd.connection import Connection
    from passerelle.switchd.server import Listener

_MODES = {cbcom.PROTOCOL_TRANSACTIONAL: "transactional", cbcom.PROTOCOL_TRANSFER: "transfer"}


class Stack:
    """Base: what a `Connection` asks of the layers above the socket."""

    __slots__ = ("conn", "listener", "loop", "metrics")

    def __init__(self, conn: Connection, listener: Listener) -> None:
        self.conn = conn
        self.listener = listener
        self.metrics = listener.daemon.metrics
        self.loop = listener.daemon.loop

    def receive(self, data: bytes) -> None:
        """Bytes from the terminal (after PROXY header and TLS)."""
        raise NotImplementedError

    def answer(self, payload: bytes) -> None:
        """A CB2A answer from a dialogue, to send down the stack."""
        raise NotImplementedError

    def no_answer(self) -> None:
        """The dialogue gave no answer to the last message delivered: none is owed."""

    def abort(self, code: int) -> None:
        """A dialogue ends the session with CBCOM abort `code` (no session layer: close)."""
        self.conn.close(f"aborted by the dialogue (0x{code:02X})")

    def deadline(self) -> float:
        """When `tick` has something to do (inf: never)."""
        return math.inf

    def tick(self, now: float) -> None:
        """A timer is due."""

    def shutdown(self) -> None:
        """switchd is draining and the session is idle: end it the protocol's way."""

    def lost(self) -> None:
        """The connection is gone (for whatever reason)."""


class IsoStack(Stack):
    """2-byte length + ISO 8583 message; no session layer, so an idle timer of its own."""

    __slots__ = ("_framer", "_idle_deadline", "_in", "_out", "_timeout")

    def __init__(self, conn: Connection, listener: Listener) -> None:
        super().__init__(conn, listener)
        settings = listener.daemon.settings.listeners.iso
        self._framer = LengthPrefixFramer(2, min(settings.max_frame, 0xFFFF))
        self._timeout = settings.idle_timeout
        self._idle_deadline = self.loop.time() + self._timeout
        self._in = self.metrics.frame_cell("iso", "in")
        self._out = self.metrics.frame_cell("iso", "out")
        conn.session_started(None)

    def receive(self, data: bytes) -> None:
        frames = self._framer.feed(data)  # FramingError: the connection closes
        # Only ever later: the connection's deadline stays a lower bound of it.
        self._idle_deadline = self.loop.time() + self._timeout
        deliver, count = self.conn.deliver, self._in
        for frame in frames:
            count[0] += 1
            deliver(frame)

    def answer(self, payload: bytes) -> None:
        self._out[0] += 1
        self.conn.write(frame2(payload))

    def deadline(self) -> float:
        return self._idle_deadline

    def tick(self, now: float) -> None:
        if now >= self._idle_deadline:
            self.conn.log.info("iso.idle_timeout")
            self.conn.close("idle timeout")

    def shutdown(self) -> None:
        self.conn.close("draining")

    def lost(self) -> None:
        self.conn.session_ended()


class _CbcomUser(Stack):
    """Shared by the CBCOM stacks: drives a server-side `CbcomSession`."""

    __slots__ = ("session",)

    def _cbcom_config(self) -> cs.CbcomConfig:
        """The listener's config, built once and shared by its sessions."""
        listener = self.listener
        if listener.cbcom_config is None:
            timers = listener.daemon.settings.cbcom
            listener.cbcom_config = cs.CbcomConfig(
                tgr=timers.tgr, tsi=timers.tsi, tnr=timers.tnr,
                cn_timeout=timers.cn_timeout, max_frame=listener.settings.max_frame,
            )
        return listener.cbcom_config

    def _session_events(self, events: list[cs.Event]) -> bool:
        """Act on the session's events; True when the session is over."""
        conn = self.conn
        for event in events:
            if isinstance(event, cs.Message):
                conn.deliver(event.apdu)
            elif isinstance(event, cs.Connected):
                proto = event.protocol
                mode = _MODES.get(proto.protocol_type, f"0x{proto.protocol_type:02X}")
                conn.log.info("cbcom.connected", mode=mode, cbcom_version=proto.cbcom_version,
                              cb2a_version=proto.cb2a_version, tnr=event.tnr, tsi=event.tsi,
                              tma=event.tma)
                self._connected(mode)
            elif isinstance(event, cs.Aborted):
                if not event.by_peer and event.code != cbcom.CODE_NORMAL_END:
                    self.metrics.error("cbcom", f"0x{event.code or 0:02X}")
                conn.log.info("cbcom.aborted", code=f"0x{event.code or 0:02X}",
                              by_peer=event.by_peer, reason=event.reason)
                return True
        return False

    def _connected(self, mode: str) -> None:
        self.conn.session_started(mode)

    def _session_deadline(self) -> float:
        return self.session.deadline


class CbcomStack(_CbcomUser):
    """4-byte length + CBCOM IPDU, over TCP or inside TLS."""

    __slots__ = ("_counted", "_framer", "_in", "_now", "_open", "_out", "_receiving",
                 "_time", "_whole")

    def __init__(self, conn: Connection, listener: Listener) -> None:
        super().__init__(conn, listener)
        self._framer = LengthPrefixFramer(4, listener.settings.max_frame)
        self._whole = True  # the framer holds nothing: a chunk may be one whole frame
        self._time = self.loop.time
        self._now = self._time()
        self.session = cs.CbcomSession(cs.Role.SERVER, self._cbcom_config(), now=self._now,
                                       framed=True)
        self._open = False
        # While True, `receive` is running: answers given meanwhile leave in one write at
        # its end, and use its `_now` (the loop's time does not move within a callback).
        self._receiving = False
        self._in = self.metrics.frame_cell("cbcom", "in")
        self._out = self.metrics.frame_cell("cbcom", "out")
        self._counted = 0  # session.sent already added to the frames-out metric

    def receive(self, data: bytes) -> None:
        session, conn = self.session, self.conn
        if self._whole and data.__class__ is bytes:
            # The usual chunk: one frame holding one DE. Straight to the dialogue.
            now = self._now = self._time()
            apdu = session.receive_framed_apdu(data, now)
            if apdu is not None:
                self._in[0] += 1
                self._receiving = True
                try:
                    conn.deliver(apdu)
                finally:
                    self._receiving = False
                out = session.data_to_send()  # _flush, inlined
                if out:
                    sent = session.sent
                    self._out[0] += sent - self._counted
                    self._counted = sent
                    conn.write(out)
                # A DE not answered yet started TGR: the connection's deadline may have
                # to come earlier (an answered one leaves TSI, later than any bound set).
                deadline = session.deadline
                if deadline < conn.deadline and not conn.closed:
                    conn.deadline = deadline
                return
        framer = self._framer
        try:
            frames = framer.feed(data)
        except FramingError as error:
            self.metrics.error("framing", "too_long")
            self._after(session.abort(cbcom.CODE_APDU_LENGTH, str(error)))
            return
        self._whole = not framer.pending
        if not frames:
            return
        now = self._now = self._time()
        done = 0
        self._receiving = True
        try:
            for frame in frames:
                done += 1
                apdu = session.receive_data_apdu(frame, now)  # a DE: no event objects
                if apdu is not None:
                    conn.deliver(apdu)
                elif self._session_events(session.receive_ipdu(frame, now)):
                    self._flush()
                    conn.close("cbcom session over")
                    return
        finally:
            self._receiving = False
            self._in[0] += done
        self._flush()
        deadline = session.deadline
        if deadline < conn.deadline and not conn.closed:
            conn.deadline = deadline

    def _after(self, events: list[cs.Event]) -> None:
        over = self._session_events(events)
        self._flush()
        if over:
            self.conn.close("cbcom session over")

    def _flush(self) -> None:
        session = self.session
        data = session.data_to_send()  # framed: a DE leaves as the session encoded it
        if data:
            sent = session.sent
            self._out[0] += sent - self._counted
            self._counted = sent
            self.conn.write(data)

    def _connected(self, mode: str) -> None:
        self._open = True
        super()._connected(mode)

    def answer(self, payload: bytes) -> None:
        if self._receiving:
            self.session.send_message(payload, self._now)
        else:
            self.session.send_message(payload, self._time())
            self._flush()

    def no_answer(self) -> None:
        self.session.no_answer(self._now if self._receiving else self._time())

    def abort(self, code: int) -> None:
        self._after(self.session.abort(code, "aborted by the dialogue"))

    def deadline(self) -> float:
        return self.session.deadline

    def tick(self, now: float) -> None:
        self._after(self.session.tick(now))

    def shutdown(self) -> None:
        self._after(self.session.abort(cbcom.CODE_NORMAL_END, "switchd stopping"))

    def lost(self) -> None:
        if self._open:
            self._open = False
            self.conn.session_ended()


class XotStack(_CbcomUser):
    """XOT + X.25 virtual circuit, one CBCOM IPDU per M-bit chain."""

    __slots__ = ("_clear_pending", "_in", "_now", "_open", "_out", "_receiving", "circuit")

    def __init__(self, conn: Connection, listener: Listener) -> None:
        super().__init__(conn, listener)
        if listener.circuit_config is None:
            x25 = listener.daemon.settings.x25
            listener.circuit_config = xc.CircuitConfig(
                default_packet_size=x25.packet_size, default_window=x25.window,
                max_packet_size=x25.max_packet_size, max_window=x25.max_window,
                allow_modulo_128=x25.allow_modulo_128,
                max_message_size=listener.settings.max_frame,
                call_timeout=x25.call_timeout, clear_timeout=x25.clear_timeout,
            )
        self.circuit = xc.X25Circuit(xc.Role.DCE, listener.circuit_config, now=self.loop.time())
        self.session: cs.CbcomSession | None = None  # type: ignore[assignment]
        self._open = False
        self._clear_pending = False  # CBCOM ended: clear the call once the AB is sent
        self._receiving = False  # as CbcomStack: answers meanwhile leave with the RRs
        self._now = 0.0
        self._in = self.metrics.frame_cell("x25", "in")
        self._out = self.metrics.frame_cell("x25", "out")

    def receive(self, data: bytes) -> None:
        now = self._now = self.loop.time()
        self._receiving = True
        try:
            self._circuit_events(self.circuit.receive_data(data, now), now)
        finally:
            self._receiving = False
        self._flush(now)
        self.conn.refresh_deadline()  # the circuit's timers may have come earlier

    def _circuit_events(self, events: list[xc.Event], now: float) -> None:
        conn, circuit = self.conn, self.circuit
        for event in events:
            if event.__class__ is xc.Message:
                self._in[0] += 1
                session = self.session
                if session is None:
                    continue
                data = event.data  # type: ignore[union-attr]
                apdu = session.receive_data_apdu(data, now) if data.__class__ is bytes else None
                if apdu is not None:  # a DE: no event objects
                    conn.deliver(apdu)
                elif self._session_events(session.receive_ipdu(data, now)):
                    self._clear_pending = True
            elif isinstance(event, xc.CallIncoming):
                neg = event.negotiated
                conn.log.info("x25.call_incoming", called=event.called, calling=event.calling,
                              lcn=event.lcn, modulo=neg.modulo, packet_size=neg.packet_size_tx,
                              window=neg.window_tx)
                if circuit.state is not xc.State.CALL_RECEIVED:
                    continue  # a packet after the Call Request already broke the call
                circuit.accept_call()
                conn.log.info("x25.call_accepted", lcn=event.lcn)
                self._select_profile(event.called)
                self.session = cs.CbcomSession(cs.Role.SERVER, self._cbcom_config(), now=now)
                self._open = True
                conn.session_started(None)
            elif isinstance(event, xc.ProtocolError):
                self.metrics.error("x25", f"diag_{event.diagnostic}")
                conn.log.warning("x25.protocol_error", reason=event.reason,
                                 cause=f"0x{event.cause:02X}", diagnostic=event.diagnostic)
            elif isinstance(event, xc.Reset):
                conn.log.info("x25.reset", cause=event.cause, diagnostic=event.diagnostic)
            elif isinstance(event, xc.Interrupted):
                conn.log.info("x25.interrupt")
            elif isinstance(event, xc.Cleared):
                conn.log.info("x25.cleared", cause=f"0x{event.cause:02X}",
                              diagnostic=event.diagnostic, by_peer=event.by_peer,
                              reason=event.reason)
                self._flush(now)
                conn.close("x25 call cleared")
                return

    def _connected(self, mode: str) -> None:
        if self.conn.context is not None:
            self.conn.context.mode = mode

    def _select_profile(self, called: str) -> None:
        """The called address may choose the CB2A profile (x25.called_profiles)."""
        table = self.listener.daemon.settings.x25.called_profiles
        matches = [prefix for prefix in table if called.startswith(prefix)]
        context = self.conn.context
        if matches and context is not None:
            name = table[max(matches, key=len)]
            context.profile = self.listener.daemon.dispatcher.profile(name)
            self.conn.log.info("x25.profile_selected", called=called, profile=name)

    def _flush(self, now: float) -> None:
        circuit = self.circuit
        if self.session is not None:
            for ipdu in self.session.ipdus_to_send():
                self._out[0] += 1
                circuit.send_message(ipdu)
        if self._clear_pending and not circuit.queued:
            self._clear_pending = False
            self._circuit_events(circuit.clear(xc.x25.CAUSE_DTE_ORIGINATED, 0, now=now), now)
        out = circuit.data_to_send()
        if out:
            self.conn.write(out)

    def answer(self, payload: bytes) -> None:
        if self.session is None:
            return
        if self._receiving:  # `receive` flushes once at its end
            self.session.send_message(payload, self._now)
            return
        now = self.loop.time()
        self.session.send_message(payload, now)
        self._flush(now)

    def no_answer(self) -> None:
        if self.session is not None:
            self.session.no_answer(self._now if self._receiving else self.loop.time())

    def abort(self, code: int) -> None:
        """AB with `code`, then the call is cleared once the AB has left the window."""
        now = self.loop.time()
        if self.session is not None and self._session_events(
                self.session.abort(code, "aborted by the dialogue")):
            self._clear_pending = True
        self._flush(now)

    def deadline(self) -> float:
        deadline = self.circuit.next_deadline()
        circuit = math.inf if deadline is None else deadline
        return min(circuit, self._session_deadline()) if self.session is not None else circuit

    def tick(self, now: float) -> None:
        self._circuit_events(self.circuit.tick(now), now)
        if self.session is not None and self._session_events(self.session.tick(now)):
            self._clear_pending = True
        self._flush(now)

    def shutdown(self) -> None:
        now = self.loop.time()
        if self.session is not None and self._session_events(
                self.session.abort(cbcom.CODE_NORMAL_END, "switchd stopping")):
            self._clear_pending = True
        self._flush(now)
        if self._clear_pending:  # the AB is still in the window: clear anyway, we are going
            self._clear_pending = False
            self._circuit_events(self.circuit.clear(xc.x25.CAUSE_DTE_ORIGINATED, 0, now=now),
                                 now)
            out = self.circuit.data_to_send()
            if out:
                self.conn.write(out)

    def lost(self) -> None:
        if self._open:
            self._open = False
            self.conn.session_ended()
