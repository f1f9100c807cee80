"""The payShield backend: an asyncio client for the Thales host-command protocol.

Requests are pipelined: each carries a counter in the message header, and a reader task
per connection hands every answer to whoever waits for that header, in whatever order the
HSM answers. Several connections share the load; every command has a bounded wait that
includes connecting, so a dead or slow HSM costs a caller at most `timeout` seconds.

Keys are LMK-encrypted tokens from the settings (`payshield.keys`, name -> token); their
clear key-block header tells the usage, so a wrong key is refused before any I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import structlog

from passerelle.hsm import keys, tr31
from passerelle.hsm import payshield_wire as wire
from passerelle.hsm.base import MacAlgorithm, PanDigest
from passerelle.hsm.dukpt import Usage as DukptUsage
from passerelle.hsm.errors import (
    BadInputError,
    BadLengthError,
    HSMDeviceError,
    HSMError,
    HSMTimeoutError,
    HSMUnreachableError,
    NotSupportedError,
    UnknownKeyError,
    WrongKeyTypeError,
    a,
)
from passerelle.hsm.keys import Algorithm, KeyInfo, KeyType, KeyVersion

log = structlog.get_logger("passerelle.hsm")
_ALGORITHM_NAME = {"T": "tdes", "A": "aes", "H": "hmac"}


def _raise_for(code: bytes, error: str, what: str) -> None:
    """Map a payShield error code to our errors (the caller handles '01' where it means no)."""
    if error == wire.OK:
        return
    label = f"payShield {code.decode()} error {error} ({what})"
    if error in (wire.INVALID_INPUT, wire.BAD_PIN_BLOCK, wire.BAD_PIN_FORMAT, "24", "27"):
        raise BadInputError(label)
    if error == wire.LENGTH_ERROR:
        raise BadLengthError(label)
    if error == wire.NOT_SUPPORTED:
        raise NotSupportedError("payshield", what, f"error {error}")
    raise HSMDeviceError(label, error)


class _Connection:
    """One TCP connection and the answers it is waiting for, by header."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        header_length: int,
        max_in_flight: int,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.header_length = header_length
        self.pending: dict[bytes, asyncio.Future[bytes]] = {}
        self.slots = asyncio.Semaphore(max_in_flight)
        self.closed = False
        self.task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                size = int.from_bytes(await self.reader.readexactly(2), "big")
                payload = await self.reader.readexactly(size)
                future = self.pending.pop(payload[: self.header_length], None)
                if future is None:
                    # Its caller timed out, or the HSM's header length differs from ours.
                    log.warning("hsm.payshield_unmatched_answer", size=len(payload))
                elif not future.done():
                    future.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if not self.closed:
                log.warning("hsm.payshield_connection_lost", pending=len(self.pending))
            self.closed = True
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(HSMUnreachableError("payShield closed the connection"))
            self.pending.clear()

    async def close(self) -> None:
        self.closed = True
        self.writer.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await self.task
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class PayShieldHSM:
    backend = "payshield"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        keys: dict[str, str] | None = None,
        header_length: int = 4,
        timeout: float = 2.0,
        connections: int = 2,
        max_in_flight: int = 64,
        zone_pin_keys: tuple[str, ...] = (),
    ) -> None:
        if not 1 <= header_length <= 8:
            raise BadInputError("payShield header length is 1 to 8 characters")
        self.host, self.port = host, port
        self.keys = dict(keys or {})
        for name, token in self.keys.items():
            if not token.startswith("S"):
                raise BadInputError(f"payShield key {name!r}: only key-block tokens ('S...')")
            try:
                tr31.parse_header(token[1:])
            except HSMError as exc:
                raise BadInputError(
                    f"payShield key {name!r} is not a valid key block: {exc}"
                ) from None
        self.zone_pin_keys = frozenset(zone_pin_keys)  # ZPKs: translating from one is CC, not CA
        self.header_length = header_length
        self.timeout = timeout
        self.max_in_flight = min(max_in_flight, 10**header_length // 2)
        self._conns: list[_Connection | None] = [None] * max(1, connections)
        self._locks = [asyncio.Lock() for _ in self._conns]
        self._round_robin = itertools.cycle(range(len(self._conns)))
        self._counter = itertools.count()

    # --- transport ---

    async def _connection(self, index: int) -> _Connection:
        conn = self._conns[index]
        if conn is not None and not conn.closed:
            return conn
        async with self._locks[index]:
            conn = self._conns[index]
            if conn is None or conn.closed:
                try:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                except OSError as exc:
                    raise HSMUnreachableError(
                        f"payShield {self.host}:{self.port} unreachable ({exc.strerror or exc})"
                    ) from None
                conn = _Connection(reader, writer, self.header_length, self.max_in_flight)
                log.info("hsm.payshield_connected", host=self.host, port=self.port, slot=index)
                self._conns[index] = conn
        return conn

    def _header(self, conn: _Connection) -> bytes:
        modulo = 10**self.header_length
        while True:
            header = str(next(self._counter) % modulo).zfill(self.header_length).encode()
            if header not in conn.pending:
                return header

    async def _exchange(self, command: bytes, fields: bytes) -> bytes:
        conn = await self._connection(next(self._round_robin))
        async with conn.slots:
            if conn.closed:
                raise HSMUnreachableError("payShield connection lost; retry reconnects")
            header = self._header(conn)
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            conn.pending[header] = future
            try:
                conn.writer.write(wire.encode_frame(header + command + fields))
                return await future
            finally:
                conn.pending.pop(header, None)

    async def command(self, command: bytes, fields: bytes = b"") -> tuple[str, wire.Reader]:
        """Send one command; returns the error code and a reader over the answer's fields."""
        try:
            async with asyncio.timeout(self.timeout):
                payload = await self._exchange(command, fields)
        except TimeoutError:
            log.warning("hsm.payshield_timeout", command=command.decode(), timeout=self.timeout)
            raise HSMTimeoutError(
                f"payShield {command.decode()} got no answer within {self.timeout}s"
            ) from None
        if len(payload) < self.header_length + 4:
            raise HSMDeviceError(f"payShield answer of {len(payload)} bytes is too short")
        _, code, rest = wire.split(payload, self.header_length)
        if code != wire.response_code(command):
            raise HSMDeviceError(f"payShield answered {code!r} to {command.decode()}")
        answer = wire.Reader(rest, answer=True)
        return answer.text(2), answer

    # --- keys ---

    def _token(self, name: str, *types: KeyType) -> tuple[str, tr31.Header]:
        token = self.keys.get(name)
        if token is None:
            raise UnknownKeyError(name)
        header, _ = tr31.parse_header(token[1:])
        key_type = keys.TR31_USAGE.get(header.usage)
        if key_type not in types:
            wanted = " or ".join(a(t) for t in types) + " key"
            raise WrongKeyTypeError(name, f"{key_type or header.usage}", wanted)
        return token, header

    def _info(self, name: str) -> KeyInfo:
        token = self.keys.get(name)
        if token is None:
            raise UnknownKeyError(name)
        header, _ = tr31.parse_header(token[1:])
        return KeyInfo(
            name,
            keys.TR31_USAGE.get(header.usage, KeyType.KBPK),
            keys.TR31_ALGORITHM.get(header.algorithm, Algorithm.TDES),
            0,
            (KeyVersion(int(header.key_version) if header.key_version.isdigit() else 0, "", ""),),
        )

    async def list_keys(self) -> list[KeyInfo]:
        return [self._info(n) for n in sorted(self.keys)]

    async def key_info(self, name: str) -> KeyInfo:
        return self._info(name)

    async def generate_key(
        self,
        name: str,
        key_type: KeyType,
        algorithm: Algorithm | None = None,
        length: int | None = None,
    ) -> KeyInfo:
        raise NotSupportedError("payshield", "key generation", "keys are managed on the HSM")

    async def rotate_key(self, name: str) -> KeyInfo:
        raise NotSupportedError("payshield", "key rotation", "keys are managed on the HSM")

    async def import_key(self, name: str, key_block: str, kbpk: str) -> KeyInfo:
        raise NotSupportedError("payshield", "TR-31 key import", "import on the HSM console")

    # --- operations ---

    async def diagnostics(self) -> dict[str, str]:
        error, answer = await self.command(b"NC")
        _raise_for(b"NC", error, "diagnostics")
        return {
            "backend": self.backend,
            "lmk_check": answer.text(16),
            "firmware": answer.rest().decode("ascii", "replace"),
        }

    async def pan_hmac(self, pan: str, version: int | None = None) -> PanDigest:
        raise NotSupportedError("payshield", "PAN HMAC", "not among the host commands used")

    async def pan_hmac_versions(self) -> list[int]:
        raise NotSupportedError("payshield", "PAN HMAC", "not among the host commands used")

    async def encrypt_data(self, key: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        raise NotSupportedError("payshield", "AES-GCM", "not among the host commands used")

    async def decrypt_data(self, key: str, blob: bytes, aad: bytes = b"") -> bytes:
        raise NotSupportedError("payshield", "AES-GCM", "not among the host commands used")

    async def translate_pin(
        self,
        pin_block: bytes,
        *,
        pan: str,
        source_key: str,
        source_format: int,
        dest_key: str,
        dest_format: int,
        ksn: bytes | None = None,
    ) -> bytes:
        for fmt in (source_format, dest_format):
            if fmt not in wire.PIN_FORMAT_CODE:
                raise BadInputError(f"PIN block format {fmt} is not supported (0, 1, 3 or 4)")
        if not (pan.isascii() and pan.isdigit() and 1 <= len(pan) <= 19):
            raise BadInputError("a PAN is 1 to 19 decimal digits")
        size = 16 if source_format == 4 else 8
        if len(pin_block) != size:
            raise BadLengthError(f"a format {source_format} PIN block is {size} bytes")
        dst, _ = self._token(dest_key, KeyType.PIN)
        src, src_header = self._token(source_key, KeyType.PIN, KeyType.BDK)
        long_form = 4 in (source_format, dest_format)
        account = f"{len(pan):02d}{pan}" if long_form else wire.account_field(pan)
        block_hex = pin_block.hex().upper()
        dst_code = wire.PIN_FORMAT_CODE[dest_format]
        if keys.TR31_USAGE.get(src_header.usage) is KeyType.BDK:
            if src_header.algorithm != "T" or source_format != 0 or ksn is None or len(ksn) != 10:
                raise NotSupportedError(
                    "payshield",
                    "DUKPT PIN translation",
                    "G0 takes TDES DUKPT, a format 0 block and a 10-byte KSN",
                )
            command = b"G0"
            fields = f"{src}{dst}A05{ksn.hex().upper()}{block_hex}{dst_code}{account}"
        else:
            if ksn is not None:
                raise BadInputError(f"key {source_key!r} is not a BDK: a KSN makes no sense")
            command = b"CC" if source_key in self.zone_pin_keys else b"CA"
            src_code = wire.PIN_FORMAT_CODE[source_format]
            fields = f"{src}{dst}12{block_hex}{src_code}{dst_code}{account}"
        error, answer = await self.command(command, fields.encode("ascii"))
        _raise_for(command, error, "PIN translation")
        answer.number(2)  # PIN length, which we do not need
        return answer.hex(32 if dest_format == 4 else 16)

    def _mac_fields(self, key: str, data: bytes, algorithm: MacAlgorithm, length: int) -> bytes:
        algorithm = MacAlgorithm(algorithm)
        token, header = self._token(key, KeyType.MAC)
        wanted = "T" if algorithm is MacAlgorithm.RETAIL else "A"
        if header.algorithm != wanted:
            raise WrongKeyTypeError(
                key,
                f"{_ALGORITHM_NAME.get(header.algorithm, header.algorithm)} mac",
                f"{a(_ALGORITHM_NAME[wanted])} mac key for {algorithm}",
            )
        if length not in (4, 8):
            raise BadLengthError(f"payShield returns a 4 or 8-byte MAC, not {length}")
        if len(data) > 0x7FFF:
            raise BadLengthError("payShield MACs at most 32767 bytes per command")
        size = "1" if length == 8 else "0"
        alg, padding = (
            (wire.MAC_RETAIL, "1") if algorithm is MacAlgorithm.RETAIL else (wire.MAC_CMAC, "0")
        )
        head = f"00{size}{alg}{padding}FFF{token}{len(data):04X}"
        return head.encode("ascii") + data

    async def generate_mac(
        self,
        key: str,
        data: bytes,
        algorithm: MacAlgorithm = MacAlgorithm.RETAIL,
        length: int = 8,
    ) -> bytes:
        error, answer = await self.command(b"M6", self._mac_fields(key, data, algorithm, length))
        _raise_for(b"M6", error, "MAC generation")
        return answer.hex(length * 2)

    async def verify_mac(
        self, key: str, data: bytes, mac: bytes, algorithm: MacAlgorithm = MacAlgorithm.RETAIL
    ) -> bool:
        fields = self._mac_fields(key, data, algorithm, len(mac)) + mac.hex().upper().encode()
        error, _ = await self.command(b"M8", fields)
        if error == wire.VERIFY_FAILED:
            return False
        _raise_for(b"M8", error, "MAC verification")
        return True

    def _kq_fields(
        self,
        mode: str,
        key: str,
        *,
        pan: str,
        psn: str,
        atc: bytes,
        un: bytes,
        data: bytes,
        arqc: bytes,
        arc: bytes = b"",
    ) -> bytes:
        token, header = self._token(key, KeyType.EMV_AC)
        if header.algorithm != "T":
            raise WrongKeyTypeError(key, f"{header.algorithm} emv-ac", "a tdes emv-ac key")
        if not (pan.isascii() and pan.isdigit() and psn.isascii() and psn.isdigit()):
            raise BadInputError("PAN and PAN sequence number must be decimal digits")
        if len(atc) != 2 or len(un) != 4 or len(arqc) != 8 or len(data) > 255:
            raise BadLengthError("ATC 2 bytes, UN 4 bytes, ARQC 8 bytes, data at most 255 bytes")
        head = f"{mode}1{token}".encode("ascii")
        return (
            head
            + wire.pan_psn_field(pan, psn)
            + atc
            + un
            + f"{len(data):02X}".encode()
            + data
            + b";"
            + arqc
            + arc
        )

    async def verify_arqc(
        self,
        key: str,
        *,
        pan: str,
        psn: str,
        atc: bytes,
        unpredictable_number: bytes,
        data: bytes,
        arqc: bytes,
    ) -> bool:
        fields = self._kq_fields(
            "0", key, pan=pan, psn=psn, atc=atc, un=unpredictable_number, data=data, arqc=arqc
        )
        error, _ = await self.command(b"KQ", fields)
        if error == wire.VERIFY_FAILED:
            return False
        _raise_for(b"KQ", error, "ARQC verification")
        return True

    async def generate_arpc(
        self, key: str, *, pan: str, psn: str, arqc: bytes, arc: bytes
    ) -> bytes:
        if len(arc) != 2:
            raise BadLengthError("the authorisation response code is 2 bytes")
        fields = self._kq_fields(
            "2", key, pan=pan, psn=psn, atc=bytes(2), un=bytes(4), data=b"", arqc=arqc, arc=arc
        )
        error, answer = await self.command(b"KQ", fields)
        _raise_for(b"KQ", error, "ARPC generation")
        return answer.take(8)

    async def derive_dukpt(self, bdk: str, ksn: bytes, usage: DukptUsage) -> str:
        raise NotSupportedError("payshield", "DUKPT key check", "keys stay inside the HSM")

    async def reload(self) -> None:
        """Keys come from the settings: a reload is a new PayShieldHSM."""

    async def close(self) -> None:
        for conn in self._conns:
            if conn is not None:
                await conn.close()
        self._conns = [None] * len(self._conns)


__all__ = ["HSMError", "PayShieldHSM"]
