"""The HSM error family.

Every error names the key (never its value) and what a person can fix. Messages must never
carry key material, clear PINs or full PANs: they end up in logs and on operators' screens.
"""

from __future__ import annotations


def a(word: str) -> str:
    """'an aes', 'a tdes': the article our key words need in messages."""
    return ("an " if word[:1].lower() in "aeio" else "a ") + word


class HSMError(Exception):
    """Base class of every error raised by `passerelle.hsm`."""


class UnknownKeyError(HSMError):
    """No key with that name (or version) exists in the backend."""

    def __init__(self, name: str, version: int | None = None) -> None:
        where = f"{name!r} version {version}" if version is not None else repr(name)
        super().__init__(f"unknown key {where}")
        self.name = name
        self.version = version


class WrongKeyTypeError(HSMError):
    """The named key exists but is not usable for the requested operation."""

    def __init__(self, name: str, actual: str, wanted: str) -> None:
        super().__init__(f"key {name!r} is {a(actual)} key; this operation needs {wanted}")
        self.name = name


class BadLengthError(HSMError):
    """An input (key, PIN block, KSN, MAC, data) has the wrong length or form."""


class BadInputError(HSMError):
    """An input is malformed (PIN block format, PAN, TR-31 header, ...)."""


class VerificationError(HSMError):
    """Authenticated data did not verify (AES-GCM tag, TR-31 MAC, wrong KEK)."""


class NotSupportedError(HSMError):
    """The backend cannot do this operation inside the device, so it refuses to."""

    def __init__(self, backend: str, operation: str, why: str = "") -> None:
        detail = f": {why}" if why else ""
        super().__init__(f"{operation} is not supported by this token ({backend}){detail}")
        self.backend = backend
        self.operation = operation


class HSMUnreachableError(HSMError):
    """The HSM could not be reached (connection refused, library missing, token absent)."""


class HSMTimeoutError(HSMError):
    """The HSM did not answer within the configured bound."""


class HSMDeviceError(HSMError):
    """The HSM answered with an error code we do not map to a more specific class."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code
