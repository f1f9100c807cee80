"""Bad input on every layer of a running switchd: the session gets the protocol's error
answer or is closed, other sessions carry on, and switchd stays up.

switchd runs as a real child process; the timers are shortened so that "silence past the
timers" takes a second, not thirteen minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from passerelle.codecs import cbcom, x25, xot
from passerelle.codecs.framing import LengthPrefixFramer, frame2, frame4
from passerelle.codecs.iso8583 import Message
from passerelle.codecs.profiles import get_profile
from passerelle.codecs.proxy_v2 import build_proxy_header
from passerelle.sim.terminal import Terminal, echo_request
from passerelle.switchd.process import SwitchdProcess

pytestmark = pytest.mark.integration

CB2A = get_profile("cb2a")
LOCAL = {"host": "127.0.0.1", "port": 0}
CN = frame4(cbcom.connect().encode())
T = TypeVar("T")


def _settings(**timers: float) -> dict[str, object]:
    return {
        "switchd": {"handshake_timeout": 1.0, "drain_timeout": 5.0},
        "listeners": {
            "xot": {**LOCAL, "max_frame": 4096},
            "cbcom": {**LOCAL, "max_frame": 4096},
            "iso": {**LOCAL, "max_frame": 2048, "idle_timeout": timers.get("iso_idle", 60.0)},
        },
        "x25": {"call_timeout": timers.get("call_timeout", 60.0)},
        "cbcom": {"cn_timeout": timers.get("cn_timeout", 60.0), "tsi": timers.get("tsi", 600.0)},
        "metrics": {"port": 0},
    }


@pytest.fixture(scope="module")
def switchd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchdProcess]:
    """Long timers: for everything but timer expiry."""
    with SwitchdProcess(_settings(), tmp_path_factory.mktemp("switchd")) as process:
        yield process
        assert process.proc is not None and process.proc.poll() is None, "switchd died"


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchdProcess]:
    """Timers of a fraction of a second."""
    settings = _settings(cn_timeout=0.4, tsi=0.6, call_timeout=0.4, iso_idle=0.5)
    settings["switchd"] = {"handshake_timeout": 0.4}
    with SwitchdProcess(settings, tmp_path_factory.mktemp("fast")) as process:
        yield process
        assert process.proc is not None and process.proc.poll() is None, "switchd died"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _exchange_raw(port: int, data: bytes, *, drip: float = 0.0,
                        read_timeout: float = 5.0) -> bytes:
    """Send `data` (byte by byte every `drip` s if set), then read until switchd closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if drip:
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(drip)  # the slow drip itself, not synchronisation
        else:
            writer.write(data)
        return await asyncio.wait_for(reader.read(-1), read_timeout)
    finally:
        writer.close()


def _ipdus(data: bytes) -> list[cbcom.Ipdu]:
    return [cbcom.decode(frame) for frame in LengthPrefixFramer(4).feed(data)]


def _packets(data: bytes) -> list[x25.Packet]:
    return [x25.decode(packet) for packet in xot.XotDecoder().feed(data)]


