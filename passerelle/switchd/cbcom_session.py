"""The CBCOM pseudo-session, sans-I/O: CN/AC, DE, AB and the TGR/TSI/TNR timers.

No sockets, no asyncio, no clock: the caller feeds IPDUs (or stream bytes) with the time
and collects events and the IPDUs to send. Either side:

* ``Role.SERVER`` (switchd, the default) waits for CN, answers AC with the negotiated timers,
  turns each DE into a :class:`Message` and each :meth:`CbcomSession.send_message` into a DE
  (or, when a DE needs no answer, is told so with :meth:`CbcomSession.no_answer`);
* ``Role.CLIENT`` (the terminal simulator) sends CN with :meth:`CbcomSession.connect`,
  then DEs, and waits for the answers.

Two ways to carry IPDUs, one session class:

* over TCP/TLS (``cbcom``, ``cbcom-tls`` listeners): :meth:`CbcomSession.receive_data` takes
  stream bytes (4-byte big-endian length + IPDU, bounded by ``CbcomConfig.max_frame``) and
  :meth:`CbcomSession.data_to_send` returns framed bytes;
* over X.25 (``xot``): each X.25 :class:`~passerelle.switchd.x25_circuit.Message` is one
  IPDU for :meth:`CbcomSession.receive_ipdu`, and each item of
  :meth:`CbcomSession.ipdus_to_send` goes to ``X25Circuit.send_message``.

Usage (switchd over TCP)::

    session = CbcomSession(now=loop.time())
    for event in session.receive_data(chunk, loop.time()):
        match event:
            case Message(apdu=cb2a): ...; session.send_message(answer, loop.time())
            case Aborted(): close_after_flush = True
    transport.write(session.data_to_send())
    # and schedule session.tick(loop.time()) at session.next_deadline()

Timers (server): before CN, ``cn_timeout``; connected and idle, TSI (780 s unless CN
negotiated another value with PI17); a DE received and not yet answered (nor declared
needing no answer with :meth:`CbcomSession.no_answer`), TGR (30 s).
Client: TNR while waiting for AC or for the answer to a DE. On expiry :meth:`tick` sends
AB and returns :class:`Aborted`: 0x19 TSI (and no CN in time), 0x1A TGR, 0x1B TNR.

Abort codes the server sends: 0x24 unexpected IPDU (DE before CN, CN twice, AC), 0x26 bad
or missing PI05 (not 4 bytes, not BCD, unknown protocol type), 0x1E CBCOM or CB2A version
not accepted, 0x15/0x16/0x17 TNR/TSI/TMA value refused, and the codec's codes for a
malformed IPDU (``passerelle.codecs.cbcom``). A received AB ends the session too.
After :class:`Aborted` (always the last event), write the pending bytes and close.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from passerelle.codecs import cbcom
from passerelle.codecs.cbcom import CbcomError, Ipdu, ProtocolId
from passerelle.codecs.framing import FramingError, LengthPrefixFramer, frame4

__all__ = [
    "Aborted",
    "CbcomConfig",
    "CbcomSession",
    "Connected",
    "Message",
    "Role",
    "SessionStateError",
    "State",
]


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    WAIT_CN = "wait_cn"  # server: connection open, no CN yet
    IDLE = "idle"  # client: nothing sent yet
    CONNECTING = "connecting"  # client: CN sent, waiting for AC
    CONNECTED = "connected"  # pseudo-session open
    CLOSED = "closed"  # AB sent or received: close the connection


_NEVER = float("inf")  # the deadline when no timer runs


class SessionStateError(RuntimeError):
    """A method was called in a state where it makes no sense (a bug in the caller)."""


@dataclass(frozen=True, slots=True)
class CbcomConfig:
    """Timers (seconds), what we accept in CN, and bounds."""

    tgr: float = 30.0  # server: a DE must be answered within TGR
    tsi: float = 780.0  # server: inactivity, unless CN negotiates PI17
    tnr: float = 60.0  # client: wait for AC / for the answer to a DE, unless AC says otherwise
    cn_timeout: float = 30.0  # server: the CN must come within this after the connection
    tsi_range: tuple[int, int] = (1, 3600)  # PI17 values a server accepts
    tnr_range: tuple[int, int] = (1, 3600)  # PI16
    tma_range: tuple[int, int] = (1, 3600)  # PI18
    cbcom_versions: tuple[str, str] = ("11", "12")  # lowest and highest accepted, BCD digits
    protocol_types: frozenset[int] = frozenset(
        {cbcom.PROTOCOL_TRANSFER, cbcom.PROTOCOL_TRANSACTIONAL}
    )
    cb2a_versions: frozenset[str] | None = None  # None: any well-formed CB2A version
    max_frame: int = 32 * 1024  # stream mode: largest IPDU accepted


# --- Events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The pseudo-session is open: CN accepted (server) or AC received (client).

    ``tnr``/``tsi``/``tma`` are the negotiated timers (None: not negotiated).
    """

    protocol: ProtocolId
    tnr: int | None
    tsi: int | None
    tma: int | None
    ipdu: Ipdu  # the CN (server) or AC (client), for logging


