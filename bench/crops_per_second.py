"""Face crops per second through ONNX Runtime for an exported model, per batch size.

    python bench/crops_per_second.py [MODEL.onnx] [--threads 2] [--batches 1 8 32] [--seconds 5]

Uses real aligned face crops (the package sample faces, tiled to the batch size), the same session
settings as the monitor (explicit CPU provider, no spin-waiting), and reports the median batch latency
and throughput. Prints a table and writes JSON to runs/bench/ unless --json says elsewhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from swapwatch.engine.export import sample_crops
from swapwatch.engine.onnx_runtime import OnnxEngine, default_model_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, default=None, help="exported .onnx (default: the embedded model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per batch size")
    ap.add_argument("--json", type=Path, help="where to write the results")
    args = ap.parse_args()

    model = args.model or default_model_path()
    engine = OnnxEngine(model, threads=args.threads)
    crops = sample_crops(engine.input_size, engine.meta.alignment.margin)
    results = []
    for b in args.batches:
        batch = engine.preprocess(np.stack([crops[i % len(crops)] for i in range(b)]))
        for _ in range(3):
            engine.infer(batch)
        times = []
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            engine.infer(batch)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        results.append({"batch": b, "median_ms": med * 1e3, "p95_ms": float(np.percentile(times, 95)) * 1e3,
                        "crops_per_s": b / med, "runs": len(times)})
        print(f"batch {b:3d}: {med * 1e3:7.2f} ms median, {b / med:8.1f} crops/s ({len(times)} runs)")
    out = args.json or Path("runs/bench") / f"{model.stem}.crops_per_second.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(model), "threads": args.threads, "input_size": engine.input_size,
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
