"""Mail: tickets and password links over SMTP, white-label, never a crash.

White-label (DESIGN.md §8): the sender is anonymised — the brand's name over a no-reply
address, never an operator's own mailbox — and the subject carries the maintainer's name
(the company running this gateway), so the cardholder knows who sent it without learning
who pressed the button. Every mail has a text part and an HTML part; a ticket is the very
text that prints, inside a monospace block in HTML.

Delivery: temporary failures (a 4xx reply, a dropped or refused connection, a timeout) are
retried with exponential backoff; a recipient refused for good (5xx on RCPT) is reported
by address while the others still get the mail. `send` returns a `Delivery`, it does not
raise for SMTP trouble: the caller (CLI, portal) reports it.

Settings come from the `[mail]` and `[branding]` tables of the configuration file.
"""

from __future__ import annotations

import html
import re
import smtplib
import ssl
import time
import tomllib
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Annotated, Literal

import msgspec

MAX_RECIPIENTS = 5
_ADDRESS = re.compile(r"^[^@\s,;<>\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$|^[^@\s,;<>\"]+@localhost$")


class MailError(Exception):
    """Mail settings or recipients that cannot be used; the message names which."""


class MailSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[mail]` table: how to reach the SMTP relay."""

    host: str = "localhost"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username: str | None = None
    password: str | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    sender_address: str = "no-reply@localhost"
    attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    backoff_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 2.0
    cafile: str | None = None  # private CA of the relay, else the system's

    def __repr__(self) -> str:  # the password never reaches a log
        return (f"MailSettings(host={self.host!r}, port={self.port}, "
                f"security={self.security!r}, username={self.username!r})")


class Branding(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[branding]` table: whose name the merchant and cardholder see."""

    name: str = "passerelle"  # the brand shown as sender and in the portal
    maintainer: str = ""  # who runs the gateway, carried in subjects
    sender: str | None = None  # display name of the sender, `name` by default


class Delivery(msgspec.Struct):
    """What happened to one mail: who got it, who was refused and why, any failure."""

    accepted: list[str] = msgspec.field(default_factory=list)
    refused: dict[str, str] = msgspec.field(default_factory=dict)
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.refused


def load_settings(path: str | Path | None) -> tuple[MailSettings, Branding]:
    """`[mail]` and `[branding]` of the TOML file at `path` (defaults when None)."""
    if path is None:
        return MailSettings(), Branding()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise MailError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MailError(f"{path}: not valid TOML ({exc})") from None
    out = []
    for table, kind in (("mail", MailSettings), ("branding", Branding)):
        try:
            out.append(msgspec.convert(raw.get(table, {}), kind))
        except msgspec.ValidationError as exc:
            detail = str(exc).replace("$.", f"{table}.").replace("`", "")
            raise MailError(f"{path}: [{table}] {detail}") from None
    return out[0], out[1]  # type: ignore[return-value]


def parse_recipients(text: str, limit: int = MAX_RECIPIENTS, option: str = "--mail") -> list[str]:
    """"a@x,b@y" -> addresses, at most `limit`, each checked; duplicates dropped."""
    found: list[str] = []
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        if not _ADDRESS.match(part):
            raise MailError(f"{option}: {part!r} is not an e-mail address")
        if part.lower() not in (a.lower() for a in found):
            found.append(part)
    if not found:
        raise MailError(f"{option}: no address given")
    if len(found) > limit:
        raise MailError(
            f"{option}: at most {limit} addresses per mail, got {len(found)} "
            f"({found[limit]} and after are refused)"
        )
    return found


def build_message(settings: MailSettings, branding: Branding, recipients: Sequence[str],
                  subject: str, *, text: str, html_body: str) -> EmailMessage:
    """A multipart/alternative message from the anonymised sender."""
    message = EmailMessage()
    message["From"] = formataddr((branding.sender or branding.name, settings.sender_address))
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"{subject} - {branding.maintainer}" if branding.maintainer else subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=settings.sender_address.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html_body, subtype="html")
    return message


def ticket_message(settings: MailSettings, branding: Branding, recipients: Sequence[str],
                   subject: str, ticket: str) -> EmailMessage:
    """A ticket mail: the ticket as it prints, in text and monospace HTML."""
    footer = f"{branding.name}" + (f" - {branding.maintainer}" if branding.maintainer else "")
    text = f"{ticket}\n--\n{footer}\nMessage automatique, merci de ne pas y répondre.\n"
    html_body = (
        "<!DOCTYPE html><html><body>"
        '<pre style="font-family: \'Courier New\', Courier, monospace; font-size: 14px;">'
        f"{html.escape(ticket)}</pre>"
        f"<p style=\"color:#666;font-size:12px\">{html.escape(footer)}<br>"
        "Message automatique, merci de ne pas y répondre.</p></body></html>"
    )
    return build_message(settings, branding, recipients, subject, text=text, html_body=html_body)


def _connect(settings: MailSettings) -> smtplib.SMTP:
    context = ssl.create_default_context(cafile=settings.cafile)
    if settings.security == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port,
                                                timeout=settings.timeout_s, context=context)
    else:
        client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
    try:
        client.ehlo()
        if settings.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if settings.username:
            client.login(settings.username, settings.password or "")
    except BaseException:
        client.close()
        raise
    return client


def _temporary(code: int) -> bool:
    return 400 <= code < 500


def send(settings: MailSettings, message: EmailMessage,
         sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Deliver `message` to its To addresses; retry temporary failures with backoff."""
    pending = [a.strip() for a in str(message["To"]).split(",") if a.strip()]
    delivery = Delivery()
    delay = settings.backoff_s
    while pending and delivery.attempts < settings.attempts:
        if delivery.attempts:
            sleep(delay)
            delay *= 2
        delivery.attempts += 1
        delivery.error = None
        try:
            with _connect(settings) as client:
                refused = client.send_message(message, to_addrs=pending)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
        except smtplib.SMTPResponseException as exc:
            delivery.error = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            if _temporary(exc.smtp_code):
                continue
            return delivery
        except (smtplib.SMTPNotSupportedError, ssl.SSLError) as exc:
            # A relay without STARTTLS/AUTH or with an untrusted certificate: fix settings.
            delivery.error = f"{settings.host}:{settings.port}: {exc}"
            return delivery
        except (smtplib.SMTPException, OSError) as exc:
            delivery.error = f"cannot reach {settings.host}:{settings.port}: {exc}"
            continue
        retry = []
        for address in pending:
            if address not in refused:
                delivery.accepted.append(address)
                continue
            code, reply = refused[address]
            if _temporary(code):
                retry.append(address)
                delivery.error = f"{address}: {code} {_text(reply)}"
            else:
                delivery.refused[address] = f"{code} {_text(reply)}"
        pending = retry
    if pending and delivery.error is None:
        delivery.error = f"gave up after {delivery.attempts} attempts"
    for address in pending:  # still temporary after the last attempt
        delivery.refused.setdefault(address, delivery.error or "not delivered")
    if not pending and delivery.accepted:
        delivery.error = None
    return delivery


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def send_ticket(settings: MailSettings, branding: Branding, recipients: Sequence[str],
                subject: str, ticket: str) -> Delivery:
    """Mail a rendered ticket to up to 5 recipients."""
    if len(recipients) > MAX_RECIPIENTS:
        raise MailError(f"at most {MAX_RECIPIENTS} addresses per mail, got {len(recipients)}")
    return send(settings, ticket_message(settings, branding, recipients, subject, ticket))


def send_password_link(settings: MailSettings, branding: Branding, address: str, link: str,
                       hours: int = 72) -> Delivery:
    """The single-use link a new account sets its password with."""
    text = (
        f"Bonjour,\n\nUn accès au portail {branding.name} a été créé pour vous.\n"
        f"Choisissez votre mot de passe avec ce lien, valable {hours} heures et une seule "
        f"fois :\n\n{link}\n\nMessage automatique, merci de ne pas y répondre.\n"
    )
    html_body = (
        "<!DOCTYPE html><html><body><p>Bonjour,</p>"
        f"<p>Un accès au portail {html.escape(branding.name)} a été créé pour vous.</p>"
        f"<p>Choisissez votre mot de passe avec ce lien, valable {hours} heures et une seule "
        f'fois :</p><p><a href="{html.escape(link, quote=True)}">{html.escape(link)}</a></p>'
        "<p>Message automatique, merci de ne pas y répondre.</p></body></html>"
    )
    message = build_message(settings, branding, [address],
                            f"Votre accès au portail {branding.name}", text=text,
                            html_body=html_body)
    return send(settings, message)
