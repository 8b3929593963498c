"""The live monitor: sources -> faces -> one shared micro-batcher -> per-track smoothing -> sinks, on asyncio.

    report = asyncio.run(Monitor(load_monitor_config("monitor.yaml")).run(duration_s=60))

One task per source reads its frames (`async for frame in source.frames()`). Each frame goes through
that stream's `FaceTracking` (detect every N frames, track in between, align) in the stream's own worker
thread, the aligned crops are preprocessed there too, and every crop of every track of every stream is
submitted to ONE `MicroBatcher`, so crops from different streams share engine batches. Each score
updates its track's `TrackSmoother`; state changes become `state` events, source state changes become
`stream` events, and every `summary_interval_s` each stream publishes a `summary` event. Everything goes
to one `SinkSet`, which never blocks the frame loop.

Design choices and their trade-offs:

- **Sequential per stream, concurrent across streams.** A stream's next frame starts once the previous
  one is scored. Frame-level pipelining (detecting frame n+1 while frame n is in the engine) would raise
  one stream's throughput on a many-core machine, but on two cores the detector and the classifier
  already compete for the same cores, and order-preserving smoothing would need a reorder buffer. Live
  sources use the `latest` policy, so a slow stream scores fewer frames instead of falling behind;
  recorded sources (`all`) make the reader wait instead.
- **Live sources never wait for the batcher.** Their crops go in with `try_submit` and are dropped
  (counted per stream) when its queue is full; recorded sources use `submit` and wait (back-pressure
  reaches the file reader). A stale face is worth less than a fresh one; a recorded file must be complete.
- **Failure isolation.** A source that fails (missing file, refused connection, corrupt data) ends its
  own task with a `stream` event `failed`; an unexpected error in one stream's processing does the same;
  the other streams carry on. Only a failure of the shared parts (engine, detector, sinks at start)
  stops the monitor.
- **Event order.** A source's terminal state change (ended/failed) is held back until its task has
  scored the frames still queued and ended its tracks, so an events file reads in the order things
  happened to the stream: last scores, track ends, then `stream ended`.
- **Stream clock.** Smoothing and tracking run on the stream's own time (the frame's pts), not on when
  frames arrive, so a file read faster than real time gives the same states as one read at its pace.
  Frames without a pts, and pts that jump back after a reconnection, are placed by the arrival clock
  (`StreamClock`).

Timings: per frame, `queue` (received by the source -> picked up here), `detect` (tracking, alignment and
preprocessing in the worker thread, including the thread hop), `batch_wait` and `infer` (from the
batcher; the frame's slowest crop), `smooth` and `emit`, plus the glass-to-score latency (frame received
-> its faces' smoothed scores ready). Decoding happens in the source's own thread before `received`; it
is reported as the `decode` stage only when the frame carries a `decode_ms` attribute.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from swapwatch.calib.score import apply_calibration
from swapwatch.engine.base import Engine
from swapwatch.engine.batcher import (
    BatcherClosed,
    BatchResult,
    EngineBatchError,
    MicroBatcher,
)
from swapwatch.errors import ConfigError, SwapwatchError
from swapwatch.stream.config import MonitorConfig
from swapwatch.stream.events import (
    Event,
    FrameTrack,
    ModelInfo,
    state_event,
    stream_event,
    summary_event,
)
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.redact import log_text
from swapwatch.stream.sinks import Sink, SinkSet
from swapwatch.stream.sinks.metrics import FRAME_DROP_REASONS
from swapwatch.stream.temporal import (
    LEVEL,
    SmoothingConfig,
    State,
    StreamVerdict,
    TrackSmoother,
    TrackState,
)
from swapwatch.stream.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

SOURCE_DROPS_POLL_S = 1.0
"""How often the source's own drop counters (latest-policy replacements, damaged packets) are read."""

STAGES: tuple[str, ...] = ("decode", "queue", "detect", "batch_wait", "infer", "smooth", "emit")
"""Per-frame stages whose times the monitor reports (ms). `decode` only when the source measures it."""

STATS_WINDOW = 4096
"""Per-frame timings kept for the percentiles (recent past, bounded memory)."""


# --- small records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredFace:
    """One face on one frame after smoothing (what the timeline plot and the demo report read)."""

    track: int
    box: tuple[float, float, float, float]
    detected: bool
    raw_score: float | None  # None: the crop was dropped or its batch failed
    score: float | None
    state: State


@dataclass(frozen=True)
class FrameReport:
    """One processed frame: stream time, pts, its faces, stage times (ms) and glass-to-score latency (ms)."""

    stream: str
    index: int
    t: float
    pts: float | None
    faces: tuple[ScoredFace, ...]
    stages: dict[str, float]
    latency_ms: float


FrameObserver = Callable[[FrameReport], None]


