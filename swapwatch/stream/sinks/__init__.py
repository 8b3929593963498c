"""Outputs: one publish interface for every sink, and a fan-out that no sink can stall.

A sink is any object with `async publish(event)` and `async aclose()`; the video sinks (annotated video,
evidence clips) also take `async on_frame(stream, frame_bgr, pts, tracks)`, and a sink with background
work of its own (the webhook's outbox dispatcher) may have `start()`, which `SinkSet.start()` calls
inside the running loop. The pipeline never talks to a sink directly: it hands events and frames to a
`SinkSet`, which puts them on one bounded queue per sink (and one per frame sink for frames) and
returns at once. Each sink drains its own queue in its own task, so a slow disk, a hung webhook or a
crashing sink costs that sink its backlog (counted as drops, oldest first) and never delays the frame
loop or another sink.

Trade-offs: dropping the OLDEST queued item keeps a lagging sink on recent events (what a person
watching wants) but means its record can have holes; the counts in `SinkSet.stats()` (and in the
Prometheus metrics, reason `queue_full`) say how many, and a warning per sink at most every 10 s says
so in the log. Webhooks hardly ever get there: their `publish` is one SQLite insert into their durable
outbox (webhook.py), and the network is their dispatcher's business. A sink that blocks the event loop
itself (a synchronous sleep) cannot be isolated this way: sinks do blocking I/O in threads (JSONL
writes, video encoding, evidence files, the webhook outbox).

Heavy dependencies (aiohttp, prometheus_client, PyAV, matplotlib, rich's Live) are imported only by the
sink that needs them, when it is built.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.stream.events import Event, FrameTrack
from swapwatch.stream.sinks.annotate import AnnotateConfig
from swapwatch.stream.sinks.console import ConsoleConfig
from swapwatch.stream.sinks.evidence import EvidenceConfig
from swapwatch.stream.sinks.jsonl import JsonlConfig
from swapwatch.stream.sinks.metrics import MetricsConfig
from swapwatch.stream.sinks.webhook import WebhookConfig
from swapwatch.stream.temporal import SmoothingConfig
from swapwatch.stream.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

__all__ = [
    "FrameSink",
    "FrameTrack",
    "Sink",
    "SinkSet",
    "SinkStats",
    "SinksConfig",
    "build_sinks",
]


@runtime_checkable
class Sink(Protocol):
    """Anything events can be published to."""

    async def publish(self, event: Event) -> None:
        """Deliver one event. May be slow; the SinkSet calls it from the sink's own task."""

    async def aclose(self) -> None:
        """Flush and release everything; called once, after the last publish."""


@runtime_checkable
class FrameSink(Sink, Protocol):
    """A sink that also wants the frames (annotated video, evidence clips)."""

    async def on_frame(
        self, stream: str, frame_bgr: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]
    ) -> None:
        """One decoded frame (H x W x 3 uint8 BGR, not modified by the caller afterwards) and its tracks."""


@dataclass
class SinkStats:
    """What happened to the items handed to one sink."""

    name: str
    published: int = 0
    errors: int = 0
    dropped_events: int = 0
    frames: int = 0
    frame_errors: int = 0
    dropped_frames: int = 0
    unsent_at_close: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


T = TypeVar("T")


def sink_name(sink: object) -> str:
    """A sink's `name` attribute, else its class name."""
    return str(getattr(sink, "name", type(sink).__name__))


class _Lane:
    """One sink with its bounded queues and worker tasks."""

    def __init__(self, sink: Sink, event_queue: int, frame_queue: int) -> None:
        self.sink = sink
        self.stats = SinkStats(sink_name(sink))
        self.events: asyncio.Queue[Any] = asyncio.Queue(maxsize=event_queue)
        self.wants_frames = callable(getattr(sink, "on_frame", None))
        self.frames: asyncio.Queue[Any] = asyncio.Queue(maxsize=frame_queue)
        self.tasks: list[asyncio.Task[None]] = []
        self.drop_log = ThrottledLog(log, f"sink {self.stats.name}", "items dropped")


def _put_dropping_oldest(queue: asyncio.Queue[Any], item: Any) -> bool:
    """Put without waiting; when full, discard the oldest item first. True when something was dropped."""
    dropped = False
    while True:
        try:
            queue.put_nowait(item)
            return dropped
        except asyncio.QueueFull:
            try:
                queue.get_nowait()
                queue.task_done()
                dropped = True
            except asyncio.QueueEmpty:  # pragma: no cover - only if a consumer raced us to empty it
                pass


