"""Per-frame measurements: a Source wrapper that reads each frame's glass time, and a Monitor observer.

`GlassSource` wraps any monitor source (RTSP, WebRTC, file). As the monitor takes each frame, it
reads the glass stamp the sender drew into the picture (see glass_stamp.py) and notes the frame's
glass time and sender sequence number under the frame's index. For the `file` transport nothing was
drawn; the glass time is the frame's place on the file's schedule, worked out afterwards (see
`FrameRecorder.finish`). The `FrameRecorder` is the monitor observer: for every scored frame it
joins the `FrameReport` (stage times, faces, states) with that glass time.

Reading the stamp costs ~0.1 ms per frame on the event loop. It happens after the frame was received
and before the monitor picks it up, so it is inside the `queue` stage and the total: the benchmark's
own overhead is never hidden from the numbers it reports.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swapwatch.stream.bench.glass_stamp import read_stamp

if TYPE_CHECKING:
    from swapwatch.stream.sources.base import Source
    from swapwatch.stream.sources.frames import Frame
    from swapwatch.stream.worker import FrameReport

STAGE_ORDER: tuple[str, ...] = ("receive", "decode", "queue", "detect", "batch_wait", "infer", "smooth", "other")
"""The parts of glass-to-score, in order: they add up to it (`other`: what no stage covers, e.g. hops)."""


@dataclass(slots=True)
class GlassMark:
    """What the wrapper learnt about one frame before the monitor processed it."""

    glass: float | None  # seconds on time.monotonic()'s clock; None: no readable stamp (or file mode)
    seq: int
    received: float
    pts: float | None
    decode_ms: float | None


@dataclass(slots=True)
class FrameRecord:
    """One scored frame: its glass time and everything the monitor measured about it."""

    stream: str
    seq: int
    glass: float
    received: float
    score_ready: float
    done: float
    stages: dict[str, float]
    faces: int
    scored_faces: int
    alert_started: bool

    @property
    def glass_to_score_ms(self) -> float:
        return (self.score_ready - self.glass) * 1e3

    @property
    def glass_to_done_ms(self) -> float:
        """Glass to the end of the monitor's work on the frame (events handed to the sinks)."""
        return (self.done - self.glass) * 1e3

    def breakdown(self) -> dict[str, float]:
        """Glass-to-score split into STAGE_ORDER parts (ms).

        Decoding counts only as far as it happened after the glass time: a paced file is decoded ahead
        of its due time (the file transport's glass), so none of its decoding is latency there.
        """
        s = self.stages
        before_received = max(0.0, (self.received - self.glass) * 1e3)
        decode = min(s.get("decode", 0.0), before_received)
        parts = {
            "receive": before_received - decode,
            "decode": decode,
            "queue": s.get("queue", 0.0),
            "detect": s.get("detect", 0.0),
            "batch_wait": s.get("batch_wait", 0.0),
            "infer": s.get("infer", 0.0),
            "smooth": s.get("smooth", 0.0),
        }
        parts["other"] = max(0.0, self.glass_to_score_ms - sum(parts.values()))
        return parts

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream, "seq": self.seq, "glass": round(self.glass, 6),
            "glass_to_score_ms": round(self.glass_to_score_ms, 3), "glass_to_done_ms": round(self.glass_to_done_ms, 3),
            "stages_ms": {k: round(v, 3) for k, v in self.breakdown().items()}, "emit_ms": round(self.stages.get("emit", 0.0), 3),
            "faces": self.faces, "scored_faces": self.scored_faces, "alert_started": self.alert_started,
        }  # fmt: skip


@dataclass
class StreamMarks:
    """Per stream: frames seen by the wrapper and not yet scored, and counters."""

    pending: dict[int, GlassMark] = field(default_factory=dict)
    seen: int = 0
    unreadable: int = 0


class GlassSource:
    """A monitor source whose frames get their glass time read as the monitor takes them.

    Everything but `frames()` is the wrapped source's (name, url, policy, listeners, stats, aclose).
    `stamped=False` (file transport): no stamp is read; the sequence number is the frame index.
    """

    def __init__(self, inner: Source, recorder: FrameRecorder, *, stamped: bool = True) -> None:
        self._inner = inner
        self._recorder = recorder
        self._stamped = stamped
        self._marks = recorder.register(inner.name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def frames(self) -> AsyncIterator[Frame]:
        marks = self._marks
        async for frame in self._inner.frames():
            marks.seen += 1
            glass, seq = None, int(frame.index)
            if self._stamped:
                stamp = read_stamp(frame.image)
                if stamp is None:
                    marks.unreadable += 1
                else:
                    glass, seq = stamp.t, stamp.seq
            marks.pending[int(frame.index)] = GlassMark(glass, seq, float(frame.received), frame.pts,
                                                        getattr(frame, "decode_ms", None))
            yield frame

    async def aclose(self) -> None:
        await self._inner.aclose()


class FrameRecorder:
    """Monitor observer: joins each `FrameReport` with its frame's glass mark into a `FrameRecord`."""

    def __init__(self, stamped: bool = True) -> None:
        self.stamped = stamped
        self.streams: dict[str, StreamMarks] = {}
        self.records: list[FrameRecord] = []
        self._file_marks: list[tuple[FrameRecord, float | None]] = []
        self._alerting: dict[tuple[str, int], bool] = {}

    def register(self, stream: str) -> StreamMarks:
        marks = self.streams[stream] = StreamMarks()
        return marks

    def __call__(self, report: FrameReport) -> None:
        done = time.monotonic()
        marks = self.streams.get(report.stream)
        if marks is None:
            return
        mark = marks.pending.pop(int(report.index), None)
        if mark is None:
            return
        alert_started = False
        for face in report.faces:
            key = (report.stream, face.track)
            alerting = face.state == "alert"
            if alerting and not self._alerting.get(key, False):
                alert_started = True
            self._alerting[key] = alerting
        score_ready = mark.received + report.latency_ms / 1e3
        stages = dict(report.stages)
        if mark.decode_ms is not None:
            stages["decode"] = float(mark.decode_ms)
        record = FrameRecord(
            stream=report.stream, seq=mark.seq, glass=mark.glass if mark.glass is not None else float("nan"),
            received=mark.received, score_ready=score_ready, done=done, stages=stages, faces=len(report.faces),
            scored_faces=sum(f.raw_score is not None for f in report.faces), alert_started=alert_started,
        )
        if mark.glass is None and not self.stamped:
            self._file_marks.append((record, mark.pts))
        elif mark.glass is None:
            return  # unreadable stamp: counted by the wrapper, no latency for it
        self.records.append(record)

    def finish(self) -> list[FrameRecord]:
        """The records, with file-mode glass times filled in; call once the monitor has stopped.

        File mode: a paced file frame is due at origin + pts. The origin of a stream is the earliest
        (received - pts) over its frames, i.e. the schedule of its most punctual frame, so a frame the
        reader handed over late (a starved decoding thread) counts that lateness as latency.
        """
        if self._file_marks:
            origins: dict[str, float] = {}
            for record, pts in self._file_marks:
                if pts is not None:
                    o = record.received - pts
                    origins[record.stream] = min(origins.get(record.stream, o), o)
            for record, pts in self._file_marks:
                origin = origins.get(record.stream)
                record.glass = origin + pts if (origin is not None and pts is not None) else record.received
        return [r for r in self.records if r.glass == r.glass]  # drop NaN
