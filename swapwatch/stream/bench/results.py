"""From per-frame records to the numbers of one run: latency percentiles, fps, drops, stage breakdown.

Definitions (docs/bench.md explains how to read them):

- **glass-to-score**: from the frame's glass time (the sender's stamp: when it was captured and left
  the sender) to the moment its faces' smoothed scores were ready. Every scored frame counts, with or
  without faces; `latency_faces_ms` keeps only frames that had faces.
- **glass-to-alert**: glass to the moment the frame that turned a track to `alert` had been handed to
  the sinks (its events published): null when no alert happened.
- **dropped**: sender frames that were never scored. Per stream, the sender's sequence numbers of the
  scored frames span `expected` frames (first to last scored, inside the measuring window); the ones
  missing from the span were replaced in the latest-frame queue, lost on the way or unreadable.
- **unreadable stamps**: frames (whole run) whose stamp did not read back. They get no latency and
  show up as drops. Over RTSP there should be none; over WebRTC on a busy machine a lost RTP packet
  makes the VP8 decoder show blocks of an older frame, and the stamp's CRC rejects that picture.
- **fps**: scored frames per second of glass time, per stream.
- **real time**: a run holds when its p95 glass-to-score is within `p95_ms` and it dropped at most
  `max_drop` of the sender's frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from swapwatch.stream.bench.recorder import STAGE_ORDER, FrameRecord


def percentiles(values: Iterable[float]) -> dict[str, float | int] | None:
    """n, mean, p50, p95, p99 and max of `values` (ms), or None when there are none."""
    a = np.fromiter(values, float)
    if a.size == 0:
        return None
    return {
        "n": int(a.size),
        "mean": round(float(a.mean()), 2),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }


def window_records(records: Sequence[FrameRecord], start: float) -> list[FrameRecord]:
    """The records whose glass time is at or after `start` (the warm-up left out), by glass time."""
    return sorted((r for r in records if r.glass >= start), key=lambda r: r.glass)


def stream_summary(records: Sequence[FrameRecord]) -> dict[str, Any]:
    """One stream's numbers from its records in the measuring window."""
    if not records:
        return {"scored": 0, "expected": 0, "dropped": 0, "fps": 0.0, "latency_ms": None}
    seqs = sorted({r.seq for r in records})
    expected = seqs[-1] - seqs[0] + 1
    span = records[-1].glass - records[0].glass
    return {
        "scored": len(records),
        "expected": expected,
        "dropped": max(0, expected - len(seqs)),
        "fps": round((len(records) - 1) / span, 2) if span > 0 else 0.0,
        "latency_ms": percentiles(r.glass_to_score_ms for r in records),
    }


def stage_summary(records: Sequence[FrameRecord]) -> dict[str, dict[str, float]]:
    """Mean, p50 and p95 of each part of glass-to-score, plus `emit` (after the score, before the sinks)."""
    out: dict[str, dict[str, float]] = {}
    parts = [r.breakdown() for r in records]
    for stage in STAGE_ORDER:
        values = np.array([p[stage] for p in parts], float)
        if values.size:
            out[stage] = {"mean": round(float(values.mean()), 3), "p50": round(float(np.percentile(values, 50)), 3),
                          "p95": round(float(np.percentile(values, 95)), 3)}
    emit = np.array([r.stages.get("emit", 0.0) for r in records], float)
    if emit.size:
        out["emit"] = {"mean": round(float(emit.mean()), 3), "p50": round(float(np.percentile(emit, 50)), 3),
                       "p95": round(float(np.percentile(emit, 95)), 3)}
    return out


def run_summary(
    records: Sequence[FrameRecord],
    *,
    streams: Sequence[str],
    copies: int,
    source_fps: float,
    unreadable: int,
    received: int,
    p95_ms: float,
    max_drop: float,
) -> dict[str, Any]:
    """The numbers of one run (one stream count): everything bench.json reports for it."""
    by_stream: dict[str, list[FrameRecord]] = {name: [] for name in streams}
    for r in records:
        by_stream.setdefault(r.stream, []).append(r)
    per_stream = {name: stream_summary(recs) for name, recs in by_stream.items()}
    scored = sum(s["scored"] for s in per_stream.values())
    expected = sum(s["expected"] for s in per_stream.values())
    dropped = sum(s["dropped"] for s in per_stream.values())
    drop_rate = dropped / expected if expected else 1.0
    fps_values = [s["fps"] for s in per_stream.values()]
    latency = percentiles(r.glass_to_score_ms for r in records)
    alerts = [r for r in records if r.alert_started]
    silent = [name for name, s in per_stream.items() if s["scored"] == 0]
    reasons: list[str] = []
    if latency is None:
        reasons.append("no frame was scored")
    elif latency["p95"] > p95_ms:
        reasons.append(f"p95 {latency['p95']:.0f} ms > {p95_ms:g} ms")
    if drop_rate > max_drop:
        reasons.append(f"dropped {100 * drop_rate:.1f}% of frames > {100 * max_drop:g}%")
    if silent:
        reasons.append(f"no frame scored on {', '.join(silent)}")
    return {
        "streams": copies,
        "total_streams": len(per_stream),
        "fps": {
            "source": round(source_fps, 2),
            "per_stream_mean": round(float(np.mean(fps_values)), 2) if fps_values else 0.0,
            "per_stream_min": round(float(min(fps_values)), 2) if fps_values else 0.0,
            "total": round(float(sum(fps_values)), 2),
        },
        "latency_ms": latency,
        "latency_faces_ms": percentiles(r.glass_to_score_ms for r in records if r.faces),
        "glass_to_alert_ms": percentiles(r.glass_to_done_ms for r in alerts),
        "alerts": len(alerts),
        "frames": {
            "scored": scored,
            "expected": expected,
            "dropped": dropped,
            "drop_rate": round(drop_rate, 4),
            "received_whole_run": received,
            "unreadable_stamps": unreadable,
            "with_faces": sum(1 for r in records if r.faces),
            "faces": sum(r.faces for r in records),
            "faces_scored": sum(r.scored_faces for r in records),
        },
        "stages_ms": stage_summary(records),
        "decode_ms": percentiles(r.stages["decode"] for r in records if "decode" in r.stages),
        "realtime": not reasons,
        "not_realtime_because": reasons,
        "per_stream": per_stream,
    }


def max_realtime(runs: Sequence[dict[str, Any]]) -> int:
    """The largest stream count (copies per input) whose run held in real time, 0 when none did.

    Counts above a failing one do not count even if they happened to pass: the sweep is read as
    "holds up to N".
    """
    best = 0
    for run in sorted(runs, key=lambda r: r["streams"]):
        if not run["realtime"]:
            break
        best = run["streams"]
    return best


