"""Write what a training recipe held out for validation into OUT/real/: aligned crops, or the media files.

    python bench/holdout_crops.py configs/train/default_cpu.yaml runs/holdout-crops [--size 160]
    python bench/holdout_crops.py configs/train/detect_cpu.yaml runs/holdout-media --media

The folder then feeds `swapwatch calibrate` (INT8 calibration, score thresholds) with faces the model
never trained on:
- crops (default): the held-out cached crops as PNG, shrunk to `--size` by the shared resampling chain
  (`to_input`); use `swapwatch calibrate OUT --crops --pseudo-fakes ...`;
- `--media`: symbolic links to the held-out images and videos themselves, so that `swapwatch calibrate
  OUT --pseudo-fakes --frames 16 ...` finds and aligns the faces exactly as the monitor does (how the
  default model's thresholds were fitted, see its model card).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from swapwatch.config import load_config
from swapwatch.stream.faces.chain import to_input
from swapwatch.train.config import TrainConfig
from swapwatch.train.data.cache import read_crop
from swapwatch.train.dataset import split_by_video
from swapwatch.train.loop import cached_records, items_for


def write_crops(cfg: TrainConfig, folder: Path, size: int) -> int:
    records = cached_records(items_for(cfg.data.sources), cfg.data.cache)
    _, held_out = split_by_video(records, cfg.data.val_fraction, cfg.seed)
    n = 0
    for n, rec in enumerate((r for r in held_out if r.label == 0), start=1):
        cv2.imwrite(str(folder / f"{n - 1:05d}.png"), to_input(read_crop(rec), size))
    return n


def link_media(cfg: TrainConfig, folder: Path) -> int:
    items = [i for i in items_for(cfg.data.sources) if i.split != "train" and i.label == 0]
    for k, item in enumerate(items):
        link = folder / f"{k:05d}_{item.path.name}"
        if not link.is_symlink():
            link.symlink_to(item.path.resolve())
    return len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=160, help="crop side in pixels (the model's input size)")
    ap.add_argument("--media", action="store_true", help="link the held-out media files instead of writing crops")
    args = ap.parse_args()
    cfg = load_config(TrainConfig, args.recipe)
    folder = args.out / "real"
    folder.mkdir(parents=True, exist_ok=True)
    if args.media:
        print(f"linked {link_media(cfg, folder)} held-out media files into {folder}")
    else:
        print(f"wrote {write_crops(cfg, folder, args.size)} held-out crops to {folder}")


if __name__ == "__main__":
    main()
