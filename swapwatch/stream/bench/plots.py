"""The stream benchmark's PNGs (docs/bench.md says how to read each one).

- `latency.png`: glass-to-score histogram (left) and CDF (right), one colour per stream count, with
  the p95 target as a vertical line: where the CDF crosses 0.95 is the p95.
- `timeline.png`: glass-to-score of every frame against time, one panel per stream count, one colour
  per stream: spikes, drift (a queue building up) and warm-up effects show here.
- `stages.png`: mean time of each part of glass-to-score per stream count, stacked (receive, decode,
  queue, detect, batch wait, infer, smooth, other), with the p50 and p95 totals as markers.
- `sweep.png`: p50/p95/p99 against the stream count (left) with the target, and fps per stream
  against the stream count (right) with the source frame rate and the decode-only ceiling per decoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.stream.bench.recorder import STAGE_ORDER, FrameRecord


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(records: Mapping[int, Sequence[FrameRecord]], p95_ms: float, path: Path, title: str) -> Path:
    """Histogram and CDF of glass-to-score per stream count."""
    plt = _plt()
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    values = {n: np.array([r.glass_to_score_ms for r in recs]) for n, recs in records.items() if recs}
    top = max([float(np.percentile(v, 99.5)) for v in values.values()] + [p95_ms * 1.1])
    bins = np.linspace(0, top, 60)
    for n, v in values.items():
        hist.hist(np.clip(v, 0, top), bins=bins, histtype="step", linewidth=1.5, label=f"{n} per input")
        xs = np.sort(v)
        cdf.plot(xs, np.arange(1, xs.size + 1) / xs.size, linewidth=1.5, label=f"{n} per input")
    for ax in (hist, cdf):
        ax.axvline(p95_ms, color="crimson", linestyle="--", linewidth=1, label=f"p95 target {p95_ms:g} ms")
        ax.set_xlabel("glass-to-score latency, ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    hist.set_ylabel("frames")
    hist.set_title("latency histogram")
    cdf.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    cdf.set_ylabel("fraction of frames at or below")
    cdf.set_ylim(0, 1.01)
    cdf.set_title("latency CDF (crosses 0.95 at the p95)")
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_timeline(records: Mapping[int, Sequence[FrameRecord]], starts: Mapping[int, float], path: Path,
                  title: str) -> Path:
    """Glass-to-score of every frame over the run, one panel per stream count."""
    plt = _plt()
    counts = [n for n in records if records[n]] or list(records)
    fig, axes = plt.subplots(len(counts), 1, figsize=(11, 2.6 * max(1, len(counts))), sharex=True, squeeze=False)
    for ax, n in zip(axes[:, 0], counts, strict=True):
        by_stream: dict[str, list[FrameRecord]] = {}
        for r in records[n]:
            by_stream.setdefault(r.stream, []).append(r)
        for name, recs in sorted(by_stream.items()):
            t = np.array([r.glass - starts[n] for r in recs])
            ax.plot(t, [r.glass_to_score_ms for r in recs], ".", markersize=2.5, label=name)
        ax.set_ylabel("ms")
        ax.set_title(f"{n} per input", fontsize=9)
        ax.grid(alpha=0.3)
        if len(by_stream) <= 8:
            ax.legend(fontsize=7, markerscale=3, loc="upper right")
    axes[-1, 0].set_xlabel("seconds into the measured window (glass time)")
    fig.suptitle(f"glass-to-score latency over time: {title}", fontsize=10)
    return _save(plt, fig, path)


def plot_stages(runs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Stacked mean stage times per stream count, with p50/p95 totals."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.7 * len(runs)))
    labels = [f"{r['streams']} per input" for r in runs]
    y = np.arange(len(runs))
    left = np.zeros(len(runs))
    colors = plt.get_cmap("tab10")
    for i, stage in enumerate(STAGE_ORDER):
        widths = np.array([r["stages_ms"].get(stage, {}).get("mean", 0.0) for r in runs])
        ax.barh(y, widths, left=left, color=colors(i), label=stage.replace("_", " "))
        left += widths
    for yi, r in zip(y, runs, strict=True):
        lat = r.get("latency_ms") or {}
        if lat:
            ax.plot([lat["p50"]], [yi], "k|", markersize=18, markeredgewidth=2)
            ax.plot([lat["p95"]], [yi], "r|", markersize=18, markeredgewidth=2)
    ax.plot([], [], "k|", markersize=10, markeredgewidth=2, label="p50 total")
    ax.plot([], [], "r|", markersize=10, markeredgewidth=2, label="p95 total")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms (bars: mean of each part of glass-to-score)")
    ax.set_title(f"where the time goes: {title}", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.05 / max(1, len(runs))))
    return _save(plt, fig, path)


def plot_sweep(runs: Sequence[dict[str, Any]], p95_ms: float, path: Path, title: str) -> Path:
    """Latency percentiles and fps per stream against the stream count."""
    plt = _plt()
    fig, (lat, fps) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = [r["streams"] for r in runs]
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^--")):
        lat.plot(ns, [(r["latency_ms"] or {}).get(key, np.nan) for r in runs], style, label=key)
    lat.axhline(p95_ms, color="crimson", linestyle="--", linewidth=1, label=f"p95 target {p95_ms:g} ms")
    for r in runs:
        if not r["realtime"]:
            lat.annotate("not real time", ((r["streams"]), (r["latency_ms"] or {}).get("p95", 0.0)), fontsize=7,
                         color="crimson", textcoords="offset points", xytext=(4, 6))
    lat.set_xlabel("streams per input")
    lat.set_ylabel("glass-to-score latency, ms")
    lat.set_title("latency against load")
    fps.plot(ns, [r["fps"]["per_stream_mean"] for r in runs], "o-", label="scored fps per stream (mean)")
    fps.plot(ns, [r["fps"]["per_stream_min"] for r in runs], "v:", label="slowest stream")
    fps.plot(ns, [r["decode_ceiling"]["fps_per_decoder"] for r in runs], "s--", label="decode-only ceiling per stream")
    fps.axhline(runs[0]["fps"]["source"] if runs else 0, color="grey", linestyle=":", label="source frame rate")
    fps.set_yscale("log")
    fps.set_xlabel("streams per input")
    fps.set_ylabel("frames / s")
    fps.set_title("throughput against load")
    for ax in (lat, fps):
        ax.set_xticks(ns)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def write_plots(runs: Sequence[dict[str, Any]], records: Mapping[int, Sequence[FrameRecord]],
                starts: Mapping[int, float], p95_ms: float, out: Path, title: str) -> dict[str, Path]:
    """All four PNGs into `out`."""
    return {
        "latency": plot_latency(records, p95_ms, out / "latency.png", title),
        "timeline": plot_timeline(records, starts, out / "timeline.png", title),
        "stages": plot_stages(runs, out / "stages.png", title),
        "sweep": plot_sweep(runs, p95_ms, out / "sweep.png", title),
    }
