"""A real SMTP server on loopback (aiosmtpd) for the mail tests, with scripted refusals.

Addresses starting with `refused` get a permanent 550 on RCPT; addresses starting with
`greylist` get a temporary 451 the first time, then are accepted; `fail_data_once` makes
the first DATA answer 421. The port is chosen by the OS.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Recorder:
    """Keeps every message accepted, and answers RCPT/DATA as scripted."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.greylisted: set[str] = set()
        self.fail_data_once = False
        self.rcpt_attempts: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        self.rcpt_attempts.append(address)
        if address.startswith("refused"):
            return "550 5.1.1 mailbox unavailable"
        if address.startswith("greylist") and address not in self.greylisted:
            self.greylisted.add(address)
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.fail_data_once:
            self.fail_data_once = False
            return "421 4.3.2 service busy, try later"
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted"


class _Controller(Controller):
    def _trigger_server(self) -> None:  # learn the OS-chosen port before connecting
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Login:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == self.user
              and auth_data.password == self.password)
        return AuthResult(success=ok, handled=False)


@contextlib.contextmanager
def smtp_server(tls: Literal["starttls", "ssl"] | None = None, cert: Path | None = None,
                key: Path | None = None,
                login: tuple[str, str] | None = None) -> Iterator[tuple[Recorder, int]]:
    """The server; with `tls`, STARTTLS is required or the port speaks TLS at once."""
    recorder = Recorder()
    kwargs: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        if tls == "ssl":
            kwargs["ssl_context"] = context
        else:
            kwargs.update(tls_context=context, require_starttls=True)
    if login is not None:
        # Implicit TLS is TLS too, but aiosmtpd only counts STARTTLS as such.
        kwargs.update(authenticator=_Login(*login), auth_require_tls=tls == "starttls",
                      auth_required=True)
    controller = _Controller(recorder, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        yield recorder, controller.port
    finally:
        controller.stop()