class StreamClock:
    """Maps each frame's (pts, received) to a non-decreasing stream time in seconds.

    pts is used when present. A frame without pts is placed after the previous one by the arrival-clock
    difference (0.0 for the first frame). When pts jumps backwards (a reconnection restarts the stream
    clock) the offset is re-based so time keeps moving forward by the arrival-clock difference.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._last_t: float | None = None
        self._last_received: float | None = None

    def __call__(self, pts: float | None, received: float) -> float:
        last_t, last_rx = self._last_t, self._last_received
        step = max(0.0, received - last_rx) if last_rx is not None else 0.0
        if pts is None:
            t = 0.0 if last_t is None else last_t + step
        else:
            t = float(pts) + self._offset
            if last_t is not None and t < last_t:
                self._offset = last_t + step - float(pts)
                t = last_t + step
        self._last_t, self._last_received = t, received
        return t


class _Timings:
    """Rolling per-stage times and latencies (ms) over the last STATS_WINDOW frames."""

    def __init__(self) -> None:
        self.stages: dict[str, deque[float]] = {s: deque(maxlen=STATS_WINDOW) for s in STAGES}
        self.latency: deque[float] = deque(maxlen=STATS_WINDOW)

    def add(self, stages: dict[str, float], latency_ms: float) -> None:
        for name, ms in stages.items():
            self.stages[name].append(ms)
        self.latency.append(latency_ms)

    @staticmethod
    def summary(values: deque[float]) -> dict[str, float] | None:
        if not values:
            return None
        a = np.fromiter(values, float)
        return {
            "n": int(a.size),
            "mean": round(float(a.mean()), 3),
            "p50": round(float(np.percentile(a, 50)), 3),
            "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "stages_ms": {s: v for s in STAGES if (v := self.summary(self.stages[s])) is not None},
            "latency_ms": self.summary(self.latency),
        }


@dataclass
class StreamReport:
    """What happened to one stream during a run."""

    name: str
    url: str
    source_state: str = "connecting"
    frames: int = 0
    frames_with_faces: int = 0
    faces_scored: int = 0
    crops_dropped: int = 0
    crops_failed: int = 0
    tracks: int = 0
    state_events: int = 0
    worst_state: State = "clear"
    max_score: float | None = None
    error: str | None = None
    last_error: str | None = None
    """Why the source last lost or failed to open its connection (also kept once it recovered)."""
    timings: dict[str, Any] = field(default_factory=dict)


@dataclass
class MonitorReport:
    """The result of `Monitor.run`: per-stream reports, timings, batcher and sink counters, why it stopped."""

    streams: dict[str, StreamReport]
    stopped_by: str
    wall_s: float
    timings: dict[str, Any]
    batcher: dict[str, Any] | None
    sinks: dict[str, Any]
    smoothing: dict[str, float]
    model: dict[str, Any] | None

    @property
    def failed(self) -> list[str]:
        """Streams whose source failed or whose processing broke."""
        return [name for name, s in self.streams.items() if s.source_state == "failed" or s.error is not None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams": {k: asdict(v) for k, v in self.streams.items()},
            "stopped_by": self.stopped_by,
            "wall_s": round(self.wall_s, 3),
            "timings": self.timings,
            "batcher": self.batcher,
            "sinks": self.sinks,
            "smoothing": self.smoothing,
            "model": self.model,
        }


# --- one stream -----------------------------------------------------------------------------------------


class _Shared:
    """What every stream worker uses: engine, batcher, detector, smoothing, sinks, config, observers."""

    def __init__(
        self,
        config: MonitorConfig,
        engine: Engine,
        batcher: MicroBatcher,
        detector: FaceDetector,
        smoothing: SmoothingConfig,
        sinks: SinkSet,
        model_info: ModelInfo,
        observers: Sequence[FrameObserver],
        metrics: Any,
        size: int,
        margin: float,
        crop_size: int,
    ) -> None:
        self.config = config
        self.engine = engine
        self.batcher = batcher
        self.detector = detector
        self.smoothing = smoothing
        self.sinks = sinks
        self.model_info = model_info
        self.observers = list(observers)
        self.metrics = metrics
        self.size = size
        self.margin = margin
        self.crop_size = crop_size  # the model's canonical crop (alignment.size): crops are shrunk from it
        self.timings = _Timings()


class _StreamWorker:
    """Reads one source and runs its frames through faces, the shared batcher, smoothing and the sinks."""

    def __init__(self, shared: _Shared, source: Any) -> None:
        from swapwatch.stream.face_tracking import FaceTracking

        cfg = shared.config.faces
        self.shared = shared
        self.source = source
        self.name: str = source.name
        self.live: bool = source.policy == "latest"
        self.tracking = FaceTracking(
            shared.detector, cfg.tracker, cfg.detect_every, shared.size, shared.margin, shared.crop_size
        )
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"swapwatch-faces-{self.name}")
        self.smoothers: dict[int, TrackSmoother] = {}
        self.latest: dict[int, TrackState] = {}
        self.boxes: dict[int, tuple[float, ...]] = {}
        self.clock = StreamClock()
        self.report = StreamReport(self.name, source.url)
        self.timings = _Timings()
        self._terminal: Event | None = None
        self._last_summary = time.monotonic()
        self._summary_frames = 0
        self._last_t = 0.0
        self._last_pts: float | None = None
        self._last_latency: float | None = None
        self._failed_batches = 0
        self.started_wall = time.time()
        self._processed: deque[float] = deque(maxlen=512)
        self._drop_log = ThrottledLog(log, f"stream {self.name}", "frames dropped", level=logging.INFO, interval_s=60.0)
        self._source_drops = {"source_queue_full": 0, "decode_error": 0}  # source counters already counted
        self._source_drops_read = 0.0
        if shared.metrics is not None:
            for reason in FRAME_DROP_REASONS:  # every reason shows as 0 from the start, so rate() works at once
                shared.metrics.dropped(self.name, reason, 0)

    # -- events ----------------------------------------------------------------------------------------
    def verdict(self, t: float) -> StreamVerdict:
        return StreamVerdict.of(self.name, t, list(self.latest.values()))

    def on_state_change(self, change: Any) -> None:
        """Source listener: stream events, except that ended/failed waits until the frames are done."""
        if self._terminal is not None and self._terminal.source_state == "failed":
            return  # processing already failed this stream; closing the source afterwards is not news
        self.report.source_state = change.new
        reason = change.reason
        if change.new in ("failed", "reconnecting") and reason and change.url not in reason:
            reason = f"{change.url}: {reason}"  # errors name the file or URL (masked) they are about
        if change.new in ("failed", "reconnecting"):
            why = str(change.error) if change.error is not None else change.reason  # without "retry N in ..."
            if why:
                self.report.last_error = why if change.url in why else f"{change.url}: {why}"
        event = stream_event(self.name, change.new, reason, state=self.verdict(self._last_t).state)
        if change.new in ("ended", "failed"):
            self._terminal = event
            return
        self._publish(event)

    def _publish(self, event: Event) -> None:
        try:
            self.shared.sinks.publish_nowait(event)
        except RuntimeError:  # the SinkSet is closed: the monitor is past shutdown
            log.debug("%s: event after the sinks closed: %s", log_text(self.name), event.type)

    def _state_event(self, ts: TrackState, box: Any, pts: float | None, latency_ms: float | None) -> None:
        cal = self.shared.engine.meta.score_calibration
        prob = float(apply_calibration(np.array([ts.score]), cal)[0]) if ts.score is not None else None
        self.report.state_events += 1
        if LEVEL[ts.state] > LEVEL[self.report.worst_state]:
            self.report.worst_state = ts.state
        self._publish(
            state_event(
                self.name, ts, box=box, frame_pts=pts, latency_ms=latency_ms, probability=prob,
                model=self.shared.model_info,
            )
        )

    def _end_track(self, track: int, t: float, reason: str) -> None:
        smoother = self.smoothers.pop(track, None)
        self.latest.pop(track, None)
        self.boxes.pop(track, None)
        if smoother is None or smoother.last_t is None:
            return
        self._state_event(smoother.end(t, reason), None, self._last_pts, None)

    def _maybe_summary(self, t: float, force: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._last_summary
        if not force and elapsed < self.shared.config.summary_interval_s:
            return
        fps = self._summary_frames / elapsed if elapsed > 0 else None
        verdict = self.verdict(t)
        self._publish(
            summary_event(
                verdict, fps=round(fps, 2) if fps is not None else None, frame_pts=self._last_pts,
                latency_ms=self._last_latency, model=self.shared.model_info,
            )
        )
        if self.shared.metrics is not None and fps is not None:
            self.shared.metrics.set_fps(self.name, fps)
        self._last_summary, self._summary_frames = now, 0

    # -- status ------------------------------------------------------------------------------------------
    def fps(self, window_s: float = 2.0) -> float:
        """Frames processed per second over the last `window_s` seconds (0.0 when idle)."""
        now = time.monotonic()
        recent = [t for t in list(self._processed) if t >= now - window_s]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def status(self, running: bool) -> dict[str, Any]:
        """A JSON-ready snapshot: source state and counters, processing fps, live tracks, latency percentiles."""
        r = self.report
        verdict = self.verdict(self._last_t)
        tracks = [
            {
                "track": int(ts.track),
                "state": ts.state,
                "score": None if ts.score is None else round(float(ts.score), 4),
                "raw_score": None if ts.raw_score is None else round(float(ts.raw_score), 4),
                "since_pts": round(float(ts.since), 3),
                "box": list(self.boxes[track]) if track in self.boxes else None,
            }
            for track, ts in sorted(self.latest.items())
            if not ts.ended
        ]
        stats = getattr(self.source, "stats", None)  # wrappers (e.g. a benchmark's) may have none
        try:
            source = stats().to_dict() if callable(stats) else None
        except Exception:  # noqa: BLE001 - a status snapshot must never fail because of one source
            source = None
        return {
            "name": self.name,
            "url": self.source.url,
            "kind": getattr(self.source, "kind", None),
            "live": self.live,
            "running": running,
            "source_state": r.source_state,
            "state": verdict.state,
            "max_score": None if verdict.max_score is None else round(float(verdict.max_score), 4),
            "started": datetime.fromtimestamp(self.started_wall, tz=UTC).isoformat(timespec="milliseconds"),
            "fps": round(self.fps(), 2),
            "frames": r.frames,
            "frames_with_faces": r.frames_with_faces,
            "faces_scored": r.faces_scored,
            "crops_dropped": r.crops_dropped,
            "crops_failed": r.crops_failed,
            "tracks_total": r.tracks,
            "state_events": r.state_events,
            "worst_state": r.worst_state,
            "top_score": None if r.max_score is None else round(float(r.max_score), 4),
            "error": r.error,
            "last_pts": self._last_pts,
            "tracks": tracks,
            "source": source,
            "latency_recent_ms": self._recent_latency(),
            **self.timings.as_dict(),
        }

    def _recent_latency(self, window_s: float = 2.0) -> dict[str, float] | None:
        """Glass-to-score percentiles over the frames of the last `window_s` seconds (for live charts)."""
        now = time.monotonic()
        n = sum(1 for t in list(self._processed) if t >= now - window_s)
        values = list(self.timings.latency)[-n:] if n else []
        return _Timings.summary(deque(values)) if values else None

    # -- the loop ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        from swapwatch.stream.sources import SourceError

        remove = self.source.add_listener(self.on_state_change)
        try:
            async for frame in self.source.frames():
                await self.process(frame)
        except SourceError as err:
            self.report.error = str(err)  # the source already reported `failed` with its reason
        except (BatcherClosed, asyncio.CancelledError):
            raise
        except Exception as err:  # a bug or a bad frame in this stream must not stop the others
            log.exception("%s: processing failed; this stream stops, the others go on", log_text(self.name))
            self.report.error = f"{type(err).__name__}: {err}"
            self.report.source_state = "failed"
            self._terminal = stream_event(self.name, "failed", f"processing failed: {self.report.error}")
        finally:
            await self._finish(remove)

    async def _finish(self, remove: Callable[[], None]) -> None:
        try:
            await self.source.aclose()
        except Exception:
            log.exception("%s: closing the source failed", log_text(self.name))
        remove()
        reason = "stream failed" if self.report.source_state == "failed" else "stream ended"
        for track in list(self.smoothers):
            self._end_track(track, self._last_t, reason)
        if self.report.frames:
            self._maybe_summary(self._last_t, force=True)
        if self._terminal is None:  # the source never reported an end (it should have, once closed)
            self._terminal = stream_event(self.name, "ended", "closed", state=self.verdict(self._last_t).state)
        self._publish(self._terminal)
        self.executor.shutdown(wait=False)
        self.report.timings = self.timings.as_dict()
        self._count_source_drops(force=True)
        self._drop_log.flush(force=True)

    def _faces(self, image: np.ndarray, t: float) -> tuple[list[Any], list[int], np.ndarray | None, float]:
        """Worker thread: track, align, preprocess. Returns faces, ended track ids, batch, elapsed ms."""
        start = time.perf_counter()
        faces = self.tracking.process(image, t)
        ended = self.tracking.ended_tracks()
        batch = self.shared.engine.preprocess(np.stack([f.crop.crop for f in faces])) if faces else None
        return faces, ended, batch, (time.perf_counter() - start) * 1e3

    async def _score(self, batch: np.ndarray, keys: list[int]) -> list[BatchResult | None]:
        batcher = self.shared.batcher
        if self.live:
            futures = [batcher.try_submit(batch[i], key=k) for i, k in enumerate(keys)]
            waiting = [f for f in futures if f is not None]
            dropped = len(futures) - len(waiting)
            if dropped:
                self.report.crops_dropped += dropped
                self._dropped("batcher_full", dropped)
            results = await asyncio.gather(*waiting, return_exceptions=True)
            it = iter(results)
            outcomes: list[Any] = [next(it) if f is not None else None for f in futures]
        else:
            outcomes = await asyncio.gather(*(batcher.submit(batch[i], key=k) for i, k in enumerate(keys)),
                                            return_exceptions=True)
        out: list[BatchResult | None] = []
        for o in outcomes:
            if isinstance(o, BatcherClosed):
                raise o
            if isinstance(o, EngineBatchError):
                self.report.crops_failed += 1
                self._dropped("engine_error", 1)
                self._failed_batches += 1
                if self._failed_batches <= 3 or self._failed_batches % 100 == 0:
                    log.warning("%s: a crop's batch failed in the engine (%d so far): %s", log_text(self.name),
                                self._failed_batches, o)
                out.append(None)
            elif isinstance(o, BaseException):
                raise o
            else:
                out.append(o)
        return out

    async def process(self, frame: Any) -> FrameReport:
        """Score one frame end to end; returns what happened to it (also handed to the observers)."""
        shared = self.shared
        picked = time.monotonic()
        stages: dict[str, float] = {"queue": max(0.0, (picked - frame.received) * 1e3)}
        decode_ms = getattr(frame, "decode_ms", None)
        if decode_ms is not None:
            stages["decode"] = float(decode_ms)
        t = self.clock(frame.pts, frame.received)
        self._last_t, self._last_pts = t, frame.pts
        loop = asyncio.get_running_loop()
        faces, ended, batch, detect_ms = await loop.run_in_executor(self.executor, self._faces, frame.image, t)
        stages["detect"] = detect_ms
        for track in ended:
            self._end_track(track, t, "face lost by the tracker")

        results: list[BatchResult | None] = []
        if batch is not None:
            results = await self._score(batch, [f.track_id for f in faces])
            scored = [r for r in results if r is not None]
            if scored:
                stages["batch_wait"] = max(r.queue_ms for r in scored)
                stages["infer"] = max(r.infer_ms for r in scored)

        t_smooth = time.perf_counter()
        pending_events: list[tuple[TrackState, Any]] = []
        scored_faces: list[ScoredFace] = []
        for face, result in zip(faces, results or [None] * len(faces), strict=True):
            ts: TrackState | None = None
            if result is not None:
                smoother = self.smoothers.get(face.track_id)
                if smoother is None:
                    smoother = self.smoothers[face.track_id] = TrackSmoother(shared.smoothing, face.track_id)
                    self.report.tracks += 1
                ts = smoother.update(t, result.score)
                self.latest[face.track_id] = ts
                self.report.faces_scored += 1
                if ts.changed or (ts.ended and ts.previous != "clear"):
                    pending_events.append((ts, face.box))
                if ts.score is not None:
                    self.report.max_score = max(self.report.max_score or 0.0, ts.score)
            prev = self.latest.get(face.track_id)
            self.boxes[int(face.track_id)] = tuple(round(float(v), 1) for v in face.box)
            scored_faces.append(
                ScoredFace(
                    track=int(face.track_id),
                    box=tuple(round(float(v), 2) for v in face.box),  # type: ignore[arg-type]
                    detected=bool(face.detected),
                    raw_score=None if result is None else float(result.score),
                    score=None if prev is None else prev.score,
                    state=prev.state if prev is not None else "clear",
                )
            )
        self._expire(t, {f.track_id for f in faces})
        stages["smooth"] = (time.perf_counter() - t_smooth) * 1e3
        latency_ms = max(0.0, (time.monotonic() - frame.received) * 1e3)

        t_emit = time.perf_counter()
        for ts, box in pending_events:
            self._state_event(ts, box, frame.pts, round(latency_ms, 3))
        if shared.sinks.wants_frames:
            tracks = [FrameTrack(f.track, f.box, f.state, f.score, f.raw_score) for f in scored_faces]
            try:
                shared.sinks.frame_nowait(self.name, frame.image, frame.pts, tracks)
            except RuntimeError:
                pass
        self.report.frames += 1
        self.report.frames_with_faces += bool(faces)
        self._processed.append(time.monotonic())
        self._summary_frames += 1
        self._last_latency = round(latency_ms, 3)
        self._maybe_summary(t)
        stages["emit"] = (time.perf_counter() - t_emit) * 1e3

        self.timings.add(stages, latency_ms)
        shared.timings.add(stages, latency_ms)
        if shared.metrics is not None:
            m = shared.metrics
            for name, ms in stages.items():
                if name != "queue":
                    m.observe_stage(name, ms / 1e3)
            m.observe_latency(self.name, latency_ms / 1e3)
            m.frame(self.name)
            m.set_faces(self.name, len(faces))
        self._count_source_drops()
        report = FrameReport(self.name, int(frame.index), t, frame.pts, tuple(scored_faces), stages, latency_ms)
        for observer in shared.observers:
            try:
                observer(report)
            except Exception:
                log.exception("frame observer %r failed; ignored", observer)
        return report

    def _dropped(self, reason: str, n: int) -> None:
        """Frames (or face crops) that will not be scored: counted by reason, logged at most once a minute."""
        self._drop_log.note(reason, n)
        if self.shared.metrics is not None:
            self.shared.metrics.dropped(self.name, reason, n)

    def _count_source_drops(self, force: bool = False) -> None:
        """Turn the source's own counters (frames replaced under `latest`, damaged packets) into drops."""
        now = time.monotonic()
        if not force and now - self._source_drops_read < SOURCE_DROPS_POLL_S:
            return
        self._source_drops_read = now
        stats = getattr(self.source, "stats", None)  # wrappers (e.g. a benchmark's) may have none
        try:
            snapshot = stats() if callable(stats) else None
        except Exception:  # noqa: BLE001 - counting must never break a stream
            return
        for reason, total in (("source_queue_full", getattr(snapshot, "dropped", 0)),
                              ("decode_error", getattr(snapshot, "decode_errors", 0))):
            if isinstance(total, int) and total > self._source_drops[reason]:
                self._dropped(reason, total - self._source_drops[reason])
                self._source_drops[reason] = total

    def _expire(self, t: float, seen: set[int]) -> None:
        gap = self.shared.smoothing.max_gap_s
        for track, smoother in list(self.smoothers.items()):
            if track not in seen and smoother.last_t is not None and t - smoother.last_t > gap:
                self._end_track(track, t, f"track unseen for {t - smoother.last_t:.2f} s (> max_gap_s {gap:g})")


