"""Prometheus metrics of authorization and acquirer links.

Registered on the daemon's own registry (`Daemon.metrics.registry`) so `/metrics` shows
them beside switchd's. The two touched by every authorization (the count by application,
acquirer and result, and the acquirer latency histogram) are plain numbers turned into
samples at scrape time (`_PerRequest`): a prometheus_client child takes a lock and, for a
histogram, walks its buckets in Python on every call, a visible share of an authorization.
The event loop is single-threaded and so is the scrape (switchd serves `/metrics` on it),
so plain numbers are enough; the exposition is the same as a Counter's and a Histogram's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_LINK_STATES = ("down", "connecting", "signing_on", "up")
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 15.0)


class RoutingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry or CollectorRegistry()
        self.registry = reg
        self.per_request = _PerRequest()
        reg.register(self.per_request)
        self.link_state = Gauge(
            "passerelle_acquirer_link_state", "1 for the link's current state, by acquirer",
            ["acquirer", "state"], registry=reg)
        self.link_strays = Counter(
            "passerelle_acquirer_stray_answers", "Answers matching no waiting request, by "
            "acquirer and kind (late, duplicate, unknown, garbage)", ["acquirer", "kind"],
            registry=reg)
        self.saf_depth = Gauge(
            "passerelle_saf_depth", "Advices and reversals waiting for delivery, by acquirer",
            ["acquirer"], registry=reg)
        self.saf_delivered = Counter(
            "passerelle_saf_delivered", "Advices and reversals delivered, by acquirer and kind",
            ["acquirer", "kind"], registry=reg)
        self.stand_in = Counter(
            "passerelle_stand_in", "Authorizations approved in stand-in, by application",
            ["application"], registry=reg)
        self.authlog_spooled = Counter(
            "passerelle_authlog_spooled", "Authorization log records written to the spool "
            "because the database was away", registry=reg)
        self._auth = self.per_request.authorizations
        self._latency = self.per_request.latency

    def authorization(self, application: str, acquirer: str, result: str) -> None:
        key = (application, acquirer, result)
        self._auth[key] = self._auth.get(key, 0) + 1

    def observe(self, acquirer: str, seconds: float) -> None:
        cells = self._latency.get(acquirer)
        if cells is None:
            cells = self._latency[acquirer] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        cells[bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # le: a bound counts as inside
        cells[-1] += seconds

    def state(self, acquirer: str, state: str) -> None:
        for name in _LINK_STATES:
            self.link_state.labels(acquirer, name).set(1 if name == state else 0)


class _PerRequest:
    """`passerelle_authorizations` (counter) and `passerelle_acquirer_latency_seconds`
    (histogram) from plain numbers; a latency row is the count per bucket (the last one
    +Inf), then the sum."""

    def __init__(self) -> None:
        self.authorizations: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, list[float]] = {}

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        counter, histogram = self._families()
        for key, count in sorted(self.authorizations.items()):
            counter.add_metric(key, count)
        for acquirer, cells in sorted(self.latency.items()):
            buckets: list[tuple[str, float]] = []
            running = 0.0
            for bound, cell in zip((*_LATENCY_BUCKETS, float("inf")), cells, strict=False):
                running += cell
                buckets.append((floatToGoString(bound), running))
            histogram.add_metric((acquirer,), buckets, cells[-1])
        yield counter
        yield histogram

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (CounterMetricFamily(
                    "passerelle_authorizations", "Authorizations answered, by application, "
                    "acquirer and CB response code", labels=("application", "acquirer", "result")),
                HistogramMetricFamily(
                    "passerelle_acquirer_latency_seconds", "Acquirer round trip, by acquirer",
                    labels=("acquirer",)))
