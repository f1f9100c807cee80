"""Retention: keep N months (15 by default) of monthly partitions, create the months ahead.

Dropping a whole partition is instant and leaves no bloat, which is why remises,
transactions and authorizations are partitioned by month. A partition goes when its whole
month is older than the retention: on 2026-11-22 with 15 months, 2025-08 is the oldest kept.
The remise keys (the exactly-once index) and any rows parked in the default partitions
follow the same cutoff.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime

import msgspec
import psycopg
from psycopg import sql

from passerelle.storage.db import StorageError, connect, translate_errors

# (table, partition key column)
PARTITIONED = (("remises", "collected_at"), ("transactions", "tx_at"), ("authorizations", "at"))
RETENTION_LOCK_KEY = int.from_bytes(b"retentio", "big", signed=True)
_PARTITION = re.compile(r"^(?P<parent>[a-z_]+)_p(?P<year>\d{4})(?P<month>\d{2})$")


class RetentionReport(msgspec.Struct):
    cutoff: date
    created: list[str] = msgspec.field(default_factory=list)
    dropped: list[str] = msgspec.field(default_factory=list)
    deleted_keys: int = 0
    deleted_default_rows: int = 0


def add_months(day: date, months: int) -> date:
    """First day of the month `months` after (or before) `day`'s month."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partitions(conn: psycopg.Connection, parent: str) -> list[tuple[str, date]]:
    """Monthly partitions of `parent` as (name, first day of month), oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass",
        (parent,),
    ).fetchall()
    found = []
    for (name,) in rows:
        match = _PARTITION.match(name)
        if match and match["parent"] == parent:
            found.append((name, date(int(match["year"]), int(match["month"]), 1)))
    return sorted(found, key=lambda item: item[1])


def apply_retention(
    dsn: str,
    *,
    keep_months: int = 15,
    months_ahead: int = 3,
    today: date | None = None,
    progress: Callable[[str], None] | None = None,
) -> RetentionReport:
    """Create the coming months' partitions, then drop those older than `keep_months`."""
    if keep_months < 1:
        raise StorageError(f"retention must keep at least 1 month, got {keep_months}")
    if months_ahead < 0:
        raise StorageError(f"months ahead must be >= 0, got {months_ahead}")
    say = progress or (lambda _msg: None)
    today = today or datetime.now(UTC).date()
    this_month = add_months(today, 0)
    report = RetentionReport(cutoff=add_months(this_month, -keep_months))
    cutoff_ts = datetime(report.cutoff.year, report.cutoff.month, 1, tzinfo=UTC)
    with connect(dsn, autocommit=True) as conn, translate_errors("applying retention"):
        conn.execute("SELECT pg_advisory_lock(%s)", (RETENTION_LOCK_KEY,))
        conn.execute("SET lock_timeout = '30s'")  # never stall ingestion behind a long query
        for table, _key in PARTITIONED:
            for ahead in range(months_ahead + 1):
                month = add_months(this_month, ahead)
                created = conn.execute(
                    "SELECT passerelle_ensure_month_partition(%s, %s)", (table, month)
                ).fetchone()
                if created and created[0]:
                    name = f"{table}_p{month:%Y%m}"
                    report.created.append(name)
                    say(f"created {name}")
        for table, key in PARTITIONED:
            for name, month in partitions(conn, table):
                if add_months(month, 1) <= report.cutoff:
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    report.dropped.append(name)
                    say(f"dropped {name} (month {month:%Y-%m})")
            with conn.transaction():
                deleted = conn.execute(
                    sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                        sql.Identifier(f"{table}_default"), sql.Identifier(key)
                    ),
                    (cutoff_ts,),
                ).rowcount
                if table == "remises":
                    report.deleted_keys += conn.execute(
                        "DELETE FROM remise_keys WHERE collected_at < %s", (cutoff_ts,)
                    ).rowcount
            if deleted:
                report.deleted_default_rows += deleted
                say(f"deleted {deleted} rows older than {report.cutoff:%Y-%m} from {table}")
        conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_KEY,))
    say(
        f"retention done: keeping from {report.cutoff:%Y-%m}, {len(report.created)} created, "
        f"{len(report.dropped)} dropped"
    )
    return report
