"""The offline scanner behind `swapwatch scan`: every face in images and videos, scored in a pipeline.

    decode ──frames──> locate ──located──> face workers ──faces──> scorer (the caller's thread)
    PyAV, BGR          detect every Nth    align, preprocess       reorder by seq, batch crops
                       frame, interpolate  (2 threads)             across frames and files, infer,
                       between (1 thread)                          one result per file, in order

With `detect_every=1` there is no locate step: the face workers detect on every frame themselves.
Every arrow is a bounded queue.

Where the speed comes from (bench/scan_vs_sequential.py runs the scan side by side with a plain
decode -> detect -> align -> score-one-face loop on a 720p clip; docs/scan.md has the numbers):
- Less detection. The detector is ~70% of a plain loop's CPU per frame (~13-18 ms of ~22-25 ms per
  720p frame on these cores), so by default it runs on every 6th frame (`SCAN_DETECT_EVERY`) and places
  faces on the frames between by interpolating between the two detections around them, when those
  agree (same faces, no scene cut; see swapwatch/stream/scan/interpolate.py); where they do not, the
  frames between are detected. This is where most of the gain comes from, and it holds up when other
  processes take the cores. Every frame is still aligned and scored.
- Overlap. PyAV, OpenCV and ONNX Runtime release the GIL, so decoding, detection, alignment and
  scoring of neighbouring frames run at once on the two cores, in stages of similar cost (per 720p
  frame about 1.9 ms decode, 3-3.5 ms detection at N=6, 2.5 ms alignment, 2.4 ms scoring). On a busy
  machine this still matters: the kernel shares cores per runnable thread, and a plain loop with two
  intra-op threads takes a larger share than a pipeline with one busy thread would.
- Batching crops across frames and files (`batch`, default 4). On these CPUs it saves no CPU (the
  default model costs 2.32 / 2.29 / 2.37 / 2.48 / 2.59 CPU ms per face at batch 1 / 2 / 4 / 8 / 16, one
  thread), so the default is small; it is what makes a GPU engine fast, and `batch="auto"` profiles the
  engine at start instead.

Why tracking (interpolation) is on by default: the scores stay comparable to detecting every frame.
On the benchmark clip (600 frames, 10 shots), with N=6 per-frame scores moved by 0.034 on average
(p95 0.18) against the detector-on-every-frame scores, less than the model's own frame-to-frame change
on that clip (0.043 on average, p95 0.23), and the video score by 0.004; the whole scan ran 2.1x
faster than the best plain loop, whole process, on two busy cores (N=4: drift 0.028, N=8: 0.037; see
docs/scan.md). Detected frames are exact. `detect_every=1` gives exactly the plain loop's scores, at
1.0-1.4x its speed (the face stage then runs two workers sharing the detector session). What
interpolation can miss: a face on screen for fewer than `detect_every` frames between two keyframes
that do not show it.

Memory: the frame and located queues hold at most `frame_queue` decoded frames each (8 x 2.7 MB at
720p), the interpolator `detect_every` more, the face queue `face_queue` frames' crops, and each file
keeps only its per-frame detail; a long video does not grow the process beyond that (tests check the
peak queue sizes).

Failures: an unreadable file (missing, empty, corrupt, truncated to nothing, an image that does not
decode) gets its own result with `error` and the scan goes on; a video that breaks partway keeps the
frames it gave plus a `warning`. A bug in a stage stops the scan and re-raises in the caller.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from swapwatch.config import StrictModel, parse_config
from swapwatch.engine.base import Engine
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.media.files import IMAGE_EXTS, VIDEO_EXTS, media_files
from swapwatch.stream.faces import DetectorConfig, load_detector
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.scan.cadence import SCAN_DETECT_EVERY
from swapwatch.stream.scan.decode import Decoder
from swapwatch.stream.scan.faces_stage import FaceStage
from swapwatch.stream.scan.items import (
    FaceFrame,
    FileEnd,
    FileStart,
    Item,
    StageDone,
    StageFailed,
)
from swapwatch.stream.scan.progress import ScanProgress
from swapwatch.stream.scan.queues import StageQueue, Stopped
from swapwatch.stream.scan.results import FileResult

log = logging.getLogger(__name__)

DEFAULT_BATCH = 4
"""Crops per inference call. On these CPUs the default model's CPU cost per face is flat from batch 1
to 4 and grows beyond (2.29-2.37 ms at 1-4, 2.48 at 8, 2.59 at 16); 4 amortises the per-call overhead."""

MAX_PENDING = 256  # frames waiting for a batch to fill before it is scored anyway (faceless stretches)


class ScanSettings(StrictModel):
    """How `swapwatch scan` samples, detects, batches and threads."""

    every: int = Field(1, ge=1, description="Score every Nth video frame (1: every frame).")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many scored frames per video.")
    crops: bool = Field(False, description="Treat images as already aligned face crops (no detection).")
    detect_every: int = Field(
        SCAN_DETECT_EVERY, ge=1, le=100,
        description="Run the face detector on every Nth scored frame and track faces in between "
        "(1: detect on every frame, the scores a plain loop gives).",
    )
    batch: int | Literal["auto"] = Field(
        DEFAULT_BATCH,
        description="Crops per inference call, across frames and files; 'auto' measures the engine at "
        "start and takes its best-throughput batch size.",
    )
    workers: int | None = Field(
        None, ge=1, le=16,
        description="Face-stage worker threads (align + preprocess, and detection too when detect_every is 1). "
        "Default: 2 on a machine with 2+ cores, else 1.",
    )
    threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads per session (detector, model).")
    frame_queue: int = Field(
        8, ge=1, le=1024,
        description="Decoded frames that may wait for the face stage (and, when interpolating, located frames "
        "that may wait for alignment).",
    )
    face_queue: int = Field(32, ge=1, le=4096, description="Frames' crops that may wait for the scorer.")

    def face_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, min(2, os.cpu_count() or 1))


@dataclass
class ScanStats:
    """Counters of the last `scan_paths` run (for tests, benchmarks and logs)."""

    files: int = 0
    frames: int = 0
    faces: int = 0
    detections: int = 0
    batches: int = 0
    peak_frame_queue: int = 0
    peak_face_queue: int = 0
    peak_located_queue: int = 0
    peak_reorder: int = 0
    peak_pending: int = 0
    frame_queue_size: int = 0
    face_queue_size: int = 0
    batch: int = 0
    workers: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given (kept even if missing or unreadable, so they get an error line) and the media
    files inside folders (recursively, hidden entries skipped, sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        out.extend(media_files(p) if p.is_dir() else [p])
    return out


def choose_batch(engine: Engine, setting: int | Literal["auto"]) -> int:
    """The batch size: as set, or the engine's best measured throughput on the sample faces."""
    if setting != "auto":
        return int(setting)
    from swapwatch.engine.profile import choose_max_batch, profile_engine

    profile = profile_engine(engine, seconds=0.15)
    best = choose_max_batch(profile, budget_ms=float("inf"))
    log.info("scan: batch %d from the engine profile (%s)", best,
             ", ".join(f"b{t.batch} {t.faces_per_s:.0f}/s" for t in profile.timings))
    return best


