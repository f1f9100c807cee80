"""ISO 9564-1 PIN blocks, formats 0, 1, 3 (8 bytes, TDES) and 4 (16 bytes, AES).

Only the plaintext fields live here; `encipher`/`decipher` apply a key. Format 4 is the
AES "extended" block: the PIN field is enciphered, XORed with the PAN field and enciphered
again, so both halves are bound to the card.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from passerelle.hsm import tdes
from passerelle.hsm.errors import BadInputError, BadLengthError

FORMATS = (0, 1, 3, 4)


def _check_pin(pin: str) -> None:
    if not (pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 12):
        raise BadInputError("a PIN is 4 to 12 decimal digits")


def _check_pan(pan: str) -> None:
    if not (pan.isascii() and pan.isdigit() and 1 <= len(pan) <= 19):
        raise BadInputError("a PAN is 1 to 19 decimal digits")


def _pan_field_8(pan: str) -> bytes:
    """Formats 0 and 3: 0000 + the 12 rightmost PAN digits excluding the check digit."""
    _check_pan(pan)
    return bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0"))


def _random_nibbles(count: int, low: int) -> str:
    return "".join("0123456789ABCDEF"[low + secrets.randbelow(16 - low)] for _ in range(count))


def encode(pin: str, pan: str, fmt: int) -> bytes:
    """The plaintext PIN block (for format 4: the 16-byte plaintext PIN field)."""
    _check_pin(pin)
    head = f"{fmt}{len(pin):X}{pin}"
    if fmt == 0:
        field = bytes.fromhex(head.ljust(16, "F"))
        return tdes.xor(field, _pan_field_8(pan))
    if fmt == 1:
        return bytes.fromhex(head + _random_nibbles(16 - len(head), 0))
    if fmt == 3:
        field = bytes.fromhex(head + _random_nibbles(16 - len(head), 10))
        return tdes.xor(field, _pan_field_8(pan))
    if fmt == 4:
        _check_pan(pan)
        return bytes.fromhex(head.ljust(16, "A")) + secrets.token_bytes(8)
    raise BadInputError(f"PIN block format {fmt} is not supported (0, 1, 3 or 4)")


def pan_field_4(pan: str) -> bytes:
    """Format 4 PAN field: (PAN length - 12) nibble, the PAN, zero-padded to 16 bytes."""
    _check_pan(pan)
    if len(pan) < 12:
        return bytes.fromhex(("0" + pan.rjust(12, "0")).ljust(32, "0"))
    return bytes.fromhex((f"{len(pan) - 12:X}" + pan).ljust(32, "0"))


def decode(block: bytes, pan: str, fmt: int) -> str:
    """The PIN held in a plaintext block; raises BadInputError if the block is not well formed."""
    size = 16 if fmt == 4 else 8
    if len(block) != size:
        raise BadLengthError(f"a format {fmt} PIN block is {size} bytes, not {len(block)}")
    if fmt in (0, 3):
        block = tdes.xor(block, _pan_field_8(pan))
    elif fmt not in (1, 4):
        raise BadInputError(f"PIN block format {fmt} is not supported (0, 1, 3 or 4)")
    digits = block.hex().upper()
    if digits[0] != str(fmt):
        raise BadInputError(f"not a format {fmt} PIN block (control field {digits[0]})")
    length = int(digits[1], 16)
    if not 4 <= length <= 12:
        raise BadInputError(f"PIN block declares an impossible PIN length {length}")
    pin, fill = digits[2 : 2 + length], digits[2 + length : 16]
    if not pin.isdigit():
        raise BadInputError("PIN block holds non-decimal PIN digits")
    if (fmt == 0 and set(fill) - {"F"}) or (fmt == 3 and set(fill) - set("ABCDEF")):
        raise BadInputError(f"PIN block fill digits do not match format {fmt}")
    if fmt == 4 and set(fill) - {"A"}:
        raise BadInputError("PIN block fill digits do not match format 4")
    return pin


def _aes(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - single-block payment primitive
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def encipher(key: bytes, block: bytes, pan: str, fmt: int) -> bytes:
    if fmt == 4:
        return _aes(key, tdes.xor(_aes(key, block), pan_field_4(pan)))
    return tdes.encrypt_ecb(key, block)


def decipher(key: bytes, block: bytes, pan: str, fmt: int) -> bytes:
    size = 16 if fmt == 4 else 8
    if len(block) != size:
        raise BadLengthError(
            f"an enciphered format {fmt} PIN block is {size} bytes, not {len(block)}"
        )
    if fmt == 4:
        return _aes(key, tdes.xor(_aes(key, block, True), pan_field_4(pan)), True)
    return tdes.decrypt_ecb(key, block)
