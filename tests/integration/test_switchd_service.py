"""switchd as a service: echo on every listener, metrics, JSON logs, systemd notifications,
SIGTERM drain, connection limits, `--check-config`; and, in-process, dialogues in flight
during a drain."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from passerelle.codecs import cbcom
from passerelle.codecs.framing import frame2
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.config import parse_config
from passerelle.sim.terminal import Terminal, echo_request
from passerelle.switchd import logs
from passerelle.switchd.dispatch import SessionContext, default_registry
from passerelle.switchd.process import SwitchdProcess
from passerelle.switchd.server import Daemon

pytestmark = pytest.mark.integration

CB2A = get_profile("cb2a")
LOCAL = {"host": "127.0.0.1", "port": 0}
T = TypeVar("T")
VECTORS = Path("/work/shared/vectors/cb2a")
PAN = "4539795755326151"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def _settings(**switchd: object) -> dict[str, Any]:
    return {"switchd": {"drain_timeout": 5.0, **switchd},
            "listeners": {"xot": LOCAL, "cbcom": LOCAL, "iso": LOCAL},
            "metrics": {"port": 0}, "logging": {"level": "debug"}}


@pytest.fixture(scope="module")
def switchd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwitchdProcess]:
    with SwitchdProcess(_settings(), tmp_path_factory.mktemp("switchd")) as process:
        yield process


async def _iso_exchange(port: int, message: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame2(message))
    size = int.from_bytes(await reader.readexactly(2), "big")
    answer = await reader.readexactly(size)
    writer.close()
    return answer


def _stripe_request() -> bytes:
    path = VECTORS / "0100-stripe.hex"
    if not path.exists():
        pytest.skip("reference vectors not available")
    return bytes.fromhex(path.read_text().strip())


def test_echo_on_every_listener(switchd: SwitchdProcess) -> None:
    run(_echo_on_every_listener(switchd))


async def _echo_on_every_listener(switchd: SwitchdProcess) -> None:
    async with await Terminal.dial_cbcom("127.0.0.1", switchd.port("cbcom")) as tpe:
        answer = Message.parse(await tpe.exchange(echo_request(1)), CB2A)
        assert (answer.mti, answer.get(39), answer.get(11), answer.get(70)) == \
            ("0810", "00", "000001", "301")
    async with await Terminal.dial_xot("127.0.0.1", switchd.port("xot")) as tpe:
        answer = Message.parse(await tpe.exchange(echo_request(2)), CB2A)
        assert (answer.mti, answer.get(39), answer.get(11)) == ("0810", "00", "000002")
    answer = Message.parse(await _iso_exchange(switchd.port("iso"), echo_request(3)), CB2A)
    assert (answer.mti, answer.get(39), answer.get(11)) == ("0810", "00", "000003")
    sign_on = encode(CB2A, "0804", {11: "000004", 24: "831", 41: "SIMTPE01"})
    async with await Terminal.dial_cbcom(
            "127.0.0.1", switchd.port("cbcom"),
            protocol=cbcom.ProtocolId(protocol_type=cbcom.PROTOCOL_TRANSFER)) as tpe:
        answer = Message.parse(await tpe.exchange(sign_on), CB2A)
        assert (answer.mti, answer.get(39)) == ("0814", "00")


def test_long_message_through_small_packets(switchd: SwitchdProcess) -> None:
    """A 600-byte CB2A message over packet size 128 arrives whole; the answer comes back
    whole although it too spans several packets."""
    request = encode(CB2A, "0100", {11: "000005", 41: "SIMTPE01",
                                    **{n: "X" * 150 for n in (60, 61, 62, 63)}})
    assert len(request) > 600

    async def scenario() -> None:
        async with await Terminal.dial_xot("127.0.0.1", switchd.port("xot"), packet_size=128,
                                           window=2) as tpe:
            assert tpe.call is not None and tpe.call.negotiated.packet_size_rx == 128
            answer = Message.parse(await tpe.exchange(request), CB2A)
            assert answer.mti == "0110" and answer.get(63) == "X" * 150
    run(scenario())


def test_called_address_selects_the_profile(tmp_path: Path) -> None:
    settings = {"listeners": {"xot": LOCAL, "cbcom": {"enabled": False},
                              "iso": {"enabled": False}},
                "x25": {"called_profiles": {"196001": "cb2a-ebcdic"}},
                "metrics": {"enabled": False}}
    ebcdic = get_profile("cb2a-ebcdic")
    request = encode(ebcdic, "0800", {11: "000012", 41: "SIMTPE01", 70: "301"})
    with SwitchdProcess(settings, tmp_path) as process:
        async def scenario() -> tuple[Message, Message]:
            async with await Terminal.dial_xot("127.0.0.1", process.port("xot"),
                                               called="19600199") as tpe:
                selected = Message.parse(await tpe.exchange(request), ebcdic)
            async with await Terminal.dial_xot("127.0.0.1", process.port("xot"),
                                               called="19700000") as tpe:
                default = Message.parse(await tpe.exchange(echo_request(13)), CB2A)
            return selected, default
        selected, default = run(scenario())
        assert (selected.mti, selected.get(39), selected.get(41)) == ("0810", "00", "SIMTPE01")
        assert default.get(39) == "00"
        process.wait_for("x25.profile_selected", timeout=5, profile="cb2a-ebcdic")


def test_metrics_show_the_counters(switchd: SwitchdProcess) -> None:
    async def scenario() -> str:
        async with await Terminal.dial_cbcom("127.0.0.1", switchd.port("cbcom")) as tpe:
            await tpe.exchange(echo_request(6))
            assert switchd.metrics_address is not None
            reader, writer = await asyncio.open_connection(*switchd.metrics_address)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            page = (await reader.read(-1)).decode()
            writer.close()
            return page
    page = run(scenario())
    assert page.startswith("HTTP/1.1 200 OK")
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in page.split("\r\n\r\n", 1)[1].splitlines()
               if line and not line.startswith("#")}
    assert samples['switchd_connections_total{listener="cbcom"}'] >= 1
    assert samples['switchd_connections_open{listener="cbcom"}'] >= 1
    assert samples['switchd_sessions_open{listener="cbcom"}'] >= 1
    assert samples['switchd_messages_total{mti="0800",result="00"}'] >= 1
    assert samples['switchd_frames_total{direction="in",layer="cbcom"}'] >= 2


def test_logs_are_json_and_never_show_a_full_pan(switchd: SwitchdProcess) -> None:
    stripe = _stripe_request()

    async def scenario() -> None:
        async with await Terminal.dial_cbcom("127.0.0.1", switchd.port("cbcom")) as tpe:
            await tpe.exchange(stripe)
            await tpe.exchange(stripe[:-40])  # a format error, logged with its details
    run(scenario())
    switchd.wait_for("cb2a.format_error")
    assert switchd.raw_lines
    for line in switchd.raw_lines:
        event = json.loads(line)
        assert "." in event["event"] and event["level"] and event["timestamp"]
        assert PAN not in line.decode() and PAN not in line.hex()


def test_session_steps_are_logged(switchd: SwitchdProcess) -> None:
    run(_echo_on_every_listener(switchd))
    for step in ("conn.accepted", "x25.call_incoming", "x25.call_accepted", "cbcom.connected",
                 "cbcom.aborted", "x25.cleared", "conn.closed"):
        assert switchd.find(step), step


def test_max_connections_refuses_the_extra_one(tmp_path: Path) -> None:
    settings = {"listeners": {"cbcom": {**LOCAL, "max_connections": 2}, "xot": {"enabled": False},
                              "iso": {"enabled": False}}, "metrics": {"enabled": False}}
    with SwitchdProcess(settings, tmp_path) as process:
        async def scenario() -> None:
            port = process.port("cbcom")
            first = await Terminal.dial_cbcom("127.0.0.1", port)
            second = await Terminal.dial_cbcom("127.0.0.1", port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(-1), 5) == b""  # refused: closed
            writer.close()
            for tpe in (first, second):
                assert Message.parse(await tpe.exchange(echo_request(7)), CB2A).get(39) == "00"
                await tpe.close()
        run(scenario())
        process.wait_for("conn.refused", timeout=5, reason="max_connections")


class NotifySocket:
    """A fake systemd: an AF_UNIX datagram socket collecting sd_notify lines."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"passerelle-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
            self.address = f"{self.dir}/notify.sock"
            self.sock.bind(self.address)
        self.sock.settimeout(10)

    def expect(self, state: str) -> list[str]:
        """Read datagrams until one contains `state`; everything read."""
        seen: list[str] = []
        while not any(state in line.split("\n") for line in seen):
            seen.append(self.sock.recv(4096).decode())
        return seen

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)
            os.rmdir(self.dir)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_watchdog_reload_stopping_and_sigterm_drain(tmp_path: Path,
                                                             abstract: bool) -> None:
    notify = NotifySocket(abstract)
    env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"}
    try:
        process = SwitchdProcess(_settings(), tmp_path, env=env).start()
        try:
            assert "READY=1" in "\n".join(notify.expect("READY=1"))
            notify.expect("WATCHDOG=1")
            process.signal(signal.SIGHUP)
            notify.expect("RELOADING=1")
            notify.expect("READY=1")  # reload done

            async def scenario() -> None:
                cbcom_tpe = await Terminal.dial_cbcom("127.0.0.1", process.port("cbcom"))
                xot_tpe = await Terminal.dial_xot("127.0.0.1", process.port("xot"))
                process.signal(signal.SIGTERM)
                for tpe in (cbcom_tpe, xot_tpe):
                    await tpe.wait_closed()
                    assert tpe.aborted is not None and tpe.aborted.code == cbcom.CODE_NORMAL_END
                assert xot_tpe.cleared is not None
            run(scenario())
            notify.expect("STOPPING=1")
            assert process.wait(30) == 0  # the SIGTERM above: drained, exit 0
        finally:
            process.stop()
    finally:
        notify.close()
    assert process.find("switchd.stopped")


