"""`mpctl status`: is the gateway healthy? Database, SAF, spool, terminals, daemon.

Checks, each reported even when another fails:
- database reachable (and its server version);
- SAF depth: advices and reversals not yet delivered, by acquirer;
- spool depth: records waiting in `<state-dir>/spool` (remises taken while PostgreSQL
  was away), read without taking the journal's lock, so switchd keeps running;
- last télécollecte per terminal, and the active terminals that did not call yesterday
  (Europe/Paris day);
- daemon health from its Prometheus `/metrics` URL when `--metrics-url` is given: the
  acquirer links' state and the terminals connected by listener.
Exit code 1 when the database or the daemon cannot be reached, else 0.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import click

from passerelle.cli.common import (
    database,
    database_options,
    emit_json,
    json_option,
    paris,
    table,
)
from passerelle.storage.db import StorageError
from passerelle.tickets import PARIS

_METRIC_PREFIXES = ("passerelle_", "switchd_")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _database_report(dsn: str | None, state_dir: str) -> dict[str, Any]:
    report: dict[str, Any] = {"reachable": False}
    try:
        with database(dsn, state_dir) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            report["server_version"] = version[0] if version else None
            report["reachable"] = True
            report["saf"] = {r[0]: r[1] for r in conn.execute(
                "SELECT acquirer, count(*) FROM saf WHERE delivered_at IS NULL"
                " GROUP BY acquirer ORDER BY acquirer").fetchall()}
            today = datetime.now(PARIS).date()
            start = datetime.combine(today - timedelta(days=1), time(), PARIS)
            end = datetime.combine(today, time(), PARIS)
            rows = conn.execute(
                """SELECT t.serial, t.maker, c.contract_number, t.active,
                          max(k.collected_at),
                          bool_or(k.collected_at >= %s AND k.collected_at < %s)
                     FROM terminals t
                     LEFT JOIN contracts c ON c.id = t.contract_id
                     LEFT JOIN remise_keys k ON k.terminal_serial = t.serial
                    GROUP BY t.serial, t.maker, c.contract_number, t.active
                    ORDER BY t.serial""", (start, end)).fetchall()
            report["terminals"] = [
                {"serial": r[0], "maker": r[1], "contract": r[2], "active": r[3],
                 "last_collected_at": r[4], "called_yesterday": bool(r[5])} for r in rows]
            report["silent_yesterday"] = [r[0] for r in rows if r[3] and not r[5]]
    except StorageError as exc:
        report["error"] = str(exc)
    return report


def _spool_report(state_dir: str) -> dict[str, Any]:
    from passerelle.storage.spool import Spool  # noqa: PLC0415

    directory = Path(state_dir) / "spool"
    if not directory.is_dir():
        return {"directory": str(directory), "records": 0}
    try:
        return {"directory": str(directory), "records": Spool(directory).pending_records()}
    except (OSError, StorageError) as exc:
        return {"directory": str(directory), "error": str(exc)}


def _metrics_report(url: str) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        return {"url": url, "reachable": False, "error": "not an http(s) URL"}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - checked above
            body = response.read(4_000_000).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return {"url": url, "reachable": False, "error": str(exc)}
    samples = {}
    links: dict[str, str] = {}
    connections: dict[str, float] = {}
    for line in body.splitlines():
        if not line.startswith(_METRIC_PREFIXES):
            continue
        name, _, value = line.rpartition(" ")
        samples[name] = value
        metric, labels = _labels(name)
        if metric == "passerelle_acquirer_link_state" and _number(value) == 1:
            links[labels.get("acquirer", "?")] = labels.get("state", "?")
        elif metric == "switchd_connections_open":
            connections[labels.get("listener", "?")] = _number(value)
    return {"url": url, "reachable": True, "links": links,
            "connections_open": connections, "samples": samples}


def _labels(sample: str) -> tuple[str, dict[str, str]]:
    """`name{a="x",b="y"}` -> ("name", {"a": "x", "b": "y"})."""
    metric, _, rest = sample.partition("{")
    return metric, dict(_LABEL.findall(rest))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


@click.command(name="status")
@click.option("--metrics-url", help="switchd's metrics URL, e.g. http://127.0.0.1:9464/metrics.")
@json_option
@database_options
def command(metrics_url: str | None, as_json: bool, dsn: str | None, state_dir: str) -> None:
    """Health of the database, SAF, spool, terminals and (optionally) the daemon.

    \b
    Examples:
      mpctl status
      mpctl status --state-dir /var/lib/passerelle --metrics-url http://127.0.0.1:9464/metrics
      mpctl status --json
    """
    report: dict[str, Any] = {"database": _database_report(dsn, state_dir),
                              "spool": _spool_report(state_dir)}
    if metrics_url:
        report["daemon"] = _metrics_report(metrics_url)
    failed = not report["database"]["reachable"] or (
        metrics_url is not None and not report["daemon"]["reachable"])
    if as_json:
        emit_json(report)
    else:
        _print(report)
    if failed:
        raise click.exceptions.Exit(1)


def _print(report: dict[str, Any]) -> None:
    db = report["database"]
    if db["reachable"]:
        click.echo(f"database   reachable (PostgreSQL {db['server_version']})")
        saf = db["saf"]
        click.echo("saf        " + (", ".join(f"{k}: {v} pending" for k, v in saf.items())
                                    or "empty"))
    else:
        click.echo(f"database   UNREACHABLE: {db.get('error')}")
    spool = report["spool"]
    click.echo(f"spool      {spool.get('records', 'ERROR ' + str(spool.get('error')))} "
               f"record(s) in {spool['directory']}")
    daemon = report.get("daemon")
    if daemon is not None:
        if daemon["reachable"]:
            click.echo(f"daemon     up ({daemon['url']})")
            links = daemon["links"]
            click.echo("links      " + (", ".join(f"{k}: {v}" for k, v in sorted(links.items()))
                                        or "none reported"))
            open_now = daemon["connections_open"]
            click.echo("terminals  " + (", ".join(f"{k}: {v:g} connected"
                                                  for k, v in sorted(open_now.items()))
                                        or "none reported"))
        else:
            click.echo(f"daemon     UNREACHABLE at {daemon['url']}: {daemon['error']}")
    if db["reachable"]:
        click.echo("")
        table(["TERMINAL", "MAKER", "CONTRACT", "LAST TELECOLLECTE", "YESTERDAY"],
              [[t["serial"], t["maker"], t["contract"],
                paris(t["last_collected_at"]) or "never",
                "called" if t["called_yesterday"] else
                ("NO CALL" if t["active"] else "inactive")] for t in db["terminals"]])
        silent = db["silent_yesterday"]
        if silent:
            click.echo(f"\n{len(silent)} terminal(s) did not call yesterday: "
                       f"{', '.join(silent)}")
