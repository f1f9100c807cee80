"""One X.25 virtual circuit over one XOT (RFC 1613) TCP connection, sans-I/O.

No sockets, no asyncio, no clock: the caller feeds bytes and the time, and collects events
and the bytes to send. Either side of the call:

* ``Role.DCE`` (switchd, the default): waits for a Call Request, reports
  :class:`CallIncoming`, and answers it with :meth:`X25Circuit.accept_call` or refuses it
  with :meth:`X25Circuit.clear`;
* ``Role.DTE`` (the terminal simulator): :meth:`X25Circuit.place_call`, then
  :class:`CallConnected` when the call is accepted.

Usage (switchd side)::

    circuit = X25Circuit(now=loop.time())                # Role.DCE, CircuitConfig()
    for event in circuit.receive_data(chunk, loop.time()):
        match event:
            case CallIncoming(): circuit.accept_call()
            case Message(data=ipdu): ...                 # a whole M-bit chain
            case Cleared(): close_after_flush = True     # the circuit is over
    transport.write(circuit.data_to_send())
    # and schedule circuit.tick(loop.time()) at circuit.next_deadline() (None: no timer)

Methods that start a timer take ``now`` (seconds, any monotonic origin). Every method may
queue bytes: call :meth:`X25Circuit.data_to_send` after each and write what it returns.

Behaviour:

* negotiation: packet size (facility 0x42) and window (0x43) default to
  ``CircuitConfig.default_packet_size``/``default_window`` (128 and 2); a caller's request is
  accepted towards the default, within ``max_packet_size``/``max_window``, as X.25 §6.10
  and §6.11 allow; modulo 128 is accepted if ``allow_modulo_128``. Facilities the caller
  sent are answered in Call Accepted with the negotiated values;
* data: an M-bit chain is reassembled into one :class:`Message` (bounded by
  ``max_message_size``); :meth:`X25Circuit.send_message` segments to the negotiated packet
  size and never has more than the window of unacknowledged packets in flight; the rest
  waits for the peer's P(R) (RR or piggybacked on Data). After each batch of received data
  the circuit acknowledges with RR (or piggybacks P(R) on its own Data), so the peer's
  window stays open. RNR stops sending until RR;
* Clear from the peer is confirmed and ends the circuit; our Clear waits for the Clear
  Confirmation (or ``clear_timeout``); Reset from the peer is confirmed, both sequence
  numbers restart at 0 and data in transit (a partial chain, unsent segments) is dropped;
  Interrupt is confirmed; Restart (not carried over XOT, RFC 1613 §4) ends the circuit;
* any protocol error gets a Clear with cause 0x13 (local procedure error; 0x03 for a
  facility problem; 0x00 when we are the DTE) and the ITU-T X.25 Annex E diagnostic:
  1 invalid P(S), 2 invalid P(R), 20-29 packet type invalid for the state, 33 unidentifiable
  packet, 36 wrong logical channel, 38 packet too short, 39 packet too long, 40 bad GFI,
  66 facility parameter not allowed, 83 inconsistent Q bit...;
  a :class:`ProtocolError` event says what was wrong.

Events: :class:`CallIncoming`, :class:`CallConnected`, :class:`Message`,
:class:`Interrupted`, :class:`Reset`, :class:`ProtocolError`, :class:`Cleared` (always the
last one: after it, write the pending bytes and close the connection).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from passerelle.codecs import x25, xot
from passerelle.codecs.x25 import (
    CallAccepted,
    CallRequest,
    ClearConfirmation,
    ClearRequest,
    Data,
    Diagnostic,
    Facility,
    Interrupt,
    InterruptConfirmation,
    ReceiveNotReady,
    ReceiveReady,
    Reject,
    ResetConfirmation,
    ResetRequest,
    RestartConfirmation,
    RestartRequest,
    X25Error,
)

__all__ = [
    "CallConnected",
    "CallIncoming",
    "CircuitConfig",
    "CircuitStateError",
    "Cleared",
    "Interrupted",
    "Message",
    "Negotiated",
    "ProtocolError",
    "Reset",
    "Role",
    "State",
    "X25Circuit",
]


class Role(enum.Enum):
    DCE = "dce"  # we accept calls (switchd)
    DTE = "dte"  # we place calls (terminal simulator)


class State(enum.Enum):
    LISTEN = "listen"  # p1: DCE waiting for a Call Request; DTE before place_call()
    CALLING = "calling"  # p2, DTE: Call Request sent, waiting for Call Accepted
    CALL_RECEIVED = "call_received"  # p2, DCE: Call Request received, waiting for accept_call()
    DATA = "data"  # p4/d1: data transfer
    CLEARING = "clearing"  # p6/p7: our Clear sent, waiting for the Clear Confirmation
    CLOSED = "closed"  # over: close the connection


# X.25 state names for the "packet type invalid for state" diagnostics.
_X25_STATE = {
    State.LISTEN: "p1",
    State.CALLING: "p2",
    State.CALL_RECEIVED: "p2",
    State.DATA: "p4",
    State.CLEARING: "p7",
    State.CLOSED: "p1",
}


class CircuitStateError(RuntimeError):
    """A method was called in a state where it makes no sense (a bug in the caller)."""


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    """Limits and defaults of a circuit. Times in seconds."""

    default_packet_size: int = 128
    default_window: int = 2
    max_packet_size: int = 1024  # the largest packet size a caller may negotiate
    max_window: int = 7  # the largest window (capped at modulo - 1)
    allow_modulo_128: bool = True
    max_message_size: int = 32 * 1024  # bound of one reassembled M-bit chain
    call_timeout: float = 180.0  # T11/T21: no Call Request / no accept / no Call Accepted
    clear_timeout: float = 60.0  # T13: no Clear Confirmation after our Clear

    def __post_init__(self) -> None:
        for size in (self.default_packet_size, self.max_packet_size):
            x25.packet_size_code(size)  # raises on a size that is not a power of 2 in 16..4096
        if self.max_packet_size < self.default_packet_size:
            raise ValueError("max_packet_size must be >= default_packet_size")
        if not 1 <= self.default_window <= self.max_window <= 127:
            raise ValueError("windows must satisfy 1 <= default_window <= max_window <= 127")
        if self.max_message_size < 1:
            raise ValueError("max_message_size must be positive")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a call uses, seen from our side: ``tx`` is what we send, ``rx`` what we receive."""

    modulo: int = 8
    packet_size_tx: int = 128
    packet_size_rx: int = 128
    window_tx: int = 2
    window_rx: int = 2


