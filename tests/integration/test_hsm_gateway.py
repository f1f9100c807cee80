"""The gateway with an `[hsm]` (soft backend): versioned PAN HMAC for télécollecte and the
auth log, key rotation picked up on SIGHUP, card search under every version, `mpctl keys
retire` refusing a version still in use, SAF sealed by the HSM data key, PIN blocks
re-enciphered TPK -> ZPK and acquirer messages MACed (a bad MAC counts as no answer)."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from passerelle.cli.main import cli
from passerelle.codecs.iso8583 import Message, encode
from passerelle.config import parse_config
from passerelle.hsm import Algorithm, KeyType, MacAlgorithm, engine, pinblock
from passerelle.hsm.engine import ClearKey
from passerelle.hsm.errors import UnknownKeyError
from passerelle.hsm.keystore import create_kek
from passerelle.hsm.soft import SoftHSM
from passerelle.sim.acquirer import AcquirerSimulator
from passerelle.sim.payshield import PayShieldSimulator
from passerelle.sim.telecollecte import dial, generate_batches, telecollecte
from passerelle.sim.terminal import Terminal
from passerelle.storage import queries
from passerelle.storage.filters import TransactionFilters
from passerelle.switchd.gateway import Gateway, TelecollecteSettings
from tests.integration.auth_helpers import (
    CB2A,
    CONTRACT,
    PAN,
    TERMINAL,
    acquirer_table,
    answer_of,
    auth_request,
    setup_directory,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PIN = "4321"


class MacAcquirer(AcquirerSimulator):
    """An acquirer host that checks our MACs and PIN blocks with its own copies of the
    keys, and MACs its answers (or sends a wrong MAC, `bad_mac`)."""

    def __init__(self, keys: Any, *, bad_mac: bool = False, **kwargs: Any) -> None:
        super().__init__("iso93-binary", **kwargs)
        self.mak = keys["mak"]  # ClearKey
        self.zpk = keys["zpk"]
        self.bad_mac = bad_mac
        self.macs_valid: list[bool] = []
        self.pins: list[str] = []

    def _mac(self, wire: bytes) -> bytes:
        message = Message.parse(wire, self.profile)
        data = message.respond(message.mti, {64: bytes(8)})[:-8]
        return data + engine.generate_mac(self.mak, data, MacAlgorithm.RETAIL, 8)

    def _answer(self, request: Message) -> bytes | None:
        answer = super()._answer(request)
        if answer is None or request.mti[1:] in ("800", "804"):
            return answer
        wire = request.wire
        self.macs_valid.append(64 in request and engine.verify_mac(
            self.mak, wire[:-8], request.get(64), MacAlgorithm.RETAIL))
        if 52 in request:
            pan = str(request.get(2))
            clear = pinblock.decipher(self.zpk.value, request.get(52), pan, 0)
            self.pins.append(pinblock.decode(clear, pan, 0))
        answer = self._mac(answer)
        return answer[:-1] + bytes([answer[-1] ^ 1]) if self.bad_mac else answer


async def make_keys(directory: Path) -> tuple[Path, Path, SoftHSM]:
    keystore, kek = directory / "keystore.json", directory / "kek"
    create_kek(kek)
    hsm = SoftHSM(keystore, kek)
    await hsm.generate_key("pan-hmac", KeyType.PAN_HMAC)
    await hsm.generate_key("saf", KeyType.DATA)
    await hsm.generate_key("tpk", KeyType.PIN, Algorithm.TDES)
    await hsm.generate_key("zpk", KeyType.PIN, Algorithm.TDES)
    await hsm.generate_key("mak", KeyType.MAC, Algorithm.TDES)
    return keystore, kek, hsm


def pin_request(tpk: bytes, stan: int) -> bytes:
    """A chip 0100 with the PIN enciphered under the terminals' TPK (format 0)."""
    request = Message.parse(auth_request(stan=stan, amount=2500), CB2A)
    block = pinblock.encipher(tpk, pinblock.encode(PIN, PAN, 0), PAN, 0)
    values = request.to_dict()
    values[52] = block
    return encode(CB2A, "0100", values)


