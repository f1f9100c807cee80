"""Payment operations on clear keys, shared by the soft backend and the payShield simulator.

Only code that owns the key bytes (the soft keystore, the simulator's LMK) calls this;
every check that a person could get wrong (key type, lengths, formats) raises an HSMError
that names the key and never its value.
"""

from __future__ import annotations

import hashlib
import hmac

from passerelle.hsm import dukpt, emv, keys, mac, pinblock
from passerelle.hsm.base import MacAlgorithm
from passerelle.hsm.errors import BadInputError, BadLengthError, WrongKeyTypeError, a
from passerelle.hsm.keys import Algorithm, KeyType


class ClearKey:
    """A key value with its metadata; its repr never shows the value."""

    __slots__ = ("algorithm", "name", "type", "value")

    def __init__(self, name: str, key_type: KeyType, algorithm: Algorithm, value: bytes) -> None:
        self.name, self.type, self.algorithm, self.value = name, key_type, algorithm, value

    def __repr__(self) -> str:
        return f"ClearKey(name={self.name!r}, type={self.type}, algorithm={self.algorithm})"

    def need(self, key_type: KeyType, *algorithms: Algorithm) -> bytes:
        if self.type is not key_type:
            raise WrongKeyTypeError(self.name, f"{self.type}", f"{a(key_type)} key")
        if algorithms and self.algorithm not in algorithms:
            wanted = " or ".join(f"{a}" for a in algorithms)
            raise WrongKeyTypeError(self.name, f"{self.algorithm} {self.type}", f"{a(wanted)} key")
        return self.value


def _check_format(fmt: int, key: ClearKey) -> None:
    if fmt not in pinblock.FORMATS:
        raise BadInputError(f"PIN block format {fmt} is not supported (0, 1, 3 or 4)")
    wanted = Algorithm.AES if fmt == 4 else Algorithm.TDES
    if key.algorithm is not wanted and key.type is KeyType.PIN:
        raise WrongKeyTypeError(key.name, f"{key.algorithm}", f"{a(wanted)} key for format {fmt}")


def pin_source_key(src: ClearKey, fmt: int, ksn: bytes | None) -> bytes:
    """The key that enciphered the terminal's PIN block: a TPK, or DUKPT's PIN key."""
    if src.type is KeyType.BDK:
        if ksn is None:
            raise BadInputError(f"key {src.name!r} is a DUKPT BDK: the KSN is required")
        if src.algorithm is Algorithm.TDES:
            if fmt == 4:
                raise WrongKeyTypeError(src.name, "tdes bdk", "an AES BDK for format 4")
            return dukpt.tdes_session_key(src.value, ksn, dukpt.Usage.PIN)
        if fmt != 4:
            raise WrongKeyTypeError(src.name, "aes bdk", "a TDES BDK for formats 0, 1 and 3")
        return dukpt.aes_working_key(src.value, ksn, dukpt.Usage.PIN)
    if ksn is not None:
        raise BadInputError(f"key {src.name!r} is not a BDK: a KSN makes no sense with it")
    _check_format(fmt, src)
    return src.need(KeyType.PIN)


def translate_pin(
    src: ClearKey,
    dst: ClearKey,
    block: bytes,
    *,
    pan: str,
    src_fmt: int,
    dst_fmt: int,
    ksn: bytes | None = None,
) -> bytes:
    if src_fmt not in pinblock.FORMATS:
        raise BadInputError(f"PIN block format {src_fmt} is not supported (0, 1, 3 or 4)")
    dst_value = dst.need(KeyType.PIN)
    _check_format(dst_fmt, dst)
    src_value = pin_source_key(src, src_fmt, ksn)
    clear = pinblock.decipher(src_value, block, pan, src_fmt)
    pin = pinblock.decode(clear, pan, src_fmt)
    return pinblock.encipher(dst_value, pinblock.encode(pin, pan, dst_fmt), pan, dst_fmt)


def generate_mac(key: ClearKey, data: bytes, algorithm: MacAlgorithm, length: int) -> bytes:
    if algorithm is MacAlgorithm.RETAIL:
        value = key.need(KeyType.MAC, Algorithm.TDES)
        if not 4 <= length <= 8:
            raise BadLengthError(f"a retail MAC is 4 to 8 bytes, not {length}")
        if len(value) != 16:
            raise BadLengthError(f"key {key.name!r}: retail MAC needs a double-length TDES key")
        return mac.retail_mac(value, data)[:length]
    if algorithm is MacAlgorithm.AES_CMAC:
        value = key.need(KeyType.MAC, Algorithm.AES)
        if not 4 <= length <= 16:
            raise BadLengthError(f"an AES-CMAC is 4 to 16 bytes, not {length}")
        return mac.aes_cmac(value, data)[:length]
    raise BadInputError(f"unknown MAC algorithm {algorithm!r}")


def verify_mac(key: ClearKey, data: bytes, tag: bytes, algorithm: MacAlgorithm) -> bool:
    expected = generate_mac(key, data, algorithm, 16 if algorithm is MacAlgorithm.AES_CMAC else 8)
    if not 4 <= len(tag) <= len(expected):
        raise BadLengthError(f"a MAC to verify is 4 to {len(expected)} bytes, not {len(tag)}")
    return hmac.compare_digest(expected[: len(tag)], tag)


def _icc_key(key: ClearKey, pan: str, psn: str) -> bytes:
    return emv.icc_master_key(key.need(KeyType.EMV_AC, Algorithm.TDES), pan, psn)


def verify_arqc(
    key: ClearKey, *, pan: str, psn: str, atc: bytes, un: bytes, data: bytes, arqc: bytes
) -> bool:
    if len(arqc) != 8:
        raise BadLengthError(f"an ARQC is 8 bytes, not {len(arqc)}")
    sk = emv.session_key(_icc_key(key, pan, psn), emv.diversification(atc, un))
    return hmac.compare_digest(emv.application_cryptogram(sk, data), arqc)


def generate_arpc(key: ClearKey, pan: str, psn: str, arqc: bytes, arc: bytes) -> bytes:
    return emv.arpc_method1(_icc_key(key, pan, psn), arqc, arc)


def dukpt_kcv(bdk: ClearKey, ksn: bytes, usage: dukpt.Usage) -> str:
    value = bdk.need(KeyType.BDK)
    if bdk.algorithm is Algorithm.TDES:
        return keys.kcv(Algorithm.TDES, dukpt.tdes_session_key(value, ksn, usage))
    return keys.kcv(Algorithm.AES, dukpt.aes_working_key(value, ksn, usage))


def pan_hmac(key: ClearKey, pan: str) -> bytes:
    value = key.need(KeyType.PAN_HMAC, Algorithm.HMAC)
    check_pan(pan)
    return hmac.new(value, pan.encode("ascii"), hashlib.sha256).digest()


def check_pan(pan: str) -> None:
    if not (pan.isascii() and pan.isdigit() and 8 <= len(pan) <= 19):
        raise BadInputError("a PAN is 8 to 19 decimal digits")
