"""The spool: an append-only, fsynced journal for when PostgreSQL is unreachable.

A remise the terminal has sent must be acknowledged (0516) only once it is durable. When the
database is away, `RemiseSink.store` appends the remise to the journal and returns after
fsync; `RemiseSink.replay` later feeds the journal, in order, to the writer. Replay may be
interrupted and repeated: the writer's unique remise key makes a second store a no-op.

On disk: `<state>/spool/journal-NNNNNNNNNNNNNNNN.log` segments, oldest first. A record is

    magic "PSJ1" | kind u8 | flags u8 | length u32 BE | crc32 u32 BE | payload

with the CRC over kind, flags, length and payload. A process killed mid-append (kill -9,
power loss) leaves at most a torn last record: reading ignores it, and reopening the journal
truncates it before the next append. Damage elsewhere is skipped by resynchronising on the
next magic whose CRC checks; it is reported, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import structlog

from passerelle.storage.db import DatabaseUnavailable, StorageError
from passerelle.storage.remises import Remise, RemiseWriter, StoreOutcome, validate

log = structlog.get_logger("passerelle.storage")
MAGIC = b"PSJ1"
_HEADER = struct.Struct(">4sBBII")
HEADER_SIZE = _HEADER.size
DEFAULT_MAX_RECORD = 16 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
KIND_REMISE = 1
KIND_AUTHORIZATION = 2  # reserved for the authorization log (batched auth logging)


class SpoolError(StorageError):
    """The journal cannot be used (locked by another process, unwritable, oversized record)."""


@dataclass(frozen=True)
class Record:
    offset: int
    kind: int
    payload: bytes


@dataclass
class ParseResult:
    """Records found in a journal buffer, where valid data ends and what was skipped."""

    records: list[Record] = field(default_factory=list)
    valid_end: int = 0  # just after the last good record: where appending may resume
    skipped: list[tuple[int, int]] = field(default_factory=list)  # damaged ranges [start, end)


def encode_record(kind: int, payload: bytes, *, max_record: int = DEFAULT_MAX_RECORD) -> bytes:
    """One record's bytes. Raises SpoolError for a kind or size the format cannot carry."""
    if not 0 < kind < 256:
        raise SpoolError(f"spool record kind must be 1..255, got {kind}")
    if len(payload) > max_record:
        raise SpoolError(
            f"spool record of {len(payload)} bytes exceeds the {max_record}-byte limit"
        )
    head = struct.pack(">BBI", kind, 0, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return MAGIC + head + struct.pack(">I", crc) + payload


def parse_records(buf: bytes, *, max_record: int = DEFAULT_MAX_RECORD) -> ParseResult:
    """Every intact record of `buf`, in order. Never raises on damaged input."""
    result = ParseResult()
    size, pos = len(buf), 0
    view = memoryview(buf)
    while pos < size:
        if buf.startswith(MAGIC, pos) and pos + HEADER_SIZE <= size:
            _magic, kind, _flags, length, crc = _HEADER.unpack_from(buf, pos)
            end = pos + HEADER_SIZE + length
            if length <= max_record and end <= size:
                payload = view[pos + HEADER_SIZE : end]
                if zlib.crc32(payload, zlib.crc32(view[pos + 4 : pos + 10])) == crc:
                    result.records.append(Record(pos, kind, bytes(payload)))
                    pos = result.valid_end = end
                    continue
        following = buf.find(MAGIC, pos + 1)
        if following == -1:
            break  # a torn tail: nothing valid after it
        result.skipped.append((pos, following))
        pos = following
    return result


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The journal directory; one process at a time (an flock guards it)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_record: int = DEFAULT_MAX_RECORD,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.max_record = max_record
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._active: Path | None = None
        self._active_size = 0
        self.torn_bytes_dropped = 0

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> Spool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot open spool directory {self.directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolError(
                f"spool {self.directory} is in use by another process"
            ) from None
        segments = self.segments()
        if segments:
            self._open_segment(segments[-1], repair=True)
        else:
            self._open_segment(self._segment_path(1), repair=False)
        return self

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- segments ----------------------------------------------------------------------
    def _segment_path(self, number: int) -> Path:
        return self.directory / f"journal-{number:016d}.log"

    def segments(self) -> list[Path]:
        """Journal segments, oldest first."""
        return sorted(self.directory.glob("journal-" + "[0-9]" * 16 + ".log"))

    def _open_segment(self, path: Path, *, repair: bool) -> None:
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(fd).st_size
        if repair and size:
            with open(path, "rb") as handle:
                valid_end = parse_records(handle.read(), max_record=self.max_record).valid_end
            if valid_end < size:  # torn tail of a killed writer: cut it before appending
                os.ftruncate(fd, valid_end)
                os.fsync(fd)
                self.torn_bytes_dropped += size - valid_end
                log.warning("spool.torn_tail_dropped", segment=path.name,
                            bytes=size - valid_end)
                size = valid_end
        if created:
            _fsync_dir(self.directory)
        self._fd, self._active, self._active_size = fd, path, size

    def _rotate(self) -> None:
        assert self._active is not None and self._fd is not None
        number = int(self._active.stem.split("-")[1]) + 1
        os.close(self._fd)
        self._open_segment(self._segment_path(number), repair=False)

    # -- writing -----------------------------------------------------------------------
    def append(self, kind: int, payload: bytes) -> None:
        """Append one record; returns once it is on disk (fsync)."""
        record = encode_record(kind, payload, max_record=self.max_record)
        with self._lock:
            if self._fd is None:
                raise SpoolError(f"spool {self.directory} is not open")
            if self._active_size and self._active_size + len(record) > self.segment_bytes:
                self._rotate()
            try:
                view = memoryview(record)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except OSError as exc:
                # Take back a partial record (disk full...) so the next append starts clean.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._active_size)
                raise SpoolError(f"cannot write spool {self._active}: {exc}") from exc
            self._active_size += len(record)

    # -- replaying ---------------------------------------------------------------------
    def seal(self) -> list[Path]:
        """Close the active segment to appends (if it holds anything) and return every
        segment that is complete, oldest first. New appends go to a fresh segment."""
        with self._lock:
            if self._fd is None:
                raise SpoolError(f"spool {self.directory} is not open")
            if self._active_size:
                self._rotate()
            return [s for s in self.segments() if s != self._active]

    def read(self, segment: Path) -> ParseResult:
        return parse_records(segment.read_bytes(), max_record=self.max_record)

    def remove(self, segment: Path) -> None:
        """Delete a fully replayed segment."""
        segment.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def reject(self, kind: int, payload: bytes) -> None:
        """Keep a record that can never be stored in `rejected.log`, for a person to read."""
        with open(self.directory / "rejected.log", "ab") as handle:
            handle.write(encode_record(kind, payload, max_record=self.max_record))
            handle.flush()
            os.fsync(handle.fileno())

    def has_pending(self) -> bool:
        """Cheap check for the replayer: does any segment hold bytes?"""
        return any(s.stat().st_size for s in self.segments())

    def pending_records(self) -> int:
        """Records waiting in the journal (for the spool-depth metric)."""
        return sum(len(self.read(s).records) for s in self.segments())


Outcome = Literal["stored", "already_stored", "spooled"]


def outcome_name(result: StoreOutcome | None) -> Outcome:
    """What `RemiseSink.store` did, in a word (for logs and metrics labels)."""
    if result is None:
        return "spooled"
    return "stored" if result.stored else "already_stored"


@dataclass
class ReplayReport:
    stored: int = 0
    already_stored: int = 0
    rejected: list[str] = field(default_factory=list)  # why each rejected record was refused
    damaged_bytes: int = 0
    finished: bool = True  # False when the database went away again mid-replay


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Remise)


class RemiseSink:
    """What the télécollecte dialogue calls: store a remise durably, in PostgreSQL if it
    answers, else in the spool. Either way, when `store` returns, 0516 may be sent.

    After a failure the database is not tried again for `retry_after_s`: remises go straight
    to the spool instead of each waiting out a connection timeout while terminals wait.
    """

    def __init__(self, writer: RemiseWriter, spool: Spool, *, retry_after_s: float = 2.0) -> None:
        self.writer = writer
        self.spool = spool
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._replay_lock = asyncio.Lock()

    async def store(self, remise: Remise) -> StoreOutcome | None:
        """The writer's `StoreOutcome` (for a repeat: what was stored first, its status
        included), or None when the remise went to the spool (see `outcome_name`). The
        caller logs the outcome (the writer logs a stored remise at debug level only)."""
        validate(remise)  # a bad remise is refused now, not discovered at replay
        if time.monotonic() >= self._down_until:
            try:
                # validated above; the dialogue logs what this returns
                return await self.writer.store(remise, validated=True, logged=True)
            except DatabaseUnavailable as exc:
                self._down_until = time.monotonic() + self.retry_after_s
                log.warning("spool.database_unavailable", error=str(exc))
        await asyncio.to_thread(self.spool.append, KIND_REMISE, _ENCODER.encode(remise))
        log.info("spool.remise_spooled", terminal=remise.terminal_serial,
                 contract=remise.contract_number, application=remise.application,
                 remise=remise.remise_number, transactions=len(remise.transactions))
        return None

    async def replay(self) -> ReplayReport:
        """Feed every spooled remise to the writer, oldest first; delete what is done."""
        report = ReplayReport()
        async with self._replay_lock:
            for segment in await asyncio.to_thread(self.spool.seal):
                parsed = await asyncio.to_thread(self.spool.read, segment)
                report.damaged_bytes += sum(end - start for start, end in parsed.skipped)
                for record in parsed.records:
                    try:
                        if record.kind != KIND_REMISE:  # set aside, never dropped
                            raise StorageError(
                                f"record of kind {record.kind} in the remise journal "
                                "(each kind needs its own spool directory)"
                            )
                        remise = _DECODER.decode(record.payload)
                        outcome = await self.writer.store(remise, spooled=True)
                    except DatabaseUnavailable:
                        report.finished = False
                        return report
                    except (StorageError, msgspec.DecodeError) as exc:
                        await asyncio.to_thread(self.spool.reject, record.kind, record.payload)
                        log.error("spool.record_rejected", segment=segment.name,
                                  offset=record.offset, error=str(exc))
                        report.rejected.append(f"{segment.name}@{record.offset}: {exc}")
                        continue
                    if outcome.stored:
                        report.stored += 1
                    else:
                        report.already_stored += 1
                await asyncio.to_thread(self.spool.remove, segment)
            self._down_until = 0.0  # the database answered everything: stop bypassing it
        if report.stored or report.already_stored or report.rejected:
            log.info("spool.replayed", stored=report.stored,
                     already_stored=report.already_stored, rejected=len(report.rejected),
                     damaged_bytes=report.damaged_bytes)
        return report
