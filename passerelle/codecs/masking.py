"""Mask policy: how a field's value may be shown in a `repr`, a log line or an error.

`clear` shows the value, `pan` keeps the first 6 and last 4 digits (PCI DSS display rule),
`track` masks the PAN part of track data and hides everything after the separator (it holds
the service code, PVV and CVV), `secret` shows only the length (PIN blocks, keys, MACs).
"""

from __future__ import annotations

import re
from enum import StrEnum


class Mask(StrEnum):
    CLEAR = "clear"
    PAN = "pan"
    TRACK = "track"
    SECRET = "secret"


_TRACK_SEPARATORS = re.compile(r"[=Dd^]")
_DIGIT_RUNS = re.compile(r"[0-9]{13,}")


def mask_pan(pan: str) -> str:
    """`4973019600600485` -> `497301******0485`; short values are fully starred."""
    if len(pan) < 13:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def mask_track(track: str) -> str:
    """Mask the PAN in track data and star everything after the first separator."""
    match = _TRACK_SEPARATORS.search(track)
    if match is None:
        return mask_pan(track)
    cut = match.start()
    return mask_pan(track[:cut]) + track[cut] + "*" * (len(track) - cut - 1)


def luhn(digits: str) -> bool:
    """The Luhn check every real PAN passes (digits only, no length check)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index & 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _has_card_number(run: str) -> bool:
    """Does a digit run hold a 13-19 digit Luhn-valid window that could be a PAN?"""
    for size in range(13, min(19, len(run)) + 1):
        for start in range(len(run) - size + 1):
            window = run[start : start + size]
            if window[0] != "0" and luhn(window):
                return True
    return False


def redact_card_numbers(text: str) -> str:
    """Star the middle of any digit run that could hide a PAN.

    The safety net under the per-field policy: a value shown "clear" (an unknown EMV tag, a
    corrupted tag, a layout with no sub-element codec) may still carry a card number.
    """
    if len(text) < 13:
        return text
    return _DIGIT_RUNS.sub(
        lambda m: mask_pan(m.group()) if _has_card_number(m.group()) else m.group(), text
    )


def apply_mask(policy: Mask, text: str) -> str:
    """Render `text` (already a string) under `policy`."""
    if policy is Mask.CLEAR:
        return redact_card_numbers(text)
    if policy is Mask.PAN:
        return mask_pan(text)
    if policy is Mask.TRACK:
        return mask_track(text)
    return f"<secret, {len(text)} chars>"
