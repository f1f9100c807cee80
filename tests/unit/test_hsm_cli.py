"""`mpctl keys` against a soft keystore in a temp dir, through the real mpctl group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from passerelle.cli.main import cli

KBPK = bytes.fromhex("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6")
MASK = bytes(range(32))
# TR-31:2018 A.7.4: an AES PIN key (KCV 08793E) under KBPK.
BLOCK = (
    "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E"
    "8E31DA05F7425509593D03A457DC34"
)


@pytest.fixture
def mpctl(tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    env = {
        "PASSERELLE_KEYSTORE": str(tmp_path / "ks.json"),
        "PASSERELLE_KEK": str(tmp_path / "kek"),
    }

    def run(*args: str, stdin: str | None = None, code: int = 0) -> str:
        result = runner.invoke(cli, ["keys", *args], env=env, input=stdin)
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_generate_rotate_list(mpctl) -> None:  # type: ignore[no-untyped-def]
    assert "created a new KEK" in mpctl("generate", "pan-hmac", "--type", "pan-hmac")
    mpctl("rotate", "pan-hmac")
    listed = json.loads(mpctl("list", "--json"))
    assert listed[0]["name"] == "pan-hmac"
    assert [v["version"] for v in listed[0]["versions"]] == [1, 2]
    assert all(len(v["kcv"]) == 6 for v in listed[0]["versions"])
    table = mpctl("list")
    assert "2 (current)" in table and "pan-hmac" in table


def test_components_then_tr31_import_never_show_material(mpctl) -> None:  # type: ignore[no-untyped-def]
    first = bytes(a ^ b for a, b in zip(KBPK, MASK, strict=True))
    out = mpctl(
        "import",
        "kbpk",
        "--components",
        "2",
        "--type",
        "kbpk",
        "--algorithm",
        "aes",
        stdin=f"{first.hex()}\n{MASK.hex()}\n",
    )
    out += mpctl("import", "zpk-acq1", "--kbpk", "kbpk", BLOCK)
    info = json.loads(mpctl("list", "--json"))
    zpk = next(k for k in info if k["name"] == "zpk-acq1")
    assert (zpk["type"], zpk["algorithm"], zpk["length"]) == ("pin", "aes", 16)
    assert zpk["versions"][0]["kcv"].startswith("08793E")
    everything = (out + json.dumps(info)).lower()
    for secret in (KBPK, first, MASK[1:], bytes.fromhex("3F419E1CB7079442AA37474C2EFBF8B8")):
        assert secret.hex() not in everything


def test_errors_and_exit_codes(mpctl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mpctl("generate", "data", "--type", "data")
    assert "unknown key 'nope'" in mpctl("rotate", "nope", code=1)
    assert "already exists" in mpctl("generate", "data", "--type", "data", code=2)
    assert "16, 24 or 32 bytes" in mpctl(
        "generate", "d2", "--type", "data", "--length", "20", code=2
    )
    assert "needs" in mpctl("generate", "x", "--type", "data", "--algorithm", "tdes", code=2)
    assert "needs a kbpk key" in mpctl("import", "x", "--kbpk", "data", "B0099P0TE00E", code=2)
    (tmp_path / "kek").write_text("00" * 32 + "\n")
    assert "KEK does not match" in mpctl("list", code=1)
