"""Portal security over real HTTP: scope by URL and form, CSRF, sessions, headers, lock-out.

User A (alice) edits URLs and form fields to reach user B's (bob's) remises, payments,
tickets and exports; every attempt must answer as if the row did not exist.
"""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from passerelle.portal.accounts import HASHER
from passerelle.portal.security import COOKIE, password_fingerprint
from tests.e2e.harness import (
    PASSWORD,
    Client,
    add_user,
    ids_inside,
    ids_outside,
    one,
    portal_config,
    serve,
    world,
)

pytestmark = pytest.mark.integration
__all__ = ["world"]


def _alice(world: dict) -> Client:
    client = Client(world["url"])
    assert client.login("alice@example.fr").status == 303
    return client


def test_user_cannot_reach_another_users_rows_by_url_or_form(world: dict) -> None:
    dsn, alice = world["dsn"], _alice(world)
    remise = ids_outside(dsn, world["alice"], "remises")
    payment = ids_outside(dsn, world["alice"], "transactions")
    for path in (f"/remises/{remise}", f"/paiements/{payment}",
                 f"/paiements/{payment}?copy=merchant"):
        answer = alice.get(path)
        assert answer.status == 404, path
        assert "pas accessible" in answer.text
        assert "<pre" not in answer.text  # no ticket
    # The mail form posted for someone else's row: refused before anything is sent.
    token = alice.csrf("/remises")
    sent_before = len(world["smtp"].messages)
    for path in (f"/remises/{remise}/mail", f"/paiements/{payment}/mail"):
        answer = alice.post(path, {"csrf": token, "recipients": "x@example.fr"})
        assert answer.status == 404, path
    assert len(world["smtp"].messages) == sent_before
    # Searches and exports naming bob's contract find nothing of it.
    bob_contract = world["fleet"].bob_contracts[0]
    days = f"date_from={world['first_day']}&date_to={world['last_day']}"
    page = alice.get(f"/paiements?{days}&contract_number={bob_contract}")
    assert page.status == 200 and "Aucun résultat" in page.text
    export = alice.get(f"/export/paiements?{days}&contract_number={bob_contract}")
    assert export.status == 200
    assert export.text.count("\r\n") == 1  # the header line only
    export = alice.get(f"/export/remises?{days}")
    assert export.text.count("\r\n") > 1
    assert all(bob_contract not in line for line in export.text.splitlines())


def test_own_rows_are_reachable(world: dict) -> None:
    alice = _alice(world)
    remise = ids_inside(world["dsn"], world["alice"], "remises")
    payment = ids_inside(world["dsn"], world["alice"], "transactions")
    assert alice.get(f"/remises/{remise}").status == 200
    assert alice.get(f"/paiements/{payment}").status == 200


def test_posts_without_the_csrf_token_are_refused(world: dict) -> None:
    alice = _alice(world)
    remise = ids_inside(world["dsn"], world["alice"], "remises")
    sent_before = len(world["smtp"].messages)
    for form in ({"recipients": "x@example.fr"},
                 {"recipients": "x@example.fr", "csrf": "forged"}):
        answer = alice.post(f"/remises/{remise}/mail", form)
        assert answer.status == 403
        assert "Formulaire expiré" in answer.text
    assert len(world["smtp"].messages) == sent_before
    assert alice.post("/logout", {}).status == 403
    assert alice.get("/remises").status == 200  # still logged in
    stranger = Client(world["url"])
    stranger.get("/login")
    answer = stranger.post("/login", {"email": "alice@example.fr", "password": PASSWORD})
    assert answer.status == 403
    assert stranger.get("/remises").status == 303  # not logged in


def _forged_cookie(world: dict, payload: dict, age_s: float) -> str:
    class Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age_s)

    serializer = URLSafeTimedSerializer(world["config"].secret, salt="passerelle-portal-session",
                                        signer=Backdated)
    return serializer.dumps(payload)


def test_expired_sessions_redirect_to_login(world: dict) -> None:
    config = world["config"].portal
    stored = one(world["dsn"], "SELECT password_hash FROM users WHERE id = %s", world["alice"])
    payload = {"u": world["alice"], "c": "t", "i": time.time(),
               "f": password_fingerprint(stored)}
    client = Client(world["url"])
    client.cookies[COOKIE] = _forged_cookie(world, payload, 10)
    assert client.get("/remises").status == 200  # a fresh, well-signed session works
    # Idle for longer than session_idle_minutes.
    client.cookies[COOKIE] = _forged_cookie(world, payload, config.session_idle_minutes * 60 + 5)
    answer = client.get("/paiements")
    assert answer.status == 303
    assert answer.header("location") == "/login?next=%2Fpaiements&expired=1"
    assert "Votre session a expiré" in client.get(answer.header("location")).text
    # Active, but started longer ago than session_hours.
    old = {**payload, "i": time.time() - config.session_hours * 3600 - 5}
    client.cookies[COOKIE] = _forged_cookie(world, old, 10)
    assert client.get("/remises").header("location") == "/login?next=%2Fremises&expired=1"


