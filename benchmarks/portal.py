"""Portal benchmark: filtered searches for a 100-terminal merchant, and a month's export.

1. A fresh database is filled by the history generator's bulk COPY path
   (`passerelle.sim.history.write_history(bulk=True)`): full mode 15 months, 2,000
   terminals, about 10 million transactions; `--quick` 60 days, 200 terminals.
2. A fleet-manager account is given the contracts of merchants 0..49: with the generator's
   terminal-to-merchant assignment (terminal t works for merchant t mod terminals/2) that
   is 100 terminals, whatever the fleet size. An operator account does the export.
3. The portal runs as its own process (`passerelle-portal`, uvicorn) on 127.0.0.1, port
   chosen by the OS; searches are sent over HTTP with a keep-alive connection. For each
   the client round trip and the portal's Server-Timing (request in to first byte out)
   are recorded; target p95 <= 150 ms.
4. Export: 31 days of transactions (every terminal, as an operator) are read through the
   portal while the portal process's RSS is sampled from /proc; memory must stay flat
   (growth under `TARGET_EXPORT_RSS_GROWTH_MB` whatever the size).

    .venv/bin/python benchmarks/portal.py --quick --json benchmarks/results/portal.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from passerelle.portal.accounts import HASHER
from passerelle.sim.history import HistorySpec, write_history
from passerelle.storage.migrate import migrate
from passerelle.tickets import PARIS

TARGET_P95_MS = 150.0
TARGET_EXPORT_RSS_GROWTH_MB = 64.0
SCOPE_MERCHANTS = 50  # merchants 0..49: 100 terminals
PASSWORD = "benchmark password 1"
_LOCAL = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _spec(quick: bool) -> HistorySpec:
    end = datetime.now(PARIS).date() - timedelta(days=1)
    if quick:
        return HistorySpec(terminals=200, days=60, end=end, seed=7,
                           transactions_per_day=(2, 8))
    return HistorySpec(terminals=2000, days=456, end=end, seed=7, transactions_per_day=(2, 8))


@contextlib.contextmanager
def _database(server_dsn: str, keep: bool) -> Iterator[str]:
    name = f"passerelle_bench_portal_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server_dsn, dbname=name)
    try:
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(server_dsn, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
        else:
            print(f"kept database {name}", file=sys.stderr)


def _accounts(dsn: str) -> None:
    digest = HASHER.hash(PASSWORD)
    with psycopg.connect(dsn) as conn:
        fleet = conn.execute("INSERT INTO users (email, role, password_hash) VALUES"
                             " ('fleet@bench.example', 'fleet', %s) RETURNING id",
                             (digest,)).fetchone()
        conn.execute("INSERT INTO users (email, role, password_hash) VALUES"
                     " ('operator@bench.example', 'operator', %s)", (digest,))
        assert fleet is not None
        conn.execute(
            "INSERT INTO user_scopes (user_id, contract_id) SELECT %s, c.id FROM contracts c"
            " WHERE c.merchant_id IN (SELECT id FROM merchants ORDER BY id LIMIT %s)",
            (fleet[0], SCOPE_MERCHANTS))
        conn.execute("ANALYZE")


def _scope_terminals(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT terminal_serial) FROM remises WHERE contract_id IN"
            " (SELECT contract_id FROM user_scopes s JOIN users u ON u.id = s.user_id"
            "  WHERE u.email = 'fleet@bench.example')").fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def _portal(dsn: str) -> Iterator[tuple[int, int]]:
    """The portal as its own process; yields (pid, port)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "portal.toml"
        config.write_text(
            f'[portal]\nport = 0\ncookie_secure = false\nsecret_key = "{"b" * 40}"\n'
            f"[storage]\ndsn = {json.dumps(dsn)}\npool_max_size = 4\n", encoding="utf-8")
        process = subprocess.Popen(
            [sys.executable, "-m", "passerelle.portal.main", "--config", str(config)],
            stderr=subprocess.PIPE, text=True)
        try:
            assert process.stderr is not None
            port = None
            for line in process.stderr:
                found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
                if found:
                    port = int(found.group(1))
                    break
            if port is None:
                raise RuntimeError("the portal did not start")
            # Keep reading its log (access lines), or a full pipe would stall the portal.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            yield process.pid, port
        finally:
            process.terminate()
            process.wait(timeout=30)


