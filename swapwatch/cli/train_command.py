"""`swapwatch train --config configs/train/<recipe>.yaml`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="training recipe (YAML, see configs/train/)")
    p.add_argument("--steps", type=int, help="override optim.steps")
    p.add_argument("--output-dir", type=Path, help="override output_dir (runs are written to OUTPUT_DIR/NAME)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device")
    p.add_argument(
        "--no-resume", action="store_true",
        help="start from scratch even if OUTPUT_DIR/NAME/checkpoints/last.pt exists (default: resume from it)",
    )
    p.add_argument("--print-config", action="store_true", help="print the effective config and exit")


def run(args: argparse.Namespace) -> int:
    import json

    from swapwatch.config import load_yaml, parse_config
    from swapwatch.train.config import TrainConfig

    data = load_yaml(args.config)
    if args.steps is not None:
        data.setdefault("optim", {})["steps"] = args.steps
    if args.output_dir is not None:
        data["output_dir"] = str(args.output_dir)
    if args.device is not None:
        data["device"] = args.device
    cfg = parse_config(TrainConfig, data, source=str(args.config))
    if args.print_config:
        print(json.dumps(json.loads(cfg.model_dump_json()), indent=2))
        return 0

    from swapwatch.train.loop import train

    result = train(cfg, resume=not args.no_resume)
    print(f"run: {result.run_dir}")
    print(f"steps: {result.steps}  best val AUC: {result.best_auc}")
    print(f"checkpoints: {result.last_checkpoint}" + (f", {result.best_checkpoint}" if result.best_checkpoint else ""))
    print(f"reports: {result.run_dir / 'metrics.json'}, {result.run_dir / 'loss.png'}, {result.run_dir / 'roc.png'}")
    return 0
