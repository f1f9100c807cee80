"""X.25 packets: byte-exact vectors, hypothesis round trips, and every bad input -> X25Error."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.codecs import x25
from passerelle.codecs.x25 import Facility, X25Error

# --- strategies ----------------------------------------------------------------------------

lcns = st.integers(0, 4095)
moduli = st.sampled_from([8, 128])
addresses = st.text(alphabet="0123456789", max_size=15)
bytes8 = st.integers(0, 255)


@st.composite
def facility(draw: st.DrawFn) -> Facility:
    code = draw(bytes8)
    cls = code >> 6
    size = cls + 1 if cls < 3 else draw(st.integers(0, 12))
    return Facility(code, draw(st.binary(min_size=size, max_size=size)))


facilities = (
    st.lists(facility(), max_size=6)
    .map(tuple)
    .filter(lambda fs: sum(len(f.encode()) for f in fs) <= x25.MAX_FACILITY_LENGTH)
)
user_data = st.binary(max_size=x25.MAX_CALL_USER_DATA)


@st.composite
def data_packet(draw: st.DrawFn) -> x25.Data:
    mod = draw(moduli)
    return x25.Data(
        draw(lcns),
        draw(st.integers(0, mod - 1)),
        draw(st.integers(0, mod - 1)),
        draw(st.binary(max_size=300)),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.booleans()),
        mod,
    )


@st.composite
def flow_packet(draw: st.DrawFn) -> x25.Packet:
    cls = draw(st.sampled_from([x25.ReceiveReady, x25.ReceiveNotReady, x25.Reject]))
    mod = draw(moduli)
    return cls(draw(lcns), draw(st.integers(0, mod - 1)), mod)


def _clear(p: x25.ClearRequest) -> x25.ClearRequest:
    extended = p.called or p.calling or p.facilities or p.user_data
    return dataclasses.replace(p, diagnostic=0) if extended and p.diagnostic is None else p


optional_diag = st.none() | bytes8

all_packets = st.one_of(
    st.builds(
        x25.CallRequest, lcns, addresses, addresses, facilities, user_data, moduli, st.booleans()
    ),
    st.builds(
        x25.CallAccepted, lcns, addresses, addresses, facilities, user_data, moduli, st.booleans()
    ),
    st.builds(
        x25.ClearRequest,
        lcns,
        bytes8,
        optional_diag,
        moduli,
        addresses,
        addresses,
        facilities,
        user_data,
    ).map(_clear),
    st.builds(x25.ClearConfirmation, lcns, moduli),
    data_packet(),
    flow_packet(),
    st.builds(x25.ResetRequest, lcns, bytes8, optional_diag, moduli),
    st.builds(x25.ResetConfirmation, lcns, moduli),
    st.builds(x25.Interrupt, lcns, st.binary(min_size=1, max_size=32), moduli),
    st.builds(x25.InterruptConfirmation, lcns, moduli),
    st.builds(x25.RestartRequest, bytes8, optional_diag, moduli),
    st.builds(x25.RestartConfirmation, moduli),
    st.builds(x25.Diagnostic, bytes8, st.binary(max_size=4), moduli),
)


@given(all_packets)
def test_round_trip(packet: x25.Packet) -> None:
    wire = x25.encode(packet)
    assert x25.decode(wire) == packet
    assert x25.decode(bytearray(wire)) == packet


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_x25_error_and_reencode_stably(data: bytes) -> None:
    try:
        packet = x25.decode(data)
    except X25Error as exc:
        assert 0 <= exc.diagnostic <= 255
        return
    assert x25.decode(packet.encode()) == packet


# --- vectors ---------------------------------------------------------------------------------


def test_call_request_vector() -> None:
    call = x25.CallRequest(
        1,
        "1234",
        "567",
        (Facility.packet_size(128, 128), Facility.window_size(2, 2)),
        b"\x01\x00\x00\x00",
    )
    wire = bytes.fromhex("10010b34123456700642070743020201000000")
    assert call.encode() == wire
    assert x25.decode(wire) == call
    assert x25.find_facility(call.facilities, x25.FAC_WINDOW_SIZE) == Facility(0x43, b"\x02\x02")


@pytest.mark.parametrize(
    ("packet", "hex_"),
    [
        (x25.Data(1, 3, 5, b"ab", m=True), "1001b66162"),
        (x25.Data(0x123, 0, 0, b"", q=True, d=True), "d12300"),
        (x25.Data(1, 100, 7, b"z", m=True, modulo=128), "2001c80f7a"),
        (x25.ReceiveReady(1, 2), "100141"),
        (x25.ReceiveNotReady(1, 7), "1001e5"),
        (x25.Reject(1, 0), "100109"),
        (x25.ReceiveReady(1, 100, 128), "200101c8"),
        (x25.ClearRequest(1, 0x13, 33), "1001131321"),
        (x25.ClearRequest(1), "10011300"),
        (x25.ClearConfirmation(1), "100117"),
        (x25.CallAccepted(1), "10010f"),
        (x25.ResetRequest(1, 0x05, 1), "10011b0501"),
        (x25.ResetConfirmation(1), "10011f"),
        (x25.Interrupt(1, b"\x42"), "10012342"),
        (x25.InterruptConfirmation(1), "100127"),
        (x25.RestartRequest(0x07, 0), "1000fb0700"),
        (x25.RestartConfirmation(), "1000ff"),
        (x25.Diagnostic(38, b"\x10\x01"), "1000f1261001"),
    ],
)
def test_vectors(packet: x25.Packet, hex_: str) -> None:
    assert packet.encode().hex() == hex_
    assert x25.decode(bytes.fromhex(hex_)) == packet


def test_packet_sizes() -> None:
    assert x25.packet_size_from_code(7) == 128
    assert x25.packet_size_code(4096) == 12
    for bad in (0, 8, 100, 8192):
        with pytest.raises(X25Error):
            x25.packet_size_code(bad)
    with pytest.raises(X25Error) as caught:
        x25.packet_size_from_code(13)
    assert caught.value.diagnostic == x25.DIAG_FACILITY_PARAMETER_NOT_ALLOWED


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_", "diagnostic"),
    [
        ("", x25.DIAG_PACKET_TOO_SHORT),
        ("1001", x25.DIAG_PACKET_TOO_SHORT),
        ("000117", x25.DIAG_INVALID_GFI),  # modulo bits 00
        ("300117", x25.DIAG_INVALID_GFI),  # modulo bits 11
        ("100103", x25.DIAG_UNIDENTIFIABLE_PACKET),
        ("1001f7", x25.DIAG_UNIDENTIFIABLE_PACKET),  # registration: not supported
        ("10014100", x25.DIAG_PACKET_TOO_LONG),  # RR with a byte too many
        ("200101", x25.DIAG_PACKET_TOO_SHORT),  # modulo 128 RR without P(R)
        ("200100", x25.DIAG_PACKET_TOO_SHORT),  # modulo 128 Data without P(R)
        ("100113", x25.DIAG_PACKET_TOO_SHORT),  # Clear without a cause
        ("10011b", x25.DIAG_PACKET_TOO_SHORT),  # Reset without a cause
        ("10010b", x25.DIAG_PACKET_TOO_SHORT),  # Call Request without addresses
        ("10010b441234", x25.DIAG_PACKET_TOO_SHORT),  # address digits missing
        ("10010b021a", x25.DIAG_INVALID_CALLED_ADDRESS),
        ("10010b111a", x25.DIAG_INVALID_CALLING_ADDRESS),
        ("90010b00", x25.DIAG_INVALID_GFI),  # A bit: TOA/NPI format
        ("10010b00054207", x25.DIAG_INVALID_FACILITY_LENGTH),  # field overruns
        ("10010b00024207", x25.DIAG_INVALID_FACILITY_LENGTH),  # facility overruns
        ("10010b0001c0", x25.DIAG_INVALID_FACILITY_LENGTH),  # class D, no length
        ("10010b006e" + "00" * 110, x25.DIAG_INVALID_FACILITY_LENGTH),  # > 109
        ("10010b0000" + "00" * 129, x25.DIAG_PACKET_TOO_LONG),  # user data > 128
        ("100123", x25.DIAG_PACKET_TOO_SHORT),  # interrupt without data
        ("100123" + "00" * 33, x25.DIAG_PACKET_TOO_LONG),
        ("1001fb0000", x25.DIAG_RESTART_NONZERO_LCN),
        ("1000f1", x25.DIAG_PACKET_TOO_SHORT),
        ("100100" + "00" * 4097, x25.DIAG_PACKET_TOO_LONG),
    ],
)
def test_bad_packets(hex_: str, diagnostic: int) -> None:
    with pytest.raises(X25Error) as caught:
        x25.decode(bytes.fromhex(hex_))
    assert caught.value.diagnostic == diagnostic, caught.value


@pytest.mark.parametrize(
    "packet",
    [
        x25.ClearConfirmation(5000),
        x25.ClearConfirmation(1, modulo=16),
        x25.Data(1, 8, 0),
        x25.Data(1, 0, 128, modulo=128),
        x25.Data(1, 0, 0, b"x" * 4097),
        x25.CallRequest(1, "12a", ""),
        x25.CallRequest(1, "1" * 16, ""),
        x25.CallRequest(1, "", "", (Facility(0x42, b"\x07"),)),
        x25.CallRequest(1, "", "", (Facility(0xC1, b"x" * 256),)),
        x25.CallRequest(1, "", "", (Facility(0xC1, b"x" * 108),)),
        x25.CallRequest(1, "", "", (), b"x" * 129),
        x25.CallAccepted(1, user_data=b"x" * 129),
        x25.ClearRequest(1, 256),
        x25.ClearRequest(1, 0, 300),
        x25.ClearRequest(1, 0, None, user_data=b"x" * 129),
        x25.ResetRequest(1, 0, -1),
        x25.Interrupt(1, b""),
        x25.Diagnostic(256),
        x25.Diagnostic(0, b"12345"),
    ],
)
def test_unencodable_packets(packet: x25.Packet) -> None:
    with pytest.raises(X25Error):
        packet.encode()


def test_facility_helpers_validate() -> None:
    with pytest.raises(X25Error):
        Facility.window_size(0, 2)
    with pytest.raises(X25Error):
        Facility(300, b"").encode()
    assert x25.find_facility((Facility(0, b"\x00"), Facility(0x42, b"\x07\x07")), 0x42) is None


def test_packets_are_immutable() -> None:
    packet = x25.Data(1, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        packet.ps = 1  # type: ignore[misc]
