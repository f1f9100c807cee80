"""The `HSM` protocol every backend implements, and the value types it speaks.

All methods are coroutines: a network HSM answers over a socket and a PKCS#11 token is
driven from worker threads, so the event loop never waits on a device. Keys are always
named; which bytes a name stands for never leaves the backend.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

import msgspec

from passerelle.hsm.dukpt import Usage as DukptUsage
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType

__all__ = ["HSM", "Algorithm", "DukptUsage", "KeyInfo", "KeyType", "MacAlgorithm", "PanDigest"]


class MacAlgorithm(enum.StrEnum):
    RETAIL = "iso9797-1-alg3"  # ANSI X9.19, TDES double-length key, padding method 1
    AES_CMAC = "aes-cmac"  # NIST SP 800-38B / RFC 4493


class PanDigest(msgspec.Struct, frozen=True):
    """A keyed PAN digest and the key version that made it (stored next to the row)."""

    version: int
    digest: bytes


@runtime_checkable
class HSM(Protocol):
    """One interface over the soft, PKCS#11 and payShield backends."""

    backend: str

    async def diagnostics(self) -> dict[str, str]:
        """Cheap liveness check (payShield NC); never returns key material."""
        ...

    async def list_keys(self) -> list[KeyInfo]: ...

    async def key_info(self, name: str) -> KeyInfo: ...

    async def generate_key(
        self,
        name: str,
        key_type: KeyType,
        algorithm: Algorithm | None = None,
        length: int | None = None,
    ) -> KeyInfo: ...

    async def rotate_key(self, name: str) -> KeyInfo:
        """Add a new version; older versions stay usable for reading and search."""
        ...

    async def import_key(self, name: str, key_block: str, kbpk: str) -> KeyInfo:
        """Import a TR-31 key block wrapped under the named KBPK."""
        ...

    async def pan_hmac(self, pan: str, version: int | None = None) -> PanDigest:
        """HMAC-SHA256 of the PAN under the PAN key (newest version unless one is named)."""
        ...

    async def pan_hmac_versions(self) -> list[int]: ...

    async def encrypt_data(self, key: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        """AES-GCM under the newest version of `key`: version(2) | nonce(12) | ct | tag(16)."""
        ...

    async def decrypt_data(self, key: str, blob: bytes, aad: bytes = b"") -> bytes: ...

    async def translate_pin(
        self,
        pin_block: bytes,
        *,
        pan: str,
        source_key: str,
        source_format: int,
        dest_key: str,
        dest_format: int,
        ksn: bytes | None = None,
    ) -> bytes:
        """Re-encipher a PIN block from a TPK (or a DUKPT BDK + KSN) to a ZPK."""
        ...

    async def generate_mac(
        self,
        key: str,
        data: bytes,
        algorithm: MacAlgorithm = MacAlgorithm.RETAIL,
        length: int = 8,
    ) -> bytes: ...

    async def verify_mac(
        self, key: str, data: bytes, mac: bytes, algorithm: MacAlgorithm = MacAlgorithm.RETAIL
    ) -> bool: ...

    async def verify_arqc(
        self,
        key: str,
        *,
        pan: str,
        psn: str,
        atc: bytes,
        unpredictable_number: bytes,
        data: bytes,
        arqc: bytes,
    ) -> bool:
        """EMV common core: option A ICC key, session key from R = ATC|0000|UN."""
        ...

    async def generate_arpc(
        self, key: str, *, pan: str, psn: str, arqc: bytes, arc: bytes
    ) -> bytes:
        """ARPC method 1 under the ICC master key."""
        ...

    async def derive_dukpt(self, bdk: str, ksn: bytes, usage: DukptUsage) -> str:
        """Check value of the DUKPT working key for this KSN (the key itself stays inside)."""
        ...

    async def reload(self) -> None:
        """Pick up keys added or rotated since start (SIGHUP)."""
        ...

    async def close(self) -> None: ...
