"""A payment terminal (TPE) simulator that dials switchd like a real one.

It speaks the real wire protocols through the same sans-I/O layers as switchd, on their
client side: XOT with an X.25 call (DTE side of `X25Circuit`), or CBCOM over TCP or TLS
(client side of `CbcomSession`). Scriptable from tests, benchmarks and `mpctl simulate`::

    async with await Terminal.dial_cbcom("127.0.0.1", 4000) as tpe:
        answer = await tpe.exchange(echo_request())      # DE out, DE back
    # leaving the block sends AB (normal end) and, over XOT, clears the call

What the server did to the session stays observable: `aborted` (the AB it sent, with its
code), `cleared` (the X.25 Clear, with cause and diagnostic), `closed` (TCP gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections import deque
from types import TracebackType

from passerelle.codecs import cbcom
from passerelle.codecs.cbcom import ProtocolId
from passerelle.codecs.iso8583 import encode
from passerelle.codecs.profiles import get_profile
from passerelle.switchd import cbcom_session as cs
from passerelle.switchd import x25_circuit as xc

__all__ = ["SessionEnded", "Terminal", "echo_request"]


class SessionEnded(Exception):
    """The server ended the session (AB, Clear, or TCP close) before the answer came."""


def echo_request(stan: int = 1, terminal_id: str = "SIMTPE01") -> bytes:
    """A CB2A network-management echo (0800, field 70 = 301)."""
    return encode(get_profile("cb2a"), "0800", {
        7: "0101000000", 11: f"{stan % 1_000_000:06d}", 41: terminal_id, 70: "301",
    })


class _Pump(asyncio.Protocol):
    """Moves bytes from the socket into the terminal's layers."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal

    def data_received(self, data: bytes) -> None:
        self.terminal._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.terminal._lost()


