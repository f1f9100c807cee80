"""Codec speed: our ISO 8583 engine against pyiso8583, in one run, as ratios.

For the reference CB2A 0100 EMV message (and the same fields in the iso87-ascii layout):
- full decode: `Message.parse(...).to_dict()` vs `iso8583.decode` (which also converts every
  field). Reported twice: with sub-elements parsed into tag/value pairs (more work than
  pyiso8583 does), and like-for-like with sub-element fields left raw as pyiso8583 leaves them;
- routing read: parse + fields 2, 3, 4, 41, 42 vs `iso8583.decode`;
- response build: the 0110 built from the 0100 view (`respond`) vs `iso8583.encode` of the 0110.

    .venv/bin/python benchmarks/codec.py [--quick] [--json PATH] [--compiled]

`--compiled` also measures the same source compiled to C with mypyc (the modules setup.py
compiles when PASSERELLE_MYPYC=1, built into a temporary directory, nothing in the tree
changes): what the codec costs when installed as a compiled wheel, next to the pure-Python
figures, in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import iso8583

from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.codecs.pyiso_spec import pyiso_spec

TARGETS = {"full_decode": 5.0, "routing_read": 30.0, "response_build": 5.0}
VECTORS = Path(os.environ.get(
    "PASSERELLE_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "vectors" / "cb2a"
))
# The 0110 the acquirer path builds from a 0100: fields 38/39 added, request-only fields dropped.
ANSWER_CB2A: dict[int, Any] = {
    7: "0124163700", 12: None, 18: None, 22: None, 25: None, 33: None, 43: None, 47: None,
    38: "328422", 39: "00",
    55: (("0091", bytes.fromhex("07FAAFB2E41926243030")),), 59: (("0102", b"\x11"),),
}


def best_us(func: Callable[[], object], number: int, repeat: int) -> float:
    """Best per-call time in µs: the least disturbed run is the closest to the code's cost."""
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def iso87_equivalent(message: Message) -> tuple[bytes, dict[int, Any]]:
    """The same fields in the iso87-ascii layout (binary values become hex text)."""
    profile = get_profile("iso87-ascii")
    values: dict[int, Any] = {}
    for number, value in message.to_dict(subelements=False).items():
        spec = profile.specs[number]
        assert spec is not None
        text_field = isinstance(value, bytes) and spec.kind != "b"
        values[number] = value.hex().upper() if text_field else value
    return encode(profile, message.mti, values), values


