"""The same published vectors against every backend: soft, PKCS#11 (a real SoftHSMv2 token
made for this run) and payShield (the simulator over a real socket).

An operation a backend cannot do must raise NotSupportedError, never fall back to host
memory. Vector sources are cited in tests/unit/test_hsm_vectors.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11 import KeyType as P11KeyType

from passerelle.hsm import (
    HSM,
    BadInputError,
    BadLengthError,
    DukptUsage,
    HSMDeviceError,
    HSMError,
    HSMSettings,
    HSMTimeoutError,
    HSMUnreachableError,
    KeyType,
    MacAlgorithm,
    NotSupportedError,
    UnknownKeyError,
    VerificationError,
    WrongKeyTypeError,
    dukpt,
    emv,
    keys,
    open_hsm,
    pinblock,
    tdes,
)
from passerelle.hsm import mac as mac_algorithms
from passerelle.hsm.keys import Algorithm
from passerelle.hsm.keystore import Keystore, create_kek
from passerelle.hsm.payshield import PayShieldHSM
from passerelle.hsm.pkcs11_token import Pkcs11HSM
from passerelle.hsm.soft import SoftHSM
from passerelle.sim.payshield import PayShieldSimulator

pytestmark = pytest.mark.integration
H = bytes.fromhex
SOFTHSM_LIB = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN, USER_PIN = "passerelle-test", "4321"

# Published test keys (see tests/unit/test_hsm_vectors.py for the sources).
X924_BDK = H("0123456789ABCDEFFEDCBA9876543210")  # ANSI X9.24-1:2009 A.4
AES_BDK = H("FEDCBA9876543210F1F1F1F1F1F1F1F1")  # ANSI X9.24-3:2017 supplement
RETAIL_KEY = H("0123456789ABCDEFFEDCBA9876543210")  # ISO 9797-1:2011 B.4
CMAC_KEY = H("2b7e151628aed2a6abf7158809cf4f3c")  # RFC 4493
GCM_KEY = H("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")  # GCM spec TC15
EMV_IMK = H("0123456789ABCDEFFEDCBA9876543210")  # pyemv tests/test_ac_hsm.py
PAN_KEY = H("0F1E2D3C4B5A69788796A5B4C3D2E1F00112233445566778899AABBCCDDEEFF0")
TPK = H("A1B2C3D4E5F60718293A4B5C6D7E8F90")
ZPK = H("1F2E3D4C5B6A79880123456789ABCDEF")
TPK_AES = H("00112233445566778899AABBCCDDEEFF")
ZPK_AES = H("3F419E1CB7079442AA37474C2EFBF8B83F419E1CB7079442AA37474C2EFBF8B8")

KEYS: list[tuple[str, KeyType, Algorithm, bytes]] = [
    ("pan-hmac", KeyType.PAN_HMAC, Algorithm.HMAC, PAN_KEY),
    ("data", KeyType.DATA, Algorithm.AES, GCM_KEY),
    ("cmac", KeyType.MAC, Algorithm.AES, CMAC_KEY),
    ("retail", KeyType.MAC, Algorithm.TDES, RETAIL_KEY),
    ("tpk", KeyType.PIN, Algorithm.TDES, TPK),
    ("zpk", KeyType.PIN, Algorithm.TDES, ZPK),
    ("tpk-aes", KeyType.PIN, Algorithm.AES, TPK_AES),
    ("zpk-aes", KeyType.PIN, Algorithm.AES, ZPK_AES),
    ("bdk", KeyType.BDK, Algorithm.TDES, X924_BDK),
    ("bdk-aes", KeyType.BDK, Algorithm.AES, AES_BDK),
    ("imk", KeyType.EMV_AC, Algorithm.TDES, EMV_IMK),
]
SECRETS = [value.hex() for *_, value in KEYS]

Body = Callable[[HSM], Awaitable[None]]


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SoftHSMv2 token in a temp dir, holding the AES and HMAC test keys."""
    if not shutil.which("softhsm2-util") or not Path(SOFTHSM_LIB).exists():
        pytest.skip("SoftHSMv2 is not installed (apt-get install softhsm2)")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--pin",
            USER_PIN,
            "--so-pin",
            "87654321",
        ],
        check=True,
        capture_output=True,
    )
    token = pkcs11.lib(SOFTHSM_LIB).get_token(token_label=TOKEN)
    with token.open(rw=True, user_pin=USER_PIN) as session:
        for name, key_type, algorithm, value in KEYS:
            if algorithm is Algorithm.TDES:
                continue  # the token is not asked for TDES payment functions
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: P11KeyType.AES
                    if algorithm is Algorithm.AES
                    else P11KeyType.GENERIC_SECRET,
                    Attribute.VALUE: value,
                    Attribute.LABEL: f"{name}/v1",
                    Attribute.ID: str(key_type).encode(),
                    Attribute.TOKEN: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                    Attribute.SIGN: True,
                    Attribute.VERIFY: True,
                }
            )
    yield TOKEN
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


