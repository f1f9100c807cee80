"""CBCOM IPDUs: vectors, hypothesis round trips, and every bad input -> CbcomError(code)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs import cbcom
from passerelle.codecs.cbcom import CbcomError, Ipdu, ProtocolId


@st.composite
def ipdus(draw: st.DrawFn) -> Ipdu:
    pgi = draw(st.sampled_from([cbcom.CN, cbcom.AC, cbcom.DE, cbcom.AB]))
    required = set(cbcom.REQUIRED_PIS[pgi])
    optional = sorted(cbcom.ALLOWED_PIS[pgi] - required - {cbcom.PI07_APDU_LENGTH})
    extra = draw(st.lists(st.sampled_from(optional), unique=True)) if optional else []
    chosen = sorted(required | set(extra))
    chosen = draw(st.permutations(chosen))
    apdu = draw(st.binary(max_size=400)) if pgi == cbcom.DE else b""
    params = []
    for pi in chosen:
        if pi == cbcom.PI07_APDU_LENGTH:
            width = draw(st.integers(max(1, (len(apdu).bit_length() + 7) // 8), 4))
            value = len(apdu).to_bytes(width, "big")
        elif pi == cbcom.PI01_RETURN_CODE:
            value = draw(st.binary(min_size=1, max_size=1))
        else:
            value = draw(st.binary(max_size=20))
        params.append((pi, value))
    return Ipdu(pgi, tuple(params), apdu)


@given(ipdus())
def test_round_trip(ipdu: Ipdu) -> None:
    wire = ipdu.encode()
    assert wire[0] == ipdu.pgi and wire[1] == len(wire) - 2 - len(ipdu.apdu)
    assert cbcom.decode(wire) == ipdu


@given(
    protocol=st.builds(
        ProtocolId,
        st.text("0123456789", min_size=2, max_size=2),
        st.integers(0, 255),
        st.text("0123456789", min_size=4, max_size=4),
    ),
    timers=st.lists(st.none() | st.integers(0, 65535), min_size=3, max_size=3),
    apdu=st.binary(max_size=2000),
    code=st.integers(0, 255),
)
def test_constructors_round_trip(
    protocol: ProtocolId, timers: list[int | None], apdu: bytes, code: int
) -> None:
    tnr, tsi, tma = timers
    cn = cbcom.decode(cbcom.connect(protocol, tnr=tnr, tsi=tsi, tma=tma).encode())
    assert cn.protocol_id == protocol
    assert (cn.timer(cbcom.PI16_TNR), cn.timer(cbcom.PI17_TSI), cn.timer(cbcom.PI18_TMA)) == (
        tnr,
        tsi,
        tma,
    )
    ac = cbcom.decode(cbcom.accept(tnr=tnr, tsi=tsi).encode())
    assert ac.code == 0 and ac.timer(cbcom.PI17_TSI) == tsi
    de = cbcom.decode(cbcom.data(apdu, response=True).encode())
    assert de.apdu == apdu and de.code == 0
    assert cbcom.decode(cbcom.abort(code).encode()).code == code


def test_vectors() -> None:
    cn = cbcom.connect(ProtocolId("12", cbcom.PROTOCOL_TRANSACTIONAL, "0123"), tsi=780)
    assert cn.encode().hex() == "c20a0504120201231102030c"
    assert cbcom.data(b"\x01\x00", response=False).encode().hex() == "c104070200020100"
    assert cbcom.data(b"\x01\x10", response=True).encode().hex() == "c107010100070200020110"
    assert cbcom.abort(0x80).encode().hex() == "c403010180"
    assert cbcom.accept().encode().hex() == "c303010100"
    # A 4-byte PI07, as tinyCbCom writes it, decodes too.
    assert cbcom.decode(bytes.fromhex("c1060704000000026869")).apdu == b"hi"
    assert cn.name == "CN" and Ipdu(0x99).name == "0x99"


@pytest.mark.parametrize(
    ("hex_", "code"),
    [
        ("", cbcom.CODE_TRUNCATED),
        ("c2", cbcom.CODE_TRUNCATED),
        ("c5020100", cbcom.CODE_INVALID_IPDU),  # unknown PGI
        ("c20505041202", cbcom.CODE_INVALID_IPDU),  # LGI past the end
        ("c2010a", cbcom.CODE_TRUNCATED),  # half a parameter
        ("c202050a", cbcom.CODE_TRUNCATED),  # parameter longer than LGI
        ("c2060504120201230000", cbcom.CODE_INVALID_IPDU),  # bytes after CN's parameters
        ("c2080504120201231102", cbcom.CODE_TRUNCATED),
        ("c2070504120201230701", cbcom.CODE_TRUNCATED),
        ("c20d05041202012307010099", cbcom.CODE_INVALID_IPDU),
        ("c2080504120201230700", cbcom.CODE_INVALID_PI),  # PI07 not allowed in CN
        ("c20c050412020123050412020123", cbcom.CODE_INVALID_PI),  # PI05 twice
        ("c2031102030c", cbcom.CODE_TRUNCATED),
        ("c2041102030c", cbcom.CODE_MISSING_PI),  # CN without PI05
        ("c100", cbcom.CODE_MISSING_PI),  # DE without PI07
        ("c40103", cbcom.CODE_TRUNCATED),
        ("c400", cbcom.CODE_MISSING_PI),  # AB without PI01
        ("c403010200", cbcom.CODE_TRUNCATED),
        ("c40401020000", cbcom.CODE_INVALID_PI),  # PI01 of 2 bytes
        ("c104070200056869", cbcom.CODE_APDU_LENGTH),  # PI07 says 5, 2 follow
        ("c1070705000000000268", cbcom.CODE_APDU_LENGTH),  # PI07 of 5 bytes
        ("c10207006869", cbcom.CODE_APDU_LENGTH),  # PI07 of 0 bytes
    ],
)
def test_bad_ipdus(hex_: str, code: int) -> None:
    with pytest.raises(CbcomError) as caught:
        cbcom.decode(bytes.fromhex(hex_))
    assert caught.value.code == code, caught.value


def test_apdu_bound() -> None:
    wire = cbcom.data(b"x" * 100).encode()
    assert cbcom.decode(wire, max_apdu=100).apdu == b"x" * 100
    with pytest.raises(CbcomError):
        cbcom.decode(wire, max_apdu=99)


@pytest.mark.parametrize(
    "raw",
    ["1202012", "12020123ff", "1a020123", "120201a3"],  # wrong sizes, non-BCD versions
)
def test_bad_pi05(raw: str) -> None:
    with pytest.raises(CbcomError) as caught:
        ProtocolId.decode(bytes.fromhex(raw) if len(raw) % 2 == 0 else b"\x12\x02\x01")
    assert caught.value.code == cbcom.CODE_BAD_PI05


def test_unencodable() -> None:
    for bad in (
        lambda: ProtocolId("1", 2, "0123").encode(),
        lambda: ProtocolId("12", 2, "01x3").encode(),
        lambda: ProtocolId("12", 256, "0123").encode(),
        lambda: Ipdu(0x99).encode(),
        lambda: Ipdu(cbcom.DE, ((7, b"x" * 256),)).encode(),
        lambda: Ipdu(cbcom.DE, tuple((i, b"x" * 40) for i in range(7))).encode(),
        lambda: Ipdu(cbcom.CN, (), b"apdu without PI07").encode(),
        lambda: cbcom.data(b"x" * 70_000),
        lambda: cbcom.abort(256),
        lambda: cbcom.connect(tsi=70_000),
        lambda: cbcom.decode(bytes.fromhex("c2091104000000000504120201")).timer(0x11),
    ):
        with pytest.raises(CbcomError):
            bad()


@given(st.binary(max_size=120))
def test_random_bytes_decode_or_cbcom_error(data: bytes) -> None:
    try:
        ipdu = cbcom.decode(data)
    except CbcomError as exc:
        assert 0 <= exc.code <= 255
        return
    assert cbcom.decode(ipdu.encode()) == ipdu


# --- the DE fast path agrees with decode ------------------------------------------------


@given(apdu=st.binary(max_size=300), width=st.integers(1, 4), response=st.booleans())
def test_fast_path_reads_what_decode_reads(apdu: bytes, width: int, response: bool) -> None:
    if len(apdu) >= 1 << (8 * width):
        return
    params = ((cbcom.PI07_APDU_LENGTH, len(apdu).to_bytes(width, "big")),)
    if response:
        params = ((cbcom.PI01_RETURN_CODE, b"\x00"), *params)
    wire = Ipdu(cbcom.DE, params, apdu).encode()
    framed = len(wire).to_bytes(4, "big") + wire
    # PI01 or an unusual width: None, and the caller decodes; else the APDU decode finds
    fast = cbcom.data_apdu(wire)
    assert fast is None if response else fast == apdu
    wide = fast is not None and width in (2, 4)
    assert cbcom.framed_data_apdu(framed, 1 << 16) == (apdu if wide else None)
    assert cbcom.framed_data_apdu(framed, len(wire) - 1) is None  # over max_frame
    assert cbcom.framed_data_apdu(framed + b"\x00", 1 << 16) is None  # not one frame
    assert cbcom.framed_data_apdu(framed[:-1], 1 << 16) is None if apdu else True


_DE_HEADS = st.sampled_from([b"", b"\xc1\x04\x07\x02", b"\xc1\x06\x07\x04",
                             b"\xc1\x03\x07\x01", b"\xc1\x07\x01\x01\x00\x07\x02"])


@given(head=_DE_HEADS, tail=st.binary(max_size=12), length=st.none() | st.integers(0, 20))
def test_fast_path_on_any_bytes_is_none_or_what_decode_reads(
    head: bytes, tail: bytes, length: int | None
) -> None:
    ipdu = head + tail
    size = len(ipdu) if length is None else length
    for raw, fast in ((ipdu, cbcom.data_apdu(ipdu)),
                      (ipdu, cbcom.framed_data_apdu(size.to_bytes(4, "big") + ipdu, 1 << 16))):
        if fast is None:
            continue
        decoded = cbcom.decode(raw)
        assert (decoded.pgi, decoded.apdu, decoded.code) == (cbcom.DE, fast, None)


@given(apdu=st.binary(max_size=2000), response=st.booleans())
def test_encoders_agree(apdu: bytes, response: bool) -> None:
    wire = cbcom.data(apdu, response=response).encode()
    assert cbcom.encode_data(apdu, response=response) == wire
    assert cbcom.encode_data(memoryview(apdu), response=response) == wire
    assert cbcom.framed_data(apdu, response=response) == len(wire).to_bytes(4, "big") + wire
    with pytest.raises(CbcomError):
        cbcom.framed_data(b"x" * 70_000, response=response)
