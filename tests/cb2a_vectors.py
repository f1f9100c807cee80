"""The CB2A reference messages of shared/vectors/cb2a and their decoded values.

The expected values are transcribed from that directory's README.md (not from our codec's
output): every field and sub-element in order, repeats kept. Sub-elements of 55/59 are given
as the README's hex.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# tests/cb2a_vectors.py -> parents[1] is the repo; shared/ sits beside the repo.
VECTORS = Path(
    os.environ.get(
        "PASSERELLE_VECTORS",
        Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "cb2a",
    )
)

NAMES = ("0100-emv", "0110-emv", "0100-stripe", "0110-stripe")


def load(name: str) -> bytes:
    """One vector's bytes (its file holds one hex string)."""
    path = VECTORS / f"{name}.hex"
    if not path.is_file():
        raise FileNotFoundError(
            f"CB2A reference vector {path} is missing: check out shared/ beside the repository "
            "or set PASSERELLE_VECTORS to the directory holding the .hex files"
        )
    return bytes.fromhex(path.read_text().strip())


def _tlv(text: str) -> tuple[tuple[str, bytes], ...]:
    """'0101=1510 0102=11' -> (('0101', b'\\x15\\x10'), ('0102', b'\\x11'))."""
    return tuple((tag, bytes.fromhex(value)) for tag, value in (p.split("=") for p in text.split()))


ADDRESS = "FRANCE TELECOM\\LYON\\69                FR"

EXPECTED: dict[str, dict[int, Any]] = {
    "0100-emv": {
        2: "4973019600600485", 3: "000000", 4: "000000003000", 11: "000351", 12: "163700",
        13: "0124", 18: "4814", 22: "051", 23: "000", 25: "00", 32: "49730030003",
        33: "92500023622", 37: "019600600485", 41: "PUBLIPHO", 42: "3231343        ",
        43: ADDRESS,
        47: (("08", "12345678"), ("96", "05008593500000"), ("97", " " * 8), ("A0", " " * 8)),
        49: "978", 53: "0000000000000000",
        55: _tlv(
            "0057=4973019600600485D12122016278272031583F 0082=3C00 0095=8080008000 009C=00 "
            "5F24=121231 9F06=A0000000421010 9F10=06160A03A40000020000 9F26=93D1A69155ACA8CD "
            "9F27=80 9F33=208000 9F36=001F 9F37=6ED91588 DF80=00 DF81=02"
        ),
        59: _tlv(
            "0101=1510 0101=1660 0102=11 0200=47 0201=504502450901 0202=03231343 0203=0001 "
            "0205=0250 0207=000000003000 020B=A0000000422047"
        ),
    },
    "0110-emv": {
        2: "4973019600600485", 3: "000000", 4: "000000003000", 7: "0124163700", 11: "000351",
        13: "0124", 23: "000", 32: "49730030003", 37: "019600600485", 38: "328422", 39: "00",
        41: "PUBLIPHO", 42: "3231343        ", 49: "978", 53: "0000000000000000",
        55: _tlv("0091=07FAAFB2E41926243030 5F24=121231"),
        59: _tlv("0102=11"),
    },
    "0100-stripe": {
        2: "4539795755326151", 3: "000000", 4: "000000001524", 11: "000003", 12: "164034",
        13: "0124", 14: "1308", 18: "4814", 22: "022", 25: "08", 32: "51323511899",
        33: "92500023622", 35: "4539795755326151=13082018550000001001", 37: "795755326151",
        41: "12345678", 42: "10012055       ", 43: ADDRESS,
        47: (("08", "12345678"), ("96", "05008593500000"), ("97", "12345678"),
             ("A0", "12345678")),
        49: "978", 53: "0000000000000000",
        59: _tlv(
            "0101=5555 0102=11 0200=48 0201=000000000000 0202=00012055 0203=0001 0205=0250 "
            "0207=000000001524 020B=9999999999999999"
        ),
    },
}

# 0110-stripe: "Same 2, 3, 4, 11, 12, 13, 14, 18, 22, 25, 32, 37, 41, 42, 43, 49, 53 as the
# request; 39=30, 44 AA=04701, 59 reduced". The bytes also carry field 33, unchanged from the
# request: bitmap 703C44818AF08820, fifth byte 0x8A = fields 33, 37, 39. The README's list
# omits 33; we expect it as the request has it.
_SAME_AS_REQUEST = (2, 3, 4, 11, 12, 13, 14, 18, 22, 25, 32, 33, 37, 41, 42, 43, 49, 53)
EXPECTED["0110-stripe"] = {
    **{n: EXPECTED["0100-stripe"][n] for n in _SAME_AS_REQUEST},
    39: "30",
    44: (("AA", "04701"),),
    59: _tlv(
        "0102=11 0200=48 0201=000000000000 0202=00012055 0203=0001 0205=0250 "
        "0207=000000001524 020B=9999999999999999"
    ),
}
EXPECTED["0110-stripe"] = dict(sorted(EXPECTED["0110-stripe"].items()))

SIZES = {"0100-emv": 371, "0110-emv": 125, "0100-stripe": 277, "0110-stripe": 209}
MTIS = {"0100-emv": "0100", "0110-emv": "0110", "0100-stripe": "0100", "0110-stripe": "0110"}
# The card data each vector carries, that no output may show in clear.
SECRETS = {
    "0100-emv": ("4973019600600485", "4973019600600485D12122016278272031583F"),
    "0110-emv": ("4973019600600485",),
    "0100-stripe": ("4539795755326151", "13082018550000001001"),
    "0110-stripe": ("4539795755326151",),
}
