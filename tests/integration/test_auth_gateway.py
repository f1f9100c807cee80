"""Authorization wired into the gateway: the real switchd (child process) with [storage] and
[routes], acquirer simulators on real sockets, a terminal that authorizes and télécollectes,
SIGHUP switching acquirers under a live session, and `--check-config` on routes."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from passerelle.sim.acquirer import AcquirerSimulator, Rules
from passerelle.sim.telecollecte import dial, generate_batches, telecollecte
from passerelle.sim.terminal import Terminal
from passerelle.switchd.process import SwitchdProcess
from tests.integration.auth_helpers import (
    CONTRACT,
    TERMINAL,
    acquirer_table,
    answer_of,
    auth_request,
    setup_directory,
)
from tests.integration.telecollecte_helpers import PAN_KEY_HEX, card_numbers_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROUTES_TO = """
[[route]]
name = "default"
acquirers = ["{acquirer}"]
"""


def _value(value: Any) -> str:
    """A TOML value; tables inline (arrays of tables are what process.to_toml lacks)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def to_toml(document: dict[str, Any]) -> str:
    return "".join(f"[{json.dumps(name)}]\n" + "".join(f"{json.dumps(k)} = {_value(v)}\n"
                                                        for k, v in table.items())
                   for name, table in document.items())


def start_switchd(settings: dict[str, Any], workdir: Path) -> SwitchdProcess:
    """The real switchd as a child process, on `settings` written as TOML."""
    switchd = SwitchdProcess({"logging": settings.get("logging", {})}, workdir)
    switchd.config_path.write_text(to_toml(settings))
    return switchd.start()


def gateway_settings(dsn: str, state_dir: Path, routes: Path,
                     acquirers: list[dict[str, Any]]) -> dict[str, Any]:
    local = {"host": "127.0.0.1", "port": 0}
    return {
        "switchd": {"state_dir": str(state_dir), "drain_timeout": 5.0},
        "listeners": {"xot": dict(local), "cbcom": dict(local), "iso": {"enabled": False}},
        "metrics": {"enabled": False},
        "storage": {"dsn": dsn, "state_dir": str(state_dir), "pool_min_size": 0,
                    "pool_max_size": 4},
        "telecollecte": {"pan_hmac_key": PAN_KEY_HEX, "replay_interval": 0.2},
        "routes": {"path": str(routes), "acquirers": acquirers,
                   "authorization": {"deadline": 3.0, "min_attempt": 0.1},
                   "saf": {"interval": 0.1}, "authlog": {"flush_interval": 0.05}},
    }


def _logged(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT stan, acquirer, response_code, pan_masked, pan_hmac_key_version"
            " FROM authorizations ORDER BY stan").fetchall()


