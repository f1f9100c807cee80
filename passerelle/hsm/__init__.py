"""One HSM interface, three backends (DESIGN.md §6).

    hsm = open_hsm(settings)          # settings: HSMSettings (the [hsm] table)
    digest = await hsm.pan_hmac(pan)  # PanDigest(version, digest)

Backends: `soft` (cryptography, keys wrapped under a KEK file), `pkcs11` (any PKCS#11
token; SoftHSMv2 in tests), `payshield` (Thales host commands over TCP). Keys are always
referred to by name; errors are `HSMError` subclasses and never carry key material.
"""

from __future__ import annotations

from passerelle.hsm.base import HSM, MacAlgorithm, PanDigest
from passerelle.hsm.dukpt import Usage as DukptUsage
from passerelle.hsm.errors import (
    BadInputError,
    BadLengthError,
    HSMDeviceError,
    HSMError,
    HSMTimeoutError,
    HSMUnreachableError,
    NotSupportedError,
    UnknownKeyError,
    VerificationError,
    WrongKeyTypeError,
)
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType
from passerelle.hsm.settings import HSMSettings

__all__ = [
    "HSM",
    "Algorithm",
    "BadInputError",
    "BadLengthError",
    "DukptUsage",
    "HSMDeviceError",
    "HSMError",
    "HSMSettings",
    "HSMTimeoutError",
    "HSMUnreachableError",
    "KeyInfo",
    "KeyType",
    "MacAlgorithm",
    "NotSupportedError",
    "PanDigest",
    "UnknownKeyError",
    "VerificationError",
    "WrongKeyTypeError",
    "open_hsm",
]


def open_hsm(settings: HSMSettings) -> HSM:
    """Build the configured backend. The soft and PKCS#11 backends open their store or
    token here (and fail fast with an HSMError); payShield connects on first use. With a
    `data_backend`, PAN HMAC and data keys go there and the rest to `backend`."""
    payments = _open_backend(settings, settings.backend)
    if settings.data_backend is None or settings.data_backend == settings.backend:
        return payments
    from passerelle.hsm.split import SplitHSM  # noqa: PLC0415

    return SplitHSM(payments, _open_backend(settings, settings.data_backend))


def _open_backend(settings: HSMSettings, backend: str) -> HSM:
    if backend == "soft":
        from passerelle.hsm.soft import SoftHSM  # noqa: PLC0415 - only the configured backend

        return SoftHSM(settings.soft.keystore, settings.soft.kek, settings.pan_hmac_key)
    if backend == "pkcs11":
        from passerelle.hsm.pkcs11_token import Pkcs11HSM, read_pin  # noqa: PLC0415

        p = settings.pkcs11
        return Pkcs11HSM(
            p.library,
            p.token,
            read_pin(p.pin_env, p.pin_file),
            threads=p.threads,
            timeout=p.timeout,
            pan_hmac_key=settings.pan_hmac_key,
        )
    if backend == "payshield":
        from passerelle.hsm.payshield import PayShieldHSM  # noqa: PLC0415

        s = settings.payshield
        return PayShieldHSM(
            s.host,
            s.port,
            keys=s.keys,
            header_length=s.header_length,
            timeout=s.timeout,
            connections=s.connections,
            max_in_flight=s.max_in_flight,
            zone_pin_keys=tuple(s.zone_pin_keys),
        )
    raise HSMError(f"unknown HSM backend {backend!r} (soft, pkcs11 or payshield)")
