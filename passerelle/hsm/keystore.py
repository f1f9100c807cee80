"""The soft backend's key store: a JSON file whose key values are AES-256-GCM wrapped.

The key-encryption key (KEK) lives in its own file (32 bytes, raw or hex, mode 0600), so the
keystore can be backed up and copied without exposing a key. Each wrapped value is bound
to its name, version, type and algorithm through the GCM additional data, so entries
cannot be swapped or relabelled in the file. The store records the KEK's check value to
tell "wrong KEK" apart from "corrupted entry".
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from passerelle.hsm import keys
from passerelle.hsm.engine import ClearKey
from passerelle.hsm.errors import (
    BadInputError,
    BadLengthError,
    HSMError,
    UnknownKeyError,
    VerificationError,
)
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType, KeyVersion

FORMAT = "passerelle-keystore/1"


class _Version(msgspec.Struct):
    version: int
    kcv: str
    created: str
    wrapped: str


class _Entry(msgspec.Struct):
    type: KeyType
    algorithm: Algorithm
    length: int
    versions: list[_Version]


class _File(msgspec.Struct):
    format: str
    kek_check: str
    keys: dict[str, _Entry] = msgspec.field(default_factory=dict)


def read_kek(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        st = p.stat()
        raw = p.read_bytes()
    except FileNotFoundError:
        raise HSMError(f"KEK file {str(p)!r} does not exist") from None
    except OSError as exc:
        raise HSMError(f"KEK file {str(p)!r} cannot be read: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HSMError(f"KEK file {str(p)!r} is readable by others; run chmod 600 on it")
    text = raw.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    if len(raw) == 32:
        return raw
    raise BadLengthError(f"KEK file {str(p)!r} must hold 32 bytes (raw or 64 hex digits)")


def create_kek(path: str | os.PathLike[str]) -> None:
    """Write a fresh random KEK (hex) readable by its owner only; never overwrites."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_bytes(32).hex() + "\n")


def _aad(name: str, version: int, entry: _Entry) -> bytes:
    return f"{name}\0{version}\0{entry.type}\0{entry.algorithm}".encode()


class Keystore:
    """Load, unwrap and update the keystore file; unwrapped keys are cached in memory."""

    def __init__(self, path: str | os.PathLike[str], kek_path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        kek = read_kek(kek_path)
        self._kek = AESGCM(kek)
        self._kek_check = keys.kcv(Algorithm.AES, kek)
        self._cache: dict[tuple[str, int], ClearKey] = {}
        self._file = self._load()

    def _load(self) -> _File:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _File(format=FORMAT, kek_check=self._kek_check)
        try:
            data = msgspec.json.decode(raw, type=_File)
        except msgspec.ValidationError as exc:
            raise BadInputError(f"keystore {str(self.path)!r} is malformed: {exc}") from None
        if data.format != FORMAT:
            raise BadInputError(f"keystore {str(self.path)!r} has unknown format {data.format!r}")
        if data.kek_check != self._kek_check:
            raise VerificationError(
                f"the KEK does not match keystore {str(self.path)!r} (check value differs)"
            )
        return data

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(self._file)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._file.keys[name]
        except KeyError:
            raise UnknownKeyError(name) from None

    def info(self, name: str) -> KeyInfo:
        e = self._entry(name)
        versions = tuple(KeyVersion(v.version, v.kcv, v.created) for v in e.versions)
        return KeyInfo(name, e.type, e.algorithm, e.length, versions)

    def names(self) -> list[str]:
        return sorted(self._file.keys)

    def versions(self, name: str) -> list[int]:
        return [v.version for v in self._entry(name).versions]

    def get(self, name: str, version: int | None = None) -> ClearKey:
        """The clear key; the newest version unless one is named."""
        e = self._entry(name)
        ver = e.versions[-1] if version is None else None
        if ver is None:
            ver = next((v for v in e.versions if v.version == version), None)
            if ver is None:
                raise UnknownKeyError(name, version)
        cached = self._cache.get((name, ver.version))
        if cached is not None:
            return cached
        try:
            blob = base64.b64decode(ver.wrapped, validate=True)
            value = self._kek.decrypt(blob[:12], blob[12:], _aad(name, ver.version, e))
        except (InvalidTag, ValueError):
            raise VerificationError(
                f"keystore entry {name!r} version {ver.version} does not unwrap (tampered?)"
            ) from None
        key = ClearKey(name, e.type, e.algorithm, value)
        self._cache[(name, ver.version)] = key
        return key

    def _wrapped_version(self, name: str, entry: _Entry, version: int, value: bytes) -> _Version:
        nonce = secrets.token_bytes(12)
        blob = nonce + self._kek.encrypt(nonce, value, _aad(name, version, entry))
        return _Version(
            version=version,
            kcv=keys.kcv(entry.algorithm, value),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            wrapped=base64.b64encode(blob).decode("ascii"),
        )

    @contextlib.contextmanager
    def _updating(self) -> Iterator[None]:
        """Serialise writers (two `mpctl keys` at once) and start from the file on disk,
        so a change made by another process since we loaded is never overwritten."""
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._file = self._load()
            yield
            self._save()
        finally:
            os.close(fd)

    def add(self, name: str, key_type: KeyType, algorithm: Algorithm, value: bytes) -> KeyInfo:
        """Store a new key (version 1); refuses to replace an existing name."""
        if (
            not name
            or len(name) > 64
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        ):
            raise BadInputError("a key name is 1 to 64 letters, digits, '-', '_' or '.'")
        keys.check_type(name, key_type, algorithm)
        keys.check_length(name, algorithm, len(value))
        with self._updating():
            if name in self._file.keys:
                raise BadInputError(f"key {name!r} already exists; use rotate to add a version")
            entry = _Entry(type=key_type, algorithm=algorithm, length=len(value), versions=[])
            entry.versions.append(self._wrapped_version(name, entry, 1, value))
            self._file.keys[name] = entry
        return self.info(name)

    def rotate(self, name: str, value: bytes | None = None) -> KeyInfo:
        """Add a new version (random unless given); older versions stay readable."""
        with self._updating():
            e = self._entry(name)
            value = secrets.token_bytes(e.length) if value is None else value
            keys.check_length(name, e.algorithm, len(value))
            e.versions.append(self._wrapped_version(name, e, e.versions[-1].version + 1, value))
        return self.info(name)

    def retire(self, name: str, version: int) -> KeyInfo:
        """Remove an old version for good (never the newest): what it protected can no
        longer be read or searched, so the caller first checks that nothing still needs it
        (`mpctl keys retire` asks the database)."""
        with self._updating():
            e = self._entry(name)
            if version == e.versions[-1].version:
                raise BadInputError(f"version {version} is the current version of {name!r}; "
                                    "rotate first")
            kept = [v for v in e.versions if v.version != version]
            if len(kept) == len(e.versions):
                raise UnknownKeyError(name, version)
            e.versions = kept
        self._cache.pop((name, version), None)
        return self.info(name)