@dataclass(frozen=True, slots=True)
class Message:
    """A DE's APDU: one CB2A message, opaque here."""

    apdu: bytes


@dataclass(frozen=True, slots=True)
class Aborted:
    """The pseudo-session is over (always the last event): AB sent or received."""

    code: int | None
    by_peer: bool
    reason: str = ""


Event = Connected | Message | Aborted


class CbcomSession:
    """One CBCOM pseudo-session (see the module docstring)."""

    __slots__ = (
        "_deadline_code",
        "_encode",
        "_framed",
        "_framer",
        "_out",
        "_pending",
        "_serving",
        "config",
        "deadline",
        "protocol",
        "role",
        "sent",
        "state",
        "tma",
        "tnr",
        "tsi",
    )

    def __init__(
        self,
        role: Role = Role.SERVER,
        config: CbcomConfig | None = None,
        *,
        now: float,
        framed: bool = False,
    ) -> None:
        self.role = role
        self.config = cfg = config or CbcomConfig()
        # framed (stream mode, for a caller that only uses data_to_send): IPDUs are queued
        # behind their 4-byte length as they are encoded, a DE in one piece.
        self._framed = framed
        self._encode = cbcom.framed_data if framed else cbcom.encode_data
        self._out: list[bytes] = []
        self.sent = 0  # IPDUs queued so far (for the caller's metrics)
        self._framer: LengthPrefixFramer | None = None  # made on the first receive_data()
        self._pending = 0  # DEs received (server) or sent (client) and not yet answered
        self.protocol: ProtocolId | None = None
        self.tnr: int | None = None
        self.tsi: float = cfg.tsi
        self._serving = False  # server and CONNECTED: DEs take the fast path
        self.tma: int | None = None
        if role is Role.SERVER:
            self.state = State.WAIT_CN
            # When `tick` has something to do; infinity when no timer runs. Read-only for
            # the caller (the stack reads it on every message: an attribute, not a call).
            self.deadline = now + cfg.cn_timeout
            self._deadline_code = cbcom.CODE_TSI_EXPIRED
        else:
            self.state = State.IDLE
            self.deadline = _NEVER
            self._deadline_code = cbcom.CODE_TNR_EXPIRED

    # --- Output --------------------------------------------------------------------------

    def ipdus_to_send(self) -> list[bytes]:
        """The IPDUs queued since the last call, unframed (for X.25)."""
        out, self._out = self._out, []
        if self._framed:
            return [ipdu[4:] for ipdu in out]
        return out

    def data_to_send(self) -> bytes:
        """The IPDUs queued since the last call, each behind its 4-byte length (TCP/TLS)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        if self._framed:
            return out[0] if len(out) == 1 else b"".join(out)
        return b"".join([frame4(ipdu) for ipdu in out])

    def _send(self, ipdu: Ipdu) -> None:
        raw = ipdu.encode()
        self._out.append(frame4(raw) if self._framed else raw)
        self.sent += 1

    # --- Timers --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (None: no timer running)."""
        deadline = self.deadline
        return None if deadline == _NEVER else deadline

    def tick(self, now: float) -> list[Event]:
        """Fire the running timer if it expired: AB with its code, then :class:`Aborted`."""
        if now < self.deadline or self.state is State.CLOSED:
            return []
        code = self._deadline_code
        reason = {
            cbcom.CODE_TSI_EXPIRED: "TSI expired"
            if self.state is State.CONNECTED
            else "no CN in time",
            cbcom.CODE_TGR_EXPIRED: "TGR expired: no answer to send",
            cbcom.CODE_TNR_EXPIRED: "TNR expired: no answer received",
        }[code]
        return self._abort(code, reason)

    def _idle_timer(self, now: float) -> None:
        if self.role is Role.SERVER:
            if self._pending:
                self.deadline, self._deadline_code = now + self.config.tgr, cbcom.CODE_TGR_EXPIRED
            else:
                self.deadline, self._deadline_code = now + self.tsi, cbcom.CODE_TSI_EXPIRED
        elif self._pending:
            self.deadline = now + (self.tnr or self.config.tnr)
            self._deadline_code = cbcom.CODE_TNR_EXPIRED
        else:
            self.deadline = _NEVER

    # --- Actions -------------------------------------------------------------------------

    def connect(
        self,
        protocol: ProtocolId = ProtocolId(),  # noqa: B008 - frozen dataclass, a safe default
        *,
        now: float,
        tnr: int | None = None,
        tsi: int | None = None,
        tma: int | None = None,
    ) -> None:
        """Client: send CN with PI05 and the timers to negotiate; TNR waits for AC."""
        if self.role is not Role.CLIENT or self.state is not State.IDLE:
            raise SessionStateError(f"connect() in state {self.state.value}")
        self._send(cbcom.connect(protocol, tnr=tnr, tsi=tsi, tma=tma))
        self.protocol = protocol
        self.tnr = tnr
        self.state = State.CONNECTING
        self.deadline = now + (tnr or self.config.tnr)
        self._deadline_code = cbcom.CODE_TNR_EXPIRED

    def send_message(self, apdu: bytes | bytearray | memoryview, now: float) -> None:
        """Send one APDU in a DE. Server: answers the oldest unanswered DE (PI01 = 0), or
        is unsolicited if none is pending. Client: a request, timed by TNR.
        Dropped silently once the session is closed; an error before it is open."""
        if self._serving:  # the usual case, inlined: an answer to a DE, then TGR or TSI
            self.sent += 1
            if self._pending:
                self._out.append(self._encode(apdu, response=True))
                self._pending -= 1
            else:
                self._out.append(self._encode(apdu))
            if self._pending:
                self.deadline, self._deadline_code = now + self.config.tgr, cbcom.CODE_TGR_EXPIRED
            else:
                self.deadline, self._deadline_code = now + self.tsi, cbcom.CODE_TSI_EXPIRED
            return
        if self.state is State.CLOSED:
            return
        if self.state is not State.CONNECTED:
            raise SessionStateError(f"send_message() in state {self.state.value}")
        self.sent += 1
        if self.role is Role.SERVER:
            response = self._pending > 0
            self._out.append(self._encode(apdu, response=response))
            if response:
                self._pending -= 1
        else:
            self._out.append(self._encode(apdu))
            self._pending += 1
        self._idle_timer(now)

    def no_answer(self, now: float) -> None:
        """Server: the oldest unanswered DE needs no answer (the dialogue returned None, as
        for most 0246 of a télécollecte window). It stops counting as pending, so TGR runs
        only for the DEs still owed an answer and TSI times the pause otherwise."""
        if self.role is not Role.SERVER or self.state is not State.CONNECTED:
            return
        if self._pending:
            self._pending -= 1
        if self._pending:
            self.deadline, self._deadline_code = now + self.config.tgr, cbcom.CODE_TGR_EXPIRED
        else:
            self.deadline, self._deadline_code = now + self.tsi, cbcom.CODE_TSI_EXPIRED

    def abort(self, code: int = cbcom.CODE_NORMAL_END, reason: str = "") -> list[Event]:
        """Send AB with ``code`` (0x80: normal end) and close; returns [Aborted]."""
        if self.state is State.CLOSED:
            return []
        return self._abort(code, reason or "aborted locally")

    def _abort(self, code: int, reason: str) -> list[Event]:
        self._send(cbcom.abort(code))
        return self._close(code, False, reason)

    def _close(self, code: int | None, by_peer: bool, reason: str) -> list[Event]:
        self.state = State.CLOSED
        self._serving = False
        self.deadline = _NEVER
        self._pending = 0
        return [Aborted(code, by_peer, reason)]

    # --- Input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Stream mode: feed bytes (4-byte length + IPDU, repeated)."""
        if self.state is State.CLOSED:
            return []
        if self._framer is None:
            self._framer = LengthPrefixFramer(4, self.config.max_frame)
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            return self._abort(cbcom.CODE_APDU_LENGTH, str(exc))
        events: list[Event] = []
        for frame in frames:
            events += self.receive_ipdu(frame, now)
            if self.state is State.CLOSED:
                break
        return events

    def receive_data_apdu(self, raw: bytes, now: float) -> bytes | None:
        """The fast path of `receive_ipdu` for the commonest IPDU: a server's DE carrying
        only PI07. Returns its APDU (the `Message` event `receive_ipdu` would return), or
        None, having done nothing: the caller then feeds the IPDU to `receive_ipdu`."""
        if not self._serving:
            return None
        apdu = cbcom.data_apdu(raw)
        if apdu is not None:
            self._pending += 1
            if self._pending == 1:
                self.deadline = now + self.config.tgr  # TGR from the oldest unanswered DE
                self._deadline_code = cbcom.CODE_TGR_EXPIRED
        return apdu

    def receive_framed_apdu(self, data: bytes, now: float) -> bytes | None:
        """Stream mode, the fast path of the fast path: when `data` is exactly one frame
        (4-byte length) holding such a DE, its APDU, as `receive_data_apdu` of the frame
        would return it. Otherwise None, having done nothing: the caller frames `data`."""
        if not self._serving:
            return None
        apdu = cbcom.framed_data_apdu(data, self.config.max_frame)
        if apdu is not None:
            self._pending += 1
            if self._pending == 1:
                self.deadline = now + self.config.tgr  # TGR from the oldest unanswered DE
                self._deadline_code = cbcom.CODE_TGR_EXPIRED
        return apdu

    def receive_ipdu(self, raw: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Feed one whole IPDU (an X.25 message, or a frame); returns the events."""
        if self.state is State.CLOSED:
            return []
        if self._serving:
            apdu = self.receive_data_apdu(raw if raw.__class__ is bytes else bytes(raw), now)
            if apdu is not None:
                return [Message(apdu)]
        try:
            ipdu = cbcom.decode(raw)
        except CbcomError as exc:
            return self._abort(exc.code, exc.reason)
        if ipdu.pgi == cbcom.AB:
            return self._close(ipdu.code, True, "AB received")
        try:
            if self.role is Role.SERVER:
                return self._server(ipdu, now)
            return self._client(ipdu, now)
        except CbcomError as exc:
            return self._abort(exc.code, exc.reason)

    def _unexpected(self, ipdu: Ipdu) -> CbcomError:
        return CbcomError(
            f"{ipdu.name} unexpected in state {self.state.value}", cbcom.CODE_UNEXPECTED_IPDU
        )

    def _server(self, ipdu: Ipdu, now: float) -> list[Event]:
        if self.state is State.WAIT_CN:
            if ipdu.pgi != cbcom.CN:
                raise self._unexpected(ipdu)
            return self._accept(ipdu, now)
        # CONNECTED
        if ipdu.pgi != cbcom.DE:
            raise self._unexpected(ipdu)
        self._pending += 1
        if self._pending == 1:
            self._idle_timer(now)  # TGR from the oldest unanswered DE
        return [Message(ipdu.apdu)]

    def _accept(self, cn: Ipdu, now: float) -> list[Event]:
        cfg = self.config
        protocol = cn.protocol_id  # raises 0x26 if malformed; PI05 is mandatory in CN
        assert protocol is not None
        if protocol.protocol_type not in cfg.protocol_types:
            raise CbcomError(
                f"protocol type 0x{protocol.protocol_type:02X} not accepted", cbcom.CODE_BAD_PI05
            )
        low, high = cfg.cbcom_versions
        if not low <= protocol.cbcom_version <= high:
            raise CbcomError(
                f"CBCOM version {protocol.cbcom_version} not in {low}..{high}",
                cbcom.CODE_BAD_VERSION,
            )
        if cfg.cb2a_versions is not None and protocol.cb2a_version not in cfg.cb2a_versions:
            raise CbcomError(
                f"CB2A version {protocol.cb2a_version} not accepted", cbcom.CODE_BAD_VERSION
            )
        tnr = self._negotiate(cn, cbcom.PI16_TNR, cfg.tnr_range, cbcom.CODE_TNR_REFUSED)
        tsi = self._negotiate(cn, cbcom.PI17_TSI, cfg.tsi_range, cbcom.CODE_TSI_REFUSED)
        tma = self._negotiate(cn, cbcom.PI18_TMA, cfg.tma_range, cbcom.CODE_TMA_REFUSED)
        self._send(cbcom.accept(tnr=tnr, tsi=tsi, tma=tma))
        self.protocol, self.tnr, self.tma = protocol, tnr, tma
        if tsi is not None:
            self.tsi = tsi
        self.state = State.CONNECTED
        self._serving = True
        self._idle_timer(now)
        return [Connected(protocol, tnr, tsi, tma, cn)]

    @staticmethod
    def _negotiate(cn: Ipdu, pi: int, bounds: tuple[int, int], code: int) -> int | None:
        try:
            value = cn.timer(pi)
        except CbcomError as exc:
            raise CbcomError(exc.reason, code) from None
        if value is not None and not bounds[0] <= value <= bounds[1]:
            raise CbcomError(f"timer PI{pi:02X} = {value} s outside {bounds[0]}..{bounds[1]}", code)
        return value

    def _client(self, ipdu: Ipdu, now: float) -> list[Event]:
        if self.state is State.CONNECTING and ipdu.pgi == cbcom.AC:
            if ipdu.code != cbcom.CODE_OK:
                raise CbcomError(f"AC with PI01 = {ipdu.code}", cbcom.CODE_INVALID_PI)
            tnr = ipdu.timer(cbcom.PI16_TNR)
            tsi = ipdu.timer(cbcom.PI17_TSI)
            tma = ipdu.timer(cbcom.PI18_TMA)
            if tnr is not None:
                self.tnr = tnr
            if tsi is not None:
                self.tsi = tsi
            self.tma = tma
            self.state = State.CONNECTED
            self._idle_timer(now)
            assert self.protocol is not None
            return [Connected(self.protocol, tnr, tsi, tma, ipdu)]
        if self.state is State.CONNECTED and ipdu.pgi == cbcom.DE:
            if self._pending:
                self._pending -= 1
            self._idle_timer(now)
            return [Message(ipdu.apdu)]
        raise self._unexpected(ipdu)
