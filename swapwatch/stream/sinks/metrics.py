"""Prometheus metrics: stage latencies, throughput, drops, reconnects, faces, alerts, states per stream.

Two halves:

* `Metrics` owns its own `CollectorRegistry` (not prometheus_client's global one, so two monitors or
  two tests in one process never collide) and has cheap synchronous methods the pipeline calls on its
  hot path (`observe_stage`, `frame`, `dropped`...). Expose it with `start_http_server()` (a small
  thread that prometheus_client runs) or serve `render()` from the API server's `/metrics` route.
* `MetricsSink` turns events into metrics (state changes, alerts, stream states, reconnects), so the
  numbers a dashboard shows and the events a webhook receives can never disagree.

Label cardinality stays bounded: stage latencies are labelled by stage only (six values); the per-stream
series are labelled by stream name (a handful), never by track id; drop reasons come from fixed lists
(`FRAME_DROP_REASONS`; for sinks `queue_full` from the SinkSet, the webhook's `DROP_REASONS` and the
evidence sink's `EVIDENCE_DROP_REASONS`).

Nothing is lost without a number: `dropped_frames{stream,reason}` counts every frame or face crop that
was not scored, `sink_dropped{sink,kind,reason}` every event or frame a sink did not deliver, and a
webhook's outbox shows its backlog (`outbox_events`, `outbox_oldest_age_seconds`) and its deliveries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.stream.events import Event
from swapwatch.stream.temporal import LEVEL, STATES

STAGES: tuple[str, ...] = ("decode", "detect", "batch_wait", "infer", "smooth", "emit")
"""Stages of the path of one frame whose latency is measured (DESIGN.md)."""

SOURCE_STATES: tuple[str, ...] = ("connecting", "live", "reconnecting", "failed", "ended")

FRAME_DROP_REASONS: tuple[str, ...] = ("source_queue_full", "decode_error", "batcher_full", "engine_error")
"""Why a frame or face crop went unscored: replaced in a `latest` source queue by a newer frame; a damaged
packet the decoder skipped; a live crop refused by the full micro-batcher; a crop whose engine batch failed."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class MetricsConfig(StrictModel):
    """Prometheus metrics."""

    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics on this port from a small thread (None: use the API server's).",
    )
    host: str = Field("127.0.0.1", description="Address the metrics port listens on.")
    namespace: str = Field("swapwatch", description="Prefix of every metric name.")
    latency_buckets: list[float] = Field(
        default_factory=lambda: list(DEFAULT_BUCKETS),
        min_length=1,
        description="Histogram bucket upper bounds in seconds (stage and glass-to-score latency).",
    )


