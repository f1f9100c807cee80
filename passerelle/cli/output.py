"""How mpctl commands print: human tables by default, JSON for scripts, errors on stderr.

Every command formats through these helpers so that the output looks the same everywhere:

    table(rows, headers=("FIELD", "NAME", "VALUE"))   aligned columns, header underlined
    emit_json(obj)                                   one JSON document, UTF-8, indented
    fail("bad hex: ...", code=2)                     "Error: ..." on stderr, exit code

Exit codes follow DESIGN.md §11: 0 ok, 1 not found / failed check, 2 bad usage or bad input.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import click

EXIT_OK = 0
EXIT_FAILED = 1  # not found, or a check that did not pass
EXIT_BAD_INPUT = 2  # bad usage or bad input


def printable(text: str) -> str:
    """`text` safe for a terminal: control and other non-printing characters as \\xNN."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text
    )


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _width(text: str) -> int:
    """Terminal columns taken by `text` (wide East Asian characters count twice)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def render_table(
    rows: Iterable[Sequence[Any]], headers: Sequence[str] | None = None, *, gap: int = 2
) -> str:
    """Rows as aligned text columns; the last column is not padded. `None` shows as empty."""
    cells = [[printable("" if v is None else str(v)) for v in row] for row in rows]
    if headers:
        cells.insert(0, [str(h) for h in headers])
    if not cells:
        return ""
    count = max(len(row) for row in cells)
    widths = [
        max((_width(row[i]) for row in cells if i < len(row)), default=0) for i in range(count)
    ]
    lines = []
    for row in cells:
        parts = [
            cell + " " * (widths[i] - _width(cell)) if i < len(row) - 1 else cell
            for i, cell in enumerate(row)
        ]
        lines.append((" " * gap).join(parts).rstrip())
    if headers:
        lines.insert(1, (" " * gap).join("-" * w for w in widths))
    return "\n".join(lines)


def table(
    rows: Iterable[Sequence[Any]], headers: Sequence[str] | None = None, *, err: bool = False
) -> None:
    """Print `rows` as a human table (to stderr with `err=True`)."""
    text = render_table(rows, headers)
    if text:
        click.echo(text, err=err)


def to_json(obj: Any) -> str:
    """One JSON document: non-ASCII kept, bytes as upper-case hex, sets as sorted lists."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex().upper()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def emit_json(obj: Any) -> None:
    click.echo(to_json(obj))


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print `Error: message` on stderr and leave with `code`."""
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)
