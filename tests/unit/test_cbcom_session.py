"""The CBCOM pseudo-session: CN/AC negotiation, DE, AB codes, TGR/TSI/TNR timers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.codecs import cbcom, x25, xot
from passerelle.codecs.cbcom import Ipdu, ProtocolId
from passerelle.codecs.framing import frame4
from passerelle.switchd import x25_circuit as xc
from passerelle.switchd.cbcom_session import (
    Aborted,
    CbcomConfig,
    CbcomSession,
    Connected,
    Message,
    Role,
    SessionStateError,
    State,
)


def _server(config: CbcomConfig | None = None, now: float = 0.0) -> CbcomSession:
    return CbcomSession(Role.SERVER, config, now=now)


def _sent(session: CbcomSession) -> list[Ipdu]:
    return [cbcom.decode(raw) for raw in session.ipdus_to_send()]


def _open(config: CbcomConfig | None = None, **timers: int) -> CbcomSession:
    server = _server(config)
    events = server.receive_ipdu(cbcom.connect(**timers).encode(), 1.0)
    assert isinstance(events[0], Connected)
    server.ipdus_to_send()
    return server


def _aborted(session: CbcomSession, events: list[object], code: int) -> None:
    assert events == [Aborted(code, False, events[0].reason)], events  # type: ignore[attr-defined]
    assert _sent(session)[-1] == cbcom.abort(code)
    assert session.state is State.CLOSED and session.next_deadline() is None


# --- connection ------------------------------------------------------------------------------


def test_cn_accepted_with_the_negotiated_timers() -> None:
    server = _server()
    cn = cbcom.connect(ProtocolId("12", cbcom.PROTOCOL_TRANSACTIONAL, "0123"), tnr=45, tsi=600)
    events = server.receive_ipdu(cn.encode(), 2.0)
    assert events == [Connected(ProtocolId("12", 2, "0123"), 45, 600, None, cn)]
    assert _sent(server) == [cbcom.accept(tnr=45, tsi=600)]
    assert server.state is State.CONNECTED
    assert server.next_deadline() == 602.0  # the negotiated TSI


def test_cn_without_timers_gets_a_plain_ac_and_the_default_tsi() -> None:
    server = _server()
    server.receive_ipdu(cbcom.connect().encode(), 0.0)
    assert _sent(server) == [cbcom.accept()]
    assert server.next_deadline() == 780.0


def test_transfer_protocol_type_is_accepted() -> None:
    server = _server()
    events = server.receive_ipdu(cbcom.connect(ProtocolId("12", 0x01, "0123")).encode(), 0.0)
    assert isinstance(events[0], Connected) and events[0].protocol.protocol_type == 0x01


@pytest.mark.parametrize(
    ("cn", "code"),
    [
        (Ipdu(cbcom.CN, ((5, b"\x12\x02\x01"),)), cbcom.CODE_BAD_PI05),  # 3 bytes
        (Ipdu(cbcom.CN, ((5, b"\x1a\x02\x01\x23"),)), cbcom.CODE_BAD_PI05),  # not BCD
        (cbcom.connect(ProtocolId("12", 0x07, "0123")), cbcom.CODE_BAD_PI05),  # unknown type
        (cbcom.connect(ProtocolId("10", 2, "0123")), cbcom.CODE_BAD_VERSION),  # too old
        (cbcom.connect(ProtocolId("20", 2, "0123")), cbcom.CODE_BAD_VERSION),  # too new
        (cbcom.connect(tnr=0), cbcom.CODE_TNR_REFUSED),
        (cbcom.connect(tsi=5000), cbcom.CODE_TSI_REFUSED),
        (cbcom.connect(tma=0), cbcom.CODE_TMA_REFUSED),
        (
            Ipdu(cbcom.CN, ((5, b"\x12\x02\x01\x23"), (0x11, b"\x00\x01\x02"))),
            cbcom.CODE_TSI_REFUSED,
        ),  # a 3-byte timer
        (cbcom.data(b"x"), cbcom.CODE_UNEXPECTED_IPDU),  # DE before CN
        (cbcom.accept(), cbcom.CODE_UNEXPECTED_IPDU),
    ],
)
def test_bad_cn_is_aborted_with_its_code(cn: Ipdu, code: int) -> None:
    server = _server()
    _aborted(server, server.receive_ipdu(cn.encode(), 0.0), code)
    assert server.receive_ipdu(cbcom.connect().encode(), 0.0) == []  # over for good


def test_cb2a_versions_can_be_restricted() -> None:
    server = _server(CbcomConfig(cb2a_versions=frozenset({"0123"})))
    events = server.receive_ipdu(cbcom.connect(ProtocolId("12", 2, "0122")).encode(), 0.0)
    _aborted(server, events, cbcom.CODE_BAD_VERSION)


def test_malformed_ipdu_gets_the_codec_code() -> None:
    server = _server()
    _aborted(server, server.receive_ipdu(b"\xc2\x05\x05\x04\x12", 0.0), cbcom.CODE_INVALID_IPDU)


# --- data ----------------------------------------------------------------------------------


def test_de_in_and_out_with_tgr_then_tsi() -> None:
    server = _open()
    events = server.receive_ipdu(cbcom.data(b"\x01\x00req").encode(), 10.0)
    assert events == [Message(b"\x01\x00req")]
    assert server.next_deadline() == 40.0  # TGR: 30 s to answer
    server.send_message(b"\x01\x10ans", 12.0)
    assert _sent(server) == [cbcom.data(b"\x01\x10ans", response=True)]
    assert server.next_deadline() == 12.0 + 780  # back to TSI


def test_unsolicited_de_from_the_server_is_not_a_response() -> None:
    server = _open()
    server.send_message(b"\x08\x00", 5.0)
    assert _sent(server) == [cbcom.data(b"\x08\x00")]


def test_two_requests_before_an_answer_are_both_delivered() -> None:
    server = _open()
    assert server.receive_ipdu(cbcom.data(b"a").encode(), 1.0) == [Message(b"a")]
    assert server.receive_ipdu(cbcom.data(b"b").encode(), 20.0) == [Message(b"b")]
    assert server.next_deadline() == 31.0  # TGR runs from the oldest
    server.send_message(b"A", 25.0)
    assert server.next_deadline() == 55.0  # the next one has its own TGR
    server.send_message(b"B", 26.0)
    assert server.next_deadline() == 26.0 + 780


def test_a_framed_session_queues_what_an_unframed_one_does_behind_its_length() -> None:
    """Stream mode (framed=True): the same IPDUs, framed as they are queued; the one-frame
    fast path (`receive_framed_apdu`) runs the timers as `receive_ipdu` does."""
    plain, framed = _server(), CbcomSession(Role.SERVER, now=0.0, framed=True)
    cn = cbcom.connect(tsi=600).encode()
    for session in (plain, framed):
        assert isinstance(session.receive_ipdu(cn, 1.0)[0], Connected)
    assert framed.data_to_send() == plain.data_to_send() == frame4(cbcom.accept(tsi=600).encode())
    de = cbcom.data(b"\x08\x00req").encode()
    assert framed.receive_framed_apdu(frame4(de), 10.0) == b"\x08\x00req"
    assert plain.receive_ipdu(de, 10.0) == [Message(b"\x08\x00req")]
    assert framed.next_deadline() == plain.next_deadline() == 40.0  # TGR
    assert framed.receive_framed_apdu(frame4(de)[:-1], 11.0) is None  # not one whole frame
    for session in (plain, framed):
        session.send_message(b"\x08\x10ans", 12.0)
        session.send_message(b"unsolicited", 12.0)
    assert framed.next_deadline() == plain.next_deadline() == 612.0  # TSI
    assert framed.data_to_send() == plain.data_to_send()
    assert framed.sent == plain.sent == 3  # AC, the answer, the unsolicited DE
    framed.abort()
    assert framed.ipdus_to_send() == [cbcom.abort(cbcom.CODE_NORMAL_END).encode()]
    assert framed.receive_framed_apdu(frame4(de), 13.0) is None  # closed: nothing done


def test_the_framed_fast_path_waits_for_the_cn() -> None:
    server = CbcomSession(Role.SERVER, now=0.0, framed=True)
    assert server.receive_framed_apdu(frame4(cbcom.data(b"x").encode()), 1.0) is None
    assert server.state is State.WAIT_CN


@pytest.mark.parametrize("ipdu", [cbcom.connect(), cbcom.accept()])
def test_unexpected_ipdu_when_connected(ipdu: Ipdu) -> None:
    server = _open()
    _aborted(server, server.receive_ipdu(ipdu.encode(), 5.0), cbcom.CODE_UNEXPECTED_IPDU)


def test_ab_from_the_terminal_ends_the_session() -> None:
    server = _open()
    assert server.receive_ipdu(cbcom.abort(0x80).encode(), 3.0) == [
        Aborted(0x80, True, "AB received")
    ]
    assert server.ipdus_to_send() == []
    assert server.state is State.CLOSED
    server.send_message(b"late", 4.0)  # dropped silently
    assert server.ipdus_to_send() == [] and server.abort() == []


def test_local_abort() -> None:
    server = _open()
    assert server.abort(cbcom.CODE_NORMAL_END, "stopping") == [Aborted(0x80, False, "stopping")]
    assert _sent(server) == [cbcom.abort(0x80)]


# --- timers ----------------------------------------------------------------------------------


def test_no_cn_in_time() -> None:
    server = _server(CbcomConfig(cn_timeout=30.0), now=100.0)
    assert server.next_deadline() == 130.0
    assert server.tick(129.0) == []
    _aborted(server, server.tick(130.0), cbcom.CODE_TSI_EXPIRED)


def test_tsi_expiry() -> None:
    server = _open(tsi=60)
    assert server.tick(60.9) == []
    _aborted(server, server.tick(61.0), cbcom.CODE_TSI_EXPIRED)
    assert server.tick(1000.0) == []


def test_tsi_restarts_on_activity() -> None:
    server = _open()
    server.receive_ipdu(cbcom.data(b"a").encode(), 100.0)
    server.send_message(b"b", 101.0)
    assert server.tick(780.0) == []
    assert server.next_deadline() == 881.0


def test_tgr_expiry() -> None:
    server = _open()
    server.receive_ipdu(cbcom.data(b"a").encode(), 10.0)
    _aborted(server, server.tick(40.0), cbcom.CODE_TGR_EXPIRED)


def test_a_de_needing_no_answer_hands_over_to_tsi() -> None:
    server = _open(tsi=60)
    server.receive_ipdu(cbcom.data(b"0246-1").encode(), 10.0)
    assert server.next_deadline() == 40.0  # TGR while the dialogue decides
    server.no_answer(10.5)
    assert server.ipdus_to_send() == []  # nothing sent for it
    assert server.next_deadline() == 70.5  # TSI: the terminal may pause
    assert server.tick(45.0) == []  # past the old TGR: nothing
    assert server.state is State.CONNECTED
    # the next DE is answered: TGR again, then TSI after the answer
    server.receive_ipdu(cbcom.data(b"0246-2").encode(), 50.0)
    assert server.next_deadline() == 80.0
    server.send_message(b"0256", 51.0)
    assert _sent(server) == [cbcom.data(b"0256", response=True)]
    assert server.next_deadline() == 111.0
    _aborted(server, server.tick(111.0), cbcom.CODE_TSI_EXPIRED)


def test_no_answer_keeps_tgr_for_the_des_still_owed_an_answer() -> None:
    server = _open()
    server.receive_ipdu(cbcom.data(b"a").encode(), 1.0)
    server.receive_ipdu(cbcom.data(b"b").encode(), 2.0)
    server.no_answer(3.0)  # "a" needs none; "b" still does
    assert server.next_deadline() == 33.0
    server.send_message(b"B", 4.0)
    assert _sent(server) == [cbcom.data(b"B", response=True)]  # the answer to "b"
    assert server.next_deadline() == 4.0 + 780
    server.send_message(b"U", 5.0)  # nothing pending: unsolicited
    assert _sent(server) == [cbcom.data(b"U")]


def test_no_answer_after_the_end_or_before_cn_does_nothing() -> None:
    server = _server(now=0.0)
    server.no_answer(1.0)
    assert server.next_deadline() == 30.0  # still the CN timeout
    server = _open()
    server.abort()
    server.no_answer(2.0)
    assert server.next_deadline() is None


def test_client_tnr_expiry_waiting_for_ac_and_for_an_answer() -> None:
    client = CbcomSession(Role.CLIENT, CbcomConfig(tnr=20), now=0.0)
    client.connect(now=0.0)
    assert client.next_deadline() == 20.0
    _aborted(client, client.tick(20.0), cbcom.CODE_TNR_EXPIRED)

    client = CbcomSession(Role.CLIENT, now=0.0)
    client.connect(now=0.0, tnr=15)
    client.receive_ipdu(cbcom.accept(tnr=15).encode(), 1.0)
    assert client.next_deadline() is None
    client.send_message(b"req", 2.0)
    assert client.next_deadline() == 17.0
    _aborted(client, client.tick(17.0), cbcom.CODE_TNR_EXPIRED)


# --- both sides, over TCP framing and over X.25 ---------------------------------------------


def test_client_and_server_over_tcp_framing_in_small_chunks() -> None:
    client = CbcomSession(Role.CLIENT, now=0.0)
    server = _server()
    client.connect(ProtocolId("12", 2, "0123"), now=0.0, tsi=300)

    def pump(src: CbcomSession, dst: CbcomSession, now: float) -> list[object]:
        data = src.data_to_send()
        events: list[object] = []
        for i in range(0, len(data), 3):
            events += dst.receive_data(data[i : i + 3], now)
        return events

    assert isinstance(pump(client, server, 1.0)[0], Connected)
    assert isinstance(pump(server, client, 1.0)[0], Connected)
    assert client.tsi == 300 and server.tsi == 300
    client.send_message(b"\x01\x00" + b"r" * 600, 2.0)
    assert pump(client, server, 2.0) == [Message(b"\x01\x00" + b"r" * 600)]
    server.send_message(b"\x01\x10ok", 3.0)
    assert pump(server, client, 3.0) == [Message(b"\x01\x10ok")]
    assert client.abort() == [Aborted(0x80, False, "aborted locally")]
    assert pump(client, server, 4.0) == [Aborted(0x80, True, "AB received")]
    assert client.data_to_send() == b""


def test_oversize_frame_is_aborted() -> None:
    server = _server(CbcomConfig(max_frame=100))
    events = server.receive_data(b"\x00\x00\x10\x00", 0.0)
    assert events[0].code == cbcom.CODE_APDU_LENGTH
    assert server.data_to_send() == frame4(cbcom.abort(cbcom.CODE_APDU_LENGTH).encode())


def test_600_byte_cb2a_message_over_x25_packet_size_128() -> None:
    """The whole stack: a terminal's CBCOM session over a DTE circuit, switchd's over a DCE."""
    dte, dce = xc.X25Circuit(xc.Role.DTE, now=0.0), xc.X25Circuit(now=0.0)
    client, server = CbcomSession(Role.CLIENT, now=0.0), _server()
    dte.place_call("1998", "33123456", now=0.0, packet_size=128, window=2)
    received: list[bytes] = []
    data_packets: list[x25.Data] = []

    def run() -> None:
        for _ in range(50):
            for ipdu in client.ipdus_to_send():
                dte.send_message(ipdu)
            for ipdu in server.ipdus_to_send():
                dce.send_message(ipdu)
            up, down = dte.data_to_send(), dce.data_to_send()
            if not up and not down:
                return
            data_packets.extend(
                p for p in map(x25.decode, xot.XotDecoder().feed(down)) if isinstance(p, x25.Data)
            )
            for event in dce.receive_data(up, 0.0):
                if isinstance(event, xc.CallIncoming):
                    dce.accept_call()
                elif isinstance(event, xc.Message):
                    for e in server.receive_ipdu(event.data, 0.0):
                        if isinstance(e, Message):
                            server.send_message(e.apdu[::-1], 0.0)
            for event in dte.receive_data(down, 0.0):
                if isinstance(event, xc.CallConnected):
                    client.connect(now=0.0)
                elif isinstance(event, xc.Message):
                    for e in client.receive_ipdu(event.data, 0.0):
                        if isinstance(e, Message):
                            received.append(e.apdu)
                        elif isinstance(e, Connected):
                            client.send_message(bytes(range(200)) * 3, 0.0)
        raise AssertionError("never quiet")

    run()
    assert received == [(bytes(range(200)) * 3)[::-1]]
    answer = [p for p in data_packets if len(p.data) > 20]  # the DE, not the AC
    # PGI, LGI, PI01 (3 bytes) and PI07 (4 bytes) before the 600-byte APDU: 609 bytes.
    assert [len(p.data) for p in answer] == [128] * 4 + [609 - 512]
    assert [p.m for p in answer] == [True] * 4 + [False]


def test_methods_in_the_wrong_state() -> None:
    server = _server()
    with pytest.raises(SessionStateError):
        server.send_message(b"x", 0.0)
    with pytest.raises(SessionStateError):
        server.connect(now=0.0)
    client = CbcomSession(Role.CLIENT, now=0.0)
    with pytest.raises(SessionStateError):
        client.send_message(b"x", 0.0)
    client.connect(now=0.0)
    with pytest.raises(SessionStateError):
        client.connect(now=0.0)
    _aborted(
        client, client.receive_ipdu(cbcom.data(b"x").encode(), 0.0), cbcom.CODE_UNEXPECTED_IPDU
    )
    refused = CbcomSession(Role.CLIENT, now=0.0)
    refused.connect(now=0.0)
    bad_ac = Ipdu(cbcom.AC, ((1, b"\x05"),))
    assert refused.receive_ipdu(bad_ac.encode(), 0.0)[0].code == cbcom.CODE_INVALID_PI


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=20), st.booleans())
def test_random_bytes_never_raise(chunks: list[bytes], connect: bool) -> None:
    server = _open() if connect else _server()
    for chunk in chunks:
        for event in server.receive_data(chunk, 5.0):
            assert isinstance(event, (Connected, Message, Aborted))
        for raw in server.ipdus_to_send():
            cbcom.decode(raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=10))
def test_random_ipdus_never_raise(ipdus: list[bytes]) -> None:
    server = _open()
    for raw in ipdus:
        server.receive_ipdu(raw, 5.0)
    assert server.state in (State.CONNECTED, State.CLOSED)
