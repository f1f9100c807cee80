"""Run mpctl as an operator does: the installed console script, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MPCTL = str(Path(sys.executable).with_name("mpctl"))


def mpctl(*args: str, dsn: str | None = None, env: dict[str, str] | None = None,
          cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """`mpctl ARGS` with PASSERELLE_DSN set; output captured as text."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    if dsn is not None:
        environment["PASSERELLE_DSN"] = dsn
    environment.update(env or {})
    return subprocess.run([MPCTL, *args], capture_output=True, text=True, env=environment,
                          cwd=cwd, timeout=120, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (no traceback, nothing else)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]
