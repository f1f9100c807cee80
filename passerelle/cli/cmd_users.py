"""`mpctl users`: portal accounts — add, list, disable, scope.

Roles: merchant, fleet-manager (stored as `fleet`), finance, operator. A user's scope is a
set of contracts: a merchant, fleet manager or finance user sees only those (operators see
everything). Adding a user creates a single-use token valid 72 hours, keeps only its
SHA-256, and mails the link to set the password; `--no-mail` prints the link instead, for
an operator who hands it over another way. Every change is written to the audit log.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg

from passerelle.cli.common import (
    NotFound,
    database,
    database_options,
    emit_json,
    errors,
    fail,
    json_option,
    mail_config_option,
    mail_settings,
    paris,
    table,
)
from passerelle.mail import parse_recipients, send_password_link

TOKEN_HOURS = 72
ROLES = {"merchant": "merchant", "fleet-manager": "fleet", "finance": "finance",
         "operator": "operator"}
ROLE_NAMES = {v: k for k, v in ROLES.items()}


def hash_token(token: str) -> bytes:
    """What the database keeps of a password link: its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).digest()


def _audit(conn: psycopg.Connection, action: str, target: str, details: dict[str, Any]) -> None:
    conn.execute("INSERT INTO audit_log (actor, action, target, details) VALUES"
                 " (%s, %s, %s, %s)", (f"mpctl:{getpass.getuser()}", action, target,
                                       json.dumps(details)))


def _user(conn: psycopg.Connection, who: str) -> tuple[int, str]:
    if who.isdigit():
        row = conn.execute("SELECT id, email FROM users WHERE id = %s", (int(who),)).fetchone()
    else:
        row = conn.execute("SELECT id, email FROM users WHERE lower(email) = lower(%s)",
                           (who,)).fetchone()
    if row is None:
        raise NotFound(f"no user {who!r}")
    return row[0], row[1]


def contract_ids(conn: psycopg.Connection, specs: tuple[str, ...], option: str) -> list[int]:
    """NUMBER (every application of it) or NUMBER/APPLICATION -> contract ids."""
    ids: list[int] = []
    for spec in (s.strip() for item in specs for s in item.split(",")):
        if not spec:
            continue
        number, _, app = spec.partition("/")
        rows = conn.execute(
            "SELECT id FROM contracts WHERE contract_number = %s"
            " AND (%s = '' OR application = upper(%s))", (number, app, app)).fetchall()
        if not rows:
            raise NotFound(f"{option}: no contract {spec!r}")
        ids.extend(r[0] for r in rows)
    return ids


def _scope(conn: psycopg.Connection, user_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT c.contract_number || '/' || c.application FROM user_scopes s"
        " JOIN contracts c ON c.id = s.contract_id WHERE s.user_id = %s ORDER BY 1",
        (user_id,)).fetchall()
    return [r[0] for r in rows]


@click.group(name="users")
def command() -> None:
    """Portal accounts: add, list, disable, scope.

    \b
    Examples:
      mpctl users add marie@example.fr --role merchant --contract 0012345
      mpctl users add compta@example.fr --role finance --contract 0012345,0117074
      mpctl users list
      mpctl users scope marie@example.fr --add 0117074/CBEMV --remove 0012345
      mpctl users disable marie@example.fr
    """


@command.command()
@click.argument("email")
@click.option("--role", required=True, type=click.Choice(sorted(ROLES)),
              help="What the user may do.")
@click.option("--name", "display_name", help="Name shown in the portal.")
@click.option("--contract", "contracts", multiple=True, metavar="NUMBER[/APP]",
              help="Contract in the user's scope (repeat, or comma separated).")
@click.option("--portal-url", envvar="PASSERELLE_PORTAL_URL", default="http://localhost:8080",
              show_default=True, help="Base URL of the portal, for the link.")
@click.option("--no-mail", is_flag=True, help="Print the link instead of mailing it.")
@mail_config_option
@json_option
@database_options
@errors
def add(*, email: str, role: str, display_name: str | None, contracts: tuple[str, ...],
        portal_url: str, no_mail: bool, config_path: str | None, as_json: bool,
        dsn: str | None, state_dir: str) -> None:
    """Create an account and mail it a single-use link (72 hours) to set its password.

    \b
    Example:
      mpctl users add marie@example.fr --role merchant --contract 0012345 --name "Marie D."
    """
    email = parse_recipients(email, limit=1, option="EMAIL")[0]
    if role != "operator" and not contracts:
        raise fail("--contract: a merchant, fleet-manager or finance user needs a scope", 2)
    settings, branding = mail_settings(config_path) if not no_mail else (None, None)
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=TOKEN_HOURS)
    with database(dsn, state_dir) as conn:
        if conn.execute("SELECT 1 FROM users WHERE lower(email) = lower(%s)",
                        (email,)).fetchone():
            raise fail(f"EMAIL: a user {email} already exists", 2)
        ids = contract_ids(conn, contracts, "--contract")
        row = conn.execute(
            "INSERT INTO users (email, display_name, role) VALUES (%s, %s, %s) RETURNING id",
            (email, display_name, ROLES[role])).fetchone()
        assert row is not None
        user_id = row[0]
        for contract_id in dict.fromkeys(ids):
            conn.execute("INSERT INTO user_scopes (user_id, contract_id) VALUES (%s, %s)",
                         (user_id, contract_id))
        conn.execute("INSERT INTO password_tokens (token_hash, user_id, expires_at)"
                     " VALUES (%s, %s, %s)", (hash_token(token), user_id, expires))
        _audit(conn, "user.add", email, {"role": ROLES[role], "contracts": len(ids)})
        conn.commit()
        scope = _scope(conn, user_id)
    link = f"{portal_url.rstrip('/')}/password/{token}"
    delivery = None
    if settings is not None and branding is not None:
        delivery = send_password_link(settings, branding, email, link, TOKEN_HOURS)
    if as_json:
        emit_json({"id": user_id, "email": email, "role": role, "scope": scope,
                   "expires_at": expires, "link": link if no_mail else None,
                   "mail": delivery})
    else:
        click.echo(f"user {user_id} {email} ({role}) created, scope: "
                   f"{', '.join(scope) or 'everything'}")
        if no_mail:
            click.echo(f"password link (single use, until {paris(expires)}): {link}")
        elif delivery is not None and delivery.ok:
            click.echo(f"password link mailed to {email}, valid until {paris(expires)}")
    if delivery is not None and not delivery.ok:
        reason = delivery.refused.get(email) or delivery.error
        raise fail(f"the user exists but the link could not be mailed: {reason}", 1)


