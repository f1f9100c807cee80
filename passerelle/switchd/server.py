"""The switchd daemon: listeners, timers, signals, drain, metrics and systemd notifications.

`Daemon` runs on the current event loop, so tests can run it in-process on a private loop
as well as through `switchd` (main.py). Timers of every connection are served by one sweep
task rather than one loop timer per connection: at 10,000 idle sessions a timer handle each,
rescheduled on every packet, costs more memory and time than scanning deadlines a few times
per second.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from passerelle.config import CbcomTlsListener, IsoListener, ListenerSettings, Settings
from passerelle.switchd import stacks
from passerelle.switchd.cbcom_session import CbcomConfig
from passerelle.switchd.connection import Connection
from passerelle.switchd.dispatch import Dispatcher, Registry, default_registry
from passerelle.switchd.logs import get_logger
from passerelle.switchd.metrics import Metrics
from passerelle.switchd.sdnotify import Notifier
from passerelle.switchd.tls import server_context
from passerelle.switchd.x25_circuit import CircuitConfig

_STACKS: dict[str, type[stacks.Stack]] = {
    "xot": stacks.XotStack,
    "cbcom": stacks.CbcomStack,
    "cbcom-tls": stacks.CbcomStack,
    "iso": stacks.IsoStack,
}


class Listener:
    """One listening socket and its live connections."""

    def __init__(self, daemon: Daemon, name: str, settings: ListenerSettings) -> None:
        self.daemon = daemon
        self.name = name
        self.settings = settings
        self.stack_class = _STACKS[name]
        self.profile = settings.profile if isinstance(settings, IsoListener) else "cb2a"
        self.log = get_logger(listener=name)
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None
        self.ssl_context: ssl.SSLContext | None = None
        if isinstance(settings, CbcomTlsListener):
            self.ssl_context = server_context(settings)
        self.draining = False
        # Immutable layer configs, built by the first stack and shared by the rest.
        self.cbcom_config: CbcomConfig | None = None
        self.circuit_config: CircuitConfig | None = None
        metrics = daemon.metrics
        self.connections_open = metrics.connections_open.labels(name)
        self.connections_total = metrics.connections.labels(name)
        self.sessions_open = metrics.sessions_open.labels(name)

    def make_stack(self, connection: Connection) -> stacks.Stack:
        return self.stack_class(connection, self)

    async def start(self) -> None:
        self.server = await self.daemon.loop.create_server(
            lambda: Connection(self), self.settings.host, self.settings.port,
            backlog=min(self.settings.max_connections, 4096), reuse_address=True,
        )
        self.log.info("listener.started", address=self.address)

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()

    def reload_tls(self) -> None:
        """New connections get a context built from the files as they are now."""
        if not isinstance(self.settings, CbcomTlsListener):
            return
        try:
            self.ssl_context = server_context(self.settings)
        except (OSError, ssl.SSLError) as error:
            self.log.error("tls.reload_failed", error=str(error))
            return
        self.log.info("tls.reloaded")

    def connection_gone(self) -> None:
        self.daemon.connection_gone()


class Daemon:
    """Everything switchd runs; `start()`, then `stop()` (or `run()` until SIGTERM)."""

    # Set by the `switchd` entry point (main.py): once started, collect the start-up garbage
    # and freeze what is left (gc.freeze) out of every later collection. Measured: a full
    # collection of a started switchd (56k tracked objects: config, codec profiles,
    # prometheus, structlog, routing, storage) takes 25-30 ms on the reference machine, a
    # pause every dialogue in flight would wait for; frozen, it scans only what was made
    # since (the sessions' objects; 0.0 ms right after start). The per-message path itself
    # allocates nothing that survives (no collection at all in 130k echo or
    # task-per-message dialogues), so the generation thresholds stay Python's: raising
    # them changed nothing measurable. In-process users (tests, benchmarks) keep the
    # interpreter as they have it.
    freeze_gc_after_start = False

    def __init__(self, settings: Settings, registry: Registry | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(registry or default_registry(), self.metrics)
        self.notifier = notifier or Notifier()
        self.log = get_logger()
        self.loop = asyncio.get_running_loop()
        self.listeners: dict[str, Listener] = {
            name: Listener(self, name, listener)
            for name, listener in settings.listeners.items() if listener.enabled
        }
        self.inflight: set[asyncio.Future[Any]] = set()
        # SIGHUP also reloads what other parts own (routes, HSM keys): a callable each,
        # returning None or an awaitable (run in the background, its failure logged).
        self.reload_hooks: list[Callable[[], Awaitable[Any] | Any]] = []
        self._reloads: set[asyncio.Task[Any]] = set()
        self.metrics_server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._all_gone = asyncio.Event()
        self._stopping = False

    @property
    def connections(self) -> list[Connection]:
        return [conn for listener in self.listeners.values() for conn in listener.connections]

    def sweep_interval(self) -> float:
        """How often deadlines are checked: a fraction of the shortest timer, within reason."""
        s = self.settings
        shortest = min(s.cbcom.cn_timeout, s.cbcom.tgr, s.cbcom.tsi,
                       s.switchd.handshake_timeout, s.listeners.iso.idle_timeout,
                       s.x25.call_timeout, s.x25.clear_timeout)
        return min(max(shortest / 8, 0.005), 0.5)

    async def start(self) -> None:
        self.loop.set_exception_handler(self._loop_error)
        for listener in self.listeners.values():
            await listener.start()
        if self.settings.metrics.enabled:
            self.metrics_server = await self.metrics.serve(self.settings.metrics.host,
                                                           self.settings.metrics.port)
            host, port = self.metrics_server.sockets[0].getsockname()[:2]
            self.log.info("metrics.started", address=f"{host}:{port}")
        self._tasks.append(asyncio.create_task(self._sweep()))
        if self.notifier.watchdog_interval:
            self._tasks.append(asyncio.create_task(self._watchdog()))
        if self.freeze_gc_after_start:
            gc.collect()
            gc.freeze()
        self.notifier.ready(f"listening on {len(self.listeners)} listeners")
        self.log.info("switchd.ready",
                      listeners={name: lst.address for name, lst in self.listeners.items()})

    def install_signal_handlers(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self._stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, drain, stop."""
        self.install_signal_handlers()  # before READY: a signal right after it is handled
        await self.start()
        await self._stop.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> asyncio.Future[Any]:
        """SIGHUP: reload TLS certificates for new connections (live ones are untouched),
        then the hooks. The result completes when asynchronous hooks are done (tests)."""
        self.notifier.reloading()
        self.log.info("switchd.reloading")
        for listener in self.listeners.values():
            listener.reload_tls()
        pending = []
        for hook in self.reload_hooks:
            name = getattr(hook, "__qualname__", repr(hook))
            try:
                result = hook()
            except Exception:  # a bad reload keeps the old state; switchd stays up
                self.log.exception("switchd.reload_failed", hook=name)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._reload_async(result, name))
                self._reloads.add(task)
                task.add_done_callback(self._reloads.discard)
                pending.append(task)
        self.notifier.ready()
        return asyncio.gather(*pending)

    async def _reload_async(self, result: Awaitable[Any], name: str) -> None:
        try:
            await result
        except Exception:  # an HSM away at reload keeps its keys; switchd stays up
            self.log.exception("switchd.reload_failed", hook=name)

    async def stop(self) -> None:
        """Stop accepting, let dialogues in flight finish (bounded), close, exit cleanly."""
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping()
        started = time.monotonic()
        self.log.info("switchd.draining", connections=len(self.connections),
                      inflight=len(self.inflight))
        for listener in self.listeners.values():
            listener.stop_accepting()
        for conn in self.connections:
            conn.drain()
        timeout = self.settings.switchd.drain_timeout
        if self.connections:
            self._all_gone.clear()
            try:
                await asyncio.wait_for(self._all_gone.wait(), timeout)
            except TimeoutError:
                self.log.warning("switchd.drain_timeout", connections=len(self.connections))
        for conn in self.connections:
            conn.abort("drain timeout")
        for task in self._tasks:
            task.cancel()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await asyncio.sleep(0)  # let transports deliver their connection_lost
        self.log.info("switchd.stopped", drained_in=round(time.monotonic() - started, 3))

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Anything asyncio could not deliver: logged as one JSON event, never fatal."""
        self.metrics.error("switchd", "loop")
        error = context.get("exception")
        self.log.error("switchd.loop_error", message=context.get("message"),
                       exc_info=error if isinstance(error, BaseException) else None)

    def connection_gone(self) -> None:
        if self._stopping and not any(lst.connections for lst in self.listeners.values()):
            self._all_gone.set()

    async def _sweep(self) -> None:
        interval = self.sweep_interval()
        loop = self.loop
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for listener in self.listeners.values():
                for conn in [c for c in listener.connections if c.deadline <= now]:
                    conn.on_deadline(now)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        assert interval is not None and math.isfinite(interval)
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)
