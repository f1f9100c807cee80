"""`mpctl seed`: fill a database with realistic fleet history (demo, benchmarks, tests).

See `passerelle.sim.history` for what the history contains. The data are synthetic and
deterministic for a given `--seed`; card searches work with the history's PAN keys
(`--pan-key 1:<hex> --pan-key 2:<hex>`, printed at the end).
"""

from __future__ import annotations

import sys
from datetime import date

import click

from passerelle.cli.common import database_options, emit_json, errors, fail, is_tty_stderr
from passerelle.sim.history import HISTORY_KEYS, HistorySpec, write_history
from passerelle.storage.filters import parse_date


@click.command(name="seed")
@click.option("--terminals", default=6, show_default=True, type=click.IntRange(min=1),
              help="Terminals in the fleet (merchants: half as many).")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 500),
              help="Days of history, ending with --end.")
@click.option("--end", help="Last day (YYYY-MM-DD). Default: yesterday, Europe/Paris.")
@click.option("--seed", default=1, show_default=True, type=int, help="Random seed.")
@click.option("--per-day", default="4-30", show_default=True, metavar="MIN-MAX",
              help="Transactions per terminal, application and day.")
@click.option("--writer", is_flag=True,
              help="Store through RemiseWriter (switchd's path) instead of bulk COPY.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@database_options
@errors
def command(*, terminals: int, days: int, end: str | None, seed: int, per_day: str,
            writer: bool, as_json: bool, dsn: str | None, state_dir: str) -> None:
    """Generate merchants, contracts, terminals and their remises into the database.

    The database must be migrated (`mpctl db migrate`) and hold no other fleet history.

    \b
    Examples:
      mpctl seed --terminals 6 --days 30
      mpctl seed --terminals 2000 --days 31 --per-day 20-60     (millions of rows)
    """
    low, _, high = per_day.partition("-")
    if not (low.isdigit() and high.isdigit() and int(low) <= int(high)):
        raise fail(f"--per-day: {per_day!r} is not MIN-MAX", 2)
    end_day: date | None = parse_date("end", end) if end else None
    spec = HistorySpec(terminals=terminals, days=days, end=end_day, seed=seed,
                       transactions_per_day=(int(low), int(high)))
    target = dsn
    if target is None:
        from passerelle.storage.embedded import EmbeddedPostgres  # noqa: PLC0415

        server = EmbeddedPostgres(state_dir)
        target = server.start()
    else:
        server = None
    try:
        with click.progressbar(length=days, label="days", file=sys.stderr,
                               hidden=not is_tty_stderr()) as bar:
            report = write_history(target, spec, bulk=not writer,
                                   progress=lambda done, _total: bar.update(1))
    finally:
        if server is not None:
            server.stop()
    keys = [f"{k.version}:{k.key.hex()}" for k in HISTORY_KEYS]
    if as_json:
        emit_json({"report": report, "pan_keys": keys})
        return
    click.echo(f"{report.merchants} merchants, {report.contracts} contracts, "
               f"{report.terminals} terminals, {report.remises} remises, "
               f"{report.transactions} transactions from {report.first_day} to "
               f"{report.last_day}")
    click.echo("card searches: " + " ".join(f"--pan-key {k}" for k in keys))
