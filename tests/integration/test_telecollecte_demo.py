"""`mpctl demo` end to end, as the README's first command runs it (a tiny fleet):
authorizations through the acquirer simulator, then télécollectes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from passerelle.storage.embedded import EmbeddedPostgres
from tests.integration.telecollecte_helpers import card_numbers_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_mpctl_demo_collects_remises_on_the_embedded_database_and_stops(tmp_path: Path
                                                                        ) -> None:
    state = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-c", "from passerelle.cli.main import main; main()", "demo",
         "--terminals", "5", "--days", "2", "--metrics-port", "0", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=200, check=False)

    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    match = re.search(r"(\d+) remises \((\d+) transactions\) acknowledged .*; 0 not", out)
    assert match, out
    stored = re.findall(r"^  (CBEMV|CBCLESS|AMEX|CONECS)\s+(\d+)\s+(\d+)", out, re.MULTILINE)
    assert sum(int(n) for _, n, _ in stored) == int(match[1])  # every one is in PostgreSQL
    assert sum(int(t) for _, _, t in stored) == int(match[2])
    assert "metrics" in out and "mpctl" in out and "db retention" in out
    assert "stopping switchd" in out
    # Authorizations first: every terminal's payments approved, one declined (51).
    auths = re.search(r"(\d+) authorizations in .* (\d+) approved, 1 declined", out)
    assert auths and int(auths[1]) == int(auths[2]) + 1 == 5 * 2 + 1, out
    # Everything stopped: no postmaster left on the demo's data directory.
    assert not (state / "pgdata" / "postmaster.pid").exists()
    log = (state / "switchd.log").read_text()
    assert "telecollecte.remise_stored" in log
    assert card_numbers_in(log) == []
    # The first command it points at works on what the demo stored.
    remises = subprocess.run(
        [sys.executable, "-c", "from passerelle.cli.main import main; main()", "remises",
         "--state-dir", str(state), "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert remises.returncode == 0, remises.stderr
    assert "TPE00001" in remises.stdout
    # Every authorization is in the `authorizations` table, masked and HMACed.
    server = EmbeddedPostgres(state)
    try:
        with psycopg.connect(server.start()) as conn:
            rows = conn.execute(
                "SELECT response_code, acquirer, pan_masked, pan_hmac IS NOT NULL"
                " FROM authorizations").fetchall()
    finally:
        server.stop()
    assert sorted(code for code, *_ in rows) == ["00"] * 10 + ["51"]
    assert {acquirer for _, acquirer, _, _ in rows} == {"demo-acquirer"}
    assert all("*" in masked and hashed for _, _, masked, hashed in rows)
