"""Télécollecte benchmark: transactions stored per second through the whole path.

Many simulated terminals at once dial switchd (the real daemon, `passerelle.switchd.gateway`
in a child process) over CBCOM, sign on, send their files (0306, 0246 with a 0256 per
window, 0506) and wait for each 0516 — which switchd sends only after the remise is
committed. The rate is transactions acknowledged per second, from the first connection to
the last 0516. It is compared, in the same run and on the same table, with:

* raw COPY: the very same rows, already built, one COPY per worker, nothing else;
* row-by-row INSERT: the same rows, one INSERT each, one transaction per remise;
* the remise writer alone (no terminals, no dialogue), to show what the path adds
  (all three from `benchmarks/ingest.py`, so the two benchmarks share one baseline).

The terminals' messages are encoded before the clock starts, down to the framed CBCOM IPDUs
on the TCP stream, and the terminals do nothing else while it runs (write, read the answers):
a real terminal spends its own CPU, not the gateway's, and this process shares the machine
with switchd and PostgreSQL. A window of 0246 goes out in one write (`--write-per-message`:
one write each), on uvloop as switchd; the CPU of each party per transaction is reported
beside the rates.

    .venv/bin/python benchmarks/ingest_telecollecte.py --quick --json \
        benchmarks/results/ingest_telecollecte.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import structlog
import uvloop
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import echo  # noqa: E402 - benchmarks/echo.py: the mypyc build of switchd (--compiled)
import ingest  # noqa: E402 - benchmarks/ingest.py: the shared COPY/INSERT baselines

from passerelle.codecs import cbcom  # noqa: E402
from passerelle.codecs.cbcom import PROTOCOL_TRANSFER, ProtocolId  # noqa: E402
from passerelle.sim.pki import make_pki  # noqa: E402
from passerelle.sim.telecollecte import (  # noqa: E402
    Batch,
    answer_code,
    end_message,
    generate_batches,
    header_message,
    sign_on_message,
    transaction_message,
)
from passerelle.storage.migrate import migrate  # noqa: E402
from passerelle.storage.pan import PanHmacKey, mask_pan, pan_hmac  # noqa: E402
from passerelle.storage.remises import (  # noqa: E402
    Remise,
    RemiseTransaction,
    compute_totals,
)
from passerelle.switchd.process import SwitchdProcess  # noqa: E402
from tests.integration.storage_helpers import setup_fleet  # noqa: E402
from tests.integration.telecollecte_helpers import (  # noqa: E402
    PAN_KEY_HEX,
    settings_dict,
)

TARGET_RATIO_TO_COPY = 0.6
WINDOW = 32
SESSION_TIMEOUT = 600.0


@dataclass
class Script:
    """One terminal's session, encoded in advance down to the TCP stream: each CB2A message
    in its CBCOM DE, behind its 4-byte length. `files`: per file, the 0306, the 0246s
    grouped by window (one write each, or one per message with `--write-per-message`), and
    the 0506."""

    sign_on: bytes
    files: list[tuple[bytes, list[list[bytes]], bytes]]


def _frame(apdu: bytes) -> bytes:
    ipdu = cbcom.encode_data(apdu)
    return len(ipdu).to_bytes(4, "big") + ipdu


_CONNECT = cbcom.connect(ProtocolId(protocol_type=PROTOCOL_TRANSFER)).encode()
_CONNECT_FRAME = len(_CONNECT).to_bytes(4, "big") + _CONNECT
_END = cbcom.abort(cbcom.CODE_NORMAL_END).encode()
_END_FRAME = len(_END).to_bytes(4, "big") + _END


def _scripts(fleet: list[list[Batch]]) -> list[Script]:
    scripts = []
    for batches in fleet:
        files = []
        for batch in batches:
            frames = [_frame(transaction_message(batch, n, tx))
                      for n, tx in enumerate(batch.transactions, 1)]
            files.append((_frame(header_message(batch, WINDOW)),
                          [frames[i : i + WINDOW] for i in range(0, len(frames), WINDOW)],
                          _frame(end_message(batch))))
        scripts.append(Script(_frame(sign_on_message(batches[0].terminal,
                                                     batches[0].contract)), files))
    return scripts


class _Terminal(asyncio.Protocol):
    """A terminal reduced to its wire, so that the benchmark process spends little CPU per
    message (a real terminal spends its own): it writes IPDUs framed in advance and cuts
    what comes back into IPDUs, nothing more. The CBCOM CN/AC and AB are real; answers are
    parsed as CB2A only where the script reads them (the 0516's response code)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._ipdus: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            end = 4 + int.from_bytes(buffer[:4], "big")
            if len(buffer) < end:
                break
            self._ipdus.append(bytes(buffer[4:end]))
            del buffer[:end]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionError("switchd closed the connection")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def ipdu(self) -> bytes:
        while not self._ipdus:
            if self._lost is not None:
                raise self._lost
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._ipdus.popleft()

    async def answer(self) -> bytes:
        """The next CB2A answer (the APDU of a DE); an AB or anything else ends the run."""
        ipdu = cbcom.decode(await self.ipdu())
        if ipdu.pgi != cbcom.DE:
            raise SystemExit(f"switchd sent a CBCOM {ipdu.name} where a DE was expected")
        return ipdu.apdu


async def _terminal(port: int, script: Script, per_message: bool) -> int:
    """Play one session; the number of transactions acknowledged by 0516 = 00. One time
    limit for the whole session, not a timer per answer."""
    acknowledged = 0
    _, tpe = await asyncio.get_running_loop().create_connection(
        _Terminal, "127.0.0.1", port)
    try:
        async with asyncio.timeout(SESSION_TIMEOUT):
            tpe.write(_CONNECT_FRAME)
            if (await tpe.ipdu())[0] != cbcom.AC:
                raise SystemExit("switchd did not accept the CBCOM connection")
            tpe.write(script.sign_on)
            await tpe.answer()
            for header, windows, end in script.files:
                tpe.write(header)
                await tpe.answer()
                for window in windows:
                    if per_message:
                        for frame in window:
                            tpe.write(frame)
                    else:
                        tpe.write(b"".join(window))
                    await tpe.answer()  # the 0256 of the window
                tpe.write(end)
                if answer_code(await tpe.answer())[1] == "00":
                    acknowledged += sum(len(window) for window in windows)
            tpe.write(_END_FRAME)
    finally:
        assert tpe.transport is not None
        tpe.transport.close()
    return acknowledged


async def _telecollecte(ports: list[int], scripts: list[Script],
                        per_message: bool) -> tuple[float, int]:
    start = time.perf_counter()
    counts = await asyncio.gather(*(_terminal(ports[n % len(ports)], s, per_message)
                                    for n, s in enumerate(scripts)))
    return time.perf_counter() - start, sum(counts)


def _remises(fleet: list[list[Batch]]) -> list[Remise]:
    """The same remises as the writer sees them, for the COPY and INSERT baselines."""
    key = PanHmacKey.from_hex(1, PAN_KEY_HEX)
    now = datetime.now(UTC)
    out = []
    for batches in fleet:
        for batch in batches:
            txs = [RemiseTransaction(
                seq=n, at=tx.at, operation=tx.operation,
                result="approved" if tx.approved else "declined", amount=tx.amount,
                currency=batch.currency, pan_masked=mask_pan(tx.pan),
                pan_hmac=pan_hmac(key, tx.pan)[0], pan_hmac_key_version=1, expiry=tx.expiry,
                response_code=tx.response_code, authorization_number=tx.authorization_number,
                issuer=tx.issuer, product=tx.product, rrn=tx.rrn, stan=f"{tx.stan:06d}",
                aid=tx.aid) for n, tx in enumerate(batch.transactions, 1)]
            out.append(Remise(batch.terminal, batch.contract, batch.application,
                              batch.remise_number, batch.file_number, batch.currency, now,
                              compute_totals(txs), txs))
    return out


def _fleet(terminals: int, files: int, per_file: int, round_: int) -> list[list[Batch]]:
    """Files of uneven size (half to one and a half `per_file`), as real days are: terminals
    then reach their 0506 at different times, as they do in the field."""
    rng = random.Random(round_)
    fleet = []
    for t in range(terminals):
        batches = generate_batches(rng, f"TPE{t:04d}", "1234567", "CBEMV", days=files,
                                   per_day=(per_file // 2, per_file * 3 // 2),
                                   first_remise=1 + round_ * files)
        fleet.append(batches)
    return fleet


def _cpu(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def _busy(times: Any) -> float:
    """Machine-wide CPU seconds not idle (all cores)."""
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _backend_cpu(dsn: str, before: dict[int, float]) -> dict[int, float]:
    """CPU seconds of the scratch database's backends (other than this query's), minus
    what they had used at `before`; a backend that ended meanwhile is not counted."""
    with psycopg.connect(dsn) as conn:
        pids = [pid for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")]
    out = {}
    for pid in pids:
        try:
            out[pid] = _cpu([psutil.Process(pid)]) - before.get(pid, 0.0)
        except psutil.Error:
            continue
    return out


def _pool_ready(dsn: str, connections: int, timeout: float = 30.0) -> None:
    """Wait until switchd's pools hold `connections` connections to the scratch database."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchone()
            if row is not None and row[0] >= connections:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"switchd opened {row} of {connections} connections")
            time.sleep(0.05)


def _node_settings(dsn: str, workdir: Path, workers: int) -> dict[str, Any]:
    settings = settings_dict(dsn, workdir / "state", make_pki(workdir / "pki"),
                             max_window=WINDOW)
    settings["listeners"]["xot"]["enabled"] = False
    settings["listeners"]["cbcom-tls"]["enabled"] = False
    # A full pool from the start, as a switchd that has been up for a while has: the
    # baselines too open their connections before their clocks start (see `_pool_ready`).
    settings["storage"]["pool_min_size"] = settings["storage"]["pool_max_size"] = workers
    settings["logging"] = {"level": "info"}
    return settings


def _start(settings: dict[str, Any], node_dir: Path, compiled: Path | None) -> SwitchdProcess:
    """switchd, from `compiled` (a scratch copy with setup.py's mypyc build) when given:
    its `-c` entry point puts the working directory first on sys.path."""
    if compiled is None:
        return SwitchdProcess(settings, node_dir, ready_timeout=60).start()
    here = Path.cwd()
    os.chdir(compiled)
    try:
        process = SwitchdProcess(settings, node_dir, env={"PYTHONPATH": str(compiled)},
                                 ready_timeout=60).start()
    finally:
        os.chdir(here)
    if "__mypyc" not in Path(f"/proc/{process.pid}/maps").read_text():
        process.stop()
        raise SystemExit("the compiled switchd did not load the mypyc build")
    return process


def _run(dsn: str, workdir: Path, *, terminals: int, files: int, per_file: int,
         rounds: int, workers: int, nodes: int, per_message: bool,
         compiled: Path | None) -> dict[str, object]:
    # Each node its own state directory (spool); together as many connections as baselines.
    node_dirs = [workdir / f"node{n}" for n in range(nodes)]
    for node_dir in node_dirs:
        node_dir.mkdir()
    settings = [_node_settings(dsn, d, max(1, workers // nodes)) for d in node_dirs]
    rates: dict[str, list[float]] = {"telecollecte": [], "writer": [], "copy": [],
                                     "insert": []}
    # CPU seconds per transaction, whatever else the machine runs: switchd, the terminals
    # (this process), the PostgreSQL backends of the scratch database, the whole machine.
    cpu: list[float] = []
    terminals_cpu: list[float] = []
    postgres_cpu: list[float] = []
    machine_busy: list[float] = []
    # Remises that went to the spool journal instead of straight to PostgreSQL (a pool
    # timeout under load, say): replayed later, so the run then measures something else.
    spooled = 0
    for round_ in range(rounds):
        fleet = _fleet(terminals, files, per_file, round_)
        total = sum(len(b.transactions) for batches in fleet for b in batches)
        scripts = _scripts(fleet)
        asyncio.run(ingest._truncate(dsn))
        gateways: list[SwitchdProcess] = []
        try:
            for node_settings, node_dir in zip(settings, node_dirs, strict=True):
                gateways.append(_start(node_settings, node_dir, compiled))
            _pool_ready(dsn, sum(n["storage"]["pool_max_size"] for n in settings))
            processes = [psutil.Process(g.proc.pid) for g in gateways if g.proc is not None]
            cpu_before = _cpu(processes)
            backends_before = _backend_cpu(dsn, {})
            own_before, machine_before = os.times(), psutil.cpu_times()
            elapsed, acknowledged = uvloop.run(_telecollecte(
                [g.port("cbcom") for g in gateways], scripts, per_message))
            own, machine = os.times(), psutil.cpu_times()
            backends = _backend_cpu(dsn, backends_before)
            per = 1 / max(acknowledged, 1)
            cpu.append((_cpu(processes) - cpu_before) * per)
            terminals_cpu.append((own.user + own.system - own_before.user
                                  - own_before.system) * per)
            postgres_cpu.append(sum(backends.values()) * per)
            machine_busy.append((_busy(machine) - _busy(machine_before)) * per)
        finally:
            for gateway in gateways:
                gateway.stop()
                spooled += len(gateway.find("spool.remise_spooled"))
        if acknowledged != total:
            raise SystemExit(f"only {acknowledged} of {total} transactions acknowledged")
        with psycopg.connect(dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM transactions").fetchone()
        if stored != (total,):
            raise SystemExit(f"{stored} transactions stored, {total} expected")
        rates["telecollecte"].append(total / elapsed)
        remises = _remises(fleet)
        rows = ingest._rows(remises)
        asyncio.run(ingest._truncate(dsn))
        rates["writer"].append(total / asyncio.run(ingest._writer(dsn, remises, workers)))
        asyncio.run(ingest._truncate(dsn))
        rates["copy"].append(total / asyncio.run(ingest._raw_copy(dsn, rows, workers)))
        asyncio.run(ingest._truncate(dsn))
        rates["insert"].append(total / asyncio.run(ingest._row_by_row(
            dsn, rows, per_file, workers)))
    per_round = [t / c for t, c in zip(rates["telecollecte"], rates["copy"], strict=True)]
    to_copy = statistics.median(per_round)
    to_insert = statistics.median(t / i for t, i in zip(rates["telecollecte"], rates["insert"],
                                                          strict=True))
    return {
        "path": "terminals -> CBCOM/TCP -> switchd (child process, with [storage]) -> "
                "dialogue -> RemiseSink -> RemiseWriter (COPY, one transaction per remise)",
        "switchd_nodes": nodes,
        "switchd_build": "mypyc (setup.py's compiled modules)" if compiled else "pure Python",
        "terminals": terminals,
        "files_per_terminal": files,
        "transactions_per_file": f"{per_file // 2}..{per_file * 3 // 2}",
        "window": WINDOW,
        "terminal_writes": "one per message" if per_message else "one per window",
        "transactions_last_round": total,
        "rounds": rounds,
        "baseline_workers": workers,
        "telecollecte_rows_per_s": round(statistics.median(rates["telecollecte"])),
        "writer_alone_rows_per_s": round(statistics.median(rates["writer"])),
        "raw_copy_rows_per_s": round(statistics.median(rates["copy"])),
        "row_by_row_insert_rows_per_s": round(statistics.median(rates["insert"])),
        "switchd_cpu_us_per_transaction": round(statistics.median(cpu) * 1e6, 1),
        "terminals_cpu_us_per_transaction": round(statistics.median(terminals_cpu) * 1e6, 1),
        "postgres_cpu_us_per_transaction": round(statistics.median(postgres_cpu) * 1e6, 1),
        "machine_busy_us_per_transaction": round(statistics.median(machine_busy) * 1e6, 1),
        "remises_spooled": spooled,
        "ratio_to_raw_copy": round(to_copy, 3),
        "ratio_to_row_by_row_insert": round(to_insert, 2),
        "ratio_to_writer_alone": round(statistics.median(
            t / w for t, w in zip(rates["telecollecte"], rates["writer"], strict=True)), 3),
        "writer_alone_ratio_to_raw_copy": round(statistics.median(
            w / c for w, c in zip(rates["writer"], rates["copy"], strict=True)), 3),
        "ratio_to_raw_copy_per_round": [round(r, 3) for r in per_round],
        "target_ratio_to_raw_copy": TARGET_RATIO_TO_COPY,
        "meets_target": to_copy >= TARGET_RATIO_TO_COPY,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--json", metavar="PATH", help="write the figures as one JSON object")
    parser.add_argument("--dsn", default=os.environ.get("PASSERELLE_DSN"),
                        help="server DSN (a scratch database is created and dropped)")
    parser.add_argument("--terminals", type=int, help="terminals dialling at once")
    parser.add_argument("--files", type=int, help="files (remises) per terminal")
    parser.add_argument("--transactions", type=int, help="transactions per file")
    parser.add_argument("--rounds", type=int, help="rounds of the three methods")
    parser.add_argument("--nodes", type=int, default=1,
                        help="switchd processes sharing the terminals (scale-out)")
    parser.add_argument("--write-per-message", action="store_true",
                        help="terminals write each message on its own (default: a window "
                        "of messages in one write, as a terminal's send buffer would)")
    parser.add_argument("--compiled", action="store_true",
                        help="run switchd from setup.py's mypyc build (needs mypy; built into "
                        "a scratch copy, as benchmarks/echo.py --compiled)")
    parser.add_argument("--workers", type=int, default=8,
                        help="pool size of switchd, and COPY/INSERT workers of the baselines")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    terminals = args.terminals or (20 if args.quick else 50)
    files = args.files or (4 if args.quick else 6)
    per_file = args.transactions or (100 if args.quick else 200)
    rounds = args.rounds or (2 if args.quick else 3)

    server_dsn, embedded = ingest._server_dsn(args.dsn)
    name = f"passerelle_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server_dsn, dbname=name)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-tlc-"))
    try:
        migrate(dsn)
        setup_fleet(dsn, terminals=terminals)
        figures = _run(dsn, workdir, terminals=terminals, files=files, per_file=per_file,
                       rounds=rounds, workers=args.workers, nodes=args.nodes,
                       per_message=args.write_per_message,
                       compiled=echo.build_compiled(workdir / "compiled") if args.compiled
                       else None)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(embedded.state_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    figures["machine"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu"
    figures["quick"] = args.quick
    for key, value in figures.items():
        print(f"{key:32} {value}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
