"""conf/switchd.toml, the example operators copy, is complete and accepted as it is."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from passerelle.config import Settings
from passerelle.hsm.settings import HSMSettings
from passerelle.routing.settings import AcquirerSettings

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "switchd.toml"


def test_switchd_check_config_accepts_the_example() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "from passerelle.switchd.main import main; main()",
         "--check-config", str(EXAMPLE)],
        capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"switchd: {EXAMPLE}: configuration is valid"


def test_the_example_shows_every_section_and_every_acquirer_setting() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    sections = {field.encode_name for field in msgspec.structs.fields(Settings)}
    assert set(raw) == sections | {"telecollecte"}
    assert set(raw["listeners"]) == {"xot", "cbcom", "cbcom-tls", "iso"}
    first = raw["routes"]["acquirers"][0]
    acquirer_keys = {f.name for f in msgspec.structs.fields(AcquirerSettings)}
    commented = {"tls_ca", "tls_cert", "tls_key", "tls_server_name"}
    assert acquirer_keys - commented <= set(first)
    assert set(raw["routes"]) >= {"path", "acquirers", "authorization", "saf", "authlog"}
    assert set(raw["hsm"]) >= {f.name for f in msgspec.structs.fields(HSMSettings)} - {
        "data_backend"}
