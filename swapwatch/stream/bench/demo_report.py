"""What `swapwatch demo` records while it runs, and the timeline, verdict and plot it prints and writes.

The recorder is both a sink (it sees the state events the monitor publishes, and echoes each change as it
happens) and a frame observer (it sees every scored face, for the score plot). Faces are named by the
side of the frame they are on ("left" is the one swapped during the segment), because track ids are the
tracker's business and may change if a face is lost and found again.

The verdict is stated against the clip's ground truth and nothing else: the state the swapped face
reached during the swap (and how long after the swap began), the highest state the real faces reached,
and the scores behind both. Whether the model alerts is the model's result, reported as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapwatch.stream.bench.demo_clip import DemoClip
from swapwatch.stream.events import Event
from swapwatch.stream.pipeline import FrameReport, MonitorReport
from swapwatch.stream.temporal import LEVEL, STATES

SIDES = ("left", "right")


@dataclass(frozen=True)
class Sample:
    """One scored face on one frame."""

    t: float
    side: str
    track: int
    raw: float | None
    score: float | None
    state: str


@dataclass(frozen=True)
class Transition:
    """One state event of the demo stream, on the stream clock."""

    t: float
    side: str
    track: int
    previous: str | None
    state: str
    score: float | None
    raw: float | None
    ended: bool


class DemoRecorder:
    """Collects samples (frame observer) and state transitions (sink) of the demo stream."""

    name = "demo-recorder"

    def __init__(self, clip: DemoClip, echo: Callable[[str], None] | None = None) -> None:
        self.clip = clip
        self.echo = echo
        self.samples: list[Sample] = []
        self.transitions: list[Transition] = []
        self.stream_events: list[str] = []
        self._sides: dict[int, str] = {}
        self._last_t = 0.0

    def side_of(self, box: Any) -> str:
        x1, _, x2, _ = (float(v) for v in box)
        return "left" if (x1 + x2) / 2 < self.clip.width / 2 else "right"

    # -- frame observer (not `on_frame`: that name would make the SinkSet feed it decoded frames) ---------
    def observe(self, report: FrameReport) -> None:
        t = report.pts if report.pts is not None else report.t
        self._last_t = t
        for face in report.faces:
            side = self.side_of(face.box)
            self._sides[face.track] = side
            self.samples.append(Sample(t, side, face.track, face.raw_score, face.score, face.state))

    # -- sink ----------------------------------------------------------------------------------------------
    async def publish(self, event: Event) -> None:
        if event.type == "stream":
            self.stream_events.append(str(event.source_state))
            return
        if event.type != "state" or event.track is None:
            return
        side = self.side_of(event.box) if event.box is not None else self._sides.get(event.track, "?")
        t = event.frame_pts if event.frame_pts is not None else self._last_t
        tr = Transition(t, side, event.track, event.previous_state, event.state, event.score, event.raw_score,
                        event.ended)
        self.transitions.append(tr)
        if self.echo is not None and not (tr.ended and tr.previous == "clear"):
            self.echo(format_transition(tr, self.clip))

    async def aclose(self) -> None:
        return None


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def format_transition(tr: Transition, clip: DemoClip) -> str:
    tag = "swap" if tr.side == clip.manipulated and clip.is_manipulated(tr.t) else "real"
    what = f"{tr.previous} -> {tr.state.upper()}" + (" (track ended)" if tr.ended else "")
    return (f"  {tr.t:6.2f} s  [{tag}]  {tr.side:>5} face (track {tr.track}): {what:<28} "
            f"score {_fmt(tr.score)}  raw {_fmt(tr.raw)}")


def _zone_stats(samples: list[Sample]) -> dict[str, Any]:
    raws = [s.raw for s in samples if s.raw is not None]
    scores = [s.score for s in samples if s.score is not None]
    worst = max((s.state for s in samples), key=lambda st: LEVEL[st], default=None)
    return {
        "frames": len(samples),
        "max_raw": None if not raws else round(max(raws), 4),
        "mean_raw": None if not raws else round(sum(raws) / len(raws), 4),
        "max_score": None if not scores else round(max(scores), 4),
        "highest_state": worst,
    }


def summarize(clip: DemoClip, rec: DemoRecorder, report: MonitorReport) -> dict[str, Any]:
    """The demo's result as JSON-ready data, with the human-readable `lines` to print."""
    start, end = clip.segment
    left = [s for s in rec.samples if s.side == "left"]
    zones = {
        "left_before_swap": _zone_stats([s for s in left if s.t < start]),
        "left_during_swap": _zone_stats([s for s in left if start <= s.t < end]),
        "left_after_swap": _zone_stats([s for s in left if s.t >= end]),
        "right_real": _zone_stats([s for s in rec.samples if s.side == "right"]),
    }
    thresholds = report.smoothing
    flagged = [tr for tr in rec.transitions if tr.side == "left" and start <= tr.t and tr.state != "clear"
               and tr.t < end + 1.0]  # a rise may land just after the cut, on the swap's scores
    first = {st: next((tr.t for tr in flagged if LEVEL[tr.state] >= LEVEL[st]), None) for st in ("suspicious", "alert")}
    during = zones["left_during_swap"]
    reached = max((tr.state for tr in flagged), key=lambda st: LEVEL[st], default=during["highest_state"] or "clear")
    real_states = [z["highest_state"] for k, z in zones.items() if k in ("left_before_swap", "right_real")]
    false_alarm = [s for s in real_states if s is not None and s != "clear"]

    lines = ["", f"alert timeline (stream time; the swap is on the left face at {start:g}-{end:g} s):"]
    shown = [tr for tr in rec.transitions if not (tr.ended and tr.previous == "clear")]
    lines += [format_transition(tr, clip) for tr in shown] or ["  (no state changes)"]
    lines.append("")
    lines.append(
        f"manipulated segment {start:g}-{end:g} s, left face: {during['frames']} frames scored, max smoothed score "
        f"{_fmt(during['max_score']).strip()}, max raw {_fmt(during['max_raw']).strip()}, state reached: {reached.upper()}"
    )
    if first["alert"] is not None:
        lines.append(f"  -> DETECTED: alert {first['alert'] - start:.2f} s after the swap began")
    elif first["suspicious"] is not None:
        lines.append(f"  -> FLAGGED: suspicious {first['suspicious'] - start:.2f} s after the swap began (no alert)")
    else:
        enter = thresholds.get("suspicious_enter", float("nan"))
        top = during["max_score"]
        why = (f"the smoothed score never reached suspicious_enter {enter:.3f}" if top is None or top < enter else
               f"the smoothed score reached suspicious_enter {enter:.3f} but not for long enough to rise")
        lines.append(f"  -> NOT DETECTED by this model: {why}")
    for key, label in (("left_before_swap", f"left face before {start:g} s (real)"), ("right_real", "right face (real)")):
        z = zones[key]
        lines.append(f"{label}: max smoothed {_fmt(z['max_score']).strip()}, max raw {_fmt(z['max_raw']).strip()}, "
                     f"highest state {(z['highest_state'] or '-').upper()}")
    lines.append("false alarms on real faces: " + ("none" if not false_alarm else
                                                   f"yes (reached {max(false_alarm, key=lambda s: LEVEL[s]).upper()})"))
    lines.append("thresholds on the raw score: " + ", ".join(f"{k} {v:.3f}" for k, v in thresholds.items())
                 + (f" (model {report.model.get('name')})" if report.model else ""))
    latency = report.timings.get("latency_ms")
    if latency:
        lines.append(f"glass-to-score latency: p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms "
                     f"over {latency['n']} frames")
    return {
        "clip": clip.as_dict(),
        "zones": zones,
        "reached_during_swap": reached,
        "first_suspicious_s": first["suspicious"],
        "first_alert_s": first["alert"],
        "detected": first["suspicious"] is not None,
        "false_alarm": bool(false_alarm),
        "transitions": [tr.__dict__ for tr in rec.transitions],
        "thresholds": thresholds,
        "model": report.model,
        "timings": report.timings,
        "stopped_by": report.stopped_by,
        "lines": lines,
    }


