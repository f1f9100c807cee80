"""The X.25 virtual circuit over XOT: negotiation, M-bit chains, windows, clearing, errors.

Most tests play the terminal by hand (raw X.25 packets) against a DCE circuit, so every
byte the circuit sends is checked; the property tests wire a DTE circuit to a DCE circuit.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.codecs import x25, xot
from passerelle.codecs.x25 import Facility
from passerelle.switchd.x25_circuit import (
    CallConnected,
    CallIncoming,
    CircuitConfig,
    CircuitStateError,
    Cleared,
    Interrupted,
    Message,
    ProtocolError,
    Reset,
    Role,
    State,
    X25Circuit,
)

LCN = 5


class Terminal:
    """A hand-driven terminal (DTE) facing a DCE circuit."""

    def __init__(self, config: CircuitConfig | None = None) -> None:
        self.circuit = X25Circuit(config=config, now=0.0)
        self.events: list[object] = []
        self.now = 0.0

    def send(self, *packets: x25.Packet) -> list[x25.Packet]:
        data = b"".join(xot.encode(p.encode()) for p in packets)
        self.events += self.circuit.receive_data(data, self.now)
        return self.received()

    def received(self) -> list[x25.Packet]:
        return [x25.decode(raw) for raw in xot.XotDecoder().feed(self.circuit.data_to_send())]

    def call(self, *facilities: Facility, modulo: int = 8, accept: bool = True) -> list[x25.Packet]:
        self.send(x25.CallRequest(LCN, "1998", "33123", tuple(facilities), b"CB", modulo))
        incoming = self.events[-1]
        assert isinstance(incoming, CallIncoming)
        if not accept:
            return []
        self.circuit.accept_call()
        return self.received()


def _cleared_with(packets: list[x25.Packet], cause: int, diagnostic: int) -> None:
    clears = [p for p in packets if isinstance(p, x25.ClearRequest)]
    assert clears, packets
    assert (clears[-1].cause, clears[-1].diagnostic) == (cause, diagnostic)


# --- call set-up and negotiation -----------------------------------------------------------


def test_call_without_facilities_uses_the_defaults() -> None:
    t = Terminal()
    answer = t.call()
    assert answer == [x25.CallAccepted(LCN)]
    incoming = t.events[0]
    assert isinstance(incoming, CallIncoming)
    assert (incoming.called, incoming.calling, incoming.user_data) == ("1998", "33123", b"CB")
    neg = t.circuit.negotiated
    assert (neg.modulo, neg.packet_size_tx, neg.packet_size_rx, neg.window_tx, neg.window_rx) == (
        8,
        128,
        128,
        2,
        2,
    )
    assert t.circuit.state is State.DATA and t.circuit.next_deadline() is None


@pytest.mark.parametrize(
    ("requested", "answered"),
    [
        (
            (Facility.packet_size(256, 512), Facility.window_size(4, 7)),
            (Facility.packet_size(256, 512), Facility.window_size(4, 7)),
        ),
        ((Facility.packet_size(4096, 4096),), (Facility.packet_size(1024, 1024),)),  # capped
        ((Facility.packet_size(64, 32),), (Facility.packet_size(64, 32),)),  # smaller: fine
        ((Facility.window_size(1, 1),), (Facility.window_size(1, 1),)),
    ],
)
def test_facilities_are_negotiated_towards_the_default(requested, answered) -> None:
    t = Terminal()
    assert t.call(*requested) == [x25.CallAccepted(LCN, facilities=answered)]
    size = x25.find_facility(answered, x25.FAC_PACKET_SIZE)
    if size is not None:
        assert t.circuit.negotiated.packet_size_tx == 1 << size.value[0]
        assert t.circuit.negotiated.packet_size_rx == 1 << size.value[1]


def test_modulo_128_call() -> None:
    t = Terminal(CircuitConfig(max_window=100))
    answer = t.call(Facility.window_size(127, 50), modulo=128)
    assert answer == [
        x25.CallAccepted(LCN, facilities=(Facility.window_size(100, 50),), modulo=128)
    ]
    assert t.circuit.negotiated.window_tx == 100


@pytest.mark.parametrize(
    ("facility", "modulo"),
    [
        (Facility(x25.FAC_WINDOW_SIZE, b"\x00\x02"), 8),
        (Facility(x25.FAC_WINDOW_SIZE, b"\x08\x02"), 8),  # 8 does not fit modulo 8
        (Facility(x25.FAC_PACKET_SIZE, b"\x07\x0d"), 8),  # 8192
        (Facility(x25.FAC_PACKET_SIZE, b"\x03\x07"), 8),  # 8
    ],
)
def test_bad_facility_parameter_is_cleared(facility: Facility, modulo: int) -> None:
    t = Terminal()
    answer = t.send(x25.CallRequest(LCN, "1", "2", (facility,), b"", modulo))
    assert answer == [
        x25.ClearRequest(
            LCN, x25.CAUSE_INVALID_FACILITY_REQUEST, x25.DIAG_FACILITY_PARAMETER_NOT_ALLOWED
        )
    ]
    assert isinstance(t.events[0], ProtocolError)
    assert t.circuit.state is State.CLEARING
    assert t.send(x25.ClearConfirmation(LCN)) == []
    assert isinstance(t.events[-1], Cleared) and not t.events[-1].by_peer
    assert t.circuit.state is State.CLOSED


def test_modulo_128_refused_when_not_allowed() -> None:
    t = Terminal(CircuitConfig(allow_modulo_128=False))
    _cleared_with(
        t.send(x25.CallRequest(LCN, "1", "2", modulo=128)),
        x25.CAUSE_INVALID_FACILITY_REQUEST,
        x25.DIAG_FACILITY_PARAMETER_NOT_ALLOWED,
    )


def test_refusing_a_call() -> None:
    t = Terminal()
    t.call(accept=False)
    assert t.circuit.clear(x25.CAUSE_NUMBER_BUSY, 0, now=1.0) == []
    assert t.received() == [x25.ClearRequest(LCN, x25.CAUSE_NUMBER_BUSY, 0)]
    t.send(x25.ClearConfirmation(LCN))
    assert t.events[-1] == Cleared(x25.CAUSE_NUMBER_BUSY, 0, False, "")


def test_config_is_validated() -> None:
    for bad in (
        dict(default_packet_size=100),
        dict(max_packet_size=64),
        dict(default_window=0),
        dict(max_window=1),
        dict(max_message_size=0),
    ):
        with pytest.raises((ValueError, x25.X25Error)):
            CircuitConfig(**bad)


# --- data: M-bit chains and windows ---------------------------------------------------------


def _data_chain(message: bytes, size: int, first_ps: int = 0, modulo: int = 8):
    chunks = [message[i : i + size] for i in range(0, len(message), size)] or [b""]
    return [
        x25.Data(LCN, (first_ps + n) % modulo, 0, chunk, m=n < len(chunks) - 1, modulo=modulo)
        for n, chunk in enumerate(chunks)
    ]


def test_600_bytes_through_packet_size_128_arrive_whole_and_the_answer_is_segmented() -> None:
    t = Terminal()
    t.call()
    request = bytes(range(256)) * 2 + b"q" * 88
    packets = _data_chain(request, 128)
    assert len(packets) == 5 and [p.m for p in packets] == [True] * 4 + [False]
    acks = []
    for pair in (packets[0:2], packets[2:4], packets[4:]):  # window 2: two at a time
        acks += t.send(*pair)
    assert [e.data for e in t.events if isinstance(e, Message)] == [request]
    assert acks == [x25.ReceiveReady(LCN, 2), x25.ReceiveReady(LCN, 4), x25.ReceiveReady(LCN, 5)]

    answer = b"A" * 600
    t.circuit.send_message(answer)
    out = t.received()
    # Window 2: two packets in flight, the rest waits; each carries P(R) = 5.
    assert out == [x25.Data(LCN, 0, 5, b"A" * 128, m=True), x25.Data(LCN, 1, 5, b"A" * 128, m=True)]
    assert (t.circuit.unacknowledged, t.circuit.queued) == (2, 3)
    out = t.send(x25.ReceiveReady(LCN, 1))  # one acknowledged: one more goes
    assert out == [x25.Data(LCN, 2, 5, b"A" * 128, m=True)]
    out = t.send(x25.ReceiveReady(LCN, 3))
    assert out == [x25.Data(LCN, 3, 5, b"A" * 128, m=True), x25.Data(LCN, 4, 5, b"A" * 88)]
    assert t.circuit.queued == 0
    assert b"".join(p.data for p in [*out]) == b"A" * 216


def test_rnr_stops_sending_until_rr() -> None:
    t = Terminal()
    t.call()
    assert t.send(x25.ReceiveNotReady(LCN, 0)) == []
    t.circuit.send_message(b"x" * 300)
    assert t.received() == []
    out = t.send(x25.ReceiveReady(LCN, 0))
    assert [p.ps for p in out] == [0, 1]


def test_data_carries_piggybacked_acknowledgement_and_no_extra_rr() -> None:
    t = Terminal()
    t.call()
    t.send(x25.Data(LCN, 0, 0, b"request"))
    assert isinstance(t.events[-1], Message)
    t.circuit.send_message(b"answer")
    assert t.received() == [x25.Data(LCN, 0, 1, b"answer")]
    # The next request acknowledges the answer: the circuit answers with RR only.
    assert t.send(x25.Data(LCN, 1, 1, b"next")) == [x25.ReceiveReady(LCN, 2)]


def test_an_answer_given_before_the_flush_is_the_acknowledgement() -> None:
    """switchd answers a request before it collects the bytes to send: the answer's P(R)
    acknowledges the request, no RR goes before it. With nothing to send, an RR."""
    t = Terminal()
    t.call()
    wire = xot.encode(x25.Data(LCN, 0, 0, b"request").encode())
    t.events += t.circuit.receive_data(wire, 0.0)
    t.circuit.send_message(b"answer")
    assert t.received() == [x25.Data(LCN, 0, 1, b"answer")]
    wire = xot.encode(x25.Data(LCN, 1, 1, b"no answer owed").encode())
    t.events += t.circuit.receive_data(wire, 0.0)
    assert t.received() == [x25.ReceiveReady(LCN, 2)]
    assert t.received() == []


def test_q_bit_message() -> None:
    t = Terminal()
    t.call()
    t.send(x25.Data(LCN, 0, 0, b"pad", q=True))
    assert t.events[-1] == Message(b"pad", q=True)
    t.circuit.send_message(b"x" * 200, q=True)
    assert all(p.q for p in t.received())


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 3000),
    packet_size=st.sampled_from([16, 32, 128, 256, 1024]),
    window=st.integers(1, 7),
    modulo=st.sampled_from([8, 128]),
    ack_delays=st.lists(st.integers(0, 3), min_size=1, max_size=20),
)
def test_dte_dce_messages_whole_and_window_respected(
    size, packet_size, window, modulo, ack_delays
) -> None:
    """A DTE and a DCE circuit exchange messages; the link delivers in order but late, and
    at no time does either side have more than W unacknowledged packets in flight."""
    config = CircuitConfig(max_packet_size=1024, max_window=7, max_message_size=4000)
    dte = X25Circuit(Role.DTE, config, now=0.0)
    dce = X25Circuit(Role.DCE, config, now=0.0)
    dte.place_call("1998", "1", now=0.0, modulo=modulo, packet_size=packet_size, window=window)
    got: dict[str, list[bytes]] = {"dte": [], "dce": []}
    pipes: dict[str, list[bytes]] = {"dte": [], "dce": []}  # bytes in transit from a side
    # An observer's count, from the packets alone: the next P(S) each side sends, and the
    # last P(R) it has received.
    next_ps = {"dte": 0, "dce": 0}
    acked = {"dte": 0, "dce": 0}
    most_in_flight = {"dte": 0, "dce": 0}

    def deliver(sender: str, count: int) -> None:
        receiver = dce if sender == "dte" else dte
        name = "dce" if sender == "dte" else "dte"
        for raw in pipes[sender][:count]:
            packet = x25.decode(raw[4:])
            if isinstance(packet, (x25.Data, x25.ReceiveReady, x25.ReceiveNotReady)):
                acked[name] = packet.pr
            for event in receiver.receive_data(raw, 0.0):
                if isinstance(event, CallIncoming):
                    receiver.accept_call()
                if isinstance(event, Message):
                    got[name].append(event.data)
                assert not isinstance(event, (ProtocolError, Cleared)), event
        del pipes[sender][:count]

    def collect(sender: str, circuit: X25Circuit) -> None:
        for raw in xot.XotDecoder().feed(circuit.data_to_send()):
            pipes[sender].append(xot.encode(raw))
            packet = x25.decode(raw)
            if isinstance(packet, x25.Data):
                assert packet.ps == next_ps[sender]
                next_ps[sender] = (packet.ps + 1) % modulo
                flying = (next_ps[sender] - acked[sender]) % modulo
                assert flying <= window, (sender, flying)
                most_in_flight[sender] = max(most_in_flight[sender], flying)

    message = bytes(i % 251 for i in range(size))
    sent = False
    for step in range(400):
        collect("dte", dte)
        collect("dce", dce)
        if dte.state is State.DATA and dce.state is State.DATA and not sent:
            dte.send_message(message)
            dce.send_message(message[::-1])
            sent = True
        delay = ack_delays[step % len(ack_delays)]
        deliver("dte", 1 if delay else len(pipes["dte"]))
        deliver("dce", 1 if delay else len(pipes["dce"]))
        if sent and got["dte"] and got["dce"] and not pipes["dte"] and not pipes["dce"]:
            break
    assert got == {"dce": [message], "dte": [message[::-1]]}
    packets = max(1, -(-size // packet_size))
    # The window is used, never exceeded (checked on every packet above).
    assert most_in_flight == {"dte": min(window, packets), "dce": min(window, packets)}
    connected = dte.negotiated
    assert (connected.packet_size_tx, connected.window_tx, connected.modulo) == (
        packet_size,
        window,
        modulo,
    )


# --- errors answered with a Clear ------------------------------------------------------------


def _connected(config: CircuitConfig | None = None) -> Terminal:
    t = Terminal(config)
    t.call()
    return t


@pytest.mark.parametrize(
    ("packets", "diagnostic"),
    [
        ([x25.Data(LCN, 1, 0, b"x")], x25.DIAG_INVALID_PS),
        ([x25.Data(LCN, 0, 0, b"x"), x25.Data(LCN, 0, 0, b"x")], x25.DIAG_INVALID_PS),  # dup
        ([x25.Data(LCN, 0, 3, b"x")], x25.DIAG_INVALID_PR),  # acknowledges what we never sent
        ([x25.ReceiveReady(LCN, 1)], x25.DIAG_INVALID_PR),
        ([x25.Data(LCN, 0, 0, b"x" * 129)], x25.DIAG_PACKET_TOO_LONG),
        (
            [x25.Data(LCN, 0, 0, b"x", m=True, q=True), x25.Data(LCN, 1, 0, b"y")],
            x25.DIAG_INCONSISTENT_Q_BIT,
        ),
        ([x25.Data(LCN + 1, 0, 0, b"x")], x25.DIAG_UNASSIGNED_CHANNEL),
        ([x25.Data(LCN, 0, 0, b"x", modulo=128)], x25.DIAG_INVALID_GFI),
        ([x25.CallRequest(LCN, "1", "2")], 23),  # packet type invalid for state p4
        ([x25.CallAccepted(LCN)], 23),
        ([x25.ClearConfirmation(LCN)], 23),
        ([x25.ResetConfirmation(LCN)], 27),  # ... for state d1
        ([x25.Reject(LCN, 0)], x25.DIAG_REJECT_NOT_SUBSCRIBED),
        ([x25.InterruptConfirmation(LCN)], x25.DIAG_UNAUTHORIZED_INTERRUPT_CONFIRMATION),
    ],
)
def test_protocol_errors_in_data_transfer(packets, diagnostic) -> None:
    t = _connected()
    out = t.send(*packets)
    _cleared_with(out, x25.CAUSE_LOCAL_PROCEDURE_ERROR, diagnostic)
    errors = [e for e in t.events if isinstance(e, ProtocolError)]
    assert errors[-1].diagnostic == diagnostic and errors[-1].cause == 0x13
    assert t.circuit.state is State.CLEARING
    # Until the confirmation, anything else is ignored; then the circuit is over.
    assert t.send(x25.Data(LCN, 7, 0, b"late"), x25.ReceiveReady(LCN, 0)) == []
    t.send(x25.ClearConfirmation(LCN))
    assert t.events[-1] == Cleared(0x13, diagnostic, False, errors[-1].reason)


@pytest.mark.parametrize(
    ("raw", "diagnostic"),
    [
        (b"\x10\x05", x25.DIAG_PACKET_TOO_SHORT),
        (b"\x10\x05\x03", x25.DIAG_UNIDENTIFIABLE_PACKET),
        (b"\x00\x05\x01", x25.DIAG_INVALID_GFI),
    ],
)
def test_undecodable_packets(raw: bytes, diagnostic: int) -> None:
    t = _connected()
    t.events += t.circuit.receive_data(
        xot.encode(raw) if len(raw) >= 3 else b"\x00\x00\x00\x02" + raw, 0.0
    )
    _cleared_with(t.received(), x25.CAUSE_LOCAL_PROCEDURE_ERROR, diagnostic)


def test_bad_xot_header_clears_and_ends_at_once() -> None:
    t = _connected()
    t.events += t.circuit.receive_data(b"\x00\x07\x00\x03abc", 0.0)
    _cleared_with(t.received(), x25.CAUSE_LOCAL_PROCEDURE_ERROR, x25.DIAG_MISCELLANEOUS)
    assert isinstance(t.events[-1], Cleared) and t.circuit.state is State.CLOSED
    assert t.circuit.receive_data(b"anything", 0.0) == []


def test_oversize_xot_length_before_a_call() -> None:
    t = Terminal()
    t.events += t.circuit.receive_data(b"\x00\x00\xff\xff", 0.0)
    assert t.received() == []  # no call: nothing to clear
    assert isinstance(t.events[-1], Cleared) and t.events[-1].diagnostic == x25.DIAG_PACKET_TOO_LONG


@pytest.mark.parametrize(
    ("packet", "diagnostic"),
    [
        (x25.Data(LCN, 0, 0, b"x"), 20),  # packet type invalid for state p1
        (x25.ReceiveReady(LCN, 0), 20),
        (x25.ClearConfirmation(LCN), 20),
    ],
)
def test_wrong_packet_before_a_call(packet, diagnostic) -> None:
    t = Terminal()
    _cleared_with(t.send(packet), x25.CAUSE_LOCAL_PROCEDURE_ERROR, diagnostic)


def test_wrong_packet_while_the_call_waits_for_acceptance() -> None:
    t = Terminal()
    t.call(accept=False)
    _cleared_with(t.send(x25.Data(LCN, 0, 0, b"early")), 0x13, 21)  # state p2
    with pytest.raises(CircuitStateError):
        t.circuit.accept_call()


def test_reassembly_is_bounded() -> None:
    t = _connected(CircuitConfig(max_message_size=300))
    out = []
    for packet in _data_chain(b"z" * 400, 128):
        out += t.send(packet)
        if t.circuit.state is not State.DATA:
            break
    _cleared_with(out, 0x13, x25.DIAG_PACKET_TOO_LONG)
    assert not [e for e in t.events if isinstance(e, Message)]


# --- clearing, reset, interrupt, restart -------------------------------------------------------


def test_clear_from_the_terminal_is_confirmed() -> None:
    t = _connected()
    assert t.send(x25.ClearRequest(LCN, 0, 0)) == [x25.ClearConfirmation(LCN)]
    assert t.events[-1] == Cleared(0, 0, True, "cleared by peer")
    assert t.circuit.state is State.CLOSED
    t.circuit.send_message(b"dropped")  # silently: the events said it is over
    assert t.received() == [] and t.circuit.clear(now=0.0) == []


def test_clear_before_the_call_is_accepted_and_in_listen() -> None:
    t = Terminal()
    t.call(accept=False)
    assert t.send(x25.ClearRequest(LCN, 0)) == [x25.ClearConfirmation(LCN)]
    t = Terminal()
    assert t.send(x25.ClearRequest(3, 0)) == [x25.ClearConfirmation(3)]
    assert isinstance(t.events[-1], Cleared)


def test_our_clear_collides_with_theirs() -> None:
    t = _connected()
    assert t.circuit.clear(now=0.0) == []
    assert t.received() == [x25.ClearRequest(LCN, 0, 0)]
    assert t.send(x25.ClearRequest(LCN, 0, 0)) == []  # collision: no confirmation owed
    assert t.events[-1] == Cleared(0, 0, False, "")


def test_clear_confirmation_timeout() -> None:
    t = _connected(CircuitConfig(clear_timeout=60.0))
    t.circuit.clear(now=100.0)
    assert t.circuit.next_deadline() == 160.0
    assert t.circuit.tick(159.9) == []
    events = t.circuit.tick(160.0)
    assert events == [Cleared(0, 0, False, "no clear confirmation")]
    assert t.circuit.state is State.CLOSED and t.circuit.next_deadline() is None


def test_call_timers() -> None:
    idle = X25Circuit(config=CircuitConfig(call_timeout=10.0), now=5.0)
    assert idle.next_deadline() == 15.0
    events = idle.tick(15.0)
    assert isinstance(events[0], Cleared) and idle.data_to_send() == b""

    t = Terminal(CircuitConfig(call_timeout=10.0))
    t.now = 1.0
    t.call(accept=False)
    assert t.circuit.tick(11.0) == []
    _cleared_with(t.received(), x25.CAUSE_OUT_OF_ORDER, x25.DIAG_TIMER_EXPIRED_INCOMING_CALL)


def test_reset_restarts_sequence_numbers_and_drops_data_in_transit() -> None:
    t = _connected()
    t.send(x25.Data(LCN, 0, 0, b"part", m=True))
    t.circuit.send_message(b"x" * 600)
    t.received()
    out = t.send(x25.ResetRequest(LCN, 0, 0))
    assert out == [x25.ResetConfirmation(LCN)]
    assert t.events[-1] == Reset(0, 0)
    assert (t.circuit.unacknowledged, t.circuit.queued) == (0, 0)
    t.send(x25.Data(LCN, 0, 0, b"fresh"))
    assert t.events[-1] == Message(b"fresh")


def test_interrupts_both_ways() -> None:
    t = _connected()
    assert t.send(x25.Interrupt(LCN, b"\x07")) == [x25.InterruptConfirmation(LCN)]
    assert t.events[-1] == Interrupted(b"\x07")
    t.circuit.send_interrupt(b"\x01")
    assert t.received() == [x25.Interrupt(LCN, b"\x01")]
    with pytest.raises(CircuitStateError):
        t.circuit.send_interrupt(b"\x02")
    assert t.send(x25.InterruptConfirmation(LCN)) == []
    assert t.circuit.state is State.DATA


def test_restart_ends_the_circuit_and_diagnostic_is_ignored() -> None:
    t = _connected()
    assert t.send(x25.Diagnostic(38, b"\x10")) == []
    assert t.circuit.state is State.DATA
    assert t.send(x25.RestartRequest(0x07, 0)) == []
    assert t.events[-1] == Cleared(0x07, 0, True, "restart received")


def test_methods_in_the_wrong_state() -> None:
    dce = X25Circuit(now=0.0)
    with pytest.raises(CircuitStateError):
        dce.send_message(b"x")
    with pytest.raises(CircuitStateError):
        dce.place_call("1", "2", now=0.0)
    with pytest.raises(CircuitStateError):
        dce.send_interrupt()
    assert isinstance(dce.clear(now=0.0)[0], Cleared)  # nothing to clear yet


def test_dte_side_call_and_refusal() -> None:
    dte = X25Circuit(Role.DTE, now=0.0)
    dte.place_call("1998", "123", now=0.0, packet_size=256, window=3)
    raw = xot.XotDecoder().feed(dte.data_to_send())
    call = x25.decode(raw[0])
    assert isinstance(call, x25.CallRequest) and call.called == "1998"
    accepted = x25.CallAccepted(
        1, facilities=(Facility.packet_size(128, 256), Facility.window_size(2, 3))
    )
    events = dte.receive_data(xot.encode(accepted.encode()), 0.0)
    assert isinstance(events[0], CallConnected)
    neg = dte.negotiated  # first byte: from the called side, i.e. what the DTE receives
    assert (neg.packet_size_rx, neg.packet_size_tx, neg.window_rx, neg.window_tx) == (
        128,
        256,
        2,
        3,
    )
    # A DTE refuses an incoming call; a refused call ends the DTE circuit.
    other = X25Circuit(Role.DTE, now=0.0)
    other.receive_data(xot.encode(x25.CallRequest(1, "1", "2").encode()), 0.0)
    assert other.state is State.CLEARING
    third = X25Circuit(Role.DTE, now=0.0)
    third.place_call("1", "2", now=0.0)
    third.data_to_send()
    events = third.receive_data(xot.encode(x25.ClearRequest(1, 0x01, 0).encode()), 0.0)
    assert events == [Cleared(0x01, 0, True, "cleared by peer")]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=20),
    st.booleans(),
)
def test_random_bytes_never_raise(chunks: list[bytes], connect: bool) -> None:
    t = Terminal()
    if connect:
        t.call()
    for chunk in chunks:
        for event in t.circuit.receive_data(chunk, 0.0):
            assert isinstance(
                event, (CallIncoming, Message, Interrupted, Reset, ProtocolError, Cleared)
            )
        t.circuit.data_to_send()
    assert t.circuit.state in set(State)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=3, max_size=20), max_size=15))
def test_random_packets_never_raise(raws: list[bytes]) -> None:
    t = _connected()
    for raw in raws:
        t.circuit.receive_data(xot.encode(bytes([0x10 | raw[0] & 0x3F]) + raw[1:]), 0.0)
        for packet in xot.XotDecoder().feed(t.circuit.data_to_send()):
            x25.decode(packet)  # everything we send decodes
