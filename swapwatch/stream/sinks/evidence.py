"""Evidence for each alert: a clip from before to after it, a face snapshot and the track's score timeline.

How it works: every frame handed to `on_frame` is downscaled (longer side <= `max_side`) and JPEG-encoded
into a per-stream ring buffer that keeps the last `pre_s + post_s + 1` seconds, and never more than
`max_buffer_mb` (oldest frames go first). When a state event says a track rose into one of `on_states`
(alert by default), a job is opened; once frames `post_s` seconds past the alert have arrived (or
`end_grace_s` after the stream's ended/failed event, or when the sink closes) the job takes the frames
from `pre_s` before to `post_s` after the alert out of the ring, and a writer thread produces, in
`<dir>/<stream>/<time>-track<id>/`:

* `clip.mp4`: H.264 of those frames at their own timestamps (starting at 0);
* `face.png`: the face at full source resolution, cropped (with `snapshot_margin`) from the first frame
  on which the alerting track is seen after the alert (from the downscaled ring if it never is);
* `timeline.png`: raw and smoothed scores of that track over the last `timeline_s` seconds, with the four
  thresholds, the alert moment and the clip's span drawn (matplotlib, Agg, no pyplot state);
* `event.json`: the alert event;

and appends an entry to `<dir>/index.json` (rewritten atomically: temp file + rename).

All or nothing: the files are written into a hidden `.<folder>.partial` folder next to the final one,
renamed to the final name only once every file is complete, and only then listed in the index. When anything fails (a
full disk, most likely) the partial folder and any temp index are removed, so a folder or index entry
always means complete evidence. Such an alert counts as dropped, by reason (`EVIDENCE_DROP_REASONS`, the
`reason` of `swapwatch_sink_dropped_total{sink="evidence",kind="event"}` when metrics are on), and is
logged once per reason and interval with counts (throttled_log.py), never once per alert or frame.

Trade-offs: JPEG frames cost ~2-4 ms of CPU each to encode (in this sink's own thread, never the event
loop) but take ~20x less memory than raw ones, which is what lets a ring hold seconds of several streams;
the clip is therefore a re-encode of JPEGs at `max_side`, good for a person to review, not a forensic
copy of the source bits. Frames reach the sink through the SinkSet's bounded frame queue, so under load
the clip can miss frames (it still plays at true time).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import shutil
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.stream.events import Event, FrameTrack
from swapwatch.stream.temporal import LEVEL, SmoothingConfig, State
from swapwatch.stream.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

EVIDENCE_DROP_REASONS: tuple[str, ...] = ("disk_full", "disk_error", "write_error", "max_pending")
"""Why an alert got no evidence: no space (or quota) left; another OS error writing it; any other failure
(encoding, plotting); more than `max_pending` alerts waiting at once."""

PARTIAL_SUFFIX = ".partial"


def failure_reason(err: BaseException) -> str:
    """The drop reason for an exception raised while writing evidence (PyAV's errors are OSErrors too)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    if isinstance(err, OSError):
        return "disk_error"
    return "write_error"


def _default_on_states() -> list[State]:
    return ["alert"]


class EvidenceConfig(StrictModel):
    """Evidence written for each alert."""

    dir: str = Field(..., description="Folder the evidence and its index.json are written into.")
    pre_s: float = Field(3.0, ge=0, description="Seconds of video before the alert in the clip.")
    post_s: float = Field(3.0, ge=0, description="Seconds of video after the alert in the clip.")
    on_states: list[State] = Field(
        default_factory=_default_on_states, description="States whose rise (a state event entering them) gets evidence."
    )
    max_side: int = Field(
        640, ge=32, description="Ring-buffer frames are downscaled so the longer side is at most this."
    )
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of ring-buffer frames.")
    max_buffer_mb: float = Field(64.0, gt=0, description="Memory cap of one stream's ring buffer, MB (oldest dropped).")
    timeline_s: float = Field(30.0, gt=0, description="Seconds of score history kept per track for the timeline plot.")
    snapshot_margin: float = Field(
        0.3, ge=0, description="Margin around the face box in the snapshot, as a fraction of the box size."
    )
    max_pending: int = Field(
        8, ge=1, description="Alerts waiting for their post-alert frames at once (more are skipped)."
    )
    crf: int = Field(23, ge=0, le=51, description="x264 quality of the clips.")
    preset: str = Field("veryfast", description="x264 preset of the clips.")
    fps: float = Field(30.0, gt=0, description="Nominal frame rate, for frames without a pts.")
    end_grace_s: float = Field(
        2.0,
        ge=0,
        description="Seconds after a stream's ended/failed event before its waiting alerts are written with the "
        "frames there are (its last queued frames can arrive after the event).",
    )


@dataclass(frozen=True)
class BufferedFrame:
    """One ring-buffer frame: stream time, JPEG bytes, and the scale from source pixels to it."""

    pts: float
    jpeg: bytes
    scale: float


class FrameRing:
    """Recent frames of one stream, bounded by seconds and by bytes."""

    def __init__(self, keep_s: float, max_bytes: int) -> None:
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self.frames: deque[BufferedFrame] = deque()
        self.nbytes = 0

    def add(self, frame: BufferedFrame) -> None:
        self.frames.append(frame)
        self.nbytes += len(frame.jpeg)
        while len(self.frames) > 1 and (self.frames[0].pts < frame.pts - self.keep_s or self.nbytes > self.max_bytes):
            self.nbytes -= len(self.frames.popleft().jpeg)

    @property
    def latest_pts(self) -> float | None:
        return self.frames[-1].pts if self.frames else None

    def between(self, t0: float, t1: float) -> list[BufferedFrame]:
        return [f for f in self.frames if t0 <= f.pts <= t1]


@dataclass
class _Job:
    event: Event
    stream: str
    track: int | None
    alert_pts: float
    end_pts: float
    box: tuple[float, float, float, float] | None
    snapshot: np.ndarray | None = None
    history: list[tuple[float, float | None, float | None, str]] = field(default_factory=list)


def safe_name(text: str) -> str:
    """A folder name for `text` that stays inside its parent folder: ASCII letters, digits, '-', '_' and
    '.' are kept (at most 128 of them), anything else becomes '_', and a leading '.' becomes '_' (so never
    '.', '..' or a hidden folder); 'stream' when `text` is empty."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text[:128])
    return "_" + name[1:] if name.startswith(".") else name or "stream"


def _decode_jpeg(data: bytes) -> np.ndarray:
    """A buffered frame's BGR pixels (the ring holds JPEGs this sink encoded itself)."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"a buffered frame's JPEG ({len(data)} bytes) does not decode")
    return img


def crop_face(frame: np.ndarray, box: Sequence[float], margin: float, scale: float = 1.0) -> np.ndarray | None:
    """The box (source pixels, times `scale` for a resized frame) grown by `margin`, clipped to the frame."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c, d = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if c - a < 2 or d - b < 2:
        return None
    return frame[b:d, a:c].copy()


def plot_timeline(
    path: str | Path,
    history: Sequence[tuple[float, float | None, float | None, str]],
    *,
    alert_pts: float,
    clip_span: tuple[float, float] | None,
    thresholds: dict[str, float] | None,
    title: str,
) -> None:
    """Write the score timeline PNG: raw and smoothed score vs seconds from the alert, thresholds dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    t = np.array([h[0] - alert_pts for h in history], np.float64)
    raw = np.array([np.nan if h[1] is None else h[1] for h in history], np.float64)
    smooth = np.array([np.nan if h[2] is None else h[2] for h in history], np.float64)
    if clip_span is not None:
        ax.axvspan(clip_span[0] - alert_pts, clip_span[1] - alert_pts, color="0.92", label="clip")
    if t.size:
        ax.plot(t, raw, ".", color="0.55", markersize=3, label="raw score")
        ax.plot(t, smooth, "-", color="black", linewidth=1.8, label="smoothed score")
    colors = {"suspicious": "tab:orange", "alert": "tab:red"}
    for name, value in (thresholds or {}).items():
        level = name.split("_")[0]
        ax.axhline(value, color=colors.get(level, "tab:blue"), linestyle="--" if name.endswith("enter") else ":",
                   linewidth=1.0, label=name)  # fmt: skip
    ax.axvline(0.0, color="tab:red", linewidth=1.2)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("seconds from alert")
    ax.set_ylabel("score (raw scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


class EvidenceSink:
    """Writes a clip, a face snapshot and a score timeline for every alert, plus an index.json."""

    name = "evidence"

    def __init__(
        self, config: EvidenceConfig, *, smoothing: SmoothingConfig | None = None, metrics: Any = None
    ) -> None:
        self.config = config
        self.dir = Path(config.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.thresholds = smoothing.thresholds() if smoothing is not None else None
        self.index_path = self.dir / "index.json"
        self.items: list[dict[str, Any]] = self._load_index()
        self.rings: dict[str, FrameRing] = {}
        self.histories: dict[tuple[str, int], deque[tuple[float, float | None, float | None, str]]] = {}
        self.pending: list[_Job] = []
        self.skipped = 0
        self.failed = 0
        self.drops: dict[str, int] = {}  # by reason (EVIDENCE_DROP_REASONS)
        self._metrics = metrics
        # One per thread (ThrottledLog is not thread-safe): skips happen on the loop, failures in the writer.
        self._skip_log = ThrottledLog(log, "evidence", "alerts without evidence")
        self._fail_log = ThrottledLog(log, "evidence", "alerts without evidence")
        self._last_pts: dict[str, float] = {}
        self._ingest = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evidence-ingest")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evidence-write")
        self._writes: list[Future[Any]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False
        if metrics is not None:
            for reason in EVIDENCE_DROP_REASONS:
                metrics.sink_dropped(self.name, "event", reason, 0)
        self._remove_partials()

    def _remove_partials(self) -> None:
        """Remove folders a killed process left half-written (they never made it into the index)."""
        for partial in self.dir.glob(f"*/.*{PARTIAL_SUFFIX}"):
            shutil.rmtree(partial, ignore_errors=True)

    def _drop(self, reason: str, throttle: ThrottledLog, detail: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        throttle.note(reason, 1, detail)
        if self._metrics is not None:
            self._metrics.sink_dropped(self.name, "event", reason)

    def _load_index(self) -> list[dict[str, Any]]:
        if not self.index_path.is_file():
            return []
        try:
            data = json.loads(self.index_path.read_text())
            return list(data.get("items", []))
        except (OSError, ValueError, AttributeError) as err:
            log.warning("%s: unreadable evidence index (%s): starting a new one", self.index_path, err)
            return []

    # -- frames ------------------------------------------------------------------------------------------
    def _ring(self, stream: str) -> FrameRing:
        ring = self.rings.get(stream)
        if ring is None:
            c = self.config
            ring = self.rings[stream] = FrameRing(c.pre_s + c.post_s + 1.0, int(c.max_buffer_mb * 1e6))
        return ring

    def _encode(
        self, frame: np.ndarray, crops: list[tuple[_Job, tuple[float, float, float, float]]]
    ) -> tuple[bytes, float, list[tuple[_Job, np.ndarray | None]]]:
        import cv2

        h, w = frame.shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        small = (
            cv2.resize(frame, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA)
            if scale < 1
            else frame
        )
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:  # pragma: no cover - only for invalid arrays
            raise ValueError("JPEG encoding failed")
        cut = [(job, crop_face(frame, box, self.config.snapshot_margin)) for job, box in crops]
        return buf.tobytes(), scale, cut

    async def on_frame(
        self, stream: str, frame_bgr: np.ndarray, pts: float | None, tracks: Sequence[FrameTrack]
    ) -> None:
        if self._closed:
            return
        if pts is None:
            last = self._last_pts.get(stream)
            pts = 0.0 if last is None else last + 1.0 / self.config.fps
        pts = float(pts)
        self._last_pts[stream] = pts
        by_id = {t.track: t for t in tracks}
        for t in tracks:
            hist = self.histories.setdefault((stream, t.track), deque())
            hist.append((pts, t.raw_score, t.score, t.state))
            while hist and hist[0][0] < pts - self.config.timeline_s:
                hist.popleft()
        crops = [
            (job, by_id[job.track].box)
            for job in self.pending
            if job.stream == stream and job.snapshot is None and job.track in by_id and pts >= job.alert_pts
        ]
        loop = asyncio.get_running_loop()
        jpeg, scale, cut = await loop.run_in_executor(self._ingest, self._encode, frame_bgr, crops)
        self._ring(stream).add(BufferedFrame(pts, jpeg, scale))
        for job, crop in cut:
            if crop is not None and job.snapshot is None:
                job.snapshot = crop
        self._forget_stale_histories(stream, pts)
        for job in [j for j in self.pending if j.stream == stream and pts >= j.end_pts]:
            self._finish(job)

    def _forget_stale_histories(self, stream: str, pts: float) -> None:
        for key in [
            k for k, h in self.histories.items() if k[0] == stream and h and h[-1][0] < pts - self.config.timeline_s
        ]:
            del self.histories[key]

    # -- events ------------------------------------------------------------------------------------------
    async def publish(self, event: Event) -> None:
        if self._closed:
            return
        rose = event.previous_state is not None and LEVEL[event.state] > LEVEL[event.previous_state]
        if event.type == "state" and rose and event.state in self.config.on_states:
            if event.ended:
                return
            if len(self.pending) >= self.config.max_pending:
                self.skipped += 1
                self._drop(
                    "max_pending", self._skip_log,
                    f"{len(self.pending)} alerts already pending, skipped {event.stream} track {event.track}",
                )  # fmt: skip
                return
            ring = self.rings.get(event.stream)
            alert_pts = event.frame_pts
            if alert_pts is None:
                alert_pts = ring.latest_pts if ring is not None and ring.latest_pts is not None else 0.0
            box = tuple(event.box) if event.box is not None else None
            self.pending.append(
                _Job(event, event.stream, event.track, float(alert_pts), float(alert_pts) + self.config.post_s, box)  # type: ignore[arg-type]
            )
        elif event.type == "stream" and event.source_state in ("ended", "failed"):
            # Not at once: frames travel on another queue and the stream's last ones may still be coming.
            stream = event.stream

            def fire() -> None:
                self._timers.discard(handle)
                if not self._closed:
                    for job in [j for j in self.pending if j.stream == stream]:
                        self._finish(job)

            handle = asyncio.get_running_loop().call_later(self.config.end_grace_s, fire)
            self._timers.add(handle)

    # -- writing -----------------------------------------------------------------------------------------
    def _finish(self, job: _Job) -> None:
        """Freeze the job's frames and history now; write them in the writer thread."""
        self.pending.remove(job)
        ring = self.rings.get(job.stream)
        frames = ring.between(job.alert_pts - self.config.pre_s, job.end_pts) if ring is not None else []
        if job.track is not None:
            job.history = list(self.histories.get((job.stream, job.track), ()))
        self._writes.append(self._writer.submit(self._write, job, frames))
        self._writes = [f for f in self._writes if not f.done()]

    def _write(self, job: _Job, frames: list[BufferedFrame]) -> dict[str, Any] | None:
        try:
            return self._write_files(job, frames)
        except Exception as err:
            self.failed += 1
            reason = failure_reason(err)
            if reason == "write_error" and reason not in self.drops:  # a bug, not the disk: its traceback, once
                log.exception("evidence for %s track %s failed", job.stream, job.track)
            self._drop(reason, self._fail_log, f"last: {job.stream} track {job.track}: {type(err).__name__}: {err}")
            return None

    def _write_files(self, job: _Job, frames: list[BufferedFrame]) -> dict[str, Any]:
        stamp = job.event.time.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        folder = self.dir / safe_name(job.stream) / f"{stamp}-track{job.track if job.track is not None else 'none'}"
        n = 1
        while folder.exists():
            n += 1
            folder = folder.with_name(f"{folder.name.split('~')[0]}~{n}")
        staging = folder.with_name(f".{folder.name}{PARTIAL_SUFFIX}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            entry = self._write_folder(job, frames, staging, folder)
            staging.rename(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            self._write_index([*self.items, entry])
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # not listed: it must not stay looking like evidence
            raise
        self.items.append(entry)
        return entry

    def _write_index(self, items: list[dict[str, Any]]) -> None:
        tmp = self.index_path.with_name(self.index_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"version": 1, "items": items}, indent=2) + "\n")
            os.replace(tmp, self.index_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_folder(self, job: _Job, frames: list[BufferedFrame], staging: Path, folder: Path) -> dict[str, Any]:
        """Write the evidence files into `staging`; the entry names them as they will be under `folder`."""
        import cv2

        from swapwatch.stream.sinks.annotate import VideoWriter

        c = self.config
        entry: dict[str, Any] = {
            "event_id": job.event.id,
            "time": job.event.to_dict()["time"],
            "stream": job.stream,
            "track": job.track,
            "state": job.event.state,
            "score": job.event.score,
            "raw_score": job.event.raw_score,
            "box": job.event.box,
            "alert_pts": job.alert_pts,
            "folder": str(folder.relative_to(self.dir)),
            "clip": None,
            "clip_start_pts": None,
            "clip_end_pts": None,
            "clip_frames": 0,
            "snapshot": None,
            "timeline": None,
        }
        (staging / "event.json").write_text(json.dumps(job.event.to_dict(), indent=2) + "\n")

        if frames:
            writer = VideoWriter(staging / "clip.mp4", crf=c.crf, preset=c.preset, fps=c.fps)
            try:
                for f in frames:
                    writer.write(_decode_jpeg(f.jpeg), f.pts)
            finally:
                writer.close()
            entry.update(
                clip=str((folder / "clip.mp4").relative_to(self.dir)),
                clip_start_pts=frames[0].pts,
                clip_end_pts=frames[-1].pts,
                clip_frames=len(frames),
            )

        snapshot = job.snapshot
        if snapshot is None and frames and job.box is not None:
            nearest = min(frames, key=lambda f: abs(f.pts - job.alert_pts))
            snapshot = crop_face(_decode_jpeg(nearest.jpeg), job.box, c.snapshot_margin, nearest.scale)
        if snapshot is not None:
            ok, png = cv2.imencode(".png", snapshot)
            if not ok:  # pragma: no cover - only for invalid arrays
                raise ValueError("PNG encoding failed")
            (staging / "face.png").write_bytes(png.tobytes())  # not cv2.imwrite: it hides why a write failed
            entry["snapshot"] = str((folder / "face.png").relative_to(self.dir))

        span = (frames[0].pts, frames[-1].pts) if frames else None
        plot_timeline(
            staging / "timeline.png",
            job.history,
            alert_pts=job.alert_pts,
            clip_span=span,
            thresholds=self.thresholds,
            title=f"{job.stream} track {job.track}: {job.event.previous_state} -> {job.event.state}",
        )
        entry["timeline"] = str((folder / "timeline.png").relative_to(self.dir))
        return entry

    async def flush(self) -> None:
        """Wait until everything handed to the writer thread is written."""
        pending = [asyncio.wrap_future(f) for f in self._writes]
        if pending:
            await asyncio.gather(*pending)
        self._writes = [f for f in self._writes if not f.done()]

    async def aclose(self) -> None:
        """Write evidence for alerts still waiting (with the frames there are), then stop the threads."""
        if self._closed:
            return
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for job in list(self.pending):
            self._finish(job)
        await self.flush()
        self._ingest.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self._skip_log.flush(force=True)
        self._fail_log.flush(force=True)  # the writer thread is done: safe from here
