"""Mail through a real SMTP server on loopback: recipients, white-label headers, parts,
limits, refused and greylisted addresses, an unreachable relay."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import msgspec
import pytest

from passerelle.mail import (
    Branding,
    MailError,
    MailSettings,
    load_settings,
    parse_recipients,
    send_password_link,
    send_ticket,
)
from tests.integration.smtp_server import Recorder, self_signed, smtp_server

pytestmark = pytest.mark.integration

BRAND = Branding(name="MonetiPay", maintainer="Dupont Monétique SAS")
TICKET = "     CARTE BANCAIRE\n          EMV\n############7893\nMONTANT :\n" \
         "               65,47 EUR\nDEBIT\n"


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, MailSettings]]:
    with smtp_server() as (recorder, port):
        yield recorder, MailSettings(host="127.0.0.1", port=port, security="none",
                                     sender_address="no-reply@monetipay.example",
                                     backoff_s=0.01, timeout_s=5)


def test_ticket_mail_reaches_every_recipient_with_white_label_headers(smtp) -> None:
    recorder, settings = smtp
    to = ["a@example.fr", "b@example.fr"]
    delivery = send_ticket(settings, BRAND, to, "Ticket de paiement du 21/11/2026", TICKET)
    assert delivery.ok and delivery.accepted == to and delivery.attempts == 1
    ((rcpts, message),) = recorder.messages
    assert rcpts == to
    assert message["From"] == "MonetiPay <no-reply@monetipay.example>"
    assert message["Subject"] == "Ticket de paiement du 21/11/2026 - Dupont Monétique SAS"
    assert message["To"] == "a@example.fr, b@example.fr"
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = message.get_body(("html",)).get_content()
    assert TICKET in text
    assert "<pre" in html and "monospace" in html
    assert "############7893" in html and "65,47 EUR" in html


def test_a_sixth_address_is_refused_before_anything_is_sent(smtp) -> None:
    recorder, settings = smtp
    with pytest.raises(MailError) as caught:
        parse_recipients("a@x.fr,b@x.fr,c@x.fr,d@x.fr,e@x.fr,f@x.fr")
    assert str(caught.value) == ("--mail: at most 5 addresses per mail, got 6 "
                                 "(f@x.fr and after are refused)")
    with pytest.raises(MailError, match="at most 5"):
        send_ticket(settings, BRAND, [f"{c}@x.fr" for c in "abcdef"], "s", TICKET)
    assert recorder.messages == [] and recorder.rcpt_attempts == []
    assert parse_recipients("a@x.fr; b@x.fr ,A@x.fr") == ["a@x.fr", "b@x.fr"]
    with pytest.raises(MailError, match="'not-an-address' is not an e-mail address"):
        parse_recipients("a@x.fr,not-an-address")


def test_a_permanently_refused_address_is_reported_and_the_others_delivered(smtp) -> None:
    recorder, settings = smtp
    delivery = send_ticket(settings, BRAND, ["ok@example.fr", "refused@example.fr"], "s",
                           TICKET)
    assert not delivery.ok
    assert delivery.accepted == ["ok@example.fr"]
    assert delivery.refused == {"refused@example.fr": "550 5.1.1 mailbox unavailable"}
    assert delivery.attempts == 1  # a 5xx is not retried
    assert [r for r, _ in recorder.messages] == [["ok@example.fr"]]


def test_a_greylisted_address_is_retried_and_delivered(smtp) -> None:
    recorder, settings = smtp
    delivery = send_ticket(settings, BRAND, ["ok@example.fr", "greylist@example.fr"], "s",
                           TICKET)
    assert delivery.ok, delivery
    assert sorted(delivery.accepted) == ["greylist@example.fr", "ok@example.fr"]
    assert delivery.attempts == 2
    # The second attempt went to the greylisted address only: no duplicate for the other.
    assert [r for r, _ in recorder.messages] == [["ok@example.fr"], ["greylist@example.fr"]]


def test_a_temporary_failure_on_data_is_retried(smtp) -> None:
    recorder, settings = smtp
    recorder.fail_data_once = True
    delivery = send_ticket(settings, BRAND, ["ok@example.fr"], "s", TICKET)
    assert delivery.ok and delivery.attempts == 2
    assert len(recorder.messages) == 1


def test_an_unreachable_relay_is_reported_not_raised() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = MailSettings(host="127.0.0.1", port=port, security="none", attempts=2,
                            backoff_s=0.01, timeout_s=2)
    delivery = send_ticket(settings, BRAND, ["a@example.fr"], "s", TICKET)
    assert not delivery.ok and delivery.attempts == 2
    assert delivery.error and "cannot reach 127.0.0.1" in delivery.error
    assert delivery.refused == {"a@example.fr": delivery.error}


def test_password_link_mail(smtp) -> None:
    recorder, settings = smtp
    link = "https://portal.example/password/abc"
    assert send_password_link(settings, BRAND, "new@example.fr", link).ok
    ((_rcpts, message),) = recorder.messages
    assert message["Subject"] == "Votre accès au portail MonetiPay - Dupont Monétique SAS"
    assert link in message.get_body(("plain",)).get_content()
    assert f'href="{link}"' in message.get_body(("html",)).get_content()


def test_settings_come_from_toml_and_errors_name_the_key(tmp_path) -> None:
    good = tmp_path / "ok.toml"
    good.write_text('[mail]\nhost = "smtp.example"\nport = 465\nsecurity = "ssl"\n'
                    'password = "secret"\n[branding]\nname = "MonetiPay"\n'
                    'maintainer = "Dupont"\n', encoding="utf-8")
    settings, branding = load_settings(good)
    assert (settings.host, settings.port, settings.security) == ("smtp.example", 465, "ssl")
    assert branding.maintainer == "Dupont" and "secret" not in repr(settings)
    bad = tmp_path / "bad.toml"
    bad.write_text('[mail]\nport = 70000\n', encoding="utf-8")
    with pytest.raises(MailError, match=r"\[mail\].*mail\.port"):
        load_settings(bad)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_and_authentication(tmp_path, security) -> None:
    cert, key = self_signed(tmp_path)
    with smtp_server(tls=security, cert=cert, key=key,
                     login=("relay", "s3cret")) as (recorder, port):
        settings = MailSettings(host="127.0.0.1", port=port, security=security,
                                username="relay", password="s3cret", cafile=str(cert),
                                backoff_s=0.01, timeout_s=5)
        delivery = send_ticket(settings, BRAND, ["a@example.fr"], "s", TICKET)
        assert delivery.ok, delivery
        assert len(recorder.messages) == 1
        wrong = msgspec.structs.replace(settings, password="nope", attempts=1)
        refused = send_ticket(wrong, BRAND, ["a@example.fr"], "s", TICKET)
        assert not refused.ok and refused.error and refused.error.startswith("535")
        untrusted = msgspec.structs.replace(settings, cafile=None, attempts=1)
        failed = send_ticket(untrusted, BRAND, ["a@example.fr"], "s", TICKET)
        assert not failed.ok and "CERTIFICATE_VERIFY_FAILED" in (failed.error or "")
        assert len(recorder.messages) == 1
