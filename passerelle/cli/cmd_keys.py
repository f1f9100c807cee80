"""`mpctl keys`: the soft backend's key store (list, generate, import, rotate, retire).

Key material is never printed: listings show names, types, versions and check values (KCV),
which is what two operators compare during a key ceremony. The keystore and its KEK file
come from `--keystore`/`--kek` or PASSERELLE_KEYSTORE/PASSERELLE_KEK.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from passerelle.cli.common import database, database_options
from passerelle.cli.common import errors as storage_errors
from passerelle.hsm import keys as key_meta
from passerelle.hsm.errors import (
    BadInputError,
    BadLengthError,
    HSMError,
    UnknownKeyError,
    WrongKeyTypeError,
)
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType
from passerelle.hsm.keystore import create_kek
from passerelle.hsm.soft import SoftHSM
from passerelle.storage import queries

_TYPES = click.Choice([t.value for t in KeyType])
_ALGORITHMS = click.Choice([a.value for a in Algorithm])


def _store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--kek",
        envvar="PASSERELLE_KEK",
        default=".state/kek",
        show_default=True,
        type=click.Path(dir_okay=False),
        help="Key-encryption key file (or PASSERELLE_KEK).",
    )(func)
    func = click.option(
        "--keystore",
        envvar="PASSERELLE_KEYSTORE",
        default=".state/keystore.json",
        show_default=True,
        type=click.Path(dir_okay=False),
        help="Keystore file (or PASSERELLE_KEYSTORE).",
    )(func)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def _errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """HSMError -> a one-line message and the exit code of DESIGN.md §11."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (BadInputError, BadLengthError, WrongKeyTypeError) as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(2) from None
        except (UnknownKeyError, HSMError) as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(1) from None

    return wrapper


def _open(keystore: str, kek: str, *, create: bool = False) -> SoftHSM:
    if create and not Path(keystore).exists() and not Path(kek).exists():
        Path(kek).parent.mkdir(parents=True, exist_ok=True)
        create_kek(kek)
        click.echo(f"created a new KEK in {kek}: back it up apart from the keystore", err=True)
    if create:
        Path(keystore).parent.mkdir(parents=True, exist_ok=True)
    return SoftHSM(keystore, kek)


def _as_dict(info: KeyInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "type": str(info.type),
        "algorithm": str(info.algorithm),
        "length": info.length,
        "versions": [
            {"version": v.version, "kcv": v.kcv, "created": v.created} for v in info.versions
        ],
    }


