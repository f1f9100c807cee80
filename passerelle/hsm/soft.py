"""The soft backend: payment crypto on `cryptography`, keys from the wrapped keystore.

For a single node or a lab; production deployments with PCI PIN obligations use a real
HSM (`pkcs11` or `payshield`). Operations take microseconds, so they run inline on the
event loop; only key management touches the disk.
"""

from __future__ import annotations

import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from passerelle.hsm import engine, keys, tr31
from passerelle.hsm.base import MacAlgorithm, PanDigest
from passerelle.hsm.dukpt import Usage as DukptUsage
from passerelle.hsm.errors import BadInputError, BadLengthError, VerificationError
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType
from passerelle.hsm.keystore import Keystore

_GCM_OVERHEAD = 2 + 12 + 16


class SoftHSM:
    backend = "soft"

    def __init__(
        self,
        keystore: str | os.PathLike[str],
        kek: str | os.PathLike[str],
        pan_hmac_key: str = "pan-hmac",
    ) -> None:
        self.store = Keystore(keystore, kek)
        self._kek_path = kek
        self.pan_hmac_key = pan_hmac_key
        self._aead: dict[tuple[str, int], AESGCM] = {}

    async def diagnostics(self) -> dict[str, str]:
        return {
            "backend": self.backend,
            "keystore": str(self.store.path),
            "keys": str(len(self.store.names())),
        }

    async def list_keys(self) -> list[KeyInfo]:
        return [self.store.info(n) for n in self.store.names()]

    async def key_info(self, name: str) -> KeyInfo:
        return self.store.info(name)

    async def generate_key(
        self,
        name: str,
        key_type: KeyType,
        algorithm: Algorithm | None = None,
        length: int | None = None,
    ) -> KeyInfo:
        algorithm = algorithm or keys.DEFAULT_ALGORITHM[key_type]
        length = length or keys.DEFAULT_LENGTH[algorithm]
        keys.check_length(name, algorithm, length)
        return self.store.add(name, key_type, algorithm, secrets.token_bytes(length))

    async def rotate_key(self, name: str) -> KeyInfo:
        return self.store.rotate(name)

    async def import_key(self, name: str, key_block: str, kbpk: str) -> KeyInfo:
        wrapping = self.store.get(kbpk)
        header, value = tr31.unwrap(wrapping.need(KeyType.KBPK), key_block)
        key_type = keys.TR31_USAGE.get(header.usage)
        algorithm = keys.TR31_ALGORITHM.get(header.algorithm)
        if key_type is None or algorithm is None:
            raise BadInputError(
                f"TR-31 usage {header.usage!r} / algorithm {header.algorithm!r} has no use here"
            )
        return self.store.add(name, key_type, algorithm, value)

    async def pan_hmac(self, pan: str, version: int | None = None) -> PanDigest:
        key = self.store.get(self.pan_hmac_key, version)
        ver = version if version is not None else self.store.versions(self.pan_hmac_key)[-1]
        return PanDigest(ver, engine.pan_hmac(key, pan))

    async def pan_hmac_versions(self) -> list[int]:
        return self.store.versions(self.pan_hmac_key)

    def _gcm(self, name: str, version: int | None) -> tuple[int, AESGCM]:
        ver = self.store.versions(name)[-1] if version is None else version
        aead = self._aead.get((name, ver))
        if aead is None:
            aead = AESGCM(self.store.get(name, ver).need(KeyType.DATA, Algorithm.AES))
            self._aead[(name, ver)] = aead
        return ver, aead

    async def encrypt_data(self, key: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        ver, aead = self._gcm(key, None)
        nonce = secrets.token_bytes(12)
        return ver.to_bytes(2, "big") + nonce + aead.encrypt(nonce, plaintext, aad)

    async def decrypt_data(self, key: str, blob: bytes, aad: bytes = b"") -> bytes:
        if len(blob) < _GCM_OVERHEAD:
            raise BadLengthError(f"an encrypted blob is at least {_GCM_OVERHEAD} bytes")
        _, aead = self._gcm(key, int.from_bytes(blob[:2], "big"))
        try:
            return aead.decrypt(blob[2:14], blob[14:], aad)
        except InvalidTag:
            raise VerificationError(f"data under key {key!r} does not authenticate") from None

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
        return engine.translate_pin(
            self.store.get(source_key),
            self.store.get(dest_key),
            pin_block,
            pan=pan,
            src_fmt=source_format,
            dst_fmt=dest_format,
            ksn=ksn,
        )

    async def generate_mac(
        self,
        key: str,
        data: bytes,
        algorithm: MacAlgorithm = MacAlgorithm.RETAIL,
        length: int = 8,
    ) -> bytes:
        return engine.generate_mac(self.store.get(key), data, MacAlgorithm(algorithm), length)

    async def verify_mac(
        self, key: str, data: bytes, mac: bytes, algorithm: MacAlgorithm = MacAlgorithm.RETAIL
    ) -> bool:
        return engine.verify_mac(self.store.get(key), data, mac, MacAlgorithm(algorithm))

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
        return engine.verify_arqc(
            self.store.get(key),
            pan=pan,
            psn=psn,
            atc=atc,
            un=unpredictable_number,
            data=data,
            arqc=arqc,
        )

    async def generate_arpc(
        self, key: str, *, pan: str, psn: str, arqc: bytes, arc: bytes
    ) -> bytes:
        return engine.generate_arpc(self.store.get(key), pan, psn, arqc, arc)

    async def derive_dukpt(self, bdk: str, ksn: bytes, usage: DukptUsage) -> str:
        return engine.dukpt_kcv(self.store.get(bdk), ksn, DukptUsage(usage))

    async def reload(self) -> None:
        """Re-read the keystore (SIGHUP, or after `mpctl keys rotate`)."""
        self.store = Keystore(self.store.path, self._kek_path)
        self._aead.clear()

    async def close(self) -> None:
        self._aead.clear()
