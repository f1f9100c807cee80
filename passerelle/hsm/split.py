"""Two backends behind one HSM: payment functions on one, PAN HMAC and data keys on another.

A payShield runs the host commands the gateway uses (PIN, MAC, ARQC) but not our PAN HMAC
or AES-GCM storage encryption; `data_backend = "pkcs11"` (or "soft") in the settings puts
those on a token while the payShield keeps the payment keys.
"""

from __future__ import annotations

from passerelle.hsm.base import HSM, MacAlgorithm, PanDigest
from passerelle.hsm.dukpt import Usage as DukptUsage
from passerelle.hsm.errors import UnknownKeyError
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType

_DATA_TYPES = (KeyType.DATA, KeyType.PAN_HMAC)


class SplitHSM:
    def __init__(self, payments: HSM, data: HSM) -> None:
        self.payments, self.data = payments, data
        self.backend = f"{payments.backend}+{data.backend}"

    async def _owner(self, name: str) -> HSM:
        for hsm in (self.data, self.payments):
            try:
                await hsm.key_info(name)
            except UnknownKeyError:
                continue
            return hsm
        raise UnknownKeyError(name)

    async def diagnostics(self) -> dict[str, str]:
        payments, data = await self.payments.diagnostics(), await self.data.diagnostics()
        return {**{f"data.{k}": v for k, v in data.items()}, **payments, "backend": self.backend}

    async def list_keys(self) -> list[KeyInfo]:
        return sorted(
            [*await self.payments.list_keys(), *await self.data.list_keys()],
            key=lambda k: k.name,
        )

    async def key_info(self, name: str) -> KeyInfo:
        return await (await self._owner(name)).key_info(name)

    async def generate_key(
        self,
        name: str,
        key_type: KeyType,
        algorithm: Algorithm | None = None,
        length: int | None = None,
    ) -> KeyInfo:
        hsm = self.data if key_type in _DATA_TYPES else self.payments
        return await hsm.generate_key(name, key_type, algorithm, length)

    async def rotate_key(self, name: str) -> KeyInfo:
        return await (await self._owner(name)).rotate_key(name)

    async def import_key(self, name: str, key_block: str, kbpk: str) -> KeyInfo:
        return await (await self._owner(kbpk)).import_key(name, key_block, kbpk)

    async def pan_hmac(self, pan: str, version: int | None = None) -> PanDigest:
        return await self.data.pan_hmac(pan, version)

    async def pan_hmac_versions(self) -> list[int]:
        return await self.data.pan_hmac_versions()

    async def encrypt_data(self, key: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        return await self.data.encrypt_data(key, plaintext, aad)

    async def decrypt_data(self, key: str, blob: bytes, aad: bytes = b"") -> bytes:
        return await self.data.decrypt_data(key, blob, aad)

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
        return await self.payments.translate_pin(
            pin_block,
            pan=pan,
            source_key=source_key,
            source_format=source_format,
            dest_key=dest_key,
            dest_format=dest_format,
            ksn=ksn,
        )

    async def generate_mac(
        self,
        key: str,
        data: bytes,
        algorithm: MacAlgorithm = MacAlgorithm.RETAIL,
        length: int = 8,
    ) -> bytes:
        return await self.payments.generate_mac(key, data, algorithm, length)

    async def verify_mac(
        self, key: str, data: bytes, mac: bytes, algorithm: MacAlgorithm = MacAlgorithm.RETAIL
    ) -> bool:
        return await self.payments.verify_mac(key, data, mac, algorithm)

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
        return await self.payments.verify_arqc(
            key,
            pan=pan,
            psn=psn,
            atc=atc,
            unpredictable_number=unpredictable_number,
            data=data,
            arqc=arqc,
        )

    async def generate_arpc(
        self, key: str, *, pan: str, psn: str, arqc: bytes, arc: bytes
    ) -> bytes:
        return await self.payments.generate_arpc(key, pan=pan, psn=psn, arqc=arqc, arc=arc)

    async def derive_dukpt(self, bdk: str, ksn: bytes, usage: DukptUsage) -> str:
        return await self.payments.derive_dukpt(bdk, ksn, usage)

    async def reload(self) -> None:
        await self.payments.reload()
        await self.data.reload()

    async def close(self) -> None:
        try:
            await self.payments.close()
        finally:
            await self.data.close()
