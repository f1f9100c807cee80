"""Test harness of the portal: history database, accounts, SMTP sink, uvicorn in a thread.

Shared by the browser tests (tests/e2e) and the HTTP-level ones
(tests/integration/test_portal_*.py). Everything binds 127.0.0.1 port 0 and stops at the
end of its context: no process, thread or database is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
import uvicorn
from aiosmtpd.smtp import SMTP, Envelope

from passerelle.portal.accounts import HASHER
from passerelle.portal.app import create_app
from passerelle.portal.settings import Config, build_config
from passerelle.sim.history import HISTORY_KEYS, HistorySpec
from passerelle.tickets import PARIS
from tests.integration.history_db import history_database

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "portal"
MPCTL = str(Path(sys.executable).with_name("mpctl"))
PASSWORD = "correct horse battery staple"
# The history ends yesterday, so the portal's default date windows show data.
END = datetime.now(PARIS).date() - timedelta(days=1)
SPEC = HistorySpec(terminals=6, days=20, end=END, seed=1)


class SmtpSink:
    """An SMTP server on loopback (aiosmtpd) that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[Envelope] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.messages.append(message_from_bytes(envelope.content))  # type: ignore[arg-type]
        return "250 OK"

    @contextlib.contextmanager
    def running(self) -> Iterator[SmtpSink]:
        """Serve in a thread of its own: the caller's thread may run another event loop
        (Playwright's sync API does)."""
        thread = threading.Thread(target=self.loop.run_forever, name="smtp-sink", daemon=True)
        thread.start()
        server = asyncio.run_coroutine_threadsafe(
            self.loop.create_server(lambda: SMTP(self), "127.0.0.1", 0), self.loop).result(30)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            asyncio.run_coroutine_threadsafe(server.wait_closed(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(timeout=10)
            self.loop.close()


class _Server(uvicorn.Server):
    """uvicorn that says when it listens (an Event, not a sleep)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.contextmanager
def serve(config: Config) -> Iterator[str]:
    """The portal on 127.0.0.1 (OS-chosen port) in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="portal",
                              daemon=True)
    thread.start()
    try:
        if not server.ready.wait(30):
            raise RuntimeError("the portal did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def portal_config(dsn: str, smtp_port: int, **portal: Any) -> Config:
    """A test deployment: plain http cookies, a loopback SMTP relay, a distinctive brand."""
    return build_config({
        "portal": {"cookie_secure": False, "secret_key": "k" * 40,
                   "primary_color": "#7a1f5c", "accent_color": "#f6e9f1",
                   "pan_keys": [f"{k.version}:{k.key.hex()}" for k in HISTORY_KEYS],
                   **portal},
        "storage": {"dsn": dsn, "pool_max_size": 4},
        "mail": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "attempts": 1,
                 "backoff_s": 0, "sender_address": "no-reply@portail.example"},
        "branding": {"name": "Monétique Sud", "maintainer": "Exploitant Test SAS"},
    })


def contract_ids(dsn: str, numbers: list[str]) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT id FROM contracts WHERE contract_number = ANY(%s) ORDER BY id",
            (numbers,)).fetchall()]


def add_user(dsn: str, email: str, numbers: list[str], role: str = "merchant",
             password: str | None = PASSWORD) -> int:
    """An account with a password (argon2id, as the portal stores it) and a scope."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO users (email, display_name, role, password_hash) VALUES (%s, %s, %s, %s)"
            " RETURNING id", (email, email.split("@", maxsplit=1)[0].capitalize(), role,
                              HASHER.hash(password) if password else None)).fetchone()
        assert row is not None
        for contract_id in contract_ids(dsn, numbers):
            conn.execute("INSERT INTO user_scopes (user_id, contract_id) VALUES (%s, %s)",
                         (row[0], contract_id))
        return row[0]


def mpctl_add_user(dsn: str, email: str, contract: str, portal_url: str) -> dict[str, Any]:
    """`mpctl users add --no-mail --json`: the real command and its real link."""
    out = subprocess.run(
        [MPCTL, "users", "add", email, "--role",
         "merchant", "--contract", contract, "--no-mail", "--json", "--dsn", dsn,
         "--portal-url", portal_url],
        check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


class Fleet:
    """Who is who in the test history (see passerelle.sim.history)."""

    def __init__(self, dsn: str) -> None:
        # merchant 0: the empty remise, the remise with a gap; merchant 1: AMEX and CONECS.
        self.alice_contracts = ["0012345"]
        with psycopg.connect(dsn) as conn:
            merchant1 = conn.execute(
                "SELECT DISTINCT contract_number FROM contracts WHERE merchant_id ="
                " (SELECT id FROM merchants ORDER BY id OFFSET 1 LIMIT 1)").fetchall()
        self.bob_contracts: list[str] = sorted(r[0] for r in merchant1)


@contextlib.contextmanager
def portal_world(pg_dsn: str, template: str) -> Iterator[dict[str, Any]]:
    """History database + accounts alice and bob + SMTP sink + running portal."""
    with history_database(pg_dsn, template, SPEC) as dsn, SmtpSink().running() as smtp:
        fleet = Fleet(dsn)
        alice = add_user(dsn, "alice@example.fr", fleet.alice_contracts)
        bob = add_user(dsn, "bob@example.fr", fleet.bob_contracts, role="fleet")
        config = portal_config(dsn, smtp.port)
        with serve(config) as url:
            yield {"dsn": dsn, "url": url, "smtp": smtp, "fleet": fleet, "alice": alice,
                   "bob": bob, "config": config, "first_day": SPEC.first_day(),
                   "last_day": SPEC.last_day()}


def one(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


class Client:
    """A minimal HTTP client with a cookie jar that never follows redirects, so tests
    see exactly what the portal answers (urllib and http.client only)."""

    def __init__(self, base_url: str) -> None:
        self.host, _, port = base_url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=sent)
            raw = conn.getresponse()
            response = Response(raw.status, raw.getheaders(), raw.read())
        finally:
            conn.close()
        for value in response.all("set-cookie"):
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: dict[str, str], **kwargs: Any) -> Response:
        return self.request("POST", path, form=form, **kwargs)

    def csrf(self, path: str = "/login") -> str:
        """The CSRF token of the forms on `path` (as a browser would read it)."""
        found = re.search(r'name="csrf" value="([^"]+)"', self.get(path).text)
        assert found, f"no CSRF field on {path}"
        return found.group(1)

    def login(self, email: str, password: str = PASSWORD) -> Response:
        token = self.csrf("/login")
        return self.post("/login", {"csrf": token, "email": email, "password": password})


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@pytest.fixture(scope="module")
def world(pg_dsn: str, _migrated_template: str) -> Iterator[dict[str, Any]]:
    """One portal over one history database for a test module (import it to use it)."""
    with portal_world(pg_dsn, _migrated_template) as found:
        yield found


def ids_outside(dsn: str, user_id: int, table: str) -> int:
    """An id of `table` (remises or transactions) that `user_id` must not see."""
    query = (f"SELECT id FROM {table} WHERE contract_id NOT IN"
             " (SELECT contract_id FROM user_scopes WHERE user_id = %s) ORDER BY id LIMIT 1")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (user_id,)).fetchone()
    assert row is not None
    return row[0]


def ids_inside(dsn: str, user_id: int, table: str, where: str = "true") -> int:
    query = (f"SELECT id FROM {table} WHERE contract_id IN"
             f" (SELECT contract_id FROM user_scopes WHERE user_id = %s) AND {where}"
             " ORDER BY id LIMIT 1")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (user_id,)).fetchone()
    assert row is not None
    return row[0]
