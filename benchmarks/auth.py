"""Authorization benchmark: terminals -> switchd -> acquirer simulator, on loopback.

Three child processes at most share the machine's cores, as in production on one box:
the acquirer simulator, the thing under test (switchd, or a bare relay), and the load
generator (this process). Every process runs uvloop.

* `switchd`: a `Daemon` with the `iso` listener (2-byte length + CB2A) and the
  authorization dialogue; the acquirer link speaks iso93-binary to the simulator, so every
  request is decoded, validated, routed, translated to a 1100 and back to a 0110.
* `relay`: a bare uvloop relay that forwards the same frames, byte for byte, without
  decoding, to a simulator speaking cb2a (the same simulator code answering the same frames).
* `direct`: the load generator straight to the cb2a simulator (the latency floor).

Figures: closed-loop throughput (auth/s) through switchd and through the relay with the same
load generator in the same run, and their ratio (target >= 0.5); switchd's auth/s (target
>= 5,000); at a paced 1,000 auth/s, the p50/p99 latency switchd adds over `direct`
(target p99 <= 2 ms), with the relay's own latency at the same rate beside it (the same
number of process hops: what the machine's scheduling costs without any decoding). No
database: the auth log and SAF are off the hot path by design.

    .venv/bin/python benchmarks/auth.py --quick --json benchmarks/results/auth.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# `--compiled` starts one switchd from a scratch copy with the mypyc build: its (spawned)
# interpreter finds the package there first.
sys.path.insert(0, os.environ.get("AUTH_BENCH_PACKAGE_ROOT")
                or str(Path(__file__).resolve().parents[1]))

import uvloop

from passerelle.codecs.framing import LengthPrefixFramer
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile

CONNECTIONS = 48
TARGETS = {"ratio_to_relay": 0.5, "switchd_auth_per_s": 5000, "added_p99_ms": 2.0}
PAN = "4970101234567893"  # Luhn-valid
CONTRACT = "1234567"


def _terminal(n: int) -> str:
    return f"TPE{n:05d}"


def _frames(connection: int, count: int = 1000) -> list[bytes]:
    """Distinct 0100s for one terminal (its own STANs: no MUX key ever repeats in flight)."""
    cb2a = get_profile("cb2a")
    out = []
    for stan in range(1, count + 1):
        payload = encode(cb2a, "0100", {
            2: PAN, 3: "000000", 4: "000000001500", 11: f"{stan:06d}", 12: "163700",
            13: "0124", 14: "3012", 18: "5411", 22: "051", 25: "00", 37: f"{stan:012d}",
            41: _terminal(connection), 42: CONTRACT.ljust(15), 49: "978",
            55: (("9F06", bytes.fromhex("A0000000421010")),
                 ("9F26", bytes.fromhex("93D1A69155ACA8CD"))),
        })
        out.append(len(payload).to_bytes(2, "big") + payload)
    return out


# -- child processes --------------------------------------------------------------------------
def _run_sim(profile: str, ready: Any) -> None:
    from passerelle.sim.acquirer import AcquirerSimulator  # noqa: PLC0415

    async def main() -> None:
        sim = AcquirerSimulator(profile, 2)
        port = await sim.start()
        gc.freeze()  # start-up objects out of every later collection (a test double's CPU)
        ready.send(port)
        await asyncio.Event().wait()

    uvloop.run(main())


async def _start_switchd(acquirer_port: int, freeze: bool) -> int:
    """switchd on this process's loop: the `iso` listener and the authorization dialogue
    towards the simulator at `acquirer_port`; returns the listener's port."""
    from passerelle.config import parse_config  # noqa: PLC0415
    from passerelle.routing.settings import routing_settings  # noqa: PLC0415
    from passerelle.switchd import logs  # noqa: PLC0415
    from passerelle.switchd.authorization import build_services, register  # noqa: PLC0415
    from passerelle.switchd.dispatch import default_registry  # noqa: PLC0415
    from passerelle.switchd.server import Daemon  # noqa: PLC0415

    logs.configure("warning", open(os.devnull, "wb"))  # noqa: SIM115 - lives as long as we do
    routes = Path(tempfile.mkdtemp()) / "routes.toml"
    routes.write_text('[[route]]\nacquirers = ["acq"]\n')
    settings = routing_settings({
        "path": str(routes),
        "acquirers": [{"name": "acq", "host": "127.0.0.1", "port": acquirer_port,
                       "window": 256}],
        "authorization": {"terminals": [{"terminal_id": _terminal(n), "contract": CONTRACT}
                                        for n in range(CONNECTIONS)]},
    })
    registry = default_registry()
    daemon = Daemon(parse_config({
        "listeners": {"iso": {"host": "127.0.0.1", "port": 0, "profile": "cb2a"},
                      "xot": {"enabled": False}, "cbcom": {"enabled": False}},
        "metrics": {"enabled": False}, "logging": {"level": "warning"}}), registry)
    services = build_services(settings, registry=daemon.metrics.registry)
    register(registry, services)
    await services.start(wait_links=5.0)
    await daemon.start()
    if freeze:  # what switchd/main.py would do after start-up (`--gc-freeze`)
        gc.freeze()
    return daemon.listeners["iso"].port


