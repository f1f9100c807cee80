"""An acquirer host simulator on a real socket, for tests, the demo and the benchmark.

It speaks the profiles and framings an acquirer link does (iso93-binary, iso87-ascii, cb2a;
2- or 4-byte length prefix) and answers:

* network management (1804/0800): accepted (39 = 800 / 00);
* authorization and financial requests (x100, x200): by `Rules` — decline above an
  amount, for a BIN prefix or a card, or a scripted code for an exact amount; otherwise
  approve with an approval code and issuer data in 55 (tag 91, issuer authentication data);
* advices (x120, x220) and reversals (x420): acknowledged, and counted by key in `received`, so a
  test can check each was delivered exactly once.

Faults, by exact amount (`faults`) or for every request (`fault`): "drop" (never answer),
"delay" (answer after `fault_delay` s, past the link's timeout), "close" (close the
connection instead of answering), "garbage" (send undecodable bytes), "twice" (answer twice).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

from passerelle.codecs.framing import FramingError, LengthPrefixFramer
from passerelle.codecs.iso8583 import CodecError, Message
from passerelle.codecs.profiles import get_profile
from passerelle.routing import translate

FAULTS = ("drop", "delay", "close", "garbage", "twice")


@dataclass
class Rules:
    """How the simulated issuer decides; amounts in minor units."""

    decline_above: int | None = None
    decline_bins: tuple[str, ...] = ()
    decline_cards: frozenset[str] = frozenset()
    codes_by_amount: dict[int, str] = field(default_factory=dict)  # CB code
    latency: float = 0.0
    fault: str | None = None
    faults: dict[int, str] = field(default_factory=dict)  # amount -> fault
    fault_delay: float = 1.0
    issuer_data: bytes = bytes.fromhex("07FAAFB2E41926243030")

    def __post_init__(self) -> None:
        for fault in [self.fault, *self.faults.values()]:
            if fault is not None and fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}: expected one of {', '.join(FAULTS)}")

    def decide(self, pan: str, amount: int) -> str:
        """The CB response code for this card and amount."""
        if amount in self.codes_by_amount:
            return self.codes_by_amount[amount]
        if pan in self.decline_cards:
            return "05"
        if any(pan.startswith(prefix) for prefix in self.decline_bins):
            return "05"
        if self.decline_above is not None and amount > self.decline_above:
            return "51"
        return "00"


# CB code -> ISO 8583:1993 action code, for iso93-binary answers.
_ACTION = {"00": "000", "05": "100", "51": "116", "54": "101", "55": "117", "14": "111",
           "13": "110", "91": "911", "12": "902", "30": "904"}


class _Session(asyncio.Protocol):
    def __init__(self, sim: AcquirerSimulator) -> None:
        self.sim = sim
        self.framer = LengthPrefixFramer(sim.framing, 65_535 if sim.framing == 2 else 1 << 20)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sim.sessions.add(self)
        self.sim.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim.sessions.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FramingError:
            self.close()
            return
        for frame in frames:
            self.sim.handle(self, frame)

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.framer.frame(payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class AcquirerSimulator:
    """`await sim.start()` binds (port 0 = any); `await sim.stop()` closes everything."""

    def __init__(self, profile: str = "iso93-binary", framing: int = 2,
                 rules: Rules | None = None, host: str = "127.0.0.1", port: int = 0, *,
                 ssl: SSLContext | None = None, first_approval: int = 100001) -> None:
        self.profile = get_profile(profile)
        self.ssl = ssl
        self.answer_network = True  # False: a half-dead host that ignores sign-on and echo
        self.framing = framing
        self.rules = rules or Rules()
        self.host = host
        self.port = port
        self.server: asyncio.Server | None = None
        self.sessions: set[_Session] = set()
        self.connections = 0
        self.requests: Counter[str] = Counter()  # by MTI
        self.received: dict[str, Counter[Any]] = {"advice": Counter(), "reversal": Counter()}
        self.arrivals: list[tuple[str, Any]] = []  # advices and reversals, in arrival order
        self.follow_ups: list[Message] = []  # the same messages, whole
        self.approved = 0
        self._approval = itertools.count(first_approval)
        self._pending: set[asyncio.TimerHandle] = set()
        self._stripped: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._issuer_value: tuple[bytes, Any] | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Session(self), self.host, self.port,
                                               reuse_address=True, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Gone: the listening socket and every connection (an acquirer crash)."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self.server is not None:
            self.server.close()
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.abort()
            await self.server.wait_closed()
            self.server = None

    # -- answering -----------------------------------------------------------------------
    def handle(self, session: _Session, frame: bytes) -> None:
        try:
            request = Message.parse(frame, self.profile)
            mti = request.mti
            answer = self._answer(request)
        except CodecError:
            return  # a real host would drop it too; the link times out
        self.requests[mti] += 1
        if answer is None:
            return
        rules = self.rules
        if not (rules.fault or rules.faults or rules.latency):  # the usual case: answer now
            session.send(answer)
            return
        fault = rules.fault
        if mti[1:] in ("100", "200"):
            fault = rules.faults.get(int(request.get(4, "0") or 0), fault)
        else:
            fault = None  # faults are for authorizations; SAF tests kill the host instead
        delay = rules.latency
        if fault == "drop":
            return
        if fault == "close":
            session.close()
            return
        if fault == "garbage":
            answer = b"\xff\xfe garbage \x00" + answer[:3]
        elif fault == "delay":
            delay += self.rules.fault_delay
        count = 2 if fault == "twice" else 1
        if delay <= 0:
            for _ in range(count):
                session.send(answer)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def later() -> None:
            self._pending.discard(handle)  # type: ignore[arg-type]
            for _ in range(count):
                session.send(answer)

        handle = loop.call_later(delay, later)
        self._pending.add(handle)

    def _code(self, cb: str) -> str:
        if self.profile.name == "iso93-binary":
            return _ACTION.get(cb, "100")
        return cb

    def _answer(self, request: Message) -> bytes | None:
        mti = request.mti
        function = mti[1:]
        out = translate.answer_mti(mti)
        if function in ("800", "804"):
            if not self.answer_network:
                return None
            return request.respond(out, {39: "800" if self.profile.name == "iso93-binary"
                                         else "00"})
        if function in ("420", "421", "120", "121", "220", "221"):
            kind = "reversal" if function.startswith("42") else "advice"
            key = translate.key_of(request)
            self.received[kind][key] += 1
            self.arrivals.append((kind, key))
            self.follow_ups.append(request)
            return request.respond(out, {39: self._code("00")})
        if function not in ("100", "101", "200", "201"):
            return None
        rules = self.rules
        # Only what the rules look at is converted: the simulator shares the benchmark's
        # CPU with switchd, where a real acquirer host has its own.
        pan = str(request.get(2, "")) if rules.decline_cards or rules.decline_bins else ""
        cb = rules.decide(pan, int(request.get(4, "0") or 0))
        changes = self._template(request)
        changes[39] = self._code(cb)
        if cb == "00":
            self.approved += 1
            changes[38] = f"{next(self._approval) % 1_000_000:06d}"
            changes[55] = self._issuer()
        return request.respond(out, changes)

    def _template(self, request: Message) -> dict[int, Any]:
        """The answer's changes that depend only on which fields the request has (track
        and PIN data and its chip data left out), worked out once per shape of request."""
        stripped = self._stripped.get(request.numbers)
        if stripped is None:
            if len(self._stripped) > 256:
                self._stripped.clear()
            stripped = self._stripped[request.numbers] = tuple(
                n for n in (35, 52, 55) if n in request)
        return dict.fromkeys(stripped)

    def _issuer(self) -> Any:
        """Field 55 of an approval (tag 91 = the rules' issuer data), encoded once."""
        data = self.rules.issuer_data
        if self._issuer_value is None or self._issuer_value[0] is not data:
            issuer = (("91", data),)
            if self.profile.name == "iso87-ascii":
                value: Any = translate.ber_encode(issuer)
            elif self.profile.name == "cb2a":
                value = translate.ber_to_cb(issuer)
            else:
                value = issuer
            self._issuer_value = (data, value)
        return self._issuer_value[1]
