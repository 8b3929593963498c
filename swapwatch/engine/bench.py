"""Engine benchmark: faces/s and latency per batch size, and a micro-batcher run, per engine file and backend.

For every (engine file, backend) pair:
1. a profile (swapwatch.engine.profile): median and p95 latency of `engine.infer` per batch size, on
   real aligned face crops from the package sample photos;
2. the batcher config derived from that profile (the same derivation the monitor uses);
3. a batcher run: `tracks` concurrent submitters (simulated face tracks, one crop in flight each)
   feeding a MicroBatcher for `seconds`, reporting achieved faces/s, mean batch size and queue/infer
   ms, and checking that every score equals the engine's own score for that crop.

Engine files of different precisions (fp32/fp16/int8, read from each sidecar) are separate rows, so
the INT8 speed-up reads straight off the table (`vs_fp32`). Results go to bench.json and two PNGs.

Trade-off: the batcher run is closed-loop (each track submits its next crop when the previous score
comes back), which measures the batcher's capacity for `tracks` faces, not a live frame rate; stream
latency (frames in, scores out, with decode and detection) is a separate benchmark.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swapwatch.engine.base import BackendUnavailable, Engine
from swapwatch.engine.batcher import MicroBatcher
from swapwatch.engine.batcher_config import BatcherConfig
from swapwatch.engine.profile import (
    DEFAULT_BATCHES,
    EngineProfile,
    batcher_config_from_profile,
    profile_engine,
)
from swapwatch.engine.select import BACKENDS
from swapwatch.engine.trt_build import PlanBuildError
from swapwatch.errors import ConfigError
from swapwatch.strict_json import json_safe

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

FORMAT = "swapwatch-bench/1"
@dataclass(frozen=True)
class BenchSettings:
    """What to measure; validated by `check()` (bad values are ConfigErrors naming the option)."""

    engines: Sequence[Path | None] = (None,)  # None: the embedded default model
    backends: Sequence[str] = ("auto",)
    batches: Sequence[int] = DEFAULT_BATCHES
    seconds: float = 2.0
    threads: int = 1
    tracks: int = 8
    budget_ms: float = 50.0

    def check(self) -> None:
        if not self.engines:
            raise ConfigError("--engine: at least one engine is needed")
        if not self.backends:
            raise ConfigError("--backend: at least one backend is needed")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            raise ConfigError(f"--backend: unknown backend {bad[0]!r} (choose from {', '.join(BACKENDS)})")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"--batches: sizes must be >= 1, got {list(self.batches)}")
        if not self.seconds > 0:
            raise ConfigError(f"--seconds: must be > 0, got {self.seconds}")
        if self.threads < 1:
            raise ConfigError(f"--threads: must be >= 1, got {self.threads}")
        if self.tracks < 1:
            raise ConfigError(f"--tracks: must be >= 1, got {self.tracks}")
        if not self.budget_ms > 0:
            raise ConfigError(f"--budget-ms: must be > 0, got {self.budget_ms}")


@dataclass
class EngineRow:
    """One engine file on one backend: its profile, derived batcher config and batcher run."""

    label: str
    model: str
    backend_requested: str
    backend: str
    precision: str
    method: str
    input_size: int
    profile: EngineProfile
    batcher_config: BatcherConfig
    batcher: dict[str, Any]
    vs_fp32: float | None = None

    @property
    def best(self) -> tuple[int, float]:
        """(batch, faces/s) of the fastest measured batch size."""
        t = max(self.profile.timings, key=lambda t: t.faces_per_s)
        return t.batch, t.faces_per_s

    def to_dict(self) -> dict[str, Any]:
        batch, fps = self.best
        return {
            "label": self.label,
            "model": self.model,
            "backend_requested": self.backend_requested,
            "backend": self.backend,
            "precision": self.precision,
            "method": self.method,
            "input_size": self.input_size,
            "profile": self.profile.to_dict(),
            "best": {"batch": batch, "faces_per_s": fps},
            "batcher_config": self.batcher_config.model_dump(),
            "batcher": self.batcher,
            "vs_fp32": self.vs_fp32,
        }


@dataclass
class BenchReport:
    settings: BenchSettings
    rows: list[EngineRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "format": FORMAT,
            "mode": "engine",  # a later stream benchmark writes mode "stream" into the same file format
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": host_info(),
            "settings": {
                "engines": [str(e) if e is not None else "default" for e in s.engines],
                "backends": list(s.backends),
                "batches": list(s.batches),
                "seconds": s.seconds,
                "threads": s.threads,
                "tracks": s.tracks,
                "budget_ms": s.budget_ms,
            },
            "engines": [r.to_dict() for r in self.rows],
            "skipped": self.skipped,
        }


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:  # the bench also runs torch/TensorRT-only installs
        pass
    return info


def open_engine(path: Path | None, backend: str, threads: int) -> Engine:
    """The engine for `path` on `backend` (swapwatch.engine.select.load_engine; None: the default model)."""
    from swapwatch.engine.select import load_engine

    return load_engine(path, backend=backend, threads=threads)  # type: ignore[arg-type]


def _resolve_model(path: Path | None) -> Path:
    from swapwatch.engine.onnx_runtime import default_model_path
    from swapwatch.errors import ModelFileError

    p = default_model_path() if path is None else Path(path)
    if not p.is_file():
        raise ModelFileError(p, "no such engine file")
    return p


async def run_batcher(
    engine: Engine, config: BatcherConfig, crops: np.ndarray, tracks: int = 8, seconds: float = 2.0
) -> dict[str, Any]:
    """`tracks` closed-loop submitters through a MicroBatcher for `seconds`; faces/s, batch sizes, latencies.

    Each track cycles through the real crops; every returned score is compared with the engine's own
    score for that crop (`max_abs_diff`), so a batcher that mixed up requesters cannot look fast.
    """
    reference = np.asarray(engine.infer(crops), np.float32).reshape(-1)
    done = 0
    max_diff = 0.0
    latencies: list[float] = []
    async with MicroBatcher(engine, config) as batcher:
        t0 = time.perf_counter()
        end = t0 + seconds

        async def track(tid: int) -> None:
            nonlocal done, max_diff
            i = tid
            while time.perf_counter() < end:
                k = i % len(crops)
                ts = time.perf_counter()
                res = await batcher.submit(crops[k], key=k)
                latencies.append((time.perf_counter() - ts) * 1e3)
                max_diff = max(max_diff, abs(res.score - float(reference[res.key])))
                done += 1
                i += tracks

        await asyncio.gather(*(track(t) for t in range(tracks)))
        elapsed = time.perf_counter() - t0
        stats = batcher.stats()
    return {
        "tracks": tracks,
        "seconds": elapsed,
        "faces": done,
        "faces_per_s": done / elapsed if elapsed > 0 else 0.0,
        "mean_batch": stats.mean_batch,
        "batches": stats.batches,
        "batch_sizes": stats.to_dict()["batch_sizes"],
        "queue_ms": {"p50": stats.queue_ms_p50, "p95": stats.queue_ms_p95},
        "infer_ms": {"p50": stats.infer_ms_p50, "p95": stats.infer_ms_p95},
        "latency_ms": {"p50": float(np.percentile(latencies, 50)) if latencies else None,
                       "p95": float(np.percentile(latencies, 95)) if latencies else None},
        "max_abs_diff": max_diff,
    }


def bench_engine(engine: Engine, crops: np.ndarray, settings: BenchSettings, label: str, backend: str,
                 model: Path) -> EngineRow:
    """Profile one open engine, derive its batcher config, run the batcher: one row."""
    profile = profile_engine(engine, crops, settings.batches, seconds=settings.seconds, threads=settings.threads)
    cfg = batcher_config_from_profile(profile, budget_ms=settings.budget_ms)
    batcher = asyncio.run(run_batcher(engine, cfg, crops, tracks=settings.tracks, seconds=settings.seconds))
    meta = engine.meta
    return EngineRow(
        label=label,
        model=str(model),
        backend_requested=backend,
        backend=str(getattr(engine, "name", backend)),
        precision=meta.precision,
        method=meta.method,
        input_size=int(engine.input_size),
        profile=profile,
        batcher_config=cfg,
        batcher=batcher,
    )


def run_bench(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Every engine file on every backend; backends that cannot run here are skipped with their reason."""
    settings.check()
    say = progress or (lambda _msg: None)
    report = BenchReport(settings)
    crops_cache: dict[tuple[int, float, int], np.ndarray] = {}
    models = [_resolve_model(p) for p in settings.engines]
    names = _display_names(models)
    for model in models:
        for backend in settings.backends:
            try:
                engine = open_engine(model, backend, settings.threads)
            except (BackendUnavailable, ConfigError, PlanBuildError) as err:
                # Cannot run here (no GPU, package or provider), does not read this file type, or TensorRT
                # cannot build this model: a row to skip. A bad model file or sidecar is still fatal.
                report.skipped.append({"model": str(model), "backend": backend, "reason": str(err)})
                say(f"skipped {model.name} on {backend}: {err}")
                continue
            try:
                key = (int(engine.input_size), float(engine.meta.alignment.margin), int(engine.meta.alignment.size))
                if key not in crops_cache:
                    from swapwatch.samples import sample_crops

                    crops_cache[key] = sample_crops(key[0], key[1], crop_size=key[2])
                crops = engine.preprocess(crops_cache[key])
                name = str(getattr(engine, "name", backend))
                label = f"{names[model]} {engine.meta.precision} [{name}]"
                say(f"measuring {label}")
                report.rows.append(bench_engine(engine, crops, settings, label, backend, model))
            finally:
                close = getattr(engine, "close", None)
                if callable(close):
                    close()
    _fill_vs_fp32(report.rows)
    return report


