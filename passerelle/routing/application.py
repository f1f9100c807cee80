"""Which CB application a CB2A 0100 belongs to (CBEMV, CBCLESS, AMEX, ...).

No public CB2A text says where the application is carried, so this is our choice:

1. The chip's AID: field 55 tag 9F06 (terminal AID), else 4F/84, else field 59 tag 020B
   (the AID the terminal selected, as the 0100-emv vector shows; all-9s in the stripe
   vector means "none"). The longest AID prefix in `AIDS` names the family.
2. No AID (stripe, manual entry): field 22's entry mode, the first two digits. "01" and
   "10"/"81" (keyed, e-commerce) -> the family's VAD application (CBVAD, JCBVAD); other
   modes -> the family's chip application. The family then comes from the BIN
   (`BIN_FAMILIES`: 34/37 AMEX, 3528-3589 JCB), CB otherwise.
3. Contactless: entry mode 07 or 91 turns CBEMV into CBCLESS, AMEX into AMEXCLESS and
   CONECS into CONECSLESS.

PLBS, PLBS+, PLBSGCB, DCCPLBS and QUASI CASH are contract applications, not card ones: a
route can name them and a contract can be registered under them; when the terminal's
contract (from the directory) is one of them, it wins over what the card says.
"""

from __future__ import annotations

import functools
from typing import Any

from passerelle.codecs.iso8583 import Message

APPLICATIONS = frozenset({
    "CBEMV", "CBCLESS", "CBVAD", "PLBS", "PLBS+", "PLBSGCB", "AMEX", "AMEXCLESS",
    "DCCPLBS", "QUASI CASH", "CONECS", "CONECSLESS", "JCBEMV", "JCBVAD",
})
CONTRACT_APPLICATIONS = frozenset({"PLBS", "PLBS+", "PLBSGCB", "DCCPLBS", "QUASI CASH"})

# AID prefix -> (chip application, VAD application or None).
AIDS: dict[str, str] = {
    "A000000042": "CB",  # Cartes Bancaires
    "A000000003": "CB",  # Visa (co-badged CB cards are routed as CB)
    "A000000004": "CB",  # Mastercard
    "A000000025": "AMEX",
    "A000000065": "JCB",
    "A000000634": "CONECS",  # Conecs titres-restaurant
}
_FAMILY_APPS: dict[str, tuple[str, str, str]] = {  # chip, contactless, VAD
    "CB": ("CBEMV", "CBCLESS", "CBVAD"),
    "AMEX": ("AMEX", "AMEXCLESS", "AMEX"),
    "JCB": ("JCBEMV", "JCBEMV", "JCBVAD"),
    "CONECS": ("CONECS", "CONECSLESS", "CONECS"),
}
_CONTACTLESS = ("07", "91")
_KEYED = ("01", "10", "81")


def family_of_bin(pan: str) -> str:
    if pan[:2] in ("34", "37"):
        return "AMEX"
    if pan[:2] == "35" and "3528" <= pan[:4] <= "3589":
        return "JCB"
    return "CB"


_AID_TAGS = (b"\x9f\x06", b"\x00\x4f", b"\x00\x84")  # 9F06, 4F, 84 as CB2A writes them


def icc_aid(body: bytes) -> tuple[bool, str | None]:
    """(well formed, AID) of CB2A field 55's bytes (2-byte tag, 1-byte length, value),
    walked without building its pairs: a chip request carries a score of them and only
    the AID is read here. Not well formed (a header or a value running past the end): the
    caller decodes the field, which names the error."""
    pos, end = 0, len(body)
    aid = None
    while pos < end:
        start = pos + 3
        if start > end:
            return False, None
        stop = start + body[pos + 2]
        if stop > end:
            return False, None
        if aid is None and body[pos:pos + 2] in _AID_TAGS:
            aid = body[start:stop].hex().upper()
        pos = stop
    return True, aid


def _aid(message: Message, icc: Any = None) -> str | None:
    if icc is None and 55 in message:
        icc = message.get(55)
    if icc.__class__ is bytes:  # field 55's bytes, already checked (`icc_aid`)
        found = icc_aid(icc)[1]
        if found is not None:
            return found
    elif icc:
        for tag, value in icc:
            if tag in ("9F06", "004F", "0084", "4F", "84"):
                return value.hex().upper()
    if 59 in message:
        for tag, value in message.get(59):
            if tag == "020B":
                aid = value.hex().upper()
                return None if set(aid) == {"9"} else aid
    return None


@functools.lru_cache(maxsize=256)
def family_of_aid(aid: str) -> str | None:
    """The longest AID prefix in `AIDS` names the family (cached: a fleet sees few AIDs)."""
    for length in range(len(aid), 9, -1):
        family = AIDS.get(aid[:length])
        if family:
            return family
    return None


def read_application(message: Message, pan: str, contract_application: str | None = None,
                     icc: Any = None, entry_mode: Any = ...) -> str:
    """The application of a terminal's 0100 (see the module docstring for the rules);
    `icc` is field 55 (its pairs, or its bytes once `icc_aid` found them well formed) and
    `entry_mode` field 22 (None: absent) when the caller has already read them."""
    if contract_application in CONTRACT_APPLICATIONS:
        return contract_application
    if entry_mode is ...:
        entry_mode = str(message.get(22, "000")) if 22 in message else None
    mode = entry_mode.zfill(3)[:2] if entry_mode is not None else "05"
    aid = _aid(message, icc)
    family = (family_of_aid(aid) if aid else None) or family_of_bin(pan)
    chip, contactless, vad = _FAMILY_APPS[family]
    if mode in _CONTACTLESS:
        return contactless
    if aid is None and mode in _KEYED:
        return vad
    return chip
