"""`swapwatch calibrate MODEL.onnx --data DIR [--int8] [--fp16] [--scores]`: precision variants and score calibration.

Writes, beside MODEL (or into --out-dir):
- `--int8`:  `<stem>.int8.onnx` + sidecar (Q/DQ graph calibrated on the crops, see swapwatch.calib.int8);
- `--fp16`:  `<stem>.fp16.onnx` + sidecar (mixed precision, see swapwatch.calib.fp16);
- `--scores`: the fitted `score_calibration` (method, thresholds for target FPRs) into MODEL's sidecar in
  place, and into each variant's sidecar made in the same run, each fitted on its own scores;
- always: `<stem>.calibration.json` and `<stem>.calibration.png` (ROC + reliability or drift plot),
  and a table on stdout: AUC FP32 vs variant on the same crops, max/mean |score drift|, CPU throughput
  at batch 8 and 1 (--threads, --bench-seconds each) and the speed-up over FP32.

The crops used for INT8 calibration are also the crops the variants are compared on: the drift numbers
are in-sample. Exit codes: 2 for usage errors (no action, bad folder path, wrong-size crops with --crops,
--scores without fakes), 1 for runtime failures (missing or corrupt model, sidecar mismatch, no faces).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="FP32 .onnx written by swapwatch export (with its .onnx.json sidecar)")
    p.add_argument("--data", type=Path, required=True, help="folder with real/ and/or fake/ (images, videos or crops)")
    p.add_argument("--eval-data", type=Path, default=None,
                   help="separate folder (same layout and flags) to measure the variants' AUC and drift on, so "
                   "they are not judged on the crops they were calibrated on (default: --data)")
    p.add_argument("--crops", action="store_true", help="the images are aligned face crops at the model's input size")
    p.add_argument("--pseudo-fakes", action="store_true", help="also make a deterministic pseudo-fake of each real crop")
    p.add_argument("--int8", action="store_true", help="write <stem>.int8.onnx (Q/DQ, calibrated on the crops)")
    p.add_argument("--fp16", action="store_true", help="write <stem>.fp16.onnx (mixed precision)")
    p.add_argument("--scores", action="store_true", help="fit score calibration and FPR thresholds into the sidecars")
    p.add_argument("--max-crops", type=int, default=512, help="at most N crops per class (default 512)")
    p.add_argument("--out-dir", type=Path, help="folder for the variants and the report (default: beside MODEL)")
    p.add_argument("--int8-target", choices=["cpu", "tensorrt"], default="cpu",
                   help="cpu: u8s8, fast on x86 ONNX Runtime (default); tensorrt: s8s8 zero-point 0")
    p.add_argument("--int8-method", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="activation range calibration (default minmax)")
    p.add_argument("--int8-per-tensor", action="store_true",
                   help="one weight scale per tensor instead of per output channel")
    p.add_argument("--int8-float-stem", type=int, nargs="?", const=1, default=0, metavar="N",
                   help="keep the first N compute layers in float (N=1 without a value; default 0)")
    p.add_argument("--score-method", choices=["platt", "isotonic"], default="platt",
                   help="raw score -> probability map (default platt)")
    p.add_argument("--target-fpr", type=float, action="append", metavar="FPR",
                   help="false-positive rate to pick a threshold for; repeatable (default 0.01 and 0.001)")
    p.add_argument("--frames", type=int, default=8, help="frames sampled per video in raw mode (default 8)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the throughput check (default 2)")
    p.add_argument("--bench-seconds", type=float, default=3.0,
                   help="seconds per throughput measurement (default 3; 0 skips it)")
    p.add_argument("--seed", type=int, default=0, help="seed for file sampling and pseudo-fakes")


def _score(path: Path, batch: Any, chunk: int = 64) -> np.ndarray:
    from swapwatch.calib import iter_batches
    from swapwatch.engine.onnx_runtime import OnnxEngine

    engine = OnnxEngine(path, threads=2)
    try:
        parts = [engine.infer(x) for x in iter_batches(batch, chunk)]
    finally:
        engine.close()
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _try_score(path: Path, batch: Any) -> tuple[np.ndarray | None, str | None]:
    """Scores, or (None, reason) when ONNX Runtime CPU cannot open or run the graph (FP16 kernels)."""
    try:
        return _score(path, batch), None
    except Exception as err:  # noqa: BLE001 - ORT reports missing kernels with its own exception types
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        log.warning("%s: ONNX Runtime CPU cannot run it: %s", path.name, reason)
        return None, reason


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Do what the arguments ask and return the report (also written to <stem>.calibration.json)."""
    from swapwatch.calib import PreprocessedCrops, auc_or_none, compare_variant
    from swapwatch.calib.crops import load_crops
    from swapwatch.calib.score import (
        DEFAULT_TARGET_FPRS,
        fit_calibration,
        write_score_calibration,
    )
    from swapwatch.engine.onnx_runtime import OnnxEngine
    from swapwatch.errors import ConfigError, ModelFileError

    if not (args.int8 or args.fp16 or args.scores):
        raise ConfigError("nothing to do: give --int8, --fp16 and/or --scores")
    fprs = tuple(args.target_fpr) if args.target_fpr else DEFAULT_TARGET_FPRS
    bad = [f for f in fprs if not 0.0 < f < 1.0]
    if bad:
        raise ConfigError(f"--target-fpr must be in (0, 1), got {bad[0]}")
    if args.bench_seconds < 0 or args.threads < 1:
        raise ConfigError("--bench-seconds must be >= 0 and --threads >= 1")
    model: Path = args.model
    if not model.is_file():
        raise ModelFileError(model, "no such model file (expected an .onnx written by swapwatch export)")
    engine = OnnxEngine(model)  # checks the sidecar and its hash, and that ORT can read the model
    meta = engine.meta
    engine.close()
    if (args.int8 or args.fp16) and meta.precision != "fp32":
        raise ModelFileError(model, f"--int8/--fp16 need the FP32 model; this sidecar says precision={meta.precision}")
    out_dir: Path = args.out_dir or model.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.stem

    crops = load_crops(
        args.data, meta.input_size, meta.alignment.margin, aligned=args.crops, max_crops=args.max_crops,
        pseudo_fakes=args.pseudo_fakes, seed=args.seed, frames_per_video=args.frames, crop_size=meta.alignment.size,
    )
    labels = crops.labels
    if args.scores and (labels == 1).sum() == 0:
        raise ConfigError(
            f"--scores needs fake crops to fit against: {args.data} has no fake/ faces; add some or pass --pseudo-fakes"
        )
    if args.scores and (labels == 0).sum() == 0:
        raise ConfigError(f"--scores needs real crops: {args.data} has no real/ faces")
    batch = PreprocessedCrops(crops.crops, engine.preprocess)
    report: dict[str, Any] = {"model": str(model), "data": crops.summary(), "out_dir": str(out_dir)}
    # Variants are compared on --eval-data when given: crops the INT8 ranges never saw.
    eval_labels, eval_batch = labels, batch
    if args.eval_data is not None and (args.int8 or args.fp16):
        held = load_crops(
            args.eval_data, meta.input_size, meta.alignment.margin, aligned=args.crops, max_crops=args.max_crops,
            pseudo_fakes=args.pseudo_fakes, seed=args.seed + 1, frames_per_video=args.frames,
            crop_size=meta.alignment.size,
        )
        eval_labels, eval_batch = held.labels, PreprocessedCrops(held.crops, engine.preprocess)
        report["eval_data"] = held.summary()

    fp32_scores = _score(model, batch)
    fp32_eval = fp32_scores if eval_batch is batch else _score(model, eval_batch)
    evaluated: dict[str, np.ndarray] = {"fp32": fp32_eval}
    report["fp32"] = {"path": str(model), "auc": auc_or_none(eval_labels, fp32_eval), "throughput": {}}
    scored: dict[str, tuple[Path, np.ndarray]] = {"fp32": (model, fp32_scores)}
    counts = {"n_real": crops.n_real, "n_fake": crops.n_fake, "n_pseudo_fake": crops.n_pseudo_fake}
    variants: list[tuple[str, Path, dict[str, Any]]] = []  # (precision, file, settings) to compare with FP32

    if args.int8:
        from swapwatch.calib.int8 import Int8Config, calibrate_int8

        cfg = Int8Config(target=args.int8_target, calibrate_method=args.int8_method,
                         per_channel=not args.int8_per_tensor, float_stem_layers=args.int8_float_stem)
        res = calibrate_int8(model, crops.crops, out_dir / f"{stem}.int8.onnx", cfg, str(args.data), counts)
        variants.append(("int8", res.path, {k: v for k, v in res.info.items() if k != "float_nodes"}))
    if args.fp16:
        from swapwatch.calib.fp16 import calibrate_fp16

        res16 = calibrate_fp16(model, crops.crops, out_dir / f"{stem}.fp16.onnx", source=str(args.data))
        variants.append(("fp16", res16.path, res16.info))
    for name, path, settings in variants:
        scores, reason = _try_score(path, batch)
        on_eval = scores if scores is None or eval_batch is batch else _score(path, eval_batch)
        cmp = compare_variant(name, path, eval_batch, eval_labels, fp32_eval, model, on_eval, reason,
                              threads=args.threads, seconds=args.bench_seconds)
        report["fp32"]["throughput"] = report["fp32"]["throughput"] or dict(cmp.throughput_fp32)
        report[name] = {**cmp.as_dict(), "settings": settings}
        if scores is not None and on_eval is not None:
            scored[name] = (path, scores)
            evaluated[name] = on_eval

    fp32_calibrated = None
    if args.scores:
        from swapwatch.calib.score import apply_calibration

        report["scores"] = {}
        for name, (path, scores) in scored.items():
            fit = fit_calibration(scores, labels, args.score_method, fprs, warn=name == "fp32")
            write_score_calibration(path, fit.calibration)
            report["scores"][name] = {"sidecar": str(path) + ".json", **fit.as_dict()}
            if name == "fp32":
                fp32_calibrated = apply_calibration(scores, fit.calibration)

    report["report"] = str(out_dir / f"{stem}.calibration.json")
    roc_on = "the evaluation crops" if "eval_data" in report else "the calibration crops"
    report["plot"] = str(_plot(report, labels, scored, fp32_calibrated, out_dir / f"{stem}.calibration.png",
                               (eval_labels, evaluated, roc_on)))
    (out_dir / f"{stem}.calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _plot(
    report: dict[str, Any],
    labels: np.ndarray,
    scored: dict[str, tuple[Path, np.ndarray]],
    calibrated: np.ndarray | None,
    path: Path,
    evaluation: tuple[np.ndarray, dict[str, np.ndarray], str],
) -> Path:
    """Left: ROC of each precision on the evaluation crops. Right: reliability of the FP32 scores
    before/after calibration (with --scores, on the calibration crops), else FP32 vs variant scores (the drift)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from swapwatch.calib.score import reliability_bins

    eval_labels, evaluated, roc_on = evaluation
    fig, (roc_ax, right) = plt.subplots(1, 2, figsize=(10, 4.6))
    two_classes = eval_labels.size > 0 and eval_labels.min() != eval_labels.max()
    for name, scores in evaluated.items():
        if two_classes:
            fpr, tpr, _ = roc_curve(eval_labels, scores)
            auc = report.get(name, {}).get("auc")
            roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    roc_ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC on {roc_on}")
    roc_ax.grid(alpha=0.3)
    if two_classes:
        roc_ax.legend(loc="lower right", fontsize=8)
    if calibrated is not None:
        for name, probs in (("raw", scored["fp32"][1]), ("calibrated", calibrated)):
            rows = reliability_bins(probs, labels)
            right.plot([r["mean_prob"] for r in rows], [r["frac_fake"] for r in rows], marker="o", label=name)
        right.plot([0, 1], [0, 1], "k--", lw=0.8)
        right.set(xlabel="mean predicted P(fake)", ylabel="fraction fake", title="reliability (FP32, in-sample)")
        right.legend(loc="upper left", fontsize=8)
    else:
        base = evaluated["fp32"]
        for name, scores in evaluated.items():
            if name != "fp32":
                right.scatter(base, scores, s=6, alpha=0.6, label=name)
        right.plot([0, 1], [0, 1], "k--", lw=0.8)
        right.set(xlabel="FP32 score", ylabel="variant score", title="score drift")
        if len(evaluated) > 1:
            right.legend(loc="upper left", fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_report(report: dict[str, Any]) -> None:
    """The report as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # logs and pipes: do not wrap the tables at 80 columns
    d = report["data"]
    console.print(
        f"[bold]{Path(report['model']).name}[/bold] on {d['source']}: {d['n_real']} real, {d['n_fake']} fake, "
        f"{d['n_pseudo_fake']} pseudo-fake crops" + (f" ({len(d['skipped'])} files skipped)" if d["skipped"] else "")
    )
    variants = [k for k in ("int8", "fp16") if k in report]
    if variants:
        on = report["eval_data"]["source"] if "eval_data" in report else "the calibration crops"
        t = Table(title=f"precision vs FP32 on {on} (ONNX Runtime CPU; speed in alternating bursts)")
        for col in ("model", "AUC", "AUC fp32", "max drift", "mean drift", "b8 /s", "b1 /s", "x b8", "x b1"):
            t.add_column(col)
        fp = report["fp32"]
        tp = fp["throughput"]
        t.add_row("fp32", _fmt(fp["auc"]), _fmt(fp["auc"]), "0", "0", _fmt(tp.get("batch_8"), ".0f"),
                  _fmt(tp.get("batch_1"), ".0f"), "1.00", "1.00")
        for k in variants:
            v = report[k]
            if not v["runnable"]:
                t.add_row(k, f"not runnable on ORT CPU: {v['reason']}", *[""] * 7)
                continue
            t.add_row(k, _fmt(v["auc"]), _fmt(v["auc_fp32"]), _fmt(v["max_abs_drift"]), _fmt(v["mean_abs_drift"]),
                      _fmt(v["throughput"].get("batch_8"), ".0f"), _fmt(v["throughput"].get("batch_1"), ".0f"),
                      _fmt(v["speedup"].get("batch_8"), ".2f"), _fmt(v["speedup"].get("batch_1"), ".2f"))
        console.print(t)
    if "scores" in report:
        t = Table(title="score calibration (thresholds on the raw score: flag when score >= threshold)")
        for col in ("model", "method", "target", "threshold", "FPR", "TPR", "reals", "note"):
            t.add_column(col)
        for name, s in report["scores"].items():
            for key, th in s["thresholds"].items():
                t.add_row(name, s["method"], key, _fmt(th["threshold"], ".6g"), _fmt(th["fpr"]), _fmt(th["tpr"]),
                          str(th["n_real"]), "too few reals" if not th["reliable"] else "")
        console.print(t)
    print(f"report: {report['report']}  plot: {report['plot']}")


def run(args: argparse.Namespace) -> int:
    report = calibrate(args)
    print_report(report)
    return 0