def _display_names(models: Sequence[Path]) -> dict[Path, str]:
    """Short, unique names: the file stem (the full name for non-ONNX files, so m.plan differs from m.onnx),
    with parent folders added while two files share it."""
    depth = 0
    while True:
        names = {m: "/".join((*m.parts[len(m.parts) - 1 - depth : -1], m.stem if m.suffix == ".onnx" else m.name))
                 for m in models}
        if len(set(names.values())) == len(set(models)) or depth >= max(len(m.parts) for m in models):
            return names
        depth += 1


def _fill_vs_fp32(rows: list[EngineRow]) -> None:
    """Best faces/s relative to the fp32 row of the same backend, method and input size (if exactly one)."""
    for row in rows:
        refs = [r for r in rows if r.precision == "fp32" and r.backend == row.backend and r.method == row.method
                and r.input_size == row.input_size]
        if len(refs) == 1:
            row.vs_fp32 = row.best[1] / refs[0].best[1]


def write_report(report: BenchReport, out: Path) -> dict[str, Path]:
    """bench.json, throughput.png and latency.png into `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "throughput": out / "throughput.png", "latency": out / "latency.png"}
    paths["json"].write_text(json.dumps(json_safe(report.to_dict()), indent=2, allow_nan=False) + "\n")
    plot_throughput(report.rows, paths["throughput"])
    plot_latency(report.rows, paths["latency"])
    return paths


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI
    import matplotlib.pyplot as plt

    return plt


def _batch_axis(ax: Any, rows: Sequence[EngineRow]) -> None:
    sizes = sorted({t.batch for row in rows for t in row.profile.timings})
    ax.set_xscale("log", base=2)
    if sizes:
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
    ax.set_xlabel("batch size")


def plot_throughput(rows: Sequence[EngineRow], path: Path) -> Path:
    """Faces/s against batch size, one line per engine/backend/precision; batcher runs as markers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(rows):
        ts = sorted(row.profile.timings, key=lambda t: t.batch)
        (line,) = ax.plot([t.batch for t in ts], [t.faces_per_s for t in ts], marker="o", label=row.label)
        ax.scatter([row.batcher["mean_batch"]], [row.batcher["faces_per_s"]], marker="*", s=140,
                   color=line.get_color(), zorder=3, label="batcher run" if i == 0 else None)
    _batch_axis(ax, rows)
    ax.set_ylabel("faces / s")
    ax.set_title("throughput per batch size (star: batcher run at its mean batch)")
    return _finish_plot(plt, fig, ax, rows, path)