def _check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "switchd.toml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-c", "from passerelle.switchd.main import main; main()",
         "--check-config", str(path)], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("text", "message"), [
    ('[listeners.xot]\nport = "abc"\n', 'listeners.xot.port: expected int, got "abc"'),
    ("[listeners.cbcom]\nmax_conections = 10\n", "listeners.cbcom.max_conections: unknown key"),
    ("[cbcom]\ntsi = -1\n", "cbcom.tsi: expected float > 0.0, got -1"),
    ('[listeners.cbcom-tls]\nenabled = true\ncert = "/nonexistent.pem"\nkey = "/x.key"\n',
     'listeners.cbcom-tls.cert: no such file, got "/nonexistent.pem"'),
    ("[x25\n", "not valid TOML"),
])
def test_check_config_names_the_bad_key(tmp_path: Path, text: str, message: str) -> None:
    result = _check_config(tmp_path, text)
    assert result.returncode == 2
    assert message in result.stderr


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "conf" / "switchd.toml"
    # Its [routes] path is relative to it: the route table travels with it.
    (tmp_path / "routes.toml").write_text((example.parent / "routes.toml").read_text())
    result = _check_config(tmp_path, example.read_text())
    assert result.returncode == 0, result.stderr


# -- in-process: dialogues in flight during a drain -------------------------------------

