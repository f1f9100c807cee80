"""EMV application cryptograms (EMV 4.3 Book 2, Annex A1 and section 8), TDES only.

Issuer master key (IMK-AC) -> ICC master key by option A (A1.4.1) -> session key by the
common session key derivation (A1.3) from an 8-byte diversification value R -> ARQC as an
ISO 9797-1 algorithm 3 MAC with padding method 2. ARPC method 1 (8.2.1) and method 2 (8.2.2).
"""

from __future__ import annotations

from passerelle.hsm import tdes
from passerelle.hsm.errors import BadInputError, BadLengthError
from passerelle.hsm.mac import Padding, retail_mac


def _odd_parity(key: bytes) -> bytes:
    return bytes(b & 0xFE | (((b >> 1).bit_count() + 1) & 1) for b in key)


def icc_master_key(imk: bytes, pan: str, psn: str = "00") -> bytes:
    """Option A: the 16 rightmost digits of PAN||PSN, enciphered, and its complement."""
    if len(imk) != 16:
        raise BadLengthError(f"an EMV issuer master key is 16 bytes, not {len(imk)}")
    if not (pan.isascii() and pan.isdigit() and psn.isascii() and psn.isdigit() and len(psn) <= 2):
        raise BadInputError("PAN and PAN sequence number must be decimal digits")
    y = bytes.fromhex((pan + psn.rjust(2, "0"))[-16:].rjust(16, "0"))
    left = tdes.encrypt_ecb(imk, y)
    right = tdes.encrypt_ecb(imk, tdes.xor(y, b"\xff" * 8))
    return _odd_parity(left + right)


def session_key(icc_mk: bytes, r: bytes) -> bytes:
    """Common session key derivation from the 8-byte diversification value R."""
    if len(r) != 8:
        raise BadLengthError(f"the EMV diversification value R is 8 bytes, not {len(r)}")
    f1 = r[:2] + b"\xf0" + r[3:]
    f2 = r[:2] + b"\x0f" + r[3:]
    return tdes.encrypt_ecb(icc_mk, f1) + tdes.encrypt_ecb(icc_mk, f2)


def diversification(atc: bytes, unpredictable_number: bytes = bytes(4)) -> bytes:
    """R = ATC || '0000' || UN, the common-core form used by the EMV CSK schemes."""
    if len(atc) != 2 or len(unpredictable_number) != 4:
        raise BadLengthError("ATC is 2 bytes and the unpredictable number 4 bytes")
    return atc + b"\x00\x00" + unpredictable_number


def application_cryptogram(sk: bytes, data: bytes) -> bytes:
    return retail_mac(sk, data, Padding.BIT)


def arpc_method1(key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """ARPC = TDES(key, ARQC xor (ARC || 00..00))."""
    if len(arqc) != 8 or len(arc) != 2:
        raise BadLengthError("ARQC is 8 bytes and the authorisation response code 2 bytes")
    return tdes.encrypt_ecb(key, tdes.xor(arqc, arc + bytes(6)))


def arpc_method2(sk: bytes, arqc: bytes, csu: bytes, proprietary: bytes = b"") -> bytes:
    """ARPC = first 4 bytes of MAC(SK, ARQC || CSU || proprietary data)."""
    if len(arqc) != 8 or len(csu) != 4 or len(proprietary) > 8:
        raise BadLengthError("ARQC is 8 bytes, CSU 4 bytes, proprietary data at most 8 bytes")
    return retail_mac(sk, arqc + csu + proprietary, Padding.BIT)[:4]
