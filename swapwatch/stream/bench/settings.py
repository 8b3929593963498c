"""What a stream benchmark runs: sources, transport, stream counts, timing and the real-time criterion."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from swapwatch.config import StrictModel

Via = Literal["rtsp", "webrtc", "file"]
"""How recorded files reach the monitor: a real RTSP server on loopback, an aiortc WebRTC (WHIP) sender,
or the monitor's own paced file source."""


class StreamBenchSettings(StrictModel):
    """Settings of `swapwatch bench SOURCE...` (every field has a command-line option)."""

    sources: list[Path] = Field(..., min_length=1, description="Recorded video files replayed as live streams.")
    via: Via = Field("rtsp", description="Transport: rtsp (loopback RTSP server), webrtc (WHIP sender) or file.")
    streams: list[int] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="Simultaneous copies of each source; several values sweep (one run per value).",
    )
    duration_s: float = Field(20.0, gt=0.0, le=3600.0, description="Measured seconds per run (after the warm-up).")
    warmup_s: float = Field(
        3.0, ge=0.0, le=600.0,
        description="Seconds at the start of each run left out of the numbers (connections, first key frame).",
    )
    engine: Path | None = Field(None, description="Deepfake detector file; null: the embedded default model.")
    config: Path | None = Field(
        None, description="Monitor config YAML whose faces/engine/batcher/smoothing sections the monitor runs with "
        "(its sources and sinks are not used)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted monitor-config overrides, as `swapwatch watch --set KEY=VALUE`."
    )
    backend: str = Field("auto", description="Inference backend (as `swapwatch watch --backend`).")
    size: tuple[int, int] | None = Field(
        None, description="Replay size (width, height), even numbers; null: each source's own size."
    )
    clip_seconds: float = Field(
        10.0, gt=0.0, le=600.0,
        description="At most this many seconds of each source are replayed (looped as needed); bounds the "
        "raw frames the RTSP sender keeps in memory (1.4 MB per 720p frame).",
    )
    queue_size: int | None = Field(
        None, ge=1, le=16,
        description="Frames each stream's latest-frame queue holds for the monitor; null: the monitor's default "
        "for live streams (1). A larger queue absorbs bursty delivery (WebRTC) at the cost of waiting frames.",
    )
    p95_ms: float = Field(
        250.0, gt=0.0, description="A stream count holds in real time when the p95 glass-to-score is at most this."
    )
    max_drop: float = Field(
        0.01, ge=0.0, le=1.0,
        description="... and at most this fraction of the sender's frames went unscored (dropped).",
    )
    ceiling_s: float = Field(
        2.0, gt=0.0, le=60.0, description="Seconds the decode-only ceiling is measured for, per stream count."
    )
    out: Path = Field(..., description="Output folder for bench.json, frames.jsonl and the plots.")
    workdir: Path | None = Field(
        None, description="Where prepared inputs (scaled clips, raw frames) go; null: a folder under `out`."
    )

    @field_validator("streams")
    @classmethod
    def _positive_counts(cls, value: list[int]) -> list[int]:
        bad = [n for n in value if n < 1]
        if bad:
            raise ValueError(f"stream counts must be >= 1, got {bad}")
        return sorted(dict.fromkeys(value))

    @field_validator("size")
    @classmethod
    def _even_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return None
        w, h = value
        if w < 64 or h < 64 or w % 2 or h % 2:
            raise ValueError(f"size must be even and at least 64x64, got {w}x{h}")
        return value


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); ValueError with the expected form otherwise."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit():
        raise ValueError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}")
    return int(w), int(h)