def _in_process(coro_factory: Any, drain_timeout: float = 5.0) -> Any:
    stream = io.BytesIO()
    logs.configure("debug", stream)
    settings = parse_config({"switchd": {"drain_timeout": drain_timeout},
                             "listeners": {"cbcom": LOCAL, "xot": {"enabled": False},
                                           "iso": {"enabled": False}},
                             "metrics": {"enabled": False}})
    return uvloop.run(asyncio.wait_for(coro_factory(settings), 30)), stream


def test_drain_lets_a_dialogue_in_flight_finish() -> None:
    async def scenario(settings: Any) -> tuple[bytes, bool]:
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow_authorization(message: Message, context: SessionContext) -> bytes:
            entered.set()
            await release.wait()
            return message.respond("0110", {39: "00"})

        registry = default_registry()
        registry.register(["0100"], slow_authorization)
        daemon = Daemon(settings, registry)
        await daemon.start()
        port = daemon.listeners["cbcom"].port
        tpe = await Terminal.dial_cbcom("127.0.0.1", port)
        idle = await Terminal.dial_cbcom("127.0.0.1", port)
        tpe.send(encode(CB2A, "0100", {11: "000008", 41: "SIMTPE01"}))
        await entered.wait()
        stopping = asyncio.create_task(daemon.stop())
        await idle.wait_closed()  # the idle session is ended at once...
        refused = False
        try:
            await Terminal.dial_cbcom("127.0.0.1", port, timeout=2)
        except OSError:
            refused = True  # ...and no new connection is accepted
        assert not stopping.done()
        release.set()  # the dialogue in flight completes and is answered
        answer = await tpe.receive()
        await stopping
        await tpe.wait_closed()
        return answer, refused

    (answer, refused), stream = _in_process(scenario)
    assert Message.parse(answer, CB2A).get(39) == "00"
    assert refused
    assert b"switchd.stopped" in stream.getvalue()


