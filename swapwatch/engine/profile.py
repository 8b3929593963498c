"""Measure an engine's latency per batch size on real face crops, and derive the batcher's sizes from it.

The batcher's `max_batch` and `max_wait_ms` are not constants because the right values differ by two
orders of magnitude between machines: on two CPU cores a batch of 8 costs about 8 single crops
(batching pays x1.0-1.5, see FACTS.md), so the best batch is small and waiting for company is wasted
latency; on a GPU a batch of 32 costs little more than one crop, and batching is what makes it fast.
So we measure, on the engine itself:

- `profile_engine` times `engine.infer` at batch sizes 1, 2, 4, ... (capped by the engine's own
  `max_batch`) on real aligned face crops from the package sample photos, median and p95 per size;
- `choose_max_batch` takes the size with the best throughput whose p95 batch latency fits the latency
  budget, preferring the smaller size when throughputs are within `tolerance` (noise on a busy machine
  must not buy latency for nothing);
- `batcher_config_from_profile` sets `max_wait_ms` to a fraction of the single-crop latency (waiting
  longer than one single-crop inference to fill a batch is never worth it on an idle engine), within
  what the budget leaves after the chosen batch's own latency, and 0 when the chosen batch is 1.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.engine.batcher_config import BatcherConfig, SupportsInfer

log = logging.getLogger(__name__)

DEFAULT_BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class BatchTiming:
    """Latency of one `engine.infer` call at one batch size."""

    batch: int
    median_ms: float
    p95_ms: float
    runs: int

    @property
    def faces_per_s(self) -> float:
        return self.batch * 1e3 / self.median_ms if self.median_ms > 0 else float("inf")


@dataclass
class EngineProfile:
    """Per-batch-size latency of one engine (one model file on one backend), serialisable to JSON."""

    engine: str  # backend name, e.g. "onnxruntime"
    timings: list[BatchTiming]
    model: str | None = None
    precision: str | None = None
    input_size: int | None = None
    threads: int | None = None
    max_batch: int | None = None  # the engine's own cap (None: unbounded)
    measured_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def timing(self, batch: int) -> BatchTiming:
        for t in self.timings:
            if t.batch == batch:
                return t
        raise KeyError(f"profile of {self.engine} has no batch size {batch} (has {[t.batch for t in self.timings]})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"] = [{**asdict(t), "faces_per_s": t.faces_per_s} for t in self.timings]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineProfile:
        timings = [BatchTiming(int(t["batch"]), float(t["median_ms"]), float(t["p95_ms"]), int(t["runs"]))
                   for t in data["timings"]]
        rest = {k: v for k, v in data.items() if k != "timings"}
        return cls(timings=timings, **rest)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path) -> EngineProfile:
        return cls.from_dict(json.loads(Path(path).read_text()))


def batch_sizes_for(engine: SupportsInfer, sizes: Sequence[int] = DEFAULT_BATCHES) -> list[int]:
    """The requested sizes the engine accepts; its own cap joins the list when it falls between two sizes."""
    if any(b < 1 for b in sizes):
        raise ValueError(f"batch sizes must be >= 1, got {list(sizes)}")
    cap = getattr(engine, "max_batch", None)
    wanted = sorted({int(b) for b in sizes})
    if cap is None:
        return wanted
    kept = [b for b in wanted if b <= cap]
    if wanted and wanted[-1] > cap and cap not in kept:
        kept.append(int(cap))
    return kept


def real_face_batch(engine: Any) -> np.ndarray:
    """Preprocessed real aligned face crops (the package sample photos) for this engine's input size."""
    from swapwatch.samples import model_sample_crops

    return engine.preprocess(model_sample_crops(engine.meta))


def tile(crops: np.ndarray, batch: int) -> np.ndarray:
    """A batch of `batch` rows cycled from `crops` (real faces, repeated when there are fewer)."""
    return np.ascontiguousarray(crops[np.arange(batch) % len(crops)])


