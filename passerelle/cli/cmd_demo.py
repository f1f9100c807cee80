"""`mpctl demo`: authorizations and télécollectes on this machine, nothing to set up.

Starts an acquirer simulator and switchd (the real daemon, in this process) on an embedded
PostgreSQL in the state directory, with a route table sending every authorization to that
acquirer; registers a fleet (merchants' contracts for CBEMV, CBCLESS, AMEX and CONECS, and
their terminals). The simulated terminals first authorize a few payments each over XOT and
CBCOM/TLS (approved, and one declined: above the simulated issuer's limit), then collect a
few days of remises, several at a time, exactly as terminals in the field would dial in. Two
terminals misbehave on purpose: one loses its 0516 and sends the batch again (stored once),
one declares wrong totals (stored, with the difference named). Then it says where to look,
and stops everything (or keeps switchd up with `--serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import socket
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

APPLICATIONS = ("CBEMV", "CBCLESS", "AMEX", "CONECS")
_BANKS = ("30004", "30003", "30002", "10278", "20041")
_TRADES = ("BOULANGERIE", "PHARMACIE", "BRASSERIE", "LIBRAIRIE", "FLEURISTE", "BOUCHERIE",
           "EPICERIE", "CAVISTE", "OPTIQUE", "PRIMEUR")
_CITIES = ("PARIS", "LYON", "NANTES", "LILLE", "BORDEAUX", "RENNES", "NICE", "DIJON")


_DECLINE_ABOVE = 100_000  # the simulated issuer declines (51) payments above 1,000.00 EUR
_PAYMENTS = 2  # approved payments per terminal, before its télécollecte


def _settings(state_dir: Path, pki: Any, metrics_port: int, acquirer_port: int
              ) -> dict[str, Any]:
    local = {"host": "127.0.0.1", "port": 0}
    routes = state_dir / "routes.toml"
    routes.write_text('[[route]]\nname = "demo"\nacquirers = ["demo-acquirer"]\n')
    return {
        "switchd": {"state_dir": str(state_dir), "drain_timeout": 10.0},
        "listeners": {"xot": dict(local), "cbcom": {"enabled": False},
                      "cbcom-tls": {**local, "enabled": True, "cert": str(pki.cert),
                                    "key": str(pki.key)},
                      "iso": {"enabled": False}},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": metrics_port},
        "logging": {"level": "info"},
        "storage": {"state_dir": str(state_dir)},
        "routes": {
            "path": str(routes),
            "acquirers": [{"name": "demo-acquirer", "host": "127.0.0.1", "port": acquirer_port,
                           "response_timeout": 2.0, "reconnect_min": 0.05,
                           "floor_limits": [{"amount": 5000}]}],
            "authorization": {"deadline": 5.0},
            "authlog": {"flush_interval": 0.1},
        },
    }


def _payment(tpe: dict[str, Any], stan: int, amount: int, pan: str) -> bytes:
    """A chip 0100 (CB AID) as the terminal sends it."""
    from passerelle.codecs.iso8583 import encode  # noqa: PLC0415
    from passerelle.codecs.profiles import get_profile  # noqa: PLC0415

    now = datetime.now(UTC)
    return encode(get_profile("cb2a"), "0100", {
        2: pan, 3: "000000", 4: f"{amount:012d}", 11: f"{stan:06d}",
        12: now.strftime("%H%M%S"), 13: now.strftime("%m%d"), 14: f"{now.year % 100 + 3:02d}12",
        18: "5411", 22: "051", 25: "00", 37: f"{stan:012d}", 41: tpe["serial"],
        42: tpe["contract"].ljust(15), 49: "978",
        55: (("9F06", bytes.fromhex("A0000000421010")),
             ("9F26", bytes.fromhex("93D1A69155ACA8CD")), ("9F27", b"\x80"))})


async def _authorize(rng: random.Random, fleet: list[dict[str, Any]], listeners: list[str],
                     dial: Any, concurrency: int) -> Counter[str]:
    """Each terminal authorizes `_PAYMENTS` payments; the second terminal (the only one of a
    fleet of one) also one above the issuer's limit (declined). Response codes, counted."""
    from passerelle.codecs.iso8583 import Message  # noqa: PLC0415
    from passerelle.codecs.profiles import get_profile  # noqa: PLC0415
    from passerelle.sim.telecollecte import luhn_complete  # noqa: PLC0415

    codes: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    plans = []  # drawn before the terminals run concurrently: the same seed, the same run
    for index, tpe in enumerate(fleet):
        amounts = [rng.randint(300, 9000) for _ in range(_PAYMENTS)]
        if index == 1 or len(fleet) == 1:
            amounts.append(_DECLINE_ABOVE + 25_000)
        plans.append([_payment(tpe, stan, amount, luhn_complete(
            "497010" + "".join(rng.choice("0123456789") for _ in range(9))))
            for stan, amount in enumerate(amounts, 1)])

    async def one(listener: str, requests: list[bytes]) -> None:
        async with gate, await dial(listener) as terminal:
            for request in requests:
                answer = await terminal.exchange(request, 10)
                codes[str(Message.parse(answer, get_profile("cb2a")).get(39))] += 1

    await asyncio.gather(*(one(listener, requests)
                           for listener, requests in zip(listeners, plans, strict=True)))
    return codes


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _siret(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(14))


