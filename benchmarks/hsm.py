"""HSM benchmark: operations per second per backend, and event-loop responsiveness.

For each backend (soft, pkcs11 on a SoftHSMv2 token made for the run, payshield against the
simulator in a child process over a real socket) and each operation the gateway does in
volume (PAN HMAC for card search and storage, AES-GCM for stored data, MAC for acquirer
messages), `--concurrency` tasks issue the operation for `--seconds` seconds. Meanwhile a
probe task asks to wake every 2 ms and records how late it wakes: the loop lag. PKCS#11
calls run on a worker thread (results handed back in batches), so the loop must stay responsive; the
`pkcs11-on-loop` row runs the same token calls directly on the loop thread to show what
that would cost.

    .venv/bin/python benchmarks/hsm.py --quick --json benchmarks/results/hsm.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pkcs11

from passerelle.hsm import HSM, MacAlgorithm
from passerelle.hsm.keys import Algorithm, KeyType
from passerelle.hsm.keystore import Keystore, create_kek
from passerelle.hsm.payshield import PayShieldHSM
from passerelle.hsm.pkcs11_token import Pkcs11HSM
from passerelle.hsm.soft import SoftHSM
from passerelle.sim.payshield import PayShieldSimulator

SOFTHSM_LIB = "/usr/lib/softhsm/libsofthsm2.so"
PAN = "4970101234567890"
PAYLOAD = secrets.token_bytes(64)  # about one stored card/auth record
MESSAGE = secrets.token_bytes(200)  # about one acquirer ISO 8583 message
PROBE_INTERVAL = 0.002
TARGETS = {  # ops/s floors on a 2-core machine, and the loop lag ceiling
    "soft.pan_hmac": 20000,
    "soft.aes_gcm": 20000,
    "soft.mac_retail": 5000,
    "pkcs11.pan_hmac": 2000,
    "pkcs11.aes_gcm": 2000,
    "pkcs11.mac_cmac": 2000,
    "payshield.mac_retail": 1000,
    "payshield.mac_cmac": 1000,
    "loop_lag_p99_ms": 10.0,
}


async def _measure(op: Callable[[], Awaitable[object]], seconds: float, concurrency: int) -> dict:
    """Run `op` from `concurrency` tasks for `seconds`; ops/s and the loop lag meanwhile."""
    stop = time.perf_counter() + seconds
    lags: list[float] = []
    count = 0

    async def probe() -> None:
        while time.perf_counter() < stop:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL)
            lags.append(max(0.0, time.perf_counter() - before - PROBE_INTERVAL))

    async def worker() -> None:
        # Each op stands for one request: give the loop a turn after it, as a handler would.
        nonlocal count
        while time.perf_counter() < stop:
            await op()
            count += 1
            await asyncio.sleep(0)

    start = time.perf_counter()
    await asyncio.gather(probe(), *(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lags.sort()
    return {
        "ops": count,
        "ops_per_s": round(count / elapsed, 1),
        "loop_lag_ms": {
            "p50": round(statistics.median(lags) * 1000, 3) if lags else None,
            "p99": round(lags[int(len(lags) * 0.99) - 1] * 1000, 3) if lags else None,
            "max": round(lags[-1] * 1000, 3) if lags else None,
            "samples": len(lags),
        },
    }


def _ops(hsm: HSM, kind: str) -> dict[str, Callable[[], Awaitable[object]]]:
    ops: dict[str, Callable[[], Awaitable[object]]] = {}
    if kind in ("soft", "pkcs11"):
        ops["pan_hmac"] = lambda: hsm.pan_hmac(PAN)
        ops["aes_gcm"] = lambda: hsm.encrypt_data("data", PAYLOAD)
    if kind in ("soft", "payshield"):
        ops["mac_retail"] = lambda: hsm.generate_mac("retail", MESSAGE, MacAlgorithm.RETAIL)
    ops["mac_cmac"] = lambda: hsm.generate_mac("cmac", MESSAGE, MacAlgorithm.AES_CMAC)
    return ops


KEYS = [
    ("pan-hmac", KeyType.PAN_HMAC, Algorithm.HMAC, 32),
    ("data", KeyType.DATA, Algorithm.AES, 32),
    ("cmac", KeyType.MAC, Algorithm.AES, 16),
    ("retail", KeyType.MAC, Algorithm.TDES, 16),
]


def _soft(tmp: Path) -> SoftHSM:
    create_kek(tmp / "kek")
    store = Keystore(tmp / "keystore.json", tmp / "kek")
    for name, key_type, algorithm, length in KEYS:
        store.add(name, key_type, algorithm, secrets.token_bytes(length))
    return SoftHSM(tmp / "keystore.json", tmp / "kek")


def _softhsm_token(tmp: Path) -> str:
    (tmp / "tokens").mkdir()
    (tmp / "softhsm2.conf").write_text(f"directories.tokendir = {tmp / 'tokens'}\n")
    os.environ["SOFTHSM2_CONF"] = str(tmp / "softhsm2.conf")
    pin = secrets.token_hex(4)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            pin,
            "--so-pin",
            secrets.token_hex(4),
        ],
        check=True,
        capture_output=True,
    )
    return pin


def _run_simulator(lmk: bytes, ports: multiprocessing.Queue) -> None:
    async def main() -> None:
        sim = PayShieldSimulator(lmk=lmk)
        _, port = await sim.start()
        ports.put(port)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _bench_backend(kind: str, hsm: HSM, seconds: float, concurrency: int, out: dict) -> None:
    results = out.setdefault(kind, {})
    for op_name, op in _ops(hsm, kind).items():
        await op()  # warm caches and connections
        results[op_name] = await _measure(op, seconds, concurrency)
        print(
            f"{kind:10} {op_name:11} {results[op_name]['ops_per_s']:>10.0f} ops/s   "
            f"loop lag p99 {results[op_name]['loop_lag_ms']['p99']} ms",
            flush=True,
        )


async def _pkcs11_on_loop(hsm: object, seconds: float, out: dict) -> None:
    """The same token calls made on the loop thread: what the worker thread spares us."""

    key = await hsm._run(  # type: ignore[attr-defined]
        lambda: hsm._typed("pan-hmac", KeyType.PAN_HMAC)[1]  # type: ignore[attr-defined]
    )

    async def blocking_hmac() -> object:
        # Same session's key, but C_Sign runs on the loop thread (the pool stays idle).
        return key.sign(PAN.encode(), mechanism=pkcs11.Mechanism.SHA256_HMAC)

    out["pkcs11-on-loop"] = {"pan_hmac": await _measure(blocking_hmac, seconds, 1)}
    r = out["pkcs11-on-loop"]["pan_hmac"]
    print(
        f"{'pkcs11*':10} {'pan_hmac':11} {r['ops_per_s']:>10.0f} ops/s   "
        f"loop lag p99 {r['loop_lag_ms']['p99']} ms  (*calls on the loop thread)",
        flush=True,
    )


async def main(args: argparse.Namespace) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "soft").mkdir()
        soft = _soft(tmp / "soft")
        await _bench_backend("soft", soft, args.seconds, args.concurrency, results)
        await soft.close()

        if shutil.which("softhsm2-util") and Path(SOFTHSM_LIB).exists():
            (tmp / "p11").mkdir()
            pin = _softhsm_token(tmp / "p11")
            p11 = Pkcs11HSM(SOFTHSM_LIB, "bench", pin, threads=args.threads)
            for name, key_type, algorithm, length in KEYS:
                if algorithm is not Algorithm.TDES:
                    await p11.generate_key(name, key_type, algorithm, length)
            await _bench_backend("pkcs11", p11, args.seconds, args.concurrency, results)
            await _pkcs11_on_loop(p11, args.seconds, results)
            await p11.close()
        else:
            print("pkcs11: skipped (softhsm2 not installed)")

        lmk = secrets.token_bytes(32)
        ports: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=_run_simulator, args=(lmk, ports), daemon=True
        )
        child.start()
        try:
            port = ports.get(timeout=30)
            wrapper = PayShieldSimulator(lmk=lmk)
            tokens = {
                name: wrapper.wrap_key(key_type, algorithm, secrets.token_bytes(length))
                for name, key_type, algorithm, length in KEYS
                if algorithm is not Algorithm.HMAC
            }
            ps = PayShieldHSM(
                "127.0.0.1", port, keys=tokens, connections=args.connections, timeout=10.0
            )
            await _bench_backend("payshield", ps, args.seconds, args.concurrency, results)
            await ps.close()
        finally:
            child.terminate()
            child.join()
    return results


def _report(results: dict, args: argparse.Namespace) -> dict:
    figures = {f"{b}.{op}": r["ops_per_s"] for b, ops in results.items() for op, r in ops.items()}
    lag_p99 = max(
        (r["loop_lag_ms"]["p99"] or 0.0)
        for b, ops in results.items()
        if b != "pkcs11-on-loop"
        for r in ops.values()
    )
    soft = results.get("soft", {})
    ratios = {
        f"{b}.{op}/soft": round(r["ops_per_s"] / soft[op]["ops_per_s"], 4)
        for b, ops in results.items()
        if b not in ("soft", "pkcs11-on-loop")
        for op, r in ops.items()
        if op in soft
    }
    met = {k: figures.get(k, 0) >= v for k, v in TARGETS.items() if k in figures}
    met["loop_lag_p99_ms"] = lag_p99 <= TARGETS["loop_lag_p99_ms"]
    return {
        "benchmark": "hsm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/hsm.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "settings": {
            "seconds_per_op": args.seconds,
            "concurrency": args.concurrency,
            "pkcs11_threads": args.threads,
            "payshield_connections": args.connections,
            "payload_bytes": len(PAYLOAD),
            "mac_message_bytes": len(MESSAGE),
        },
        "figures": figures,
        "loop_lag_p99_ms_worst_off_loop": lag_p99,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": met,
        "results": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 20 s in all")
    parser.add_argument("--seconds", type=float, help="per backend and operation (default 5)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="PKCS#11 worker threads")
    parser.add_argument("--connections", type=int, default=2, help="payShield connections")
    parser.add_argument("--json", type=Path, help="write the figures as one JSON object")
    arguments = parser.parse_args()
    if arguments.seconds is None:
        arguments.seconds = 1.5 if arguments.quick else 5.0
    report = _report(asyncio.run(main(arguments)), arguments)
    print(json.dumps({"ratios": report["ratios"], "targets_met": report["targets_met"]}, indent=1))
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0 if all(report["targets_met"].values()) else 1)
