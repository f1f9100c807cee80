"""Known-answer tests of the pure payment-crypto algorithms, from published vectors."""

from __future__ import annotations

import pytest

from passerelle.hsm import dukpt, emv, keys, mac, pinblock, tdes, tr31
from passerelle.hsm.errors import BadInputError, BadLengthError, VerificationError

H = bytes.fromhex

# --- ANSI X9.24-1:2009 Annex A.4 (DUKPT test data examples), as reproduced in
# openemv/dukpt test/dukpt_tdes_test.c: BDK, initial KSN, IPEK, then per KSN the current
# transaction key and the PIN block 041274EDCBA9876F (PIN 1234, PAN 4012345678909)
# enciphered under its PIN variant.
X924_BDK = H("0123456789ABCDEFFEDCBA9876543210")
X924_IKSN = H("FFFF9876543210E00000")
X924_IPEK = H("6AC292FAA1315B4D858AB3A3D7D5933A")
X924_PAN, X924_PIN = "4012345678909", "1234"
X924_CLEAR_BLOCK = H("041274EDCBA9876F")
X924_SEQUENCE = [
    ("FFFF9876543210E00001", "042666B49184CFA368DE9628D0397BC9", "1B9C1845EB993A7A"),
    ("FFFF9876543210E00002", "C46551CEF9FD24B0AA9AD834130D3BC7", "10A01C8D02C69107"),
    ("FFFF9876543210E00003", "0DF3D9422ACA56E547676D07AD6BADFA", "18DC07B94797B466"),
    ("FFFF9876543210E00010", "59598DCBD9BD94C094165CE453585F57", "D5D9638559EF53D6"),
    ("FFFF9876543210E00015", "E161D1956A61F6D2F37AFD7F9CC3699A", "72105C22EBC791E6"),
    # A.4.3 rollover sequence
    ("FFFF9876543210EFF800", "F9CDFEBF4F5B1D9EB3EC12454527E176", "33365F5CC6F23C35"),
    ("FFFF9876543210EFFC00", "F9430DF975082491C77BE4EF4FDB91EE", "DEFC6F09F8927B71"),
    ("FFFF9876543210F00000", "AA4D58DB653EC74A48C75F2F047DD2B5", "73EC88AD0AC5830E"),
]


def test_x924_1_ipek() -> None:
    assert dukpt.tdes_ipek(X924_BDK, X924_IKSN) == X924_IPEK


@pytest.mark.parametrize(("ksn", "txn_key", "enc_block"), X924_SEQUENCE)
def test_x924_1_transaction_keys_and_pin_blocks(ksn: str, txn_key: str, enc_block: str) -> None:
    assert dukpt.tdes_transaction_key(X924_BDK, H(ksn)) == H(txn_key)
    pin_key = dukpt.tdes_session_key(X924_BDK, H(ksn), dukpt.Usage.PIN)
    assert tdes.encrypt_ecb(pin_key, X924_CLEAR_BLOCK) == H(enc_block)


def test_x924_1_pin_block_format_0() -> None:
    assert pinblock.encode(X924_PIN, X924_PAN, 0) == X924_CLEAR_BLOCK
    assert pinblock.decode(X924_CLEAR_BLOCK, X924_PAN, 0) == X924_PIN


def test_dukpt_rejects_counters_a_device_never_uses() -> None:
    with pytest.raises(BadInputError):
        dukpt.tdes_transaction_key(X924_BDK, X924_IKSN)  # counter 0
    with pytest.raises(BadInputError):
        dukpt.tdes_transaction_key(X924_BDK, H("FFFF9876543210E007FF"))  # 11 bits set
    with pytest.raises(BadLengthError):
        dukpt.tdes_transaction_key(X924_BDK, H("FFFF9876543210E001"))


# --- ANSI X9.24-3:2017 supplement test vectors, AES-128 BDK (as in openemv/dukpt
# test/dukpt_aes128_test.c): initial key and the intermediate derivation keys.
AES_BDK = H("FEDCBA9876543210F1F1F1F1F1F1F1F1")
AES_IKID = H("1234567890123456")
AES_IK = H("1273671EA26AC29AFA4D1084127652A1")
AES_SEQUENCE = [
    ("00000001", "4F21B565BAD9835E112B6465635EAE44"),
    ("00000002", "2F34D68DE10F68D38091A73B9E7C437C"),
    ("00000003", "031504E530365CF812642385405183 18".replace(" ", "")),
    ("00000008", "718EE6CF0B27E53D5F7AF99C4D8146A2"),
    ("0001FFFE", "E21E8C8D347F8561A2BE752DAA85A111"),
    ("00020000", "F7AE9025468A25D37B7249CFFED224C8"),
    ("FFFE2000", "48E585B694EB0B18D5C35443E163C0BA"),
    ("FFFF0000", "F6BA59389BD14A9855BE9727E7C52E3C"),
]