def settings(dsn: str, state: Path, *, keystore: Path, kek: Path, routes: Path,
             acquirers: list[dict[str, Any]]) -> dict[str, Any]:
    local = {"host": "127.0.0.1", "port": 0}
    return {
        "switchd": {"state_dir": str(state), "drain_timeout": 5.0},
        "listeners": {"xot": dict(local), "cbcom": dict(local), "iso": {"enabled": False}},
        "metrics": {"enabled": False},
        "storage": {"dsn": dsn, "state_dir": str(state), "pool_min_size": 0},
        "hsm": {"backend": "soft", "soft": {"keystore": str(keystore), "kek": str(kek)}},
        "routes": {"path": str(routes), "acquirers": acquirers,
                   "authorization": {"deadline": 3.0, "min_attempt": 0.1},
                   "saf": {"interval": 0.1, "backoff_min": 5.0},
                   "authlog": {"flush_interval": 0.05}},
    }


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_gateway_with_a_soft_hsm(tmp_path: Path, db_dsn: str) -> None:
    setup_directory(db_dsn)
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nname = "all"\nacquirers = ["acq-bad", "acq-good"]\n')
    keystore, kek, keys = asyncio.run(make_keys(tmp_path))
    secured = {"pin_key": "zpk", "mac_key": "mak"}

    async def scenario() -> tuple[bytes, bytes]:
        clear = {name: keys.store.get(name) for name in ("mak", "zpk")}
        good = MacAcquirer(clear)
        bad = MacAcquirer(clear, bad_mac=True, first_approval=700001)
        for sim in (good, bad):
            await sim.start()
        raw = settings(db_dsn, tmp_path / "state", keystore=keystore, kek=kek, routes=routes,
                       acquirers=[acquirer_table("acq-bad", bad.port, **secured),
                                  acquirer_table("acq-good", good.port, **secured)])
        gateway = Gateway(parse_config(raw), TelecollecteSettings(replay_interval=0.2))
        await gateway.start()
        try:
            assert gateway.auth is not None and gateway.daemon is not None
            for link in gateway.auth.links.values():
                assert await link.wait_up(5.0)
            port = gateway.daemon.listeners["cbcom"].port
            async with await Terminal.dial_cbcom("127.0.0.1", port) as tpe:
                answer = answer_of(await tpe.exchange(pin_request(keys.store.get("tpk").value, 1)))
            # acq-bad's answer had a bad MAC: no answer, a reversal queued, acq-good decided.
            assert (answer.get(39), answer.get(38)) == ("00", "100001")
            assert bad.pins == [PIN] and good.pins == [PIN]  # under the ZPK, not the TPK
            assert bad.macs_valid[0] and good.macs_valid == [True]
            registry = gateway.daemon.metrics.registry
            assert registry.get_sample_value("passerelle_acquirer_stray_answers_total",
                                             {"acquirer": "acq-bad", "kind": "bad_mac"}) >= 1

            xot = gateway.daemon.listeners["xot"].port
            rng = random.Random(3)
            first = generate_batches(rng, TERMINAL, CONTRACT, "CBEMV", days=1, per_day=(2, 2))
            first[0].transactions[0] = replace(first[0].transactions[0], pan=PAN)
            assert [r.code for r in await telecollecte(
                lambda: dial("xot", "127.0.0.1", xot), first)] == ["00"]

            # A new PAN HMAC version, picked up on SIGHUP: new rows use it.
            await SoftHSM(keystore, kek).rotate_key("pan-hmac")
            await gateway.daemon.reload()
            second = generate_batches(rng, TERMINAL, CONTRACT, "CBEMV", days=1, per_day=(2, 2),
                                      first_remise=50)
            second[0].transactions[0] = replace(second[0].transactions[0], pan=PAN)
            assert [r.code for r in await telecollecte(
                lambda: dial("xot", "127.0.0.1", xot), second)] == ["00"]
            async with await Terminal.dial_cbcom("127.0.0.1", port) as tpe:
                assert answer_of(await tpe.exchange(auth_request(stan=2))).get(39) == "00"
            assert gateway.hsm is not None
            v1 = await gateway.hsm.pan_hmac(PAN, 1)
            v2 = await gateway.hsm.pan_hmac(PAN, 2)
            digests = await queries.hsm_card_digests(gateway.hsm, PAN)
        finally:
            await gateway.stop()
            for sim in (good, bad):
                await sim.stop()
        assert digests == ((1, v1.digest), (2, v2.digest))
        return v1.digest, v2.digest

    v1, v2 = asyncio.run(asyncio.wait_for(scenario(), 90))
    stored = _rows(db_dsn, "SELECT pan_hmac_key_version, pan_hmac, pan_masked FROM transactions"
                           " ORDER BY pan_hmac_key_version, id")
    assert [r[0] for r in stored] == [1, 1, 2, 2]
    assert (1, v1) in [(r[0], bytes(r[1])) for r in stored]
    assert (2, v2) in [(r[0], bytes(r[1])) for r in stored]
    logged = _rows(db_dsn, "SELECT stan, acquirer, pan_hmac_key_version, pan_hmac"
                           " FROM authorizations ORDER BY stan")
    assert [(r[0], r[1], r[2]) for r in logged] == [("000001", "acq-good", 1),
                                                     ("000002", "acq-good", 2)]
    assert bytes(logged[0][3]) == v1 and bytes(logged[1][3]) == v2
    # acq-bad's reversals wait in the SAF (its answers to them have bad MACs too), sealed
    # under the HSM data key: version 1, no card number readable.
    saf = _rows(db_dsn, "SELECT acquirer, kind, data_key_version, payload_encrypted FROM saf")
    assert [(a, k, v) for a, k, v, _ in saf] == [("acq-bad", "reversal", 1)] * 2
    for *_, payload in saf:
        assert PAN.encode() not in bytes(payload) and bytes.fromhex(PAN) not in bytes(payload)

    # The card search finds the card under both versions.
    with psycopg.connect(db_dsn) as conn:
        page = queries.search(conn, TransactionFilters(card_digests=((1, v1), (2, v2))))
    assert len(page.rows) == 2

    config = tmp_path / "switchd.toml"
    config.write_text(f'[hsm]\nbackend = "soft"\n[hsm.soft]\nkeystore = "{keystore}"\n'
                      f'kek = "{kek}"\n')
    runner = CliRunner()
    found = runner.invoke(cli, ["transactions", "--card", PAN, "--config", str(config),
                                "--dsn", db_dsn, "--json"])
    assert found.exit_code == 0, found.output
    assert found.output.count('"pan_masked"') == 2 and PAN not in found.output
    today = datetime.now(UTC).date()
    exported = runner.invoke(cli, [
        "export", "transactions", "--from", str(today - timedelta(days=2)), "--to",
        str(today + timedelta(days=1)), "--card", PAN, "--config", str(config),
        "--dsn", db_dsn, "-o", "-"])
    assert exported.exit_code == 0, exported.output
    assert exported.output.count(PAN[:6]) == 2 and PAN not in exported.output

    store = ["--keystore", str(keystore), "--kek", str(kek), "--dsn", db_dsn]
    refused = runner.invoke(cli, ["keys", "retire", "pan-hmac", "1", *store])
    assert refused.exit_code == 1
    assert "still used" in refused.output and "transactions" in refused.output
    current = runner.invoke(cli, ["keys", "retire", "pan-hmac", "2", *store])
    assert current.exit_code == 2 and "current version" in current.output
    with psycopg.connect(db_dsn) as conn:  # as if retention had dropped those months
        conn.execute("DELETE FROM transactions WHERE pan_hmac_key_version = 1")
        conn.execute("DELETE FROM authorizations WHERE pan_hmac_key_version = 1")
    retired = runner.invoke(cli, ["keys", "retire", "pan-hmac", "1", *store, "--json"])
    assert retired.exit_code == 0, retired.output
    assert asyncio.run(SoftHSM(keystore, kek).pan_hmac_versions()) == [2]
    found = runner.invoke(cli, ["transactions", "--card", PAN, "--config", str(config),
                                "--dsn", db_dsn, "--json"])
    assert found.exit_code == 0 and found.output.count('"pan_masked"') == 1


