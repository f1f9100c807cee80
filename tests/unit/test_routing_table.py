"""Route table: parsing errors that name the key, longest-prefix matching (checked against a
brute-force model with hypothesis), `check_routes` overlap/unreachable reports, reload,
and the application read from a CB2A 0100."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.codecs.subfields import SUBFIELD_CODECS, SubElementError
from passerelle.routing.application import APPLICATIONS, icc_aid, read_application
from passerelle.routing.errors import RoutingError
from passerelle.routing.table import (
    Route,
    Router,
    RouteTable,
    check_routes,
    check_table,
    parse_routes,
)

CB2A = get_profile("cb2a")
VECTORS = Path("/work/shared/vectors/cb2a")
APPS = sorted(APPLICATIONS)


def _route(index: int, **fields: object) -> dict[str, object]:
    return {"name": f"r{index}", "acquirers": ["a"], **fields}


def test_longest_prefix_then_specificity_then_file_order() -> None:
    routes = parse_routes({"route": [
        _route(0, acquirers=["default"]),
        _route(1, bins=["4"], acquirers=["visa"]),
        _route(2, bins=["497010"], acquirers=["cb-a", "cb-b"]),
        _route(3, bins=["497010"], contracts=["1234567"], acquirers=["special"]),
        _route(4, applications=["AMEX"], acquirers=["amex"]),
    ]})
    table = RouteTable(routes)
    assert table.match("CBEMV", "4970101234567890", "999", 978).acquirers == ("cb-a", "cb-b")
    assert table.match("CBEMV", "4970101234567890", "1234567", 978).name == "r3"
    assert table.match("CBEMV", "4111111111111111", "999", 978).name == "r1"
    assert table.match("AMEX", "374245000000000", "999", 978).name == "r4"
    assert table.match("CBEMV", "5131000000000000", "999", 978).name == "r0"


@pytest.mark.parametrize(("document", "message"), [
    ({"route": [{"acquirers": []}]}, "route[0] (route-1).acquirers: a route needs"),
    ({"route": [_route(0, bins=["49a"])]}, "route[0] (r0).bins: '49a' is not a 1-11"),
    ({"route": [_route(0, applications=["VISA"])]}, "unknown application 'VISA'"),
    ({"route": [_route(0, currencies=[1000])]}, "currencies: expected ISO 4217"),
    ({"route": [_route(0, colour="red")]}, "route[0]: unknown key 'colour'"),
    ({"routes": []}, "unknown top-level key 'routes'"),
])
def test_parse_errors_name_the_entry_and_key(document: dict[str, object], message: str) -> None:
    with pytest.raises(RoutingError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        parse_routes(document)


def test_check_reports_overlap_unreachable_and_unknown_acquirers(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text("""
[[route]]
name = "cb"
bins = ["4970"]
applications = ["CBEMV", "CBCLESS"]
acquirers = ["acq-a"]

[[route]]
name = "cb-emv-only"
bins = ["4970"]
applications = ["CBEMV"]
acquirers = ["acq-b"]

[[route]]
name = "cb-and-vad"
bins = ["4970"]
applications = ["CBCLESS", "CBVAD"]
acquirers = ["acq-b"]

