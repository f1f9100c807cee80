"""`mpctl decode`: vectors decode masked, --json, --verify, malformed input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from passerelle.cli.cmd_decode import first_difference, parse_hex
from passerelle.cli.main import cli
from passerelle.cli.output import render_table
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from tests.cb2a_vectors import EXPECTED, NAMES, SECRETS, VECTORS, load
from tests.strategies import full_pans_in

CB2A = get_profile("cb2a")


def run(*args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["decode", *args], input=stdin, catch_exceptions=False)


def masked(pan: str) -> str:
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def assert_no_card_data(name: str, *texts: str) -> None:
    for text in texts:
        for secret in SECRETS[name]:
            assert secret not in text
        assert full_pans_in(text) == []


def _offset_of(data: bytes, number: int) -> int:
    msg = Message.parse(data, CB2A)
    later = [n for n in msg.numbers if n >= number]
    return len(data) - sum(len(msg.raw(n)) for n in later)


# -- vectors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_vector_decodes_masked(name: str) -> None:
    result = run(load(name).hex())
    assert result.exit_code == 0, result.output
    pan = EXPECTED[name][2]
    assert masked(pan) in result.stdout
    assert_no_card_data(name, result.stdout, result.stderr)
    # Every field by number and name, every sub-element by tag.
    for number in EXPECTED[name]:
        assert CB2A.specs[number].name in result.stdout  # type: ignore[union-attr]
    assert "PUBLIPHO" in result.stdout or "12345678" in result.stdout
    for number in (47, 55, 59):
        for tag, _ in EXPECTED[name].get(number, ()):
            assert f"{number}.{tag}" in result.stdout


def test_vector_track2_and_emv_track2_masked() -> None:
    out = run(load("0100-stripe").hex()).stdout
    assert "453979******6151=********************" in out
    out = run(load("0100-emv").hex()).stdout
    assert "497301******0485D" in out
    assert "Track 2 equivalent data" in out


@pytest.mark.parametrize("name", NAMES)
def test_vector_json(name: str) -> None:
    result = run(load(name).hex(), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["profile"] == "cb2a"
    assert doc["mti"] == name[:4]
    assert doc["length"] == len(load(name))
    assert [f["field"] for f in doc["fields"]] == list(EXPECTED[name])
    by_number = {f["field"]: f for f in doc["fields"]}
    assert by_number[2]["value"] == masked(EXPECTED[name][2])
    assert by_number[4]["value"] == EXPECTED[name][4]
    assert by_number[41]["value"] == EXPECTED[name][41]
    assert by_number[2]["format"] == "n..19"
    for number in (47, 55, 59):
        if number in EXPECTED[name]:
            assert [s["tag"] for s in by_number[number]["sub"]] == [
                tag for tag, _ in EXPECTED[name][number]
            ]
    assert_no_card_data(name, result.stdout, result.stderr)


@pytest.mark.parametrize("name", NAMES)
def test_vector_verify(name: str) -> None:
    result = run("--verify", load(name).hex())
    assert result.exit_code == 0
    assert "re-encodes byte for byte" in result.stdout
    doc = json.loads(run("--verify", "--json", load(name).hex()).stdout)
    assert doc["verify"]["identical"] is True


# -- ways to give the message ---------------------------------------------------------------------
def test_stdin_with_whitespace_and_0x() -> None:
    text = load("0100-emv").hex().upper()
    spaced = "0x" + "\n".join(" ".join(text[i : i + 32][j : j + 2] for j in range(0, 32, 2))
                             for i in range(0, len(text), 32)) + "\n"
    result = run("--verify", stdin=spaced)
    assert result.exit_code == 0, result.output
    assert "re-encodes byte for byte" in result.stdout
    assert masked("4973019600600485") in result.stdout


def test_hex_in_several_arguments() -> None:
    text = load("0110-emv").hex()
    result = run(text[:20], text[20:100], text[100:])
    assert result.exit_code == 0
    assert "328422" in result.stdout


@pytest.mark.parametrize("suffix", [".hex", ".bin", ""])
def test_file_hex_or_binary(tmp_path: Path, suffix: str) -> None:
    data = load("0100-stripe")
    hex_file = tmp_path / f"capture{suffix or '-text'}"
    hex_file.write_text(data.hex() + "\n") if suffix != ".bin" else hex_file.write_bytes(data)
    result = run("--file", str(hex_file), "--verify")
    assert result.exit_code == 0, result.output
    assert masked("4539795755326151") in result.stdout
    if suffix == "":  # no suffix and binary content: detected as a binary capture
        binary = tmp_path / "capture"
        binary.write_bytes(data)
        assert run("--file", str(binary), "--verify").exit_code == 0


def test_iso87_ascii_binary_capture_of_digits_only(tmp_path: Path) -> None:
    """An all-digit ASCII message is also valid hex: the reading that parses wins."""
    iso87 = get_profile("iso87-ascii")
    wire = encode(iso87, "0800", {7: "1122334455", 11: "000001", 70: "301"})
    assert set(wire) <= set(b"0123456789ABCDEF")
    capture = tmp_path / "frame"
    capture.write_bytes(wire)
    result = run("--file", str(capture), "--profile", "iso87-ascii", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {f["field"]: f["value"] for f in doc["fields"]} == {7: "1122334455", 11: "000001",
                                                              70: "301"}


def test_hex_and_file_together_is_bad_usage(tmp_path: Path) -> None:
    path = tmp_path / "x.hex"
    path.write_text(load("0110-emv").hex())
    result = run("--file", str(path), "0100")
    assert result.exit_code == 2
    assert "not both" in result.stderr


@pytest.mark.parametrize(("given", "says"), [
    ("0100zz", "not hexadecimal"),
    ("01007", "odd number of hex digits"),
    ("   ", "no message given"),
    ("0x", "no message given"),
])
def test_bad_hex_exits_2(given: str, says: str) -> None:
    result = run(stdin=given) if not given.strip() else run(given)
    assert result.exit_code == 2
    assert says in result.stderr
    assert result.stdout == ""


def test_parse_hex() -> None:
    assert parse_hex("0x01 00\n7A\tff") == b"\x01\x00\x7a\xff"
    assert parse_hex("0X0100") == b"\x01\x00"


def test_unknown_profile_is_bad_usage() -> None:
    assert run("--profile", "nope", "0100").exit_code == 2


def test_help_has_examples() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and "--verify" in result.stdout
    assert "iso87-ascii" in result.stdout


# -- malformed messages -----------------------------------------------------------------------
def test_truncated_message_names_field_and_offset() -> None:
    data = load("0100-emv")
    at = _offset_of(data, 55)
    result = run(data[: at + 20].hex())
    assert result.exit_code == 2
    assert f"field 55 at byte {at}" in result.stderr
    # The fields read before the error are still shown, masked.
    assert "PUBLIPHO" in result.stdout and masked("4973019600600485") in result.stdout
    assert "55." not in result.stdout
    assert_no_card_data("0100-emv", result.stdout, result.stderr)
    doc = json.loads(run("--json", data[: at + 20].hex()).stdout)
    assert doc["error"]["field"] == 55 and doc["error"]["offset"] == at
    assert [f["field"] for f in doc["fields"]] == [n for n in EXPECTED["0100-emv"] if n < 55]


def test_bad_bcd_value_exits_2_naming_the_field() -> None:
    data = bytearray(load("0100-stripe"))
    at = _offset_of(bytes(data), 4)
    data[at + 2] = 0xAB
    result = run(bytes(data).hex())
    assert result.exit_code == 2
    assert "field 4 at byte" in result.stderr
    offset = int(result.stderr.split("field 4 at byte ")[1].split(":")[0])
    assert at <= offset < at + 6
    assert_no_card_data("0100-stripe", result.stdout, result.stderr)


def test_undefined_field_in_bitmap() -> None:
    data = load("0110-emv")
    broken = data[:2] + bytes([data[2] | 0x80]) + data[3:10] + b"\x80" + bytes(7) + data[10:]
    result = run(broken.hex())
    assert result.exit_code == 2
    assert f"field 65 at byte {len(broken)}" in result.stderr


# -- --verify when the re-encoding differs ------------------------------------------------------
def test_verify_detects_an_empty_secondary_bitmap() -> None:
    """Bit 1 set with an all-zero secondary bitmap parses, but re-encodes without it."""
    data = load("0110-emv")
    padded = data[:2] + bytes([data[2] | 0x80]) + data[3:10] + bytes(8) + data[10:]
    result = run("--verify", padded.hex())
    assert result.exit_code == 1
    assert "differs at byte 2 (bitmap)" in result.stderr
    doc = json.loads(run("--verify", "--json", padded.hex()).stdout)
    assert doc["verify"]["identical"] is False and doc["verify"]["offset"] == 2


def test_verify_detects_a_lower_case_hex_bitmap() -> None:
    iso87 = get_profile("iso87-ascii")
    wire = encode(iso87, "0200", {3: "000000", 4: "000000001000", 5: "000000001000",
                                  7: "1122334455", 11: "000001", 41: "TERM0001"})
    assert wire[4:6] == b"3A"  # fields 3, 4, 5, 7: a letter in the bitmap's hex
    lower = wire[:4] + wire[4:20].lower() + wire[20:]
    first_letter = next(i for i in range(4, 20) if wire[i : i + 1].isalpha())
    result = run("--profile", "iso87-ascii", "--verify", lower.hex())
    assert result.exit_code == 1
    assert f"differs at byte {first_letter} (bitmap)" in result.stderr
    assert run("--profile", "iso87-ascii", "--verify", wire.hex()).exit_code == 0


def test_verify_detects_a_long_form_ber_length() -> None:
    """iso93-binary field 55: tag 9F26 with length 81 08 (valid BER, not the minimal form)."""
    iso93 = get_profile("iso93-binary")
    wire = encode(iso93, "1100", {11: "000001", 55: (("9F26", bytes(8)),)})
    long_form = wire.replace(b"\x00\x11\x9f\x26\x08", b"\x00\x12\x9f\x26\x81\x08")
    assert long_form != wire
    field_55 = long_form.index(b"\x00\x12\x9f\x26")
    result = run("--profile", "iso93-binary", "--verify", long_form.hex())
    assert result.exit_code == 1
    assert f"differs at byte {field_55 + 1} (field 55)" in result.stderr


def test_first_difference() -> None:
    assert first_difference(b"abc", b"abc") is None
    assert first_difference(b"abc", b"abd") == 2
    assert first_difference(b"abc", b"ab") == 2
    assert first_difference(b"", b"a") == 0
    assert first_difference(b"xbc", b"abc") == 0


# -- output helpers -------------------------------------------------------------------------------
def test_render_table_aligns_and_escapes() -> None:
    text = render_table([("2", "PAN", "497301******0485"), ("41", "Term\x07", None)],
                        headers=("FIELD", "NAME", "VALUE"))
    lines = text.splitlines()
    assert lines[0].index("NAME") == lines[2].index("PAN") == lines[3].index("Term")
    assert "\x07" not in text and "\\x07" in text
    assert lines[1].startswith("-----")


# -- the installed console script ---------------------------------------------------------------
def test_installed_mpctl_decodes_a_vector() -> None:
    mpctl = Path(sys.executable).parent / "mpctl"
    if not mpctl.exists():
        pytest.skip(f"{mpctl} is not installed")
    path = VECTORS / "0100-stripe.hex"
    done = subprocess.run([str(mpctl), "decode", "--file", str(path), "--verify"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert masked("4539795755326151") in done.stdout
    assert "re-encodes byte for byte" in done.stdout
    assert_no_card_data("0100-stripe", done.stdout, done.stderr)
    done = subprocess.run([str(mpctl), "decode"], input="0100zz", capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and "not hexadecimal" in done.stderr
