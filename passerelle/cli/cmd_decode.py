"""`mpctl decode`: show a captured ISO 8583 / CB2A message field by field, masked."""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from passerelle.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    emit_json,
    fail,
    table,
)
from passerelle.codecs.errors import CodecError
from passerelle.codecs.iso8583 import Message, encode, show_value
from passerelle.codecs.profile import Profile
from passerelle.codecs.profiles import PROFILES, get_profile
from passerelle.codecs.subfields import SUBFIELD_CODECS

_HEX_DIGITS = frozenset(string.hexdigits)
_HEX_SUFFIXES = {".hex", ".txt"}
_BINARY_SUFFIXES = {".bin", ".raw", ".dat", ".iso"}

# Names of the EMV tags a terminal commonly puts in field 55 (EMV Book 3, Annex A).
EMV_TAGS = {
    0x4F: "Application identifier (AID)", 0x50: "Application label",
    0x56: "Track 1 equivalent data", 0x57: "Track 2 equivalent data",
    0x5A: "Application PAN", 0x5F20: "Cardholder name", 0x5F24: "Application expiration date",
    0x5F25: "Application effective date", 0x5F28: "Issuer country code",
    0x5F2A: "Transaction currency code", 0x5F34: "PAN sequence number",
    0x71: "Issuer script template 1", 0x72: "Issuer script template 2",
    0x82: "Application interchange profile", 0x84: "Dedicated file name",
    0x8A: "Authorisation response code", 0x91: "Issuer authentication data",
    0x95: "Terminal verification results", 0x9A: "Transaction date",
    0x9B: "Transaction status information", 0x9C: "Transaction type",
    0x9F02: "Amount, authorised", 0x9F03: "Amount, other", 0x9F06: "AID (terminal)",
    0x9F07: "Application usage control", 0x9F09: "Application version number (terminal)",
    0x9F10: "Issuer application data", 0x9F1A: "Terminal country code",
    0x9F1E: "Interface device serial number", 0x9F26: "Application cryptogram",
    0x9F27: "Cryptogram information data", 0x9F33: "Terminal capabilities",
    0x9F34: "CVM results", 0x9F35: "Terminal type", 0x9F36: "Application transaction counter",
    0x9F37: "Unpredictable number", 0x9F41: "Transaction sequence counter",
    0x9F53: "Transaction category code", 0x9F6E: "Form factor indicator",
}

EXAMPLES = """\b
Examples:
  mpctl decode 0100703c4481a8e28820...          a CB2A message as hex
  mpctl decode < capture.hex                    hex on stdin (spaces, newlines, 0x allowed)
  mpctl decode --file 0100-emv.hex --verify     check it re-encodes byte for byte
  mpctl decode --file frame.bin --profile iso87-ascii --json
\b
Exit codes: 0 decoded (and re-encodes identically with --verify), 1 the re-encoding
differs, 2 bad hex or a malformed message (the error names field, byte offset, reason).
"""


class BadInput(Exception):
    """The input is not a hex string or a readable capture."""


def parse_hex(text: str) -> bytes:
    """Hex text to bytes: whitespace anywhere and one leading 0x are ignored."""
    compact = "".join(text.split())
    if compact[:2].lower() == "0x":
        compact = compact[2:]
    if not compact:
        raise BadInput("no message given (expected hexadecimal digits)")
    for index, char in enumerate(compact):
        if char not in _HEX_DIGITS:
            raise BadInput(f"not hexadecimal: {char!r} at hex digit {index}")
    if len(compact) % 2:
        raise BadInput(f"odd number of hex digits ({len(compact)}): a byte is cut in half")
    return bytes.fromhex(compact)


def _looks_like_hex(raw: bytes) -> bool:
    try:
        parse_hex(raw.decode("ascii"))
    except (UnicodeDecodeError, BadInput):
        return False
    return True