class Scanner:
    """Scores the faces in images and videos; `scan_paths` runs the pipeline, `scan` does one file.

    Options are `ScanSettings` fields (as `settings=` or keywords, e.g. `Scanner(detect_every=3)`);
    a bad one raises ConfigError naming it. `detector`/`engine` may be passed in to share them.
    """

    def __init__(
        self,
        model: Path | None = None,
        settings: ScanSettings | None = None,
        *,
        detector: FaceDetector | None = None,
        engine: Engine | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = parse_config(ScanSettings, options, "scan options")
        elif options:
            settings = parse_config(ScanSettings, {**settings.model_dump(), **options}, "scan options")
        self.settings = settings
        self.engine: Engine = engine or OnnxEngine(model, threads=settings.threads)
        self.detector = detector or load_detector(DetectorConfig(threads=settings.threads))
        self.batch = choose_batch(self.engine, settings.batch)
        self.stats = ScanStats()

    def scan(self, path: Path, crops: bool | None = None) -> dict[str, Any]:
        """One file's result (the pipeline on a list of one)."""
        scanner = self
        if crops is not None and crops != self.settings.crops:
            scanner = Scanner(settings=self.settings.model_copy(update={"crops": crops}),
                              detector=self.detector, engine=self.engine, batch=self.batch)
        (result,) = scanner.scan_paths([Path(path)])
        return result

    def scan_paths(self, paths: Iterable[Path], progress: ScanProgress | None = None) -> Iterator[dict[str, Any]]:
        """One result dict per path, in input order, as soon as each file is done.

        Folders are not expanded here (see `expand_paths`). Stopping the iteration early stops the
        stage threads.
        """
        files = [Path(p) for p in paths]
        s = self.settings
        workers = s.face_workers()
        stats = self.stats = ScanStats(frame_queue_size=s.frame_queue, face_queue_size=s.face_queue,
                                       batch=self.batch, workers=workers)
        started = time.perf_counter()
        stop = threading.Event()
        frames_q: StageQueue[Item] = StageQueue("frames", s.frame_queue, stop)
        faces_q: StageQueue[Item] = StageQueue("faces", s.face_queue, stop)
        decoder = Decoder(s.every, s.max_frames, s.crops, s.detect_every)
        stage = FaceStage(self.detector, self.engine, s.detect_every)
        # Interpolation: decode -> frames -> locate (1 thread, in order) -> located -> workers -> faces.
        # Detection on every frame: decode -> frames -> workers (detect + align) -> faces.
        located_q: StageQueue[Item] | None = StageQueue("located", s.frame_queue, stop) if stage.interpolating else None
        work_q = located_q if located_q is not None else frames_q

        def decode() -> None:
            try:
                for item in decoder.items(files, stop.is_set):
                    frames_q.put(item)
                for _ in range(1 if located_q is not None else workers):
                    frames_q.put(StageDone())
            except Stopped:
                pass
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
                _fail(faces_q, "decode", err)

        def locate() -> None:
            assert located_q is not None
            try:
                while not isinstance(item := frames_q.get(), StageDone):
                    for ready in stage.locate(item):
                        located_q.put(ready)
                for _ in range(workers):
                    located_q.put(StageDone())
            except Stopped:
                pass
            except BaseException as err:  # noqa: BLE001
                _fail(faces_q, "locate", err)

        def finish() -> None:
            try:
                while not isinstance(item := work_q.get(), StageDone):
                    faces_q.put(stage.finish(item))
                faces_q.put(item)
            except Stopped:
                pass
            except BaseException as err:  # noqa: BLE001
                _fail(faces_q, "faces", err)

        threads = [threading.Thread(target=decode, name="scan-decode", daemon=True)]
        if located_q is not None:
            threads.append(threading.Thread(target=locate, name="scan-locate", daemon=True))
        threads += [threading.Thread(target=finish, name=f"scan-faces-{i}", daemon=True) for i in range(workers)]
        for t in threads:
            t.start()
        assembler = _Assembler(self.engine, self.batch, stats, progress)
        try:
            done = 0
            reorder: dict[int, Item] = {}
            next_seq = 0
            while done < workers:
                item = faces_q.get()
                if isinstance(item, StageDone):
                    done += 1
                    continue
                if isinstance(item, StageFailed):
                    raise item.error
                reorder[item.seq] = item
                stats.peak_reorder = max(stats.peak_reorder, len(reorder))
                while next_seq in reorder:
                    yield from assembler.push(reorder.pop(next_seq))
                    next_seq += 1
            if reorder:
                raise RuntimeError(f"scan: {len(reorder)} items never came back in order (first seq {min(reorder)})")
            yield from assembler.flush()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=5.0)
            stats.peak_frame_queue = frames_q.peak
            stats.peak_face_queue = faces_q.peak
            stats.peak_located_queue = located_q.peak if located_q is not None else 0
            stats.detections = stage.detections
            stats.wall_s = time.perf_counter() - started


