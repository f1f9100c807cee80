"""Property tests for the HSM parsers: PIN blocks, TR-31 key blocks, payShield frames."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.hsm import payshield_wire as wire
from passerelle.hsm import pinblock, tr31
from passerelle.hsm.errors import HSMError
from passerelle.hsm.keys import Algorithm, KeyType
from passerelle.sim.payshield import PayShieldSimulator

pins = st.text("0123456789", min_size=4, max_size=12)
pans = st.text("0123456789", min_size=12, max_size=19)
tdes_keys = st.binary(min_size=16, max_size=16)
aes_keys = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@given(pin=pins, pan=pans, fmt=st.sampled_from([0, 1, 3]), key=tdes_keys)
def test_tdes_pin_blocks_round_trip(pin: str, pan: str, fmt: int, key: bytes) -> None:
    enciphered = pinblock.encipher(key, pinblock.encode(pin, pan, fmt), pan, fmt)
    assert pinblock.decode(pinblock.decipher(key, enciphered, pan, fmt), pan, fmt) == pin


@given(pin=pins, pan=pans, key=aes_keys)
def test_format_4_round_trip_and_pan_binding(pin: str, pan: str, key: bytes) -> None:
    enciphered = pinblock.encipher(key, pinblock.encode(pin, pan, 4), pan, 4)
    assert pinblock.decode(pinblock.decipher(key, enciphered, pan, 4), pan, 4) == pin
    other = pan[:-1] + str((int(pan[-1]) + 1) % 10)
    # The wrong PAN garbles the block: refusing it is right too.
    with contextlib.suppress(HSMError):
        assert pinblock.decode(pinblock.decipher(key, enciphered, other, 4), other, 4) != pin


@given(block=st.binary(max_size=20), pan=pans, fmt=st.integers(-1, 5))
def test_pin_block_decoder_only_raises_hsm_errors(block: bytes, pan: str, fmt: int) -> None:
    with contextlib.suppress(HSMError):
        pinblock.decode(block, pan, fmt)


usages = st.sampled_from(["P0", "M3", "B0", "D0", "K1", "E0"])


@settings(max_examples=50)
@given(
    version=st.sampled_from("ABCD"),
    key=st.binary(min_size=8, max_size=32),
    usage=usages,
    key_version=st.text("0123456789", min_size=2, max_size=2),
    opt=st.lists(
        st.tuples(st.sampled_from(["KS", "KV", "TS"]), st.text("0123456789ABCDEF", max_size=30)),
        max_size=2,
    ),
)
def test_tr31_round_trip(
    version: str, key: bytes, usage: str, key_version: str, opt: list[tuple[str, str]]
) -> None:
    kbpk = bytes(range(32 if version == "D" else 16))
    block = tr31.wrap(
        kbpk,
        key,
        version=version,
        usage=usage,
        key_version=key_version,
        optional_blocks=tuple(opt),
    )
    header, value = tr31.unwrap(kbpk, block)
    assert value == key
    assert (header.usage, header.key_version, header.optional_blocks) == (
        usage,
        key_version,
        tuple(opt),
    )
    assert tr31.parse_header(block)[0] == header


@given(st.text(max_size=120))
def test_tr31_parser_only_raises_hsm_errors(text: str) -> None:
    with contextlib.suppress(HSMError):
        tr31.unwrap(bytes(16), text)


@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 3000), max_size=10),
)
def test_frames_survive_any_segmentation(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(wire.encode_frame(p) for p in payloads)
    decoder, out, start = wire.FrameDecoder(), [], 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = max(start, cut)
    assert out == payloads


SIM = PayShieldSimulator(lmk=bytes(32))


@settings(max_examples=300)
@given(
    command=st.sampled_from([b"NC", b"CA", b"CC", b"G0", b"M6", b"M8", b"KQ", b"XY"])
    | st.binary(min_size=2, max_size=2),
    fields=st.binary(max_size=200),
)
def test_simulator_answers_every_frame_with_the_right_header(command: bytes, fields: bytes) -> None:
    answer = SIM.handle(b"0042" + command + fields)
    assert answer is not None
    assert answer[:4] == b"0042"
    try:
        assert answer[4:6] == wire.response_code(command)
    except HSMError:
        assert answer[4:6] == b"ZZ"  # not a command code at all
    assert answer[6:8].isdigit()


@settings(max_examples=300)
@given(
    command=st.sampled_from([b"CA", b"CC", b"G0", b"M6", b"M8", b"KQ"]),
    prefix=st.integers(0, 400),
    noise=st.binary(max_size=40),
)
def test_simulator_survives_corrupted_valid_requests(
    command: bytes, prefix: int, noise: bytes
) -> None:
    """Real requests, truncated and followed by noise, still get an error code back."""
    token = SIM.wrap_key(KeyType.PIN, Algorithm.TDES, bytes(range(16)))
    fields = (token + token + "12" + "0" * 16 + "0101" + "123456789012").encode()
    answer = SIM.handle(b"0042" + command + fields[:prefix] + noise)
    assert answer is not None and answer[:4] == b"0042" and answer[6:8].isdigit()