def test_switchd_authorizes_collects_and_switches_acquirer_on_sighup(tmp_path: Path,
                                                                     db_dsn: str) -> None:
    setup_directory(db_dsn)
    routes = tmp_path / "routes.toml"

    async def scenario() -> None:
        sims = {"acq-a": AcquirerSimulator(rules=Rules(decline_above=50_000)),
                "acq-b": AcquirerSimulator(rules=Rules(), first_approval=500001)}
        for sim in sims.values():
            await sim.start()
        routes.write_text(ROUTES_TO.format(acquirer="acq-a"))
        settings = gateway_settings(db_dsn, tmp_path / "state", routes, [
            acquirer_table(name, sim.port) for name, sim in sims.items()])
        switchd = await asyncio.to_thread(start_switchd, settings, tmp_path)
        try:
            await asyncio.to_thread(switchd.wait_for, "acquirer.link_up", 10.0, 2)
            port = switchd.port("cbcom")
            async with await Terminal.dial_cbcom("127.0.0.1", port) as tpe:
                approved = answer_of(await tpe.exchange(auth_request(stan=1, amount=1500)))
                declined = answer_of(await tpe.exchange(auth_request(stan=2, amount=60_000)))
                assert (approved.get(39), approved.get(38)) == ("00", "100001")
                assert declined.get(39) == "51"
                assert sims["acq-a"].requests["1100"] == 2

                # The same terminal collects its remise in the same run (another session).
                batches = generate_batches(random.Random(7), TERMINAL, CONTRACT, "CBEMV",
                                           days=1, per_day=(3, 5))
                results = await telecollecte(lambda: dial("xot", "127.0.0.1",
                                                          switchd.port("xot")), batches)
                assert [r.code for r in results] == ["00"]

                # New routes, SIGHUP: the live session stays up, new requests go to acq-b.
                routes.write_text(ROUTES_TO.format(acquirer="acq-b"))
                switchd.signal(signal.SIGHUP)
                await asyncio.to_thread(switchd.wait_for, "auth.routes_reloaded")
                after = answer_of(await tpe.exchange(auth_request(stan=3, amount=1500)))
                assert (after.get(39), after.get(38)) == ("00", "500001")
                assert sims["acq-b"].requests["1100"] == 1
                assert sims["acq-a"].requests["1100"] == 2

                # A broken routes file is refused and the table in force stays.
                routes.write_text('[[route]]\nname = "x"\nacquirers = ["nobody"]\n')
                switchd.signal(signal.SIGHUP)
                await asyncio.to_thread(switchd.wait_for, "auth.routes_reload_failed")
                kept = answer_of(await tpe.exchange(auth_request(stan=4, amount=1500)))
                assert kept.get(39) == "00" and sims["acq-b"].requests["1100"] == 2
                assert tpe.aborted is None and not tpe.closed
            assert await asyncio.to_thread(switchd.stop) == 0
            assert card_numbers_in(b"".join(switchd.raw_lines).decode()) == []
        finally:
            await asyncio.to_thread(switchd.stop)
            for sim in sims.values():
                await sim.stop()

    asyncio.run(asyncio.wait_for(scenario(), 90))
    logged = _logged(db_dsn)
    assert [(row[0], row[1], row[2]) for row in logged] == [
        ("000001", "acq-a", "00"), ("000002", "acq-a", "51"), ("000003", "acq-b", "00"),
        ("000004", "acq-b", "00")]
    assert all(row[3].startswith("497010") and "*" in row[3] and row[4] == 1 for row in logged)
    with psycopg.connect(db_dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM remises r JOIN terminals t"
                              " ON t.id = r.terminal_id WHERE t.serial = %s",
                              (TERMINAL,)).fetchone()
    assert stored == (1,)


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from passerelle.switchd.main import main; main()",
         "--check-config", str(config)],
        capture_output=True, text=True, timeout=60, check=False)


def test_check_config_names_overlapping_and_unreachable_routes(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text("""
[[route]]
name = "cb"
applications = ["CBEMV", "CBCLESS"]
acquirers = ["acq-a"]

[[route]]
name = "chip-only"
applications = ["CBEMV"]
acquirers = ["acq-b"]

[[route]]
name = "half"
applications = ["CBCLESS", "AMEX"]
acquirers = ["acq-b"]
""")
    config = tmp_path / "switchd.toml"
    config.write_text(to_toml({"routes": {
        "path": "routes.toml",  # relative: next to switchd.toml
        "acquirers": [{"name": "acq-a", "host": "127.0.0.1", "port": 1},
                      {"name": "acq-b", "host": "127.0.0.1", "port": 2}]}}))
    run = _check(config)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "route 'chip-only' is unreachable" in run.stderr
    assert "routes 'cb' and 'half' overlap on any BIN" in run.stderr

    routes.write_text('[[route]]\nname = "cb"\nacquirers = ["acq-a", "acq-b"]\n')
    run = _check(config)
    assert run.returncode == 0, run.stderr
    assert "configuration is valid" in run.stdout


def test_check_config_names_a_bad_key_in_every_table(tmp_path: Path) -> None:
    config = tmp_path / "switchd.toml"
    for table, expected in (
            ({"routes": {"acquirers": [{"name": "a", "host": "h", "port": 1, "prot": 2}]}},
             "routes.acquirers[0].prot: unknown key"),
            ({"hsm": {"backend": "soft", "soft": {"keystor": "x"}}},
             "hsm.soft.keystor: unknown key"),
            ({"storage": {"dns": "x"}}, "storage.dns: unknown key"),
            ({"mail": {"port": "smtp"}}, "mail.port: expected int"),
            ({"branding": {"colour": "red"}}, "branding.colour: unknown key"),
            ({"routes": {"acquirers": [{"name": "a", "host": "h", "port": 1,
                                        "mac_key": "mak"}]}},
             "routes.acquirers[0].mac_key: needs an [hsm] table")):
        config.write_text(to_toml(table))
        run = _check(config)
        assert run.returncode == 2, (table, run.stdout)
        assert expected in run.stderr, (table, run.stderr)