class Backend:
    """Builds one backend with the test keys inside a fresh event loop, runs a test body."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind, self.tmp_path, self.request = kind, tmp_path, request
        self.simulator: PayShieldSimulator | None = None

    def run(self, body: Body, **options: float) -> None:
        asyncio.run(self._run(body, **options))

    async def _run(self, body: Body, **options: float) -> None:
        hsm = await self.open(**options)
        try:
            await body(hsm)
        finally:
            await hsm.close()
            if self.simulator is not None:
                await self.simulator.stop()

    async def open(self, **options: float) -> HSM:
        if self.kind == "soft":
            kek = self.tmp_path / "kek"
            if not kek.exists():
                create_kek(kek)
                store = Keystore(self.tmp_path / "keystore.json", kek)
                for name, key_type, algorithm, value in KEYS:
                    store.add(name, key_type, algorithm, value)
            return SoftHSM(self.tmp_path / "keystore.json", kek)
        if self.kind == "pkcs11":
            token = self.request.getfixturevalue("softhsm_token")
            return Pkcs11HSM(SOFTHSM_LIB, token, USER_PIN, timeout=options.get("timeout", 5.0))
        self.simulator = PayShieldSimulator()
        host, port = await self.simulator.start()
        tokens = {
            name: self.simulator.wrap_key(key_type, algorithm, value)
            for name, key_type, algorithm, value in KEYS
            if algorithm is not Algorithm.HMAC
        }
        return PayShieldHSM(
            host,
            port,
            keys=tokens,
            timeout=options.get("timeout", 2.0),
            connections=int(options.get("connections", 2)),
        )


@pytest.fixture(params=["soft", "pkcs11", "payshield"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path, request)


def supports(backend: Backend, *kinds: str) -> bool:
    return backend.kind in kinds


# --- vectors ---


RFC4493 = [
    (b"", "bb1d6929e95937287fa37d129b756746"),
    (H("6bc1bee22e409f96e93d7e117393172a"), "070a16b46b4d4144f79bdd9dd04a287c"),
    (
        H("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411"),
        "dfa66747de9ae63030ca32611497c827",
    ),
]


def test_aes_cmac_rfc4493(backend: Backend) -> None:
    async def body(hsm: HSM) -> None:
        assert isinstance(hsm, HSM) and hsm.backend == backend.kind
        for message, tag in RFC4493:
            length = 8 if backend.kind == "payshield" else 16  # payShield MACs are 8 bytes
            mac = await hsm.generate_mac("cmac", message, MacAlgorithm.AES_CMAC, length)
            assert mac == H(tag)[:length]
            assert await hsm.verify_mac("cmac", message, mac, MacAlgorithm.AES_CMAC)
            assert not await hsm.verify_mac("cmac", message + b"!", mac, MacAlgorithm.AES_CMAC)

    backend.run(body)


def test_retail_mac_iso9797_1(backend: Backend) -> None:
    async def body(hsm: HSM) -> None:
        message = b"Now is the time for all "
        if not supports(backend, "soft", "payshield"):
            with pytest.raises(NotSupportedError, match="not supported by this token"):
                await hsm.generate_mac("retail", message)
            return
        mac = await hsm.generate_mac("retail", message)
        assert mac == H("A1C72E74EA3FA9B6")
        assert await hsm.generate_mac("retail", b"Now is the time for it", length=4) == H(
            "2E2B1428"
        )
        assert await hsm.verify_mac("retail", message, mac)
        assert await hsm.verify_mac("retail", message, mac[:4])
        assert not await hsm.verify_mac("retail", message, bytes(8))

    backend.run(body)


def test_pan_hmac(backend: Backend) -> None:
    async def body(hsm: HSM) -> None:
        pan = "4970101234567890"
        if not supports(backend, "soft", "pkcs11"):
            with pytest.raises(NotSupportedError):
                await hsm.pan_hmac(pan)
            return
        digest = await hsm.pan_hmac(pan)
        assert digest.version == 1
        assert digest.digest == hmac.new(PAN_KEY, pan.encode(), hashlib.sha256).digest()
        assert await hsm.pan_hmac_versions() == [1]

    backend.run(body)


def test_aes_gcm_published_vector_and_round_trip(backend: Backend) -> None:
    # McGrew & Viega, "The Galois/Counter Mode of Operation", test case 15 (AES-256).
    iv = H("cafebabefacedbaddecaf888")
    plain = H(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
    )
    cipher = H(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
    )
    tag = H("b094dac5d93471bdec1a502270e3cc6c")

    async def body(hsm: HSM) -> None:
        if not supports(backend, "soft", "pkcs11"):
            with pytest.raises(NotSupportedError):
                await hsm.encrypt_data("data", b"x")
            return
        assert await hsm.decrypt_data("data", b"\x00\x01" + iv + cipher + tag) == plain
        blob = await hsm.encrypt_data("data", b"remise 000123", aad=b"row 7")
        assert blob[:2] == b"\x00\x01" and len(blob) == 2 + 12 + 13 + 16
        assert await hsm.decrypt_data("data", blob, aad=b"row 7") == b"remise 000123"
        with pytest.raises(VerificationError):
            await hsm.decrypt_data("data", blob, aad=b"row 8")
        with pytest.raises(VerificationError):
            await hsm.decrypt_data("data", blob[:-1] + bytes([blob[-1] ^ 1]), aad=b"row 7")

    backend.run(body)


X924_PAN, X924_PIN = "4012345678909", "1234"
X924_ENCRYPTED = [  # KSN -> PIN block 041274EDCBA9876F under the PIN variant (X9.24-1 A.4)
    ("FFFF9876543210E00001", "1B9C1845EB993A7A"),
    ("FFFF9876543210E00002", "10A01C8D02C69107"),
    ("FFFF9876543210E00015", "72105C22EBC791E6"),
    ("FFFF9876543210F00000", "73EC88AD0AC5830E"),
]


def test_dukpt_tdes_pin_translation(backend: Backend) -> None:
    async def body(hsm: HSM) -> None:
        for ksn, block in X924_ENCRYPTED:
            call = hsm.translate_pin(
                H(block),
                pan=X924_PAN,
                source_key="bdk",
                source_format=0,
                dest_key="zpk",
                dest_format=0,
                ksn=H(ksn),
            )
            if not supports(backend, "soft", "payshield"):
                with pytest.raises(NotSupportedError):
                    await call
                continue
            out = await call
            assert out == tdes.encrypt_ecb(ZPK, H("041274EDCBA9876F"))

    backend.run(body)


def test_dukpt_aes_pin_translation_format_4(backend: Backend) -> None:
    ksn = H("123456789012345600000001")
    pan = "4111111111111111"
    terminal_key = dukpt.aes_working_key(AES_BDK, ksn, dukpt.Usage.PIN)
    block = pinblock.encipher(terminal_key, pinblock.encode("1234", pan, 4), pan, 4)

    async def body(hsm: HSM) -> None:
        call = hsm.translate_pin(
            block,
            pan=pan,
            source_key="bdk-aes",
            source_format=4,
            dest_key="zpk-aes",
            dest_format=4,
            ksn=ksn,
        )
        if not supports(backend, "soft"):
            with pytest.raises(NotSupportedError):
                await call
            return
        out = await call
        assert pinblock.decode(pinblock.decipher(ZPK_AES, out, pan, 4), pan, 4) == "1234"

    backend.run(body)


@pytest.mark.parametrize(
    ("src", "src_fmt", "dst", "dst_fmt"),
    [
        ("tpk", 0, "zpk", 0),
        ("tpk", 0, "zpk", 1),
        ("tpk", 0, "zpk", 3),
        ("tpk", 3, "zpk", 0),
        ("tpk", 1, "zpk", 3),
        ("tpk-aes", 4, "zpk-aes", 4),
    ],
)
def test_tpk_to_zpk_translation(
    backend: Backend, src: str, src_fmt: int, dst: str, dst_fmt: int
) -> None:
    values = {name: value for name, *_, value in KEYS}
    pan, pin = "5413330089020011", "246810"
    source = pinblock.encipher(values[src], pinblock.encode(pin, pan, src_fmt), pan, src_fmt)

    async def body(hsm: HSM) -> None:
        call = hsm.translate_pin(
            source,
            pan=pan,
            source_key=src,
            source_format=src_fmt,
            dest_key=dst,
            dest_format=dst_fmt,
        )
        if not supports(backend, "soft", "payshield"):
            with pytest.raises(NotSupportedError):
                await call
            return
        out = await call
        clear = pinblock.decipher(values[dst], out, pan, dst_fmt)
        assert pinblock.decode(clear, pan, dst_fmt) == pin

    backend.run(body)


def test_emv_arqc_and_arpc(backend: Backend) -> None:
    pan, psn, atc, un = "9901234567890123", "45", H("1234"), H("90123456")
    data = H("0123456789ABCDEF0123456789ABCDEF")
    # The ARQC for R = ATC|0000|UN, from the primitives checked against pyemv's vector.
    icc = emv.icc_master_key(EMV_IMK, pan, psn)
    arqc = emv.application_cryptogram(emv.session_key(icc, emv.diversification(atc, un)), data)

    async def body(hsm: HSM) -> None:
        kwargs = {"pan": pan, "psn": psn, "atc": atc, "unpredictable_number": un, "data": data}
        if not supports(backend, "soft", "payshield"):
            with pytest.raises(NotSupportedError):
                await hsm.verify_arqc("imk", arqc=arqc, **kwargs)
            with pytest.raises(NotSupportedError):
                await hsm.generate_arpc("imk", pan=pan, psn=psn, arqc=arqc, arc=H("0000"))
            return
        assert await hsm.verify_arqc("imk", arqc=arqc, **kwargs)
        assert not await hsm.verify_arqc("imk", arqc=bytes(8), **kwargs)
        # pyemv's published ARPC method 1: ARQC 4B46013359B7A58B, ARC 0000.
        arpc = await hsm.generate_arpc(
            "imk", pan=pan, psn=psn, arqc=H("4B46013359B7A58B"), arc=H("0000")
        )
        assert arpc == H("F8C9CECAABD55AD1")

    backend.run(body)


def test_dukpt_key_check(backend: Backend) -> None:
    async def body(hsm: HSM) -> None:
        ksn = H("FFFF9876543210E00001")
        if not supports(backend, "soft"):
            with pytest.raises(NotSupportedError):
                await hsm.derive_dukpt("bdk", ksn, DukptUsage.PIN)
            return
        # The published transaction key 042666B4... with the PIN variant applied.
        pin_key = tdes.xor(H("042666B49184CFA368DE9628D0397BC9"), H("00000000000000FF" * 2))
        assert await hsm.derive_dukpt("bdk", ksn, DukptUsage.PIN) == keys.kcv(
            Algorithm.TDES, pin_key
        )

    backend.run(body)


# --- bad input ---


def test_bad_input_gets_specific_errors_without_secrets(backend: Backend) -> None:
    errors: list[HSMError] = []

    async def expect(kind: type[HSMError], call: Awaitable[object]) -> None:
        with pytest.raises(kind) as err:
            await call
        errors.append(err.value)

    async def body(hsm: HSM) -> None:
        mac_ok = supports(backend, "soft", "payshield")
        await expect(UnknownKeyError, hsm.generate_mac("nope", b"x", MacAlgorithm.AES_CMAC))
        if supports(backend, "soft", "pkcs11"):
            await expect(WrongKeyTypeError, hsm.encrypt_data("cmac", b"x"))
            await expect(UnknownKeyError, hsm.decrypt_data("data", b"\x00\x09" + bytes(40)))
            await expect(BadLengthError, hsm.decrypt_data("data", bytes(10)))
            await expect(BadInputError, hsm.pan_hmac("4970 1012"))
        await expect(BadLengthError, hsm.generate_mac("cmac", b"x", MacAlgorithm.AES_CMAC, 3))
        if mac_ok:
            await expect(WrongKeyTypeError, hsm.generate_mac("zpk", b"x"))
            await expect(WrongKeyTypeError, hsm.generate_mac("cmac", b"x"))  # AES key, retail
            tpk = {"pan": X924_PAN, "source_format": 0, "dest_format": 0}
            await expect(
                WrongKeyTypeError,
                hsm.translate_pin(bytes(8), source_key="tpk", dest_key="cmac", **tpk),
            )
            await expect(
                BadLengthError, hsm.translate_pin(bytes(7), source_key="tpk", dest_key="zpk", **tpk)
            )
            await expect(
                BadInputError,
                hsm.translate_pin(
                    bytes(8),
                    pan=X924_PAN,
                    source_key="tpk",
                    source_format=2,
                    dest_key="zpk",
                    dest_format=0,
                ),
            )
            garbage = tdes.encrypt_ecb(TPK, H("0F1274EDCBA9876F"))  # length nibble F
            await expect(
                BadInputError, hsm.translate_pin(garbage, source_key="tpk", dest_key="zpk", **tpk)
            )
            await expect(
                BadLengthError,
                hsm.verify_arqc(
                    "imk",
                    pan="9901234567890123",
                    psn="45",
                    atc=H("12"),
                    unpredictable_number=bytes(4),
                    data=b"",
                    arqc=bytes(8),
                ),
            )
            await expect(
                WrongKeyTypeError,
                hsm.verify_arqc(
                    "zpk",
                    pan="9901234567890123",
                    psn="45",
                    atc=H("1234"),
                    unpredictable_number=bytes(4),
                    data=b"",
                    arqc=bytes(8),
                ),
            )
        for exc in errors:
            text = str(exc).lower()
            assert not any(secret in text for secret in SECRETS), text
            assert X924_PAN not in text and "4970101" not in text

    backend.run(body)


# --- reachability and bounded waits ---


def test_payshield_key_tokens_are_checked_at_start() -> None:
    with pytest.raises(BadInputError, match="'zpk': only key-block tokens"):
        PayShieldHSM("127.0.0.1", 1, keys={"zpk": "U" + "0" * 32})
    with pytest.raises(BadInputError, match="'zpk' is not a valid key block"):
        PayShieldHSM("127.0.0.1", 1, keys={"zpk": "SD0112P0AE00E0000B826"})


@pytest.mark.parametrize(
    ("answer", "message"),
    [(b"ND00" + b"0" * 5, "malformed payShield answer"), (b"ZZ68", "answered b'ZZ' to NC")],
)
def test_payshield_malformed_answers_are_device_errors(answer: bytes, message: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        header = (await reader.readexactly(size))[:4]
        writer.write(len(header + answer).to_bytes(2, "big") + header + answer)
        await writer.drain()
        writer.close()

    async def body() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        hsm = PayShieldHSM("127.0.0.1", port, timeout=2.0)
        with pytest.raises(HSMDeviceError, match=re.escape(message)):
            await hsm.diagnostics()
        await hsm.close()
        server.close()
        await server.wait_closed()

    asyncio.run(body())


def test_payshield_unreachable_is_reported_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there

    async def body() -> None:
        hsm = PayShieldHSM("127.0.0.1", port, timeout=1.0)
        start = time.monotonic()
        with pytest.raises(HSMUnreachableError, match=f"127.0.0.1:{port}"):
            await hsm.diagnostics()
        assert time.monotonic() - start < 1.0
        await hsm.close()

    asyncio.run(body())


def test_payshield_slow_hsm_is_a_bounded_timeout() -> None:
    async def body() -> None:
        sim = PayShieldSimulator(delay=lambda payload: 30.0)
        host, port = await sim.start()
        hsm = PayShieldHSM(host, port, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(HSMTimeoutError, match=r"within 0\.3s"):
            await hsm.diagnostics()
        assert 0.25 < time.monotonic() - start < 2.0
        await hsm.close()
        await sim.stop()

    asyncio.run(body())


def test_payshield_connection_lost_fails_pending_requests() -> None:
    async def body() -> None:
        arrived = asyncio.Event()

        def hold(payload: bytes) -> float:
            arrived.set()
            return 30.0

        sim = PayShieldSimulator(delay=hold)
        host, port = await sim.start()
        hsm = PayShieldHSM(host, port, timeout=5.0)
        pending = asyncio.create_task(hsm.diagnostics())
        await arrived.wait()  # the simulator holds our request
        await sim.stop()
        with pytest.raises(HSMUnreachableError, match="closed the connection"):
            await pending
        await hsm.close()

    asyncio.run(body())


def test_payshield_pipelining_out_of_order_and_many_connections() -> None:
    async def body() -> None:
        release = asyncio.Event()
        sim = PayShieldSimulator(delay=lambda p: release.wait() if b"slow" in p else 0.0)
        host, port = await sim.start()
        keys_ = {"cmac": sim.wrap_key(KeyType.MAC, Algorithm.AES, CMAC_KEY)}
        cmac = MacAlgorithm.AES_CMAC
        one = PayShieldHSM(host, port, keys=keys_, connections=1, timeout=5.0)
        slow = asyncio.create_task(one.generate_mac("cmac", b"slow", cmac))
        fast = await one.generate_mac("cmac", b"fast", cmac)  # same connection, answered first
        assert fast == mac_algorithms.aes_cmac(CMAC_KEY, b"fast")[:8]
        assert not slow.done()
        release.set()
        assert await slow == mac_algorithms.aes_cmac(CMAC_KEY, b"slow")[:8]
        await one.close()

        many = PayShieldHSM(host, port, keys=keys_, connections=3, timeout=5.0)
        messages = [f"message {i}".encode() for i in range(300)]
        macs = await asyncio.gather(*(many.generate_mac("cmac", m, cmac) for m in messages))
        assert macs == [mac_algorithms.aes_cmac(CMAC_KEY, m)[:8] for m in messages]
        assert sim.connections == 1 + 3
        info = await many.diagnostics()
        assert info["firmware"] and len(info["lmk_check"]) == 16
        await many.close()
        await sim.stop()

    asyncio.run(body())


def test_pkcs11_unreachable_and_timeouts(softhsm_token: str, tmp_path: Path) -> None:
    with pytest.raises(HSMUnreachableError, match="does not exist"):
        Pkcs11HSM(str(tmp_path / "missing.so"), softhsm_token, USER_PIN)
    with pytest.raises(HSMUnreachableError, match="no PKCS#11 token labelled 'absent'"):
        Pkcs11HSM(SOFTHSM_LIB, "absent", USER_PIN)

    async def body() -> None:
        hsm = Pkcs11HSM(SOFTHSM_LIB, softhsm_token, USER_PIN, timeout=0.2)
        gate, started = threading.Event(), threading.Event()

        def hang() -> None:  # a token call that does not return until we say so
            started.set()
            gate.wait()

        try:
            busy = asyncio.create_task(hsm._run(hang))
            assert await asyncio.to_thread(started.wait, 5.0)  # the worker is inside it
            start = time.monotonic()
            with pytest.raises(HSMTimeoutError, match=r"did not answer within 0\.2s"):
                await hsm.list_keys()
            assert time.monotonic() - start < 1.0
            with pytest.raises(HSMTimeoutError):
                await busy
            gate.set()
            assert {k.name for k in await hsm.list_keys()} >= {"data", "cmac"}  # usable again
        finally:
            gate.set()
            await hsm.close()

    asyncio.run(body())


def test_pkcs11_keys_generated_and_rotated_inside_the_token(softhsm_token: str) -> None:
    async def body() -> None:
        hsm = Pkcs11HSM(SOFTHSM_LIB, softhsm_token, USER_PIN, pan_hmac_key="pan-rotating")
        try:
            info = await hsm.generate_key("pan-rotating", KeyType.PAN_HMAC)
            assert info.algorithm is Algorithm.HMAC and info.current.version == 1
            first = await hsm.pan_hmac("4970101234567890")
            info = await hsm.rotate_key("pan-rotating")
            assert [v.version for v in info.versions] == [1, 2]
            second = await hsm.pan_hmac("4970101234567890")
            assert second.version == 2 and second.digest != first.digest
            assert await hsm.pan_hmac("4970101234567890", version=1) == first
            names = {k.name for k in await hsm.list_keys()}
            assert {"pan-rotating", "data", "cmac"} <= names
            with pytest.raises(NotSupportedError, match="TR-31"):
                await hsm.import_key("x", "D0016...", "kbpk")
        finally:
            await hsm.close()

    asyncio.run(body())


def test_open_hsm_from_settings(
    softhsm_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = msgspec.convert(
        {
            "backend": "pkcs11",
            "pkcs11": {"library": SOFTHSM_LIB, "token": softhsm_token, "pin_env": "TEST_P11_PIN"},
        },
        HSMSettings,
    )
    with pytest.raises(HSMError, match="set TEST_P11_PIN"):
        open_hsm(settings)
    monkeypatch.setenv("TEST_P11_PIN", USER_PIN)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.backend"):
        msgspec.convert({"backend": "luna"}, HSMSettings)

    async def body() -> None:
        p11 = open_hsm(settings)
        assert (await p11.diagnostics())["token"] == softhsm_token
        await p11.close()
        sim = PayShieldSimulator(header_length=6)
        host, port = await sim.start()
        ps = open_hsm(
            msgspec.convert(
                {
                    "backend": "payshield",
                    "payshield": {
                        "host": host,
                        "port": port,
                        "header_length": 6,
                        "keys": {"cmac": sim.wrap_key(KeyType.MAC, Algorithm.AES, CMAC_KEY)},
                    },
                },
                HSMSettings,
            )
        )
        assert await ps.generate_mac("cmac", b"", MacAlgorithm.AES_CMAC) == H(RFC4493[0][1])[:8]
        assert [k.name for k in await ps.list_keys()] == ["cmac"]
        await ps.close()
        # payShield for payment keys, the token for PAN HMAC and data keys.
        split = open_hsm(
            msgspec.convert(
                {
                    "backend": "payshield",
                    "data_backend": "pkcs11",
                    "pkcs11": {
                        "library": SOFTHSM_LIB,
                        "token": softhsm_token,
                        "pin_env": "TEST_P11_PIN",
                    },
                    "payshield": {
                        "host": host,
                        "port": port,
                        "header_length": 6,
                        "keys": {"retail": sim.wrap_key(KeyType.MAC, Algorithm.TDES, RETAIL_KEY)},
                    },
                },
                HSMSettings,
            )
        )
        try:
            assert isinstance(split, HSM) and split.backend == "payshield+pkcs11"
            digest = await split.pan_hmac("4970101234567890")
            assert digest.digest == hmac.new(PAN_KEY, b"4970101234567890", hashlib.sha256).digest()
            assert await split.generate_mac("retail", b"Now is the time for all ") == H(
                "A1C72E74EA3FA9B6"
            )
            assert {"retail", "data", "pan-hmac"} <= {k.name for k in await split.list_keys()}
            assert (await split.key_info("data")).type is KeyType.DATA
            with pytest.raises(UnknownKeyError):
                await split.rotate_key("nope")
            assert (await split.diagnostics())["data.token"] == softhsm_token
        finally:
            await split.close()
        await sim.stop()

    asyncio.run(body())
