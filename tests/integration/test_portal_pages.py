"""Portal pages over real HTTP against generated history: searches, totals, tickets, mail,
export, the password link, and bad input (a message by the field, never a 500)."""

from __future__ import annotations

import html
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from passerelle.storage import queries
from passerelle.storage.filters import RemiseFilters, TransactionFilters
from passerelle.tickets import money, render_payment, render_remise
from tests.e2e.harness import MPCTL, Client, ids_inside, mpctl_add_user, world

pytestmark = pytest.mark.integration
__all__ = ["world"]


@pytest.fixture
def alice(world: dict) -> Client:
    client = Client(world["url"])
    assert client.login("alice@example.fr").status == 303
    return client


def _days(world: dict) -> str:
    return f"date_from={world['first_day']}&date_to={world['last_day']}"


def _field_error(page: str, field: str) -> str:
    found = re.search(rf'<p class="field-error" id="err-{field}" role="alert">([^<]*)</p>', page)
    assert found, f"no error next to {field}"
    return html.unescape(found.group(1))


def _total(page: str) -> str:
    found = re.search(r'<strong class="amount" data-total="978">([^<]*)</strong>', page)
    assert found, "no Montant total"
    return found.group(1)


@pytest.mark.parametrize(("kind", "query", "field", "words"), [
    ("remises", "date_from=2026-13-45", "date_from", "is not a date"),
    ("remises", "date_from=2026-11-10&date_to=2026-11-01", "date_from", "« Au »"),
    ("remises", "amount=douze", "amount", "is not an amount"),
    ("remises", "siret=123", "siret", "SIRET"),
    ("remises", "bank_code=ABCDE", "bank_code", "bank code"),
    ("remises", "remise_number=99999999999", "remise_number", "whole number"),
    ("remises", "transaction_count=-3", "transaction_count", "whole number"),
    ("remises", "amount_min=50&amount_max=10", "amount_min", "« Montant maximum »"),
    ("remises", "status=perhaps", "status", "is not one of"),
    ("transactions", "card=1234x", "card", "malformed card number"),
    ("transactions", "card=4970101234567890", "card", "Luhn"),
    ("transactions", "expiry=13/99", "expiry", "expiry"),
    ("transactions", "response_code=%3F%3F%3F", "response_code", "response code"),
    ("transactions", "direction=sideways", "direction", "is not one of"),
    ("transactions", "label=" + "x" * 80, "label", "too long"),
    ("transactions", "issuer=%01", "issuer", "not printable"),
])
def test_nonsense_filters_get_a_message_next_to_the_field(
        alice: Client, kind: str, query: str, field: str, words: str) -> None:
    path = "/remises" if kind == "remises" else "/paiements"
    answer = alice.get(f"{path}?{query}")
    assert answer.status == 400
    assert words in _field_error(answer.text, field)
    assert f'id="f-{field}"' in answer.text


@pytest.mark.parametrize("query", [
    "sort=DROP+TABLE", "limit=7", "limit=1e9", "cursor=garbage", "dir=sideways&sort=amount",
    "date_from=&date_to=&unknown=1", "cursor=eyJ4Ijo", "amount=%00", "page=%FF%FE",
])
def test_nonsense_paging_and_sorting_never_fail(alice: Client, query: str) -> None:
    for path in ("/remises", "/paiements", "/export/remises", "/export/paiements"):
        answer = alice.get(f"{path}?{query}")
        assert answer.status in (200, 400), (path, query, answer.status)


@pytest.mark.parametrize("path", ["/remises/abc", "/remises/99999999999999999999",
                                  "/paiements/0", "/paiements/-1", "/remises/1/ticket",
                                  "/password/" + "%FF" * 10])
def test_nonsense_paths_are_not_found(alice: Client, path: str) -> None:
    assert alice.get(path).status in (404, 410)


def test_export_window_is_checked_next_to_the_dates(alice: Client) -> None:
    answer = alice.get("/export/paiements?date_from=2026-01-01&date_to=2026-03-01")
    assert answer.status == 400
    assert "at most 31 are allowed" in _field_error(answer.text, "date_to")
    answer = alice.get("/export/remises?date_from=&date_to=")
    assert answer.status == 400
    assert "needs" in _field_error(answer.text, "date_from")


