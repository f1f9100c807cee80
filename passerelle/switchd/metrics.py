"""Prometheus metrics of switchd and the small HTTP endpoint that serves them.

The registry is per daemon (not prometheus_client's global one) so that tests can run a
daemon in-process; the endpoint runs on the daemon's own event loop (no thread), answers
`GET /metrics`, and reads at most one bounded request per connection.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import generate_latest

_MAX_REQUEST = 8192
_REQUEST_TIMEOUT = 5.0


class _HotCounters:
    """Counters of the per-message path as plain ints, turned into metrics at scrape time.

    A prometheus_client Counter takes a lock on every `inc`; at several counts per message
    that was a visible share of an echo dialogue. The event loop is single-threaded, so plain
    ints are enough, and the exposition stays the same (`<name>_total`).

    Each label set has a cell, a one-item list: `cell(...)` hands it out once (a listener's
    stack keeps its frame cells, the dispatcher caches its message cells), and the hot path
    counts with `cell[0] += n`, no lookup, no call.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], list[int]] = {}

    def cell(self, key: tuple[str, ...]) -> list[int]:
        """The count of `key` as a one-item list (the same list every time)."""
        cell = self.values.get(key)
        if cell is None:
            cell = self.values[key] = [0]
        return cell

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, cell in sorted(self.values.items()):
            family.add_metric(key, cell[0])
        return [family]


class Metrics:
    """Every switchd metric."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.connections = Counter(
            "switchd_connections", "Connections accepted, by listener", ["listener"],
            registry=reg)
        self.connections_refused = Counter(
            "switchd_connections_refused", "Connections refused, by listener and reason",
            ["listener", "reason"], registry=reg)
        self.connections_open = Gauge(
            "switchd_connections_open", "Connections open now, by listener", ["listener"],
            registry=reg)
        self.sessions_open = Gauge(
            "switchd_sessions_open",
            "Terminal sessions open now (X.25 call or CBCOM session up), by listener",
            ["listener"], registry=reg)
        self._frames = _HotCounters(
            "switchd_frames", "Frames received and sent, by layer (cbcom: IPDUs, x25: M-bit "
            "chains, iso: messages) and direction", ("layer", "direction"))
        self._errors = _HotCounters(
            "switchd_errors", "Protocol errors, by layer and reason", ("layer", "reason"))
        self._messages = _HotCounters(
            "switchd_messages", "CB2A/ISO 8583 messages handled, by MTI and result "
            "(response code, or no_answer, dropped)", ("mti", "result"))
        for counters in (self._frames, self._errors, self._messages):
            reg.register(counters)  # type: ignore[arg-type]

    def frame(self, layer: str, direction: str, count: int = 1) -> None:
        self._frames.cell((layer, direction))[0] += count

    def frame_cell(self, layer: str, direction: str) -> list[int]:
        """The frames counter of (layer, direction) as a cell: `cell[0] += n` counts."""
        return self._frames.cell((layer, direction))

    def message_cell(self, mti: str, result: str) -> list[int]:
        """The messages counter of (mti, result) as a cell; past 1,000 label sets (garbage
        MTIs), new MTIs share the cell of ("other", result)."""
        values = self._messages.values
        key = (mti, result)
        if key not in values and len(values) > 1000:  # bounded label set
            key = ("other", result)
        return self._messages.cell(key)

    def message(self, mti: str, result: str) -> None:
        self.message_cell(mti, result)[0] += 1

    def error(self, layer: str, reason: str) -> None:
        values = self._errors.values
        key = (layer, reason)
        if key not in values and len(values) > 1000:
            key = (layer, "other")
        self._errors.cell(key)[0] += 1

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Start the HTTP endpoint; the caller closes the returned server."""
        return await asyncio.start_server(self._handle, host, port, limit=_MAX_REQUEST)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            line = request.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                body = generate_latest(self.registry)
                head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
            else:
                body = b"not found: try /metrics\n"
                head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()