class Terminal:
    """One terminal connection; build it with `dial_cbcom` or `dial_xot`."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.session = cs.CbcomSession(cs.Role.CLIENT, now=self.loop.time())
        self.circuit: xc.X25Circuit | None = None
        self.messages: deque[bytes] = deque()
        self.connected: cs.Connected | None = None
        self.call: xc.CallConnected | None = None
        self.aborted: cs.Aborted | None = None
        self.cleared: xc.Cleared | None = None
        self.closed = False
        self._changed = asyncio.Event()
        self._tls: ssl.SSLObject | None = None
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self._tls_done = False
        self.tls_error: ssl.SSLError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    # -- dialling ------------------------------------------------------------------------
    @classmethod
    async def dial_cbcom(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None, proxy_header: bytes = b"",
        protocol: ProtocolId = ProtocolId(),  # noqa: B008 - frozen dataclass
        tnr: int | None = None, tsi: int | None = None, connect: bool = True,
        timeout: float = 10.0,
    ) -> Terminal:
        """TCP (or TLS) connection to a cbcom listener, then CN -> AC unless `connect=False`."""
        self = cls()
        await self._open(host, port, proxy_header)
        try:
            if tls is not None:
                self._tls = tls.wrap_bio(self._tls_in, self._tls_out, server_side=False,
                                         server_hostname=server_hostname or host)
                self._tls_handshake()
                await self._until(lambda: self._tls_done, timeout, "TLS handshake")
            if connect:
                await self.cbcom_connect(protocol, tnr=tnr, tsi=tsi, timeout=timeout)
        except BaseException:
            self.abort()  # a failed dial leaves no socket behind
            raise
        return self

    @classmethod
    async def dial_xot(
        cls, host: str, port: int, *, called: str = "196001", calling: str = "75001234",
        packet_size: int | None = None, window: int | None = None, modulo: int = 8,
        user_data: bytes = b"", proxy_header: bytes = b"",
        protocol: ProtocolId = ProtocolId(),  # noqa: B008 - frozen dataclass
        tnr: int | None = None, tsi: int | None = None, connect: bool = True,
        timeout: float = 10.0,
    ) -> Terminal:
        """XOT connection, X.25 call set-up, then CBCOM CN -> AC unless `connect=False`."""
        self = cls()
        self.circuit = xc.X25Circuit(xc.Role.DTE, xc.CircuitConfig(
            max_packet_size=4096, max_window=127), now=self.loop.time())
        await self._open(host, port, proxy_header)
        try:
            self.circuit.place_call(called, calling, now=self.loop.time(), modulo=modulo,
                                    packet_size=packet_size, window=window,
                                    user_data=user_data)
            self._flush()
            await self._until(lambda: self.call is not None, timeout, "X.25 call accepted")
            if connect:
                await self.cbcom_connect(protocol, tnr=tnr, tsi=tsi, timeout=timeout)
        except BaseException:
            self.abort()
            raise
        return self

    async def cbcom_connect(
        self, protocol: ProtocolId = ProtocolId(),  # noqa: B008 - frozen dataclass
        *, tnr: int | None = None, tsi: int | None = None, timeout: float = 10.0,
    ) -> cs.Connected:
        """Send CN, wait for AC."""
        self.session.connect(protocol, now=self.loop.time(), tnr=tnr, tsi=tsi)
        self._flush()
        await self._until(lambda: self.connected is not None, timeout, "CBCOM AC")
        assert self.connected is not None
        return self.connected

    async def _open(self, host: str, port: int, proxy_header: bytes) -> None:
        transport, _ = await self.loop.create_connection(lambda: _Pump(self), host, port)
        self.transport = transport  # type: ignore[assignment]
        if proxy_header:
            transport.write(proxy_header)

    # -- scripting -----------------------------------------------------------------------
    def send(self, apdu: bytes) -> None:
        """Send one CB2A message in a DE."""
        self.session.send_message(apdu, self.loop.time())
        self._flush()

    async def receive(self, timeout: float = 10.0) -> bytes:
        """The next CB2A message from switchd; SessionEnded if the session ends first."""
        await self._until(lambda: bool(self.messages), timeout, "an answer")
        return self.messages.popleft()

    async def exchange(self, apdu: bytes, timeout: float = 10.0) -> bytes:
        """Send a CB2A message and wait for the answer."""
        self.send(apdu)
        return await self.receive(timeout)

    @property
    def tls_cipher(self) -> tuple[str, str, int] | None:
        """(cipher, protocol, bits) of the TLS connection, None without TLS."""
        return self._tls.cipher() if self._tls is not None else None

    def write_raw(self, data: bytes) -> None:
        """Bytes straight onto the stream (inside TLS if any): for bad-input tests."""
        self._write(data)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Until switchd closes the connection."""
        await self._until(lambda: self.closed, timeout, "the connection to close",
                          ended_ok=True)

    async def close(self, timeout: float = 5.0) -> None:
        """End like a terminal: AB (normal end); over XOT, Clear and its confirmation."""
        if not self.closed and self.aborted is None and self.connected is not None:
            self._session_events(self.session.abort(cbcom.CODE_NORMAL_END, "terminal done"))
            self._flush()
        circuit = self.circuit
        if not self.closed and circuit is not None and circuit.state is xc.State.DATA:
            self._circuit_events(circuit.clear(now=self.loop.time()))
            self._flush()
            with contextlib.suppress(SessionEnded, TimeoutError):
                await self._until(lambda: self.cleared is not None, timeout, "clear",
                                  ended_ok=True)
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection without a word."""
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    async def __aenter__(self) -> Terminal:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- the layers ----------------------------------------------------------------------
    def _received(self, data: bytes) -> None:
        if self._tls is not None:
            data = self._tls_received(data)
        if data:
            now = self.loop.time()
            if self.circuit is not None:
                self._circuit_events(self.circuit.receive_data(data, now))
            else:
                self._session_events(self.session.receive_data(data, now))
        self._flush()
        self._signal()

    def _tls_received(self, data: bytes) -> bytes:
        assert self._tls is not None
        self._tls_in.write(data)
        plain = bytearray()
        try:
            if not self._tls_handshake():
                return b""
            while True:
                try:
                    chunk = self._tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not chunk:
                    break
                plain += chunk
        except ssl.SSLError as error:  # e.g. the server refused our certificate
            self.tls_error = error
            self.abort()
        return bytes(plain)

    def _tls_handshake(self) -> bool:
        assert self._tls is not None
        if not self._tls_done:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._write(b"")
                return False
            except ssl.SSLError as error:
                self._write(b"")
                self.tls_error = error
                self.abort()
                return False
            self._tls_done = True
            self._write(b"")
        return True

    def _circuit_events(self, events: list[xc.Event]) -> None:
        for event in events:
            if isinstance(event, xc.CallConnected):
                self.call = event
            elif isinstance(event, xc.Message):
                self._session_events(self.session.receive_ipdu(event.data, self.loop.time()))
            elif isinstance(event, xc.Cleared):
                self.cleared = event

    def _session_events(self, events: list[cs.Event]) -> None:
        for event in events:
            if isinstance(event, cs.Connected):
                self.connected = event
            elif isinstance(event, cs.Message):
                self.messages.append(event.apdu)
            elif isinstance(event, cs.Aborted):
                self.aborted = event

    def _flush(self) -> None:
        if self.circuit is not None:
            if self.circuit.state is xc.State.DATA:
                for ipdu in self.session.ipdus_to_send():
                    self.circuit.send_message(ipdu)
            data = self.circuit.data_to_send()
        else:
            data = self.session.data_to_send()
        if data:
            self._write(data)
        self._arm_timer()

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._tls is not None:
            if data:
                self._tls.write(data)
            data = self._tls_out.read()
        if data:
            self.transport.write(data)

    def _lost(self) -> None:
        self.closed = True
        self._signal()

    def _signal(self) -> None:
        self._changed.set()

    def _arm_timer(self) -> None:
        """Schedule the client-side timers (TNR, X.25 call timer) at their next deadline."""
        deadlines = [self.session.next_deadline()]
        if self.circuit is not None:
            deadlines.append(self.circuit.next_deadline())
        at = min((d for d in deadlines if d is not None), default=math.inf)
        if at == self._timer_at or self.closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = None if math.isinf(at) else self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time()
        if self.circuit is not None:
            self._circuit_events(self.circuit.tick(now))
        self._session_events(self.session.tick(now))
        self._flush()
        self._signal()

    async def _until(self, condition: object, timeout: float, what: str, *,
                     ended_ok: bool = False) -> None:
        """Wait until `condition()` holds; SessionEnded if the session ends first."""
        assert callable(condition)
        deadline = self.loop.time() + timeout
        while not condition():
            if not ended_ok and (self.closed or self.aborted is not None
                                 or self.cleared is not None):
                raise SessionEnded(f"waiting for {what}: {self._ending()}")
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _ending(self) -> str:
        if self.tls_error is not None:
            return f"TLS error: {self.tls_error}"
        if self.aborted is not None:
            return f"AB 0x{self.aborted.code or 0:02X} ({self.aborted.reason})"
        if self.cleared is not None:
            return (f"cleared, cause 0x{self.cleared.cause:02X} "
                    f"diagnostic {self.cleared.diagnostic}")
        return "connection closed"
