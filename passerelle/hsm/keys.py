"""Key metadata: what a named key is for, and how we fingerprint it without showing it.

A key check value (KCV) lets an operator compare a key across systems with no key material
on screen: TDES keys use the classic 3-byte E(K, 0^8); AES keys the 5-byte CMAC(K, 0^16) of
ANSI X9.24-1:2017; HMAC keys the first 3 bytes of HMAC-SHA256(K, 0^16).
"""

from __future__ import annotations

import enum
import hashlib
import hmac

import msgspec
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from passerelle.hsm import tdes
from passerelle.hsm.errors import BadLengthError, WrongKeyTypeError, a


class KeyType(enum.StrEnum):
    """What a key may be used for (one purpose per key, as PCI PIN requires)."""

    DATA = "data"  # AES-GCM data encryption key (TR-31 D0)
    PAN_HMAC = "pan-hmac"  # HMAC-SHA256 key for card search (TR-31 M7)
    PIN = "pin"  # TPK or ZPK, PIN block encryption (TR-31 P0)
    BDK = "bdk"  # DUKPT base derivation key (TR-31 B0)
    MAC = "mac"  # TAK/ZAK: TDES for retail MAC, AES for CMAC (TR-31 M3/M6)
    EMV_AC = "emv-ac"  # issuer master key for application cryptograms (TR-31 E0)
    KBPK = "kbpk"  # TR-31 key block protection key (TR-31 K1)


class Algorithm(enum.StrEnum):
    TDES = "tdes"
    AES = "aes"
    HMAC = "hmac"


#: TR-31 key usage -> our key type.
TR31_USAGE = {
    "D0": KeyType.DATA,
    "M7": KeyType.PAN_HMAC,
    "P0": KeyType.PIN,
    "B0": KeyType.BDK,
    "M0": KeyType.MAC,
    "M1": KeyType.MAC,
    "M3": KeyType.MAC,
    "M6": KeyType.MAC,
    "E0": KeyType.EMV_AC,
    "K0": KeyType.KBPK,
    "K1": KeyType.KBPK,
}
#: our key type -> the TR-31 usage we write.
USAGE_OF = {
    KeyType.DATA: "D0",
    KeyType.PAN_HMAC: "M7",
    KeyType.PIN: "P0",
    KeyType.BDK: "B0",
    KeyType.MAC: "M3",
    KeyType.EMV_AC: "E0",
    KeyType.KBPK: "K1",
}
TR31_ALGORITHM = {"T": Algorithm.TDES, "A": Algorithm.AES, "H": Algorithm.HMAC}

_LENGTHS = {
    Algorithm.TDES: (16, 24),
    Algorithm.AES: (16, 24, 32),
    Algorithm.HMAC: (16, 24, 32, 48, 64),  # 16+ so keys storage held in config import as-is
}
#: the algorithms each key type may use.
ALLOWED = {
    KeyType.DATA: (Algorithm.AES,),
    KeyType.PAN_HMAC: (Algorithm.HMAC,),
    KeyType.PIN: (Algorithm.TDES, Algorithm.AES),
    KeyType.BDK: (Algorithm.TDES, Algorithm.AES),
    KeyType.MAC: (Algorithm.TDES, Algorithm.AES),
    KeyType.EMV_AC: (Algorithm.TDES,),
    KeyType.KBPK: (Algorithm.TDES, Algorithm.AES),
}
DEFAULT_ALGORITHM = {
    KeyType.DATA: Algorithm.AES,
    KeyType.PAN_HMAC: Algorithm.HMAC,
    KeyType.PIN: Algorithm.TDES,
    KeyType.BDK: Algorithm.TDES,
    KeyType.MAC: Algorithm.TDES,
    KeyType.EMV_AC: Algorithm.TDES,
    KeyType.KBPK: Algorithm.AES,
}
DEFAULT_LENGTH = {Algorithm.TDES: 16, Algorithm.AES: 32, Algorithm.HMAC: 32}


class KeyVersion(msgspec.Struct, frozen=True):
    version: int
    kcv: str
    created: str


class KeyInfo(msgspec.Struct, frozen=True):
    """What may be shown about a key: never its value."""

    name: str
    type: KeyType
    algorithm: Algorithm
    length: int
    versions: tuple[KeyVersion, ...]

    @property
    def current(self) -> KeyVersion:
        return self.versions[-1]


def check_length(name: str, algorithm: Algorithm, length: int) -> None:
    if length not in _LENGTHS[algorithm]:
        *head, last = (str(n) for n in _LENGTHS[algorithm])
        allowed = f"{', '.join(head)} or {last}"
        raise BadLengthError(
            f"key {name!r}: {algorithm.upper()} keys are {allowed} bytes long, not {length}"
        )


def check_type(name: str, key_type: KeyType, algorithm: Algorithm) -> None:
    if algorithm not in ALLOWED[key_type]:
        raise WrongKeyTypeError(name, f"{algorithm}", f"{a(key_type)} key")


def kcv(algorithm: Algorithm, key: bytes) -> str:
    """Key check value, upper-case hex."""
    if algorithm is Algorithm.TDES:
        return tdes.encrypt_ecb(key, bytes(8))[:3].hex().upper()
    if algorithm is Algorithm.AES:
        mac = CMAC(algorithms.AES(key))
        mac.update(bytes(16))
        return mac.finalize()[:5].hex().upper()
    return hmac.new(key, bytes(16), hashlib.sha256).digest()[:3].hex().upper()
