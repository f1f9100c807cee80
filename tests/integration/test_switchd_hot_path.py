"""The per-message path of the cbcom listener, in-process: every way a DE can arrive (one
frame per read, several per read, split across reads, PI07 on 4 bytes) gets its answer, in
order; a DE whose dialogue is slow starts TGR even though the connection's deadline is only
refreshed when it must come earlier; frames are counted."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
import uvloop
from prometheus_client.exposition import generate_latest

from passerelle.codecs import cbcom
from passerelle.codecs.framing import frame4
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.config import parse_config
from passerelle.sim.terminal import echo_request
from passerelle.switchd import logs
from passerelle.switchd.dispatch import SessionContext, default_registry
from passerelle.switchd.server import Daemon

pytestmark = pytest.mark.integration

CB2A = get_profile("cb2a")
LOCAL = {"host": "127.0.0.1", "port": 0}


def _in_process(scenario: Any, **cbcom_timers: float) -> Any:
    logs.configure("info", io.BytesIO())
    settings = parse_config({"listeners": {"cbcom": LOCAL, "xot": {"enabled": False},
                                           "iso": {"enabled": False}},
                             "cbcom": cbcom_timers, "metrics": {"enabled": False}})
    return uvloop.run(asyncio.wait_for(scenario(settings), 30))


async def _read_ipdu(reader: asyncio.StreamReader) -> cbcom.Ipdu:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return cbcom.decode(await reader.readexactly(size))


async def _open(daemon: Daemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.listeners["cbcom"].port)
    writer.write(frame4(cbcom.connect().encode()))
    assert (await _read_ipdu(reader)).pgi == cbcom.AC
    return reader, writer


def _stan(ipdu: cbcom.Ipdu) -> str:
    assert ipdu.pgi == cbcom.DE and ipdu.code == cbcom.CODE_OK  # an answer: PI01 = 0
    message = Message.parse(ipdu.apdu, CB2A)
    assert (message.mti, message.get(39)) == ("0810", "00")
    return str(message.get(11))


def test_des_in_every_shape_are_answered_in_order_and_counted() -> None:
    async def scenario(settings: Any) -> tuple[list[str], str]:
        daemon = Daemon(settings)
        await daemon.start()
        reader, writer = await _open(daemon)
        de = [frame4(cbcom.data(echo_request(stan)).encode()) for stan in range(1, 9)]
        writer.write(de[0])  # one frame, one read: the fast path
        stans = [_stan(await _read_ipdu(reader))]
        writer.write(de[1] + de[2] + de[3])  # three in one read
        stans += [_stan(await _read_ipdu(reader)) for _ in range(3)]
        for i in range(len(de[4])):  # split across reads, byte by byte
            writer.write(de[4][i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)  # the drip itself, not synchronisation
        stans.append(_stan(await _read_ipdu(reader)))
        writer.write(de[5] + de[6][:7])  # a whole frame and the start of the next
        stans.append(_stan(await _read_ipdu(reader)))
        writer.write(de[6][7:])
        stans.append(_stan(await _read_ipdu(reader)))
        # PI07 on 4 bytes (tinyCbCom writes it so), after the buffered frames above
        apdu = echo_request(8)
        wide = cbcom.Ipdu(cbcom.DE, ((cbcom.PI07_APDU_LENGTH, len(apdu).to_bytes(4, "big")),),
                          apdu)
        writer.write(frame4(wide.encode()))
        stans.append(_stan(await _read_ipdu(reader)))
        writer.close()
        await daemon.stop()
        return stans, generate_latest(daemon.metrics.registry).decode()

    stans, metrics = _in_process(scenario)
    assert stans == [f"{stan:06d}" for stan in range(1, 9)]
    # CN + 8 DEs in, AC + 8 DEs out (and the AB of the stop, once the client is gone or not)
    assert 'switchd_frames_total{direction="in",layer="cbcom"} 9.0' in metrics
    assert 'switchd_frames_total{direction="out",layer="cbcom"}' in metrics
    out = [line for line in metrics.splitlines()
           if line.startswith('switchd_frames_total{direction="out",layer="cbcom"}')]
    assert float(out[0].rsplit(" ", 1)[1]) in (9.0, 10.0)
    assert 'switchd_messages_total{mti="0800",result="00"} 8.0' in metrics


def test_a_dialogue_slower_than_tgr_gets_the_session_aborted_with_0x1a() -> None:
    """The connection's deadline is a lower bound, refreshed only when it must come earlier:
    a DE left unanswered must bring it from TSI (780 s) down to TGR."""
    async def scenario(settings: Any) -> tuple[cbcom.Ipdu, float]:
        async def never(message: Message, context: SessionContext) -> bytes:
            await asyncio.Event().wait()
            raise AssertionError

        registry = default_registry()
        registry.register(["0100"], never)
        daemon = Daemon(settings, registry)
        await daemon.start()
        reader, writer = await _open(daemon)
        writer.write(frame4(cbcom.data(echo_request(1)).encode()))  # answered: TSI again
        assert _stan(await _read_ipdu(reader)) == "000001"
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(frame4(cbcom.data(encode(CB2A, "0100", {11: "000002", 41: "SIMTPE01"}))
                            .encode()))
        ab = await _read_ipdu(reader)
        took = loop.time() - started
        writer.close()
        await daemon.stop()
        return ab, took

    ab, took = _in_process(scenario, tgr=0.3, tsi=600.0)
    assert (ab.pgi, ab.code) == (cbcom.AB, cbcom.CODE_TGR_EXPIRED)
    assert 0.25 < took < 5


def test_messages_behind_a_slow_dialogue_wait_their_turn() -> None:
    async def scenario(settings: Any) -> list[str]:
        async def slow(message: Message, context: SessionContext) -> bytes:
            await asyncio.sleep(0.05)
            return message.respond("0110", {39: "00"})

        registry = default_registry()
        registry.register(["0100"], slow)
        daemon = Daemon(settings, registry)
        await daemon.start()
        reader, writer = await _open(daemon)
        request = encode(CB2A, "0100", {11: "000001", 41: "SIMTPE01"})
        writer.write(frame4(cbcom.data(request).encode())
                     + b"".join(frame4(cbcom.data(echo_request(stan)).encode())
                                for stan in (2, 3)))
        order = []
        for _ in range(3):
            message = Message.parse((await _read_ipdu(reader)).apdu, CB2A)
            order.append(f"{message.mti}/{message.get(11)}")
        writer.close()
        await daemon.stop()
        return order

    assert _in_process(scenario) == ["0110/000001", "0810/000002", "0810/000003"]
