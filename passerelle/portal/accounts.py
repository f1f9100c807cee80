"""Accounts: log-in with lock-out, the single-use password link, the audit log.

These are the only writes the portal makes, and only to `users` (password hash, last
log-in), `password_tokens` (used_at) and `audit_log`; payment data is read through another,
read-only connection pool (see `app.py`).

Lock-out counts the `login.failed` rows of the audit log for the address since its last
successful log-in, within `lockout_minutes`: the count survives restarts and is shared by
every worker, and an attacker cannot reset it by trying another worker.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg_pool import ConnectionPool

from passerelle.portal.security import password_fingerprint

HASHER = PasswordHasher()  # argon2id, the library's current recommended parameters
# Verified when the address is unknown, so that a wrong address costs as much as a wrong
# password and timing does not reveal which accounts exist.
_DUMMY_HASH = HASHER.hash("not a password of anybody")


class User(msgspec.Struct, frozen=True):
    id: int
    email: str
    display_name: str | None
    role: str
    fingerprint: str


class LoginResult(msgspec.Struct, frozen=True):
    user: User | None = None
    locked: bool = False


class TokenState(msgspec.Struct, frozen=True):
    """What a password link is: usable (with its user), or why not."""

    status: str  # ok, unknown, used, expired
    user_id: int | None = None
    email: str | None = None
    expires_at: datetime | None = None


def token_hash(token: str) -> bytes:
    """The database keeps the SHA-256 of a link's token (as `mpctl users add` stores it)."""
    return hashlib.sha256(token.encode()).digest()


def audit(conn: psycopg.Connection, actor: str, action: str, target: str | None, *,
          details: dict[str, Any], ip: str | None) -> None:
    conn.execute("INSERT INTO audit_log (actor, action, target, details, source_ip)"
                 " VALUES (%s, %s, %s, %s, %s)",
                 (actor, action, target, json.dumps(details), ip))


_TOKEN = ("SELECT t.user_id, u.email, t.expires_at, t.used_at, u.active"
          " FROM password_tokens t JOIN users u ON u.id = t.user_id"
          " WHERE t.token_hash = %s AND t.purpose = 'set_password'")
_TOKEN_LOCKED = _TOKEN + " FOR UPDATE OF t"


def _actor(email: str) -> str:
    return f"portal:{email.lower()}"


class Accounts:
    """Account operations on the read-write pool."""

    def __init__(self, pool: ConnectionPool, *, failures: int, minutes: int) -> None:
        self.pool, self.failures, self.minutes = pool, failures, minutes

    def user(self, user_id: int) -> User | None:
        """The active user of a session, None if disabled or gone."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT id, email, display_name, role, password_hash FROM users"
                               " WHERE id = %s AND active", (user_id,)).fetchone()
        if row is None:
            return None
        return User(row[0], row[1], row[2], row[3], password_fingerprint(row[4]))

    def _locked(self, conn: psycopg.Connection, email: str) -> bool:
        row = conn.execute(
            """SELECT count(*) FROM audit_log
                WHERE actor = %(a)s AND action = 'login.failed'
                  AND at > now() - make_interval(mins => %(m)s)
                  AND at > COALESCE((SELECT max(at) FROM audit_log WHERE actor = %(a)s
                                      AND action = 'login.ok'), '-infinity')""",
            {"a": _actor(email), "m": self.minutes}).fetchone()
        return bool(row and row[0] >= self.failures)

    def login(self, email: str, password: str, ip: str | None) -> LoginResult:
        """Check a password; every outcome is written to the audit log."""
        email = email.strip()[:254]
        with self.pool.connection() as conn:
            if self._locked(conn, email):
                audit(conn, _actor(email), "login.locked", email, details={}, ip=ip)
                return LoginResult(locked=True)
            row = conn.execute("SELECT id, password_hash, active FROM users"
                               " WHERE lower(email) = lower(%s)", (email,)).fetchone()
            stored = row[1] if row and row[1] and row[2] else None
            try:
                HASHER.verify(stored or _DUMMY_HASH, password)
                ok = stored is not None
            except (VerificationError, InvalidHashError):
                ok = False
            if not ok or row is None:
                audit(conn, _actor(email), "login.failed", email,
                      details={"reason": "password" if stored else "no active account"}, ip=ip)
                return LoginResult(locked=self._locked(conn, email))
            if HASHER.check_needs_rehash(stored):
                stored = HASHER.hash(password)
                conn.execute("UPDATE users SET password_hash = %s WHERE id = %s",
                             (stored, row[0]))
            conn.execute("UPDATE users SET last_login_at = now() WHERE id = %s", (row[0],))
            audit(conn, _actor(email), "login.ok", email, details={}, ip=ip)
        return LoginResult(user=self.user(row[0]))

    def logout(self, user: User, ip: str | None) -> None:
        with self.pool.connection() as conn:
            audit(conn, _actor(user.email), "logout", user.email, details={}, ip=ip)

    def record(self, user: User, action: str, target: str, details: dict[str, Any],
               ip: str | None) -> None:
        """An audit row for something a user did (export, ticket mail)."""
        with self.pool.connection() as conn:
            audit(conn, _actor(user.email), action, target, details=details, ip=ip)

    def token(self, token: str) -> TokenState:
        with self.pool.connection() as conn:
            return self._token(conn, token, lock=False)

    def _token(self, conn: psycopg.Connection, token: str, *, lock: bool) -> TokenState:
        row = conn.execute(_TOKEN_LOCKED if lock else _TOKEN, (token_hash(token),)).fetchone()
        if row is None or not row[4]:
            return TokenState("unknown")
        if row[3] is not None:
            return TokenState("used", row[0], row[1], row[2])
        if row[2] <= datetime.now(UTC):
            return TokenState("expired", row[0], row[1], row[2])
        return TokenState("ok", row[0], row[1], row[2])

    def set_password(self, token: str, password: str, ip: str | None) -> TokenState:
        """Use a link once: the row is locked, so two tabs cannot both use it."""
        with self.pool.connection() as conn, conn.transaction():
            state = self._token(conn, token, lock=True)
            if state.status != "ok":
                return state
            conn.execute("UPDATE users SET password_hash = %s WHERE id = %s",
                         (HASHER.hash(password), state.user_id))
            conn.execute("UPDATE password_tokens SET used_at = now() WHERE token_hash = %s",
                         (token_hash(token),))
            audit(conn, _actor(state.email or ""), "password.set", state.email,
                  details={}, ip=ip)
        return state
