"""Memory per idle CBCOM session: N terminals connected to one switchd, each with its CBCOM
pseudo-session open (CN -> AC), doing nothing.

switchd runs as a child process (the real entry point); its resident set size is read from
/proc before and after the sessions open, and the difference divided by N. The terminals
are plain asyncio protocols in this process (they are not measured).

    .venv/bin/python benchmarks/sessions.py [--quick] [--sessions N] [--json PATH]

Target: <= 30 KiB per session at 10,000 sessions (--quick: 2,000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from passerelle.codecs import cbcom
from passerelle.codecs.framing import frame4
from passerelle.switchd.process import SwitchdProcess

TARGET_KIB = 30.0
CN = frame4(cbcom.connect().encode())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class IdleTerminal(asyncio.Protocol):
    """Sends CN, waits for the AC, then stays silent."""

    def __init__(self, accepted: asyncio.Future[None]) -> None:
        self.accepted = accepted
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(CN)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= 4 and not self.accepted.done():
            size = int.from_bytes(self.buffer[:4], "big")
            if len(self.buffer) >= 4 + size:
                ok = self.buffer[4] == cbcom.AC
                if ok:
                    self.accepted.set_result(None)
                else:
                    self.accepted.set_exception(RuntimeError("no AC"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.accepted.done():
            self.accepted.set_exception(ConnectionError("closed before AC"))


async def open_sessions(port: int, count: int, batch: int = 250) -> list[asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    for start in range(0, count, batch):
        futures = []
        for _ in range(min(batch, count - start)):
            accepted: asyncio.Future[None] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda a=accepted: IdleTerminal(a), "127.0.0.1", port)
            transports.append(transport)
            futures.append(accepted)
        await asyncio.gather(*futures)
    return transports


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        sys.exit(f"RLIMIT_NOFILE is {soft}, {needed} needed: raise the hard limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 sessions (< 1 minute)")
    parser.add_argument("--sessions", type=int, help="number of sessions (default 10,000)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    count = args.sessions or (2000 if args.quick else 10_000)
    raise_fd_limit(count + 200)  # switchd inherits it
    settings: dict[str, Any] = {
        "listeners": {"cbcom": {"host": "127.0.0.1", "port": 0, "max_connections": count + 10},
                      "xot": {"enabled": False}, "iso": {"enabled": False}},
        "metrics": {"enabled": False}, "logging": {"level": "info"},
    }
    with tempfile.TemporaryDirectory() as workdir, \
            SwitchdProcess(settings, Path(workdir)) as switchd:

        async def measure() -> dict[str, Any]:
            port = switchd.port("cbcom")
            warm = await open_sessions(port, 50)  # load every code path before the baseline
            for transport in warm:
                transport.close()
            await asyncio.sleep(0.5)  # let switchd close them: a settling time, not a sync
            before = rss_kib(switchd.pid)
            started = time.perf_counter()
            transports = await open_sessions(port, count)
            opened_in = time.perf_counter() - started
            await asyncio.sleep(1.0)  # allocator settling before reading RSS
            after = rss_kib(switchd.pid)
            for transport in transports:
                transport.close()
            per_session = (after - before) / count
            return {
                "benchmark": "sessions", "sessions": count, "quick": args.quick,
                "rss_before_kib": before, "rss_after_kib": after,
                "per_session_kib": round(per_session, 2), "target_kib": TARGET_KIB,
                "meets_target": per_session <= TARGET_KIB,
                "open_rate_per_s": round(count / opened_in),
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "python": platform.python_version(),
            }

        result = uvloop.run(measure())
    print(f"{result['sessions']} idle CBCOM sessions: switchd RSS {result['rss_before_kib']} -> "
          f"{result['rss_after_kib']} KiB, {result['per_session_kib']} KiB per session "
          f"(target <= {TARGET_KIB}), opened at {result['open_rate_per_s']}/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