[[route]]
name = "elsewhere"
bins = ["5"]
acquirers = ["nowhere"]
""")
    problems = check_routes(path, ["acq-a", "acq-b"])
    assert problems == [
        "route 'elsewhere': unknown acquirer 'nowhere'",
        "route 'cb-emv-only' is unreachable: earlier routes match everything it matches",
        "routes 'cb' and 'cb-and-vad' overlap on 4970: requests matching both go to 'cb'",
    ]
    assert check_routes(tmp_path / "missing.toml")[0].endswith("No such file or directory")


def test_reload_swaps_the_table_or_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[[route]]\nacquirers = ["a"]\n')
    router = Router(path, ["a", "b"])
    before = router.table
    path.write_text('[[route]]\nacquirers = ["b"]\n')
    assert router.reload().routes[0].acquirers == ("b",)
    path.write_text('[[route]]\nacquirers = ["c"]\n')
    with pytest.raises(RoutingError, match="unknown acquirer 'c'"):
        router.reload()
    assert router.table.routes[0].acquirers == ("b",) and router.table is not before


# -- hypothesis: the indexed matcher agrees with a brute-force reading of the rules --------
_bins = st.lists(st.text("0123456789", min_size=1, max_size=6), max_size=3)
_route_strategy = st.fixed_dictionaries({
    "acquirers": st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
}, optional={
    "bins": _bins,
    "applications": st.lists(st.sampled_from(APPS[:4]), max_size=2, unique=True),
    "contracts": st.lists(st.sampled_from(["111", "222"]), max_size=2, unique=True),
    "currencies": st.lists(st.sampled_from([978, 840]), max_size=2, unique=True),
})


def _brute_force(routes: list[Route], app: str, pan: str, contract: str,
                 currency: int) -> Route | None:
    best: tuple[tuple[int, bool, bool, bool, int], Route] | None = None
    for route in routes:
        if not route.accepts(app, contract, currency):
            continue
        for prefix in route.bins or ("",):
            if pan.startswith(prefix):
                rank = (len(prefix), *route.specificity(), -route.position)
                if best is None or rank > best[0]:
                    best = (rank, route)
    return best[1] if best else None


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(_route_strategy, max_size=8),
       requests=st.lists(st.tuples(st.sampled_from(APPS[:5]),
                                   st.text("0123456789", min_size=12, max_size=19),
                                   st.sampled_from(["111", "222", "333"]),
                                   st.sampled_from([978, 840, 826])), max_size=20))
def test_matcher_agrees_with_brute_force(entries: list[dict[str, object]],
                                         requests: list[tuple[str, str, str, int]]) -> None:
    routes = parse_routes({"route": entries})
    table = RouteTable(routes)
    for app, pan, contract, currency in requests:
        assert table.match(app, pan, contract, currency) == _brute_force(
            routes, app, pan, contract, currency)


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(_route_strategy, max_size=6))
def test_a_route_reported_unreachable_never_wins(entries: list[dict[str, object]]) -> None:
    routes = parse_routes({"route": entries})
    problems = check_table(routes)
    dead = {r.name for r in routes if f"route {r.name!r} is unreachable: earlier" in
            " ".join(problems)}
    table = RouteTable(routes)
    for route in routes:
        if route.name not in dead:
            continue
        for prefix in route.bins or ("",):
            pan = (prefix + "0" * 16)[:16]
            for app in route.applications or APPS[:4]:
                for contract in route.contracts or ("111", "222", "999"):
                    for currency in route.currencies or (978, 840, 1):
                        winner = table.match(app, pan, contract, currency)
                        assert winner is not None and winner.name != route.name


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
def test_arbitrary_documents_are_routes_or_a_routing_error(document: dict[str, object]) -> None:
    try:
        parse_routes({"route": [document]})
    except RoutingError as error:
        assert str(error).startswith("route[0]")


# -- the application of a 0100 ------------------------------------------------------------
def _vector(name: str) -> Message:
    return Message.parse(bytes.fromhex((VECTORS / f"{name}.hex").read_text().strip()), CB2A)


def test_application_from_the_vectors_aid_entry_mode_and_contract() -> None:
    emv, stripe = _vector("0100-emv"), _vector("0100-stripe")
    assert read_application(emv, str(emv.get(2))) == "CBEMV"
    assert read_application(stripe, str(stripe.get(2))) == "CBEMV"
    assert read_application(stripe, str(stripe.get(2)), "PLBS") == "PLBS"

    def made(entry: str, aid: str | None, pan: str) -> Message:
        values: dict[int, object] = {2: pan, 22: entry}
        if aid:
            values[55] = (("9F06", bytes.fromhex(aid)),)
        return Message.parse(encode(CB2A, "0100", values), CB2A)

    assert read_application(made("071", "A0000000421010", "4970"), "4970") == "CBCLESS"
    assert read_application(made("051", "A00000002501", "3742"), "3742") == "AMEX"
    assert read_application(made("071", "A00000002501", "3742"), "3742") == "AMEXCLESS"
    assert read_application(made("010", None, "4970"), "4970") == "CBVAD"
    assert read_application(made("010", None, "3530111122223333"), "3530111122223333") == "JCBVAD"
    assert read_application(made("051", "A0000000651010", "3530"), "3530") == "JCBEMV"
    assert read_application(made("071", "A0000006340101", "5"), "5") == "CONECSLESS"


def test_check_config_reads_the_routes_table_and_its_file(tmp_path: Path) -> None:
    from passerelle.routing.check import check_config

    path = tmp_path / "routes.toml"
    path.write_text('[[route]]\nacquirers = ["a"]\n')
    acquirer = {"name": "a", "host": "h", "port": 1}
    assert check_config({"path": str(path), "acquirers": [acquirer]}) == []
    assert check_config({"path": str(path), "acquirers": [{**acquirer, "port": 0}]})[0] \
        .startswith("routes: Expected `int` >= 1 - at `$.acquirers[0].port`")
    assert check_config({"path": str(path), "acquirers": [
        {**acquirer, "name": "b", "response_timeout": 20.0}]}) == [
        "routes.acquirers (b): response_timeout 20.0 s leaves no time for failover before "
        "the 15.0 s deadline",
        "route 'route-1': unknown acquirer 'a'"]


@given(st.lists(st.tuples(st.sampled_from(["9F06", "004F", "0084", "9F26", "0091", "DF80"]),
                          st.binary(max_size=20)), max_size=6),
       st.integers(0, 200), st.binary(max_size=3))
def test_the_aid_walked_from_the_bytes_is_the_one_the_pairs_give(
        items: list[tuple[str, bytes]], cut: int, tail: bytes) -> None:
    """`icc_aid` reads field 55's bytes as the CB-TLV codec does: well formed exactly when
    the codec decodes them, and then the AID of the first AID tag, as from the pairs."""
    codec = SUBFIELD_CODECS["cb-tlv"]
    body = codec.encode(items)
    body = body[:cut] + tail if cut < len(body) else body
    sound, aid = icc_aid(body)
    try:
        pairs = codec.decode(body)
    except SubElementError:
        assert not sound
        return
    assert sound
    expected = next((value.hex().upper() for tag, value in pairs
                     if tag in ("9F06", "004F", "0084")), None)
    assert aid == expected
