"""Acquirer message MACs (routing.link.add_mac / mac_valid) on every acquirer profile,
computed by the soft HSM: field 64, or 128 when the message has a secondary bitmap."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.hsm import Algorithm, KeyType
from passerelle.hsm.keystore import create_kek
from passerelle.hsm.soft import SoftHSM
from passerelle.routing import translate
from passerelle.routing.link import add_mac, mac_valid
from passerelle.routing.settings import AcquirerSettings
from tests.integration.auth_helpers import CB2A, auth_request


@pytest.fixture
def hsm(tmp_path: Path) -> SoftHSM:
    create_kek(tmp_path / "kek")
    soft = SoftHSM(tmp_path / "keystore.json", tmp_path / "kek")
    asyncio.run(soft.generate_key("mak", KeyType.MAC, Algorithm.TDES))
    asyncio.run(soft.generate_key("cmac", KeyType.MAC, Algorithm.AES))
    return soft


@pytest.mark.parametrize("profile", ["iso93-binary", "iso87-ascii", "cb2a"])
@pytest.mark.parametrize(("key", "algorithm"), [("mak", "iso9797-1-alg3"),
                                                ("cmac", "aes-cmac")])
def test_a_request_macs_and_verifies_on_each_profile(hsm: SoftHSM, profile: str, key: str,
                                                     algorithm: str) -> None:
    acquirer = AcquirerSettings(name="a", host="h", port=1, profile=profile)
    wire, _ = translate.to_acquirer(Message.parse(auth_request(), CB2A), acquirer,
                                    datetime.now(UTC))

    async def check() -> None:
        macked = await add_mac(wire, get_profile(profile), hsm, key, algorithm)
        message = Message.parse(macked, get_profile(profile))
        assert message.numbers[-1] == 64
        assert {n: message.get(n) for n in message.numbers if n != 64} == {
            n: Message.parse(wire, get_profile(profile)).get(n)
            for n in Message.parse(wire, get_profile(profile)).numbers}
        assert await mac_valid(message, hsm, key, algorithm)
        # One flipped bit anywhere before the MAC, or no MAC at all: not valid.
        tampered = Message.parse(macked[:-20] + bytes([macked[-20] ^ 1]) + macked[-19:],
                                 get_profile(profile))
        assert not await mac_valid(tampered, hsm, key, algorithm)
        assert not await mac_valid(Message.parse(wire, get_profile(profile)), hsm, key,
                                   algorithm)

    asyncio.run(check())


def test_a_message_with_a_secondary_bitmap_carries_its_mac_in_128(hsm: SoftHSM) -> None:
    profile = get_profile("iso87-ascii")
    wire = encode(profile, "0800", {7: "1122093000", 11: "000001", 70: "301"})

    async def check() -> None:
        message = Message.parse(await add_mac(wire, profile, hsm, "mak", "iso9797-1-alg3"),
                                profile)
        assert message.numbers[-1] == 128 and 64 not in message
        assert await mac_valid(message, hsm, "mak", "iso9797-1-alg3")

    asyncio.run(check())
