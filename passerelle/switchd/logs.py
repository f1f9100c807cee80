"""structlog set-up: one JSON line per event, PAN and track data masked on the way out.

Events are named `layer.step` (`x25.call_accepted`, `cbcom.aborted`). Masking is a processor,
not a discipline: whatever a dialogue puts in an event, a run of card-number digits leaves
the process as first 6 + last 4 at most, and track data keeps none of its discretionary part.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO, Any

import msgspec
import structlog

# Track 2 equivalent: PAN, separator ('=' on the track, 'D' in BCD, 'd' in lower-case hex),
# then expiry, service code and discretionary data.
_TRACK = re.compile(r"(\d{6})\d{3,9}(\d{4})[=Dd][0-9A-Fa-f]*")
# Any other run of 13 or more digits may contain a PAN, possibly inside a hex dump.
_DIGITS = re.compile(r"\d{13,}")


def _mask_digits(match: re.Match[str]) -> str:
    run = match.group()
    return run[:6] + "*" * (len(run) - 10) + run[-4:]


def mask_text(text: str) -> str:
    """`text` with every PAN-like digit run and every track 2 masked."""
    # Both patterns need 13 digits in a row: most values have none, and one C-level search
    # settles it (the two substitutions cost about 3 us per value on their own).
    if len(text) < 13 or _DIGITS.search(text) is None:
        return text
    text = _TRACK.sub(lambda m: f"{m[1]}******{m[2]}=****", text)
    return _DIGITS.sub(_mask_digits, text)


def _mask(value: Any) -> Any:
    kind = type(value)
    if kind is str:  # the usual value, first
        return mask_text(value)
    if value is None or kind is bool or kind is float:
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, int):  # a card number logged as a number would leave in clear
        return mask_text(str(value)) if value >= 10**12 else value
    if isinstance(value, bytes | bytearray | memoryview):
        return mask_text(bytes(value).hex())
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    return value


def mask_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask every value of the event (keys are ours, never card data)."""
    return {key: _mask(value) for key, value in event_dict.items()}


def _masked_str(value: Any) -> str:
    """What msgspec cannot encode goes out as its `str`, masked like any other text."""
    return mask_text(str(value))


def _printable_utf8(value: Any) -> Any:
    """`value` with lone surrogates (undecodable bytes kept by `surrogateescape`) spelled out."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {key: _printable_utf8(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable_utf8(item) for item in value]
    return value


def _render(logger: Any, method: str, event_dict: dict[str, Any]) -> bytes:
    try:
        return msgspec.json.encode(event_dict, enc_hook=_masked_str)
    except UnicodeEncodeError:  # a lone surrogate: JSON has no UTF-8 for it, the line must go
        return msgspec.json.encode(_printable_utf8(event_dict), enc_hook=_masked_str)


def configure(level: str = "info", stream: IO[bytes] | None = None) -> None:
    """Send JSON events at `level` and above to `stream` (default: standard error)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_processor,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.BytesLoggerFactory(stream or sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    """A bound logger carrying `context` on each event."""
    return structlog.get_logger().bind(**context)
