"""`mpctl transactions`: search stored transactions with every filter, card number included.

A card number is never sent to the database: it is turned into its keyed HMAC under each
PAN HMAC key version, and the rows keep only the mask (first 6 + last 4). The versions come
from the HSM of `--config` (the `[hsm]` table of switchd.toml: every version it still
holds, i.e. every version still inside retention) or, without an HSM, from `--pan-key`.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable, Sequence
from typing import Any

import click
import msgspec

from passerelle.cli.common import (
    TRANSACTION_FILTERS,
    amount,
    database,
    database_options,
    emit_json,
    errors,
    filter_options,
    paging_options,
    pan_keys_option,
    paris,
    parse_pan_keys,
    print_totals,
    resolve_user,
    table,
    take_filters,
)
from passerelle.storage import queries
from passerelle.storage.filters import (
    FilterError,
    TransactionFilters,
    parse_transaction_filters,
)


def _hsm_digests(config: str, card: str) -> tuple[tuple[int, bytes], ...] | None:
    """The card's digests under every version the configured HSM holds; None without
    an [hsm] table (the --pan-key keys are used then)."""
    try:
        with open(config, "rb") as file:
            table = tomllib.load(file).get("hsm")
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise FilterError("config", f"{config}: cannot read ({error})") from None
    if not table:
        return None
    from passerelle.hsm import HSMError, HSMSettings, open_hsm  # noqa: PLC0415

    async def digests() -> tuple[tuple[int, bytes], ...]:
        hsm = open_hsm(msgspec.convert(table, HSMSettings))
        try:
            return await queries.hsm_card_digests(hsm, card)
        finally:
            await hsm.close()

    try:
        return asyncio.run(digests())
    except (HSMError, msgspec.ValidationError) as error:
        raise FilterError("config", f"[hsm]: {error}") from None


def hsm_config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "config", envvar="PASSERELLE_CONFIG", metavar="FILE",
        type=click.Path(dir_okay=False),
        help="switchd.toml: its [hsm] computes --card digests (or PASSERELLE_CONFIG).")(func)


def card_filters(raw: dict[str, Any], pan_keys: Sequence[str],
                 config: str | None) -> TransactionFilters:
    """Transaction filters, `--card` hashed by the HSM of `config` when it has an [hsm]
    table, else under the `--pan-key` keys (also used by `mpctl export transactions`)."""
    card = raw.get("card_number")
    digests = _hsm_digests(config, card) if card and config else None
    if digests is not None:
        raw = {**raw, "card_number": None}
        return queries.with_card_digests(parse_transaction_filters(raw), digests)
    keys = parse_pan_keys(pan_keys) if card else []
    return parse_transaction_filters(raw, keys)


@click.command(name="transactions")
@filter_options(TRANSACTION_FILTERS)
@pan_keys_option
@hsm_config_option
@paging_options(queries.TRANSACTION_SORTS)
@database_options
@errors
def command(**kwargs: Any) -> None:
    """List transactions matching the filters, newest first, with their totals.

    \b
    Examples:
      mpctl transactions --from 2026-11-20 --to 2026-11-21 --type credit
      mpctl transactions --last4 7893 --amount 12,50
      mpctl transactions --card 4970101234567893 --pan-key 1:9f86... --pan-key 2:60303...
      mpctl transactions --card 4970101234567893 --config /etc/passerelle/switchd.toml
      mpctl transactions --application CONECS --group-by issuer --json
      mpctl transactions --result declined --response-code 51
    """
    filters = card_filters(take_filters(kwargs, TRANSACTION_FILTERS), kwargs["pan_keys"],
                           kwargs["config"])
    with database(kwargs["dsn"], kwargs["state_dir"]) as conn:
        user_id = resolve_user(conn, kwargs["as_user"])
        page = queries.search(conn, filters, user_id=user_id, sort=kwargs["sort"],
                              descending=not kwargs["asc"], limit=kwargs["limit"],
                              cursor=kwargs["cursor"], offset=kwargs["offset"])
        totals = queries.totals(conn, filters, user_id=user_id, group_by=kwargs["group_by"])
    if kwargs["as_json"]:
        emit_json({"rows": page.rows, "next_cursor": page.next_cursor, "totals": totals})
        return
    if not page.rows:
        # An empty table and empty totals read like a failure: say it in words.
        click.echo("No more transactions." if kwargs["cursor"] or kwargs["offset"]
                   else "No transaction matches these filters.")
        return
    table(
        ["ID", "DATE", "TERMINAL", "CONTRACT", "APPLICATION", "REMISE", "TYPE", "RESULT", "RC",
         "CARD", "AMOUNT", "AUTO", "ISSUER"],
        [[r.id, paris(r.tx_at), r.terminal_serial, r.contract_number, r.application,
          r.remise_number, r.direction.upper(), r.result, r.response_code, r.pan_masked,
          amount(r.amount, r.currency), r.authorization_number, r.issuer]
         for r in page.rows],
        right=(0, 5, 10),
    )
    click.echo("")
    print_totals(totals, kwargs["group_by"] is not None)
    if page.next_cursor:
        click.echo(f"\nmore: --cursor {page.next_cursor}")
