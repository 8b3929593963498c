"""`swapwatch export CHECKPOINT --format onnx --out model.onnx`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="training checkpoint (.pt) written by swapwatch train")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="engine format (onnx)")
    p.add_argument("--out", type=Path, required=True, help="output .onnx path; the sidecar goes to OUT.json")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |onnx - torch| allowed on real crops")


def run(args: argparse.Namespace) -> int:
    from swapwatch.engine.export import export_onnx

    if not args.checkpoint.is_file():
        from swapwatch.errors import ModelFileError

        raise ModelFileError(args.checkpoint, "no such checkpoint (expected a .pt written by swapwatch train)")
    report = export_onnx(args.checkpoint, args.out, opset=args.opset, tolerance=args.tolerance)
    print(f"wrote {report.path} and {report.sidecar}")
    print(f"parity on {report.n_crops} real face crops: max |onnx - torch| = {report.max_abs_diff:.2e}, "
          f"folded vs decomposed = {report.fold_max_abs_diff:.2e}")
    return 0