def test_x924_3_initial_key() -> None:
    assert dukpt.aes_initial_key(AES_BDK, AES_IKID) == AES_IK


@pytest.mark.parametrize(("counter", "key"), AES_SEQUENCE)
def test_x924_3_derivation_keys(counter: str, key: str) -> None:
    assert dukpt.aes_derivation_key(AES_BDK, AES_IKID + H(counter)) == H(key)


def test_x924_3_aes256_initial_key() -> None:
    # X9.24-3:2017 supplement, AES-256 BDK (openemv/dukpt test/dukpt_aes_test.c).
    bdk = AES_BDK * 2
    expected = H("CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F")
    assert dukpt.aes_initial_key(bdk, AES_IKID) == expected


# --- ISO 9797-1:2011 Annex B.4, MAC algorithm 3 with padding method 1 (openemv/crypto
# test/crypto_tdes2_retail_mac_test.c publishes the 4-byte truncations).
RETAIL_KEY = H("0123456789ABCDEFFEDCBA9876543210")


def test_iso9797_1_algorithm_3() -> None:
    assert mac.retail_mac(RETAIL_KEY, b"Now is the time for all ") == H("A1C72E74EA3FA9B6")
    assert mac.retail_mac(RETAIL_KEY, b"Now is the time for it")[:4] == H("2E2B1428")


def test_iso9797_1_paddings() -> None:
    assert mac.pad(b"", mac.Padding.ZEROS) == bytes(8)
    assert mac.pad(b"F" * 8, mac.Padding.BIT) == b"F" * 8 + b"\x80" + bytes(7)
    assert mac.pad(b"F", mac.Padding.LENGTH) == bytes(7) + b"\x08" + b"F" + bytes(7)