def _show(infos: list[KeyInfo], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([_as_dict(i) for i in infos], indent=2))
        return
    rows = [("NAME", "TYPE", "ALGORITHM", "BYTES", "VERSION", "KCV", "CREATED")]
    for info in infos:
        for v in reversed(info.versions):
            current = v.version == info.current.version
            rows.append(
                (
                    info.name if current else "",
                    str(info.type) if current else "",
                    str(info.algorithm) if current else "",
                    str(info.length) if current else "",
                    f"{v.version}{' (current)' if current and len(info.versions) > 1 else ''}",
                    v.kcv,
                    v.created,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.group(name="keys")
def command() -> None:
    """Keys of the soft HSM backend: list, generate, import (TR-31), rotate, retire.

    \b
    Examples:
      mpctl keys list
      mpctl keys generate pan-hmac --type pan-hmac
      mpctl keys generate data --type data
      mpctl keys import kbpk --components 2 --type kbpk --algorithm aes
      mpctl keys import zpk-acq1 --kbpk kbpk D0112P0AE00E0000B826...
      mpctl keys rotate pan-hmac            new rows use version 2; searches try both
      mpctl keys retire pan-hmac 1          once no row inside retention uses version 1
    """


@command.command(name="list")
@_store_options
@_errors
def list_keys(keystore: str, kek: str, as_json: bool) -> None:
    """List keys with their versions and check values (never their values)."""
    hsm = _open(keystore, kek)
    _show(asyncio.run(hsm.list_keys()), as_json)


@command.command()
@click.argument("name")
@click.option("--type", "key_type", type=_TYPES, required=True, help="What the key is for.")
@click.option("--algorithm", type=_ALGORITHMS, help="Default: the usual one for the type.")
@click.option("--length", type=int, help="Key length in bytes. Default: 16 TDES, 32 AES/HMAC.")
@_store_options
@_errors
def generate(
    *,
    name: str,
    key_type: str,
    algorithm: str | None,
    length: int | None,
    keystore: str,
    kek: str,
    as_json: bool,
) -> None:
    """Generate a random key NAME (version 1)."""
    hsm = _open(keystore, kek, create=True)
    algo = Algorithm(algorithm) if algorithm else None
    info = asyncio.run(hsm.generate_key(name, KeyType(key_type), algo, length))
    _show([info], as_json)


@command.command(name="import")
@click.argument("name")
@click.argument("key_block", required=False)
@click.option("--kbpk", help="Name of the key block protection key the TR-31 block is under.")
@click.option(
    "--components",
    type=click.IntRange(2, 5),
    help="Instead of a TR-31 block: form the key from N clear components typed in (hidden).",
)
@click.option("--type", "key_type", type=_TYPES, help="With --components: the key's type.")
@click.option("--algorithm", type=_ALGORITHMS, help="With --components: the key's algorithm.")
@_store_options
@_errors
def import_key(
    *,
    name: str,
    key_block: str | None,
    kbpk: str | None,
    components: int | None,
    key_type: str | None,
    algorithm: str | None,
    keystore: str,
    kek: str,
    as_json: bool,
) -> None:
    """Import NAME from a TR-31 KEY_BLOCK ('-' reads stdin), or from clear components.

    A first KBPK usually arrives as components held by different custodians; every
    later key arrives as a TR-31 block under it.
    """
    hsm = _open(keystore, kek, create=components is not None)
    if components is not None:
        if not key_type or not algorithm or key_block or kbpk:
            raise BadInputError("--components needs --type and --algorithm, and no key block")
        value = b""
        for i in range(1, components + 1):
            text = click.prompt(f"component {i} (hex)", hide_input=True, err=True)
            try:
                part = bytes.fromhex(text.strip())
            except ValueError:
                raise BadInputError(f"component {i} is not hexadecimal") from None
            if value and len(part) != len(value):
                raise BadLengthError(f"component {i} is {len(part)} bytes, not {len(value)}")
            click.echo(f"component {i} KCV {key_meta.kcv(Algorithm(algorithm), part)}", err=True)
            value = part if not value else bytes(a ^ b for a, b in zip(value, part, strict=True))
        info = hsm.store.add(name, KeyType(key_type), Algorithm(algorithm), value)
    else:
        if not kbpk or not key_block:
            raise BadInputError("give a TR-31 key block and --kbpk, or --components")
        block = sys.stdin.read().strip() if key_block == "-" else key_block.strip()
        info = asyncio.run(hsm.import_key(name, block, kbpk))
    _show([info], as_json)


@command.command()
@click.argument("name")
@_store_options
@_errors
def rotate(name: str, keystore: str, kek: str, as_json: bool) -> None:
    """Add a new version of NAME; older versions stay for decryption and PAN search."""
    hsm = _open(keystore, kek)
    _show([asyncio.run(hsm.rotate_key(name))], as_json)


# Which stored rows a version of a key type protects (see storage.queries.key_version_in_use).
_STORED_UNDER = {KeyType.PAN_HMAC: "pan-hmac", KeyType.DATA: "data"}


@command.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(1, 32767))
@click.option("--retention-months", default=15, show_default=True, type=click.IntRange(1, 120),
              help="Months of rows kept ([storage] retention_months): only those count.")
@database_options
@_store_options
@storage_errors
@_errors
def retire(*, name: str, version: int, retention_months: int, dsn: str | None,
           state_dir: str, keystore: str, kek: str, as_json: bool) -> None:
    """Remove VERSION of NAME once nothing inside retention needs it.

    A PAN HMAC version is refused while a transaction or an authorization inside the
    retention window carries it (a card search must still find them); a data key version
    while an undelivered SAF message is sealed under it. The current version is never
    retired. Exit 1 when refused.
    """
    hsm = _open(keystore, kek)
    info = asyncio.run(hsm.key_info(name))
    if version == info.current.version:
        raise BadInputError(f"version {version} is the current version of {name!r}; "
                            "rotate first")
    if version not in [v.version for v in info.versions]:
        raise UnknownKeyError(name, version)
    kind = _STORED_UNDER.get(info.type)
    if kind is not None:
        with database(dsn, state_dir) as conn:
            in_use = queries.key_version_in_use(conn, kind, version,  # type: ignore[arg-type]
                                                retention_months)
        if in_use:
            rows = ", ".join(f"{count} in {table}" for table, count in in_use.items())
            click.echo(f"error: {name} version {version} is still used inside the "
                       f"{retention_months}-month retention ({rows}); not retired", err=True)
            raise click.exceptions.Exit(1)
    _show([hsm.store.retire(name, version)], as_json)
