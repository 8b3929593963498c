"""`swapwatch eval --model CKPT_OR_ONNX (--data DATASET.yaml | --format F --root DIR) [--robustness]`."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    if args.holdout_of is not None:
        return _run_holdout(args)
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
