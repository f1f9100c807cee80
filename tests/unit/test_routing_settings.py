"""Acquirer settings: floor limits by contract/application/currency, code maps, errors."""

from __future__ import annotations

import pytest

from passerelle.routing.errors import RoutingError
from passerelle.routing.settings import routing_settings


def _settings(**acquirer: object) -> dict[str, object]:
    return {"acquirers": [{"name": "a", "host": "h", "port": 1, **acquirer}]}


def test_the_most_specific_floor_limit_wins() -> None:
    acquirer = routing_settings(_settings(floor_limits=[
        {"amount": 3000},
        {"amount": 1000, "application": "CBCLESS"},
        {"amount": 8000, "contract": "1234567"},
        {"amount": 500, "contract": "1234567", "application": "AMEX"},
        {"amount": 2000, "currency": 840},
    ])).acquirer("a")
    assert acquirer.floor_limit("999", "CBEMV", 978) == 3000
    assert acquirer.floor_limit("999", "CBCLESS", 978) == 1000
    assert acquirer.floor_limit("1234567", "CBCLESS", 978) == 8000
    assert acquirer.floor_limit("1234567", "AMEX", 978) == 500
    assert acquirer.floor_limit("999", "CBEMV", 840) == 2000
    assert acquirer.floor_limit("999", "CBEMV", 826) == 0  # nothing matches: no stand-in


def test_response_codes_default_per_profile_and_override() -> None:
    iso93 = routing_settings(_settings(response_codes={"116": "05"})).acquirer("a")
    assert (iso93.cb_code("000"), iso93.cb_code("116"), iso93.cb_code("555")) == \
        ("00", "05", "05")
    iso87 = routing_settings(_settings(profile="iso87-ascii")).acquirer("a")
    assert iso87.cb_code("51") == "51"


@pytest.mark.parametrize(("table", "message"), [
    ({"acquirers": [{"name": "a", "host": "h", "port": 1}] * 2}, "'a' is defined twice"),
    (_settings(framing=3), "routes: Invalid enum value 3 - at `$.acquirers[0].framing`"),
    (_settings(colour=1), "unknown field `colour` - at `$.acquirers[0]`"),
    ({"authorization": {"deadline": -1}}, "`$.authorization.deadline`"),
])
def test_bad_settings_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(RoutingError, match=message.replace("$", r"\$").replace("[", r"\[")
                       .replace("]", r"\]")):
        routing_settings(table)