def test_remise_search_totals_match_the_query_layer(world: dict, alice: Client) -> None:
    answer = alice.get(f"/remises?{_days(world)}&limit=25")
    assert answer.status == 200
    filters = RemiseFilters(date_from=world["first_day"], date_to=world["last_day"])
    with psycopg.connect(world["dsn"]) as conn:
        (expected,) = queries.totals(conn, filters, user_id=world["alice"])
    assert _total(answer.text) == money(expected.net_amount, 978)
    assert len(re.findall(r'href="/remises/\d+"', answer.text)) == 25
    assert "Vide" in alice.get(f"/remises?{_days(world)}&limit=200&sort=transaction_count"
                               "&dir=asc").text  # the empty remise is listed


def test_paging_walks_every_row_once(world: dict, alice: Client) -> None:
    path, seen = f"/paiements?{_days(world)}&contract_number=0012345&limit=100", []
    while path:
        page = alice.get(path).text
        seen += re.findall(r'href="/paiements/(\d+)"', page)
        found = re.search(r'href="(/paiements\?[^"]*cursor=[^"]*)" rel="next"', page)
        path = html.unescape(found.group(1)) if found else ""
    filters = TransactionFilters(date_from=world["first_day"], date_to=world["last_day"],
                                 contract_number="0012345")
    with psycopg.connect(world["dsn"]) as conn:
        assert len(seen) == len(set(seen)) == queries.count(conn, filters, world["alice"])


def test_sort_by_amount(world: dict, alice: Client) -> None:
    page = alice.get(f"/paiements?{_days(world)}&sort=amount&dir=asc&limit=50").text
    amounts = [int(a.replace(",", "")) for a in re.findall(
        r'data-label="Montant" class="num">-?([0-9]+,[0-9]{2}) EUR', page)]
    assert len(amounts) == 50 and amounts == sorted(amounts)


def test_meal_vouchers_are_totalled_per_issuer(world: dict) -> None:
    bob = Client(world["url"])
    assert bob.login("bob@example.fr").status == 303
    page = bob.get(f"/paiements?{_days(world)}&application=CONECS").text
    filters = TransactionFilters(date_from=world["first_day"], date_to=world["last_day"],
                                 application="CONECS")
    with psycopg.connect(world["dsn"]) as conn:
        groups = queries.totals(conn, filters, user_id=world["bob"], group_by="issuer")
    assert len(groups) >= 2
    for group in groups:
        row = re.search(rf'<tr data-issuer="{group.group}">(.*?)</tr>', page, re.S)
        assert row and money(group.net_amount, 978) in row.group(1)
    swile = bob.get(f"/paiements?{_days(world)}&application=CONECS&issuer=swile").text
    assert set(re.findall(r'data-issuer="([A-Z]+)"', swile)) == {"SWILE"}


def test_remise_opens_its_payments_and_its_ticket(world: dict, alice: Client) -> None:
    remise_id = ids_inside(world["dsn"], world["alice"], "remises", "transaction_count > 3")
    page = alice.get(f"/remises/{remise_id}").text
    with psycopg.connect(world["dsn"]) as conn:
        remise = queries.get_remise(conn, remise_id)
        city = queries.contract_city(conn, remise.contract_id)
    assert remise is not None
    ticket = re.search(r'<pre class="ticket" id="ticket">(.*?)</pre>', page, re.S)
    assert ticket and html.unescape(ticket.group(1)) == render_remise(remise, city=city)
    payments = re.findall(r'href="/paiements/(\d+)"', page)
    assert len(payments) == remise.transaction_count
    empty = ids_inside(world["dsn"], world["alice"], "remises", "transaction_count = 0")
    assert "Remise vide" in alice.get(f"/remises/{empty}").text


def test_payment_ticket_client_and_merchant_copies(world: dict, alice: Client) -> None:
    payment_id = ids_inside(world["dsn"], world["alice"], "transactions")
    with psycopg.connect(world["dsn"]) as conn:
        payment = queries.get_transaction(conn, payment_id)
        city = queries.contract_city(conn, payment.contract_id)
    for copy in ("client", "merchant"):
        page = alice.get(f"/paiements/{payment_id}?copy={copy}").text
        ticket = re.search(r'<pre class="ticket" id="ticket">(.*?)</pre>', page, re.S)
        assert ticket
        assert html.unescape(ticket.group(1)) == render_payment(payment, city=city, copy=copy)
    client_copy = alice.get(f"/paiements/{payment_id}").text
    assert "############" + payment.pan_masked[-4:] in client_copy


