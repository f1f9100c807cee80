"""The soft backend's keystore: wrapping under the KEK, versions, tampering, TR-31 import."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from pathlib import Path

import pytest

from passerelle.hsm import HSMSettings, KeyType, open_hsm, tr31
from passerelle.hsm.errors import (
    BadInputError,
    HSMError,
    UnknownKeyError,
    VerificationError,
    WrongKeyTypeError,
)
from passerelle.hsm.keys import Algorithm
from passerelle.hsm.keystore import Keystore, create_kek
from passerelle.hsm.settings import SoftSettings
from passerelle.hsm.soft import SoftHSM

SECRET = bytes.fromhex("00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF")


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    kek = tmp_path / "kek"
    create_kek(kek)
    return tmp_path / "keystore.json", kek


def test_keys_are_stored_wrapped_and_listed_without_material(paths: tuple[Path, Path]) -> None:
    store = Keystore(*paths)
    info = store.add("pan-hmac", KeyType.PAN_HMAC, Algorithm.HMAC, SECRET)
    text = paths[0].read_text()
    assert SECRET.hex() not in text.lower() and SECRET.hex().upper() not in text
    assert oct(paths[0].stat().st_mode & 0o777) == "0o600"
    assert info.versions[0].version == 1 and len(info.versions[0].kcv) == 6
    assert SECRET.hex() not in repr(info).lower()
    assert SECRET.hex() not in repr(store.get("pan-hmac")).lower()


def test_open_hsm_soft_and_versioned_pan_hmac(paths: tuple[Path, Path]) -> None:
    Keystore(*paths).add("pan-hmac", KeyType.PAN_HMAC, Algorithm.HMAC, SECRET)
    settings = HSMSettings(soft=SoftSettings(keystore=str(paths[0]), kek=str(paths[1])))

    async def body() -> None:
        hsm = open_hsm(settings)
        first = await hsm.pan_hmac("4970101234567890")
        assert first.version == 1
        assert first.digest == hmac.new(SECRET, b"4970101234567890", hashlib.sha256).digest()
        await hsm.rotate_key("pan-hmac")
        assert await hsm.pan_hmac_versions() == [1, 2]
        second = await hsm.pan_hmac("4970101234567890")
        assert second.version == 2 and second.digest != first.digest
        assert await hsm.pan_hmac("4970101234567890", version=1) == first
        with pytest.raises(UnknownKeyError):
            await hsm.pan_hmac("4970101234567890", version=3)
        await hsm.close()

    asyncio.run(body())
    # A new process sees the rotation: it is on disk.
    assert Keystore(*paths).versions("pan-hmac") == [1, 2]


def test_reload_sees_a_rotation_made_by_another_process(paths: tuple[Path, Path]) -> None:
    async def body() -> None:
        hsm = SoftHSM(*paths)
        await hsm.generate_key("pan-hmac", KeyType.PAN_HMAC)
        Keystore(*paths).rotate("pan-hmac")  # what `mpctl keys rotate` does
        assert (await hsm.pan_hmac("4970101234567890")).version == 1
        await hsm.reload()
        assert (await hsm.pan_hmac("4970101234567890")).version == 2

    asyncio.run(body())


def test_data_encrypted_under_an_old_version_still_decrypts(paths: tuple[Path, Path]) -> None:
    async def body() -> None:
        hsm = SoftHSM(*paths)
        await hsm.generate_key("data", KeyType.DATA)
        old = await hsm.encrypt_data("data", b"remise 42", b"row-1")
        await hsm.rotate_key("data")
        new = await hsm.encrypt_data("data", b"remise 42", b"row-1")
        assert old[:2] == b"\x00\x01" and new[:2] == b"\x00\x02"
        assert await hsm.decrypt_data("data", old, b"row-1") == b"remise 42"
        assert await hsm.decrypt_data("data", new, b"row-1") == b"remise 42"
        with pytest.raises(VerificationError):
            await hsm.decrypt_data("data", new, b"row-2")

    asyncio.run(body())


def test_wrong_kek_is_named_as_such(paths: tuple[Path, Path], tmp_path: Path) -> None:
    Keystore(*paths).add("k", KeyType.DATA, Algorithm.AES, SECRET)
    other = tmp_path / "other-kek"
    create_kek(other)
    with pytest.raises(VerificationError, match="KEK does not match"):
        Keystore(paths[0], other)


def test_kek_readable_by_others_is_refused(paths: tuple[Path, Path]) -> None:
    os.chmod(paths[1], 0o644)
    with pytest.raises(HSMError, match="chmod 600"):
        Keystore(*paths)


def test_swapped_entries_do_not_unwrap(paths: tuple[Path, Path]) -> None:
    store = Keystore(*paths)
    store.add("a", KeyType.DATA, Algorithm.AES, SECRET)
    store.add("b", KeyType.DATA, Algorithm.AES, bytes(32))
    data = json.loads(paths[0].read_text())
    ka, kb = data["keys"]["a"]["versions"][0], data["keys"]["b"]["versions"][0]
    ka["wrapped"], kb["wrapped"] = kb["wrapped"], ka["wrapped"]
    paths[0].write_text(json.dumps(data))
    with pytest.raises(VerificationError, match="'a' version 1 does not unwrap"):
        Keystore(*paths).get("a")


def test_relabelling_a_key_type_is_detected(paths: tuple[Path, Path]) -> None:
    Keystore(*paths).add("zpk", KeyType.PIN, Algorithm.TDES, SECRET[:16])
    data = json.loads(paths[0].read_text())
    data["keys"]["zpk"]["type"] = "mac"
    paths[0].write_text(json.dumps(data))
    with pytest.raises(VerificationError):
        Keystore(*paths).get("zpk")


def test_tr31_import_under_a_stored_kbpk(paths: tuple[Path, Path]) -> None:
    # TR-31:2018 A.7.4: an AES PIN key under an AES-256 KBPK.
    kbpk = bytes.fromhex("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6")
    block = (
        "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E"
        "8E31DA05F7425509593D03A457DC34"
    )

    async def body() -> None:
        hsm = SoftHSM(*paths)
        hsm.store.add("kbpk", KeyType.KBPK, Algorithm.AES, kbpk)
        info = await hsm.import_key("zpk-aes", block, "kbpk")
        assert (info.type, info.algorithm, info.length) == (KeyType.PIN, Algorithm.AES, 16)
        assert info.current.kcv.startswith("08793E")  # the KCV published with the vector
        assert hsm.store.get("zpk-aes").value == bytes.fromhex("3F419E1CB7079442AA37474C2EFBF8B8")
        with pytest.raises(WrongKeyTypeError):
            await hsm.import_key("x", block, "zpk-aes")  # not a KBPK
        with pytest.raises(BadInputError, match="already exists"):
            await hsm.import_key("zpk-aes", block, "kbpk")
        tampered = block[:40] + ("0" if block[40] != "0" else "1") + block[41:]
        with pytest.raises(VerificationError) as err:
            await hsm.import_key("y", tampered, "kbpk")
        assert kbpk.hex() not in str(err.value).lower()
        wrapped = tr31.wrap(kbpk, bytes(16), usage="X9", algorithm="A")
        with pytest.raises(BadInputError, match="usage 'X9'"):
            await hsm.import_key("z", wrapped, "kbpk")

    asyncio.run(body())


def test_two_writers_do_not_lose_each_others_keys(paths: tuple[Path, Path]) -> None:
    first, second = Keystore(*paths), Keystore(*paths)  # two `mpctl keys` processes
    first.add("x", KeyType.DATA, Algorithm.AES, SECRET)
    second.add("y", KeyType.DATA, Algorithm.AES, bytes(32))
    second.rotate("x")
    assert Keystore(*paths).names() == ["x", "y"]
    assert Keystore(*paths).versions("x") == [1, 2]