@command.command(name="list")
@json_option
@database_options
@errors
def list_users(as_json: bool, dsn: str | None, state_dir: str) -> None:
    """Every account with its role, state and scope.

    \b
    Example:
      mpctl users list --json
    """
    with database(dsn, state_dir) as conn:
        rows = conn.execute(
            """SELECT u.id, u.email, u.display_name, u.role, u.active, u.created_at,
                      u.last_login_at,
                      COALESCE(array_agg(c.contract_number || '/' || c.application
                               ORDER BY c.contract_number, c.application)
                               FILTER (WHERE c.id IS NOT NULL), '{}')
                 FROM users u
                 LEFT JOIN user_scopes s ON s.user_id = u.id
                 LEFT JOIN contracts c ON c.id = s.contract_id
                GROUP BY u.id ORDER BY u.id""").fetchall()
    if as_json:
        emit_json([{"id": r[0], "email": r[1], "name": r[2], "role": ROLE_NAMES[r[3]],
                    "active": r[4], "created_at": r[5], "last_login_at": r[6],
                    "scope": r[7]} for r in rows])
        return
    table(["ID", "EMAIL", "NAME", "ROLE", "ACTIVE", "CREATED", "LAST LOGIN", "SCOPE"],
          [[r[0], r[1], r[2], ROLE_NAMES[r[3]], "yes" if r[4] else "no", paris(r[5]),
            paris(r[6]), ", ".join(r[7]) or ("everything" if r[3] == "operator" else "-")]
           for r in rows], right=(0,))


@command.command()
@click.argument("user")
@json_option
@database_options
@errors
def disable(user: str, as_json: bool, dsn: str | None, state_dir: str) -> None:
    """Disable an account (id or e-mail): no login, no data, unused links void.

    \b
    Example:
      mpctl users disable marie@example.fr
    """
    with database(dsn, state_dir) as conn:
        user_id, email = _user(conn, user)
        conn.execute("UPDATE users SET active = false WHERE id = %s", (user_id,))
        conn.execute("UPDATE password_tokens SET used_at = now()"
                     " WHERE user_id = %s AND used_at IS NULL", (user_id,))
        _audit(conn, "user.disable", email, {})
        conn.commit()
    if as_json:
        emit_json({"id": user_id, "email": email, "active": False})
    else:
        click.echo(f"user {user_id} {email} disabled")


@command.command()
@click.argument("user")
@click.option("--add", "to_add", multiple=True, metavar="NUMBER[/APP]",
              help="Contract to add to the scope.")
@click.option("--remove", "to_remove", multiple=True, metavar="NUMBER[/APP]",
              help="Contract to remove from the scope.")
@click.option("--set", "to_set", metavar="NUMBER[/APP],...",
              help="Replace the whole scope with these contracts.")
@json_option
@database_options
@errors
def scope(*, user: str, to_add: tuple[str, ...], to_remove: tuple[str, ...],
          to_set: str | None, as_json: bool, dsn: str | None, state_dir: str) -> None:
    """Show or change the contracts a user sees.

    \b
    Examples:
      mpctl users scope marie@example.fr
      mpctl users scope marie@example.fr --add 0117074 --remove 0012345/CBCLESS
      mpctl users scope 3 --set 0012345,0117074
    """
    with database(dsn, state_dir) as conn:
        user_id, email = _user(conn, user)
        changed = False
        if to_set is not None:
            ids = contract_ids(conn, (to_set,), "--set")
            conn.execute("DELETE FROM user_scopes WHERE user_id = %s", (user_id,))
            to_add_ids, changed = ids, True
        else:
            to_add_ids = contract_ids(conn, to_add, "--add")
        for contract_id in contract_ids(conn, to_remove, "--remove"):
            conn.execute("DELETE FROM user_scopes WHERE user_id = %s AND contract_id = %s",
                         (user_id, contract_id))
            changed = True
        for contract_id in to_add_ids:
            conn.execute("INSERT INTO user_scopes (user_id, contract_id) VALUES (%s, %s)"
                         " ON CONFLICT DO NOTHING", (user_id, contract_id))
            changed = True
        current = _scope(conn, user_id)
        if changed:
            _audit(conn, "user.scope", email, {"scope": current})
        conn.commit()
    if as_json:
        emit_json({"id": user_id, "email": email, "scope": current})
    else:
        click.echo(f"{email}: {', '.join(current) or 'no contract'}")
