"""The server's own Prometheus metrics: requests, authentication failures, feed clients and drops, loop lag.

They live in a registry of their own, next to the monitor's (`swapwatch.stream.sinks.metrics.Metrics`),
and `/metrics` renders both one after the other: the two never share a family name, so the text is one
valid exposition. Requests are labelled by route pattern (`/api/streams/{name}`), never by the raw path,
so the label set stays bounded whatever clients send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swapwatch.stream.cluster.node import ClusterNode


class ServerMetrics:
    """Counters and gauges of the HTTP server, in their own CollectorRegistry."""

    def __init__(self, namespace: str = "swapwatch") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.namespace = namespace
        reg, ns = self.registry, namespace
        self.requests = Counter(
            "http_requests", "HTTP requests answered, by method, route pattern and status.",
            ["method", "route", "status"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.auth_failures = Counter(
            "http_auth_failures", "Requests refused for a missing or wrong token or ticket.", namespace=ns, registry=reg
        )
        self.feed_clients = Gauge("feed_clients", "Live-feed connections open, by kind (sse, ws).", ["kind"],
                                  namespace=ns, registry=reg)
        self.feed_dropped = Counter(
            "feed_dropped", "Feed messages dropped because a client fell behind, by kind (sse, ws).", ["kind"],
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.loop_lag = Gauge("event_loop_lag_seconds", "How late the event loop ran a timer lately.",
                              namespace=ns, registry=reg)
        for kind in ("sse", "ws"):
            self.feed_clients.labels(kind)
            self.feed_dropped.labels(kind)

    def watch_cluster(self, node: ClusterNode, events_pending: Callable[[], int]) -> None:
        """Export the cluster node's state, read at each scrape: connected, leases held, events not yet in
        the durable stream, and lease counters by kind (claimed, lost, fenced, released, handed_over)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.registry import Collector

        ns = self.namespace

        class ClusterCollector(Collector):
            def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
                for name, text, value in (
                    ("cluster_connected", "1 while this node is connected to NATS.", float(node.store.connected)),
                    ("cluster_leases", "Streams this node holds a lease on.", float(len(node.leases.held))),
                    ("cluster_events_pending", "Events in the outbox, not yet acknowledged by the durable stream.",
                     float(events_pending())),
                ):
                    gauge = GaugeMetricFamily(f"{ns}_{name}", text)
                    gauge.add_metric([], value)
                    yield gauge
                counter = CounterMetricFamily(f"{ns}_cluster_lease_changes", "Lease changes on this node, by kind: "
                                              "claimed, lost (another node holds it), fenced (stopped at the local "
                                              "deadline), released, handed_over.", labels=["kind"])
                stats = node.stats
                for kind in ("claimed", "lost", "fenced", "released", "handed_over"):
                    counter.add_metric([kind], float(getattr(stats, kind)))
                yield counter

        self.registry.register(ClusterCollector())

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    def value(self, name: str, labels: dict[str, str] | None = None) -> Any:
        return self.registry.get_sample_value(name, labels or {})
