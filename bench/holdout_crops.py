"""Write the aligned face crops a training recipe held out for validation into OUT/real/ as PNG.

    python bench/holdout_crops.py configs/train/default_cpu.yaml runs/holdout-crops [--size 160]

The folder then feeds `swapwatch calibrate OUT --crops --pseudo-fakes ...` (INT8 calibration, score
thresholds) with faces the model never trained on. Crops are resized to the model input size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from swapwatch.config import load_config
from swapwatch.train.config import TrainConfig
from swapwatch.train.data.cache import read_crop
from swapwatch.train.dataset import split_by_video
from swapwatch.train.loop import cached_records, items_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=160, help="crop side in pixels (the model's input size)")
    args = ap.parse_args()
    cfg = load_config(TrainConfig, args.recipe)
    records = cached_records(items_for(cfg.data.sources), cfg.data.cache)
    _, held_out = split_by_video(records, cfg.data.val_fraction, cfg.seed)
    folder = args.out / "real"
    folder.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(r for r in held_out if r.label == 0):
        crop = cv2.resize(read_crop(rec), (args.size, args.size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{i:05d}.png"), crop)
    print(f"wrote {i + 1} held-out crops to {folder}")


if __name__ == "__main__":
    main()