def _fleet(rng: random.Random, terminals: int, applications: tuple[str, ...]
           ) -> list[dict[str, Any]]:
    """Terminals with their merchant's contracts: every one takes CB (chip and contactless)
    when asked for; AMEX and CONECS (meal vouchers) only some, as in real shops."""
    fleet = []
    for number in range(1, terminals + 1):
        trade = rng.choice(_TRADES)
        apps = [a for a in applications if a in ("CBEMV", "CBCLESS")
                or (a == "AMEX" and rng.random() < 0.4)
                or (a == "CONECS" and (trade in ("BOULANGERIE", "BRASSERIE", "EPICERIE",
                                                 "PRIMEUR") or rng.random() < 0.2))]
        if not apps:
            apps = [applications[0]]
        fleet.append({
            "serial": f"TPE{number:05d}", "contract": f"{rng.randint(1_000_000, 9_999_999)}",
            "bank": rng.choice(_BANKS), "rang": f"{rng.randint(1, 20):03d}",
            "trade_name": f"{trade} {rng.choice(_CITIES)}", "siret": _siret(rng),
            "maker": rng.choice(("Ingenico", "Verifone", "PAX", "Castles")),
            "applications": apps,
        })
    return fleet


def _register_fleet(dsn: str, fleet: list[dict[str, Any]]) -> None:
    import psycopg  # noqa: PLC0415

    from passerelle.storage.fleet import Contract, upsert_contract, upsert_terminal  # noqa: PLC0415

    with psycopg.connect(dsn) as conn:
        for tpe in fleet:
            ids = [upsert_contract(conn, Contract(
                contract_number=tpe["contract"], application=app, bank_code=tpe["bank"],
                rang=tpe["rang"], acquirer="demo", label=tpe["trade_name"],
                trade_name=tpe["trade_name"], siret=tpe["siret"]))
                for app in tpe["applications"]]
            upsert_terminal(conn, tpe["serial"], ids[0], maker=tpe["maker"], itp="DEMO")
        conn.commit()


def _auth_summary(dsn: str, since: datetime) -> list[tuple[Any, ...]]:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT response_code, count(*), sum(amount) FROM authorizations WHERE at >= %s"
            " GROUP BY response_code ORDER BY response_code", (since,)).fetchall()


def _summary(dsn: str, since: datetime) -> list[tuple[Any, ...]]:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT application, count(*), sum(transaction_count), sum(net_amount),"
            " count(*) FILTER (WHERE NOT is_correct)"
            " FROM remises WHERE stored_at >= %s GROUP BY application ORDER BY application",
            (since,)).fetchall()


