"""A payShield-wire simulator: real sockets, pipelined, many connections.

It answers the host commands the gateway uses (NC, CA, CC, G0, M6, M8, KQ) with the soft
algorithms, under a simulated LMK: keys travel as "S" + TR-31 version D key blocks wrapped
under an AES-256 LMK, so a token is bound to its usage exactly as a key-block LMK does.
Each request is answered by its own task, so a slow command does not hold up the ones
behind it and answers may come back out of order, as from a real multi-threaded HSM; the
client matches them by header. `delay` adds latency per request: seconds, or an awaitable
that holds the answer until it completes.

    python -m passerelle.sim.payshield --port 1500 [--lmk-file lmk.hex]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import secrets
from collections.abc import Awaitable, Callable

from passerelle.hsm import emv, engine, keys, tr31
from passerelle.hsm import payshield_wire as wire
from passerelle.hsm.base import MacAlgorithm
from passerelle.hsm.engine import ClearKey
from passerelle.hsm.errors import (
    BadInputError,
    BadLengthError,
    HSMError,
    NotSupportedError,
    VerificationError,
    WrongKeyTypeError,
)
from passerelle.hsm.keys import Algorithm, KeyType
from passerelle.hsm.keystore import read_kek

_ALGORITHM_CODE = {Algorithm.TDES: "T", Algorithm.AES: "A", Algorithm.HMAC: "H"}
FIRMWARE = "1500-0900"


def _error_code(exc: HSMError) -> str:
    if isinstance(exc, WrongKeyTypeError):
        return wire.BAD_KEY_TYPE
    if isinstance(exc, VerificationError):
        return wire.KEY_TOKEN_ERROR
    if isinstance(exc, BadLengthError):
        return wire.LENGTH_ERROR
    if isinstance(exc, NotSupportedError):
        return wire.NOT_SUPPORTED
    if isinstance(exc, BadInputError):
        return wire.BAD_PIN_BLOCK if "PIN" in str(exc) else wire.INVALID_INPUT
    return wire.INVALID_INPUT


class PayShieldSimulator:
    def __init__(
        self,
        *,
        lmk: bytes | None = None,
        header_length: int = 4,
        delay: Callable[[bytes], float | Awaitable[object]] | None = None,
    ) -> None:
        self.lmk = lmk or secrets.token_bytes(32)
        self.header_length = header_length
        self.delay = delay
        self.requests = 0
        self._keys: dict[tuple[str, str], ClearKey] = {}  # unwrapped LMK tokens
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # --- key ceremony helpers ---

    def wrap_key(self, key_type: KeyType, algorithm: Algorithm, value: bytes) -> str:
        """The LMK token of a clear key (what form-key/import commands return on a real HSM)."""
        keys.check_type("(new key)", key_type, algorithm)
        keys.check_length("(new key)", algorithm, len(value))
        block = tr31.wrap(
            self.lmk,
            value,
            version="D",
            usage=keys.USAGE_OF[key_type],
            algorithm=_ALGORITHM_CODE[algorithm],
            mode_of_use="N",
            exportability="N",
        )
        return "S" + block

    def _unwrap(self, token: str, label: str) -> ClearKey:
        cached = self._keys.get((token, label))
        if cached is not None:
            return cached
        header, value = tr31.unwrap(self.lmk, token)
        key_type = keys.TR31_USAGE.get(header.usage)
        algorithm = keys.TR31_ALGORITHM.get(header.algorithm)
        if key_type is None or algorithm is None:
            raise WrongKeyTypeError(label, header.usage, "a usable key")
        key = ClearKey(label, key_type, algorithm, value)
        if len(self._keys) >= 4096:  # a real HSM has the key cache in hardware; keep ours small
            self._keys.clear()
        self._keys[(token, label)] = key
        return key

    # --- server ---

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                payload = await reader.readexactly(size)
                task = asyncio.create_task(self._answer(payload, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, payload: bytes, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        if self.delay is not None:
            pause = self.delay(payload)
            if inspect.isawaitable(pause):
                await pause  # held until the test says so
            elif pause > 0:
                await asyncio.sleep(pause)
        answer = self.handle(payload)
        if answer is not None and not writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(wire.encode_frame(answer))

    def handle(self, payload: bytes) -> bytes | None:
        """One request payload -> one answer payload (None if not even a header came)."""
        if len(payload) < self.header_length + 2:
            return None
        header, command, fields = wire.split(payload, self.header_length)
        handler = getattr(self, f"_cmd_{command.decode('ascii', 'replace')}", None)
        try:
            reply = wire.response_code(command)
        except BadInputError:
            return header + b"ZZ" + wire.NOT_SUPPORTED.encode()
        if handler is None:
            return header + reply + wire.NOT_SUPPORTED.encode()
        try:
            error, data = handler(wire.Reader(fields))
        except HSMError as exc:
            error, data = _error_code(exc), b""
        return header + reply + error.encode() + data

    # --- commands ---

    def _cmd_NC(self, r: wire.Reader) -> tuple[str, bytes]:
        check = keys.kcv(Algorithm.AES, self.lmk).ljust(16, "0")
        return wire.OK, (check + FIRMWARE).encode()

    def _translate(self, r: wire.Reader, dukpt: bool) -> tuple[str, bytes]:
        src = self._unwrap(r.key(), "source key")
        dst = self._unwrap(r.key(), "destination key")
        ksn = None
        if dukpt:
            r.text(3)  # KSN descriptor
            ksn = r.hex(20)
            src_fmt = 0
        else:
            r.number(2)  # maximum PIN length
        # As on the HSM, the source key's algorithm gives the block size (AES: format 4, 32H).
        block = r.hex(32 if src.algorithm is Algorithm.AES and not dukpt else 16)
        if not dukpt:
            src_fmt = _format(r.text(2))
        dst_fmt = _format(r.text(2))
        # Format 4 binds the whole PAN (2-digit length + digits); formats 0/3 use 12 digits
        # without the check digit, so a placeholder check digit rebuilds an equivalent PAN.
        pan = r.text(r.number(2)) if 4 in (src_fmt, dst_fmt) else r.text(12) + "0"
        r.end()
        out = engine.translate_pin(
            src, dst, block, pan=pan, src_fmt=src_fmt, dst_fmt=dst_fmt, ksn=ksn
        )
        pin_length = "12"  # a real HSM returns the PIN length; clients here ignore it
        return wire.OK, f"{pin_length}{out.hex().upper()}{wire.PIN_FORMAT_CODE[dst_fmt]}".encode()

    def _cmd_CA(self, r: wire.Reader) -> tuple[str, bytes]:
        return self._translate(r, dukpt=False)

    def _cmd_CC(self, r: wire.Reader) -> tuple[str, bytes]:
        return self._translate(r, dukpt=False)

    def _cmd_G0(self, r: wire.Reader) -> tuple[str, bytes]:
        return self._translate(r, dukpt=True)

    def _mac_request(self, r: wire.Reader) -> tuple[ClearKey, bytes, MacAlgorithm, int]:
        mode, input_format, size, alg, _padding = (r.text(1) for _ in range(5))
        if mode != "0" or input_format != "0":
            raise NotSupportedError("simulator", f"MAC mode {mode}/input format {input_format}")
        if r.text(3) != "FFF":
            raise BadInputError("MAC key type must be FFF (key block)")
        key = self._unwrap(r.key(), "MAC key")
        data = r.take(r.number(4, 16))
        algorithm = {wire.MAC_RETAIL: MacAlgorithm.RETAIL, wire.MAC_CMAC: MacAlgorithm.AES_CMAC}
        if alg not in algorithm:
            raise NotSupportedError("simulator", f"MAC algorithm {alg}")
        return key, data, algorithm[alg], 8 if size == "1" else 4

    def _cmd_M6(self, r: wire.Reader) -> tuple[str, bytes]:
        key, data, algorithm, length = self._mac_request(r)
        r.end()
        return wire.OK, engine.generate_mac(key, data, algorithm, length).hex().upper().encode()

    def _cmd_M8(self, r: wire.Reader) -> tuple[str, bytes]:
        key, data, algorithm, length = self._mac_request(r)
        mac = r.hex(length * 2)
        r.end()
        ok = engine.verify_mac(key, data, mac, algorithm)
        return (wire.OK if ok else wire.VERIFY_FAILED), b""

    def _cmd_KQ(self, r: wire.Reader) -> tuple[str, bytes]:
        mode, scheme = r.text(1), r.text(1)
        if scheme != "1":
            raise NotSupportedError("simulator", f"KQ scheme {scheme}")
        key = self._unwrap(r.key(), "MK-AC")
        digits = r.take(8).hex()
        atc, un = r.take(2), r.take(4)
        data = r.take(r.number(2, 16))
        if r.take(1) != b";":
            raise BadInputError("KQ: delimiter ';' missing after transaction data")
        arqc = r.take(8)
        pan, psn = digits[:-2], digits[-2:]
        if mode in ("0", "1") and not engine.verify_arqc(
            key, pan=pan, psn=psn, atc=atc, un=un, data=data, arqc=arqc
        ):
            return wire.VERIFY_FAILED, b""
        if mode == "0":
            r.end()
            return wire.OK, b""
        arc = r.take(2)
        r.end()
        key.need(KeyType.EMV_AC, Algorithm.TDES)
        return wire.OK, emv.arpc_method1(emv.icc_master_key(key.value, pan, psn), arqc, arc)


def _format(code: str) -> int:
    try:
        return wire.PIN_FORMAT_OF[code]
    except KeyError:
        raise BadInputError(f"PIN block format code {code!r} is not supported") from None


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1500)
    parser.add_argument("--header-length", type=int, default=4)
    parser.add_argument(
        "--lmk-file", help="32-byte LMK (hex, mode 0600) so tokens made with wrap_key() work"
    )
    args = parser.parse_args()
    lmk = read_kek(args.lmk_file) if args.lmk_file else None
    sim = PayShieldSimulator(lmk=lmk, header_length=args.header_length)
    host, port = await sim.start(args.host, args.port)
    print(f"payShield simulator on {host}:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