def test_password_change_and_disabling_end_sessions(world: dict) -> None:
    user = add_user(world["dsn"], "carol@example.fr", world["fleet"].alice_contracts)
    client = Client(world["url"])
    assert client.login("carol@example.fr").status == 303
    assert client.get("/remises").status == 200
    with psycopg.connect(world["dsn"]) as conn:
        conn.execute("UPDATE users SET password_hash = %s WHERE id = %s",
                     (HASHER.hash("another password 123"), user))
    assert client.get("/remises").status == 303
    assert client.login("carol@example.fr", "another password 123").status == 303
    with psycopg.connect(world["dsn"]) as conn:
        conn.execute("UPDATE users SET active = false WHERE id = %s", (user,))
    assert client.get("/remises").status == 303
    assert client.login("carol@example.fr", "another password 123").status == 401


def test_security_headers_and_cookie_flags(world: dict) -> None:
    client = Client(world["url"])
    for path in ("/login", "/remises", "/nowhere", "/password/unknown"):
        answer = client.get(path)
        csp = answer.header("content-security-policy") or ""
        assert "frame-ancestors 'none'" in csp, path
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert answer.header("x-content-type-options") == "nosniff"
        assert answer.header("referrer-policy") == "no-referrer"
        assert answer.header("x-frame-options") == "DENY"
    cookie = client.get("/login").header("set-cookie") or ""
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    secure = portal_config(world["dsn"], world["smtp"].port, same_site="strict",
                           cookie_secure=True)
    with serve(secure) as url:
        cookie = Client(url).get("/login").header("set-cookie") or ""
    assert "Secure" in cookie and "SameSite=Strict" in cookie and "HttpOnly" in cookie


def test_login_is_locked_after_repeated_failures_and_audited(world: dict) -> None:
    add_user(world["dsn"], "dave@example.fr", world["fleet"].alice_contracts)
    client = Client(world["url"])
    failures = world["config"].portal.lockout_failures
    for _ in range(failures - 1):
        answer = client.login("dave@example.fr", "wrong password")
        assert answer.status == 401
        assert "mot de passe incorrect" in answer.text
    assert client.login("dave@example.fr", "wrong password").status == 429
    locked = client.login("dave@example.fr")  # the right password, too late
    assert locked.status == 429
    assert "bloquée pendant 15 minutes" in locked.text
    assert client.get("/remises").status == 303
    actions = [r for r in _audit(world["dsn"], "portal:dave@example.fr")]
    assert actions.count("login.failed") == failures
    assert "login.locked" in actions and "login.ok" not in actions
    # The lock ends lockout_minutes after the failures.
    with psycopg.connect(world["dsn"]) as conn:
        conn.execute("UPDATE audit_log SET at = at - %s WHERE actor = %s",
                     (timedelta(minutes=16), "portal:dave@example.fr"))
    assert client.login("dave@example.fr").status == 303
    assert _audit(world["dsn"], "portal:dave@example.fr")[-1] == "login.ok"


def _audit(dsn: str, actor: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT action FROM audit_log WHERE actor = %s ORDER BY id", (actor,)).fetchall()]


def test_unknown_account_costs_a_hash_and_says_nothing_more(world: dict) -> None:
    client = Client(world["url"])
    answer = client.login("nobody@example.fr", "whatever")
    assert answer.status == 401
    assert "Adresse e-mail ou mot de passe incorrect" in answer.text
    assert _audit(world["dsn"], "portal:nobody@example.fr") == ["login.failed"]


def test_next_parameter_is_never_an_open_redirect(world: dict) -> None:
    client = Client(world["url"])
    token = client.csrf("/login")
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        answer = client.post(f"/login?next={target}", {"csrf": token,
                                                        "email": "alice@example.fr",
                                                        "password": PASSWORD})
        assert answer.header("location") == "/remises", target
        client.post("/logout", {"csrf": client.csrf("/remises")})
        token = client.csrf("/login")


def test_payment_reads_run_in_read_only_transactions(world: dict) -> None:
    from passerelle.portal.app import Portal

    portal = Portal(world["config"])
    portal.reader.open()
    try:
        with portal.reader.connection() as conn, pytest.raises(
                psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM transactions")
    finally:
        portal.reader.close()