def _finish_plot(plt: Any, fig: Any, ax: Any, rows: Sequence[EngineRow], path: Path) -> Path:
    ax.grid(alpha=0.3, which="both")
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(rows: Sequence[EngineRow], path: Path) -> Path:
    """Median batch latency against batch size with the p95 as the top of each bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        ts = sorted(row.profile.timings, key=lambda t: t.batch)
        med = np.array([t.median_ms for t in ts])
        p95 = np.array([t.p95_ms for t in ts])
        ax.errorbar([t.batch for t in ts], med, yerr=[np.zeros_like(med), np.maximum(p95 - med, 0)],
                    marker="o", capsize=3, label=row.label)
    _batch_axis(ax, rows)
    ax.set_yscale("log")  # engines differ by orders of magnitude; a log axis keeps them all readable
    ax.set_ylabel("batch latency, ms (median, bar to p95)")
    ax.set_title("engine latency per batch size")
    return _finish_plot(plt, fig, ax, rows, path)


def print_report(report: BenchReport, console: Console | None = None) -> None:
    """Two rich tables: latency and throughput per batch size, and the batcher run per engine."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    t = Table(title="engine latency and throughput per batch size")
    for col in ("engine", "batch", "median ms", "p95 ms", "faces/s", "x batch 1"):
        t.add_column(col, justify="left" if col == "engine" else "right")
    for row in report.rows:
        ts = sorted(row.profile.timings, key=lambda t: t.batch)
        base = ts[0].faces_per_s
        for j, tm in enumerate(ts):
            t.add_row(row.label if j == 0 else "", str(tm.batch), f"{tm.median_ms:.2f}", f"{tm.p95_ms:.2f}",
                      f"{tm.faces_per_s:.1f}", f"{tm.faces_per_s / base:.2f}", end_section=j == len(ts) - 1)
    con.print(t)
    tracks = report.settings.tracks
    b = Table(title=f"micro-batcher, profile-derived config, {tracks} tracks (ms: p50/p95)")
    for col in ("engine", "max batch", "wait ms", "faces/s", "mean batch", "queue ms", "infer ms", "vs fp32"):
        b.add_column(col, justify="left" if col == "engine" else "right")
    for row in report.rows:
        r, cfg = row.batcher, row.batcher_config
        b.add_row(row.label, str(cfg.max_batch), f"{cfg.max_wait_ms:.2f}", f"{r['faces_per_s']:.1f}",
                  f"{r['mean_batch']:.2f}", f"{r['queue_ms']['p50']:.1f}/{r['queue_ms']['p95']:.1f}",
                  f"{r['infer_ms']['p50']:.1f}/{r['infer_ms']['p95']:.1f}",
                  f"x{row.vs_fp32:.2f}" if row.vs_fp32 is not None else "-")
    con.print(b)
    for row in report.rows:
        if row.batcher["max_abs_diff"] > 1e-4:
            con.print(f"[yellow]warning[/] {row.label}: batched scores differ from single-batch scores by "
                      f"{row.batcher['max_abs_diff']:.1e}: the engine's output depends on batch-mates "
                      "(dynamic quantization?)")
    for s in report.skipped:
        con.print(f"[yellow]skipped[/] {Path(s['model']).name} on {s['backend']}: {s['reason']}")