# --- the monitor ------------------------------------------------------------------------------------------


def warm_up(engine: Engine, detector: FaceDetector) -> None:
    """One detection and one inference before the sources open.

    ONNX Runtime allocates and plans on a session's first runs (the first detection took ~0.5 s here
    against ~10 ms after); done while a recorded source is already being read, that first frame makes
    the next ones queue up and shows as a latency spike at every start.
    """
    import importlib

    # The tracker imports scipy.optimize (~0.3 s) lazily on its first association; pay that here too.
    importlib.import_module("scipy.optimize")
    detector.detect(np.zeros((360, 640, 3), np.uint8))
    size = engine.input_size
    engine.infer(engine.preprocess(np.zeros((1, size, size, 3), np.uint8)))


def profile_on_sample_faces(engine: Engine, size: int, margin: float) -> Any:
    """The engine's batch-size profile measured on the package's real sample faces (~1-2 s), aligned
    with the monitor's own geometry (and resampling chain, through the model's `alignment.size`) so the
    profile sees the crops the monitor will send."""
    from swapwatch.engine.profile import profile_engine
    from swapwatch.errors import NoFaceError
    from swapwatch.samples import sample_crops

    try:
        crops = sample_crops(size, margin, crop_size=int(engine.meta.alignment.size))
    except NoFaceError:
        raise SwapwatchError("no face found in the package sample images to profile the engine with; "
                             "set batcher.max_batch and batcher.max_wait_ms") from None
    return profile_engine(engine, engine.preprocess(crops), seconds=0.15)


