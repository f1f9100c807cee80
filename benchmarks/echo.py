"""Echo dialogues per second through switchd over CBCOM, as a ratio to a bare echo server.

Both servers run as child processes on uvloop and are driven, in the same run, by the same
load generator (C connections, each sending one 4-byte-length-prefixed frame and waiting
for the answer before the next):

* switchd (cbcom listener): the frame is a CBCOM DE carrying a CB2A 0800 echo; switchd
  unframes it, runs the CBCOM session, parses the CB2A message, dispatches it by MTI, builds
  the 0810 and sends it back in a DE. Each connection opens its CBCOM session (CN -> AC)
  before the clock starts. Logging at its production level (info).
* bare: a uvloop protocol that returns each length-prefixed frame as it came: the floor of
  what any Python server on this loop can do with this load generator.

    .venv/bin/python benchmarks/echo.py [--quick] [--compiled] [--connections C] [--seconds S]
                                        [--json PATH]

`--compiled` adds a third server: switchd with the hot modules setup.py compiles when
PASSERELLE_MYPYC=1 (built with mypyc into a scratch copy of the package, nothing in the tree
changes), measured in the same rounds as the other two.

Target: switchd >= 0.5 x the bare server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop

from passerelle.codecs import cbcom
from passerelle.codecs.framing import frame4
from passerelle.sim.terminal import echo_request
from passerelle.switchd.process import SwitchdProcess

TARGET_RATIO = 0.5
ROOT = Path(__file__).resolve().parents[1]
CN = frame4(cbcom.connect().encode())
DE = frame4(cbcom.data(echo_request(1)).encode())


# -- the bare server (run as `echo.py --bare`, prints its port) ---------------------------

class BareEcho(asyncio.Protocol):
    """Length-prefixed echo: the least a server can do per frame."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 4:
            end = 4 + int.from_bytes(buffer[:4], "big")
            if len(buffer) < end:
                break
            self.transport.write(bytes(buffer[:end]))  # type: ignore[attr-defined]
            del buffer[:end]


async def serve_bare() -> None:
    server = await asyncio.get_running_loop().create_server(BareEcho, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    # The parent ends us by closing our standard input.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the load generator -------------------------------------------------------------------

class Pinger(asyncio.Protocol):
    """One connection of the load generator: `handshake` once, then `frame` ping-pong."""

    def __init__(self, frame: bytes, handshake: bytes | None, ready: asyncio.Future[None]
                 ) -> None:
        self.frame = frame
        self.handshake = handshake
        self.ready = ready
        self.buffer = bytearray()
        self.count = 0
        self.running = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.handshake:
            transport.write(self.handshake)  # type: ignore[attr-defined]
        else:
            self.ready.set_result(None)

    def go(self) -> None:
        self.running = True
        self.transport.write(self.frame)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 4:
            end = 4 + int.from_bytes(buffer[:4], "big")
            if len(buffer) < end:
                break
            del buffer[:end]
            if not self.ready.done():
                self.ready.set_result(None)  # the AC
            elif self.running:
                self.count += 1
                self.transport.write(self.frame)  # type: ignore[attr-defined]


async def drive(port: int, frame: bytes, handshake: bytes | None, *, connections: int,
                seconds: float, server_pid: int) -> tuple[float, float]:
    """(answers per second, server CPU µs per answer) over `seconds`, with `connections`
    ping-pong connections."""
    loop = asyncio.get_running_loop()
    pingers = []
    for _ in range(connections):
        ready: asyncio.Future[None] = loop.create_future()
        _, pinger = await loop.create_connection(
            lambda r=ready: Pinger(frame, handshake, r), "127.0.0.1", port)
        await ready
        pingers.append(pinger)
    started, cpu_before = time.perf_counter(), cpu_seconds(server_pid)
    for pinger in pingers:
        pinger.go()
    await asyncio.sleep(seconds)  # the measurement window
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server_pid) - cpu_before
    total = sum(p.count for p in pingers)
    for pinger in pingers:
        pinger.running = False
        pinger.transport.close()
    return total / elapsed, cpu / max(total, 1) * 1e6


