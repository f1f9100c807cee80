"""tshark reads a live capture of switchd's XOT listener: every packet switchd sends
dissects with no malformed mark and no expert warning, and what tshark reads back (packet
types, facilities, P(S)/P(R), M bits, clear cause) is what the call did."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.sim.terminal import Terminal, echo_request
from passerelle.switchd.process import SwitchdProcess

pytestmark = pytest.mark.integration

CB2A = get_profile("cb2a")
FIELDS = ["x25.type", "x25.p_s", "x25.p_r", "x25.m", "x25.facility.packet_size.called_dte",
          "x25.facility.packet_size.calling_dte", "x25.window_size.called_dte",
          "x25.window_size.calling_dte", "x25.clear_cause", "x25.diagnostic", "_ws.malformed",
          "_ws.expert.severity"]
WARNING_OR_WORSE = {0x00600000, 0x00800000}


def _tshark() -> str:
    tshark = shutil.which("tshark")
    if not tshark:
        pytest.skip("tshark not installed (the Debian package; scripts/test.sh installs it)")
    return tshark


def _packet_size(value: str) -> int:
    number = int(value, 0)  # the log2 code or the size, depending on the tshark version
    return 1 << number if number <= 12 else number


async def _call(port: int) -> None:
    long_request = encode(CB2A, "0100", {11: "000002", 41: "SIMTPE01",
                                         **{n: "X" * 150 for n in (60, 61, 62, 63)}})
    async with await Terminal.dial_xot("127.0.0.1", port, packet_size=128, window=2) as tpe:
        assert Message.parse(await tpe.exchange(echo_request(1)), CB2A).get(39) == "00"
        assert Message.parse(await tpe.exchange(long_request), CB2A).mti == "0110"


class _LiveCapture:
    """tshark capturing on loopback; `-P -l` prints each packet as it is captured, which is
    how we know the capture is running and has seen everything we sent."""

    def __init__(self, tshark: str, port: int, pcap: Path) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [tshark, "-n", "-i", "lo", "-f", f"tcp port {port}", "-w", str(pcap), "-P", "-l"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    async def mark(self) -> None:
        """Open and close a connection until the capture prints it: every packet sent
        before is then in the capture too."""
        while True:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            local_port = writer.get_extra_info("sockname")[1]
            writer.close()
            seen = await asyncio.to_thread(self._wait_for, f"{local_port} ", 0.5)
            if seen:
                return
            assert self.process.poll() is None, "the capture stopped"

    def _wait_for(self, text: str, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(text in line for line in self.lines),
                                         timeout)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # writes the file and exits
        self.process.wait(30)
        self.reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_live_capture_of_switchd_dissects_cleanly(tmp_path: Path) -> None:
    tshark = _tshark()
    settings = {"listeners": {"xot": {"host": "127.0.0.1", "port": 0},
                              "cbcom": {"enabled": False}, "iso": {"enabled": False}},
                "metrics": {"enabled": False}}
    pcap = tmp_path / "switchd.pcapng"
    with SwitchdProcess(settings, tmp_path) as process:
        port = process.port("xot")
        capture = _LiveCapture(tshark, port, pcap)
        try:
            asyncio.run(asyncio.wait_for(capture.mark(), 30))
            asyncio.run(asyncio.wait_for(_call(port), 30))
            asyncio.run(asyncio.wait_for(capture.mark(), 30))
        finally:
            capture.stop()

    done = subprocess.run(
        [tshark, "-n", "-r", str(pcap), "-d", f"tcp.port=={port},xot", "-Y",
         f"xot && tcp.srcport == {port}", "-T", "fields", "-E", "separator=|",
         "-E", "occurrence=a", "-E", "aggregator=;", *[arg for f in FIELDS for arg in ("-e", f)]],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = [dict(zip(FIELDS, line.split("|"), strict=True)) for line in done.stdout.splitlines()]
    assert rows, "no XOT packet from switchd in the capture"
    for row in rows:
        assert not row["_ws.malformed"], row
        for severity in filter(None, row["_ws.expert.severity"].split(";")):
            assert int(severity, 0) not in WARNING_OR_WORSE, row

    # A TCP segment may carry several XOT packets: a field's values aggregate, in order.
    def values(field: str) -> list[str]:
        return [value for row in rows for value in row[field].split(";") if value]

    types = [int(value, 0) for value in values("x25.type")]
    assert 0x0F in types  # Call Accepted, with the negotiated facilities
    for field in ("x25.facility.packet_size.called_dte", "x25.facility.packet_size.calling_dte"):
        assert [_packet_size(value) for value in values(field)] == [128]
    for field in ("x25.window_size.called_dte", "x25.window_size.calling_dte"):
        assert [int(value) for value in values(field)] == [2]
    # P(S) counts 0, 1, 2, ... modulo 8 across every Data packet switchd sent.
    sequence = [int(value) for value in values("x25.p_s")]
    assert len(sequence) >= 4 and sequence == [i % 8 for i in range(len(sequence))]
    assert any(value in ("1", "True") for value in values("x25.m")), "answer not segmented"
    assert 0x13 in types or 0x17 in types, "no Clear Request / Confirmation from switchd"
    assert all(int(value, 0) == 0 for value in values("x25.clear_cause"))
