"""TR-31 (ANSI X9.143) key blocks: parse, unwrap and wrap versions A, B, C and D.

A key arrives from an acquirer or a key ceremony as printable text: a 16-character header
(version, length, usage, algorithm, mode of use, key version, exportability, optional block
count), optional blocks, the encrypted payload and a MAC, all under a key block protection
key (KBPK). A/C bind with variants (KBPK xor 0x45/0x4D), B/D derive encryption and MAC keys
with CMAC (TDES for B, AES for D) and use the MAC as the CBC IV.
"""

from __future__ import annotations

import secrets

import msgspec
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from passerelle.hsm import tdes
from passerelle.hsm.errors import BadInputError, BadLengthError, VerificationError

VERSIONS = "ABCD"
_PRINTABLE = {chr(c) for c in range(0x20, 0x7F)}


class Header(msgspec.Struct, frozen=True):
    version: str
    length: int
    usage: str
    algorithm: str
    mode_of_use: str
    key_version: str
    exportability: str
    optional_blocks: tuple[tuple[str, str], ...] = ()

    def encode(self) -> str:
        blocks = "".join(f"{bid}{len(data) + 4:02X}{data}" for bid, data in self.optional_blocks)
        return (
            f"{self.version}{self.length:04d}{self.usage}{self.algorithm}{self.mode_of_use}"
            f"{self.key_version}{self.exportability}{len(self.optional_blocks):02d}00{blocks}"
        )


def parse_header(block: str) -> tuple[Header, int]:
    """Parse and validate the header; returns it and the offset of the payload."""
    if len(block) < 16:
        raise BadLengthError(f"a TR-31 key block is at least 16 characters, not {len(block)}")
    if set(block) - _PRINTABLE:
        raise BadInputError("a TR-31 key block is printable ASCII")
    version = block[0]
    if version not in VERSIONS:
        raise BadInputError(f"TR-31 version {version!r} is not supported (A, B, C or D)")
    if not block[1:5].isdigit() or int(block[1:5]) != len(block):
        raise BadLengthError(
            f"TR-31 header declares length {block[1:5]!r}, the block is {len(block)} characters"
        )
    if not block[12:14].isdigit():
        raise BadInputError(f"TR-31 optional block count {block[12:14]!r} is not a number")
    offset = 16
    blocks: list[tuple[str, str]] = []
    for _ in range(int(block[12:14])):
        bid, raw_len = block[offset : offset + 2], block[offset + 2 : offset + 4]
        try:
            size = int(raw_len, 16)
        except ValueError:
            raise BadInputError(
                f"TR-31 optional block {bid!r} has a bad length {raw_len!r}"
            ) from None
        if size < 4 or offset + size > len(block):
            raise BadLengthError(f"TR-31 optional block {bid!r} overruns the key block")
        blocks.append((bid, block[offset + 4 : offset + size]))
        offset += size
    header = Header(
        version=version,
        length=len(block),
        usage=block[5:7],
        algorithm=block[7],
        mode_of_use=block[8],
        key_version=block[9:11],
        exportability=block[11],
        optional_blocks=tuple(blocks),
    )
    return header, offset


def _tdes_cmac(key: bytes, data: bytes) -> bytes:
    key = key + key[:8] if len(key) == 16 else key
    mac = CMAC(TripleDES(key))
    mac.update(data)
    return mac.finalize()