class SinkSet:
    """Fan events and frames out to several sinks without letting any of them block the caller.

    `publish`/`publish_nowait` and `on_frame`/`frame_nowait` never wait: each sink has a bounded event
    queue (`event_queue` items) and, if it takes frames, a bounded frame queue (`frame_queue` frames:
    small, frames are big). Must be used inside a running asyncio loop; workers start on first use.
    `on_drop(sink_name, kind)` is called for every dropped item (kind "event" or "frame"), e.g. to
    count drops in Prometheus. `node` (a cluster node's name) is written into every event that has none.
    """

    name = "sinks"

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        event_queue: int = 1000,
        frame_queue: int = 8,
        drain_timeout_s: float = 5.0,
        close_timeout_s: float = 10.0,
        on_drop: Callable[[str, str], None] | None = None,
        node: str | None = None,
    ) -> None:
        if event_queue < 1 or frame_queue < 1:
            raise ValueError("queue sizes must be at least 1")
        self.sinks = list(sinks)
        self._lanes = [_Lane(s, event_queue, frame_queue) for s in self.sinks]
        self.drain_timeout_s = drain_timeout_s
        self.close_timeout_s = close_timeout_s
        self.on_drop = on_drop
        self.node = node
        self._started = False
        self._closed = False

    def __len__(self) -> int:
        return len(self.sinks)

    def get(self, kind: type[T]) -> T | None:
        """The first sink of class `kind`, or None."""
        for s in self.sinks:
            if isinstance(s, kind):
                return s
        return None

    @property
    def wants_frames(self) -> bool:
        """True when at least one sink takes frames (the pipeline can skip `on_frame` otherwise)."""
        return any(lane.wants_frames for lane in self._lanes)

    def start(self) -> None:
        """Start the worker tasks (done automatically on first publish); needs a running loop."""
        if self._started:
            return
        asyncio.get_running_loop()
        self._started = True
        for lane in self._lanes:
            start = getattr(lane.sink, "start", None)
            if callable(start):
                start()
            lane.tasks.append(asyncio.create_task(self._event_worker(lane), name=f"sink-{lane.stats.name}-events"))
            if lane.wants_frames:
                lane.tasks.append(asyncio.create_task(self._frame_worker(lane), name=f"sink-{lane.stats.name}-frames"))

    def _drop(self, lane: _Lane, kind: str) -> None:
        if kind == "event":
            lane.stats.dropped_events += 1
        else:
            lane.stats.dropped_frames += 1
        lane.drop_log.note(f"{kind} queue_full", 1, "the sink is slower than its input; oldest dropped")
        if self.on_drop is not None:
            try:
                self.on_drop(lane.stats.name, kind)
            except Exception:  # a metrics hook must never break the pipeline
                log.exception("on_drop hook failed")

    def publish_nowait(self, event: Event) -> None:
        """Queue `event` for every sink and return at once."""
        if self._closed:
            raise RuntimeError("SinkSet is closed")
        if self.node is not None and event.node is None:
            event.node = self.node
        self.start()
        for lane in self._lanes:
            if _put_dropping_oldest(lane.events, event):
                self._drop(lane, "event")

    async def publish(self, event: Event) -> None:
        """Same as `publish_nowait` (async so that a SinkSet is itself a Sink); never waits."""
        self.publish_nowait(event)

    def frame_nowait(self, stream: str, frame_bgr: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]) -> None:
        """Queue a frame for the frame sinks and return at once; the caller must not modify the array later."""
        if self._closed:
            raise RuntimeError("SinkSet is closed")
        self.start()
        item = (stream, frame_bgr, pts, tuple(tracks))
        for lane in self._lanes:
            if lane.wants_frames and _put_dropping_oldest(lane.frames, item):
                self._drop(lane, "frame")

    async def on_frame(
        self, stream: str, frame_bgr: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]
    ) -> None:
        """Same as `frame_nowait`; never waits."""
        self.frame_nowait(stream, frame_bgr, pts, tracks)

    async def _event_worker(self, lane: _Lane) -> None:
        while True:
            item = await lane.events.get()
            try:
                await lane.sink.publish(item)
                lane.stats.published += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                lane.stats.errors += 1
                if lane.stats.errors <= 3 or lane.stats.errors % 100 == 0:
                    log.exception("sink %s failed on an event (%d failures so far)", lane.stats.name, lane.stats.errors)
            finally:
                lane.events.task_done()

    async def _frame_worker(self, lane: _Lane) -> None:
        on_frame = lane.sink.on_frame  # type: ignore[attr-defined]
        while True:
            item = await lane.frames.get()
            try:
                await on_frame(*item)
                lane.stats.frames += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                lane.stats.frame_errors += 1
                if lane.stats.frame_errors <= 3 or lane.stats.frame_errors % 100 == 0:
                    log.exception(
                        "sink %s failed on a frame (%d failures so far)", lane.stats.name, lane.stats.frame_errors
                    )
            finally:
                lane.frames.task_done()

    async def _drain(self, lane: _Lane) -> None:
        # Frames first: an evidence clip finishing on the last frames may still want the final events.
        if lane.wants_frames:
            await lane.frames.join()
        await lane.events.join()

    async def aclose(self) -> None:
        """Deliver what is queued (up to `drain_timeout_s` per sink, all sinks at once), then close each
        sink (up to `close_timeout_s`). Items still queued after the drain count as `unsent_at_close`."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            results = await asyncio.gather(
                *(asyncio.wait_for(self._drain(lane), self.drain_timeout_s) for lane in self._lanes),
                return_exceptions=True,
            )
            for lane, result in zip(self._lanes, results, strict=True):
                lane.stats.unsent_at_close = lane.events.qsize() + lane.frames.qsize()
                if isinstance(result, BaseException) and lane.stats.unsent_at_close:
                    log.warning(
                        "sink %s did not drain in %.1f s: %d items unsent",
                        lane.stats.name,
                        self.drain_timeout_s,
                        lane.stats.unsent_at_close,
                    )
                lane.drop_log.flush(force=True)
                for task in lane.tasks:
                    task.cancel()
            await asyncio.gather(*(t for lane in self._lanes for t in lane.tasks), return_exceptions=True)

        async def close_one(lane: _Lane) -> None:
            try:
                await asyncio.wait_for(lane.sink.aclose(), self.close_timeout_s)
            except Exception:
                log.exception("sink %s failed to close", lane.stats.name)

        await asyncio.gather(*(close_one(lane) for lane in self._lanes))

    async def __aenter__(self) -> SinkSet:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stats(self) -> dict[str, SinkStats]:
        """Per-sink counters, by sink name (a repeated name gets #2, #3...)."""
        out: dict[str, SinkStats] = {}
        for lane in self._lanes:
            key = lane.stats.name
            i = 2
            while key in out:
                key = f"{lane.stats.name}#{i}"
                i += 1
            out[key] = lane.stats
        return out


class SinksConfig(StrictModel):
    """Which outputs the monitor writes, and how the fan-out queues are sized."""

    event_queue: int = Field(1000, ge=1, description="Events queued per sink before the oldest are dropped.")
    frame_queue: int = Field(
        8, ge=1, description="Frames queued per frame sink (annotated video, evidence) before the oldest are dropped."
    )
    drain_timeout_s: float = Field(5.0, ge=0, description="At shutdown, seconds each sink gets to work off its queue.")
    close_timeout_s: float = Field(10.0, ge=0, description="At shutdown, seconds each sink gets to close.")
    jsonl: JsonlConfig | None = Field(None, description="Events as JSON lines in a file.")
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="Events POSTed as JSON to URLs.")
    metrics: MetricsConfig | None = Field(None, description="Prometheus metrics.")
    console: ConsoleConfig | None = Field(None, description="Live table on a terminal, plain lines otherwise.")
    annotate: AnnotateConfig | None = Field(None, description="Annotated output video (H.264).")
    evidence: EvidenceConfig | None = Field(None, description="Clip, face snapshot and score timeline per alert.")