def compiled_modules() -> tuple[str, ...]:
    """The modules setup.py compiles (importing it builds nothing)."""
    spec = importlib.util.spec_from_file_location("passerelle_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    return tuple(setup.COMPILED_MODULES)


def build_compiled(scratch: Path) -> Path:
    """A copy of the package in `scratch` with setup.py's hot modules compiled by mypyc."""
    shutil.copytree(ROOT / "passerelle", scratch / "passerelle",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    subprocess.run([sys.executable, "-m", "mypyc", *compiled_modules()], cwd=scratch,
                   check=True, stdout=subprocess.DEVNULL)
    return scratch


@contextlib.contextmanager
def compiled_switchd(settings: dict[str, Any], workdir: Path) -> Iterator[SwitchdProcess]:
    """switchd running the compiled build: its `-c` entry point puts the working directory
    first on sys.path, so it starts from inside the scratch copy."""
    scratch = build_compiled(workdir / "compiled")
    here = Path.cwd()
    os.chdir(scratch)
    try:
        process = SwitchdProcess(settings, workdir, env={"PYTHONPATH": str(scratch)})
        process.start()
    finally:
        os.chdir(here)
    try:
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        if "__mypyc" not in maps:
            raise RuntimeError("the compiled switchd did not load the mypyc build")
        yield process
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per server (< 1 minute)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, help="measurement window per server")
    parser.add_argument("--rounds", type=int, help="alternate the servers this many times")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--compiled", action="store_true",
                        help="also measure switchd with its mypyc-compiled build (needs mypy)")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        uvloop.run(serve_bare())
        return
    seconds = args.seconds or (4.0 if args.quick else 15.0)
    rounds = args.rounds or (2 if args.quick else 3)
    bare = subprocess.Popen(  # this very script
        [sys.executable, __file__, "--bare"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    settings = {"listeners": {"cbcom": {"host": "127.0.0.1", "port": 0},
                              "xot": {"enabled": False}, "iso": {"enabled": False}},
                "metrics": {"enabled": False}, "logging": {"level": "info"}}
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        assert bare.stdout is not None
        bare_port = int(bare.stdout.readline())
        with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
            switchd = stack.enter_context(SwitchdProcess(settings, Path(workdir)))
            servers = [("bare", bare_port, None, bare.pid),
                       ("switchd", switchd.port("cbcom"), CN, switchd.pid)]
            if args.compiled:
                run_dir = Path(workdir) / "mypyc"
                run_dir.mkdir()
                fast = stack.enter_context(compiled_switchd(settings, run_dir))
                servers.append(("switchd_mypyc", fast.port("cbcom"), CN, fast.pid))
            # Alternate the servers, so that noise from the shared machine hits all alike.
            for _ in range(rounds):
                for name, port, handshake, pid in servers:
                    rate, cpu_us = uvloop.run(drive(
                        port, DE, handshake, connections=args.connections, seconds=seconds,
                        server_pid=pid))
                    rates.setdefault(name, []).append(rate)
                    cpu.setdefault(name, []).append(cpu_us)
    finally:
        if bare.stdin is not None:
            bare.stdin.close()
        bare.wait(10)
    bare_rate, switchd_rate = max(rates["bare"]), max(rates["switchd"])
    ratio = switchd_rate / bare_rate
    result: dict[str, Any] = {
        "benchmark": "echo", "quick": args.quick, "connections": args.connections,
        "seconds_per_round": seconds, "rounds": rounds,
        "bare_per_s": round(bare_rate), "switchd_per_s": round(switchd_rate),
        "all_rounds": {name: [round(r) for r in values] for name, values in rates.items()},
        # Server CPU time per answer (from /proc): what each server costs, whatever the
        # load generator and the other tenants of the machine do.
        "bare_cpu_us_per_answer": round(min(cpu["bare"]), 1),
        "switchd_cpu_us_per_answer": round(min(cpu["switchd"]), 1),
        "load_average": os.getloadavg()[0],
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "machine": platform.machine(), "python": platform.python_version(),
    }
    print(f"echo over CBCOM: switchd {result['switchd_per_s']}/s, bare uvloop echo "
          f"{result['bare_per_s']}/s, ratio {result['ratio']} (target >= {TARGET_RATIO}); "
          f"{args.connections} connections, best of {rounds} x {seconds} s; server CPU per "
          f"answer: switchd {result['switchd_cpu_us_per_answer']} µs, bare "
          f"{result['bare_cpu_us_per_answer']} µs; load average {result['load_average']}")
    if args.compiled:
        compiled_rate = max(rates["switchd_mypyc"])
        result.update({
            "switchd_mypyc_per_s": round(compiled_rate),
            "switchd_mypyc_cpu_us_per_answer": round(min(cpu["switchd_mypyc"]), 1),
            "ratio_mypyc": round(compiled_rate / bare_rate, 3),
        })
        print(f"  compiled (mypyc) switchd {result['switchd_mypyc_per_s']}/s, ratio "
              f"{result['ratio_mypyc']}; server CPU per answer "
              f"{result['switchd_mypyc_cpu_us_per_answer']} µs")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
