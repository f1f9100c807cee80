"""The Thales payShield host-command wire format, sans I/O (shared by client and simulator).

A frame is a 2-byte big-endian length, then the message header (a fixed number of
characters, echoed back unchanged: we put a counter there to match pipelined answers),
the 2-character command code and its fields. The answer's code is the command's with the
second letter advanced by one (NC -> ND), followed by a 2-digit error code ("00" is OK).
Fields are ASCII except a few binary ones (KQ's PAN, ATC, UN, data, ARQC).

Keys travel as tokens encrypted under the HSM's local master key (LMK): here the key
block form, "S" + a TR-31 version D block, whose clear header tells the key's usage.
"""

from __future__ import annotations

from typing import NoReturn

from passerelle.hsm.errors import BadInputError, BadLengthError, HSMDeviceError, HSMError

MAX_FRAME = 0xFFFF

#: ISO 9564 format -> payShield PIN block format code.
PIN_FORMAT_CODE = {0: "01", 1: "05", 3: "47", 4: "48"}
PIN_FORMAT_OF = {v: k for k, v in PIN_FORMAT_CODE.items()}

#: M6/M8 MAC algorithm codes.
MAC_RETAIL = "3"  # ISO 9797-1 MAC algorithm 3
MAC_CMAC = "6"  # AES-CMAC

#: Error codes we produce and understand.
OK = "00"
VERIFY_FAILED = "01"
BAD_KEY_TYPE = "04"
KEY_TOKEN_ERROR = "10"
INVALID_INPUT = "15"
BAD_PIN_BLOCK = "20"
BAD_PIN_FORMAT = "23"
NOT_SUPPORTED = "68"
LENGTH_ERROR = "80"


def response_code(command: bytes) -> bytes:
    """NC -> ND, CA -> CB, M6 -> M7, KQ -> KR ..."""
    if len(command) != 2 or not command.isalnum() or not command.isascii() or command[1] == 0x7A:
        raise BadInputError(f"a payShield command code is 2 letters or digits, not {command!r}")
    return command[:1] + bytes([command[1] + 1])


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise BadLengthError(f"a payShield message is at most {MAX_FRAME} bytes")
    return len(payload).to_bytes(2, "big") + payload


class FrameDecoder:
    """Feed bytes, get whole payloads (header + command + fields)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 2:
            size = int.from_bytes(self._buf[:2], "big")
            if len(self._buf) < 2 + size:
                break
            out.append(bytes(self._buf[2 : 2 + size]))
            del self._buf[: 2 + size]
        return out


class Reader:
    """A cursor over the fields of one message.

    Malformed requests raise BadLengthError/BadInputError (the simulator answers them with
    an error code); with `answer=True` a malformed HSM answer raises HSMDeviceError, since
    then the fault is the device's, not the caller's.
    """

    def __init__(self, data: bytes, *, answer: bool = False) -> None:
        self.data, self.pos, self.answer = data, 0, answer

    def _fail(self, kind: type[HSMError], message: str) -> NoReturn:
        if self.answer:
            raise HSMDeviceError(f"malformed payShield answer: {message}")
        raise kind(message)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            self._fail(BadLengthError, f"message ends before byte {self.pos + n} ({n}-byte field)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def text(self, n: int) -> str:
        raw = self.take(n)
        if not raw.isascii():
            self._fail(BadInputError, f"non-ASCII field at byte {self.pos - n}")
        return raw.decode("ascii")

    def number(self, n: int, base: int = 10) -> int:
        raw = self.text(n)
        digits = "0123456789" if base == 10 else "0123456789ABCDEFabcdef"
        if not raw or set(raw) - set(digits):
            self._fail(BadInputError, f"field {raw!r} at byte {self.pos - n} is not a number")
        return int(raw, base)

    def hex(self, n: int) -> bytes:
        """n hexadecimal characters, as n/2 bytes."""
        raw = self.text(n)
        if set(raw) - set("0123456789ABCDEFabcdef"):
            self._fail(BadInputError, f"field at byte {self.pos - n} is not hexadecimal")
        return bytes.fromhex(raw)

    def key(self) -> str:
        """A key token: 'S' + key block (its length is in the block's own header)."""
        if self.text(1) != "S":
            self._fail(BadInputError, f"key at byte {self.pos - 1} is not a key block ('S')")
        head = self.text(5)
        if not head[1:].isdigit() or int(head[1:]) < 16:
            self._fail(BadInputError, f"key block length {head[1:]!r} is not valid")
        return head + self.text(int(head[1:]) - 5)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def end(self) -> None:
        if self.pos != len(self.data):
            self._fail(BadLengthError, f"{len(self.data) - self.pos} unexpected bytes at the end")


def split(payload: bytes, header_length: int) -> tuple[bytes, bytes, bytes]:
    """(header, command or response code, fields)."""
    if len(payload) < header_length + 2:
        raise BadLengthError(f"payShield message of {len(payload)} bytes is too short")
    return (
        payload[:header_length],
        payload[header_length : header_length + 2],
        payload[header_length + 2 :],
    )


def account_field(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit (formats 0 and 3)."""
    return pan[:-1][-12:].rjust(12, "0")


def pan_psn_field(pan: str, psn: str) -> bytes:
    """KQ's 8-byte PAN/PSN: the 16 rightmost digits of PAN || PSN, packed."""
    return bytes.fromhex((pan + psn.rjust(2, "0"))[-16:].rjust(16, "0"))
