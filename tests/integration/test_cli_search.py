"""`mpctl remises`, `mpctl transactions` and `mpctl ticket` against generated history."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from passerelle.sim.history import HISTORY_KEYS, KNOWN_PAN
from tests.integration.cli_helpers import mpctl, one_line_error
from tests.integration.history_db import history_database

pytestmark = pytest.mark.integration
PAN_KEYS = " ".join(f"{k.version}:{k.key.hex()}" for k in HISTORY_KEYS)


@pytest.fixture(scope="module")
def dsn(pg_dsn: str, _migrated_template: str) -> Iterator[str]:
    with history_database(pg_dsn, _migrated_template) as value:
        yield value


def test_remises_table_and_json_agree(dsn) -> None:
    table = mpctl("remises", "--contract", "0012345", "--from", "2026-11-10", "--to",
                  "15/11/2026", "--application", "CBEMV", dsn=dsn)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "COLLECTED", "TERMINAL", "CONTRACT"]
    body = [line for line in lines[2:] if line.strip() and "0012345" in line]
    data = json.loads(mpctl("remises", "--contract", "0012345", "--from", "2026-11-10",
                            "--to", "2026-11-15", "--application", "CBEMV", "--json",
                            dsn=dsn).stdout)
    assert len(body) == len(data["rows"]) == 18  # 3 terminals on 0012345, 6 days
    assert {r["contract_number"] for r in data["rows"]} == {"0012345"}
    assert data["rows"][0]["collected_at"] >= data["rows"][-1]["collected_at"]
    (total,) = data["totals"]
    assert total["count"] == 18 and total["currency"] == 978
    assert "15/11/2026" in table.stdout  # Paris dates in the human table
    assert "EUR" in table.stdout


def test_difference_and_empty_remises_are_found(dsn) -> None:
    diff = json.loads(mpctl("remises", "--status", "difference", "--json", dsn=dsn).stdout)
    assert len(diff["rows"]) == 1 and diff["rows"][0]["status"].startswith("ECART")
    empty = json.loads(mpctl("remises", "--count", "0", "--json", dsn=dsn).stdout)
    assert [r["transaction_count"] for r in empty["rows"]] == [0]


def test_transactions_by_card_number_under_both_key_versions(dsn) -> None:
    by_card = mpctl("transactions", "--card", KNOWN_PAN, "--json", "--limit", "500",
                    dsn=dsn, env={"PASSERELLE_PAN_KEYS": PAN_KEYS})
    assert by_card.returncode == 0, by_card.stderr
    rows = json.loads(by_card.stdout)["rows"]
    by_last4 = json.loads(mpctl("transactions", "--last4", KNOWN_PAN[-4:], "--json",
                                "--limit", "500", dsn=dsn).stdout)["rows"]
    assert rows and {r["id"] for r in rows} <= {r["id"] for r in by_last4}
    assert {r["pan_masked"] for r in rows} == {"497010******7893"}
    assert KNOWN_PAN not in by_card.stdout and "pan_hmac" not in by_card.stdout


def test_transactions_grouped_totals_for_meal_vouchers(dsn) -> None:
    result = mpctl("transactions", "--application", "CONECS", "--group-by", "issuer",
                   "--limit", "1", dsn=dsn)
    assert result.returncode == 0
    for issuer in ("SWILE", "EDENRED", "UP", "PLUXEE"):
        assert f"\n{issuer} " in result.stdout
    assert "more: --cursor " in result.stdout


def test_paging_with_the_printed_cursor(dsn) -> None:
    first = json.loads(mpctl("remises", "--limit", "3", "--json", dsn=dsn).stdout)
    second = json.loads(mpctl("remises", "--limit", "3", "--json", "--cursor",
                              first["next_cursor"], dsn=dsn).stdout)
    assert len(second["rows"]) == 3
    assert not {r["id"] for r in first["rows"]} & {r["id"] for r in second["rows"]}


@pytest.mark.parametrize(("args", "message"), [
    (("remises", "--from", "2026-13-01"),
     "error: --from: 2026-13-01 is not a date (YYYY-MM-DD or DD/MM/YYYY)"),
    (("remises", "--from", "2026-11-20", "--to", "2026-11-10"),
     "error: --from: 2026-11-20 is after --to 2026-11-10"),
    (("transactions", "--card", "4970101234567890"),
     "error: --card: malformed card number (fails the Luhn check)"),
    (("transactions", "--card", "12345"),
     "error: --card: malformed card number (12 to 19 digits)"),
    (("transactions", "--amount", "12.345"),
     "error: --amount: 12.345 is not an amount (e.g. 12,50)"),
    (("transactions", "--card", KNOWN_PAN, "--pan-key", "1:zz"),
     "error: --pan-key: PAN HMAC key version 1 is not hexadecimal"),
])
def test_bad_input_is_one_line_naming_the_option_exit_2(dsn, args, message) -> None:
    result = mpctl(*args, dsn=dsn)
    assert result.returncode == 2
    assert one_line_error(result) == message
    assert result.stdout == ""


def test_click_usage_errors_exit_2(dsn) -> None:
    result = mpctl("transactions", "--type", "sideways", dsn=dsn)
    assert result.returncode == 2 and "--type" in result.stderr


def test_ticket_payment_and_remise_print_as_the_terminal_did(dsn) -> None:
    tx = json.loads(mpctl("transactions", "--application", "CONECS", "--type", "debit",
                          "--result", "approved", "--limit", "1", "--json",
                          dsn=dsn).stdout)["rows"][0]
    ticket = mpctl("ticket", "payment", str(tx["id"]), dsn=dsn)
    assert ticket.returncode == 0, ticket.stderr
    lines = ticket.stdout.splitlines()
    assert lines[:2] == ["    TITRE RESTAURANT", "         CONECS"]
    assert tx["issuer"] in lines and "MARSEILLE" in lines
    assert "#" * 12 + tx["pan_masked"][-4:] in lines
    assert tx["pan_masked"] not in ticket.stdout
    assert "TICKET CLIENT" in lines and max(map(len, lines)) <= 24
    merchant = mpctl("ticket", "payment", str(tx["id"]), "--copy", "merchant", dsn=dsn)
    assert tx["pan_masked"] in merchant.stdout
    remise = mpctl("ticket", "remise", "--number", str(tx["remise_number"]), "--terminal",
                   tx["terminal_serial"], "--application", "CONECS", dsn=dsn)
    assert remise.returncode == 0, remise.stderr
    assert remise.stdout.splitlines()[0].strip() == "TELECOLLECTE"
    assert "TRANSMISSION REUSSIE" in remise.stdout


def test_ticket_unknown_or_ambiguous(dsn) -> None:
    unknown = mpctl("ticket", "remise", "999999", dsn=dsn)
    assert unknown.returncode == 1
    assert one_line_error(unknown) == "error: no remise 999999"
    none = mpctl("ticket", "payment", "--auth", "ZZZZZZ", dsn=dsn)
    assert none.returncode == 1 and "no payment matches" in none.stderr
    several = mpctl("ticket", "remise", "--terminal", "ING0100000", "--date", "2026-11-01",
                    dsn=dsn)
    assert several.returncode == 2
    assert one_line_error(several).startswith("error: several remises match (ids ")
    nothing = mpctl("ticket", "payment", dsn=dsn)
    assert nothing.returncode == 2


def test_unknown_user_scope_is_not_found(dsn) -> None:
    result = mpctl("remises", "--as-user", "nobody@example.fr", dsn=dsn)
    assert result.returncode == 1
    assert one_line_error(result) == "error: --as-user: no user 'nobody@example.fr'"


def test_help_has_an_example_on_every_command() -> None:
    for args in (("remises",), ("transactions",), ("ticket",), ("ticket", "remise"),
                 ("ticket", "payment"), ("export",), ("export", "remises"),
                 ("export", "transactions"), ("users",), ("users", "add"), ("users", "list"),
                 ("users", "disable"), ("users", "scope"), ("contracts",),
                 ("contracts", "list"), ("contracts", "add"), ("terminals",),
                 ("terminals", "list"), ("terminals", "add"), ("terminals", "move"),
                 ("status",), ("seed",)):
        result = mpctl(*args, "--help")
        assert result.returncode == 0, args
        assert "Example" in result.stdout and "mpctl " in result.stdout, args


def test_shell_completion_through_click() -> None:
    result = mpctl(env={"_MPCTL_COMPLETE": "bash_complete", "COMP_WORDS": "mpctl tic",
                        "COMP_CWORD": "1"})
    assert result.returncode == 0 and "ticket" in result.stdout
    options = mpctl(env={"_MPCTL_COMPLETE": "bash_complete",
                         "COMP_WORDS": "mpctl transactions --type ", "COMP_CWORD": "3"})
    assert "debit" in options.stdout and "credit" in options.stdout


def test_a_search_that_finds_nothing_says_so(dsn) -> None:
    for command, noun in (("transactions", "transaction"), ("remises", "remise")):
        result = mpctl(command, "--contract", "9999999", dsn=dsn)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"No {noun} matches these filters."
        as_json = json.loads(mpctl(command, "--contract", "9999999", "--json", dsn=dsn).stdout)
        assert as_json["rows"] == [] and as_json["totals"] == []
