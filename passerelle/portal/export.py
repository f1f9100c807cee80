"""CSV export streamed to the browser, written by `mpctl export`'s own writer.

`write_csv` pushes text into a file-like object; here that object cuts the text into chunks
and hands them over a small bounded queue to the response iterator. The producer runs in a
thread with its own read-only connection and a server-side cursor, so memory holds at most
the queue's few chunks whatever the month's size, and a slow client slows the query down
instead of filling memory. A client that goes away stops the producer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from psycopg_pool import ConnectionPool

from passerelle.cli.cmd_export import (
    REMISE_HEADER,
    TRANSACTION_HEADER,
    remise_cells,
    transaction_cells,
    write_csv,
)
from passerelle.storage import queries

CHUNK = 64 * 1024
_DONE = object()


def _no_progress(_rows: int) -> None:
    """`write_csv` reports progress for mpctl's bar; a download has none."""


class _Cancelled(Exception):
    """The client went away: the producer unwinds."""


class _ChunkWriter:
    """The file `write_csv` writes to: UTF-8 chunks into a bounded queue."""

    def __init__(self, out: queue.Queue[Any], cancelled: threading.Event) -> None:
        self.out, self.cancelled = out, cancelled
        self.parts: list[str] = []
        self.size = 0

    def put(self, item: object) -> None:
        while True:
            if self.cancelled.is_set():
                raise _Cancelled
            try:
                self.out.put(item, timeout=0.5)  # wakes up to notice a cancellation
                return
            except queue.Full:
                continue

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= CHUNK:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self.parts:
            self.put("".join(self.parts).encode("utf-8"))
            self.parts, self.size = [], 0


def stream_csv(pool: ConnectionPool, kind: str, filters: Any,
               user_id: int) -> Iterator[bytes]:
    """The export's bytes, chunk by chunk (run the iteration in a thread pool)."""
    chunks: queue.Queue[Any] = queue.Queue(maxsize=8)
    cancelled = threading.Event()
    writer = _ChunkWriter(chunks, cancelled)

    def produce() -> None:
        try:
            with pool.connection() as conn:
                if kind == "remises":
                    rows: Any = queries.iter_remises(conn, filters, user_id)
                    write_csv(writer, REMISE_HEADER, rows, remise_cells, _no_progress)
                else:
                    rows = queries.iter_transactions(conn, filters, user_id)
                    write_csv(writer, TRANSACTION_HEADER, rows, transaction_cells,
                              _no_progress)
                writer.flush()
            writer.put(_DONE)
        except _Cancelled:
            return
        except Exception as exc:
            try:
                writer.put(exc)
            except _Cancelled:
                return

    thread = threading.Thread(target=produce, name=f"export-{kind}", daemon=True)
    thread.start()
    try:
        while True:
            item = chunks.get()
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        cancelled.set()
        thread.join(timeout=5)