def test_drain_is_bounded_by_drain_timeout() -> None:
    async def scenario(settings: Any) -> float:
        entered = asyncio.Event()

        async def never(message: Message, context: SessionContext) -> bytes:
            entered.set()
            await asyncio.Event().wait()
            raise AssertionError

        registry = default_registry()
        registry.register(["0100"], never)
        daemon = Daemon(settings, registry)
        await daemon.start()
        tpe = await Terminal.dial_cbcom("127.0.0.1", daemon.listeners["cbcom"].port)
        tpe.send(encode(CB2A, "0100", {11: "000009", 41: "SIMTPE01"}))
        loop = asyncio.get_running_loop()
        await entered.wait()
        started = loop.time()
        await daemon.stop()
        await tpe.wait_closed()
        return loop.time() - started

    took, stream = _in_process(scenario, drain_timeout=0.5)
    assert 0.4 < took < 3
    assert b"switchd.drain_timeout" in stream.getvalue()


def test_a_failing_dialogue_does_not_take_the_session_down() -> None:
    async def scenario(settings: Any) -> bytes:
        def broken(message: Message, context: SessionContext) -> bytes:
            raise RuntimeError("bug in a dialogue")

        registry = default_registry()
        registry.register(["0100"], broken)
        daemon = Daemon(settings, registry)
        await daemon.start()
        async with await Terminal.dial_cbcom("127.0.0.1", daemon.listeners["cbcom"].port) as tpe:
            tpe.send(encode(CB2A, "0100", {11: "000010", 41: "SIMTPE01"}))
            answer = await tpe.exchange(echo_request(11))
        await daemon.stop()
        return answer

    answer, stream = _in_process(scenario)
    assert Message.parse(answer, CB2A).get(11) == "000011"
    assert b"dialogue.failed" in stream.getvalue()


@pytest.mark.parametrize("listener", ["cbcom", "xot"])
@pytest.mark.parametrize("slow", [False, True])
def test_a_dialogue_can_end_the_session_with_an_abort_code(listener: str, slow: bool) -> None:
    """`context.abort(code)`: the answer leaves first, then AB with the code; over X.25 the
    call is then cleared. Messages queued behind it are not handled."""
    async def scenario(settings: Any) -> tuple[bytes, Any, Any, bool, list[str]]:
        seen: list[str] = []

        def refuse(message: Message, context: SessionContext) -> bytes:
            seen.append(message.get(11))
            context.abort(0x30)
            return message.respond("0110", {39: "05"})

        async def slow_refuse(message: Message, context: SessionContext) -> bytes:
            await asyncio.sleep(0)
            return refuse(message, context)

        registry = default_registry()
        registry.register(["0100"], slow_refuse if slow else refuse)
        daemon = Daemon(settings, registry)
        await daemon.start()
        port = daemon.listeners[listener].port
        tpe = await (Terminal.dial_xot("127.0.0.1", port) if listener == "xot"
                     else Terminal.dial_cbcom("127.0.0.1", port))
        tpe.send(encode(CB2A, "0100", {11: "000012", 41: "SIMTPE01"}))
        tpe.send(echo_request(13))  # behind the aborting dialogue: never answered
        answer = await tpe.receive()
        await tpe.wait_closed()
        extra = list(tpe.messages)
        await daemon.stop()
        return answer, tpe.aborted, tpe.cleared, bool(extra), seen

    settings_dict = {"switchd": {"drain_timeout": 5.0},
                     "listeners": {"cbcom": LOCAL, "xot": LOCAL, "iso": {"enabled": False}},
                     "metrics": {"enabled": False}}
    logs.configure("debug", io.BytesIO())
    answer, aborted, cleared, extra, seen = uvloop.run(asyncio.wait_for(
        scenario(parse_config(settings_dict)), 30))
    assert Message.parse(answer, CB2A).get(39) == "05"
    assert aborted is not None and aborted.code == 0x30 and aborted.by_peer
    assert not extra and seen == ["000012"]
    if listener == "xot":
        assert cleared is not None and cleared.by_peer
