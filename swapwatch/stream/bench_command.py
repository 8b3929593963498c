"""`swapwatch bench [--engine MODEL ...] [--backend B ...]`: engine throughput, latency and batching.

    swapwatch bench                                     # the embedded default model, best backend here
    swapwatch bench --engine fp32.onnx --engine int8.onnx --batches 1 8 32 --seconds 3
    swapwatch bench --engine model.onnx --backend onnxruntime onnxruntime-cuda tensorrt

For each engine file and backend: faces/s and batch latency (median, p95) per batch size on real face
crops, the micro-batcher config derived from that profile, and a batcher run with `--tracks`
concurrent submitters. Writes bench.json, throughput.png and latency.png into --out and prints tables.
A backend that cannot run here (no GPU, package missing) is reported as skipped; the command fails
(exit 1) only when nothing could be measured.

The command takes no positional arguments today: a stream benchmark (`swapwatch bench SOURCE...
--streams N`, frames in to scores out) will add them, with --engine naming the model it runs; without
SOURCEs the command stays this engine benchmark, so today's command lines keep working.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Static copies keep `swapwatch --help` free of engine imports; swapwatch.engine.bench checks them again.
_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch-tensorrt", "torch")
_DEFAULT_BATCHES = [1, 2, 4, 8, 16, 32]


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Always with a value: a bare `--engine` would swallow the SOURCE that a stream benchmark will take.
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


def run(args: argparse.Namespace) -> int:
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