def read_capture(path: Path, profile: Profile) -> bytes:
    """A capture file: hex text or the message's own bytes.

    By suffix first (.hex/.txt are hex, .bin/.raw/.dat/.iso binary); otherwise hex when the
    whole file is hex text. An all-digit ASCII message (iso87-ascii) also reads as hex: then
    whichever reading parses as a message wins, hex when both do.
    """
    raw = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix in _BINARY_SUFFIXES:
        return raw
    if suffix in _HEX_SUFFIXES:
        return parse_hex(raw.decode("ascii", "replace"))
    if not _looks_like_hex(raw):
        return raw
    decoded = parse_hex(raw.decode("ascii"))
    if not _parses(decoded, profile) and _parses(raw, profile):
        return raw
    return decoded


def _parses(data: bytes, profile: Profile) -> bool:
    try:
        Message.parse(data, profile)
    except CodecError:
        return False
    return True


# -- decoding into rows ------------------------------------------------------------------------
@dataclass
class Decoded:
    """What a decode produced: shown fields, and the error that stopped it, if any."""

    mti: str
    fields: list[dict[str, Any]]
    error: CodecError | None
    message: Message | None  # the whole message, when it parsed and converted


def _field_entry(msg: Message, number: int) -> dict[str, Any]:
    spec = msg.profile.specs[number]
    assert spec is not None
    value = msg.get(number)  # raises CodecError
    entry: dict[str, Any] = {"field": number, "name": spec.name, "format": spec.label}
    if spec.sub is not None and isinstance(value, tuple):
        codec = SUBFIELD_CODECS[spec.sub]
        entry["value"] = f"{len(value)} sub-element{'s' * (len(value) != 1)}"
        emv = number == 55 and spec.sub in ("cb-tlv", "ber-tlv")
        entry["sub"] = [
            {
                "tag": tag,
                "name": EMV_TAGS.get(int(tag, 16), "") if emv else "",
                "format": f"{'b' if isinstance(item, bytes) else 'ans'}{len(item)}",
                "value": codec.show(tag, item),
            }
            for tag, item in value
        ]
    else:
        entry["value"] = show_value(spec, value)
    return entry


def decode_message(data: bytes, profile: Profile) -> Decoded:
    """Parse and convert every field in order, stopping at the first `CodecError`."""
    try:
        msg = Message.parse(data, profile)
    except CodecError as exc:
        partial, error, complete = exc.partial, exc, False
    else:
        partial, error, complete = msg, None, True
    mti = partial.mti if partial is not None else ""
    fields: list[dict[str, Any]] = []
    if partial is not None:
        for number in partial.numbers:
            try:
                fields.append(_field_entry(partial, number))
            except CodecError as exc:
                return Decoded(mti, fields, exc, None)
    return Decoded(mti, fields, error, partial if complete else None)


def first_difference(a: bytes, b: bytes) -> int | None:
    """The first byte offset where `a` and `b` differ (the shorter length if one is a prefix
    of the other), or None when they are equal."""
    if a == b:
        return None
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def _where(msg: Message, offset: int) -> str:
    """What sits at `offset` of the message: MTI, bitmap, or a field."""
    pos = len(msg.wire) - sum(len(msg.raw(n)) for n in msg.numbers)
    if offset < msg.profile.mti_size:
        return "MTI"
    if offset < pos:
        return "bitmap"
    for number in msg.numbers:
        pos += len(msg.raw(number))
        if offset < pos:
            return f"field {number}"
    return "end of message"


@dataclass
class Verdict:
    identical: bool
    offset: int | None = None
    where: str | None = None
    ours: int | None = None  # byte of the input at `offset` (None past its end)
    theirs: int | None = None  # byte of the re-encoding at `offset`
    reencoded_length: int | None = None
    reason: str | None = None  # set when the values could not be encoded at all

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def verify_reencoding(msg: Message) -> Verdict:
    """Re-encode the decoded values and compare with the bytes received."""
    data = bytes(msg.wire)
    try:
        again = encode(msg.profile, msg.mti, msg.to_dict())
    except CodecError as exc:
        return Verdict(False, reason=str(exc))
    offset = first_difference(data, again)
    if offset is None:
        return Verdict(True, reencoded_length=len(again))
    return Verdict(
        False, offset, _where(msg, offset),
        data[offset] if offset < len(data) else None,
        again[offset] if offset < len(again) else None,
        len(again),
    )


