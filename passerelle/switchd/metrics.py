"""Prometheus metrics of switchd and the small HTTP endpoint that serves them.

The registry is per daemon (not prometheus_client's global one) so that tests can run a
daemon in-process; the endpoint runs on the daemon's own event loop (no thread), answers
`GET /metrics`, and reads at most one bounded request per connection.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

_MAX_REQUEST = 8192
_REQUEST_TIMEOUT = 5.0


class Metrics:
    """Every switchd metric, with label children cached for the hot path."""

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
        self.frames = Counter(
            "switchd_frames", "Frames received and sent, by layer and direction",
            ["layer", "direction"], registry=reg)
        self.errors = Counter(
            "switchd_errors", "Protocol errors, by layer and reason", ["layer", "reason"],
            registry=reg)
        self.messages = Counter(
            "switchd_messages", "CB2A/ISO 8583 messages handled, by MTI and result",
            ["mti", "result"], registry=reg)
        self._frame_children: dict[tuple[str, str], Counter] = {}
        self._message_children: dict[tuple[str, str], Counter] = {}

    def frame(self, layer: str, direction: str) -> None:
        """Count one frame; children are cached because this runs for every packet."""
        child = self._frame_children.get((layer, direction))
        if child is None:
            child = self._frame_children[layer, direction] = self.frames.labels(layer, direction)
        child.inc()

    def message(self, mti: str, result: str) -> None:
        child = self._message_children.get((mti, result))
        if child is None:
            if len(self._message_children) > 1000:  # bounded label set: garbage MTIs
                mti = "other"
            child = self._message_children[mti, result] = self.messages.labels(mti, result)
        child.inc()

    def error(self, layer: str, reason: str) -> None:
        self.errors.labels(layer, reason).inc()

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
