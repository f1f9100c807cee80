"""The PKCS#11 backend: keys live in a token and every operation runs inside it.

Tested against SoftHSMv2. AES-GCM, AES-CMAC and HMAC-SHA256 are token mechanisms; the
payment functions no generic token offers (PIN translation, retail MAC, EMV cryptograms,
DUKPT, TR-31) raise `NotSupportedError` rather than pulling keys into host memory.

PKCS#11 calls block, so they run on worker threads (python-pkcs11 releases the GIL around
each C call) and the event loop only awaits them. python-pkcs11 initialises the library
without CKF_OS_LOCKING_OK, which tells a token such as SoftHSMv2 that it need not lock, so
the default is ONE worker thread: calls are serialised off the loop. More threads (one
session each) suit only libraries that lock internally whatever the init arguments.

Keys are labelled `<name>/v<version>`; their CKA_ID holds the key type.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11e
from pkcs11.mechanisms import GCMParams

from passerelle.hsm import engine, keys
from passerelle.hsm.base import MacAlgorithm, PanDigest
from passerelle.hsm.dukpt import Usage as DukptUsage
from passerelle.hsm.errors import (
    BadLengthError,
    HSMError,
    HSMTimeoutError,
    HSMUnreachableError,
    NotSupportedError,
    UnknownKeyError,
    VerificationError,
    WrongKeyTypeError,
    a,
)
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType, KeyVersion

T = TypeVar("T")
_P11_TYPE = {
    Algorithm.AES: P11KeyType.AES,
    Algorithm.TDES: P11KeyType.DES3,
    Algorithm.HMAC: P11KeyType.GENERIC_SECRET,
}
_ALGORITHM_OF = {v: k for k, v in _P11_TYPE.items()}
_GCM_OVERHEAD = 2 + 12 + 16


def _label(name: str, version: int) -> str:
    return f"{name}/v{version}"


def _map_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn python-pkcs11 exceptions into HSMError subclasses (no token internals leak)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except HSMError:
            raise
        except (
            p11e.TokenNotPresent,
            p11e.DeviceRemoved,
            p11e.DeviceError,
            p11e.SessionClosed,
            p11e.SessionHandleInvalid,
        ) as exc:
            raise HSMUnreachableError(f"PKCS#11 token unavailable ({type(exc).__name__})") from None
        except (p11e.MechanismInvalid, p11e.FunctionNotSupported) as exc:
            raise NotSupportedError("pkcs11", fn.__name__.strip("_"), type(exc).__name__) from None
        except (p11e.KeyTypeInconsistent, p11e.KeyHandleInvalid) as exc:
            raise HSMError(
                f"the token refused the key for this use ({type(exc).__name__})"
            ) from None
        except (p11e.DataLenRange, p11e.EncryptedDataLenRange) as exc:
            raise BadLengthError(
                f"data length refused by the token ({type(exc).__name__})"
            ) from None
        except (p11e.EncryptedDataInvalid, p11e.SignatureInvalid):
            raise VerificationError("data does not authenticate under the token key") from None
        except p11e.PKCS11Error as exc:
            raise HSMError(f"PKCS#11 error {type(exc).__name__}") from None

    return wrapper


class Pkcs11HSM:
    backend = "pkcs11"

    def __init__(
        self,
        library: str,
        token: str,
        pin: str,
        *,
        threads: int = 1,
        timeout: float = 5.0,
        pan_hmac_key: str = "pan-hmac",
    ) -> None:
        if not Path(library).exists():
            raise HSMUnreachableError(f"PKCS#11 library {library!r} does not exist")
        try:
            self._token = pkcs11.lib(library).get_token(token_label=token)
        except p11e.NoSuchToken:
            raise HSMUnreachableError(f"no PKCS#11 token labelled {token!r}") from None
        except p11e.PKCS11Error as exc:
            raise HSMUnreachableError(f"PKCS#11 library failed ({type(exc).__name__})") from None
        try:
            # The login is per application: this first session keeps it alive.
            self._login = self._token.open(rw=True, user_pin=pin)
        except (p11e.PinIncorrect, p11e.PinLenRange, p11e.PinInvalid):
            raise HSMError(f"PKCS#11 login to token {token!r} refused (wrong PIN?)") from None
        self.token_label = token
        self.pan_hmac_key = pan_hmac_key
        self.timeout = timeout
        self._local = threading.local()
        self._generation = 0  # bumped when keys change, to drop per-thread handle caches
        self._sessions: list[Any] = []
        self._sessions_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"pkcs11-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for worker in self._workers:
            worker.start()

    # --- plumbing ---

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._token.open(rw=True)
            self._local.session = session
            self._local.keys = {}
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _work(self) -> None:
        """Worker thread: run queued token calls, handing results back to the loop in
        batches (one loop wake-up for all the calls that queued up meanwhile)."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < 256:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # leave the stop mark for after this batch
                    break
                batch.append(more)
            done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]]
            done = {}
            for fn, future, loop in batch:
                try:
                    outcome = (future, fn(), None)
                except BaseException as exc:  # handed to the awaiting coroutine
                    outcome = (future, None, exc)
                done.setdefault(loop, []).append(outcome)
            for loop, outcomes in done.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_deliver, outcomes)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((functools.partial(_map_errors(fn), *args), future, loop))
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            raise HSMTimeoutError(f"PKCS#11 token did not answer within {self.timeout}s") from None

    def _objects(self, name: str | None = None) -> list[tuple[str, int, Any]]:
        found = []
        for obj in self._session().get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            label = obj[Attribute.LABEL]
            base, _, ver = label.rpartition("/v")
            if base and ver.isdigit() and (name is None or base == name):
                found.append((base, int(ver), obj))
        return sorted(found, key=lambda t: (t[0], t[1]))

    def _key(self, name: str, version: int | None = None) -> tuple[int, Any, str, Any]:
        """(version, key object, our key type, PKCS#11 key type), cached per thread."""
        self._session()
        if getattr(self._local, "generation", None) != self._generation:
            self._local.keys, self._local.generation = {}, self._generation
        cache = self._local.keys
        hit = cache.get((name, version))
        if hit is not None:
            return hit
        versions = self._objects(name)
        if not versions:
            raise UnknownKeyError(name)
        if version is None:
            _, ver, obj = versions[-1]
        else:
            match = [v for v in versions if v[1] == version]
            if not match:
                raise UnknownKeyError(name, version)
            _, ver, obj = match[0]
        usage = bytes(obj[Attribute.ID]).decode("ascii", "replace")
        found = (ver, obj, usage, obj[Attribute.KEY_TYPE])
        cache[(name, version)] = found
        return found

    def _typed(self, name: str, key_type: KeyType, version: int | None = None) -> tuple[int, Any]:
        ver, obj, actual, _ = self._key(name, version)
        if actual != key_type:
            raise WrongKeyTypeError(name, actual, f"{a(key_type)} key")
        return ver, obj

    def _info(self, name: str) -> KeyInfo:
        versions = self._objects(name)
        if not versions:
            raise UnknownKeyError(name)
        obj = versions[-1][2]
        algorithm = _ALGORITHM_OF.get(obj[Attribute.KEY_TYPE], Algorithm.AES)
        kvs = []
        for _, ver, o in versions:
            try:
                kcv = bytes(o[Attribute.CHECK_VALUE]).hex().upper()
            except p11e.PKCS11Error:
                kcv = ""
            kvs.append(KeyVersion(ver, kcv, ""))
        return KeyInfo(
            name,
            KeyType(bytes(obj[Attribute.ID]).decode()),
            algorithm,
            int(obj[Attribute.VALUE_LEN]),
            tuple(kvs),
        )

    def _names(self) -> list[str]:
        return sorted({n for n, _, _ in self._objects()})

    def _create(
        self, name: str, key_type: KeyType, algorithm: Algorithm, length: int, version: int
    ) -> None:
        template = {
            Attribute.ID: str(key_type).encode(),
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.TOKEN: True,
        }
        if algorithm is Algorithm.HMAC:
            self._session().generate_key(
                P11KeyType.GENERIC_SECRET,
                length * 8,
                label=_label(name, version),
                store=True,
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                capabilities=pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY,
                template=template,
            )
        else:
            self._session().generate_key(
                _P11_TYPE[algorithm],
                length * 8 if algorithm is Algorithm.AES else None,
                label=_label(name, version),
                store=True,
                template=template,
            )
        self._generation += 1

    def _generate(self, name: str, key_type: KeyType, algorithm: Algorithm, length: int) -> KeyInfo:
        if self._objects(name):
            raise HSMError(f"key {name!r} already exists; use rotate to add a version")
        self._create(name, key_type, algorithm, length, 1)
        return self._info(name)

    def _rotate(self, name: str) -> KeyInfo:
        info = self._info(name)
        self._create(name, info.type, info.algorithm, info.length, info.current.version + 1)
        return self._info(name)

    # --- the HSM protocol ---

    async def diagnostics(self) -> dict[str, str]:
        def probe() -> dict[str, str]:
            self._session()
            return {
                "backend": self.backend,
                "token": self.token_label,
                "manufacturer": self._token.manufacturer_id.strip(),
            }

        return await self._run(probe)

    async def list_keys(self) -> list[KeyInfo]:
        return await self._run(lambda: [self._info(n) for n in self._names()])

    async def key_info(self, name: str) -> KeyInfo:
        return await self._run(self._info, name)

    async def generate_key(
        self,
        name: str,
        key_type: KeyType,
        algorithm: Algorithm | None = None,
        length: int | None = None,
    ) -> KeyInfo:
        algorithm = algorithm or keys.DEFAULT_ALGORITHM[key_type]
        length = length or keys.DEFAULT_LENGTH[algorithm]
        keys.check_type(name, key_type, algorithm)
        keys.check_length(name, algorithm, length)
        return await self._run(self._generate, name, key_type, algorithm, length)

    async def rotate_key(self, name: str) -> KeyInfo:
        return await self._run(self._rotate, name)

    async def import_key(self, name: str, key_block: str, kbpk: str) -> KeyInfo:
        raise NotSupportedError("pkcs11", "TR-31 key import", "no TR-31 unwrap mechanism")

    async def pan_hmac(self, pan: str, version: int | None = None) -> PanDigest:
        engine.check_pan(pan)

        def sign() -> PanDigest:
            ver, key = self._typed(self.pan_hmac_key, KeyType.PAN_HMAC, version)
            return PanDigest(ver, key.sign(pan.encode("ascii"), mechanism=Mechanism.SHA256_HMAC))

        return await self._run(sign)

    async def pan_hmac_versions(self) -> list[int]:
        return await self._run(lambda: [v for _, v, _ in self._objects(self.pan_hmac_key)])

    async def encrypt_data(self, key: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        def encrypt() -> bytes:
            ver, obj = self._typed(key, KeyType.DATA)
            nonce = self._session().generate_random(96)
            ct = obj.encrypt(
                plaintext,
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, aad or None),
            )
            return ver.to_bytes(2, "big") + nonce + ct

        return await self._run(encrypt)

    async def decrypt_data(self, key: str, blob: bytes, aad: bytes = b"") -> bytes:
        if len(blob) < _GCM_OVERHEAD:
            raise BadLengthError(f"an encrypted blob is at least {_GCM_OVERHEAD} bytes")

        def decrypt() -> bytes:
            _, obj = self._typed(key, KeyType.DATA, int.from_bytes(blob[:2], "big"))
            try:
                return obj.decrypt(
                    blob[14:],
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(blob[2:14], aad or None),
                )
            except p11e.GeneralError:  # SoftHSMv2 reports a bad GCM tag this way
                raise VerificationError(f"data under key {key!r} does not authenticate") from None

        return await self._run(decrypt)

    def _cmac(self, key: str, data: bytes) -> bytes:
        _, obj = self._typed(key, KeyType.MAC)
        if self._key(key)[3] != P11KeyType.AES:
            raise WrongKeyTypeError(key, "tdes mac", "an AES mac key for AES-CMAC")
        return obj.sign(data, mechanism=Mechanism.AES_CMAC)

    async def generate_mac(
        self,
        key: str,
        data: bytes,
        algorithm: MacAlgorithm = MacAlgorithm.RETAIL,
        length: int = 8,
    ) -> bytes:
        if MacAlgorithm(algorithm) is MacAlgorithm.RETAIL:
            raise NotSupportedError("pkcs11", "ISO 9797-1 retail MAC", "no such PKCS#11 mechanism")
        if not 4 <= length <= 16:
            raise BadLengthError(f"an AES-CMAC is 4 to 16 bytes, not {length}")
        return (await self._run(self._cmac, key, data))[:length]

    async def verify_mac(
        self, key: str, data: bytes, mac: bytes, algorithm: MacAlgorithm = MacAlgorithm.RETAIL
    ) -> bool:
        if not 4 <= len(mac) <= 16:
            raise BadLengthError(f"a MAC to verify is 4 to 16 bytes, not {len(mac)}")
        expected = await self.generate_mac(key, data, algorithm, 16)
        return hmac.compare_digest(expected[: len(mac)], mac)

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
        raise NotSupportedError("pkcs11", "PIN translation", "no ISO 9564 mechanism")

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
        raise NotSupportedError("pkcs11", "EMV ARQC verification", "no EMV mechanism")

    async def generate_arpc(
        self, key: str, *, pan: str, psn: str, arqc: bytes, arc: bytes
    ) -> bytes:
        raise NotSupportedError("pkcs11", "EMV ARPC generation", "no EMV mechanism")

    async def reload(self) -> None:
        self._generation += 1  # key handles are looked up again on next use

    async def derive_dukpt(self, bdk: str, ksn: bytes, usage: DukptUsage) -> str:
        raise NotSupportedError("pkcs11", "DUKPT derivation", "no X9.24 mechanism")

    async def close(self) -> None:
        def shutdown() -> None:
            # Let calls still queued or running (e.g. ones their caller gave up on) finish.
            for _ in self._workers:
                self._jobs.put(None)
            for worker in self._workers:
                worker.join()
            with self._sessions_lock:
                for session in self._sessions:
                    session.close()
                self._sessions.clear()
            self._login.close()

        await asyncio.to_thread(shutdown)


_Job = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _deliver(outcomes: list[tuple[asyncio.Future[Any], Any, Any]]) -> None:
    for future, result, exc in outcomes:
        if future.done():  # its caller timed out or was cancelled
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


def read_pin(pin_env: str, pin_file: str | None) -> str:
    """The token user PIN, from a file (first line) or an environment variable."""
    if pin_file:
        try:
            return Path(pin_file).read_text().splitlines()[0]
        except (OSError, IndexError):
            raise HSMError(f"PKCS#11 PIN file {pin_file!r} cannot be read") from None
    pin = os.environ.get(pin_env)
    if not pin:
        raise HSMError(f"PKCS#11 user PIN missing: set {pin_env} or pkcs11.pin_file")
    return pin