async def _xot_until_clear(port: int, data: bytes, *, after_call: bytes = b"",
                           drip: float = 0.0) -> list[x25.Packet]:
    """Send `data` (then `after_call` once the call is accepted); read packets until
    switchd clears, confirm the Clear, and expect the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(len(data)) if drip else ():
            writer.write(data[i:i + 1])
            await asyncio.sleep(drip)  # the slow drip itself, not synchronisation
        if not drip:
            writer.write(data)
        decoder, packets = xot.XotDecoder(), []
        while not packets or not isinstance(packets[-1], x25.ClearRequest):
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            assert chunk, f"closed without a Clear after {packets}"
            packets += [x25.decode(raw) for raw in decoder.feed(chunk)]
            if after_call and isinstance(packets[-1], x25.CallAccepted):
                writer.write(after_call)
        writer.write(xot.encode(x25.ClearConfirmation(packets[-1].lcn).encode()))
        assert await asyncio.wait_for(reader.read(-1), 5) == b""
        return packets
    finally:
        writer.close()


def _call_request(**kwargs: object) -> bytes:
    return xot.encode(x25.CallRequest(1, "196001", "75001234", **kwargs).encode())


async def _echo_works(process: SwitchdProcess) -> None:
    """A fresh session on each listener still gets its echo answered."""
    async with await Terminal.dial_cbcom("127.0.0.1", process.port("cbcom")) as tpe:
        assert Message.parse(await tpe.exchange(echo_request(11)), CB2A).get(39) == "00"
    async with await Terminal.dial_xot("127.0.0.1", process.port("xot")) as tpe:
        assert Message.parse(await tpe.exchange(echo_request(12)), CB2A).get(39) == "00"


# -- CBCOM ------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "code"), [
    (frame4(b"\x99\x00"), cbcom.CODE_INVALID_IPDU),                    # unknown PGI
    (frame4(b"\xc2\x04\x05\x04\x12\x02"), cbcom.CODE_TRUNCATED),       # PI05 cut short
    (b"\xff\xff\xff\xff", cbcom.CODE_APDU_LENGTH),                      # oversize length
    (frame4(cbcom.data(echo_request()).encode()), cbcom.CODE_UNEXPECTED_IPDU),  # DE before CN
    (frame4(cbcom.connect(cbcom.ProtocolId("12", 0x07)).encode()), cbcom.CODE_BAD_PI05),
    (frame4(cbcom.connect(cbcom.ProtocolId("99")).encode()), cbcom.CODE_BAD_VERSION),
    (CN + CN, cbcom.CODE_UNEXPECTED_IPDU),                              # CN twice
])
def test_cbcom_error_gets_ab_with_its_code_then_close(switchd: SwitchdProcess, data: bytes,
                                                      code: int) -> None:
    answer = run(_exchange_raw(switchd.port("cbcom"), data))
    ipdus = _ipdus(answer)
    assert ipdus[-1].pgi == cbcom.AB and ipdus[-1].code == code
    run(_echo_works(switchd))


def test_cbcom_slow_drip_is_served(switchd: SwitchdProcess) -> None:
    request = CN + frame4(cbcom.data(echo_request(3)).encode()) + frame4(cbcom.abort(0x80).encode())
    answer = run(_exchange_raw(switchd.port("cbcom"), request, drip=0.002))
    pgis = [ipdu.pgi for ipdu in _ipdus(answer)]
    assert pgis == [cbcom.AC, cbcom.DE]


def test_cb2a_garbage_in_de_gets_format_error_and_session_goes_on(switchd: SwitchdProcess) -> None:
    async def scenario() -> None:
        async with await Terminal.dial_cbcom("127.0.0.1", switchd.port("cbcom")) as tpe:
            truncated = echo_request(4)[:-1]  # field 70 cut short
            answer = Message.parse(await tpe.exchange(truncated), CB2A)
            assert answer.mti == "0810" and answer.get(39) == "30"
            assert answer.get(44) == (("AA", "07000"),)
            tpe.send(b"\xff")  # not even an MTI: nothing to answer
            unknown = Message.parse(await tpe.exchange(echo_request(5)), CB2A)
            assert unknown.get(11) == "000005"  # the next answer is the next message's
    run(scenario())


def test_unknown_mti_gets_reject(switchd: SwitchdProcess) -> None:
    vector = Path("/work/shared/vectors/cb2a/0100-stripe.hex")
    request = bytes.fromhex(vector.read_text().strip()) if vector.exists() else None
    if request is None:
        pytest.skip("reference vectors not available")

    async def scenario() -> None:
        async with await Terminal.dial_cbcom("127.0.0.1", switchd.port("cbcom")) as tpe:
            answer = Message.parse(await tpe.exchange(request), CB2A)
            assert answer.mti == "0110" and answer.get(39) == "12"
            assert 35 not in answer  # track 2 is never echoed
    run(scenario())


# -- XOT / X.25 -------------------------------------------------------------------------

def test_xot_bad_version_closes(switchd: SwitchdProcess) -> None:
    assert run(_exchange_raw(switchd.port("xot"), b"\x00\x07\x00\x03abc")) == b""
    run(_echo_works(switchd))


def test_xot_oversize_length_closes(switchd: SwitchdProcess) -> None:
    assert run(_exchange_raw(switchd.port("xot"), b"\x00\x00\xff\xff" + b"x" * 64)) == b""


def test_x25_data_before_call_is_cleared_with_diagnostic(switchd: SwitchdProcess) -> None:
    data = xot.encode(x25.Data(1, 0, 0, b"hello").encode())
    packets = run(_xot_until_clear(switchd.port("xot"), data))
    clear = packets[-1]
    assert isinstance(clear, x25.ClearRequest)
    assert clear.cause == x25.CAUSE_LOCAL_PROCEDURE_ERROR
    assert clear.diagnostic == x25.DIAG_INVALID_FOR_STATE["p1"]


def test_x25_wrong_ps_after_call_is_cleared(switchd: SwitchdProcess) -> None:
    wrong = xot.encode(x25.Data(1, 5, 0, b"x").encode())
    packets = run(_xot_until_clear(switchd.port("xot"), _call_request(), after_call=wrong))
    assert isinstance(packets[0], x25.CallAccepted)
    clear = packets[-1]
    assert isinstance(clear, x25.ClearRequest) and clear.diagnostic == x25.DIAG_INVALID_PS


def test_x25_data_before_call_accepted_is_cleared(switchd: SwitchdProcess) -> None:
    early = xot.encode(x25.Data(1, 0, 0, b"x").encode())
    packets = run(_xot_until_clear(switchd.port("xot"), _call_request() + early))
    assert packets[-1].diagnostic == x25.DIAG_INVALID_FOR_STATE["p2"]


def test_x25_slow_drip_call_is_accepted(switchd: SwitchdProcess) -> None:
    clear = xot.encode(x25.ClearRequest(1, 0, 0).encode())
    packets = _packets(run(_exchange_raw(switchd.port("xot"), _call_request() + clear,
                                         drip=0.002)))
    assert [type(p) for p in packets] == [x25.CallAccepted, x25.ClearConfirmation]


def test_cbcom_error_over_xot_gets_ab_then_clear(switchd: SwitchdProcess) -> None:
    de_first = xot.encode(x25.Data(1, 0, 0, cbcom.data(echo_request()).encode()).encode())
    packets = run(_xot_until_clear(switchd.port("xot"), _call_request(), after_call=de_first))
    datas = [p for p in packets if isinstance(p, x25.Data)]
    assert cbcom.decode(datas[0].data).code == cbcom.CODE_UNEXPECTED_IPDU
    assert isinstance(packets[-1], x25.ClearRequest)


# -- ISO --------------------------------------------------------------------------------

def test_iso_oversize_frame_closes_and_garbage_is_survived(switchd: SwitchdProcess) -> None:
    assert run(_exchange_raw(switchd.port("iso"), b"\xff\xff" + b"x" * 100)) == b""

    async def garbage_then_echo() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", switchd.port("iso"))
        writer.write(frame2(b"\x00") + frame2(echo_request(9)))
        size = int.from_bytes(await reader.readexactly(2), "big")
        answer = Message.parse(await reader.readexactly(size), CB2A)
        assert answer.get(11) == "000009" and answer.get(39) == "00"
        writer.close()
    run(garbage_then_echo())


# -- timers -----------------------------------------------------------------------------

def test_silence_before_cn_gets_ab(fast: SwitchdProcess) -> None:
    ipdus = _ipdus(run(_exchange_raw(fast.port("cbcom"), b"")))
    assert ipdus[-1].pgi == cbcom.AB and ipdus[-1].code == cbcom.CODE_TSI_EXPIRED


def test_truncated_header_then_silence_gets_ab(fast: SwitchdProcess) -> None:
    ipdus = _ipdus(run(_exchange_raw(fast.port("cbcom"), b"\x00\x00")))
    assert ipdus[-1].code == cbcom.CODE_TSI_EXPIRED


def test_silence_past_tsi_gets_ab(fast: SwitchdProcess) -> None:
    async def scenario() -> None:
        tpe = await Terminal.dial_cbcom("127.0.0.1", fast.port("cbcom"))
        await tpe.wait_closed(5)
        assert tpe.aborted is not None and tpe.aborted.code == cbcom.CODE_TSI_EXPIRED
    run(scenario())


def test_a_terminal_that_never_reads_is_cut_off(fast: SwitchdProcess) -> None:
    """It sends requests and never reads the answers: switchd stops reading it (bounded
    buffers), then its TSI ends the session and the socket is reset."""
    async def scenario() -> int:
        _reader, writer = await asyncio.open_connection("127.0.0.1", fast.port("cbcom"))
        writer.write(CN)
        de = frame4(cbcom.data(echo_request(1)).encode())
        sent = 0
        try:
            with pytest.raises(ConnectionError):  # reset by switchd
                while sent < 200_000_000:
                    writer.write(de * 100)
                    await asyncio.wait_for(writer.drain(), 10)
                    sent += len(de) * 100
        finally:
            writer.close()
        return sent

    assert run(scenario()) < 200_000_000  # switchd stopped taking bytes, then cut it
    fast.wait_for("cbcom.aborted", code="0x19")
    run(_echo_works(fast))


def test_xot_silence_without_call_closes(fast: SwitchdProcess) -> None:
    assert run(_exchange_raw(fast.port("xot"), b"")) == b""


def test_xot_silence_after_call_gets_ab_and_clear(fast: SwitchdProcess) -> None:
    async def scenario() -> None:
        tpe = await Terminal.dial_xot("127.0.0.1", fast.port("xot"), connect=False)
        await tpe.wait_closed(5)
        assert tpe.aborted is not None and tpe.aborted.code == cbcom.CODE_TSI_EXPIRED
        assert tpe.cleared is not None
    run(scenario())


def test_iso_idle_connection_closes(fast: SwitchdProcess) -> None:
    assert run(_exchange_raw(fast.port("iso"), b"\x00")) == b""


# -- volume -----------------------------------------------------------------------------

def test_thousands_of_connect_close_leave_others_unaffected(switchd: SwitchdProcess) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with await Terminal.dial_cbcom("127.0.0.1", switchd.port("cbcom")) as live:

            async def churn(port: int, count: int) -> None:
                for _ in range(count):
                    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1",
                                                                port)
                    transport.close()

            ports = [switchd.port(name) for name in ("cbcom", "xot", "iso")]
            await asyncio.gather(*(churn(ports[i % 3], 100) for i in range(30)))
            answer = Message.parse(await live.exchange(echo_request(77)), CB2A)
            assert answer.get(11) == "000077"
        await _echo_works(switchd)
    run(scenario())
    accepted = switchd.find("conn.accepted")
    assert len(accepted) >= 3000


def test_proxy_listener_refuses_garbage(tmp_path: Path) -> None:
    settings = {"listeners": {"cbcom": {**LOCAL, "proxy_protocol": True}, "xot": {"enabled": False},
                              "iso": {"enabled": False}}, "metrics": {"enabled": False}}
    with SwitchdProcess(settings, tmp_path) as process:
        port = process.port("cbcom")
        assert run(_exchange_raw(port, b"GET / HTTP/1.0\r\n\r\n")) == b""

        async def proxied() -> None:
            header = build_proxy_header(("203.0.113.7", 41000), ("192.0.2.1", 4000))
            async with await Terminal.dial_cbcom("127.0.0.1", port, proxy_header=header) as tpe:
                assert Message.parse(await tpe.exchange(echo_request(1)), CB2A).get(39) == "00"
        run(proxied())
        process.wait_for("cbcom.connected", timeout=5, peer="203.0.113.7:41000")
