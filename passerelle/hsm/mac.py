"""Message authentication codes used on acquirer links.

- ISO 9797-1 MAC algorithm 3 ("retail MAC", ANSI X9.19): single-DES CBC-MAC under K1, then
  the last block decrypted under K2 and encrypted again under K1.
- AES-CMAC (NIST SP 800-38B, RFC 4493; ISO 9797-1:2011 MAC algorithm 5).
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from passerelle.hsm import tdes
from passerelle.hsm.errors import BadInputError, BadLengthError


class Padding(enum.IntEnum):
    """ISO 9797-1 padding methods."""

    ZEROS = 1  # method 1: zero bytes (none if already aligned)
    BIT = 2  # method 2: 0x80 then zeros (always added)
    LENGTH = 3  # method 3: a block with the bit length, then method 1


def pad(data: bytes, method: Padding, block: int = 8) -> bytes:
    if method is Padding.ZEROS:
        if data and len(data) % block == 0:
            return data
        return data + bytes(block - len(data) % block)
    if method is Padding.BIT:
        data = data + b"\x80"
        return data + bytes(-len(data) % block)
    if method is Padding.LENGTH:
        prefix = (len(data) * 8).to_bytes(block, "big")
        return prefix + pad(data, Padding.ZEROS, block) if data else prefix + bytes(block)
    raise BadInputError(f"unknown ISO 9797-1 padding method {method}")


def retail_mac(key: bytes, data: bytes, padding: Padding = Padding.ZEROS) -> bytes:
    """ISO 9797-1 MAC algorithm 3 with a double-length key; the full 8-byte MAC."""
    if len(key) != 16:
        raise BadLengthError(f"retail MAC needs a 16-byte (double-length) key, not {len(key)}")
    k1, k2 = key[:8], key[8:]
    chained = tdes.encrypt_cbc(k1, pad(data, padding))[-8:]
    return tdes.encrypt_ecb(k1, tdes.decrypt_ecb(k2, chained))


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (RFC 4493), the full 16-byte tag."""
    if len(key) not in (16, 24, 32):
        raise BadLengthError(f"AES-CMAC needs a 16, 24 or 32-byte key, not {len(key)}")
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()
