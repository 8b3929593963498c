"""`swapwatch export CHECKPOINT --format onnx|tensorrt|torch-tensorrt --precision fp32|fp16|int8 --out PATH`.

`swapwatch export [MODEL] --format triton-repo --out REPO` lays out a Triton Inference Server model
repository: from a checkpoint (exported first, to onnx or with --triton-platform tensorrt to a plan), from
an already exported .onnx or plan, or with no MODEL from the embedded default model (no torch needed).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swapwatch.engine.triton_repo import TritonRepo

FORMATS = ("onnx", "tensorrt", "torch-tensorrt", "triton-repo")
PRECISIONS = ("fp32", "fp16", "int8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, nargs="?",
                   help="training checkpoint (.pt) written by swapwatch train; for --format triton-repo also an "
                        "exported .onnx or TensorRT plan (with its sidecar), or nothing for the embedded default model")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="engine format: onnx (portable, ONNX Runtime), tensorrt (a plan for this GPU; keeps the "
                        "ONNX beside it), torch-tensorrt (a compiled .ep program), triton-repo (a model repository "
                        "for NVIDIA Triton Inference Server: REPO/NAME/config.pbtxt + VERSION/model.onnx|plan); "
                        "default onnx")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); fp16 (mixed-precision graph); int8 (Q/DQ graph calibrated on real crops)")
    p.add_argument("--out", type=Path, required=True,
                   help="output file: .onnx, .plan or .ep to match --format; the metadata sidecar goes to OUT.json "
                        "(triton-repo: the repository folder)")
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
    p.add_argument("--max-batch", type=int, default=32,
                   help="TensorRT: largest batch of the profile; triton-repo: the model's max_batch_size (default 32)")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT: builder workspace limit in MiB (default 1024)")
    p.add_argument("--timing-cache", type=Path, default=None,
                   help="TensorRT: timing cache file, loaded if present and saved after the build")
    p.add_argument("--store-fp16", action="store_true",
                   help="onnx fp32: store the weights as float16 (half the file; still computed in float32, "
                        "scores move by ~1e-3; how the package's default model ships)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index for tensorrt / torch-tensorrt (default 0)")
    p.add_argument("--triton-name", default="swapwatch",
                   help="triton-repo: model name, the folder under REPO and the MODEL of triton://HOST:PORT/MODEL "
                        "(default swapwatch)")
    p.add_argument("--triton-version", type=int, default=1, help="triton-repo: model version folder (default 1)")
    p.add_argument("--triton-platform", choices=("onnx", "tensorrt"), default="onnx",
                   help="triton-repo from a checkpoint: export onnx (ONNX Runtime backend, default) or a TensorRT plan "
                        "for this GPU (tensorrt_plan); an .onnx or plan MODEL keeps its own format")
    p.add_argument("--max-queue-delay-us", type=int, default=500,
                   help="triton-repo: how long Triton's dynamic batcher may hold a request to batch it with others, "
                        "in microseconds (default 500)")


def run(args: argparse.Namespace) -> int:
    from swapwatch.errors import ConfigError, ModelFileError

    if args.format == "triton-repo" and (args.checkpoint is None or args.checkpoint.suffix.lower() != ".pt"):
        return _triton_repo_from_model(args)
    if args.checkpoint is None:
        raise ConfigError(f"--format {args.format}: needs a CHECKPOINT (.pt); only --format triton-repo can take the "
                          "embedded default model")
    if not args.checkpoint.is_file():
        raise ModelFileError(args.checkpoint, "no such checkpoint (expected a .pt written by swapwatch train)")
    if args.format == "triton-repo":
        return _triton_repo_from_checkpoint(args)
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


def _triton_repo_from_model(args: argparse.Namespace) -> int:
    """triton-repo around an exported .onnx / plan, or the embedded default model: no export, no torch."""
    from swapwatch.engine.triton_repo import write_triton_repo
    from swapwatch.errors import ConfigError

    if args.precision != "fp32" or args.calib_crops is not None or args.store_fp16:
        raise ConfigError("--precision/--calib-crops/--store-fp16: only when exporting a checkpoint; an exported model "
                          "keeps the precision its sidecar records")
    layout = write_triton_repo(args.checkpoint, args.out, args.triton_name, version=args.triton_version,
                               max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us)
    _print_repo(layout)
    return 0


def _triton_repo_from_checkpoint(args: argparse.Namespace) -> int:
    from swapwatch.engine.export import export_triton_repo
    from swapwatch.engine.trt_profile import BatchProfile
    from swapwatch.errors import ConfigError

    if args.store_fp16:
        raise ConfigError("--store-fp16: only for --format onnx (then pass the .onnx to --format triton-repo)")
    if args.calib_crops is not None:
        raise ConfigError("--calib-crops: export --format onnx or tensorrt with it, then pass that model to "
                          "--format triton-repo")
    if args.opt_batch < 1 or args.max_batch < 1:
        raise ConfigError(f"--opt-batch/--max-batch: need >= 1, got {args.opt_batch} and {args.max_batch}")
    report, layout = export_triton_repo(
        args.checkpoint, args.out, args.triton_platform, args.precision, name=args.triton_name,
        version=args.triton_version, max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
        opset=args.opset, tolerance=args.tolerance,
        profile=BatchProfile(min_batch=1, opt_batch=min(args.opt_batch, args.max_batch), max_batch=args.max_batch),
        workspace_bytes=args.workspace_mb << 20, timing_cache=args.timing_cache, device=args.device,
    )
    if report.n_crops:
        print(f"{report.format} {report.precision}: parity on {report.n_crops} real face crops: max |engine - torch| = "
              f"{report.max_abs_diff:.2e}")
    _print_repo(layout)
    return 0


def _print_repo(layout: TritonRepo) -> None:
    print(f"wrote {layout.config} and {layout.model} (+ {layout.sidecar.name}): {layout.platform}, "
          f"max_batch_size {layout.max_batch}")
    print(f"serve it: tritonserver --model-repository {layout.repo}  (or, without a GPU: "
          f"python swapwatch/engine/pytriton_serve.py {layout.repo}; see docs/triton.md)")
    print(f"use it:   swapwatch watch SOURCE --engine triton://HOST:8001/{layout.model_name}")