def test_pin_translated_and_macs_made_by_a_payshield(tmp_path: Path, db_dsn: str) -> None:
    """backend = payshield (PIN, MAC) with data_backend = soft (PAN HMAC, SAF key)."""
    setup_directory(db_dsn)
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nname = "all"\nacquirers = ["acq"]\n')
    keystore, kek, soft = asyncio.run(make_keys(tmp_path))
    clear = {name: ClearKey(name, kind, Algorithm.TDES, os.urandom(16))
             for name, kind in (("tpk", KeyType.PIN), ("zpk", KeyType.PIN),
                                ("mak", KeyType.MAC))}

    async def scenario() -> None:
        payshield = PayShieldSimulator()
        host, port = await payshield.start()
        acquirer = MacAcquirer(clear)
        await acquirer.start()
        raw = settings(db_dsn, tmp_path / "state", keystore=keystore, kek=kek, routes=routes,
                       acquirers=[acquirer_table("acq", acquirer.port, pin_key="zpk",
                                                 mac_key="mak")])
        raw["hsm"].update(backend="payshield", data_backend="soft", payshield={
            "host": host, "port": port, "keys": {
                name: payshield.wrap_key(key.type, key.algorithm, key.value)
                for name, key in clear.items()}})
        gateway = Gateway(parse_config(raw), TelecollecteSettings())
        await gateway.start()
        try:
            assert gateway.auth is not None and gateway.daemon is not None
            assert await gateway.auth.links["acq"].wait_up(5.0)
            listener = gateway.daemon.listeners["cbcom"].port
            async with await Terminal.dial_cbcom("127.0.0.1", listener) as tpe:
                request = pin_request(clear["tpk"].value, 1)
                answer = answer_of(await tpe.exchange(request))
            assert answer.get(39) == "00"
            assert acquirer.pins == [PIN] and acquirer.macs_valid == [True]
            assert gateway.hsm is not None
            digest = await gateway.hsm.pan_hmac(PAN)
            assert digest == await soft.pan_hmac(PAN)  # the soft data backend's key
        finally:
            await gateway.stop()
            await acquirer.stop()
            await payshield.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert _rows(db_dsn, "SELECT pan_hmac_key_version FROM authorizations") == [(1,)]