def build_sinks(config: SinksConfig, *, smoothing: SmoothingConfig | None = None) -> SinkSet:
    """Build the configured sinks (importing only their dependencies) into a SinkSet.

    `smoothing` gives the thresholds drawn on evidence timelines. When metrics are on, the SinkSet's
    drops, the webhooks' outboxes and the alerts left without evidence are counted in them too; the
    Metrics object is `sinkset.get(MetricsSink).metrics`. A webhook without an `outbox` path keeps it next to the JSONL
    events file (`default_outbox_path`).
    """
    sinks: list[Sink] = []
    on_drop = None
    metrics = None
    if config.metrics is not None:
        from swapwatch.stream.sinks.metrics import Metrics, MetricsSink

        metrics = Metrics(config.metrics)
        if config.metrics.port is not None:
            metrics.start_http_server()
        sinks.append(MetricsSink(metrics))
        on_drop = metrics.sink_dropped
    if config.jsonl is not None:
        from swapwatch.stream.sinks.jsonl import JsonlSink

        sinks.append(JsonlSink(config.jsonl))
    for hook in config.webhooks:
        from swapwatch.stream.sinks.webhook import WebhookSink, default_outbox_path

        events_path = config.jsonl.path if config.jsonl is not None else None
        sinks.append(WebhookSink(hook, outbox_path=default_outbox_path(events_path), metrics=metrics))
    if config.console is not None:
        from rich.console import Console

        from swapwatch.stream.sinks.console import ConsoleSink

        # Events on stdout (`--events -`) keep stdout to JSON lines: the console view moves to stderr.
        events_on_stdout = config.jsonl is not None and config.jsonl.path == "-"
        sinks.append(ConsoleSink(config.console, console=Console(stderr=True) if events_on_stdout else None))
    if config.annotate is not None:
        from swapwatch.stream.sinks.annotate import AnnotatedVideoSink

        sinks.append(AnnotatedVideoSink(config.annotate))
    if config.evidence is not None:
        from swapwatch.stream.sinks.evidence import EvidenceSink

        sinks.append(EvidenceSink(config.evidence, smoothing=smoothing, metrics=metrics))
    return SinkSet(
        sinks,
        event_queue=config.event_queue,
        frame_queue=config.frame_queue,
        drain_timeout_s=config.drain_timeout_s,
        close_timeout_s=config.close_timeout_s,
        on_drop=on_drop,
    )
