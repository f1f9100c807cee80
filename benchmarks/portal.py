"""Portal benchmark: filtered searches for a 100-terminal merchant, and a month's export.

1. A dedicated database (`passerelle_bench_portal`, `passerelle_bench_portal_quick` with
   `--quick`) is filled by the history generator's bulk COPY path
   (`passerelle.sim.history.write_history(bulk=True)`, what `mpctl seed` runs): full mode
   15 months, 2,000 terminals, about 10 million transactions; `--quick` 60 days, 200
   terminals. Generation prints its progress (days, elapsed, ETA, the generator's peak
   RSS) and ends with VACUUM ANALYZE, so the reads measured are those of a settled table.
   The full dataset is kept: `--reuse` measures it again without regenerating (pending
   migrations, e.g. new indexes, are applied first); `--generate-only` stops after the
   generation, so the measurement can run alone on a quiet machine.
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
    nice -n 10 .venv/bin/python benchmarks/portal.py --generate-only      # once, ~20 min
    .venv/bin/python benchmarks/portal.py --reuse --json benchmarks/results/portal-full.json
    .venv/bin/python benchmarks/portal.py --reuse --explain    # the plans of each search
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
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
from urllib.parse import parse_qsl, urlencode

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from passerelle.portal import forms
from passerelle.portal.accounts import HASHER
from passerelle.portal.app import READ_RANDOM_PAGE_COST
from passerelle.sim.history import HistorySpec, write_history
from passerelle.storage import queries
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


def _dbname(quick: bool) -> str:
    return "passerelle_bench_portal_quick" if quick else "passerelle_bench_portal"


def _exists(server_dsn: str, name: str) -> bool:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                             (name,)).fetchone() is not None


def _drop(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def _create(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_dsn, dbname=name)


# The dataset's own record, written once generation is complete: a half-generated database
# (interrupted run) has none, so `--reuse` refuses it instead of measuring a partial history.
_META = """CREATE TABLE IF NOT EXISTS benchmark_portal_dataset (
    spec jsonb NOT NULL, report jsonb NOT NULL, generated_s integer NOT NULL,
    generated_at timestamptz NOT NULL DEFAULT now())"""


def _rusage_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _generate(dsn: str, spec: HistorySpec) -> dict[str, Any]:
    """The history, its accounts, VACUUM ANALYZE, and the dataset's record."""
    migrate(dsn)
    began = time.perf_counter()
    step = 1 if spec.days <= 60 else 10

    def progress(done: int, days: int) -> None:
        if done % step == 0 or done == days:
            elapsed = time.perf_counter() - began
            eta = elapsed / done * (days - done)
            print(f"  history: day {done}/{days}  {elapsed:6.0f} s elapsed, ETA {eta:5.0f} s,"
                  f" generator peak RSS {_rusage_mb():.0f} MB", file=sys.stderr, flush=True)

    report = write_history(dsn, spec, bulk=True, progress=progress)
    _accounts(dsn)
    print("  VACUUM ANALYZE ...", file=sys.stderr, flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    generated_s = round(time.perf_counter() - began)
    record = {"transactions": report.transactions, "remises": report.remises,
              "terminals": report.terminals, "days": spec.days,
              "first_day": str(spec.first_day()), "last_day": str(spec.last_day()),
              "generated_s": generated_s, "generator_peak_rss_mb": round(_rusage_mb()),
              "method": "history bulk COPY (mpctl seed)"}
    with psycopg.connect(dsn) as conn:
        conn.execute(_META)
        conn.execute("INSERT INTO benchmark_portal_dataset (spec, report, generated_s)"
                     " VALUES (%s, %s, %s)",
                     (msgspec.json.encode(spec).decode(), json.dumps(record), generated_s))
    return record


def _dataset(dsn: str) -> tuple[HistorySpec, dict[str, Any]]:
    """The spec and record of a complete dataset (a pending migration is applied first)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('benchmark_portal_dataset') IS NOT NULL"
                           ).fetchone()
        found = row and row[0] and conn.execute(
            "SELECT spec::text, report FROM benchmark_portal_dataset").fetchone()
    if not found:
        raise SystemExit("the database holds no complete dataset (generation interrupted?):"
                         " run again with --regenerate")
    migrate(dsn, progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")  # a migration's new indexes need fresh statistics too
    return msgspec.json.decode(found[0], type=HistorySpec), found[1]


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
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # stdout: access log
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
    # The pages as a merchant first sees them (the portal's default periods); on a dataset
    # reused days after it was generated, those periods are anchored at its last day.
    fresh = last >= datetime.now(PARIS).date() - timedelta(days=1)
    return {
        "remises: default (last 31 days)": "/remises" if fresh else f"/remises?{month}",
        "paiements: default (last 7 days)": "/paiements" if fresh else f"/paiements?{week}",
        "remises: month, CBEMV, by amount": f"/remises?{month}&application=CBEMV&sort=amount",
        "remises: month, with a gap": f"/remises?{month}&status=difference",
        "remises: month, 10+ transactions": f"/remises?{month}&transaction_count_min=10",
        "remises: month, terminal": f"/remises?{month}&terminal_serial=ING0700000",
        "paiements: week, amount 10-50 €": f"/paiements?{week}&amount_min=10&amount_max=50",
        "paiements: month, last 4 digits": f"/paiements?{month}&card=7893",
        "paiements: month, declined": f"/paiements?{month}&result=declined",
        "paiements: month, CONECS by issuer": f"/paiements?{month}&application=CONECS",
        "paiements: week, contract 0012345": f"/paiements?{week}&contract_number=0012345",
        "paiements: week, by amount, 200/page": f"/paiements?{week}&sort=amount&limit=200",
    }


def _explain(dsn: str, searches: dict[str, str]) -> None:
    """EXPLAIN ANALYZE of the very queries the portal runs for each search (page, totals,
    totals by issuer), as the fleet account: which indexes they use, where time goes."""
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("SET random_page_cost = {}").format(  # as the portal's sessions
            sql.Literal(READ_RANDOM_PAGE_COST)))
        row = conn.execute("SELECT id FROM users WHERE email = 'fleet@bench.example'"
                           ).fetchone()
        assert row is not None
        for name, path in searches.items():
            kind = "remises" if path.startswith("/remises") else "paiements"
            params = dict(parse_qsl(path.partition("?")[2]))
            form = forms.parse_search(params, kind, default_days=31 if kind == "remises"
                                      else 7)
            scope = queries.resolve_scope(conn, row[0], form.filters)
            statements = [queries.build_search(form.filters, scope=scope, sort=form.sort,
                                               descending=form.descending,
                                               limit=form.limit)[:2],
                          queries.build_totals(form.filters, scope=scope)]
            if kind == "paiements" and form.filters.application == forms.MEAL_VOUCHER:
                statements.append(queries.build_totals(form.filters, scope=scope,
                                                       group_by="issuer"))
            print(f"=== {name}: {path}")
            for query, values in statements:
                plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) {}").format(query),
                                    values).fetchall()
                print("\n".join(line for (line,) in plan), end="\n\n")


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


def _load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small history, under a minute")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--dsn", default=os.environ.get("PASSERELLE_TEST_DSN", _LOCAL),
                        help="server-level PostgreSQL DSN (the benchmark database is made here)")
    parser.add_argument("--database", help="benchmark database name"
                        " (default passerelle_bench_portal, _quick with --quick)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--reuse", action="store_true",
                      help="measure the dataset already generated, without regenerating")
    what.add_argument("--regenerate", action="store_true",
                      help="drop an existing benchmark database and generate it again")
    parser.add_argument("--generate-only", action="store_true",
                        help="generate the dataset and stop (measure later with --reuse)")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN ANALYZE of each search's queries instead of timing")
    parser.add_argument("--rounds", type=int, default=None, help="requests per search")
    parser.add_argument("--keep", action="store_true",
                        help="--quick: keep the database afterwards (the full one always is)")
    args = parser.parse_args()
    name = args.database or _dbname(args.quick)
    dsn = make_conninfo(args.dsn, dbname=name)
    if args.reuse:
        if not _exists(args.dsn, name):
            raise SystemExit(f"no database {name}: generate it first (without --reuse)")
        spec, history = _dataset(dsn)
    else:
        if _exists(args.dsn, name):
            if not args.regenerate:
                raise SystemExit(f"database {name} exists: --reuse measures it,"
                                 " --regenerate drops and generates it again")
            _drop(args.dsn, name)
        _create(args.dsn, name)
        spec = _spec(args.quick)
        history = _generate(dsn, spec)
    print(f"history: {history['transactions']} transactions, {history['remises']} remises,"
          f" {history['terminals']} terminals, {history['first_day']}..{history['last_day']}"
          f" (generated in {history['generated_s']} s)", file=sys.stderr)
    if args.explain:
        _explain(dsn, _searches(spec.last_day()))
        return 0
    if args.generate_only:
        print(f"dataset kept in database {name}; measure with --reuse", file=sys.stderr)
        return 0
    try:
        figures = _run(dsn, spec, history, args)
    finally:
        if args.quick and not args.keep and not args.reuse:
            _drop(args.dsn, name)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0 if figures["p95_ok"] and figures["export_flat_memory"] else 1


def _run(dsn: str, spec: HistorySpec, history: dict[str, Any],
         args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds or (20 if args.quick else 40)
    terminals = _scope_terminals(dsn)
    print(f"scope: {terminals} terminals; load average before {_load()}", file=sys.stderr)
    load_before = _load()
    with _portal(dsn) as (pid, port):
        fleet = _Client(port)
        fleet.login("fleet@bench.example")
        searches = _measure(fleet, _searches(spec.last_day()), rounds)
        load_searches = _load()
        operator = _Client(port)
        operator.login("operator@bench.example")
        export = _export(operator, pid, spec.last_day())
    worst = max(s["p95_ms"] for s in searches.values())
    figures = {
        "benchmark": "portal", "mode": "quick" if args.quick else "full",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_before": load_before,
                    "load_average_after_searches": load_searches,
                    "load_average_after_export": _load()},
        "reused_dataset": bool(args.reuse), "history": history,
        "scope_terminals": terminals, "rounds": rounds, "searches": searches,
        "worst_p95_ms": worst, "target_p95_ms": TARGET_P95_MS,
        "p95_ok": worst <= TARGET_P95_MS,
        "export": export, "target_export_rss_growth_mb": TARGET_EXPORT_RSS_GROWTH_MB,
        "export_flat_memory": export["rss_growth_mb"] <= TARGET_EXPORT_RSS_GROWTH_MB,
    }
    print(f"worst search p95 {worst} ms (target <= {TARGET_P95_MS}: "
          f"{'ok' if figures['p95_ok'] else 'MISSED'}); export {export['rows']} rows"
          f" {export['megabytes']} MB in {export['seconds']} s, RSS +{export['rss_growth_mb']}"
          f" MB (target <= {TARGET_EXPORT_RSS_GROWTH_MB}: "
          f"{'ok' if figures['export_flat_memory'] else 'MISSED'}); load average"
          f" {figures['machine']['load_average_after_export']}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    sys.exit(main())
