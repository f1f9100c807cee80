"""The télécollecte writer (storage.remises) uses psycopg internals pinned to 3.3.x: any
other psycopg must stop it at import, with the fix named, rather than store wrongly."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest

from passerelle.storage.remises import require_psycopg_3_3


def test_the_installed_psycopg_is_the_pinned_one() -> None:
    require_psycopg_3_3(psycopg.__version__)  # what switchd imports with


@pytest.mark.parametrize("version", ["3.4.0", "3.2.12", "4.0.0", "3.30.1", "3.3"])
def test_another_psycopg_is_refused_with_the_pin_named(version: str) -> None:
    with pytest.raises(ImportError, match=r"needs psycopg 3\.3\.x .*>=3\.3,<3\.4"):
        require_psycopg_3_3(version)


def test_switchd_does_not_import_the_writer_over_another_psycopg() -> None:
    code = ("import psycopg; psycopg.__version__ = '3.4.0'\n"
            "import passerelle.storage.remises\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0
    assert "ImportError: passerelle.storage.remises needs psycopg 3.3.x" in done.stderr