# --- RFC 4493 section 4, AES-CMAC examples 1 to 4.
CMAC_KEY = H("2b7e151628aed2a6abf7158809cf4f3c")
CMAC_MESSAGE = H(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
CMAC_VECTORS = [
    (0, "bb1d6929e95937287fa37d129b756746"),
    (16, "070a16b46b4d4144f79bdd9dd04a287c"),
    (40, "dfa66747de9ae63030ca32611497c827"),
    (64, "51f0bebf7e3b9d92fc49741779363cfe"),
]


@pytest.mark.parametrize(("length", "tag"), CMAC_VECTORS)
def test_rfc4493_aes_cmac(length: int, tag: str) -> None:
    assert mac.aes_cmac(CMAC_KEY, CMAC_MESSAGE[:length]) == H(tag)


# --- ISO 9564-1 PIN blocks.


def test_iso9564_format_4_fields() -> None:
    # X9.24-3:2017 supplement, "Calculation of AES PIN Block Format 4" (openemv/pinblock
    # test/pinblock_format4_test.c): PIN 1234, PAN 4111111111111111.
    block = pinblock.encode("1234", "4111111111111111", 4)
    assert block[:8] == H("441234AAAAAAAAAA")
    assert pinblock.pan_field_4("4111111111111111") == H("44111111111111111000000000000000")
    assert pinblock.pan_field_4("123456789") == H("00001234567890000000000000000000")
    assert pinblock.decode(block, "4111111111111111", 4) == "1234"


@pytest.mark.parametrize("fmt", [1, 3])
def test_iso9564_random_formats(fmt: int) -> None:
    block = pinblock.encode("98765", "5413330089020011", fmt)
    assert pinblock.decode(block, "5413330089020011", fmt) == "98765"
    assert block != pinblock.encode("98765", "5413330089020011", fmt)  # random fill


def test_pin_block_errors_do_not_echo_the_pin() -> None:
    with pytest.raises(BadInputError) as err:
        pinblock.decode(H("041274EDCBA9876E"), X924_PAN, 0)  # fill digit damaged
    assert "1234" not in str(err.value)
    with pytest.raises(BadInputError):
        pinblock.encode("12a4", X924_PAN, 0)
    with pytest.raises(BadLengthError):
        pinblock.decode(bytes(7), X924_PAN, 0)


# --- EMV common core: the published pyemv example (knovichikhin/pyemv tests/test_ac_hsm.py):
# IMK 0123456789ABCDEFFEDCBA9876543210, PAN 9901234567890123, PSN 45, R 1234567890123456.
EMV_IMK = H("0123456789ABCDEFFEDCBA9876543210")


def test_emv_arqc_and_arpc() -> None:
    icc = emv.icc_master_key(EMV_IMK, "9901234567890123", "45")
    assert keys.kcv(keys.Algorithm.TDES, EMV_IMK)[:4] == "08D7"
    assert keys.kcv(keys.Algorithm.TDES, icc)[:4] == "1DA5"
    sk = emv.session_key(icc, H("1234567890123456"))
    assert keys.kcv(keys.Algorithm.TDES, sk)[:4] == "0995"
    arqc = emv.application_cryptogram(sk, H("0123456789ABCDEF0123456789ABCDEF"))
    assert arqc == H("4B46013359B7A58B")
    assert emv.arpc_method1(icc, arqc, H("0000")) == H("F8C9CECAABD55AD1")
    assert emv.arpc_method2(sk, arqc, H("00000000"), H("1234567890ABCDEF")) == H("4962B76C")
    assert emv.arpc_method2(sk, arqc, H("00000000")) == H("7DFB1188")


# --- TR-31:2018 Annex A.7 examples (as in openemv/tr31 test/tr31_decrypt_test.c) and
# blocks made by a payShield 10k in the same file.
TR31_VECTORS = [
    (
        "89E88CF7931444F334BD7547FC3F380C",
        "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701",
        "F039121BEC83D26B169BDCD5B22AAF8F",
    ),
    (
        "DD7515F2BFC17F85CE48F3CA25CB21F6",
        "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
        "3F419E1CB7079442AA37474C2EFBF8B8",
    ),
    (
        "B8ED59E0A279A295E9F5ED7944FD06B9",
        "C0096B0TX12S0100KS1800604B120F9292800000BFB9B689CB567E66FC3FEE5AD5F52161FC6545B9D6"
        "0989015D02155C",
        "EDB380DD340BC2620247D445F5B8D678",
    ),
    (
        "1D22BF32387C600AD97F9B97A51311AC",
        "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A"
        "52190E248719E24B433627",
        "E8BC63E5479455E26577F715D587FE68",
    ),
    (
        "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
        "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E"
        "8E31DA05F7425509593D03A457DC34",
        "3F419E1CB7079442AA37474C2EFBF8B8",
    ),
    (
        "41" * 32,
        "D0144D0AN00N0000127862F945C2DED04530FAF7CDBC8B0BA10C7AA79BD5E0C2C5D6AC173BF588E4B1"
        "9ACF1357178D50EA0AB193228E13958304FC6149632DFDCADF3A5B3D57E814",
        "BE19E6A07A760F10EF8E83A226B63AAD141F463FDDD4F47DB244B4023EC3CACC",
    ),
]


@pytest.mark.parametrize(("kbpk", "block", "key"), TR31_VECTORS)
def test_tr31_unwrap(kbpk: str, block: str, key: str) -> None:
    header, value = tr31.unwrap(H(kbpk), block)
    assert value == H(key)
    assert header.version == block[0] and header.usage == block[5:7]


def test_tr31_optional_block_and_wrong_kbpk() -> None:
    kbpk, block, _ = TR31_VECTORS[2]
    header, _ = tr31.unwrap(H(kbpk), block)
    assert header.optional_blocks == (("KS", "00604B120F9292800000"),)
    assert header.key_version == "12"
    with pytest.raises(VerificationError) as err:
        tr31.unwrap(H(TR31_VECTORS[0][0]), block)
    assert kbpk not in str(err.value)


@pytest.mark.parametrize("version", "ABCD")
def test_tr31_wrap_round_trip(version: str) -> None:
    kbpk = H("89E88CF7931444F334BD7547FC3F380C")
    block = tr31.wrap(kbpk, RETAIL_KEY, version=version, usage="M3", algorithm="T")
    header, value = tr31.unwrap(kbpk, block)
    assert value == RETAIL_KEY and header.usage == "M3" and header.length == len(block)