def build_sink_set(config: MonitorConfig, smoothing: SmoothingConfig, extra: Sequence[Sink] = ()) -> SinkSet:
    """The configured sinks plus `extra` ones (e.g. the demo's recorder) in one SinkSet."""
    from swapwatch.stream.sinks import build_sinks

    base = build_sinks(config.sinks, smoothing=smoothing)
    sinks: list[Sink] = [*base.sinks, *extra]
    c = config.sinks
    return SinkSet(sinks, event_queue=c.event_queue, frame_queue=c.frame_queue, drain_timeout_s=c.drain_timeout_s,
                   close_timeout_s=c.close_timeout_s, on_drop=base.on_drop)


class StreamNotFoundError(SwapwatchError, LookupError):
    """No stream of that name is running or listed (API: 404)."""

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        self.name = name
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"stream {name!r}: no such stream (streams: {listed})")


class MonitorStoppedError(SwapwatchError):
    """The monitor is stopping or has stopped: no stream can be added any more (API: 503)."""


class StreamLimitError(SwapwatchError):
    """A new stream would take more readers than the limit allows (API and WHIP: 429)."""


MAX_FINISHED = 64
"""Ended/failed streams kept listed (with their final counters) until removed or replaced by a new one."""


class Monitor:
    """Runs the pipeline for a `MonitorConfig` until the sources end, `duration_s` passes or `stop()`.

    `engine` / `detector` may be given (tests, the demo, a server that keeps them warm); otherwise they
    are opened from the config and closed at the end. `sources` (already built, not yet started, e.g.
    a wrapper that reads a timestamp the sender drew into each frame) run after the configured ones;
    `extra_sinks` join the configured ones;
    `observers` are called synchronously with every processed frame's `FrameReport` (keep them cheap).

    Streams can come and go while it runs: `await add_source(...)` starts one (a `Source`, a
    `SourceConfig` or a URL), `await remove_stream(name)` closes one and waits for its last scores,
    track ends and `stream ended` event. `run(serve=True)` keeps the monitor up with zero or more
    streams until `stop()` (or `duration_s`) instead of ending when the last source ends, which is what
    `swapwatch serve` does. Streams that ended or failed stay listed in `status()` with their final
    counters until removed or replaced by a new stream of the same name (the last MAX_FINISHED when
    serving; a `watch` run keeps all of them for its report).

    A removed stream's reader thread can outlive it for a bounded time (a network open or read blocked
    in FFmpeg returns only at its timeout): such readers are counted by `streams_in_use` until they
    exit, so adding and removing streams in a loop cannot pile up threads and sockets past a limit.
    """

    def __init__(
        self,
        config: MonitorConfig,
        *,
        engine: Engine | None = None,
        detector: FaceDetector | None = None,
        sources: Sequence[Any] = (),
        extra_sinks: Sequence[Sink] = (),
        observers: Sequence[FrameObserver] = (),
    ) -> None:
        self.config = config
        self.extra_sources = list(sources)
        self._engine = engine
        self._detector = detector
        self.extra_sinks = list(extra_sinks)
        self.observers = list(observers)
        self.smoothing: SmoothingConfig | None = None
        self.model_info: ModelInfo | None = None
        self.engine: Engine | None = None
        self.started_wall: float | None = None
        self._stop: asyncio.Event | None = None
        self._stop_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shared: _Shared | None = None
        self._running: dict[str, tuple[_StreamWorker, asyncio.Task[None]]] = {}
        self._listed: dict[str, _StreamWorker] = {}
        self._draining: list[Any] = []
        self._serve = False
        self._reports: list[StreamReport] = []  # `watch` only: streams removed while it ran, for its report
        self._idle = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self.on_stopping: list[Callable[[], Awaitable[None]]] = []
        """Awaited in turn once the monitor stops, before it closes the remaining streams (the server ends
        its WHIP sessions here, so their streams end with the server's reason rather than `closed`)."""

    # -- control ---------------------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask the monitor to stop (idempotent). Safe from a signal handler or from another thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stop.set()
        else:
            loop.call_soon_threadsafe(stop.set)

    @property
    def ready(self) -> bool:
        """True while the shared parts are up and streams can be added (after start-up, before stopping)."""
        return self._shared is not None and not self._closing

    @property
    def stopping(self) -> bool:
        """True once the monitor has begun to stop (or has stopped)."""
        return self._closing or self._stop_reason is not None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until `run()` has the engine, detector, batcher and sinks up (TimeoutError after `timeout`)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    @property
    def metrics(self) -> Any:
        """The Prometheus `Metrics` of the running monitor (None when the metrics sink is off or not started)."""
        return self._shared.metrics if self._shared is not None else None

    @property
    def sinks(self) -> SinkSet | None:
        """The running SinkSet (None before start and after stop)."""
        return self._shared.sinks if self._shared is not None else None

    def stream_names(self) -> list[str]:
        """Streams listed now: running, then waiting to start, then ended/failed ones kept for status."""
        names = list(self._running)
        names += [s.name for s in self.extra_sources if s.name not in names]
        names += [n for n in self._listed if n not in names]
        return names

    def streams_in_use(self) -> int:
        """Streams holding a reader now: running, queued to start, and removed ones whose reader has not exited."""
        self._draining = [s for s in self._draining if s.reader_alive]
        return len(self._running) + len(self.extra_sources) + len(self._draining)

    def _taken(self) -> set[str]:
        """Names a new stream may not use: running ones and ones queued to start."""
        taken = set(self._running) | {s.name for s in self.extra_sources}
        if self._shared is None:  # not started yet: the configured sources will start too
            taken |= {s.resolved_name for s in self.config.sources}
        return taken

    async def add_source(self, source: Any, *, limit: int | None = None) -> str:
        """Start monitoring `source` (a Source not yet started, a SourceConfig or a URL); returns its name.

        Before `run()` starts it is queued and starts with the configured sources. ConfigError when the
        name is already in use by a running stream (give the source another `name`) or the config is
        invalid (naming the field); MonitorStoppedError once the monitor is stopping; StreamLimitError
        when `limit` streams are in use already (`streams_in_use`; checked and taken with no await between).
        """
        from swapwatch.stream.sources import SourceConfig, open_source

        if self.stopping:
            raise MonitorStoppedError("the monitor is stopping; no stream can be added")
        if limit is not None:
            in_use = self.streams_in_use()
            if in_use >= limit:
                draining = f", {len(self._draining)} of them removed and still closing" if self._draining else ""
                raise StreamLimitError(f"{in_use} streams in use{draining} (limit {limit}); remove one or try later")
        if isinstance(source, (str, SourceConfig)):
            source = open_source(source)
        name = str(source.name)
        if name in self._taken():
            raise ConfigError(
                f"name: a stream named {name!r} is already running; remove it first or give the new source "
                "another `name`"
            )
        if self._shared is None:
            self.extra_sources.append(source)
        else:
            self._start_worker(source)
        return name

    async def remove_stream(self, name: str) -> StreamReport:
        """Stop stream `name` and wait for its end (last scores, track ends, `stream ended`); returns its report.

        A stream that already ended or failed is just taken off the list. StreamNotFoundError for an
        unknown name.
        """
        if name in self._running:
            worker, task = self._running[name]
            try:
                await worker.source.aclose()
            except Exception:
                log.exception("%s: closing the source failed", log_text(name))
            try:
                await asyncio.wait_for(asyncio.shield(task), self.config.stop_timeout_s)
            except TimeoutError:
                log.warning("%s: did not finish within %.1f s of its source closing; cancelling it", log_text(name),
                            self.config.stop_timeout_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            except BatcherClosed:
                pass  # the whole monitor is shutting down at the same time
            if self._listed.get(name) is worker:
                del self._listed[name]
                if not self._serve:
                    self._reports.append(worker.report)
            if worker.source.reader_alive:
                self._draining.append(worker.source)
            return worker.report
        for source in self.extra_sources:
            if source.name == name:
                self.extra_sources.remove(source)
                await source.aclose()
                return StreamReport(name, source.url, source_state="ended")
        worker = self._listed.pop(name, None)
        if worker is None:
            raise StreamNotFoundError(name, self.stream_names())
        return worker.report

    def stream_status(self, name: str) -> dict[str, Any]:
        """One stream's status snapshot (see `_StreamWorker.status`); StreamNotFoundError if unknown."""
        worker = self._listed.get(name)
        if worker is not None:
            return worker.status(running=name in self._running and self._running[name][0] is worker)
        for source in self.extra_sources:
            if source.name == name:
                return {"name": name, "url": source.url, "running": False, "source_state": "connecting",
                        "state": "clear", "tracks": [], "frames": 0}
        raise StreamNotFoundError(name, self.stream_names())

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the whole monitor: per-stream status, batcher, model, thresholds."""
        shared = self._shared
        return {
            "ready": self.ready,
            "stopping": self.stopping,
            "started": None if self.started_wall is None
            else datetime.fromtimestamp(self.started_wall, tz=UTC).isoformat(timespec="milliseconds"),
            "streams": {name: self.stream_status(name) for name in self.stream_names()},
            "batcher": shared.batcher.stats().to_dict() if shared is not None else None,
            "model": self.model_info.model_dump() if self.model_info is not None else None,
            "engine": self.engine.name if self.engine is not None else None,
            **(shared.timings.as_dict() if shared is not None else {}),
        }

    # -- internals: one task per stream ------------------------------------------------------------------
    def _start_worker(self, source: Any) -> _StreamWorker:
        assert self._shared is not None
        worker = _StreamWorker(self._shared, source)
        self._listed.pop(worker.name, None)  # an ended stream of the same name is replaced by the new one
        self._listed[worker.name] = worker
        if self._serve:  # a long-lived server keeps the last few finished streams, not every one it ever ran
            finished = [n for n in self._listed if n not in self._running and n != worker.name]
            for old in finished[: max(0, len(finished) - MAX_FINISHED)]:
                del self._listed[old]
        task = asyncio.create_task(worker.run(), name=f"swapwatch-stream-{worker.name}")
        self._running[worker.name] = (worker, task)
        self._idle.clear()
        task.add_done_callback(lambda t, w=worker: self._on_done(w, t))
        return worker

    def _on_done(self, worker: _StreamWorker, task: asyncio.Task[None]) -> None:
        entry = self._running.get(worker.name)
        if entry is not None and entry[0] is worker:
            del self._running[worker.name]
        if not task.cancelled():
            err = task.exception()
            if err is not None and not isinstance(err, BatcherClosed):
                worker.report.error = worker.report.error or f"{type(err).__name__}: {err}"
        if not self._running:
            self._idle.set()

    async def _open(self) -> tuple[Engine, FaceDetector, bool]:
        owns = self._engine is None
        engine = self._engine
        if engine is None:
            from swapwatch.engine.select import engine_from_config

            engine = await asyncio.to_thread(engine_from_config, self.config.engine)
        detector = self._detector
        if detector is None:
            from swapwatch.stream.faces.detector import load_detector

            try:
                detector = await asyncio.to_thread(load_detector, self.config.faces.detector)
            except BaseException:
                if owns:
                    engine.close()
                raise
        return engine, detector, owns

    async def run(self, duration_s: float | None = None, *, serve: bool = False) -> MonitorReport:
        """Run to the end; returns the report. ConfigError for a config that cannot run (no sources
        without `serve`, crop size mismatch); SwapwatchError when the engine, detector or a sink cannot start.

        `serve=True`: run with zero or more streams until `stop()` or `duration_s`, even when every
        stream has ended (streams come and go through `add_source` / `remove_stream`).
        """
        from swapwatch.stream.sources import open_source

        cfg = self.config
        if not serve and not cfg.sources and not self.extra_sources:
            raise ConfigError("sources: no video source given (pass SOURCE arguments or list them under sources:)")
        if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
            raise ConfigError(f"duration: must be a positive number of seconds, got {duration_s}")
        names = [s.resolved_name for s in cfg.sources] + [s.name for s in self.extra_sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"sources: stream name(s) {', '.join(map(repr, dupes))} used twice; give them distinct names")
        self._serve = serve
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_reason is not None:
            self._stop.set()
        started = time.monotonic()
        self.started_wall = time.time()
        engine, detector, owns_engine = await self._open()
        self.engine = engine
        sinks: SinkSet | None = None
        batcher: MicroBatcher | None = None
        try:
            meta = engine.meta
            size = cfg.faces.size if cfg.faces.size is not None else engine.input_size
            if size != engine.input_size:
                raise ConfigError(
                    f"faces.size: {size} differs from the model's input size {engine.input_size} "
                    f"({engine.path.name}); leave it unset to use the model's"
                )
            margin = cfg.faces.margin if cfg.faces.margin is not None else float(meta.alignment.margin)
            crop_size = int(meta.alignment.size)  # the canonical crop the model was trained on
            self.smoothing = cfg.smoothing.resolve(meta.score_calibration)
            model_info = ModelInfo(
                name=engine.path.name, method=meta.method, sha256=meta.model_sha256[:12], precision=meta.precision,
                thresholds=self.smoothing.thresholds(),
            )
            self.model_info = model_info
            sinks = build_sink_set(cfg, self.smoothing, self.extra_sinks)
            sinks.start()
            metrics = None
            if cfg.sinks.metrics is not None:
                from swapwatch.stream.sinks.metrics import MetricsSink

                ms = sinks.get(MetricsSink)
                metrics = ms.metrics if ms is not None else None
            await asyncio.to_thread(warm_up, engine, detector)
            profile = None
            if cfg.batcher.max_batch is None or cfg.batcher.max_wait_ms is None:
                profile = await asyncio.to_thread(profile_on_sample_faces, engine, size, margin)
            batcher = MicroBatcher(engine, cfg.batcher, profile=profile)
            await batcher.start()
            log.info("monitor: %s on %s, batcher max_batch=%s max_wait=%.2f ms, thresholds %s", engine.path.name,
                     engine.name, batcher.max_batch, batcher.max_wait_ms or 0.0,
                     {k: round(v, 4) for k, v in self.smoothing.thresholds().items()})
            shared = _Shared(cfg, engine, batcher, detector, self.smoothing, sinks, model_info, self.observers,
                             metrics, size, margin, crop_size)
            sources = [open_source(s) for s in cfg.sources] + self.extra_sources
            self.extra_sources = []
            # From here on add_source starts streams directly (no await between these lines and the starts).
            self._shared = shared
            for source in sources:
                self._start_worker(source)
            if not self._running:
                self._idle.set()
            self._ready.set()
            stopped_by = await self._supervise(duration_s, serve)
        finally:
            self._closing = True
            if batcher is not None:
                await batcher.aclose()
            if sinks is not None:
                await sinks.aclose()
            if owns_engine:
                engine.close()
        return MonitorReport(
            streams={**{r.name: r for r in self._reports}, **{w.name: w.report for w in self._listed.values()}},
            stopped_by=stopped_by,
            wall_s=time.monotonic() - started,
            timings=shared.timings.as_dict(),
            batcher=batcher.stats().to_dict(),
            sinks={k: v.as_dict() for k, v in sinks.stats().items()},
            smoothing=self.smoothing.thresholds(),
            model=model_info.model_dump(),
        )

    async def _supervise(self, duration_s: float | None, serve: bool) -> str:
        assert self._stop is not None
        stop_wait = asyncio.create_task(self._stop.wait())
        waits: set[asyncio.Task[Any]] = {stop_wait}
        idle_wait = None if serve else asyncio.create_task(self._idle.wait())
        if idle_wait is not None:
            waits.add(idle_wait)
        try:
            done, _ = await asyncio.wait(waits, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
            if idle_wait is not None and idle_wait in done and not self._running:
                stopped_by = "sources ended"
            elif stop_wait in done:
                stopped_by = self._stop_reason or "stopped"
            else:
                stopped_by = f"duration {duration_s:g} s"
            self._closing = True  # no stream may start from here on
            for hook in list(self.on_stopping):
                try:
                    await asyncio.wait_for(hook(), self.config.stop_timeout_s)
                except Exception:
                    log.exception("monitor: a stopping hook failed; the streams are closed anyway")
            running = list(self._running.values())
            if running:
                log.info("monitor: stopping (%s)", stopped_by)
                await asyncio.gather(*(w.source.aclose() for w, _ in running), return_exceptions=True)
                tasks = [t for _, t in running]
                all_done = asyncio.gather(*tasks, return_exceptions=True)
                try:
                    await asyncio.wait_for(asyncio.shield(all_done), self.config.stop_timeout_s)
                except TimeoutError:
                    log.warning("monitor: streams did not finish within %.1f s; cancelling them",
                                self.config.stop_timeout_s)
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            return stopped_by
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def install_signal_handlers(monitor: Monitor, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """SIGINT and SIGTERM stop `monitor` gracefully (flush sinks, exit 0); a second SIGINT interrupts.

    Returns a function that removes the handlers. Where the loop cannot take signal handlers (not the
    main thread, Windows), nothing is installed.
    """
    installed: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        if monitor._stop_reason is not None and sig == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("monitor: %s received, stopping", sig.name)
        monitor.stop(f"{sig.name}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


def run_monitor(
    config: MonitorConfig,
    *,
    duration_s: float | None = None,
    handle_signals: bool = True,
    **kwargs: Any,
) -> MonitorReport:
    """Synchronous entry point for commands: run a Monitor in a fresh event loop, signals handled."""

    async def main() -> MonitorReport:
        monitor = Monitor(config, **kwargs)
        remove = install_signal_handlers(monitor, asyncio.get_running_loop()) if handle_signals else (lambda: None)
        try:
            return await monitor.run(duration_s)
        finally:
            remove()

    return asyncio.run(main())
