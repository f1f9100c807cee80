"""tshark dissects the XOT / X.25 packets our encoders and circuits produce, without a warning.

Calls are played between a DTE circuit (the terminal side) and a DCE circuit (switchd's),
every XOT packet is written as one IPv4/TCP segment (port 1998) into a pcap file, and
tshark reads it back: no malformed packet, no expert warning or error on any frame, and
the addresses, facilities, P(S)/P(R), M bits and clear causes read back as sent.

The calls' user data does not start with 0x01: Wireshark takes that protocol identifier as
X.29 (PAD) and would dissect the CBCOM IPDUs as X.29, warning about "trailing stray
characters" in a payload that was never X.29 — a guess about the payload, not about X.25.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from passerelle.codecs import x25, xot
from passerelle.switchd.x25_circuit import (
    CallIncoming,
    CircuitConfig,
    Message,
    Role,
    X25Circuit,
)

pytestmark = pytest.mark.integration

XOT_PORT = 1998
DTE_ADDR = bytes((127, 0, 0, 2))
DCE_ADDR = bytes((127, 0, 0, 1))


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is None and shutil.which("apt-get") is not None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "tshark"],
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            capture_output=True,
            check=False,
            timeout=600,
        )
        path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed and `apt-get install tshark` did not work")
    return path


# --- pcap writing --------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _segment(
    src: bytes,
    dst: bytes,
    ports: tuple[int, int],
    *,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", *ports, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    csum = _checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp + payload


@dataclass
class _Capture:
    """Two-way TCP conversations written as a pcap (LINKTYPE_RAW: bare IPv4)."""

    records: list[bytes] = field(default_factory=list)
    clock: float = 1_700_000_000.0

    def _record(self, packet: bytes) -> None:
        self.clock += 0.001
        sec, usec = int(self.clock), int(self.clock % 1 * 1_000_000)
        self.records.append(struct.pack("<IIII", sec, usec, len(packet), len(packet)) + packet)

    def write(self, path: Path) -> None:
        header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
        path.write_bytes(header + b"".join(self.records))


class _Conversation:
    """One TCP connection from the terminal (DTE) to port 1998, handshake included."""

    def __init__(self, capture: _Capture, sport: int) -> None:
        self.capture = capture
        self.sport = sport
        self.seq = {True: 1000, False: 5000}  # True: DTE -> DCE
        c = capture
        c._record(_segment(DTE_ADDR, DCE_ADDR, (sport, XOT_PORT), seq=999, ack=0, flags=0x02))
        c._record(_segment(DCE_ADDR, DTE_ADDR, (XOT_PORT, sport), seq=4999, ack=1000, flags=0x12))
        c._record(_segment(DTE_ADDR, DCE_ADDR, (sport, XOT_PORT), seq=1000, ack=5000, flags=0x10))

    def send(self, from_dte: bool, payload: bytes) -> None:
        src, dst = (DTE_ADDR, DCE_ADDR) if from_dte else (DCE_ADDR, DTE_ADDR)
        ports = (self.sport, XOT_PORT) if from_dte else (XOT_PORT, self.sport)
        seq, ack = self.seq[from_dte], self.seq[not from_dte]
        self.capture._record(
            _segment(src, dst, ports, seq=seq, ack=ack, flags=0x18, payload=payload)
        )
        self.seq[from_dte] += len(payload)


# --- playing calls between two circuits ----------------------------------------------------


@dataclass
class _Sent:
    from_dte: bool
    packet: x25.Packet


class _Call:
    """A DTE and a DCE circuit wired together; every packet goes into the capture."""

    def __init__(self, capture: _Capture, sport: int, config: CircuitConfig | None = None):
        self.conv = _Conversation(capture, sport)
        self.dte = X25Circuit(Role.DTE, config, now=0.0)
        self.dce = X25Circuit(Role.DCE, config, now=0.0)
        self.sent: list[_Sent] = []
        self.events: dict[bool, list[object]] = {True: [], False: []}

    def _deliver(self, from_dte: bool, data: bytes) -> None:
        receiver = self.dce if from_dte else self.dte
        for raw in xot.XotDecoder().feed(data):
            self.sent.append(_Sent(from_dte, x25.decode(raw)))
            self.conv.send(from_dte, xot.encode(raw))
            self.events[not from_dte] += receiver.receive_data(xot.encode(raw), 0.0)

    def pump(self) -> None:
        for _ in range(100):
            moved = False
            for from_dte, circuit in ((True, self.dte), (False, self.dce)):
                data = circuit.data_to_send()
                if data:
                    moved = True
                    self._deliver(from_dte, data)
            if not moved:
                return
        raise AssertionError("the circuits never went quiet")

    def inject(self, packet: x25.Packet) -> None:
        """The terminal sends a raw packet (for error paths); the DCE's answers are captured
        but no longer fed back to the DTE circuit, which did not send it."""
        self.dte = X25Circuit(Role.DTE, now=0.0)  # a blank DTE: it just swallows the answers
        self._deliver(True, xot.encode(packet.encode()))
        data = self.dce.data_to_send()
        for raw in xot.XotDecoder().feed(data):
            self.sent.append(_Sent(False, x25.decode(raw)))
            self.conv.send(False, xot.encode(raw))


def _play_calls(capture: _Capture) -> list[_Sent]:
    sent: list[_Sent] = []
    ports = itertools.count(40001)

    # 1. Modulo 8, packet 128, window 2: a 600-byte message each way, cleared by switchd.
    call = _Call(capture, next(ports))
    call.dte.place_call(
        "0123456789012", "33123456", now=0.0, packet_size=128, window=2, user_data=b"CB2A"
    )
    call.pump()
    assert isinstance(call.events[False][0], CallIncoming)
    call.dce.accept_call()
    call.pump()
    request = bytes(range(256)) + bytes(range(256)) + b"R" * 88
    call.dte.send_message(request)
    call.pump()
    assert [e.data for e in call.events[False] if isinstance(e, Message)] == [request]
    call.dce.send_message(request[::-1])
    call.pump()
    call.dce.clear(0x00, 0, now=0.0)
    call.pump()
    sent += call.sent

    # 2. Modulo 128, packet 256, window 5: sequence numbers past 7, cleared by the terminal.
    call = _Call(capture, next(ports), CircuitConfig(max_packet_size=1024, max_window=7))
    call.dte.place_call("1998", "4000", now=0.0, modulo=128, packet_size=256, window=5)
    call.pump()
    call.dce.accept_call()
    call.pump()
    for i in range(3):
        call.dte.send_message(bytes([i]) * 700)
        call.pump()
        call.dce.send_message(bytes([i]) * 1000)
        call.pump()
    call.dte.clear(0x00, 0, now=0.0)
    call.pump()
    sent += call.sent

    # 3. Interrupt, reset, then a protocol error (bad P(S)) answered with a Clear.
    call = _Call(capture, next(ports))
    call.dte.place_call("555", "666", now=0.0)
    call.pump()
    call.dce.accept_call()
    call.pump()
    call.dte.send_interrupt(b"\x42")
    call.pump()
    call.inject(x25.ResetRequest(1, 0x00, 0))
    call.inject(x25.Data(1, 5, 0, b"out of sequence"))
    sent += call.sent
    return sent


# --- the test ----------------------------------------------------------------------------


_FIELDS = [
    "frame.number",
    "xot.version",
    "xot.length",
    "x25.lcn",
    "x25.mod",
    "x25.p_s",
    "x25.p_r",
    "x25.m",
    "x25.called_address",
    "x25.calling_address",
    "x25.facility.packet_size.called_dte",
    "x25.facility.packet_size.calling_dte",
    "x25.window_size.called_dte",
    "x25.window_size.calling_dte",
    "x25.clear_cause",
    "x25.reset_cause",
    "x25.diagnostic",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
]


def _run_tshark(pcap: Path) -> list[dict[str, str]]:
    args = [
        _tshark(),
        "-n",
        "-r",
        str(pcap),
        "-d",
        f"tcp.port=={XOT_PORT},xot",
        "-o",
        "tcp.check_checksum:TRUE",
        "-Y",
        "xot",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=;",
    ]
    for name in _FIELDS:
        args += ["-e", name]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = []
    for line in done.stdout.splitlines():
        rows.append(dict(zip(_FIELDS, line.split("|"), strict=True)))
    return rows


def _packet_size(value: str) -> int:
    # tshark shows the 0x42 parameter as the log2 code or as the size, depending on version.
    number = int(value, 0)
    return 1 << number if number <= 12 else number


def test_tshark_dissects_our_xot_packets(tmp_path: Path) -> None:
    capture = _Capture()
    sent = _play_calls(capture)
    pcap = tmp_path / "xot.pcap"
    capture.write(pcap)

    rows = _run_tshark(pcap)
    assert len(rows) == len(sent), (len(rows), len(sent))

    # Nothing malformed, no expert warning or error anywhere (the JSON export says why).
    severities = {0x00600000: "warning", 0x00800000: "error"}
    for row in rows:
        assert not row["_ws.malformed"], row
        for severity in filter(None, row["_ws.expert.severity"].split(";")):
            assert int(severity, 0) not in severities, row

    for row, item in zip(rows, sent, strict=True):
        p = item.packet
        assert row["xot.version"] == "0"
        assert int(row["xot.length"]) == len(p.encode())
        if not isinstance(p, (x25.RestartRequest, x25.RestartConfirmation, x25.Diagnostic)):
            assert int(row["x25.lcn"]) == p.lcn, row
        if isinstance(p, x25.Data):
            ps, pr = p.ps, p.pr
            if p.modulo == 128:
                # Wireshark reads modulo-128 Data octet 3 as P(R) and octet 4 as P(S); ITU-T
                # X.25 (and the Linux kernel) put P(S) in octet 3 and P(R) in octet 4, as we do.
                ps, pr = pr, ps
            assert int(row["x25.p_s"]) == ps, row
            assert int(row["x25.p_r"]) == pr, row
            assert (row["x25.m"] in ("1", "True")) == p.m, row
        elif isinstance(p, (x25.ReceiveReady, x25.ReceiveNotReady)):
            assert int(row["x25.p_r"]) == p.pr, row
        elif isinstance(p, x25.CallRequest):
            assert row["x25.called_address"] == p.called, row
            assert row["x25.calling_address"] == p.calling, row
        if isinstance(p, (x25.CallRequest, x25.CallAccepted)):
            size = x25.find_facility(p.facilities, x25.FAC_PACKET_SIZE)
            if size is not None:
                assert (
                    _packet_size(row["x25.facility.packet_size.called_dte"]) == 1 << size.value[0]
                )
                assert (
                    _packet_size(row["x25.facility.packet_size.calling_dte"]) == 1 << size.value[1]
                )
            window = x25.find_facility(p.facilities, x25.FAC_WINDOW_SIZE)
            if window is not None:
                assert int(row["x25.window_size.called_dte"]) == window.value[0], row
                assert int(row["x25.window_size.calling_dte"]) == window.value[1], row
        if isinstance(p, x25.ClearRequest):
            assert int(row["x25.clear_cause"], 0) == p.cause, row
            if p.diagnostic is not None:
                assert int(row["x25.diagnostic"], 0) == p.diagnostic, row
        if isinstance(p, x25.ResetRequest):
            assert int(row["x25.reset_cause"], 0) == p.cause, row

    # What the calls were meant to show is really in the capture.
    kinds = [type(s.packet).__name__ for s in sent]
    for kind in (
        "CallRequest",
        "CallAccepted",
        "Data",
        "ReceiveReady",
        "ClearRequest",
        "ClearConfirmation",
        "Interrupt",
        "InterruptConfirmation",
        "ResetRequest",
        "ResetConfirmation",
    ):
        assert kind in kinds
    clears = [s.packet for s in sent if isinstance(s.packet, x25.ClearRequest)]
    assert (clears[-1].cause, clears[-1].diagnostic) == (0x13, x25.DIAG_INVALID_PS)
    assert any(
        isinstance(s.packet, x25.Data) and s.packet.modulo == 128 and s.packet.ps > 7 for s in sent
    )


def test_tshark_json_export_has_no_expert_info(tmp_path: Path) -> None:
    """The same capture as JSON: no '_ws.expert' block at warning level or above."""
    capture = _Capture()
    _play_calls(capture)
    pcap = tmp_path / "xot.pcap"
    capture.write(pcap)
    done = subprocess.run(
        [_tshark(), "-n", "-r", str(pcap), "-d", f"tcp.port=={XOT_PORT},xot", "-T", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    frames = json.loads(done.stdout)
    assert frames

    def experts(node: object):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_ws.expert":
                    yield value
                yield from experts(value)
        elif isinstance(node, list):
            for item in node:
                yield from experts(item)

    bad = [
        e
        for frame in frames
        for e in experts(frame["_source"]["layers"])
        if str(e.get("_ws.expert.severity", "")) in ("6291456", "8388608")
    ]
    assert not bad, bad
