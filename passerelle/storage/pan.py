"""Card numbers as storage keeps them: masked for display, keyed HMAC for exact search.

The full PAN never reaches a table. `pan_hmac` is one small function with a key version so
that the HSM issue can move the key behind `hsm.HSM.pan_hmac` without touching callers'
data: each row records the version, and a search tries every version still in retention.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from passerelle.codecs.masking import luhn
from passerelle.storage.db import StorageError

_MIN_PAN, _MAX_PAN = 12, 19
_MIN_KEY_BYTES = 16


class PanHmacKey(msgspec.Struct, frozen=True):
    """One version of the PAN HMAC key (from configuration until the HSM holds it)."""

    version: int
    key: bytes

    def __post_init__(self) -> None:
        if not 0 < self.version < 32768:
            raise StorageError(f"PAN HMAC key version must be 1..32767, got {self.version}")
        if len(self.key) < _MIN_KEY_BYTES:
            raise StorageError(
                f"PAN HMAC key version {self.version} is {len(self.key)} bytes; "
                f"at least {_MIN_KEY_BYTES} are needed"
            )

    @classmethod
    def from_hex(cls, version: int, key_hex: str) -> PanHmacKey:
        """A key as configuration holds it (hexadecimal)."""
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise StorageError(f"PAN HMAC key version {version} is not hexadecimal") from None
        return cls(version, key)

    def __repr__(self) -> str:  # never print key material
        return f"PanHmacKey(version={self.version}, key=<{len(self.key)} bytes>)"


def _check_pan(pan: str) -> str:
    if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit():
        raise StorageError("a PAN must be a string of digits")
    if not _MIN_PAN <= len(pan) <= _MAX_PAN:
        raise StorageError(f"a PAN has {_MIN_PAN} to {_MAX_PAN} digits, got {len(pan)}")
    return pan


def mask_pan(pan: str) -> str:
    """First 6 and last 4 digits, the rest as `*`: `"4970101234561234"` -> `"497010******1234"`."""
    pan = _check_pan(pan)
    return f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}"


# HMAC (RFC 2104) keeps the SHA-256 states after the key's inner and outer pads: per PAN
# it then costs two state copies and two short updates, a fifth of `hmac.new` and half of
# `hmac.digest`, which set the key up every time. One pair per key, a handful of keys.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_BLOCK = 64  # SHA-256's block size
_STATES: dict[bytes, tuple[Any, Any]] = {}


def _keyed_states(key: bytes) -> tuple[Any, Any]:
    states = _STATES.get(key)
    if states is None:
        block = (hashlib.sha256(key).digest() if len(key) > _BLOCK else key).ljust(_BLOCK,
                                                                                   b"\0")
        states = (hashlib.sha256(block.translate(_IPAD)),
                  hashlib.sha256(block.translate(_OPAD)))
        if len(_STATES) >= 64:
            _STATES.clear()
        _STATES[key] = states
    return states


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    inner, outer = _keyed_states(key)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.digest()  # type: ignore[no-any-return]


def pan_hmac(key: PanHmacKey, pan: str) -> tuple[bytes, int]:
    """HMAC-SHA256 of the PAN's digits under `key`, and the key version to store beside it."""
    return _hmac_sha256(key.key, _check_pan(pan).encode("ascii")), key.version


def protect_pan(key: PanHmacKey, pan: str) -> tuple[str, bytes, int]:
    """`mask_pan` and `pan_hmac` in one call, the PAN checked once: (masked, digest,
    version). The télécollecte dialogue calls it for every transaction it receives."""
    pan = _check_pan(pan)
    return (f"{pan[:6]}{'*' * (len(pan) - 10)}{pan[-4:]}",
            _hmac_sha256(key.key, pan.encode("ascii")), key.version)


def luhn_valid(digits: str) -> bool:
    """True when `digits` (12-19 of them) passes the Luhn check, as every real PAN does."""
    return _MIN_PAN <= len(digits) <= _MAX_PAN and luhn(digits)  # luhn refuses non-digits