def _fail(q: StageQueue[Item], stage: str, err: BaseException) -> None:
    try:
        q.put(StageFailed(stage, err))
    except Stopped:
        pass


class _Assembler:
    """The scorer: keeps items in order, scores crops in batches, and builds each file's result."""

    def __init__(self, engine: Engine, batch: int, stats: ScanStats, progress: ScanProgress | None) -> None:
        self.engine = engine
        self.batch = max(1, batch)
        self.stats = stats
        self.progress = progress
        self.pending: list[Item] = []  # in order, from the first frame whose crops are not scored yet
        self.pending_crops = 0
        self.files: dict[int, FileResult] = {}

    def push(self, item: Item) -> Iterator[dict[str, Any]]:
        crops = item.n_crops if isinstance(item, FaceFrame) else 0
        if not self.pending and not crops:
            yield from self._emit(item)
            return
        self.pending.append(item)
        self.pending_crops += crops
        self.stats.peak_pending = max(self.stats.peak_pending, len(self.pending))
        if self.pending_crops >= self.batch or len(self.pending) >= MAX_PENDING:
            yield from self.flush()

    def flush(self) -> Iterator[dict[str, Any]]:
        items, self.pending, self.pending_crops = self.pending, [], 0
        frames = [i for i in items if isinstance(i, FaceFrame) and i.n_crops]
        if frames:
            crops = np.concatenate([f.crops for f in frames]) if len(frames) > 1 else frames[0].crops
            assert crops is not None
            scores = self.engine.infer(crops)
            self.stats.batches += 1
            at = 0
            for f in frames:
                f.scores = scores[at : at + f.n_crops]
                at += f.n_crops
        for item in items:
            yield from self._emit(item)

    def _emit(self, item: Item) -> Iterator[dict[str, Any]]:
        progress = self.progress
        if isinstance(item, FileStart):
            self.files[item.file] = FileResult(item)
            if progress is not None and item.expected_frames:
                progress.add_total(item.expected_frames)
        elif isinstance(item, FaceFrame):
            self.files[item.file].add(item)
            self.stats.frames += 1
            self.stats.faces += len(item.faces)
            if progress is not None:
                progress.advance(1)
        elif isinstance(item, FileEnd):
            record = self.files.pop(item.file)
            self.stats.files += 1
            if progress is not None:
                progress.file_done((record.start.expected_frames or 0) - len(record.frames))
            yield record.build(item)


__all__ = ["DEFAULT_BATCH", "IMAGE_EXTS", "VIDEO_EXTS", "ScanSettings", "ScanStats", "Scanner", "expand_paths"]
