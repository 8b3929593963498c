"""One stream of the live monitor: its source's frames -> faces -> the shared batcher -> its TrackBook -> sinks.

`Monitor` (swapwatch/stream/pipeline.py) runs one `StreamWorker` per source as an asyncio task; all the
workers share one engine, detector, `MicroBatcher` and `SinkSet` (`Shared`). Per-track smoothing, expiry,
ending and the stream verdict are the stream's `TrackBook` (swapwatch/stream/temporal.py).

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
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from swapwatch.calib.score import apply_calibration
from swapwatch.engine.base import Engine
from swapwatch.engine.batcher import BatcherClosed, BatchResult, EngineBatchError, MicroBatcher
from swapwatch.stream.config import MonitorConfig
from swapwatch.stream.events import Event, FrameTrack, ModelInfo, state_event, stream_event, summary_event
from swapwatch.stream.face_tracking import FaceTracking, TrackedFace
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.redact import log_text
from swapwatch.stream.sinks import SinkSet
from swapwatch.stream.sinks.metrics import FRAME_DROP_REASONS, Metrics
from swapwatch.stream.sources import Frame, Source, SourceError, StateChange
from swapwatch.stream.temporal import LEVEL, SmoothingConfig, State, TrackBook, TrackState
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


class StageTimings:
    """Rolling per-stage times and latencies (ms) over the last STATS_WINDOW frames."""

    def __init__(self) -> None:
        self.stages: dict[str, deque[float]] = {s: deque(maxlen=STATS_WINDOW) for s in STAGES}
        self.latency: deque[float] = deque(maxlen=STATS_WINDOW)

    def add(self, stages: dict[str, float], latency_ms: float) -> None:
        for name, ms in stages.items():
            self.stages[name].append(ms)
        self.latency.append(latency_ms)

    @staticmethod
    def summary(values: Sequence[float]) -> dict[str, float] | None:
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
class Shared:
    """What every stream worker uses: engine, batcher, detector, smoothing, sinks, config, observers."""

    config: MonitorConfig
    engine: Engine
    batcher: MicroBatcher
    detector: FaceDetector
    smoothing: SmoothingConfig
    sinks: SinkSet
    model_info: ModelInfo
    observers: Sequence[FrameObserver]
    metrics: Metrics | None
    size: int
    margin: float
    crop_size: int  # the model's canonical crop (alignment.size): crops are shrunk from it
    timings: StageTimings = field(default_factory=StageTimings)


# --- one stream -------------------------------------------------------------------------------------------


class StreamWorker:
    """Reads one source and runs its frames through faces, the shared batcher, its TrackBook and the sinks."""

    def __init__(self, shared: Shared, source: Source) -> None:
        cfg = shared.config.faces
        self.shared = shared
        self.source = source
        self.name: str = source.name
        self.live: bool = source.policy == "latest"
        self.tracking = FaceTracking(
            shared.detector, cfg.tracker, cfg.detect_every, shared.size, shared.margin, shared.crop_size
        )
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"swapwatch-faces-{self.name}")
        self.book = TrackBook(self.name, shared.smoothing)
        self.boxes: dict[int, tuple[float, ...]] = {}  # last box of each face, for status
        self.clock = StreamClock()
        self.report = StreamReport(self.name, source.url)
        self.timings = StageTimings()
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
    def on_state_change(self, change: StateChange) -> None:
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
        event = stream_event(self.name, change.new, reason, state=self.book.verdict(self._last_t).state)
        if change.new in ("ended", "failed"):
            self._terminal = event
            return
        self._publish(event)

    def _publish(self, event: Event) -> None:
        try:
            self.shared.sinks.publish_nowait(event)
        except RuntimeError:  # the SinkSet is closed: the monitor is past shutdown
            log.debug("%s: event after the sinks closed: %s", log_text(self.name), event.type)

    def _state_event(
        self, ts: TrackState, box: np.ndarray | None, pts: float | None, latency_ms: float | None
    ) -> None:
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

    def _tracks_ended(self, ended: list[TrackState]) -> None:
        """Publish the end of tracks the book has closed (face lost, expired, stream over)."""
        for ts in ended:
            self.boxes.pop(ts.track, None)
            self._state_event(ts, None, self._last_pts, None)

    def _maybe_summary(self, t: float, force: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._last_summary
        if not force and elapsed < self.shared.config.summary_interval_s:
            return
        fps = self._summary_frames / elapsed if elapsed > 0 else None
        verdict = self.book.verdict(t)
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
        verdict = self.book.verdict(self._last_t)
        tracks = [
            {
                "track": int(ts.track),
                "state": ts.state,
                "score": None if ts.score is None else round(float(ts.score), 4),
                "raw_score": None if ts.raw_score is None else round(float(ts.raw_score), 4),
                "since_pts": round(float(ts.since), 3),
                "box": list(self.boxes[ts.track]) if ts.track in self.boxes else None,
            }
            for ts in sorted(self.book.states(), key=lambda s: s.track)
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
        return StageTimings.summary(list(self.timings.latency)[-n:] if n else [])

    # -- the loop ----------------------------------------------------------------------------------------
    async def run(self) -> None:
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
        self._tracks_ended(self.book.end_all(self._last_t, reason))
        if self.report.frames:
            self._maybe_summary(self._last_t, force=True)
        if self._terminal is None:  # the source never reported an end (it should have, once closed)
            self._terminal = stream_event(self.name, "ended", "closed", state=self.book.verdict(self._last_t).state)
        self._publish(self._terminal)
        self.executor.shutdown(wait=False)
        self.report.timings = self.timings.as_dict()
        self._count_source_drops(force=True)
        self._drop_log.flush(force=True)

    def _faces(self, image: np.ndarray, t: float) -> tuple[list[TrackedFace], list[int], np.ndarray | None, float]:
        """Worker thread: track, align, preprocess. Returns faces, ended track ids, batch, elapsed ms."""
        start = time.perf_counter()
        faces = self.tracking.process(image, t)
        ended = self.tracking.ended_tracks()
        batch = self.shared.engine.preprocess(np.stack([f.crop.crop for f in faces])) if faces else None
        return faces, ended, batch, (time.perf_counter() - start) * 1e3

    async def _score(self, batch: np.ndarray, keys: list[int]) -> list[BatchResult | None]:
        batcher = self.shared.batcher
        outcomes: list[BatchResult | BaseException | None]
        if self.live:
            futures = [batcher.try_submit(batch[i], key=k) for i, k in enumerate(keys)]
            waiting = [f for f in futures if f is not None]
            dropped = len(futures) - len(waiting)
            if dropped:
                self.report.crops_dropped += dropped
                self._dropped("batcher_full", dropped)
            results = await asyncio.gather(*waiting, return_exceptions=True)
            it = iter(results)
            outcomes = [next(it) if f is not None else None for f in futures]
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

    async def process(self, frame: Frame) -> FrameReport:
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
            self.boxes.pop(track, None)
            lost = self.book.end(track, t, "face lost by the tracker")
            if lost is not None:
                self._state_event(lost, None, frame.pts, None)

        results: list[BatchResult | None] = []
        if batch is not None:
            results = await self._score(batch, [f.track_id for f in faces])
            scored = [r for r in results if r is not None]
            if scored:
                stages["batch_wait"] = max(r.queue_ms for r in scored)
                stages["infer"] = max(r.infer_ms for r in scored)

        t_smooth = time.perf_counter()
        pending_events: list[tuple[TrackState, np.ndarray]] = []
        scored_faces: list[ScoredFace] = []
        for face, result in zip(faces, results or [None] * len(faces), strict=True):
            if result is not None:
                if face.track_id not in self.book:
                    self.report.tracks += 1
                ts = self.book.update(face.track_id, t, result.score)
                self.report.faces_scored += 1
                if ts.changed:  # also a restart after a gap (`ended`) of a track that was not clear
                    pending_events.append((ts, face.box))
                if ts.score is not None:
                    self.report.max_score = max(self.report.max_score or 0.0, ts.score)
            latest = self.book.state(face.track_id)
            self.boxes[int(face.track_id)] = tuple(round(float(v), 1) for v in face.box)
            x1, y1, x2, y2 = (round(float(v), 2) for v in face.box)
            scored_faces.append(
                ScoredFace(
                    track=int(face.track_id),
                    box=(x1, y1, x2, y2),
                    detected=bool(face.detected),
                    raw_score=None if result is None else float(result.score),
                    score=None if latest is None else latest.score,
                    state=latest.state if latest is not None else "clear",
                )
            )
        self._tracks_ended(self.book.expire(t, seen={f.track_id for f in faces}))
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