@pytest.mark.parametrize(("keys", "acquirer", "missing"), [
    ((("saf", KeyType.DATA),), {}, "pan-hmac"),
    ((("saf", KeyType.DATA), ("pan-hmac", KeyType.PAN_HMAC)), {"mac_key": "mak-typo"},
     "mak-typo"),
    ((("pan-hmac", KeyType.PAN_HMAC),), {}, "saf"),
])
def test_a_missing_key_fails_the_start_and_leaves_nothing_open(
        tmp_path: Path, db_dsn: str, keys: tuple[tuple[str, KeyType], ...],
        acquirer: dict[str, str], missing: str) -> None:
    kek, keystore = tmp_path / "kek", tmp_path / "keystore.json"
    create_kek(kek)
    for name, kind in keys:
        asyncio.run(SoftHSM(keystore, kek).generate_key(name, kind))
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nname = "all"\nacquirers = ["acq"]\n')
    raw = settings(db_dsn, tmp_path / "state", keystore=keystore, kek=kek, routes=routes,
                   acquirers=[acquirer_table("acq", 9, **acquirer)])

    async def scenario() -> None:
        gateway = Gateway(parse_config(raw), TelecollecteSettings())
        with pytest.raises(UnknownKeyError, match=missing):
            await gateway.start()
        assert gateway.storage is None and gateway.hsm is None and gateway.auth is None

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_hsm_that_cannot_hash_refuses_the_file_and_loses_nothing(tmp_path: Path,
                                                                     db_dsn: str) -> None:
    """A keystore reloaded without its PAN HMAC key: 0246 refused with 96, nothing stored;
    the key back (SIGHUP again), the terminal's next call stores the remise once."""
    setup_directory(db_dsn)
    keystore, kek, _ = asyncio.run(make_keys(tmp_path))
    other = tmp_path / "other.json"
    asyncio.run(SoftHSM(other, kek).generate_key("saf", KeyType.DATA))
    good_keys = keystore.read_bytes()
    raw = settings(db_dsn, tmp_path / "state", keystore=keystore, kek=kek,
                   routes=tmp_path / "unused.toml", acquirers=[])
    del raw["routes"]
    batches = generate_batches(random.Random(5), TERMINAL, CONTRACT, "CBEMV", days=1,
                               per_day=(3, 3))

    async def scenario() -> None:
        gateway = Gateway(parse_config(raw), TelecollecteSettings())
        await gateway.start()
        try:
            assert gateway.daemon is not None
            xot = gateway.daemon.listeners["xot"].port
            keystore.write_bytes(other.read_bytes())
            await gateway.daemon.reload()
            refused = await telecollecte(lambda: dial("xot", "127.0.0.1", xot), batches,
                                         attempts=1)
            assert [r.code for r in refused] == [None]  # not acknowledged: call again
            assert gateway.daemon.metrics.registry.get_sample_value(
                "telecollecte_refused_total", {"code": "96"}) == 1
            keystore.write_bytes(good_keys)
            await gateway.daemon.reload()
            stored = await telecollecte(lambda: dial("xot", "127.0.0.1", xot), batches)
            assert [r.code for r in stored] == ["00"]
        finally:
            await gateway.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert _rows(db_dsn, "SELECT count(*), min(pan_hmac_key_version) FROM transactions") == [
        (3, 1)]