def _aes_cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _derive(kbpk: bytes, version: str) -> tuple[bytes, bytes]:
    """KBEK and KBMK for versions B (TDES-CMAC KDF) and D (AES-CMAC KDF)."""
    if version == "B":
        if len(kbpk) not in (16, 24):
            raise BadLengthError(f"a version B KBPK is a 16 or 24-byte TDES key, not {len(kbpk)}")
        algo, prf, block = (0 if len(kbpk) == 16 else 1), _tdes_cmac, 8
    else:
        if len(kbpk) not in (16, 24, 32):
            raise BadLengthError(
                f"a version D KBPK is a 16, 24 or 32-byte AES key, not {len(kbpk)}"
            )
        algo, prf, block = {16: 2, 24: 3, 32: 4}[len(kbpk)], _aes_cmac, 16
    bits = len(kbpk) * 8
    keys = []
    for usage in (0, 1):
        out = b""
        for counter in range(1, -(-len(kbpk) // block) + 1):
            data = bytes([counter]) + usage.to_bytes(2, "big") + b"\x00"
            out += prf(kbpk, data + algo.to_bytes(2, "big") + bits.to_bytes(2, "big"))
        keys.append(out[: len(kbpk)])
    return keys[0], keys[1]


def _cbc(version: str, key: bytes, iv: bytes, data: bytes, decrypt: bool) -> bytes:
    algo = (
        algorithms.AES(key)
        if version == "D"
        else TripleDES(key + key[:8] if len(key) == 16 else key)
    )
    cipher = Cipher(algo, modes.CBC(iv))
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def _variant_keys(kbpk: bytes) -> tuple[bytes, bytes]:
    if len(kbpk) not in (16, 24):
        raise BadLengthError(f"a version A/C KBPK is a 16 or 24-byte TDES key, not {len(kbpk)}")
    return bytes(b ^ 0x45 for b in kbpk), bytes(b ^ 0x4D for b in kbpk)


def _tdes_cbc_mac(key: bytes, data: bytes) -> bytes:
    return tdes.encrypt_cbc(key, data + bytes(-len(data) % 8))[-8:]


def unwrap(kbpk: bytes, block: str) -> tuple[Header, bytes]:
    """Verify and decrypt a key block; returns its header and the clear key."""
    header, offset = parse_header(block)
    mac_chars = 8 if header.version in "AC" else 16 if header.version == "B" else 32
    body = block[offset : len(block) - mac_chars]
    head_text = block[:offset].encode("ascii")
    try:
        payload = bytes.fromhex(body)
        mac = bytes.fromhex(block[len(block) - mac_chars :])
    except ValueError:
        raise BadInputError("TR-31 payload or MAC is not hexadecimal") from None
    blk = 16 if header.version == "D" else 8
    if not payload or len(payload) % blk:
        raise BadLengthError(f"TR-31 payload is not a whole number of {blk}-byte blocks")
    if header.version in "AC":
        kbek, kbmk = _variant_keys(kbpk)
        if not secrets.compare_digest(_tdes_cbc_mac(kbmk, head_text + payload)[:4], mac):
            raise VerificationError("TR-31 key block MAC does not verify (wrong KBPK?)")
        clear = tdes.decrypt_cbc(kbek, payload, head_text[:8])
    else:
        kbek, kbmk = _derive(kbpk, header.version)
        clear = _cbc(header.version, kbek, mac[:blk], payload, decrypt=True)
        prf = _tdes_cmac if header.version == "B" else _aes_cmac
        if not secrets.compare_digest(prf(kbmk, head_text + clear), mac):
            raise VerificationError("TR-31 key block MAC does not verify (wrong KBPK?)")
    bits = int.from_bytes(clear[:2], "big")
    if bits % 8 or bits // 8 > len(clear) - 2 or bits == 0:
        raise BadInputError("TR-31 payload declares an impossible key length")
    return header, clear[2 : 2 + bits // 8]


def wrap(
    kbpk: bytes,
    key: bytes,
    *,
    version: str = "D",
    usage: str = "D0",
    algorithm: str = "A",
    mode_of_use: str = "N",
    key_version: str = "00",
    exportability: str = "N",
    optional_blocks: tuple[tuple[str, str], ...] = (),
) -> str:
    """Build a key block (used by tests, the simulator's LMK and `mpctl keys` export)."""
    if version not in VERSIONS:
        raise BadInputError(f"TR-31 version {version!r} is not supported (A, B, C or D)")
    blk = 16 if version == "D" else 8
    payload = len(key * 8).to_bytes(2, "big") + key
    payload += secrets.token_bytes(-len(payload) % blk)
    mac_chars = 8 if version in "AC" else 16 if version == "B" else 32
    proto = Header(
        version, 0, usage, algorithm, mode_of_use, key_version, exportability, optional_blocks
    )
    length = len(proto.encode()) + 2 * len(payload) + mac_chars
    head_text = msgspec.structs.replace(proto, length=length).encode().encode("ascii")
    if version in "AC":
        kbek, kbmk = _variant_keys(kbpk)
        enc = tdes.encrypt_cbc(kbek, payload, head_text[:8])
        mac = _tdes_cbc_mac(kbmk, head_text + enc)[:4]
    else:
        kbek, kbmk = _derive(kbpk, version)
        prf = _tdes_cmac if version == "B" else _aes_cmac
        mac = prf(kbmk, head_text + payload)
        enc = _cbc(version, kbek, mac[:blk], payload, decrypt=False)
    return (head_text + (enc.hex() + mac.hex()).upper().encode()).decode("ascii")