# -- printing --------------------------------------------------------------------------------
def _shown(text: str) -> str:
    """Quote values whose spaces would vanish in a table."""
    if text == "" or text != text.strip():
        return f'"{text}"'
    return text


def _print_human(profile: Profile, mti: str, size: int, fields: list[dict[str, Any]]) -> None:
    click.echo(f"{profile.name} {mti or '????'}, {size} bytes")
    rows: list[tuple[str, str, str, str]] = [("MTI", "Message type indicator", "n4", mti)]
    for entry in fields:
        rows.append((str(entry["field"]), entry["name"], entry["format"], _shown(entry["value"])))
        for item in entry.get("sub", ()):
            rows.append(
                (f"{entry['field']}.{item['tag']}", item["name"], item["format"],
                 _shown(item["value"]))
            )
    table(rows, headers=("FIELD", "NAME", "FORMAT", "VALUE"))


def _byte(value: int | None) -> str:
    return "end" if value is None else f"0x{value:02X}"


@click.command(name="decode", epilog=EXAMPLES)
@click.argument("hex_text", nargs=-1, metavar="[HEX]...")
@click.option("--file", "-f", "path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Read a capture: a .hex text file or the raw bytes.")
@click.option("--profile", "-p", "profile_name", type=click.Choice(sorted(PROFILES)),
              default="cb2a", show_default=True, help="Wire layout of the message.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (masked too).")
@click.option("--verify", is_flag=True,
              help="Re-encode the decoded values; exit 1 at the first differing byte.")
def command(
    hex_text: tuple[str, ...], path: Path | None, profile_name: str, as_json: bool,
    verify: bool,
) -> None:
    """Decode a captured ISO 8583 / CB2A message, field by field.

    The message comes as HEX on the command line (spaces allowed), as a file (--file), or as
    hex on stdin. Every field and sub-element is shown by number, name and format, masked
    as the profile says: PAN as first 6 + last 4, nothing after the track 2 separator, PIN
    blocks and keys as their length only.
    """
    profile = get_profile(profile_name)
    if path is not None and hex_text:
        fail("give the message either as HEX or with --file, not both")
    try:
        if path is not None:
            data = read_capture(path, profile)
        elif hex_text:
            data = parse_hex(" ".join(hex_text))
        else:
            data = parse_hex(sys.stdin.read())
    except BadInput as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")

    result = decode_message(data, profile)
    mti = result.mti
    verdict = verify_reencoding(result.message) if verify and result.message else None
    error = result.error
    if as_json:
        doc: dict[str, Any] = {"profile": profile.name, "mti": mti or None, "length": len(data),
                               "fields": result.fields}
        if error is not None:
            doc["error"] = {"field": error.field, "offset": error.offset, "reason": error.reason}
        if verdict is not None:
            doc["verify"] = verdict.as_dict()
        emit_json(doc)
    else:
        _print_human(profile, mti, len(data), result.fields)
    if error is not None:
        if not as_json:
            read = ", ".join(str(e["field"]) for e in result.fields) or "none"
            click.echo(f"Error: malformed message: {error} (fields read before it: {read})",
                       err=True)
        raise click.exceptions.Exit(EXIT_BAD_INPUT)
    if verdict is None:
        raise click.exceptions.Exit(EXIT_OK)
    if verdict.identical:
        if not as_json:
            click.echo(f"re-encodes byte for byte ({len(data)} bytes)")
        raise click.exceptions.Exit(EXIT_OK)
    if not as_json:
        if verdict.reason is not None:
            click.echo(f"Error: cannot re-encode the decoded values: {verdict.reason}", err=True)
        else:
            click.echo(
                f"Error: re-encoding differs at byte {verdict.offset} ({verdict.where}): "
                f"received {_byte(verdict.ours)}, re-encoded {_byte(verdict.theirs)} "
                f"({len(data)} bytes received, {verdict.reencoded_length} re-encoded)",
                err=True,
            )
    raise click.exceptions.Exit(EXIT_FAILED)