STATE_COLOURS = {"clear": "#2ca02c", "suspicious": "#ff7f0e", "alert": "#d62728"}


def plot_timeline(clip: DemoClip, rec: DemoRecorder, thresholds: dict[str, float], path: str | Path) -> Path:
    """Raw (dots) and smoothed (line) scores per face over time, with the swap span and thresholds; PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, side in zip(axes, SIDES, strict=True):
        samples = [s for s in rec.samples if s.side == side]
        ax.axvspan(*clip.segment, color="#d62728", alpha=0.08, label="face swap" if side == "left" else None)
        for name, style in (("suspicious_enter", ":"), ("alert_enter", "--")):
            if name in thresholds:
                ax.axhline(thresholds[name], color="grey", linestyle=style, linewidth=1, label=name)
        raw = [(s.t, s.raw) for s in samples if s.raw is not None]
        if raw:
            ax.scatter(*zip(*raw, strict=True), s=4, color="#7f7f7f", alpha=0.6, label="raw score")
        for state in STATES:
            pts = [(s.t, s.score) for s in samples if s.score is not None and s.state == state]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=9, color=STATE_COLOURS[state], label=f"smoothed ({state})")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("score")
        title = "left face (swapped during the shaded span)" if side == "left" else "right face (real throughout)"
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    axes[-1].set_xlabel("stream time (s)")
    axes[-1].set_xlim(0, clip.duration)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
