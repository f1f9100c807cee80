"""DUKPT: derived unique key per transaction.

- TDES DUKPT, ANSI X9.24-1:2009: 10-byte KSN, 21-bit counter, non-reversible key generation
  and the PIN / MAC / data variants.
- AES DUKPT, ANSI X9.24-3:2017: 12-byte KSN (8-byte initial key ID + 32-bit counter), keys
  derived with the NIST SP 800-108 counter-mode KDF on AES-ECB.
The receiving side (us) derives straight from the BDK; no future-key registers are needed.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from passerelle.hsm import tdes
from passerelle.hsm.errors import BadInputError, BadLengthError

_C0 = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")


class Usage(enum.StrEnum):
    PIN = "pin"
    MAC_REQUEST = "mac-request"
    MAC_RESPONSE = "mac-response"
    DATA_REQUEST = "data-request"
    DATA_RESPONSE = "data-response"


_TDES_VARIANT = {
    Usage.PIN: bytes.fromhex("00000000000000FF00000000000000FF"),
    Usage.MAC_REQUEST: bytes.fromhex("000000000000FF00000000000000FF00"),
    Usage.MAC_RESPONSE: bytes.fromhex("00000000FF00000000000000FF000000"),
    Usage.DATA_REQUEST: bytes.fromhex("0000000000FF00000000000000FF0000"),
    Usage.DATA_RESPONSE: bytes.fromhex("000000FF00000000000000FF00000000"),
}


def tdes_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """Initial PIN encryption key (IPEK / IK) for the device that owns this KSN."""
    if len(bdk) != 16:
        raise BadLengthError(f"a TDES DUKPT BDK is 16 bytes, not {len(bdk)}")
    _check_tdes_ksn(ksn)
    base = bytearray(ksn[:8])
    base[7] &= 0xE0
    return tdes.encrypt_ecb(bdk, bytes(base)) + tdes.encrypt_ecb(tdes.xor(bdk, _C0), bytes(base))


def _check_tdes_ksn(ksn: bytes) -> None:
    if len(ksn) != 10:
        raise BadLengthError(f"a TDES DUKPT KSN is 10 bytes, not {len(ksn)}")


def _nrkgp(key: bytes, data: bytes) -> bytes:
    """The non-reversible key generation process of X9.24-1 A.2."""

    def half(k: bytes) -> bytes:
        left, right = k[:8], k[8:]
        return tdes.xor(tdes.encrypt_ecb(left, tdes.xor(data, right)), right)

    return half(tdes.xor(key, _C0)) + half(key)


def tdes_transaction_key(bdk: bytes, ksn: bytes) -> bytes:
    """The current (base) transaction key for this KSN, before any variant."""
    key = tdes_ipek(bdk, ksn)
    counter = int.from_bytes(ksn[7:10], "big") & 0x1FFFFF
    if counter == 0 or counter.bit_count() > 10:
        raise BadInputError("DUKPT KSN counter is 0 or has more than 10 bits set")
    register = int.from_bytes(ksn[2:10], "big") & ~0x1FFFFF
    for bit in range(20, -1, -1):
        if counter & (1 << bit):
            register |= 1 << bit
            key = _nrkgp(key, register.to_bytes(8, "big"))
    return key


def tdes_session_key(bdk: bytes, ksn: bytes, usage: Usage) -> bytes:
    """The working key of one usage for this KSN (PIN, MAC or data variant)."""
    key = tdes.xor(tdes_transaction_key(bdk, ksn), _TDES_VARIANT[usage])
    if usage in (Usage.DATA_REQUEST, Usage.DATA_RESPONSE):
        # X9.24-1:2009 data keys are the variant encrypted under itself, half by half.
        key = tdes.encrypt_ecb(key, key[:8]) + tdes.encrypt_ecb(key, key[8:])
    return key


# --- AES DUKPT (X9.24-3:2017) ---


class AesKeyType(enum.IntEnum):
    """Algorithm indicator of the derivation data."""

    TDES2 = 0
    TDES3 = 1
    AES128 = 2
    AES192 = 3
    AES256 = 4


_AES_USAGE = {
    Usage.PIN: 0x1000,
    Usage.MAC_REQUEST: 0x2000,
    Usage.MAC_RESPONSE: 0x2001,
    Usage.DATA_REQUEST: 0x3000,
    Usage.DATA_RESPONSE: 0x3001,
}
_KEY_BITS = {
    AesKeyType.TDES2: 128,
    AesKeyType.TDES3: 192,
    AesKeyType.AES128: 128,
    AesKeyType.AES192: 192,
    AesKeyType.AES256: 256,
}
_INITIAL_KEY = 0x8001
_DERIVATION_KEY = 0x8000


def _aes_type_of(key: bytes) -> AesKeyType:
    try:
        return {16: AesKeyType.AES128, 24: AesKeyType.AES192, 32: AesKeyType.AES256}[len(key)]
    except KeyError:
        raise BadLengthError(f"an AES DUKPT key is 16, 24 or 32 bytes, not {len(key)}") from None


def _derive(key: bytes, usage: int, kind: AesKeyType, data: bytes) -> bytes:
    """X9.24-3 6.3.2: SP 800-108 counter KDF with AES-ECB as PRF."""
    bits = _KEY_BITS[kind]
    out = b""
    for counter in range(1, (bits + 127) // 128 + 1):
        block = (
            bytes([1, counter])
            + usage.to_bytes(2, "big")
            + int(kind).to_bytes(2, "big")
            + bits.to_bytes(2, "big")
            + data
        )
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - single-block payment primitive
        out += enc.update(block) + enc.finalize()
    return out[: bits // 8]


def _check_aes_ksn(ksn: bytes) -> None:
    if len(ksn) != 12:
        raise BadLengthError(f"an AES DUKPT KSN is 12 bytes, not {len(ksn)}")


def aes_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    if len(initial_key_id) != 8:
        raise BadLengthError(f"an AES DUKPT initial key ID is 8 bytes, not {len(initial_key_id)}")
    return _derive(bdk, _INITIAL_KEY, _aes_type_of(bdk), initial_key_id)


def aes_derivation_key(bdk: bytes, ksn: bytes) -> bytes:
    """The intermediate derivation key for this KSN (the 'transaction key' of the vectors)."""
    _check_aes_ksn(ksn)
    kind = _aes_type_of(bdk)
    key = aes_initial_key(bdk, ksn[:8])
    counter = int.from_bytes(ksn[8:], "big")
    if counter == 0 or counter.bit_count() > 16:
        raise BadInputError("AES DUKPT KSN counter is 0 or has more than 16 bits set")
    mask = 0
    for bit in range(31, -1, -1):
        if counter & (1 << bit):
            mask |= 1 << bit
            key = _derive(key, _DERIVATION_KEY, kind, ksn[4:8] + mask.to_bytes(4, "big"))
    return key


def aes_working_key(
    bdk: bytes, ksn: bytes, usage: Usage, kind: AesKeyType = AesKeyType.AES128
) -> bytes:
    """The working key of one usage and algorithm for this KSN."""
    derivation = aes_derivation_key(bdk, ksn)
    return _derive(derivation, _AES_USAGE[usage], kind, ksn[4:])