def test_ticket_by_mail_to_five_addresses_at_most(world: dict, alice: Client) -> None:
    smtp = world["smtp"]
    payment_id = ids_inside(world["dsn"], world["alice"], "transactions")
    token = alice.csrf(f"/paiements/{payment_id}")
    six = ",".join(f"p{i}@example.fr" for i in range(6))
    before = len(smtp.messages)
    refused = alice.post(f"/paiements/{payment_id}/mail", {"csrf": token, "recipients": six})
    assert refused.status == 400 and "at most 5" in refused.text
    assert len(smtp.messages) == before
    bad = alice.post(f"/paiements/{payment_id}/mail", {"csrf": token, "recipients": "nope"})
    assert bad.status == 400 and "is not an e-mail address" in bad.text
    answer = alice.post(f"/paiements/{payment_id}/mail",
                        {"csrf": token, "recipients": "a@example.fr; b@example.fr",
                         "copy": "merchant"})
    assert answer.status == 200
    assert "Ticket envoyé à a@example.fr, b@example.fr" in html.unescape(answer.text)
    assert len(smtp.messages) == before + 1
    message = smtp.messages[-1]
    assert smtp.envelopes[-1].rcpt_tos == ["a@example.fr", "b@example.fr"]
    assert "Monétique Sud" in str(message["From"]) or "=?utf-8?" in str(message["From"])
    assert "no-reply@portail.example" in str(message["From"])
    text = message.get_payload()[0].get_payload(decode=True).decode()
    with psycopg.connect(world["dsn"]) as conn:
        payment = queries.get_transaction(conn, payment_id)
        city = queries.contract_city(conn, payment.contract_id)
    assert render_payment(payment, city=city, copy="merchant") in text.replace("\r\n", "\n")
    assert "Exploitant Test SAS" in text


def test_export_is_byte_for_byte_what_mpctl_writes(world: dict, alice: Client,
                                                   tmp_path: Path) -> None:
    last = world["last_day"]
    first = last - timedelta(days=9)
    for kind, path in (("remises", "remises"), ("transactions", "paiements")):
        answer = alice.get(f"/export/{path}?date_from={first}&date_to={last}&application=CBEMV")
        assert answer.status == 200
        assert answer.header("content-type") == "text/csv; charset=utf-8"
        assert f'filename="{kind}-{first}-{last}.csv"' in (answer.header("content-disposition")
                                                             or "")
        target = tmp_path / f"{kind}.csv"
        subprocess.run([MPCTL, "export", kind,
                        "--from", str(first), "--to", str(last), "--application", "CBEMV",
                        "--as-user", "alice@example.fr", "--dsn", world["dsn"],
                        "-o", str(target)], check=True, capture_output=True, timeout=120)
        assert answer.body == target.read_bytes()
        assert answer.body.count(b"\r\n") > 10


def test_password_link_sets_the_password_once(world: dict) -> None:
    created = mpctl_add_user(world["dsn"], "erin@example.fr", "0012345", world["url"])
    link = created["link"]
    path = link.removeprefix(world["url"])
    client = Client(world["url"])
    page = client.get(path)
    assert page.status == 200 and "erin@example.fr" in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    short = client.post(path, {"csrf": token, "password": "short", "confirm": "short"})
    assert short.status == 400 and "Au moins 12 caractères" in html.unescape(short.text)
    differ = client.post(path, {"csrf": token, "password": "a long password 1",
                                "confirm": "a long password 2"})
    assert differ.status == 400 and "différentes" in html.unescape(differ.text)
    done = client.post(path, {"csrf": token, "password": "a long password 1",
                              "confirm": "a long password 1"})
    assert done.status == 303 and done.header("location") == "/remises?welcome=1"
    assert "Mot de passe enregistré" in html.unescape(client.get("/remises?welcome=1").text)
    again = Client(world["url"]).get(path)
    assert again.status == 410 and "déjà servi" in html.unescape(again.text)
    fresh = Client(world["url"])
    assert fresh.login("erin@example.fr", "a long password 1").status == 303


def test_expired_and_unknown_links_explain_themselves(world: dict) -> None:
    created = mpctl_add_user(world["dsn"], "frank@example.fr", "0012345", world["url"])
    path = created["link"].removeprefix(world["url"])
    with psycopg.connect(world["dsn"]) as conn:
        past = datetime.now(UTC) - timedelta(days=4)
        conn.execute("UPDATE password_tokens SET created_at = %s, expires_at = %s"
                     " WHERE user_id = %s", (past, past + timedelta(hours=72), created["id"]))
    client = Client(world["url"])
    expired = client.get(path)
    assert expired.status == 410 and "a expiré le" in html.unescape(expired.text)
    token = client.csrf("/login")
    post = client.post(path, {"csrf": token, "password": "a long password 1",
                              "confirm": "a long password 1"})
    assert post.status == 410
    unknown = client.get("/password/not-a-token")
    assert unknown.status == 410 and "n'est pas valide" in html.unescape(unknown.text)
