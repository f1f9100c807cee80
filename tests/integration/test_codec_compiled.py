"""The codec, routing and authorization tests, run again against the mypyc-compiled build.

setup.py compiles the authorization's hot modules when PASSERELLE_MYPYC=1 (the opt-in
production build): the codec, masking, routing (translation, application, table,
deadlines, MUX, acquirer link, metrics) and switchd's connection, dispatch and
authorization dialogue. Compiled code must behave exactly like the source it comes from (mypyc
checks annotations at run time, where the interpreter trusts them): this builds those
modules into a scratch copy of the tree and runs their unit tests there, then the
authorization dialogue, its acquirer links and the listener's bad-input tests end to end
(real sockets, the acquirer simulator, PostgreSQL), in a child process whose `passerelle`
is the compiled one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypyc")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUITE = [
    "tests/unit/test_codec_vectors.py",
    "tests/unit/test_codec_errors.py",
    "tests/unit/test_codec_masking.py",
    "tests/unit/test_codec_properties.py",
    "tests/unit/test_codec_pyiso8583.py",
    "tests/unit/test_cbcom.py",
    "tests/unit/test_cbcom_session.py",
    "tests/unit/test_framing.py",
    "tests/unit/test_routing_translate.py",
    "tests/unit/test_routing_table.py",
    "tests/unit/test_routing_deadlines.py",
    "tests/unit/test_routing_mux.py",
    "tests/integration/test_auth_dialogue.py",
    "tests/integration/test_auth_failover.py",
    "tests/integration/test_auth_links.py",
    "tests/integration/test_switchd_bad_input.py",
    "tests/integration/test_switchd_hot_path.py",
]
# Imported first, so the run fails loudly if the interpreted source was picked up instead.
CHECK = """
import importlib, sys
import pytest
for name in {names!r}:
    module = importlib.import_module(name)
    assert module.__file__.endswith(".so"), module.__file__
sys.exit(pytest.main(sys.argv[1:]))
"""


def compiled_modules() -> tuple[str, ...]:
    """setup.py's list (importing it builds nothing: setup() runs only as __main__)."""
    spec = importlib.util.spec_from_file_location("passerelle_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    return tuple(setup.COMPILED_MODULES)


@pytest.mark.timeout(480)
def test_tests_pass_against_the_compiled_build(tmp_path: Path) -> None:
    # Built apart from pyproject.toml: the build only needs the sources, and the venv's
    # setuptools may predate what pyproject's metadata asks of a full build.
    built, run_dir = tmp_path / "built", tmp_path / "run"
    shutil.copytree(ROOT / "passerelle", built / "passerelle",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copytree(ROOT / "tests", run_dir / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", run_dir / "pyproject.toml")
    modules = compiled_modules()
    build = subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=built,
                           capture_output=True, text=True, timeout=240, check=False)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    for module in modules:
        assert list((built / Path(module).parent).glob(f"{Path(module).stem}.*.so")), module
    env = dict(os.environ, PYTHONPATH=str(built),
               PASSERELLE_VECTORS=os.environ.get(
                   "PASSERELLE_VECTORS", str(ROOT.parent / "shared" / "vectors" / "cb2a")))
    check = CHECK.format(names=[m.removesuffix(".py").replace("/", ".") for m in modules])
    run = subprocess.run(
        [sys.executable, "-c", check, "-q", "-x", "-p", "no:cacheprovider", *SUITE],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=230, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
