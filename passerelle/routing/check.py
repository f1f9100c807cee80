"""What `switchd --check-config` asks of routing: settings and route table, as messages.

An empty list means the `[routes]` table and the routes file it names are sound; otherwise
each message names the key or the route to fix.
"""

from __future__ import annotations

from typing import Any

from passerelle.routing.errors import RoutingError
from passerelle.routing.settings import routing_settings
from passerelle.routing.table import check_routes


def check_config(routes_table: dict[str, Any]) -> list[str]:
    """Problems of the `[routes]` table of switchd.toml and of its routes file."""
    try:
        settings = routing_settings(routes_table)
    except RoutingError as error:
        return [str(error)]
    problems = []
    for acquirer in settings.acquirers:
        if acquirer.reconnect_min > acquirer.reconnect_max:
            problems.append(f"routes.acquirers ({acquirer.name}): reconnect_min is above "
                            "reconnect_max")
        if acquirer.response_timeout >= settings.authorization.deadline:
            problems.append(f"routes.acquirers ({acquirer.name}): response_timeout "
                            f"{acquirer.response_timeout} s leaves no time for failover before "
                            f"the {settings.authorization.deadline} s deadline")
    names = [a.name for a in settings.acquirers]
    return problems + check_routes(settings.path, names)
