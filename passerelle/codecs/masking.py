"""Mask policy: how a field's value may be shown in a `repr`, a log line or an error.

`clear` shows the value, `pan` keeps the first 6 and last 4 digits (PCI DSS display rule),
`track` masks the PAN part of track data and hides everything after the separator (it holds
the service code, PVV and CVV), `secret` shows only the length (PIN blocks, keys, MACs).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final


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


# Luhn's doubled digit by byte: b"7" -> 14 - 9 = 5 (other bytes never reach it: `luhn`
# checks for ASCII digits first). A byte string and a table, so that the loop mypyc compiles
# is integer arithmetic on bytes, and the interpreted one does one lookup per pair of digits.
_DOUBLED: Final = bytes((2 * (b - 48) - 9 if b > 52 else 2 * (b - 48)) if 48 <= b <= 57 else 0
                        for b in range(256))


def luhn(digits: str) -> bool:
    """The Luhn check every real PAN passes (no length check; "" passes, as a sum of no
    digits; anything but ASCII digits fails: no card number has any).

    From the right, each pair adds its last digit as it is and its first doubled (through
    `_DOUBLED`); the plain digits are summed as ASCII bytes and their 48s taken off once at
    the end. switchd checks one per authorization, the log redaction one per window."""
    if not digits.isascii():
        return False
    data = digits.encode("ascii")
    if data and not data.isdigit():
        return False
    total, index = 0, len(data) - 1
    while index > 0:
        total += data[index] + _DOUBLED[data[index - 1]]
        index -= 2
    if index == 0:  # an odd count: the first digit is a plain one
        total += data[0]
    return (total - 48 * ((len(data) + 1) >> 1)) % 10 == 0


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
