"""`swapwatch bench`: the engine benchmark, or with SOURCEs the live stream latency benchmark.

Engine benchmark (no SOURCE):

    swapwatch bench                                     # the embedded default model, best backend here
    swapwatch bench --engine fp32.onnx --engine int8.onnx --batches 1 8 32 --seconds 3
    swapwatch bench --engine model.onnx --backend onnxruntime onnxruntime-cuda tensorrt

For each engine file and backend: faces/s and batch latency (median, p95) per batch size on real face
crops, the micro-batcher config derived from that profile, and a batcher run with `--tracks`
concurrent submitters. Writes bench.json, throughput.png and latency.png into --out and prints tables.
A backend that cannot run here (no GPU, package missing) is reported as skipped; the command fails
(exit 1) only when nothing could be measured.

Stream benchmark (SOURCE files given):

    swapwatch bench call.mp4 --via rtsp --size 1280x720 --duration 30
    swapwatch bench call.mp4 --via webrtc --streams 1 2 3 4 --p95-ms 250
    swapwatch bench call.mp4 --via file --engine int8.onnx

Replays each file as a live stream (RTSP server on loopback, a WebRTC/WHIP sender, or the monitor's
paced file source), `--streams N...` simultaneous copies each, runs the real monitor on them and
measures glass-to-score latency per frame from send-time stamps drawn into the pictures, fps, dropped
frames, a per-stage breakdown and the decode-only ceiling. Writes bench.json ("mode": "stream"),
frames.jsonl, latency.png, timeline.png, stages.png and sweep.png. See docs/bench.md.
Unreadable SOURCE or bad options: exit 2; a transport that cannot run here (GStreamer missing): exit 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Static copies keep `swapwatch --help` free of engine imports; swapwatch.engine.bench checks them again.
_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch-tensorrt", "torch")
_DEFAULT_BATCHES = [1, 2, 4, 8, 16, 32]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="*", type=Path, metavar="SOURCE",
                   help="recorded video files to replay as live streams (stream benchmark); none: engine benchmark")
    # Always with a value: a bare `--engine` would swallow a SOURCE.
    p.add_argument(
        "--engine", action="append", type=Path, metavar="MODEL", dest="engines",
        help="engine file (.onnx with its sidecar, .plan, .ep, .pt); repeat to compare files, e.g. fp32 and "
        "int8 exports (default: the embedded default model)",
    )
    p.add_argument(
        "--backend", nargs="+", choices=_BACKENDS, default=["auto"], metavar="BACKEND",
        help=f"backends to run each engine on: {', '.join(_BACKENDS)} (default: auto, the best one available)",
    )
    p.add_argument("--batches", nargs="+", type=int, default=_DEFAULT_BATCHES, metavar="N",
                   help="batch sizes to time, capped by the engine's own max batch (default: 1 2 4 8 16 32)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="measuring time per batch size, and for the batcher run (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per ONNX Runtime session (default 1, as the monitor runs it)")
    p.add_argument("--tracks", type=int, default=8,
                   help="concurrent submitters (simulated face tracks) in the batcher run (default 8)")
    p.add_argument("--budget-ms", type=float, default=50.0,
                   help="batch latency budget the batcher config is chosen under (default 50)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder for bench.json and the plots (default runs/bench/<timestamp>/)")
    stream = p.add_argument_group("stream benchmark (with SOURCE)")
    stream.add_argument("--via", choices=("rtsp", "webrtc", "file"), default="rtsp",
                        help="how the files reach the monitor: rtsp (a GStreamer RTSP server on loopback), webrtc "
                        "(an aiortc WHIP sender), file (the monitor's paced file source); default rtsp")
    stream.add_argument("--streams", nargs="+", type=int, default=[1], metavar="N",
                        help="simultaneous copies of each SOURCE; several values sweep, e.g. 1 2 3 4 (default 1)")
    stream.add_argument("--duration", type=float, default=20.0, metavar="S",
                        help="measured seconds per stream count, after the warm-up (default 20)")
    stream.add_argument("--warmup", type=float, default=3.0, metavar="S",
                        help="seconds left out at the start of each run (default 3)")
    stream.add_argument("--size", metavar="WxH", help="replay size, e.g. 1280x720 (default: each file's own size)")
    stream.add_argument("--p95-ms", type=float, default=250.0,
                        help="a stream count holds in real time when its p95 glass-to-score is at most this (default 250)")
    stream.add_argument("--max-drop", type=float, default=0.01,
                        help="... and it dropped at most this fraction of the sender's frames (default 0.01)")
    stream.add_argument("--config", type=Path, dest="monitor_config",
                        help="monitor config YAML (faces, engine, batcher, smoothing; its sources and sinks are ignored)")
    stream.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                        help="override a monitor config field, e.g. --set faces.detect_every=3 (repeatable)")
    stream.add_argument("--queue-size", type=int, metavar="N",
                        help="frames each stream's latest-frame queue holds for the monitor (default: the monitor's "
                        "own, 1); more absorbs bursty delivery at the cost of waiting frames")
    stream.add_argument("--clip-seconds", type=float, default=10.0, metavar="S",
                        help="replay at most this much of each file, looped (default 10)")
    stream.add_argument("--ceiling-seconds", type=float, default=2.0, metavar="S",
                        help="seconds the decode-only ceiling is measured for, per stream count (default 2)")


def run(args: argparse.Namespace) -> int:
    if args.sources:
        return run_stream(args)
    import sys
    import time

    from rich.console import Console

    from swapwatch.engine.bench import BenchSettings, print_report, run_bench, write_report

    console = Console()
    settings = BenchSettings(
        engines=tuple(args.engines) if args.engines else (None,),
        backends=tuple(dict.fromkeys(args.backend)),
        batches=tuple(args.batches),
        seconds=args.seconds,
        threads=args.threads,
        tracks=args.tracks,
        budget_ms=args.budget_ms,
    )
    report = run_bench(settings, progress=lambda msg: console.print(f"[dim]{msg}[/]"))
    out = args.out or Path("runs") / "bench" / time.strftime("%Y%m%d-%H%M%S")
    paths = write_report(report, out)
    print_report(report, console)
    console.print(f"wrote {paths['json']}, {paths['throughput'].name}, {paths['latency'].name}")
    if not report.rows:
        print("swapwatch bench: no engine could be measured on the requested backends (see skipped above)",
              file=sys.stderr)
        return 1
    return 0


def run_stream(args: argparse.Namespace) -> int:
    """The stream benchmark (SOURCE files given)."""
    import time

    from rich.console import Console

    from swapwatch.config import parse_config
    from swapwatch.errors import ConfigError
    from swapwatch.stream.bench.runner import print_summary, run_stream_bench
    from swapwatch.stream.bench.settings import StreamBenchSettings, parse_size

    if args.engines and len(args.engines) > 1:
        raise ConfigError("--engine: the stream benchmark runs one model; give --engine once")
    if len(args.backend) > 1:
        raise ConfigError("--backend: the stream benchmark runs one backend; give one")
    size = None
    if args.size:
        try:
            size = parse_size(args.size)
        except ValueError as err:
            raise ConfigError(f"--size: {err}") from None
    from swapwatch.stream.config import parse_set_option

    overrides = dict(parse_set_option(text) for text in args.set_values)
    out = args.out or Path("runs") / "bench" / time.strftime("stream-%Y%m%d-%H%M%S")
    settings = parse_config(StreamBenchSettings, {
        "sources": list(args.sources), "via": args.via, "streams": args.streams, "duration_s": args.duration,
        "warmup_s": args.warmup, "engine": args.engines[0] if args.engines else None, "backend": args.backend[0],
        "size": size, "clip_seconds": args.clip_seconds, "p95_ms": args.p95_ms, "max_drop": args.max_drop,
        "ceiling_s": args.ceiling_seconds, "queue_size": args.queue_size, "out": out,
        "config": args.monitor_config, "overrides": overrides,
    }, source="swapwatch bench options")
    console = Console(stderr=True)
    result = run_stream_bench(settings, console)
    print_summary(result.report, Console())
    names = ", ".join(p.name for k, p in result.paths.items() if k != "json")
    console.print(f"wrote {result.paths['json']} ({names})")
    return 0