class Metrics:
    """The monitor's metrics, in a registry of their own."""

    def __init__(self, config: MetricsConfig | None = None, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.config = config or MetricsConfig()
        self.registry = registry if registry is not None else CollectorRegistry()
        ns = self.config.namespace
        buckets = sorted(self.config.latency_buckets)
        reg = self.registry
        self.stage_latency = Histogram(
            "stage_latency_seconds", "Time spent per frame in each pipeline stage.", ["stage"],
            namespace=ns, buckets=buckets, registry=reg,
        )  # fmt: skip
        self.frame_latency = Histogram(
            "frame_latency_seconds", "Glass-to-score latency per frame (received -> smoothed).", ["stream"],
            namespace=ns, buckets=buckets, registry=reg,
        )  # fmt: skip
        self.frames = Counter("frames", "Frames processed.", ["stream"], namespace=ns, registry=reg)
        self.fps = Gauge("fps", "Frames per second processed lately.", ["stream"], namespace=ns, registry=reg)
        self.drops = Counter(
            "dropped_frames",
            "Frames dropped before scoring, by reason.",
            ["stream", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.sink_drops = Counter(
            "sink_dropped",
            "Items a sink did not deliver, by kind (event | frame) and reason.",
            ["sink", "kind", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.sink_delivered_events = Counter(
            "sink_delivered", "Events a sink delivered (webhooks: answered 2xx).", ["sink"], namespace=ns, registry=reg
        )
        self.sink_retries = Counter(
            "sink_retries", "Delivery attempts that failed and were retried later.", ["sink"],
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.outbox_events = Gauge(
            "outbox_events", "Events in a webhook's outbox, not delivered yet.", ["sink"], namespace=ns, registry=reg
        )
        self.outbox_oldest_age = Gauge(
            "outbox_oldest_age_seconds", "Age of the oldest undelivered event in a webhook's outbox (0: empty).",
            ["sink"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.reconnects = Counter("reconnects", "Source reconnection attempts.", ["stream"], namespace=ns, registry=reg)
        self.faces = Gauge("faces", "Live face tracks.", ["stream"], namespace=ns, registry=reg)
        self.alerts = Counter("alerts", "Tracks that rose into alert.", ["stream"], namespace=ns, registry=reg)
        self.state_changes = Counter(
            "state_changes", "Track state changes, by new state.", ["stream", "state"], namespace=ns, registry=reg
        )
        self.stream_state = Gauge(
            "stream_state", "1 for the stream's current verdict (worst live track state), 0 for the others.",
            ["stream", "state"], namespace=ns, registry=reg,
        )  # fmt: skip
        self.stream_level = Gauge(
            "stream_level", "The stream's verdict as a number: 0 clear, 1 suspicious, 2 alert.", ["stream"],
            namespace=ns, registry=reg,
        )  # fmt: skip
        self.source_state = Gauge(
            "source_state", "1 for the source's current state, 0 for the others.", ["stream", "source_state"],
            namespace=ns, registry=reg,
        )  # fmt: skip
        self._server: Any = None
        self._thread: Any = None

    # -- hot path: called by the pipeline, synchronous and cheap --------------------------------------
    def observe_stage(self, stage: str, seconds: float) -> None:
        """Time one frame (or one batch) spent in `stage` (one of STAGES)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        self.stage_latency.labels(stage).observe(max(0.0, seconds))

    def observe_latency(self, stream: str, seconds: float) -> None:
        """Glass-to-score latency of one frame."""
        self.frame_latency.labels(stream).observe(max(0.0, seconds))

    def frame(self, stream: str, n: int = 1) -> None:
        self.frames.labels(stream).inc(n)

    def set_fps(self, stream: str, fps: float) -> None:
        self.fps.labels(stream).set(fps)

    def dropped(self, stream: str, reason: str, n: int = 1) -> None:
        """Frames (or face crops) not scored, by reason (one of FRAME_DROP_REASONS); n=0 creates the series."""
        self.drops.labels(stream, reason).inc(n)

    def sink_dropped(self, sink: str, kind: str, reason: str = "queue_full", n: int = 1) -> None:
        """Items a sink lost (`SinkSet.on_drop` hook: its queue was full); n=0 creates the series."""
        self.sink_drops.labels(sink, kind, reason).inc(n)

    def sink_delivered(self, sink: str, n: int = 1) -> None:
        self.sink_delivered_events.labels(sink).inc(n)

    def sink_retried(self, sink: str, n: int = 1) -> None:
        self.sink_retries.labels(sink).inc(n)

    def watch_outbox(self, sink: str, depth: Callable[[], float], oldest_age_s: Callable[[], float]) -> None:
        """Report a webhook outbox's depth and oldest age, read at scrape time (from the scraping thread)."""
        self.outbox_events.labels(sink).set_function(depth)
        self.outbox_oldest_age.labels(sink).set_function(oldest_age_s)

    def reconnect(self, stream: str) -> None:
        self.reconnects.labels(stream).inc()

    def set_faces(self, stream: str, n: int) -> None:
        self.faces.labels(stream).set(n)

    def set_stream_state(self, stream: str, state: str) -> None:
        for s in STATES:
            self.stream_state.labels(stream, s).set(1.0 if s == state else 0.0)
        self.stream_level.labels(stream).set(LEVEL[state])

    def set_source_state(self, stream: str, source_state: str) -> None:
        for s in SOURCE_STATES:
            self.source_state.labels(stream, s).set(1.0 if s == source_state else 0.0)

    def forget_stream(self, stream: str) -> None:
        """Remove every series of `stream` (a server that ran thousands of streams must not keep them all)."""
        import contextlib

        for metric in (self.frame_latency, self.frames, self.fps, self.reconnects, self.faces, self.alerts,
                       self.stream_level):
            with contextlib.suppress(KeyError):
                metric.remove(stream)
        for metric, values in ((self.drops, FRAME_DROP_REASONS), (self.state_changes, STATES),
                               (self.stream_state, STATES), (self.source_state, SOURCE_STATES)):
            for value in values:
                with contextlib.suppress(KeyError):
                    metric.remove(stream, value)

    # -- exposure --------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format, for an HTTP /metrics handler."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's current value by full name (e.g. "swapwatch_alerts_total"), or None."""
        return self.registry.get_sample_value(name, labels or {})

    def start_http_server(self) -> int:
        """Serve this registry on `config.host:config.port` from a daemon thread; returns the bound port."""
        from prometheus_client import start_http_server

        if self._server is None:
            self._server, self._thread = start_http_server(
                self.config.port or 0, addr=self.config.host, registry=self.registry
            )
        return int(self._server.server_port)

    def stop_http_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None


class MetricsSink:
    """Updates `Metrics` from events: state changes, alerts, verdicts, faces, fps, source states."""

    name = "metrics"

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self._ended: set[str] = set()  # streams whose last event (ended / failed) was applied
        self._forget_pending: set[str] = set()

    def forget_when_ended(self, stream: str) -> None:
        """Drop `stream`'s series once its last event has been applied: now if it has, else when it comes
        (a removed stream's final events may still be queued for this sink)."""
        if stream in self._ended:
            self._ended.discard(stream)
            self.metrics.forget_stream(stream)
        else:
            self._forget_pending.add(stream)

    async def publish(self, event: Event) -> None:
        self.apply(event)

    def apply(self, event: Event) -> None:
        """Synchronous form of `publish`."""
        m = self.metrics
        if event.type == "state":
            if event.previous_state is not None and event.previous_state != event.state:
                m.state_changes.labels(event.stream, event.state).inc()
                if event.state == "alert":
                    m.alerts.labels(event.stream).inc()
        elif event.type == "summary":
            m.set_stream_state(event.stream, event.state)
            if event.tracks is not None:
                m.set_faces(event.stream, event.tracks)
            if event.fps is not None:
                m.set_fps(event.stream, event.fps)
        elif event.type == "stream" and event.source_state is not None:
            m.set_source_state(event.stream, event.source_state)
            m.set_stream_state(event.stream, event.state)
            if event.source_state == "reconnecting":
                m.reconnect(event.stream)
            if event.source_state in ("ended", "failed"):
                m.set_faces(event.stream, 0)
                if event.stream in self._forget_pending:
                    self._forget_pending.discard(event.stream)
                    m.forget_stream(event.stream)
                else:
                    self._ended.add(event.stream)
            elif event.source_state == "connecting":
                self._ended.discard(event.stream)  # a new stream of that name

    async def aclose(self) -> None:
        self.metrics.stop_http_server()


def metric_names(metrics: Metrics) -> Sequence[str]:
    """Every metric family name in the registry (for docs and tests)."""
    return sorted({m.name for m in metrics.registry.collect()})
