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


def apply_mask(policy: Mask, text: str) -> str:
    """Render `text` (already a string) under `policy`."""
    if policy is Mask.CLEAR:
        return text
    if policy is Mask.PAN:
        return mask_pan(text)
    if policy is Mask.TRACK:
        return mask_track(text)
    return f"<secret, {len(text)} chars>"