async def _run(state_dir: Path, *, terminals: int, days: int, applications: tuple[str, ...],
               concurrency: int, seed: int, metrics_port: int, serve: bool) -> int:
    from passerelle.config import parse_config  # noqa: PLC0415
    from passerelle.sim.acquirer import AcquirerSimulator, Rules  # noqa: PLC0415
    from passerelle.sim.pki import make_pki  # noqa: PLC0415
    from passerelle.sim.telecollecte import (  # noqa: PLC0415
        Faults,
        dial,
        generate_batches,
        telecollecte,
    )
    from passerelle.sim.terminal import Terminal  # noqa: PLC0415
    from passerelle.switchd.gateway import Gateway, TelecollecteSettings  # noqa: PLC0415

    pki = make_pki(state_dir / "pki")
    if metrics_port and not _port_free(metrics_port):
        click.echo(f"port {metrics_port} is taken (a switchd running?): metrics on a free port")
        metrics_port = 0
    acquirer = AcquirerSimulator("iso93-binary", rules=Rules(decline_above=_DECLINE_ABOVE))
    await acquirer.start()
    gateway = Gateway(parse_config(_settings(state_dir, pki, metrics_port, acquirer.port)),
                      TelecollecteSettings(replay_interval=1.0))
    click.echo(f"starting the acquirer simulator (port {acquirer.port}), switchd and the "
               f"embedded PostgreSQL in {state_dir}/pgdata ...")
    try:
        await gateway.start()
    except BaseException:
        await acquirer.stop()
        raise
    started = datetime.now(UTC)
    try:
        daemon, storage = gateway.daemon, gateway.storage
        assert daemon is not None and storage is not None
        ports = {name: listener.port for name, listener in daemon.listeners.items()}
        metrics_url = None
        if daemon.metrics_server is not None:
            host, mport = daemon.metrics_server.sockets[0].getsockname()[:2]
            metrics_url = f"http://{host}:{mport}/metrics"
        rng = random.Random(seed)  # noqa: S311 - made-up data, not secrets
        fleet = _fleet(rng, terminals, applications)
        await asyncio.to_thread(_register_fleet, storage.dsn, fleet)
        # Remise numbers follow the calendar, so a demo run on another day adds new remises
        # and a second run on the same day repeats them (acknowledged again, stored once).
        first = (datetime.now(UTC) - timedelta(days=days - 1)).timetuple().tm_yday
        tls = pki.client_context()
        listeners = ["xot" if index % 2 == 0 else "cbcom-tls" for index in range(len(fleet))]
        assert gateway.auth is not None
        await gateway.auth.links["demo-acquirer"].wait_up(10.0)

        async def transactional(listener: str) -> Any:
            if listener == "xot":
                return await Terminal.dial_xot("127.0.0.1", ports["xot"])
            return await Terminal.dial_cbcom("127.0.0.1", ports[listener], tls=tls)

        t0 = time.monotonic()
        codes = await _authorize(random.Random(seed + 1), fleet,  # noqa: S311 - made-up
                                 listeners, transactional, concurrency)
        declined = sum(n for code, n in codes.items() if code != "00")
        click.echo(f"{sum(codes.values())} authorizations in {time.monotonic() - t0:.1f} s "
                   f"through the acquirer simulator: {codes['00']} approved, {declined} "
                   f"declined ({', '.join(f'{c} x{n}' for c, n in sorted(codes.items()))})")
        work = []
        for index, tpe in enumerate(fleet):
            batches = [b for app in tpe["applications"] for b in generate_batches(
                rng, tpe["serial"], tpe["contract"], app, days=days, first_remise=first)]
            listener = listeners[index]
            faults = Faults(lose_0516=1 if index == 2 else 0, wrong_totals=index == 4)
            work.append((tpe, batches, listener, faults))
        total = sum(len(batches) for _, batches, _, _ in work)
        click.echo(f"{terminals} terminals, {total} remises over XOT (port {ports['xot']})"
                   f" and CBCOM/TLS (port {ports['cbcom-tls']}), {concurrency} at a time")
        gate = asyncio.Semaphore(concurrency)
        outcomes: list[Any] = []
        t0 = time.monotonic()
        with click.progressbar(length=total, label="télécollectes", file=sys.stderr,
                               show_pos=True) as bar:

            async def one(batches: list[Any], listener: str, faults: Any) -> None:
                async with gate:
                    port = ports[listener]
                    results = await telecollecte(
                        lambda: dial(listener, "127.0.0.1", port, tls=tls), batches,
                        faults=faults, timeout=60)
                outcomes.extend(results)
                bar.update(len(results))

            await asyncio.gather(*(one(b, listener, f) for _, b, listener, f in work))
        elapsed = time.monotonic() - t0
        acknowledged = [r for r in outcomes if r.acknowledged]
        failed = [r for r in outcomes if not r.acknowledged]
        sent = sum(len(r.batch.transactions) for r in acknowledged)
        click.echo(f"\n{len(acknowledged)} remises ({sent} transactions) acknowledged in "
                   f"{elapsed:.1f} s; {len(failed)} not acknowledged")
        registry = daemon.metrics.registry
        counts = {outcome: int(registry.get_sample_value(
            "telecollecte_remises_total", {"outcome": outcome}) or 0)
            for outcome in ("stored", "already_stored", "spooled")}
        click.echo(f"switchd: {counts['stored']} stored now, {counts['already_stored']} "
                   f"already there (repeats: acknowledged again, stored once), "
                   f"{counts['spooled']} spooled")
        for result in failed:
            click.echo(f"  {result.batch.terminal} {result.batch.application} remise "
                       f"{result.batch.remise_number}: {result.refused_by} {result.code}")
        await storage.replay_now()
        assert gateway.auth.authlog is not None
        await gateway.auth.authlog.flush()
        since = started - timedelta(seconds=1)
        logged = await asyncio.to_thread(_auth_summary, storage.dsn, since)
        click.echo("\nauthorizations logged in PostgreSQL by this run:")
        click.echo(f"  {'response code':<14}{'count':>8}{'EUR':>14}")
        for code, count, total in logged:
            click.echo(f"  {code:<14}{count:>8}{(total or 0) / 100:>14.2f}")
        rows = await asyncio.to_thread(_summary, storage.dsn, since)
        click.echo("\nstored in PostgreSQL by this run:")
        if rows:
            click.echo(f"  {'application':<12}{'remises':>8}{'transactions':>14}"
                       f"{'net EUR':>14}{'with ECART':>12}")
        else:
            click.echo("  nothing new: today's remises were stored by an earlier run")
        for app, count, txs, net, wrong in rows:
            click.echo(f"  {app:<12}{count:>8}{txs or 0:>14}{(net or 0) / 100:>14.2f}"
                       f"{wrong:>12}")
        _where_to_look(state_dir, metrics_url, serve,
                       acknowledged[0].batch if acknowledged else None)
        if serve:
            click.echo("\nswitchd keeps running; Ctrl-C stops it.")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        return 0 if not failed else 1
    finally:
        click.echo("stopping switchd, the acquirer simulator and the embedded PostgreSQL ...")
        await gateway.stop()
        await acquirer.stop()


