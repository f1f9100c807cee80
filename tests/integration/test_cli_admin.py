"""mpctl seed, users, contracts, terminals, status and ticket --mail on a fresh database,
with a real SMTP server on loopback for the mails."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pty
import re
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.integration.cli_helpers import MPCTL, mpctl, one_line_error
from tests.integration.smtp_server import Recorder, smtp_server

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(db_dsn: str) -> str:
    result = mpctl("seed", "--terminals", "3", "--days", "4", "--end", "2026-11-15",
                   "--per-day", "2-5", "--json", dsn=db_dsn)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    assert report["terminals"] == 4 and report["remises"] > 0  # 3 + the replacement
    return db_dsn


@pytest.fixture
def mail_config(tmp_path: Path) -> Iterator[tuple[Recorder, Path]]:
    with smtp_server() as (recorder, port):
        config = tmp_path / "passerelle.toml"
        config.write_text(
            f'[mail]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
            'sender_address = "no-reply@monetipay.example"\nbackoff_s = 0.01\n'
            '[branding]\nname = "MonetiPay"\nmaintainer = "Dupont Monétique"\n',
            encoding="utf-8")
        yield recorder, config


def test_user_lifecycle_with_a_mailed_single_use_link(seeded, mail_config) -> None:
    recorder, config = mail_config
    added = mpctl("users", "add", "marie@example.fr", "--role", "fleet-manager",
                  "--contract", "0012345", "--name", "Marie", "--config", str(config),
                  "--portal-url", "https://portail.example", "--json", dsn=seeded)
    assert added.returncode == 0, added.stderr
    info = json.loads(added.stdout)
    assert info["scope"] == ["0012345/CBCLESS", "0012345/CBEMV"]
    assert info["link"] is None  # mailed, not printed
    ((rcpts, message),) = recorder.messages
    assert rcpts == ["marie@example.fr"]
    assert message["From"] == "MonetiPay <no-reply@monetipay.example>"
    assert "Dupont Monétique" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    token = re.search(r"https://portail\.example/password/(\S+)", body).group(1)
    with psycopg.connect(seeded) as conn:
        role, stored, expires = conn.execute(
            "SELECT u.role, t.token_hash, t.expires_at FROM users u"
            " JOIN password_tokens t ON t.user_id = u.id WHERE u.email = 'marie@example.fr'"
        ).fetchone()
        assert role == "fleet"
        assert bytes(stored) == hashlib.sha256(token.encode()).digest()  # only the hash
        assert token.encode() not in bytes(stored)
        assert timedelta(hours=71, minutes=59) < expires - datetime.now(UTC) <= timedelta(
            hours=72)
        audit = conn.execute("SELECT action FROM audit_log ORDER BY id").fetchall()
        assert audit == [("user.add",)]

    listed = json.loads(mpctl("users", "list", "--json", dsn=seeded).stdout)
    assert [(u["email"], u["role"], u["active"]) for u in listed] == [
        ("marie@example.fr", "fleet-manager", True)]

    scoped = mpctl("users", "scope", "marie@example.fr", "--remove", "0012345/CBCLESS",
                   "--add", "0117074/CBEMV", dsn=seeded)
    assert scoped.returncode == 0, scoped.stderr
    assert scoped.stdout.strip() == "marie@example.fr: 0012345/CBEMV, 0117074/CBEMV"
    remises = json.loads(mpctl("remises", "--as-user", "marie@example.fr", "--json",
                               "--limit", "500", dsn=seeded).stdout)["rows"]
    assert remises and {(r["contract_number"], r["application"]) for r in remises} <= {
        ("0012345", "CBEMV"), ("0117074", "CBEMV")}

    disabled = mpctl("users", "disable", "marie@example.fr", dsn=seeded)
    assert disabled.returncode == 0
    after = json.loads(mpctl("remises", "--as-user", "marie@example.fr", "--json",
                             dsn=seeded).stdout)
    assert after["rows"] == []
    with psycopg.connect(seeded) as conn:
        assert conn.execute("SELECT used_at IS NOT NULL FROM password_tokens").fetchone() == (
            True,)


def test_user_add_refusals(seeded) -> None:
    no_scope = mpctl("users", "add", "a@example.fr", "--role", "merchant", "--no-mail",
                     dsn=seeded)
    assert no_scope.returncode == 2 and "--contract" in one_line_error(no_scope)
    bad_contract = mpctl("users", "add", "a@example.fr", "--role", "merchant", "--contract",
                         "424242", "--no-mail", dsn=seeded)
    assert bad_contract.returncode == 1
    assert one_line_error(bad_contract) == "error: --contract: no contract '424242'"
    bad_email = mpctl("users", "add", "not-an-email", "--role", "finance", "--contract",
                      "0012345", "--no-mail", dsn=seeded)
    assert bad_email.returncode == 2 and "EMAIL" in one_line_error(bad_email)
    printed = mpctl("users", "add", "b@example.fr", "--role", "finance", "--contract",
                    "0012345", "--no-mail", dsn=seeded)
    assert printed.returncode == 0 and "/password/" in printed.stdout
    again = mpctl("users", "add", "B@example.fr", "--role", "finance", "--contract",
                  "0012345", "--no-mail", dsn=seeded)
    assert again.returncode == 2 and "already exists" in again.stderr
    unknown = mpctl("users", "disable", "ghost@example.fr", dsn=seeded)
    assert unknown.returncode == 1 and one_line_error(unknown) == (
        "error: no user 'ghost@example.fr'")


def test_contracts_and_terminals_move_keeps_history(seeded) -> None:
    added = mpctl("contracts", "add", "0000777", "--application", "cbemv", "--bank-code",
                  "30004", "--rang", "004", "--trade-name", "Le Nouveau", "--city", "Brest",
                  dsn=seeded)
    assert added.returncode == 0, added.stderr
    listed = json.loads(mpctl("contracts", "list", "--number", "0000777", "--json",
                              dsn=seeded).stdout)
    assert [(c["application"], c["city"], c["rang"]) for c in listed] == [
        ("CBEMV", "Brest", "004")]
    bad = mpctl("contracts", "add", "1", "--application", "CBEMV", "--bank-code", "300",
                dsn=seeded)
    assert bad.returncode == 2 and one_line_error(bad) == (
        "error: --bank-code: '300' is not 5 digits")

    before = json.loads(mpctl("remises", "--terminal", "ING0100000", "--json", "--limit",
                              "500", dsn=seeded).stdout)["rows"]
    moved = mpctl("terminals", "move", "ING0100000", "--contract", "0000777", dsn=seeded)
    assert moved.returncode == 0, moved.stderr
    assert "stay under the contract they were collected on" in moved.stdout
    after = json.loads(mpctl("remises", "--terminal", "ING0100000", "--json", "--limit",
                             "500", dsn=seeded).stdout)["rows"]
    assert after == before  # history still grouped under 0012345
    assert {r["contract_number"] for r in after} == {"0012345"}
    terminals = json.loads(mpctl("terminals", "list", "--contract", "0000777", "--json",
                                 dsn=seeded).stdout)
    assert [t["serial"] for t in terminals] == ["ING0100000"]
    with psycopg.connect(seeded) as conn:
        history = conn.execute(
            "SELECT c.contract_number, tc.valid_to IS NULL FROM terminal_contracts tc"
            " JOIN terminals t ON t.id = tc.terminal_id JOIN contracts c"
            " ON c.id = tc.contract_id WHERE t.serial = 'ING0100000'"
            " ORDER BY tc.valid_from").fetchall()
        assert history == [("0012345", False), ("0000777", True)]

    new = mpctl("terminals", "add", "ING0199999", "--contract", "0000777", "--maker",
                "Ingenico", dsn=seeded)
    assert new.returncode == 0, new.stderr
    dup = mpctl("terminals", "add", "ING0199999", "--contract", "0000777", dsn=seeded)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    ghost = mpctl("terminals", "move", "NOPE", "--contract", "0000777", dsn=seeded)
    assert ghost.returncode == 1 and one_line_error(ghost) == "error: no terminal NOPE"
    nowhere = mpctl("terminals", "move", "ING0199999", "--contract", "999", dsn=seeded)
    assert nowhere.returncode == 1 and "no contract 999/CBEMV" in nowhere.stderr


def test_status_reports_database_saf_spool_and_silent_terminals(seeded, tmp_path) -> None:
    state = tmp_path / "state"
    (state / "spool").mkdir(parents=True)
    result = mpctl("status", "--state-dir", str(state), "--json", dsn=seeded)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    db = report["database"]
    assert db["reachable"] and db["saf"] == {}
    assert report["spool"]["records"] == 0
    # The history ended on 2026-11-15, so no terminal called "yesterday".
    assert sorted(db["silent_yesterday"]) == sorted(t["serial"] for t in db["terminals"])
    assert all(t["last_collected_at"] for t in db["terminals"])
    human = mpctl("status", "--state-dir", str(state), dsn=seeded)
    assert "database   reachable" in human.stdout and "did not call yesterday" in human.stdout
    down = mpctl("status", "--state-dir", str(state), "--dsn",
                 "host=127.0.0.1 port=1 user=nobody connect_timeout=2", "--metrics-url",
                 "http://127.0.0.1:1/metrics")
    assert down.returncode == 1
    assert "UNREACHABLE" in down.stdout and "Traceback" not in down.stderr


def test_ticket_mail_and_its_limits(seeded, mail_config) -> None:
    recorder, config = mail_config
    tx = json.loads(mpctl("transactions", "--type", "debit", "--result", "approved",
                          "--limit", "1", "--json", dsn=seeded).stdout)["rows"][0]
    printed = mpctl("ticket", "payment", str(tx["id"]), dsn=seeded).stdout
    sent = mpctl("ticket", "payment", str(tx["id"]), "--mail", "a@example.fr,b@example.fr",
                 "--config", str(config), dsn=seeded)
    assert sent.returncode == 0, sent.stderr
    ((rcpts, message),) = recorder.messages
    assert rcpts == ["a@example.fr", "b@example.fr"]
    assert message["Subject"].startswith("Ticket de paiement du ")
    assert printed in message.get_body(("plain",)).get_content().replace("\r\n", "\n")

    six = ",".join(f"{c}@example.fr" for c in "abcdef")
    refused = mpctl("ticket", "payment", str(tx["id"]), "--mail", six, "--config",
                    str(config), dsn=seeded)
    assert refused.returncode == 2 and refused.stdout == ""
    assert one_line_error(refused) == ("error: --mail: at most 5 addresses per mail, got 6 "
                                       "(f@example.fr and after are refused)")
    assert len(recorder.messages) == 1  # nothing more was sent

    partly = mpctl("ticket", "remise", str(tx["remise_id"]), "--mail",
                   "ok@example.fr,refused@example.fr", "--config", str(config), dsn=seeded)
    assert partly.returncode == 1
    assert "error: refused@example.fr refused: 550 5.1.1 mailbox unavailable" in (
        partly.stderr)
    assert "mailed to ok@example.fr" in partly.stderr
    assert recorder.messages[-1][0] == ["ok@example.fr"]


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """A real HTTP server answering /metrics in the Prometheus text format."""
    body = (b"# TYPE passerelle_saf_depth gauge\npasserelle_saf_depth 0\n"
            b'switchd_connections_open{listener="xot"} 3.0\n'
            b'passerelle_acquirer_link_state{acquirer="bnp",state="up"} 1.0\n'
            b'passerelle_acquirer_link_state{acquirer="bnp",state="down"} 0.0\n'
            b'passerelle_acquirer_link_state{acquirer="amex",state="reconnecting"} 1.0\n')

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_status_reads_the_daemon_metrics(seeded, metrics_url, tmp_path) -> None:
    result = mpctl("status", "--state-dir", str(tmp_path), "--metrics-url", metrics_url,
                   "--json", dsn=seeded)
    assert result.returncode == 0, result.stderr
    daemon = json.loads(result.stdout)["daemon"]
    assert daemon["reachable"]
    assert daemon["links"] == {"bnp": "up", "amex": "reconnecting"}
    assert daemon["connections_open"] == {"xot": 3.0}
    human = mpctl("status", "--state-dir", str(tmp_path), "--metrics-url", metrics_url,
                  dsn=seeded).stdout
    assert "links      amex: reconnecting, bnp: up" in human
    assert "terminals  xot: 3 connected" in human


def test_export_shows_a_progress_bar_only_on_a_terminal(seeded, tmp_path) -> None:
    main, side = pty.openpty()
    try:
        out = tmp_path / "tx.csv"
        process = subprocess.run(
            [MPCTL, "export", "transactions", "--from", "2026-11-12", "--to", "2026-11-15",
             "-o", str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=side,
            env={**os.environ, "PASSERELLE_DSN": seeded}, timeout=120, check=False)
        os.close(side)
        side = -1
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
        if side != -1:
            os.close(side)
    assert process.returncode == 0
    assert b"exporting transactions" in seen and b"100%" in seen
    plain = mpctl("export", "transactions", "--from", "2026-11-12", "--to", "2026-11-15",
                  "-o", str(tmp_path / "tx2.csv"), dsn=seeded)
    assert "exporting" not in plain.stderr  # not a terminal: no bar
    assert (tmp_path / "tx2.csv").read_bytes() == out.read_bytes()


def test_mail_without_configuration_is_refused_before_any_work(seeded) -> None:
    ticket = mpctl("ticket", "remise", "1", "--mail", "a@example.fr", dsn=seeded)
    assert ticket.returncode == 2 and ticket.stdout == ""
    assert one_line_error(ticket) == (
        "error: --config: sending mail needs the [mail] settings; give --config FILE or "
        "set PASSERELLE_CONFIG")
    user = mpctl("users", "add", "z@example.fr", "--role", "finance", "--contract",
                 "0012345", dsn=seeded)
    assert user.returncode == 2 and "--config" in user.stderr
    with psycopg.connect(seeded) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_status_counts_spooled_records_without_taking_the_journal(seeded, tmp_path) -> None:
    from passerelle.storage.spool import Spool

    spool = Spool(tmp_path / "spool").open()  # held open, as a running switchd holds it
    try:
        spool.append(1, b"remise one")
        spool.append(1, b"remise two")
        result = mpctl("status", "--state-dir", str(tmp_path), "--json", dsn=seeded)
    finally:
        spool.close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spool"]["records"] == 2