def _run_switchd(acquirer_port: int, freeze: bool, ready: Any) -> None:
    async def main() -> None:
        ready.send(await _start_switchd(acquirer_port, freeze))
        await asyncio.Event().wait()

    uvloop.run(main())


class _Pipe(asyncio.Protocol):
    """One side of the relay: whatever arrives is written to the peer, untouched."""

    def __init__(self, peer: asyncio.Transport | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


def _run_relay(acquirer_port: int, ready: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def accept(terminal: _Pipe) -> None:
            upstream, _ = await loop.create_connection(
                lambda: _Pipe(terminal.transport), "127.0.0.1", acquirer_port)
            terminal.peer = upstream
            for chunk in terminal.early:
                upstream.write(chunk)

        def factory() -> _Pipe:
            pipe = _Pipe()
            loop.call_soon(lambda: loop.create_task(accept(pipe)))
            return pipe

        server = await loop.create_server(factory, "127.0.0.1", 0)
        gc.freeze()
        ready.send(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


def _spawn(target: Callable[..., None], *args: Any, package_root: Path | None = None,
           fresh: bool = False) -> tuple[Any, int]:
    """A child process running `target`; with `package_root` or `fresh`, a fresh interpreter
    (spawn: fork + exec, so `valgrind --trace-children=no` leaves it alone), importing the
    package from `package_root` if given, rather than a fork of this one."""
    parent, child = multiprocessing.Pipe()
    if package_root is None and not fresh:
        process: Any = multiprocessing.Process(target=target, args=(*args, child), daemon=True)
        process.start()
    else:
        if package_root is not None:
            os.environ["AUTH_BENCH_PACKAGE_ROOT"] = str(package_root)
        try:
            process = multiprocessing.get_context("spawn").Process(
                target=target, args=(*args, child), daemon=True)
            process.start()
        finally:
            os.environ.pop("AUTH_BENCH_PACKAGE_ROOT", None)
    if not parent.poll(30):
        process.kill()
        raise RuntimeError(f"{target.__name__} did not start")
    return process, parent.recv()


# -- switchd in this process (--in-process) -------------------------------------------------
def _run_generator(port: int, count: int, ready: Any) -> None:
    """Closed loop on every connection, warmed up, then exactly `count` authorizations once
    told "go"; sends back their rate."""
    FRAMES.extend(_frames(n) for n in range(CONNECTIONS))

    async def main() -> None:
        clients = await _connect(port, CONNECTIONS)
        for _ in range(20):
            for client in clients:
                await client.exchange()
        gc.freeze()
        ready.send("warm")
        await asyncio.get_running_loop().run_in_executor(None, ready.recv)
        left = count

        async def worker(client: _Client) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.exchange()

        started = time.perf_counter()
        async with _phase(count / 50):  # generous: switchd may run under callgrind
            await asyncio.gather(*(worker(client) for client in clients))
        elapsed = time.perf_counter() - started
        _check_approved(clients)
        ready.send(count / elapsed)

    uvloop.run(main())


def _in_process(count: int, freeze: bool) -> dict[str, Any]:
    """switchd in this process, the simulator and the load generator in fresh interpreters:
    this process's CPU and garbage collections for `count` authorizations after a warm-up.
    Under `valgrind --tool=callgrind --trace-children=no`, two counts give switchd's
    instructions per authorization (the difference of the totals over the difference of
    the counts), whatever the machine's load."""
    import resource  # noqa: PLC0415 - Unix only, this mode only

    sim, sim_port = _spawn(_run_sim, "iso93-binary", fresh=True)
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()

    async def received(loop: asyncio.AbstractEventLoop) -> Any:
        """The generator's next message, without a thread (none to count, nor to trace)."""
        future: asyncio.Future[Any] = loop.create_future()

        def readable() -> None:
            loop.remove_reader(parent.fileno())
            future.set_result(parent.recv())

        loop.add_reader(parent.fileno(), readable)
        return await future

    async def measure() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        port = await _start_switchd(sim_port, freeze)
        generator = spawn.Process(target=_run_generator, args=(port, count, child),
                                  daemon=True)
        generator.start()
        try:
            assert await received(loop) == "warm"
            collections = sum(row["collections"] for row in gc.get_stats())
            before = resource.getrusage(resource.RUSAGE_SELF)
            parent.send("go")
            rate = await received(loop)
            after = resource.getrusage(resource.RUSAGE_SELF)
            collections = sum(row["collections"] for row in gc.get_stats()) - collections
        finally:
            generator.kill()
            generator.join(5)
        return {
            "authorizations": count, "auth_per_s": round(rate),
            "switchd_cpu_us_per_auth": round((after.ru_utime + after.ru_stime
                                              - before.ru_utime - before.ru_stime)
                                             / count * 1e6, 1),
            "user_us_per_auth": round((after.ru_utime - before.ru_utime) / count * 1e6, 1),
            "system_us_per_auth": round((after.ru_stime - before.ru_stime) / count * 1e6, 1),
            "gc_collections_per_1000": round(collections * 1000 / count, 1),
        }

    try:
        return uvloop.run(measure())
    finally:
        sim.kill()
        sim.join(5)


# -- load generator ---------------------------------------------------------------------------
class _Client(asyncio.Protocol):
    """One terminal connection: one request in flight at a time (as a CBCOM session is)."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.index = 0
        self.framer = LengthPrefixFramer(2, 8192)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.last = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            self.last = frame
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def exchange(self) -> float:
        """One request and its answer. No timeout per exchange (a timer each would cost the
        shared CPU what a real terminal's own CPU pays): each phase has one (`_phase`)."""
        assert self.transport is not None
        self.waiter = waiter = asyncio.get_running_loop().create_future()
        frame = self.frames[self.index % len(self.frames)]
        self.index += 1
        started = time.perf_counter()
        self.transport.write(frame)
        await waiter
        return time.perf_counter() - started


async def _connect(port: int, count: int) -> list[_Client]:
    loop = asyncio.get_running_loop()
    clients = []
    for n in range(count):
        _, client = await loop.create_connection(lambda n=n: _Client(FRAMES[n]),
                                                 "127.0.0.1", port)
        clients.append(client)
    return clients


async def _throughput(port: int, seconds: float) -> float:
    clients = await _connect(port, CONNECTIONS)
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(client: _Client) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await client.exchange()
            done += 1

    for client in clients[:4]:  # warm up layouts, links, caches
        await client.exchange()
    started = time.perf_counter()
    async with _phase(seconds):
        await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - started
    _check_approved(clients)
    return done / elapsed


@contextlib.asynccontextmanager
async def _phase(seconds: float) -> AsyncIterator[None]:
    """A phase that has not ended 10 s after its planned length lost an answer."""
    try:
        async with asyncio.timeout(seconds + 10):
            yield
    except TimeoutError:
        raise SystemExit("benchmark invalid: an answer never came") from None


def _check_approved(clients: list[_Client]) -> None:
    """Every connection's last answer must be an approval, or the figures mean nothing."""
    cb2a = get_profile("cb2a")
    for client in clients:
        code = Message.parse(client.last, cb2a).get(39)
        if code != "00":
            raise SystemExit(f"benchmark invalid: an answer carried 39={code}")
        assert client.transport is not None
        client.transport.close()


async def _paced(port: int, rate: float, seconds: float) -> list[float]:
    """Open loop: one request every 1/rate s on the next idle connection; latencies in s."""
    clients = await _connect(port, 16)
    for client in clients:
        await client.exchange()
    idle = list(clients)
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(client: _Client) -> None:
        latencies.append(await client.exchange())
        idle.append(client)

    interval = 1.0 / rate
    started = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - started < seconds:
        due = started + sent * interval
        if now < due:
            await asyncio.sleep(due - now)
            continue
        sent += 1
        if idle:
            task = asyncio.create_task(one(idle.pop()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    async with _phase(0):
        await asyncio.gather(*tasks)
    _check_approved(clients)
    return latencies


def _build_compiled() -> Path:
    """A scratch copy of the package with setup.py's hot modules compiled by mypyc, as
    `benchmarks/echo.py --compiled` builds it (nothing in the tree changes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from echo import build_compiled  # noqa: PLC0415 - only with --compiled

    return build_compiled(Path(tempfile.mkdtemp(prefix="auth-mypyc-")))


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


FRAMES: list[list[bytes]] = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--compiled", action="store_true",
                        help="also measure a switchd running setup.py's mypyc build (built "
                             "into a scratch copy; needs mypy), after the pure-Python figures")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() in switchd after start-up too (the simulators, the "
                             "relay and the load generator always do)")
    parser.add_argument("--in-process", type=int, metavar="N",
                        help="only switchd's own cost: N authorizations through a switchd in "
                             "this process (simulator and load generator in fresh "
                             "interpreters), its CPU per authorization; run twice under "
                             "callgrind for instructions per authorization (README-auth)")
    args = parser.parse_args()
    if args.in_process:
        report = {"benchmark": "auth-in-process", "switchd_gc_freeze": args.gc_freeze,
                  "when": datetime.now(UTC).isoformat(timespec="seconds"),
                  "load_average": os.getloadavg()[0],
                  "figures": _in_process(args.in_process, args.gc_freeze)}
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    seconds = 4.0 if args.quick else 15.0
    FRAMES.extend(_frames(n) for n in range(CONNECTIONS))
    processes = []
    try:
        sim93, port93 = _spawn(_run_sim, "iso93-binary")
        simcb, portcb = _spawn(_run_sim, "cb2a")
        switchd, switchd_port = _spawn(_run_switchd, port93, args.gc_freeze)
        relay, relay_port = _spawn(_run_relay, portcb)
        processes = [sim93, simcb, switchd, relay]
        compiled: Any = None
        if args.compiled:
            compiled, compiled_port = _spawn(_run_switchd, port93, args.gc_freeze,
                                             package_root=_build_compiled())
            processes.append(compiled)
            if "__mypyc" not in Path(f"/proc/{compiled.pid}/maps").read_text():
                raise SystemExit("the compiled switchd did not load the mypyc build")

        async def measure() -> dict[str, Any]:
            pids = {"relay": relay.pid, "sim_cb2a": simcb.pid, "switchd": switchd.pid,
                    "sim_iso93": sim93.pid, "generator": os.getpid()}
            before = {name: _cpu(pid) for name, pid in pids.items()}
            relay_rate = await _throughput(relay_port, seconds)
            middle = {name: _cpu(pid) for name, pid in pids.items()}
            switchd_rate = await _throughput(switchd_port, seconds)
            after = {name: _cpu(pid) for name, pid in pids.items()}
            relay_n, switchd_n = relay_rate * seconds, switchd_rate * seconds
            cpu = {
                "relay": {name: (middle[name] - before[name]) / relay_n
                          for name in ("relay", "sim_cb2a", "generator")},
                "switchd": {name: (after[name] - middle[name]) / switchd_n
                            for name in ("switchd", "sim_iso93", "generator")},
            }
            direct = await _paced(portcb, 1000, seconds)
            relayed = await _paced(relay_port, 1000, seconds)
            through = await _paced(switchd_port, 1000, seconds)
            result = {"relay": relay_rate, "switchd": switchd_rate, "direct": direct,
                      "through": through, "relayed": relayed, "cpu": cpu}
            if compiled is not None:
                before_compiled = _cpu(compiled.pid)
                result["compiled"] = await _throughput(compiled_port, seconds)
                result["compiled_cpu"] = (_cpu(compiled.pid) - before_compiled) / (
                    result["compiled"] * seconds)
                result["compiled_paced"] = await _paced(compiled_port, 1000, seconds)
            return result

        gc.freeze()  # after the fork: the children start with nothing frozen
        raw = uvloop.run(measure())
    finally:
        for process in processes:
            process.kill()
            process.join(5)
    ms = 1000.0
    figures = {
        "relay_auth_per_s": round(raw["relay"]),
        "switchd_auth_per_s": round(raw["switchd"]),
        "ratio_to_relay": round(raw["switchd"] / raw["relay"], 3),
        # CPU time of the process under test per authorization: what the machine's other
        # load does not change (the throughput figures above depend on it).
        "relay_cpu_us_per_auth": round(raw["cpu"]["relay"]["relay"] * 1e6, 1),
        "switchd_cpu_us_per_auth": round(raw["cpu"]["switchd"]["switchd"] * 1e6, 1),
        # Everyone's CPU per authorization in each closed-loop phase: the machine's two
        # cores are shared by the load generator, the simulator and the process under test.
        "cpu_us_per_auth": {phase: {name: round(value * 1e6, 1) for name, value in row.items()}
                            for phase, row in raw["cpu"].items()},
        "paced_rate": 1000,
        "paced_requests": len(raw["through"]),
        "direct_p50_ms": round(_pct(raw["direct"], 0.5) * ms, 3),
        "direct_p99_ms": round(_pct(raw["direct"], 0.99) * ms, 3),
        "relay_p50_ms": round(_pct(raw["relayed"], 0.5) * ms, 3),
        "relay_p99_ms": round(_pct(raw["relayed"], 0.99) * ms, 3),
        "switchd_p50_ms": round(_pct(raw["through"], 0.5) * ms, 3),
        "switchd_p99_ms": round(_pct(raw["through"], 0.99) * ms, 3),
    }
    figures["added_p50_ms"] = round(figures["switchd_p50_ms"] - figures["direct_p50_ms"], 3)
    figures["added_p99_ms"] = round(figures["switchd_p99_ms"] - figures["direct_p99_ms"], 3)
    if args.compiled:
        figures["mypyc"] = {
            "switchd_auth_per_s": round(raw["compiled"]),
            "ratio_to_relay": round(raw["compiled"] / raw["relay"], 3),
            "switchd_cpu_us_per_auth": round(raw["compiled_cpu"] * 1e6, 1),
            "added_p50_ms": round((_pct(raw["compiled_paced"], 0.5) -
                                   _pct(raw["direct"], 0.5)) * ms, 3),
            "added_p99_ms": round((_pct(raw["compiled_paced"], 0.99) -
                                   _pct(raw["direct"], 0.99)) * ms, 3),
        }
    figures["mean_added_ms"] = round(
        (statistics.fmean(raw["through"]) - statistics.fmean(raw["direct"])) * ms, 3)
    met = {
        "ratio_to_relay": figures["ratio_to_relay"] >= TARGETS["ratio_to_relay"],
        "switchd_auth_per_s": figures["switchd_auth_per_s"] >= TARGETS["switchd_auth_per_s"],
        "added_p99_ms": figures["added_p99_ms"] <= TARGETS["added_p99_ms"],
    }
    report = {
        "benchmark": "auth", "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "load_average": [round(value, 2) for value in os.getloadavg()]},
        "quick": args.quick, "seconds_per_phase": seconds, "connections": CONNECTIONS,
        "switchd_gc_freeze": args.gc_freeze,
        "figures": figures, "targets": TARGETS, "met": met,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