def _where_to_look(state_dir: Path, metrics_url: str | None, serve: bool,
                   sample: Any | None) -> None:
    argv0 = Path(sys.argv[0])
    mpctl = str(argv0) if argv0.name == "mpctl" else f"{sys.executable} -m passerelle.cli"
    state = f"--state-dir {state_dir}"
    lines = [("remises", f"remises {state} --status difference   # remises with an ECART"),
             ("remises", f"remises {state} --group-by contract"),
             ("transactions", f"transactions {state} --application CONECS --group-by issuer")]
    if sample is not None:
        lines.append(("ticket", f"ticket remise {state} --number {sample.remise_number} "
                                f"--terminal {sample.terminal} --application "
                                f"{sample.application}"))
    click.echo("\nwhere to look:")
    for name, example in lines:
        if importlib.util.find_spec(f"passerelle.cli.cmd_{name}") is not None:
            click.echo(f"  {mpctl} {example}")
    click.echo(f"  {mpctl} db retention {state}   # monthly partitions kept and created")
    click.echo(f"  switchd log (JSON lines, card numbers masked): {state_dir / 'switchd.log'}")
    if metrics_url:
        when = "now" if serve else "while switchd runs (mpctl demo --serve keeps it up)"
        click.echo(f"  metrics {when}: {metrics_url}")
        click.echo("    telecollecte_remises_total, passerelle_authorizations_total, "
                   "passerelle_acquirer_latency_seconds, switchd_messages_total")


@click.command(name="demo")
@click.option("--state-dir", default=".state/demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Embedded PostgreSQL, spool, demo certificates and switchd log go here.")
@click.option("--terminals", default=20, show_default=True, type=click.IntRange(1, 2000),
              help="Simulated terminals (TPE) in the fleet.")
@click.option("--days", default=3, show_default=True, type=click.IntRange(1, 30),
              help="Days of history: one remise per terminal, application and day.")
@click.option("--applications", default=",".join(APPLICATIONS), show_default=True,
              help="Comma-separated applications the fleet accepts.")
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(1, 500),
              help="Terminals dialling at the same time.")
@click.option("--seed", default=2026, show_default=True, type=int,
              help="Seed of the generated fleet and transactions.")
@click.option("--metrics-port", default=9150, show_default=True, type=click.IntRange(0, 65535),
              help="Prometheus endpoint port (0: any free port).")
@click.option("--serve", is_flag=True, help="Keep switchd running after the demo (Ctrl-C).")
def command(state_dir: Path, terminals: int, days: int,  # noqa: PLR0917 - click options
            applications: str, concurrency: int, seed: int, metrics_port: int,
            serve: bool) -> None:
    """Run switchd on an embedded database; simulated terminals authorize and collect.

    \b
    Examples:
      mpctl demo                          20 terminals, 3 days, then stop
      mpctl demo --terminals 3 --days 1   a quick look
      mpctl demo --serve                  keep switchd and its metrics up afterwards
    """
    import uvloop  # noqa: PLC0415

    from passerelle.storage.db import StorageError  # noqa: PLC0415
    from passerelle.switchd import logs  # noqa: PLC0415

    apps = tuple(a.strip().upper() for a in applications.split(",") if a.strip())
    if not apps:
        raise click.BadParameter("at least one application", param_hint="--applications")
    state_dir = state_dir.expanduser().resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"cannot create {state_dir}: {error}") from None
    log_file = (state_dir / "switchd.log").open("ab")
    logs.configure("info", stream=log_file)
    try:
        code = uvloop.run(_run(state_dir, terminals=terminals, days=days, applications=apps,
                               concurrency=concurrency, seed=seed, metrics_port=metrics_port,
                               serve=serve))
    except KeyboardInterrupt:
        code = 0
    except (OSError, StorageError) as error:
        click.echo(f"error: {error}", err=True)
        code = 1
    finally:
        log_file.close()
    raise SystemExit(code)
