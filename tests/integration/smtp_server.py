"""A real SMTP server on loopback (aiosmtpd) for the mail tests, with scripted refusals.

Addresses starting with `refused` get a permanent 550 on RCPT; addresses starting with
`greylist` get a temporary 451 the first time, then are accepted; `fail_data_once` makes
the first DATA answer 421. The port is chosen by the OS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


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


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[Recorder, int]]:
    recorder = Recorder()
    controller = _Controller(recorder, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        yield recorder, controller.port
    finally:
        controller.stop()
