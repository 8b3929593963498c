"""`swapwatch export CHECKPOINT --format onnx|tensorrt|torch-tensorrt --precision fp32|fp16|int8 --out PATH`."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("onnx", "tensorrt", "torch-tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="training checkpoint (.pt) written by swapwatch train")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="engine format: onnx (portable, ONNX Runtime), tensorrt (a plan for this GPU; keeps the "
                        "ONNX beside it), torch-tensorrt (a compiled .ep program); default onnx")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); fp16 (mixed-precision graph); int8 (Q/DQ graph calibrated on real crops)")
    p.add_argument("--out", type=Path, required=True,
                   help="output file: .onnx, .plan or .ep to match --format; the metadata sidecar goes to OUT.json")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |engine - torch| allowed on real face crops (default by precision: fp32 onnx 1e-3, "
                        "fp32 TensorRT 5e-3, fp16 2e-2, int8 1e-1)")
    p.add_argument("--calib-crops", type=Path, default=None,
                   help="fp16/int8: calibration folder as swapwatch calibrate reads it (real/ and/or fake/), aligned "
                        "crops at the model's input size (default: the package sample faces, too few to deploy)")
    p.add_argument("--calib-raw", action="store_true",
                   help="--calib-crops holds raw images/videos: detect and align their faces first")
    p.add_argument("--calib-max", type=int, default=512, help="at most this many calibration crops per class (512)")
    p.add_argument("--opt-batch", type=int, default=8, help="TensorRT: batch size kernels are tuned for (default 8)")
    p.add_argument("--max-batch", type=int, default=32, help="TensorRT: largest batch of the profile (default 32)")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT: builder workspace limit in MiB (default 1024)")
    p.add_argument("--timing-cache", type=Path, default=None,
                   help="TensorRT: timing cache file, loaded if present and saved after the build")
    p.add_argument("--store-fp16", action="store_true",
                   help="onnx fp32: store the weights as float16 (half the file; still computed in float32, "
                        "scores move by ~1e-3; how the package's default model ships)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index for tensorrt / torch-tensorrt (default 0)")


def run(args: argparse.Namespace) -> int:
    from swapwatch.errors import ConfigError, ModelFileError

    if not args.checkpoint.is_file():
        raise ModelFileError(args.checkpoint, "no such checkpoint (expected a .pt written by swapwatch train)")
    if args.opt_batch < 1 or args.max_batch < args.opt_batch:
        raise ConfigError(f"--opt-batch/--max-batch: need 1 <= opt ({args.opt_batch}) <= max ({args.max_batch})")
    if args.workspace_mb < 16:
        raise ConfigError(f"--workspace-mb: need at least 16, got {args.workspace_mb}")

    if args.store_fp16 and (args.format, args.precision) != ("onnx", "fp32"):
        raise ConfigError("--store-fp16: only for --format onnx --precision fp32")
    from swapwatch.engine.export import export_engine
    from swapwatch.engine.trt_profile import BatchProfile

    calib = None
    if args.calib_crops is not None:
        if args.precision == "fp32":
            raise ConfigError("--calib-crops: only used with --precision fp16 or int8")
        from swapwatch.calib.crops import load_crops
        from swapwatch.engine.torch_runtime import checkpoint_crop_size, checkpoint_margin
        from swapwatch.train.loop import model_from_checkpoint

        model, state = model_from_checkpoint(args.checkpoint)
        calib = load_crops(args.calib_crops, int(model.input_size), checkpoint_margin(state),
                           aligned=not args.calib_raw, max_crops=args.calib_max,
                           crop_size=checkpoint_crop_size(state)).crops
    report = export_engine(
        args.checkpoint, args.out, args.format, args.precision, opset=args.opset, tolerance=args.tolerance,
        calib_crops=calib, profile=BatchProfile(min_batch=1, opt_batch=args.opt_batch, max_batch=args.max_batch),
        workspace_bytes=args.workspace_mb << 20, timing_cache=args.timing_cache, device=args.device,
        calib_source=str(args.calib_crops) if args.calib_crops is not None else None,
    )
    others = [str(f) for f in report.files if f not in (report.path, report.sidecar)]
    print(f"wrote {report.path} and {report.sidecar}" + (f" (and {', '.join(others)})" if others else ""))
    if report.n_crops == 0:
        print(f"{report.format} {report.precision}: parity not checked on this machine (see the sidecar's export.parity)")
    else:
        print(f"{report.format} {report.precision}: parity on {report.n_crops} real face crops: max |engine - torch| = "
              f"{report.max_abs_diff:.2e}, folded vs decomposed = {report.fold_max_abs_diff:.2e}")
    if args.store_fp16:
        from swapwatch.engine.compact import compact_onnx
        from swapwatch.engine.metadata import read_metadata
        from swapwatch.samples import model_sample_crops

        info = compact_onnx(report.path, model_sample_crops(read_metadata(report.path)))
        print(f"weights stored as float16: {info['bytes_before'] / 1e6:.1f} -> {info['bytes_after'] / 1e6:.1f} MB, "
              f"max score change {info['max_abs_diff']:.2e} on {info['check_crops']} real face crops")
    return 0
