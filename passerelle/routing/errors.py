"""The one base exception of routing."""

from __future__ import annotations


class RoutingError(Exception):
    """A route table, acquirer setting or link that cannot be used; says what to fix."""


class LinkDown(RoutingError):
    """The acquirer link is not connected (or went away with the request in flight)."""


class LinkTimeout(RoutingError):
    """The acquirer did not answer within the attempt's time."""


class LinkLost(LinkDown):
    """The link went down after the request was sent: the acquirer may have decided."""


class LinkBusy(LinkDown):
    """The link's in-flight window stayed full: the request was not sent."""
