"""systemd notifications (READY=1, WATCHDOG=1, STOPPING=1) written by hand.

The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET; a name starting
with '@' is in the abstract namespace. Not worth a dependency.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Sends state lines to systemd; silently does nothing when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        # systemd asks for a ping at least every WatchdogSec; we ping twice as often.
        self.watchdog_interval: float | None = None
        if watchdog_usec.isdigit() and int(watchdog_usec) > 0 and (
            not watchdog_pid or watchdog_pid == str(os.getpid())
        ):
            self.watchdog_interval = int(watchdog_usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> None:
        """Send `state` (e.g. "READY=1"); errors are ignored: systemd may be gone."""
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        # systemd >= 253 wants the reload's start time with it (Type=notify-reload requires it).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
