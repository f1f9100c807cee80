"""Acquirer links on real sockets: TLS (mutual), 4-byte framing, sign-on and echo
keep-alive, a half-dead host detected, reconnection after a restart, the window, metrics."""

from __future__ import annotations

import asyncio
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from passerelle.codecs.iso8583 import Message
from passerelle.routing import translate
from passerelle.routing.errors import LinkBusy, LinkDown
from passerelle.routing.link import AcquirerLink
from passerelle.routing.metrics import RoutingMetrics
from passerelle.routing.settings import AcquirerSettings
from passerelle.sim.acquirer import AcquirerSimulator, Rules
from tests.integration.auth_helpers import CB2A, auth_request
from tests.integration.test_switchd_tls import Pki

pytestmark = pytest.mark.integration
NOW = datetime(2026, 1, 24, tzinfo=UTC)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def _authorize(link: AcquirerLink, stan: int, amount: int = 1500,
                     timeout: float = 2.0) -> Message:
    request = Message.parse(auth_request(stan=stan, amount=amount), CB2A)
    wire, key = translate.to_acquirer(request, link.settings, NOW)
    return await link.request(wire, key, timeout)


def _settings(port: int, **extra: Any) -> AcquirerSettings:
    return AcquirerSettings(name="acq", host="127.0.0.1", port=port, reconnect_min=0.05,
                            reconnect_max=0.1, connect_timeout=1.0, **extra)


def test_mutual_tls_and_four_byte_framing(tmp_path: Path) -> None:
    pki = Pki(tmp_path, "acq")
    server_cert = pki.issue("localhost", server=True)
    client_cert = pki.issue("switchd", server=False)

    async def scenario() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_path))
        context.load_cert_chain(*server_cert)
        context.verify_mode = ssl.CERT_REQUIRED
        sim = AcquirerSimulator("iso87-ascii", 4, ssl=context)
        port = await sim.start()
        link = AcquirerLink(_settings(port, profile="iso87-ascii", framing=4, tls=True,
                                      tls_ca=str(pki.ca_path), tls_cert=str(client_cert[0]),
                                      tls_key=str(client_cert[1]),
                                      tls_server_name="localhost"))
        link.start()
        try:
            assert await link.wait_up(5)
            answer = await _authorize(link, 1)
            assert answer.mti == "0110" and answer.get(39) == "00"
            assert sim.requests["0800"] == 1  # signed on first
        finally:
            await link.close()
            await sim.stop()

    run(scenario())


def test_a_tls_host_we_do_not_trust_never_comes_up(tmp_path: Path) -> None:
    pki, other = Pki(tmp_path, "acq"), Pki(tmp_path, "other")

    async def scenario() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*other.issue("localhost", server=True))
        sim = AcquirerSimulator("iso93-binary", 2, ssl=context)
        port = await sim.start()
        link = AcquirerLink(_settings(port, tls=True, tls_ca=str(pki.ca_path),
                                      tls_server_name="localhost"))
        link.start()
        try:
            assert not await link.wait_up(0.5)
            with pytest.raises(LinkDown):
                await _authorize(link, 1)
        finally:
            await link.close()
            await sim.stop()

    run(scenario())


def test_echo_keep_alive_and_a_half_dead_host_is_dropped_then_rejoined() -> None:
    async def scenario() -> None:
        sim = AcquirerSimulator("iso93-binary", 2)
        port = await sim.start()
        metrics = RoutingMetrics()
        link = AcquirerLink(_settings(port, echo_interval=0.1, response_timeout=0.2), metrics)
        link.start()
        try:
            assert await link.wait_up(5)
            await _until(lambda: sim.requests["1804"] >= 3)  # sign-on + echoes when idle
            assert link.up
            sim.answer_network = False  # the host still accepts bytes but answers nothing
            await _until(lambda: not link.up)
            sim.answer_network = True
            await _until(lambda: link.up)
            assert sim.connections >= 2  # the silent connection was closed, a new one made
            assert (await _authorize(link, 2)).get(39) == "000"
            text = generate_latest(metrics.registry).decode()
            assert 'passerelle_acquirer_link_state{acquirer="acq",state="up"} 1.0' in text
        finally:
            await link.close()
            await sim.stop()

    run(scenario())


def test_reconnects_after_the_host_restarts_and_in_flight_requests_fail_fast() -> None:
    async def scenario() -> None:
        sim = AcquirerSimulator("iso93-binary", 2, Rules(latency=0.5))
        port = await sim.start()
        link = AcquirerLink(_settings(port))
        link.start()
        try:
            assert await link.wait_up(5)
            pending = asyncio.create_task(_authorize(link, 1))
            await _until(lambda: len(link.mux) == 1)
            started = time.monotonic()
            await sim.stop()
            with pytest.raises(LinkDown):
                await pending
            assert time.monotonic() - started < 0.5  # not left waiting for its timeout
            sim.rules.latency = 0.0
            await sim.start()
            assert await link.wait_up(5)
            assert (await _authorize(link, 2)).get(39) == "000"
        finally:
            await link.close()
            await sim.stop()

    run(scenario())


def test_the_window_bounds_requests_in_flight() -> None:
    async def scenario() -> None:
        sim = AcquirerSimulator("iso93-binary", 2, Rules(latency=0.5))
        port = await sim.start()
        link = AcquirerLink(_settings(port, window=2))
        link.start()
        try:
            assert await link.wait_up(5)
            tasks = [asyncio.create_task(_authorize(link, n, timeout=3.0 if n < 2 else 0.2))
                     for n in range(4)]
            await _until(lambda: link.mux.in_flight == 2 and len(link.mux._waiters) == 2)
            assert len(link.mux) == 2  # only two were sent
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert [isinstance(r, Message) for r in results] == [True, True, False, False]
            assert all(isinstance(r, LinkBusy) for r in results[2:])  # never sent
        finally:
            await link.close()
            await sim.stop()

    run(scenario())