class _Client:
    """One keep-alive HTTP connection with the session cookie."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.cookie = ""

    def request(self, method: str, path: str, form: dict[str, str] | None = None
                ) -> http.client.HTTPResponse:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        cookie = response.getheader("set-cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return response

    def login(self, email: str) -> None:
        page = self.request("GET", "/login").read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        answer = self.request("POST", "/login", {"csrf": csrf.group(1), "email": email,
                                                 "password": PASSWORD})
        answer.read()
        assert answer.status == 303, answer.status


def _searches(last: date) -> dict[str, str]:
    month = f"date_from={last - timedelta(days=30)}&date_to={last}"
    week = f"date_from={last - timedelta(days=6)}&date_to={last}"
    return {
        "remises: default (last 31 days)": "/remises",
        "remises: month, CBEMV, by amount": f"/remises?{month}&application=CBEMV&sort=amount",
        "remises: month, with a gap": f"/remises?{month}&status=difference",
        "remises: month, 10+ transactions": f"/remises?{month}&transaction_count_min=10",
        "remises: month, terminal": f"/remises?{month}&terminal_serial=ING0700000",
        "paiements: default (last 7 days)": "/paiements",
        "paiements: week, amount 10-50 €": f"/paiements?{week}&amount_min=10&amount_max=50",
        "paiements: month, last 4 digits": f"/paiements?{month}&card=7893",
        "paiements: month, declined": f"/paiements?{month}&result=declined",
        "paiements: month, CONECS by issuer": f"/paiements?{month}&application=CONECS",
        "paiements: week, contract 0012345": f"/paiements?{week}&contract_number=0012345",
        "paiements: week, by amount, 200/page": f"/paiements?{week}&sort=amount&limit=200",
    }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def _measure(client: _Client, searches: dict[str, str], rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, path in searches.items():
        client.request("GET", path).read()  # warm caches: the merchant's second visit
        wall, server = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            response = client.request("GET", path)
            response.read()
            wall.append((time.perf_counter() - began) * 1000)
            assert response.status == 200, (name, response.status)
            timing = response.getheader("server-timing") or ""
            server.append(float(timing.partition("dur=")[2] or "nan"))
        results[name] = {"p50_ms": round(statistics.median(server), 1),
                         "p95_ms": round(_p95(server), 1),
                         "round_trip_p95_ms": round(_p95(wall), 1)}
        print(f"  {name:42} server p95 {results[name]['p95_ms']:7.1f} ms"
              f"  round trip p95 {results[name]['round_trip_p95_ms']:7.1f} ms", file=sys.stderr)
    return results


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _export(client: _Client, pid: int, last: date) -> dict[str, Any]:
    first = last - timedelta(days=30)
    before = _rss_mb(pid)
    began = time.perf_counter()
    response = client.request("GET", f"/export/paiements?date_from={first}&date_to={last}")
    assert response.status == 200, response.status
    size, lines, samples = 0, 0, [before]
    while chunk := response.read(256 * 1024):
        size += len(chunk)
        lines += chunk.count(b"\r\n")
        samples.append(_rss_mb(pid))
    seconds = time.perf_counter() - began
    return {"days": 31, "rows": lines - 1, "megabytes": round(size / 2**20, 1),
            "seconds": round(seconds, 2), "rows_per_s": round((lines - 1) / seconds),
            "rss_before_mb": round(before, 1), "rss_max_mb": round(max(samples), 1),
            "rss_growth_mb": round(max(samples) - before, 1), "rss_samples": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small history, under a minute")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--dsn", default=os.environ.get("PASSERELLE_TEST_DSN", _LOCAL),
                        help="server-level PostgreSQL DSN (a database is created and dropped)")
    parser.add_argument("--rounds", type=int, default=None, help="requests per search")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    spec = _spec(args.quick)
    rounds = args.rounds or (20 if args.quick else 40)
    with _database(args.dsn, args.keep) as dsn:
        migrate(dsn)
        began = time.perf_counter()

        def progress(done: int, days: int) -> None:
            if done % 30 == 0 or done == days:
                print(f"  history: day {done}/{days}", file=sys.stderr)

        report = write_history(dsn, spec, bulk=True, progress=progress)
        generated_s = time.perf_counter() - began
        _accounts(dsn)
        terminals = _scope_terminals(dsn)
        print(f"history: {report.transactions} transactions, {report.remises} remises,"
              f" {report.terminals} terminals in {generated_s:.0f} s; scope: {terminals}"
              " terminals", file=sys.stderr)
        with _portal(dsn) as (pid, port):
            fleet = _Client(port)
            fleet.login("fleet@bench.example")
            searches = _measure(fleet, _searches(spec.last_day()), rounds)
            operator = _Client(port)
            operator.login("operator@bench.example")
            export = _export(operator, pid, spec.last_day())
    worst = max(s["p95_ms"] for s in searches.values())
    figures = {
        "benchmark": "portal", "mode": "quick" if args.quick else "full",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "history": {"transactions": report.transactions, "remises": report.remises,
                    "terminals": report.terminals, "days": spec.days,
                    "generated_s": round(generated_s), "method": "history bulk COPY"},
        "scope_terminals": terminals, "rounds": rounds, "searches": searches,
        "worst_p95_ms": worst, "target_p95_ms": TARGET_P95_MS,
        "p95_ok": worst <= TARGET_P95_MS,
        "export": export, "target_export_rss_growth_mb": TARGET_EXPORT_RSS_GROWTH_MB,
        "export_flat_memory": export["rss_growth_mb"] <= TARGET_EXPORT_RSS_GROWTH_MB,
    }
    print(f"worst search p95 {worst} ms (target {TARGET_P95_MS}); export {export['rows']} rows"
          f" {export['megabytes']} MB in {export['seconds']} s, RSS +{export['rss_growth_mb']}"
          " MB", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0 if figures["p95_ok"] and figures["export_flat_memory"] else 1


if __name__ == "__main__":
    sys.exit(main())
