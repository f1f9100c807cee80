"""Prometheus metrics of authorization and acquirer links.

Registered on the daemon's own registry (`Daemon.metrics.registry`) so `/metrics` shows
them beside switchd's; label children are cached because they are touched per request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LINK_STATES = ("down", "connecting", "signing_on", "up")
_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 15.0)


class RoutingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry or CollectorRegistry()
        self.registry = reg
        self.authorizations = Counter(
            "passerelle_authorizations", "Authorizations answered, by application, acquirer "
            "and CB response code", ["application", "acquirer", "result"], registry=reg)
        self.latency = Histogram(
            "passerelle_acquirer_latency_seconds", "Acquirer round trip, by acquirer",
            ["acquirer"], buckets=_LATENCY_BUCKETS, registry=reg)
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
        self._auth: dict[tuple[str, str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def authorization(self, application: str, acquirer: str, result: str) -> None:
        key = (application, acquirer, result)
        child = self._auth.get(key)
        if child is None:
            child = self._auth[key] = self.authorizations.labels(*key)
        child.inc()

    def observe(self, acquirer: str, seconds: float) -> None:
        child = self._latency.get(acquirer)
        if child is None:
            child = self._latency[acquirer] = self.latency.labels(acquirer)
        child.observe(seconds)

    def state(self, acquirer: str, state: str) -> None:
        for name in _LINK_STATES:
            self.link_state.labels(acquirer, name).set(1 if name == state else 0)
