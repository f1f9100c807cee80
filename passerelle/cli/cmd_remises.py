"""`mpctl remises`: search stored remises (télécollecte batches) with every filter."""

from __future__ import annotations

from typing import Any

import click

from passerelle.cli.common import (
    REMISE_FILTERS,
    amount,
    database,
    database_options,
    emit_json,
    errors,
    filter_options,
    paging_options,
    paris,
    print_totals,
    resolve_user,
    table,
    take_filters,
)
from passerelle.storage import queries
from passerelle.storage.filters import parse_remise_filters


@click.command(name="remises")
@filter_options(REMISE_FILTERS)
@paging_options(queries.REMISE_SORTS)
@database_options
@errors
def command(**kwargs: Any) -> None:
    """List remises matching the filters, newest first, with their totals.

    \b
    Examples:
      mpctl remises --from 2026-11-01 --to 2026-11-21 --contract 0012345
      mpctl remises --terminal ING0100000 --status difference
      mpctl remises --application CONECS --group-by contract --json
      mpctl remises --limit 100 --cursor WyJkYXRlIi...   (next page)
    """
    filters = parse_remise_filters(take_filters(kwargs, REMISE_FILTERS))
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
        click.echo("No more remises." if kwargs["cursor"] or kwargs["offset"]
                   else "No remise matches these filters.")
        return
    table(
        ["ID", "COLLECTED", "TERMINAL", "CONTRACT", "RANG", "APPLICATION", "REMISE", "FILE",
         "TX", "NET", "STATUS"],
        [[r.id, paris(r.collected_at), r.terminal_serial, r.contract_number, r.rang,
          r.application, r.remise_number, r.file_number, r.transaction_count,
          amount(r.net_amount, r.currency), "CORRECTE" if r.is_correct else "ECART"]
         for r in page.rows],
        right=(0, 6, 7, 8, 9),
    )
    click.echo("")
    print_totals(totals, kwargs["group_by"] is not None)
    if page.next_cursor:
        click.echo(f"\nmore: --cursor {page.next_cursor}")

