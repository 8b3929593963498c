"""`swapwatch eval --model CKPT_OR_ONNX (--data DATASET.yaml | --format F --root DIR | --genuine DIR) [--robustness]`.

`--genuine DIR` scores each file of a folder of genuine fakes and reals the way `swapwatch scan` does
and reports AUC, pair wins and AUC per method (swapwatch/train/genuine.py; README, "Evaluation on
genuine fakes").
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from swapwatch.stream.scan.cadence import SCAN_DETECT_EVERY

if TYPE_CHECKING:
    from rich.console import JustifyMethod


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="checkpoint (.pt) or exported model (.onnx)")
    src = p.add_argument_group("dataset (either a YAML file or --format/--root)")
    src.add_argument("--data", type=Path, help="dataset YAML (the fields of a recipe's data.sources entry)")
    src.add_argument("--format", choices=["ffpp", "celebdf", "dfdc", "folder", "samples"], help="dataset layout")
    src.add_argument("--root", type=Path, help="dataset root folder")
    src.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="split (default test)")
    src.add_argument(
        "--holdout-of", type=Path, metavar="RECIPE",
        help="evaluate on the videos a training recipe held out for validation (same cache, same split)",
    )
    gen = p.add_argument_group(
        "genuine fakes (--genuine DIR): every file scored as `swapwatch scan` scores it; AUC, pairs, AUC per method"
    )
    gen.add_argument(
        "--genuine", type=Path, metavar="DIR",
        help="folder with labels.tsv (filename label pair_group method), or with files named PREFIX_real.* / "
        "PREFIX_fake.* (a prefix with both is a pair)",
    )
    gen.add_argument(
        "--genuine-method", metavar="NAME",
        help="method of the fakes in a folder without labels.tsv (default: DeepFaceLab for dfl_* files, else unknown)",
    )
    gen.add_argument(
        "--detect-every", type=int, metavar="N",
        help=f"scan: detect faces on every Nth frame, interpolate between (default {SCAN_DETECT_EVERY}, as scan)",
    )
    gen.add_argument("--every", type=int, default=1, metavar="N", help="scan: score every Nth video frame (default 1)")
    gen.add_argument("--max-frames", type=int, metavar="N", help="scan: at most N scored frames per video")
    gen.add_argument("--threads", type=int, default=1,
                     help="scan: ONNX Runtime intra-op threads per session (default 1)")
    p.add_argument("--cache", type=Path, default=Path(".cache/faces"), help="aligned-crop cache folder")
    p.add_argument("--frames", type=int, default=16, help="frames sampled per video (default 16)")
    p.add_argument("--max-items", type=int, help="evaluate at most this many media files")
    p.add_argument("--pseudo-fakes", action="store_true", help="also score a deterministic pseudo-fake of each real crop")
    p.add_argument("--robustness", action="store_true", help="AUC per JPEG/blur/downscale/noise level")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="folder for report.json and PNG plots")
    p.add_argument("--seed", type=int, default=0, help="seed for pseudo-fakes")


def run(args: argparse.Namespace) -> int:
    import json

    from swapwatch.config import load_yaml, parse_config
    from swapwatch.errors import ConfigError, ModelFileError
    from swapwatch.train.config import CacheSettings, SamplesSource
    from swapwatch.train.data.config import DatasetConfig
    from swapwatch.train.evaluate import load_scorer

    if not args.model.is_file():
        raise ModelFileError(args.model, "no such model (expected a .pt checkpoint or an exported .onnx)")
    if args.genuine is not None:
        if args.holdout_of is not None or args.data is not None or args.format or args.root:
            raise ConfigError(
                "--genuine DIR is a dataset of its own: leave out --data, --format, --root and --holdout-of"
            )
        return _run_genuine(args)
    if args.holdout_of is not None:
        return _run_holdout(args)
    source: SamplesSource | DatasetConfig
    if args.format == "samples":
        source = SamplesSource(split="all")
    elif args.data is not None:
        source = parse_config(DatasetConfig, load_yaml(args.data), source=str(args.data))
    elif args.format and args.root:
        source = parse_config(
            DatasetConfig,
            {"format": args.format, "root": str(args.root), "split": args.split},
            source="command line",
        )
    else:
        raise ConfigError("give --data DATASET.yaml, or --format and --root")
    if args.max_items is not None and not isinstance(source, SamplesSource):
        source = source.model_copy(update={"max_items": args.max_items})

    scorer = load_scorer(args.model)
    from swapwatch.train.loop import cached_records, items_for

    cache = CacheSettings(
        root=args.cache,
        frames_per_video=args.frames,
        margin=scorer.margin,
        max_faces_per_frame=6 if isinstance(source, SamplesSource) else 1,
    )
    records = cached_records(items_for([source]), cache)
    return _report(args, scorer, records, json.loads(source.model_dump_json()), str(getattr(source, "root", "samples")))


def _run_holdout(args: argparse.Namespace) -> int:
    from swapwatch.config import load_config
    from swapwatch.train.config import TrainConfig
    from swapwatch.train.dataset import split_by_video
    from swapwatch.train.evaluate import load_scorer
    from swapwatch.train.loop import cached_records, items_for

    cfg = load_config(TrainConfig, args.holdout_of)
    scorer = load_scorer(args.model)
    if cfg.data.val_sources:
        records = cached_records(items_for(cfg.data.val_sources), cfg.data.cache)
    else:
        _, records = split_by_video(
            cached_records(items_for(cfg.data.sources), cfg.data.cache), cfg.data.val_fraction, cfg.seed
        )
    return _report(args, scorer, records, {"holdout_of": str(args.holdout_of)}, f"held-out videos of {cfg.name}")


def _report(args: argparse.Namespace, scorer, records, dataset: dict, title: str) -> int:  # noqa: ANN001
    import json

    from rich.console import Console
    from rich.table import Table

    from swapwatch.train.evaluate import evaluate
    from swapwatch.train.plots import plot_robustness, plot_roc

    report = evaluate(scorer, records, pseudo_fakes=args.pseudo_fakes, robustness=args.robustness, seed=args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    body = {
        "model": str(args.model),
        "scorer": scorer.name,
        "dataset": dataset,
        "metrics": report.metrics,
        "per_source": report.per_source,
        "robustness": report.robustness,
    }
    (args.out / "report.json").write_text(json.dumps(body, indent=2))
    plot_roc({"frames": (report.labels, report.scores)}, args.out / "roc.png", title=f"ROC: {args.model.name}")
    if report.robustness:
        plot_robustness(report.robustness, args.out / "robustness.png")

    console = Console()
    t = Table(title=f"{args.model.name} on {title}")
    for col in ("frame AUC", "video AUC", "EER", "AP", "acc@0.5", "n", "fakes"):
        t.add_column(col)
    m = report.metrics

    def f(v):  # noqa: ANN001, ANN202
        return "n/a" if v is None else f"{v:.4f}"

    t.add_row(f(m["auc"]), f(m["video_auc"]), f(m["eer"]), f(m["ap"]), f(m["accuracy"]), str(m["n"]), str(m["n_fake"]))
    console.print(t)
    if report.robustness:
        rt = Table(title="robustness (AUC per level)")
        rt.add_column("kind")
        levels = max(len(v) for v in report.robustness.values())
        for i in range(levels):
            rt.add_column(f"level {i + 1}")
        for kind, row in report.robustness.items():
            rt.add_row(kind, *[f"{lv}: {f(a)}" for lv, a in row.items()])
        console.print(rt)
    print(f"report: {args.out / 'report.json'}")
    return 0


def _run_genuine(args: argparse.Namespace) -> int:
    import json
    import time

    from swapwatch.stream.scan.progress import ScanProgress
    from swapwatch.strict_json import json_safe
    from swapwatch.train import genuine
    from swapwatch.train.plots import plot_method_auc, plot_roc

    started = time.perf_counter()
    items, label_source = genuine.load_genuine(args.genuine, args.genuine_method)
    options = {"every": args.every, "max_frames": args.max_frames, "detect_every": args.detect_every,
               "threads": args.threads}
    scanner = genuine.open_scanner(args.model, **options)
    thresholds = dict(scanner.engine.meta.score_calibration.thresholds)
    results: list[dict] = []
    with ScanProgress(len(items)) as progress:
        rows = genuine.score_items(items, scanner, progress, results)
    report = genuine.summarize(rows, thresholds)
    wall = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    body = {
        "model": str(args.model),
        "engine": scanner.engine.name,
        "model_sha256": scanner.engine.meta.model_sha256,
        "thresholds": thresholds,
        "dataset": {"genuine": str(args.genuine), "labels": label_source, "n_items": len(items)},
        "scan": {**scanner.settings.model_dump(), "batch": scanner.batch},
        **report.to_dict(),
        "wall_s": round(wall, 2),
    }
    (args.out / "report.json").write_text(json.dumps(json_safe(body), indent=2) + "\n")
    with open(args.out / "scan.jsonl", "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    plot_roc({"all files": genuine.curve_data(rows)}, args.out / "roc.png",
             title=f"ROC: {args.model.name} on {args.genuine.name}")
    plot_method_auc([(m.method, m.auc, m.n_scored_fake) for m in report.methods], args.out / "method_auc.png",
                    title=f"{args.model.name}: each method's fakes vs all {report.overall.n_scored_real} reals")
    _print_genuine(args, report, wall)
    return 0


def _print_genuine(args: argparse.Namespace, report, wall: float) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    def f(v):  # noqa: ANN001, ANN202
        return "n/a" if v is None else f"{v:.3f}"

    console = Console()
    o, p = report.overall, report.pairs
    t = Table(title=f"{args.model.name} on {args.genuine} (genuine fakes)")
    for col in ("AUC", "pairs won", "fakes", "reals", "unscored", "time"):
        t.add_column(col, justify="right")
    pairs = "n/a" if p.won is None else f"{p.wins:g}/{p.n} ({100 * p.won:.0f} %)"
    t.add_row(f(o.auc), pairs, f"{o.n_scored_fake}/{o.n_fake}", f"{o.n_scored_real}/{o.n_real}", str(o.n_unscored),
              f"{wall:.0f} s")
    console.print(t)

    mt = Table(title="AUC per method (its fakes against all reals)")
    method_columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("method", "left"), ("AUC", "right"), ("fakes", "right"), ("mean score", "right"),
    )
    for col, just in method_columns:
        mt.add_column(col, justify=just)
    for m in report.methods:
        mt.add_row(m.method, f(m.auc), f"{m.n_scored_fake}/{m.n_fake}", f(m.mean_score))
    console.print(mt)

    if report.at_thresholds:
        tt = Table(title="at the sidecar's thresholds (raw score >= threshold)")
        for col in ("threshold", "value", "TPR (fakes)", "FPR (reals)"):
            tt.add_column(col, justify="right")
        for name, row in report.at_thresholds.items():
            tt.add_row(name, f"{row['threshold']:.4f}", f(row["tpr"]), f(row["fpr"]))
        console.print(tt)

    if p.comparisons:
        pt = Table(title="pairs: fake vs its same-scene real")
        pair_columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("group", "left"), ("fake", "left"), ("real", "left"), ("fake score", "right"), ("real score", "right"),
            ("", "left"),
        )
        for col, just in pair_columns:
            pt.add_column(col, justify=just, overflow="fold")
        for c in p.comparisons:
            verdict = "unscored" if c.win is None else {1.0: "won", 0.5: "tie", 0.0: "LOST"}[c.win]
            pt.add_row(c.group, c.fake, c.real, f(c.fake_score), f(c.real_score), verdict)
        console.print(pt)

    it = Table(title="files by score")
    item_columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("score", "right"), ("label", "left"), ("method", "left"), ("file", "left"), ("driven by", "left"),
    )
    for col, just in item_columns:
        it.add_column(col, justify=just, overflow="fold")
    for r in report.items:
        it.add_row(f(r.score), "fake" if r.item.label else "real", r.item.method, r.item.name,
                   r.to_dict().get("driver", "") if r.scored else f"unscored: {r.reason}")
    console.print(it)
    print(f"report: {args.out / 'report.json'}")