# --- Events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallIncoming:
    """DCE: a Call Request arrived; ``negotiated`` is what accept_call() will agree to."""

    called: str
    calling: str
    facilities: tuple[Facility, ...]
    user_data: bytes
    lcn: int
    negotiated: Negotiated


@dataclass(frozen=True, slots=True)
class CallConnected:
    """DTE: our call was accepted; ``negotiated`` is what the call uses."""

    called: str
    calling: str
    facilities: tuple[Facility, ...]
    user_data: bytes
    negotiated: Negotiated


@dataclass(frozen=True, slots=True)
class Message:
    """A complete M-bit chain (one CBCOM IPDU over XOT). ``q``: the chain's Q bit."""

    data: bytes
    q: bool = False


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The peer sent an Interrupt (already confirmed)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Reset:
    """The peer reset the circuit (already confirmed); data in transit was dropped."""

    cause: int
    diagnostic: int | None


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol; a Clear with ``cause``/``diagnostic`` was queued."""

    reason: str
    cause: int
    diagnostic: int


@dataclass(frozen=True, slots=True)
class Cleared:
    """The circuit is over (always the last event). ``by_peer``: the peer cleared it."""

    cause: int
    diagnostic: int | None
    by_peer: bool
    reason: str = ""


Event = CallIncoming | CallConnected | Message | Interrupted | Reset | ProtocolError | Cleared


class _Violation(Exception):
    """Internal: a protocol error found while handling a packet."""

    def __init__(self, reason: str, diagnostic: int, cause: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.diagnostic = diagnostic
        self.cause = cause


_FACILITY_DIAGS = range(x25.DIAG_FACILITY_CODE_NOT_ALLOWED, x25.DIAG_INVALID_FACILITY_LENGTH + 1)


class X25Circuit:
    """The state machine of one virtual circuit (see the module docstring)."""

    __slots__ = (
        "_accept_facilities",
        "_chain",
        "_chain_q",
        "_clear_cause",
        "_clear_diag",
        "_clear_reason",
        "_deadline",
        "_decoder",
        "_interrupt_pending",
        "_out",
        "_peer_busy",
        "_peer_pr",
        "_pr_sent",
        "_queue",
        "_vr",
        "_vs",
        "config",
        "lcn",
        "negotiated",
        "role",
        "state",
    )

    def __init__(
        self,
        role: Role = Role.DCE,
        config: CircuitConfig | None = None,
        *,
        now: float,
    ) -> None:
        self.role = role
        self.config = config or CircuitConfig()
        self.state = State.LISTEN
        self.lcn = 0
        self.negotiated = Negotiated(
            packet_size_tx=self.config.default_packet_size,
            packet_size_rx=self.config.default_packet_size,
            window_tx=self.config.default_window,
            window_rx=self.config.default_window,
        )
        self._decoder = xot.XotDecoder(max(self.config.max_packet_size + 4, 512))
        self._out = bytearray()
        self._deadline: float | None = now + self.config.call_timeout if role is Role.DCE else None
        self._accept_facilities: tuple[Facility, ...] = ()
        # Sequence state (d1).
        self._vs = 0  # next P(S) we send
        self._vr = 0  # next P(S) we expect
        self._peer_pr = 0  # lower edge of our send window (last P(R) received)
        self._pr_sent = 0  # lower edge of our receive window (last P(R) sent)
        self._peer_busy = False
        self._interrupt_pending = False
        self._queue: deque[tuple[bytes, bool, bool]] = deque()  # (segment, m, q)
        self._chain = bytearray()
        self._chain_q: bool | None = None
        # What our Clear said, reported in Cleared once it is confirmed.
        self._clear_cause = 0
        self._clear_diag: int | None = None
        self._clear_reason = ""

    # --- Output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes queued for the peer since the last call (XOT-framed packets).

        Data received and not acknowledged yet by a Data packet of ours (its P(R)) is
        acknowledged here with an RR: the answer a dialogue gives before this call carries
        the acknowledgement itself, one packet instead of RR + Data."""
        if self._vr != self._pr_sent and self.state is State.DATA:
            self._send(ReceiveReady(self.lcn, self._vr, self.negotiated.modulo))
            self._pr_sent = self._vr
        out = bytes(self._out)
        self._out.clear()
        return out

    def _send(self, packet: x25.Packet) -> None:
        self._out += xot.encode(packet.encode())

    # --- Timers --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (None: no timer running)."""
        return self._deadline

    def tick(self, now: float) -> list[Event]:
        """Fire the timer if it expired; returns the events it caused."""
        if self._deadline is None or now < self._deadline:
            return []
        self._deadline = None
        if self.state is State.CLEARING:
            return self._close(self._clear_cause, self._clear_diag, False, "no clear confirmation")
        if self.state is State.LISTEN:
            return self._close(0, x25.DIAG_TIMER_EXPIRED, False, "no call request")
        if self.state in (State.CALL_RECEIVED, State.CALLING):
            cause = x25.CAUSE_DTE_ORIGINATED if self.role is Role.DTE else x25.CAUSE_OUT_OF_ORDER
            return self._start_clear(
                cause, x25.DIAG_TIMER_EXPIRED_INCOMING_CALL, now, "call not set up in time"
            )
        return []

    # --- Call set-up ---------------------------------------------------------------------

    def place_call(
        self,
        called: str,
        calling: str,
        *,
        now: float,
        lcn: int = 1,
        modulo: int = 8,
        packet_size: int | None = None,
        window: int | None = None,
        facilities: tuple[Facility, ...] = (),
        user_data: bytes = b"",
    ) -> None:
        """DTE: send a Call Request, asking for ``packet_size``/``window`` (both directions)
        when given (facilities 0x42/0x43, appended to ``facilities``)."""
        if self.role is not Role.DTE or self.state is not State.LISTEN:
            raise CircuitStateError("place_call() is for a new DTE circuit")
        facs = list(facilities)
        if packet_size is not None:
            facs.append(Facility.packet_size(packet_size, packet_size))
        if window is not None:
            facs.append(Facility.window_size(window, window))
        request = CallRequest(lcn, called, calling, tuple(facs), user_data, modulo)
        self._send(request)  # validates everything before we change state
        self.lcn = lcn
        self.state = State.CALLING
        size = packet_size or self.config.default_packet_size
        win = window or self.config.default_window
        self.negotiated = Negotiated(modulo, size, size, win, win)
        self._deadline = now + self.config.call_timeout

    def accept_call(self, *, user_data: bytes = b"") -> None:
        """DCE: accept the incoming call with the negotiated facilities."""
        if self.state is not State.CALL_RECEIVED:
            raise CircuitStateError(f"accept_call() in state {self.state.value}")
        self._send(
            CallAccepted(
                self.lcn,
                facilities=self._accept_facilities,
                user_data=user_data,
                modulo=self.negotiated.modulo,
            )
        )
        self.state = State.DATA
        self._deadline = None

    def clear(
        self, cause: int = x25.CAUSE_DTE_ORIGINATED, diagnostic: int | None = 0, *, now: float
    ) -> list[Event]:
        """Clear the call (or refuse an incoming one). Returns the events it causes:
        none until the Clear Confirmation arrives, or ``Cleared`` if there was no call yet.
        A no-op once clearing or closed."""
        if self.state in (State.CLEARING, State.CLOSED):
            return []
        if self.state is State.LISTEN:
            return self._close(cause, diagnostic, False, "cleared before any call")
        return self._start_clear(cause, diagnostic, now)

    # --- Data ----------------------------------------------------------------------------

    def send_message(self, data: bytes | bytearray | memoryview, *, q: bool = False) -> None:
        """Send one message as an M-bit chain of Data packets of the negotiated size.

        Packets beyond the window wait for the peer's acknowledgements. Silently dropped
        once the circuit is clearing or closed (the events said so); an error before the
        call is connected.
        """
        if self.state in (State.CLEARING, State.CLOSED):
            return
        if self.state is not State.DATA:
            raise CircuitStateError(f"send_message() in state {self.state.value}")
        data = bytes(data)
        size = self.negotiated.packet_size_tx
        n = len(data)
        if n <= size:
            self._queue.append((data, False, q))
        else:
            for start in range(0, n, size):
                self._queue.append((data[start : start + size], start + size < n, q))
        self._flush()

    def send_interrupt(self, data: bytes = b"\x00") -> None:
        """Send an Interrupt (1-32 bytes, outside flow control); one at a time: the next
        may go once the peer has confirmed this one."""
        if self.state is not State.DATA:
            raise CircuitStateError(f"send_interrupt() in state {self.state.value}")
        if self._interrupt_pending:
            raise CircuitStateError("an interrupt is already waiting for its confirmation")
        self._send(Interrupt(self.lcn, bytes(data), self.negotiated.modulo))
        self._interrupt_pending = True

    @property
    def unacknowledged(self) -> int:
        """Data packets we sent that the peer has not acknowledged yet."""
        return (self._vs - self._peer_pr) % self.negotiated.modulo

    @property
    def queued(self) -> int:
        """Data packets waiting for the window to open."""
        return len(self._queue)

    def _flush(self) -> None:
        neg = self.negotiated
        mod = neg.modulo
        while self._queue and not self._peer_busy and self.unacknowledged < neg.window_tx:
            segment, m, q = self._queue.popleft()
            self._send(Data(self.lcn, self._vs, self._vr, segment, m, q, False, mod))
            self._vs = (self._vs + 1) % mod
            self._pr_sent = self._vr

    # --- Input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Feed bytes from the connection; returns the events they caused, in order."""
        if self.state is State.CLOSED:
            return []
        events: list[Event] = []
        try:
            packets = self._decoder.feed(data)
        except xot.XotError as exc:
            # The stream is out of step: say why, then the circuit is over.
            cause = self._error_cause(exc.diagnostic)
            events.append(ProtocolError(exc.reason, cause, exc.diagnostic))
            if self.state not in (State.LISTEN, State.CLEARING):
                self._send(ClearRequest(self.lcn, cause, exc.diagnostic, self.negotiated.modulo))
            events += self._close(cause, exc.diagnostic, False, exc.reason)
            return events
        for raw in packets:
            if self.state is State.CLOSED:
                break
            try:
                self._handle(raw, events, now)
            except _Violation as exc:
                cause = exc.cause if exc.cause is not None else self._error_cause(exc.diagnostic)
                events.append(ProtocolError(exc.reason, cause, exc.diagnostic))
                if self.lcn == 0 and self.state is State.LISTEN:
                    self.lcn = _lcn_of(raw)
                events += self._start_clear(cause, exc.diagnostic, now, exc.reason)
        # An RR for what arrived goes out with data_to_send, unless an answer carries the
        # acknowledgement first.
        return events

    def _error_cause(self, diagnostic: int) -> int:
        if self.role is Role.DTE:
            return x25.CAUSE_DTE_ORIGINATED
        if diagnostic in _FACILITY_DIAGS:
            return x25.CAUSE_INVALID_FACILITY_REQUEST
        return x25.CAUSE_LOCAL_PROCEDURE_ERROR

    def _handle(self, raw: bytes, events: list[Event], now: float) -> None:
        state = self.state
        try:
            packet = x25.decode(raw)
        except X25Error as exc:
            if state is State.CLEARING:
                return  # p6/p7: anything but a Clear is ignored
            raise _Violation(exc.reason, exc.diagnostic) from None

        # The usual packet: Data on our call in data transfer. The checks below, in the
        # order they would run for it, without the walk through the other packet types.
        if (packet.__class__ is Data and state is State.DATA and packet.lcn == self.lcn
                and packet.modulo == self.negotiated.modulo):
            self._data(packet, events)  # type: ignore[arg-type]
            return

        if isinstance(packet, (RestartRequest, RestartConfirmation)):
            # RFC 1613: XOT carries no restart; one means the peer gave the circuit up.
            cause = packet.cause if isinstance(packet, RestartRequest) else 0
            diag = packet.diagnostic if isinstance(packet, RestartRequest) else None
            events += self._close(cause, diag, True, "restart received")
            return
        if isinstance(packet, Diagnostic):
            return  # informative only

        if state is State.CLEARING:
            if isinstance(packet, (ClearConfirmation, ClearRequest)) and packet.lcn == self.lcn:
                # Confirmation, or a clear collision: the call is cleared either way.
                events += self._close(
                    self._clear_cause, self._clear_diag, False, self._clear_reason
                )
            return

        if state is State.LISTEN:
            if isinstance(packet, CallRequest) and self.role is Role.DCE:
                self._incoming_call(packet, events, now)
                return
            if isinstance(packet, ClearRequest):
                self.lcn = packet.lcn
                self._peer_cleared(packet, events)
                return
            raise self._invalid_for_state(packet)

        if packet.lcn != self.lcn:
            raise _Violation(
                f"packet on logical channel {packet.lcn}, the call is on {self.lcn}",
                x25.DIAG_UNASSIGNED_CHANNEL,
            )
        if isinstance(packet, ClearRequest):
            self._peer_cleared(packet, events)
            return

        if state is State.CALLING:
            if isinstance(packet, CallAccepted):
                self._call_connected(packet, events)
                return
            raise self._invalid_for_state(packet)

        if state is State.CALL_RECEIVED:
            raise self._invalid_for_state(packet)

        # State.DATA
        if packet.modulo != self.negotiated.modulo:
            raise _Violation(
                f"modulo {packet.modulo} packet on a modulo {self.negotiated.modulo} call",
                x25.DIAG_INVALID_GFI,
            )
        if isinstance(packet, Data):
            self._data(packet, events)
        elif isinstance(packet, ReceiveReady):
            self._ack(packet.pr)
            self._peer_busy = False
            self._flush()
        elif isinstance(packet, ReceiveNotReady):
            self._ack(packet.pr)
            self._peer_busy = True
        elif isinstance(packet, Reject):
            raise _Violation("reject procedure not subscribed", x25.DIAG_REJECT_NOT_SUBSCRIBED)
        elif isinstance(packet, ResetRequest):
            self._send(ResetConfirmation(self.lcn, self.negotiated.modulo))
            self._vs = self._vr = self._peer_pr = self._pr_sent = 0
            self._peer_busy = self._interrupt_pending = False
            self._queue.clear()
            self._chain.clear()
            self._chain_q = None
            events.append(Reset(packet.cause, packet.diagnostic))
        elif isinstance(packet, Interrupt):
            self._send(InterruptConfirmation(self.lcn, self.negotiated.modulo))
            events.append(Interrupted(packet.data))
        elif isinstance(packet, InterruptConfirmation) and self._interrupt_pending:
            self._interrupt_pending = False
        elif isinstance(packet, InterruptConfirmation):
            raise _Violation(
                "interrupt confirmation without an interrupt",
                x25.DIAG_UNAUTHORIZED_INTERRUPT_CONFIRMATION,
            )
        else:
            # Call Request/Accepted, Clear Confirmation, Reset Confirmation in p4/d1.
            diag = x25.DIAG_INVALID_FOR_STATE[
                "d1" if isinstance(packet, ResetConfirmation) else "p4"
            ]
            raise _Violation(f"{type(packet).__name__} in data transfer", diag)

    def _invalid_for_state(self, packet: x25.Packet) -> _Violation:
        name = _X25_STATE[self.state]
        return _Violation(
            f"{type(packet).__name__} invalid in state {self.state.value}",
            x25.DIAG_INVALID_FOR_STATE[name],
        )

    # --- Call set-up handling ------------------------------------------------------------

    def _incoming_call(self, call: CallRequest, events: list[Event], now: float) -> None:
        self.lcn = call.lcn
        cfg = self.config
        if call.modulo == 128 and not cfg.allow_modulo_128:
            raise _Violation(
                "modulo 128 not allowed",
                x25.DIAG_FACILITY_PARAMETER_NOT_ALLOWED,
                x25.CAUSE_INVALID_FACILITY_REQUEST,
            )
        mod = call.modulo
        answer: list[Facility] = []
        # 0x42: first byte from the called DTE (our tx), second towards it (our rx).
        size_tx = size_rx = cfg.default_packet_size
        fac = x25.find_facility(call.facilities, x25.FAC_PACKET_SIZE)
        if fac is not None:
            try:
                req_tx = x25.packet_size_from_code(fac.value[0])
                req_rx = x25.packet_size_from_code(fac.value[1])
            except X25Error as exc:
                raise _Violation(exc.reason, exc.diagnostic) from None
            size_tx = self._towards_default(req_tx, cfg.default_packet_size, cfg.max_packet_size)
            size_rx = self._towards_default(req_rx, cfg.default_packet_size, cfg.max_packet_size)
            answer.append(Facility.packet_size(size_tx, size_rx))
        win_tx = win_rx = min(cfg.default_window, mod - 1)
        fac = x25.find_facility(call.facilities, x25.FAC_WINDOW_SIZE)
        if fac is not None:
            req_tx, req_rx = fac.value[0], fac.value[1]
            if not (1 <= req_tx < mod and 1 <= req_rx < mod):
                raise _Violation(
                    f"window sizes {req_tx}/{req_rx} invalid for modulo {mod}",
                    x25.DIAG_FACILITY_PARAMETER_NOT_ALLOWED,
                )
            max_win = min(cfg.max_window, mod - 1)
            win_tx = self._towards_default(req_tx, win_tx, max_win)
            win_rx = self._towards_default(req_rx, win_rx, max_win)
            answer.append(Facility.window_size(win_tx, win_rx))
        self.negotiated = Negotiated(mod, size_tx, size_rx, win_tx, win_rx)
        self._accept_facilities = tuple(answer)
        self.state = State.CALL_RECEIVED
        self._deadline = now + cfg.call_timeout
        events.append(
            CallIncoming(
                call.called,
                call.calling,
                call.facilities,
                call.user_data,
                call.lcn,
                self.negotiated,
            )
        )

    @staticmethod
    def _towards_default(requested: int, default: int, maximum: int) -> int:
        """X.25 negotiation: the called side may only move a value towards the default."""
        if requested <= default:
            return requested
        return max(default, min(requested, maximum))

    def _call_connected(self, accepted: CallAccepted, events: list[Event]) -> None:
        neg = self.negotiated
        size_tx, size_rx = neg.packet_size_tx, neg.packet_size_rx
        win_tx, win_rx = neg.window_tx, neg.window_rx
        try:
            fac = x25.find_facility(accepted.facilities, x25.FAC_PACKET_SIZE)
            if fac is not None:  # first byte: from the called DTE, i.e. what we receive
                size_rx = x25.packet_size_from_code(fac.value[0])
                size_tx = x25.packet_size_from_code(fac.value[1])
        except X25Error as exc:
            raise _Violation(exc.reason, exc.diagnostic) from None
        fac = x25.find_facility(accepted.facilities, x25.FAC_WINDOW_SIZE)
        if fac is not None:
            win_rx, win_tx = fac.value[0], fac.value[1]
            if not (1 <= win_tx < neg.modulo and 1 <= win_rx < neg.modulo):
                raise _Violation("window size invalid", x25.DIAG_FACILITY_PARAMETER_NOT_ALLOWED)
        if accepted.modulo != neg.modulo:
            raise _Violation("call accepted with another modulo", x25.DIAG_INVALID_GFI)
        self.negotiated = Negotiated(neg.modulo, size_tx, size_rx, win_tx, win_rx)
        self.state = State.DATA
        self._deadline = None
        events.append(
            CallConnected(
                accepted.called,
                accepted.calling,
                accepted.facilities,
                accepted.user_data,
                self.negotiated,
            )
        )

    # --- Data handling -------------------------------------------------------------------

    def _ack(self, pr: int) -> None:
        mod = self.negotiated.modulo
        if (pr - self._peer_pr) % mod > (self._vs - self._peer_pr) % mod:
            raise _Violation(f"P(R) {pr} outside {self._peer_pr}..{self._vs}", x25.DIAG_INVALID_PR)
        self._peer_pr = pr

    def _data(self, packet: Data, events: list[Event]) -> None:
        neg = self.negotiated
        mod = neg.modulo
        if packet.ps != self._vr:
            raise _Violation(f"P(S) {packet.ps}, expected {self._vr}", x25.DIAG_INVALID_PS)
        if (packet.ps - self._pr_sent) % mod >= neg.window_rx:
            raise _Violation(f"P(S) {packet.ps} outside the window", x25.DIAG_INVALID_PS)
        self._ack(packet.pr)
        if len(packet.data) > neg.packet_size_rx:
            raise _Violation(
                f"{len(packet.data)} data bytes exceed the packet size {neg.packet_size_rx}",
                x25.DIAG_PACKET_TOO_LONG,
            )
        if self._chain_q is not None and packet.q != self._chain_q:
            raise _Violation("Q bit changed within an M-bit chain", x25.DIAG_INCONSISTENT_Q_BIT)
        if len(self._chain) + len(packet.data) > self.config.max_message_size:
            raise _Violation(
                f"message longer than {self.config.max_message_size} bytes",
                x25.DIAG_PACKET_TOO_LONG,
            )
        self._vr = (self._vr + 1) % mod
        if packet.m:
            self._chain += packet.data
            self._chain_q = packet.q
        else:
            if self._chain:
                self._chain += packet.data
                message = bytes(self._chain)
                self._chain.clear()
            else:
                message = packet.data
            self._chain_q = None
            events.append(Message(message, packet.q))
        self._flush()

    # --- Clearing ------------------------------------------------------------------------

    def _peer_cleared(self, packet: ClearRequest, events: list[Event]) -> None:
        self._send(ClearConfirmation(self.lcn, packet.modulo))
        events += self._close(packet.cause, packet.diagnostic, True, "cleared by peer")

    def _start_clear(
        self, cause: int, diagnostic: int | None, now: float, reason: str = ""
    ) -> list[Event]:
        self._send(ClearRequest(self.lcn, cause, diagnostic, self.negotiated.modulo))
        self.state = State.CLEARING
        self._clear_cause, self._clear_diag, self._clear_reason = cause, diagnostic, reason
        self._queue.clear()
        self._chain.clear()
        self._deadline = now + self.config.clear_timeout
        return []

    def _close(self, cause: int, diagnostic: int | None, by_peer: bool, reason: str) -> list[Event]:
        self.state = State.CLOSED
        self._deadline = None
        self._queue.clear()
        self._chain.clear()
        return [Cleared(cause, diagnostic, by_peer, reason)]


def _lcn_of(raw: bytes) -> int:
    return (raw[0] & 0x0F) << 8 | raw[1] if len(raw) >= 2 else 0
