"""Run switchd as a child process: for integration tests, benchmarks and the demo.

The child is the real `switchd` (same entry point as systemd runs), with a TOML file written
from a dict. Readiness is its `switchd.ready` log line, which also gives the addresses of
listeners bound to port 0, so callers never guess ports nor sleep. Its JSON log lines are
collected on a thread so that the pipe never fills, and can be searched afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["SwitchdProcess", "to_toml"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(document: dict[str, Any], prefix: str = "") -> str:
    """A nested dict of scalars and tables as TOML text (enough for switchd settings)."""
    lines = [f"{key} = {_toml_value(value)}"
             for key, value in document.items() if not isinstance(value, dict)]
    for key, value in document.items():
        if isinstance(value, dict):
            name = f"{prefix}.{key}" if prefix else key
            quoted = ".".join(json.dumps(part) if "-" in part else part
                              for part in name.split("."))
            lines.append(f"\n[{quoted}]")
            lines.append(to_toml(value, name))
    return "\n".join(line for line in lines if line) + "\n"


class SwitchdProcess:
    """A switchd child process; use as a context manager (it is always stopped)."""

    def __init__(self, settings: dict[str, Any], workdir: Path, *,
                 env: dict[str, str] | None = None, ready_timeout: float = 20.0) -> None:
        level = settings.get("logging", {}).get("level", "info")
        if level not in ("debug", "info"):
            raise ValueError(f"logging.level {level!r} would hide the switchd.ready event")
        self.config_path = workdir / "switchd.toml"
        self.config_path.write_text(to_toml(settings))
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self.raw_lines: list[bytes] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self.metrics_address: tuple[str, int] | None = None
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> SwitchdProcess:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and entry point
            [sys.executable, "-c", "from passerelle.switchd.main import main; main()",
             "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            ready = self.wait_for("switchd.ready", timeout=self.ready_timeout)
        except BaseException:
            self.stop(5)
            raise
        for name, address in ready["listeners"].items():
            host, port = address.rsplit(":", 1)
            self.addresses[name] = (host, int(port))
        metrics = self.find("metrics.started")
        if metrics:
            host, port = metrics[0]["address"].rsplit(":", 1)
            self.metrics_address = (host, int(port))
        return self

    def port(self, listener: str) -> int:
        return self.addresses[listener][1]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.raw_lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "switchd.unparsed", "line": line.decode(errors="replace")}
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def find(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """Log events called `name` whose fields match `fields`."""
        with self._changed:
            return [event for event in self.events if event.get("event") == name
                    and all(event.get(key) == value for key, value in fields.items())]

    def wait_for(self, name: str, timeout: float = 10.0, count: int = 1,
                 **fields: Any) -> dict[str, Any]:
        """Block until `count` events `name` (matching `fields`) were logged; the last one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [event for event in self.events if event.get("event") == name
                         and all(event.get(key) == value for key, value in fields.items())]
                if len(found) >= count:
                    return found[count - 1]
                assert self.proc is not None
                if self.proc.poll() is not None and not (self._reader and
                                                         self._reader.is_alive()):
                    raise RuntimeError(f"switchd exited ({self.proc.returncode}) before "
                                       f"{name}: {self.tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {name} within {timeout} s: {self.tail()}")
                self._changed.wait(remaining)

    def tail(self, lines: int = 10) -> str:
        return b"".join(self.raw_lines[-lines:]).decode(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit on its own (after a signal sent by the caller)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. The exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> SwitchdProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None:
            self.stop()