def measure(name: str, wire: bytes, answer: dict[int, Any], number: int, repeat: int) -> dict:
    profile = get_profile(name)
    spec = pyiso_spec(profile)
    parse = Message.parse
    request = parse(wire, profile)
    answer_wire = request.respond("0110", answer)
    answer_doc, _ = iso8583.decode(answer_wire, spec)
    assert iso8583.encode(dict(answer_doc), spec)[0] == answer_wire  # same bytes both ways

    def routing() -> tuple:
        message = parse(wire, profile)
        get = message.get
        return get(2), get(3), get(4), get(41), get(42)

    def pyiso_decode() -> object:
        return iso8583.decode(wire, spec)

    times = {
        "pyiso8583_decode": best_us(pyiso_decode, number, repeat),
        "pyiso8583_encode": best_us(lambda: iso8583.encode(dict(answer_doc), spec), number, repeat),
        "full_decode": best_us(lambda: parse(wire, profile).to_dict(), number, repeat),
        "full_decode_raw_subelements": best_us(
            lambda: parse(wire, profile).to_dict(subelements=False), number, repeat),
        "routing_read": best_us(routing, number, repeat),
        "response_build": best_us(lambda: request.respond("0110", answer), number, repeat),
    }
    base_decode, base_encode = times["pyiso8583_decode"], times["pyiso8583_encode"]
    ratios = {
        "full_decode": base_decode / times["full_decode"],
        "full_decode_raw_subelements": base_decode / times["full_decode_raw_subelements"],
        "routing_read": base_decode / times["routing_read"],
        "response_build": base_encode / times["response_build"],
    }
    return {"profile": name, "bytes": len(wire), "us_per_op": times, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (under a minute)")
    parser.add_argument("--json", type=Path, help="write figures, ratios and targets here")
    parser.add_argument("--compiled", action="store_true",
                        help="also measure the codec compiled with mypyc (needs mypy)")
    args = parser.parse_args()
    number, repeat = (2000, 3) if args.quick else (20000, 7)

    cb2a_wire = bytes.fromhex((VECTORS / "0100-emv.hex").read_text().strip())
    cb2a_request = Message.parse(cb2a_wire, get_profile("cb2a"))
    iso_wire, _ = iso87_equivalent(cb2a_request)
    iso_answer = dict(ANSWER_CB2A, **{"55": None, "59": None})
    iso_answer = {int(n): v for n, v in iso_answer.items()}
    iso_answer[55] = cb_tlv(ANSWER_CB2A[55])  # binary field: bytes, written as hex
    iso_answer[59] = cb_tlv(ANSWER_CB2A[59]).hex().upper()  # text field: hex text
    results = [
        measure("cb2a", cb2a_wire, ANSWER_CB2A, number, repeat),
        measure("iso87-ascii", iso_wire, iso_answer, number, repeat),
    ]
    compiled = Path(sys.modules[Message.__module__].__file__ or "").suffix == ".so"
    build = "mypyc" if compiled else "pure Python"
    print_table(build, results)
    document: dict[str, Any] = {
        "benchmark": "codec",
        "quick": args.quick,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "targets": TARGETS,
        "build": build,
        "results": results,
    }
    if args.compiled:
        document["compiled"] = run_compiled(args.quick)
        print_table("mypyc", document["compiled"]["results"])
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))


def print_table(build: str, results: list[dict]) -> None:
    print(f"codec built as {build}")
    print(f"{'profile':12} {'operation':30} {'ours µs':>9} {'pyiso µs':>9} "
          f"{'ratio':>7} {'target':>7}")
    for result in results:
        times = result["us_per_op"]
        for op, ratio in result["ratios"].items():
            base = times["pyiso8583_encode" if op == "response_build" else "pyiso8583_decode"]
            target = TARGETS.get(op)
            shown = f"{target:.0f}x" if target else "-"
            print(f"{result['profile']:12} {op:30} {times[op]:9.2f} {base:9.2f} "
                  f"{ratio:6.1f}x {shown:>7}")


def compiled_modules() -> list[str]:
    """The modules setup.py compiles when PASSERELLE_MYPYC=1 (importing it builds nothing)."""
    spec = importlib.util.spec_from_file_location(
        "passerelle_setup", Path(__file__).resolve().parents[1] / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    return list(setup.COMPILED_MODULES)


def run_compiled(quick: bool) -> dict:
    """Compile the codec's hot modules with mypyc in a scratch copy and run this benchmark
    there, in a child process, so both builds are measured in the same run."""
    source = Path(__file__).resolve().parents[1] / "passerelle"
    with tempfile.TemporaryDirectory(prefix="passerelle-mypyc-") as scratch:
        package = Path(scratch) / "passerelle"
        shutil.copytree(source / "codecs", package / "codecs")
        shutil.copy(source / "__init__.py", package / "__init__.py")
        modules = [name for name in compiled_modules() if name.startswith("passerelle/codecs/")]
        subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=scratch, check=True,
                       stdout=subprocess.DEVNULL)
        out = Path(scratch) / "compiled.json"
        command = [sys.executable, __file__, "--json", str(out), *(["--quick"] if quick else [])]
        env = dict(os.environ, PYTHONPATH=scratch, PASSERELLE_VECTORS=str(VECTORS))
        subprocess.run(command, cwd=scratch, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def cb_tlv(items: tuple) -> bytes:
    """The CB TLV body of a sub-element tuple, to carry it in a layout without sub-elements."""
    return b"".join(bytes.fromhex(tag).rjust(2, b"\0") + bytes((len(v),)) + v for tag, v in items)


if __name__ == "__main__":
    main()
