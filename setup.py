"""Optional compiled build: pure Python unless PASSERELLE_MYPYC=1.

Everything about the distribution lives in pyproject.toml; this file only adds, on request,
the codec's hot modules compiled to C extensions by mypyc (the same source, the same
behaviour, 2-5x faster on the terminal hot path). Pure Python stays the default, so editable
installs, tests and development are unaffected.

    PASSERELLE_MYPYC=1 pip install .            # production: compiled hot modules
    pip install -e '.[dev]'                     # development: pure Python

pip builds in an isolated environment that has only pyproject's build requirements. With
PASSERELLE_MYPYC=1 and no mypy there, the first pass declares mypy in `setup_requires`;
setuptools' PEP 517 backend hands it to pip as an extra build requirement, and the build pass
that follows has mypyc. No mypy is needed for the default build.
"""

from __future__ import annotations

import os

# Compiled when asked: the modules an authorization runs through, from the terminal's
# connection to the acquirer's MUX, less what mypyc cannot compile or would not speed up.
# Left interpreted: codecs.fields (Encoded and CbTlv subclass bytes, which a compiled class
# cannot), the profiles (tables built once at import), the rest of switchd (start-up,
# stacks, télécollecte) and storage. mypyc trusts annotations where the interpreter ignores
# them (a wrong one is a TypeError at run time): the compiled-build test runs these
# modules' tests and the authorization dialogue against this list.
COMPILED_MODULES = (
    "passerelle/codecs/layout.py",
    "passerelle/codecs/iso8583.py",
    "passerelle/codecs/subfields.py",
    "passerelle/codecs/cbcom.py",
    "passerelle/codecs/framing.py",
    "passerelle/codecs/masking.py",
    "passerelle/routing/translate.py",
    "passerelle/routing/application.py",
    "passerelle/routing/table.py",
    "passerelle/routing/deadlines.py",
    "passerelle/routing/mux.py",
    "passerelle/routing/link.py",
    "passerelle/routing/metrics.py",
    "passerelle/switchd/dispatch.py",
    "passerelle/switchd/connection.py",
    "passerelle/switchd/authorization.py",
)
MYPY_REQUIREMENT = "mypy>=1.10"


def main() -> None:
    from setuptools import setup  # noqa: PLC0415 - importing this file must not need it

    if os.environ.get("PASSERELLE_MYPYC") != "1":
        setup()
        return
    try:
        from mypyc.build import mypycify  # noqa: PLC0415
    except ImportError:  # pip's isolated build environment, first pass: ask for mypy
        setup(setup_requires=[MYPY_REQUIREMENT])
        return
    setup(setup_requires=[MYPY_REQUIREMENT],
          ext_modules=mypycify(list(COMPILED_MODULES), opt_level="3"))


if __name__ == "__main__":
    main()
