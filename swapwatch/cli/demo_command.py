"""`swapwatch demo`: build a clip with a real face swap in it and watch it with the monitor, offline.

    swapwatch demo                      # 12 s clip, swap at 4-8 s, streamed in real time
    swapwatch demo --fast --out /tmp/d  # as fast as it scores (tests, slow machines)

What it does, with nothing but the installed package (no network, no torch):

1. builds `clip.mp4` from photos that installed packages ship: two people side by side under a gently
   moving camera, and from 4 to 8 s the left face swapped for another person's by the project's own
   face-swap compositing (see swapwatch/stream/bench/demo_clip.py);
2. streams it through the monitor at its native frame rate (file source, real-time pacing), with the
   default detector and model unless `--model` says otherwise, printing each state change as it happens;
3. prints the alert timeline and an honest verdict: what the model scored inside and outside the
   manipulated segment and which states the tracks reached (whether it alerts depends on the model);
4. writes into `--out`: `annotated.mp4` (boxes coloured by state), `timeline.png` (raw and smoothed
   scores per face with the segment and thresholds), `events.jsonl`, `report.json`, and `evidence/` for
   any alert.

Its first line says where the outputs go. Exit 0 when the run worked, whatever the model decided; 1 on
a runtime failure; 2 on bad options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch-tensorrt", "torch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("swapwatch-demo"),
                   help="folder for the clip, annotated video, timeline plot, events and report (default ./swapwatch-demo)")
    p.add_argument("--fast", action="store_true",
                   help="score the clip as fast as possible instead of at its real-time pace")
    p.add_argument("--seconds", type=float, default=12.0,
                   help="clip length; the swap covers the middle third (default 12: swap at 4-8 s)")
    p.add_argument("--fps", type=int, default=25, help="clip frame rate (default 25)")
    p.add_argument("--model", type=Path, help="deepfake detector to run (default: the embedded model)")
    p.add_argument("--backend", choices=_BACKENDS, help="inference backend (default auto)")
    p.add_argument("--config", type=Path, help="monitor config YAML for faces/engine/batcher/smoothing settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                   help="override a config field, e.g. --set smoothing.suspicious_enter=0.3 (repeatable)")
    p.add_argument("--no-evidence", action="store_true", help="do not write evidence clips for alerts")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from swapwatch.errors import ConfigError
    from swapwatch.stream.bench.demo_report import DemoRecorder, plot_timeline, summarize
    from swapwatch.stream.config import load_monitor_config, parse_set_option

    if not 3.0 <= args.seconds <= 120.0:
        raise ConfigError(f"--seconds: must be between 3 and 120, got {args.seconds}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    clip_path = out / "clip.mp4"
    outputs = "clip.mp4, annotated.mp4, timeline.png, events.jsonl, report.json"
    outputs += "" if args.no_evidence else ", evidence/"
    print(f"swapwatch demo: writing into {out.resolve()}/ ({outputs}); choose another folder with --out",
          flush=True)
    overrides: dict[str, object] = {
        "sources": [{"url": str(clip_path), "name": "demo", "realtime": not args.fast}],
        "sinks.console": None,
        "sinks.jsonl": {"path": str(out / "events.jsonl"), "append": False},
        "sinks.annotate": {"path": str(out / "annotated.mp4")},
    }
    if not args.no_evidence:
        overrides["sinks.evidence"] = {"dir": str(out / "evidence")}
    if args.model is not None:
        overrides["engine.model"] = str(args.model)
    if args.backend is not None:
        overrides["engine.backend"] = args.backend
    for text in args.set_values:
        key, value = parse_set_option(text)
        overrides[key] = value
    cfg = load_monitor_config(args.config, overrides)

    from swapwatch.stream.bench.demo_clip import build_demo_clip
    from swapwatch.stream.faces.detector import load_detector
    from swapwatch.stream.pipeline import run_monitor

    detector = load_detector(cfg.faces.detector)
    print(f"swapwatch demo: building a {args.seconds:g} s clip from package sample photos "
          f"(face swap on the left person at {args.seconds / 3:.1f}-{2 * args.seconds / 3:.1f} s) ...", flush=True)
    clip = build_demo_clip(clip_path, seconds=args.seconds, fps=args.fps, detector=detector)
    pace = "as fast as it scores" if args.fast else "in real time"
    print(f"swapwatch demo: watching {clip.path} ({clip.frames} frames, {clip.width}x{clip.height} "
          f"at {clip.fps:g} fps) {pace}; state changes as they happen:", flush=True)
    recorder = DemoRecorder(clip, echo=lambda line: print(line, flush=True))
    report = run_monitor(cfg, detector=detector, extra_sinks=[recorder], observers=[recorder.observe])
    summary = summarize(clip, recorder, report)
    plot_timeline(clip, recorder, report.smoothing, out / "timeline.png")
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    for line in summary["lines"]:
        print(line)
    print(f"wrote {out / 'annotated.mp4'}, {out / 'timeline.png'}, {out / 'events.jsonl'}, {out / 'report.json'}")
    if report.failed:
        print(f"swapwatch demo: the stream failed: {report.streams['demo'].error}", file=sys.stderr)
        return 1
    return 0
