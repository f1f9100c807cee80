"""Ingestion benchmark: transactions stored per second through the remise writer.

Many remises are stored concurrently (one task per simulated terminal) through
`passerelle.storage.remises.RemiseWriter` — validation, totals, exactly-once key, remise row,
COPY of the transactions, one transaction per remise — and compared, in the same run and on
the same table, with:

* raw COPY: the very same rows, already built, one COPY per worker, nothing else;
* row-by-row INSERT: the same rows, one INSERT statement each, one transaction per remise.

The télécollecte-path version (terminals over XOT/CBCOM) comes with the dialogue.

    .venv/bin/python benchmarks/ingest.py --quick --json benchmarks/results/ingest.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from passerelle.storage.db import StorageSettings, open_pool
from passerelle.storage.embedded import EmbeddedPostgres
from passerelle.storage.migrate import migrate
from passerelle.storage.remises import (
    COPY_TRANSACTIONS,
    COPY_TYPES,
    Remise,
    RemiseWriter,
    transaction_rows,
)
from tests.integration.storage_helpers import make_remise, setup_fleet

TARGET_RATIO_TO_COPY = 0.6
_LOCAL = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _server_dsn(explicit: str | None) -> tuple[str, EmbeddedPostgres | None]:
    if explicit:
        return explicit, None
    try:
        with psycopg.connect(_LOCAL, connect_timeout=2):
            return _LOCAL, None
    except psycopg.Error:
        server = EmbeddedPostgres(tempfile.mkdtemp(prefix="ingest-bench-"), database="postgres")
        return server.start(), server


def _build(remises: int, per_remise: int, terminals: int) -> list[Remise]:
    now = datetime.now(UTC).replace(microsecond=0)
    template = [
        make_remise(terminal=f"TPE{t:04d}", transactions=per_remise, seed=t, collected_at=now)
        for t in range(terminals)
    ]
    return [
        msgspec.structs.replace(template[n % terminals], remise_number=n + 1, file_number=n + 1)
        for n in range(remises)
    ]


async def _truncate(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE remise_keys, remises, transactions")
        await conn.execute("VACUUM ANALYZE transactions")


async def _writer(dsn: str, remises: list[Remise], workers: int) -> float:
    settings = StorageSettings(pool_min_size=workers, pool_max_size=workers)
    async with open_pool(dsn, settings) as pool:
        await pool.wait()
        writer = RemiseWriter(pool)
        queue = list(reversed(remises))

        async def worker() -> None:
            while queue:
                await writer.store(queue.pop())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - start


def _rows(remises: list[Remise]) -> list[tuple[object, ...]]:
    context = (0, "Ingenico", "ITP01", 1, "001", "30004", "bnp", "BOULANGERIE", "Au Bon Pain",
               "99900000000011")
    rows: list[tuple[object, ...]] = []
    for index, remise in enumerate(remises):
        rows.extend(transaction_rows(remise, index + 1, "correct", context))
    return rows


async def _raw_copy(dsn: str, rows: list[tuple[object, ...]], workers: int) -> float:
    shares = [rows[i::workers] for i in range(workers)]
    conns = [await psycopg.AsyncConnection.connect(dsn) for _ in range(workers)]

    async def copy(conn: psycopg.AsyncConnection, share: list[tuple[object, ...]]) -> None:
        async with conn.cursor().copy(COPY_TRANSACTIONS) as copy:
            copy.set_types(COPY_TYPES)
            for row in share:
                await copy.write_row(row)
        await conn.commit()

    try:
        start = time.perf_counter()
        await asyncio.gather(*(copy(c, s) for c, s in zip(conns, shares, strict=True)))
        return time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.close()


async def _row_by_row(dsn: str, rows: list[tuple[object, ...]], per_remise: int,
                      workers: int) -> float:
    columns = COPY_TRANSACTIONS.split("(", 1)[1].split(")", 1)[0]
    insert = f"INSERT INTO transactions ({columns}) VALUES ({', '.join(['%s'] * len(COPY_TYPES))})"
    batches = [rows[i : i + per_remise] for i in range(0, len(rows), per_remise)]
    conns = [await psycopg.AsyncConnection.connect(dsn) for _ in range(workers)]

    async def worker(conn: psycopg.AsyncConnection) -> None:
        while batches:
            batch = batches.pop()
            async with conn.transaction(), conn.cursor() as cur:
                for row in batch:
                    await cur.execute(insert, row)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        return time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.close()


async def _run(
    dsn: str, remises: list[Remise], per_remise: int, workers: int, rounds: int
) -> dict:
    """`rounds` rounds of the three methods back to back; medians, so that a burst of load
    from elsewhere on the machine skews one round rather than the figures."""
    total = len(remises) * per_remise
    rows = _rows(remises)
    rates: dict[str, list[float]] = {"writer": [], "copy": [], "insert": []}
    for _ in range(rounds):
        await _truncate(dsn)
        rates["writer"].append(total / await _writer(dsn, remises, workers))
        await _truncate(dsn)
        rates["copy"].append(total / await _raw_copy(dsn, rows, workers))
        await _truncate(dsn)
        rates["insert"].append(total / await _row_by_row(dsn, rows, per_remise, workers))
    to_copy = statistics.median(w / c for w, c in zip(rates["writer"], rates["copy"],
                                                       strict=True))
    to_insert = statistics.median(w / i for w, i in zip(rates["writer"], rates["insert"],
                                                         strict=True))
    writer_rate = statistics.median(rates["writer"])
    return {
        "transactions_per_round": total,
        "remises_per_round": len(remises),
        "transactions_per_remise": per_remise,
        "concurrent_writers": workers,
        "rounds": rounds,
        "writer_rows_per_s": round(writer_rate),
        "raw_copy_rows_per_s": round(statistics.median(rates["copy"])),
        "row_by_row_insert_rows_per_s": round(statistics.median(rates["insert"])),
        "writer_remises_per_s": round(writer_rate / per_remise, 1),
        "ratio_to_raw_copy": round(to_copy, 3),
        "ratio_to_row_by_row_insert": round(to_insert, 2),
        "ratio_to_raw_copy_per_round": [
            round(w / c, 3) for w, c in zip(rates["writer"], rates["copy"], strict=True)
        ],
        "target_ratio_to_raw_copy": TARGET_RATIO_TO_COPY,
        "meets_target": to_copy >= TARGET_RATIO_TO_COPY,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--json", metavar="PATH", help="write the figures as one JSON object")
    parser.add_argument("--dsn", default=os.environ.get("PASSERELLE_DSN"),
                        help="server DSN (a scratch database is created and dropped)")
    parser.add_argument("--remises", type=int)
    parser.add_argument("--transactions", type=int, help="transactions per remise")
    parser.add_argument("--workers", type=int, default=8, help="concurrent remise writers")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three methods")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    remises = args.remises or (200 if args.quick else 500)
    per_remise = args.transactions or (100 if args.quick else 200)

    server_dsn, embedded = _server_dsn(args.dsn)
    name = f"passerelle_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server_dsn, dbname=name)
    try:
        migrate(dsn)
        setup_fleet(dsn, terminals=20)
        batch = _build(remises, per_remise, terminals=20)
        figures = asyncio.run(_run(dsn, batch, per_remise, args.workers, args.rounds))
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(embedded.state_dir, ignore_errors=True)
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
