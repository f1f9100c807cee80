"""A whole authorization stack in-process: acquirer simulators, switchd, terminals.

`auth_stack` starts one simulator per acquirer on a real socket, writes a routes file,
builds the dialogue's services (with PostgreSQL when a DSN is given: directory, SAF, log)
and a `Daemon` with only the cbcom listener. Terminals dial it through the real CBCOM stack.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.config import parse_config
from passerelle.routing.settings import routing_settings
from passerelle.sim.acquirer import AcquirerSimulator, Rules
from passerelle.storage.db import open_pool
from passerelle.storage.fleet import Contract, upsert_contract, upsert_terminal
from passerelle.storage.pan import PanHmacKey
from passerelle.storage.saf import AesGcmSealer
from passerelle.switchd.authorization import AuthServices, build_services, register
from passerelle.switchd.dispatch import default_registry
from passerelle.switchd.server import Daemon

CB2A = get_profile("cb2a")
PAN_KEY = PanHmacKey(version=1, key=b"k" * 32)
CONTRACT = "1234567"
TERMINAL = "TPE00001"
ROUTES = """
[[route]]
name = "default"
acquirers = ["acq-a", "acq-b"]
"""


def luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        candidate = prefix + check
        total = 0
        for index, char in enumerate(reversed(candidate)):
            value = int(char) * (2 if index % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


PAN = luhn_complete("497010123456789")


def auth_request(*, stan: int = 1, amount: int = 1500, pan: str = PAN, expiry: str = "3012",
                 terminal: str = TERMINAL, contract: str = CONTRACT, currency: str = "978",
                 when: str = "0124163700", chip: bool = True) -> bytes:
    """A CB2A 0100 shaped like the 0100-emv vector."""
    values: dict[int, Any] = {
        2: pan, 3: "000000", 4: f"{amount:012d}", 11: f"{stan % 1_000_000:06d}",
        12: when[4:], 13: when[:4], 14: expiry, 18: "5411", 22: "051" if chip else "022",
        25: "00", 32: "49730030003", 37: f"{stan:012d}", 41: terminal,
        42: contract.ljust(15), 49: currency,
    }
    if chip:
        values[55] = (("9F06", bytes.fromhex("A0000000421010")),
                      ("9F26", bytes.fromhex("93D1A69155ACA8CD")), ("9F27", b"\x80"))
        values[59] = (("0101", b"\x15\x10"), ("0102", b"\x11"))
    return encode(CB2A, "0100", values)


def answer_of(data: bytes) -> Message:
    return Message.parse(data, CB2A)


def setup_directory(dsn: str, terminals: tuple[str, ...] = (TERMINAL,)) -> None:
    with psycopg.connect(dsn) as conn:
        contract_id = upsert_contract(conn, Contract(
            contract_number=CONTRACT, application="CBEMV", bank_code="30004"))
        for serial in terminals:
            upsert_terminal(conn, serial, contract_id, maker="Ingenico", itp="ITP01")
        conn.commit()


@dataclass
class Stack:
    daemon: Daemon
    services: AuthServices
    sims: dict[str, AcquirerSimulator]
    routes: Path

    @property
    def port(self) -> int:
        return self.daemon.listeners["cbcom"].port


def acquirer_table(name: str, port: int, **extra: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": name, "host": "127.0.0.1", "port": port, "response_timeout": 0.5,
        "reconnect_min": 0.05, "reconnect_max": 0.2, "connect_timeout": 0.5,
        "floor_limits": [{"amount": 3000}], "echo_interval": 30.0,
    }
    table.update(extra)
    return table


@contextlib.asynccontextmanager
async def auth_stack(tmp: Path, *, rules: dict[str, Rules] | None = None,
                     profiles: dict[str, str] | None = None, dsn: str | None = None,
                     routes: str = ROUTES, deadline: float = 2.0,
                     acquirer_extra: dict[str, Any] | None = None,
                     saf_interval: float = 0.05,
                     terminals: tuple[str, ...] = (TERMINAL,),
                     shared_sims: dict[str, AcquirerSimulator] | None = None,
                     saf_key: bytes | None = None,
                     flush_interval: float = 0.05) -> AsyncIterator[Stack]:
    """`shared_sims` (started and stopped by the caller) and `saf_key` let two stacks act
    as two switchd nodes of one deployment: same acquirers, same SAF table and data key."""
    rules = rules or {"acq-a": Rules(decline_above=100_000), "acq-b": Rules()}
    profiles = profiles or {}
    sims = shared_sims or {
        name: AcquirerSimulator(profiles.get(name, "iso93-binary"), 2, rule,
                                first_approval=100001 + 400000 * index)
        for index, (name, rule) in enumerate(rules.items())}
    if shared_sims is None:
        for sim in sims.values():
            await sim.start()
    path = tmp / "routes.toml"
    path.write_text(routes)
    table: dict[str, Any] = {
        "path": str(path),
        "acquirers": [acquirer_table(name, sim.port, profile=sim.profile.name,
                                     **(acquirer_extra or {}))
                      for name, sim in sims.items()],
        "authorization": {"deadline": deadline, "min_attempt": 0.1,
                          "terminals": [{"terminal_id": t, "contract": CONTRACT}
                                        for t in terminals],
                          "contracts": [{"number": CONTRACT}]},
        "saf": {"interval": saf_interval, "backoff_min": 0.05, "backoff_max": 0.2,
                "attempt_timeout": 0.5},
        "authlog": {"flush_interval": flush_interval},
    }
    settings = routing_settings(table)
    pool = open_pool(dsn) if dsn else None
    if pool is not None:
        await pool.open()
    services = build_services(settings, pool=pool,
                              sealer=AesGcmSealer(saf_key or os.urandom(32)), pan_key=PAN_KEY)
    await services.start(wait_links=5.0)
    registry = default_registry()
    register(registry, services)
    daemon = Daemon(parse_config({
        "listeners": {"cbcom": {"host": "127.0.0.1", "port": 0}, "xot": {"enabled": False},
                      "iso": {"enabled": False}},
        "metrics": {"enabled": False}, "cbcom": {"tgr": 30.0}}), registry)
    await daemon.start()
    try:
        yield Stack(daemon, services, sims, path)
    finally:
        await daemon.stop()
        await services.close()
        if shared_sims is None:
            for sim in sims.values():
                await sim.stop()
        if pool is not None:
            await pool.close()
