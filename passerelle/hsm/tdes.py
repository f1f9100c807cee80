"""Triple-DES primitives on `cryptography`, for the payment algorithms that still need DES.

`cryptography` deprecates 8- and 16-byte TDES keys, so keys are expanded to the equivalent
24-byte K1|K2|K1 (or K|K|K) form, which computes the same function.
"""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from passerelle.hsm.errors import BadLengthError


def _expand(key: bytes) -> bytes:
    if len(key) == 8:
        return key * 3
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return key
    raise BadLengthError(f"a DES/TDES key is 8, 16 or 24 bytes long, not {len(key)}")


def _check_blocks(data: bytes) -> None:
    if len(data) % 8:
        raise BadLengthError(f"TDES data must be a multiple of 8 bytes, not {len(data)}")


def encrypt_ecb(key: bytes, data: bytes) -> bytes:
    _check_blocks(data)
    enc = Cipher(TripleDES(_expand(key)), modes.ECB()).encryptor()  # noqa: S305 - single-block payment primitive
    return enc.update(data) + enc.finalize()


def decrypt_ecb(key: bytes, data: bytes) -> bytes:
    _check_blocks(data)
    dec = Cipher(TripleDES(_expand(key)), modes.ECB()).decryptor()  # noqa: S305 - single-block payment primitive
    return dec.update(data) + dec.finalize()


def encrypt_cbc(key: bytes, data: bytes, iv: bytes = bytes(8)) -> bytes:
    _check_blocks(data)
    enc = Cipher(TripleDES(_expand(key)), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def decrypt_cbc(key: bytes, data: bytes, iv: bytes = bytes(8)) -> bytes:
    _check_blocks(data)
    dec = Cipher(TripleDES(_expand(key)), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))