def measure_batch(
    engine: SupportsInfer, batch: np.ndarray, seconds: float = 0.5, warmup: int = 2, min_runs: int = 3
) -> BatchTiming:
    """Time `engine.infer(batch)` for about `seconds` after `warmup` calls; at least `min_runs` timed runs."""
    for _ in range(warmup):
        engine.infer(batch)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < end:
        t = time.perf_counter()
        engine.infer(batch)
        times.append(time.perf_counter() - t)
    return BatchTiming(
        batch=int(batch.shape[0]),
        median_ms=statistics.median(times) * 1e3,
        p95_ms=float(np.percentile(times, 95)) * 1e3,
        runs=len(times),
    )


def profile_engine(
    engine: SupportsInfer,
    crops: np.ndarray | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCHES,
    seconds: float = 0.5,
    warmup: int = 2,
    min_runs: int = 3,
    threads: int | None = None,
) -> EngineProfile:
    """Latency per batch size of `engine` on real crops (preprocessed NCHW; default: the sample faces).

    `seconds` is per batch size. Real crops rather than zeros because some backends (INT8 with dynamic
    ranges, sparse kernels) run at different speeds on different inputs.
    """
    if crops is None:
        crops = real_face_batch(engine)
    if len(crops) == 0:
        raise ValueError("profile_engine: no crops to measure with")
    timings = [
        measure_batch(engine, tile(crops, b), seconds=seconds, warmup=warmup, min_runs=min_runs)
        for b in batch_sizes_for(engine, batch_sizes)
    ]
    meta = getattr(engine, "meta", None)
    path = getattr(engine, "path", None)
    return EngineProfile(
        engine=str(getattr(engine, "name", type(engine).__name__)),
        timings=timings,
        model=str(path) if path is not None else None,
        precision=getattr(meta, "precision", None),
        input_size=getattr(engine, "input_size", None),
        threads=threads,
        max_batch=getattr(engine, "max_batch", None),
    )


def choose_max_batch(profile: EngineProfile, budget_ms: float = 50.0, tolerance: float = 0.05) -> int:
    """The batch size with the best throughput whose p95 latency fits `budget_ms`.

    Sizes within `tolerance` (relative) of the best throughput count as equal and the smallest wins:
    a few percent of measured throughput is noise, while a bigger batch always costs latency. When no
    size fits the budget, the smallest measured size is returned (with a warning): the engine is too
    slow for the budget at any batch, and batching would only make it slower per crop.
    """
    if not profile.timings:
        raise ValueError(f"profile of {profile.engine} has no timings")
    by_size = sorted(profile.timings, key=lambda t: t.batch)
    fits = [t for t in by_size if t.p95_ms <= budget_ms]
    if not fits:
        log.warning("%s: no batch size fits the %.1f ms budget (batch %d p95 %.1f ms); using batch %d",
                    profile.engine, budget_ms, by_size[0].batch, by_size[0].p95_ms, by_size[0].batch)
        return by_size[0].batch
    best = max(t.faces_per_s for t in fits)
    return next(t.batch for t in fits if t.faces_per_s >= best * (1.0 - tolerance))


def batcher_config_from_profile(
    profile: EngineProfile,
    budget_ms: float = 50.0,
    wait_fraction: float = 0.5,
    max_queue: int | None = None,
    workers: int = 1,
    tolerance: float = 0.05,
) -> BatcherConfig:
    """BatcherConfig with max_batch and max_wait_ms derived from the measured profile.

    max_wait_ms = wait_fraction x single-crop median latency, no more than the budget left after the
    chosen batch's p95, and 0 when the chosen batch is 1 (nothing to wait for). max_queue defaults to
    four batches per worker (at least 16): enough to keep the engine busy between batches, while a
    deeper queue would only add latency to live streams.
    """
    if not 0.0 <= wait_fraction:
        raise ValueError(f"wait_fraction must be >= 0, got {wait_fraction}")
    max_batch = choose_max_batch(profile, budget_ms, tolerance)
    if max_batch == 1:
        max_wait = 0.0
    else:
        single = min(profile.timings, key=lambda t: t.batch).median_ms
        left = budget_ms - profile.timing(max_batch).p95_ms
        max_wait = max(0.0, min(wait_fraction * single, left))
    queue = max_queue if max_queue is not None else max(16, 4 * max_batch * workers)
    return BatcherConfig(
        max_batch=max_batch, max_wait_ms=round(max_wait, 3), max_queue=queue, workers=workers, budget_ms=budget_ms
    )
