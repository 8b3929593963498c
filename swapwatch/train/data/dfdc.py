"""DFDC (Deepfake Detection Challenge) layout.

Training parts: folders such as `root/dfdc_train_part_0/` (or the root itself), each with a
`metadata.json` mapping file name -> {"label": "FAKE"|"REAL", "split": "train", "original": "xyz.mp4"}.
Test set: a folder with `labels.csv` (columns filename,label; 1 fake, 0 real) beside its videos.

Entries marked "train" are split train/val by hashing the original video's name, so a fake always lands
with its source; labels.csv entries are "test". Entries whose file is missing are skipped with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from swapwatch.errors import DatasetLayoutError
from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.data.items import FAKE, REAL, SPLITS, MediaItem, relative_id, train_or_val

log = logging.getLogger(__name__)

FORMAT = "dfdc"
METADATA = "metadata.json"
LABELS_CSV = "labels.csv"
_LABELS = {"FAKE": FAKE, "REAL": REAL}


def _candidate_folders(root: Path, marker: str) -> list[Path]:
    """The root and its direct sub-folders that hold `marker`, sorted."""
    folders = [root] if (root / marker).is_file() else []
    folders += sorted(p for p in root.iterdir() if p.is_dir() and (p / marker).is_file())
    return folders


def _source_name(root: Path, folder: Path) -> str:
    return folder.name if folder != root else (root.name or FORMAT)


def _read_metadata(root: Path, folder: Path, cfg: DatasetConfig, missing: list[str]) -> list[MediaItem]:
    meta_path = folder / METADATA
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetLayoutError(root, FORMAT, f"{meta_path} is not readable JSON: {err}") from None
    if not isinstance(meta, dict):
        raise DatasetLayoutError(root, FORMAT, f"{meta_path} must map file names to entries")
    items: list[MediaItem] = []
    for name, entry in sorted(meta.items()):
        label_text = str(entry.get("label", "")).upper() if isinstance(entry, dict) else ""
        if label_text not in _LABELS:
            raise DatasetLayoutError(
                root, FORMAT, f"{meta_path}: entry {name!r} needs label 'FAKE' or 'REAL', got {entry!r}"
            )
        split = str(entry.get("split", "train")).lower()
        if split not in SPLITS:
            raise DatasetLayoutError(root, FORMAT, f"{meta_path}: entry {name!r} has unknown split {split!r}")
        path = folder / name
        if not path.is_file():
            missing.append(str(path.relative_to(root)))
            log.warning("%s: %s lists %s, which is missing; skipping it", root, meta_path.relative_to(root), name)
            continue
        label = _LABELS[label_text]
        if split == "train":
            original = entry.get("original") if label == FAKE else None
            split = train_or_val(f"dfdc:{original or name}", cfg.val_fraction)
        items.append(
            MediaItem(
                path=path,
                label=label,
                video_id=relative_id(root, path),
                split=split,
                dataset=cfg.dataset_name(),
                source=_source_name(root, folder),
                kind="video",
            )
        )
    return items


def _read_labels_csv(root: Path, folder: Path, cfg: DatasetConfig, missing: list[str]) -> list[MediaItem]:
    csv_path = folder / LABELS_CSV
    items: list[MediaItem] = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in reader.fieldnames or []}
        if not {"filename", "label"} <= columns:
            raise DatasetLayoutError(root, FORMAT, f"{csv_path} needs columns filename,label; it has {sorted(columns)}")
        for number, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            name = row["filename"]
            try:
                label = int(float(row["label"]))
            except ValueError:
                label = -1
            if label not in (REAL, FAKE):
                raise DatasetLayoutError(
                    root, FORMAT, f"{csv_path} line {number}: label must be 1 (fake) or 0 (real), got {row['label']!r}"
                )
            path = folder / name
            if not path.is_file():
                missing.append(str(path.relative_to(root)))
                log.warning("%s: %s lists %s, which is missing; skipping it", root, csv_path.relative_to(root), name)
                continue
            items.append(
                MediaItem(
                    path=path,
                    label=label,
                    video_id=relative_id(root, path),
                    split="test",
                    dataset=cfg.dataset_name(),
                    source=_source_name(root, folder),
                    kind="video",
                )
            )
    return items


def read_dfdc(cfg: DatasetConfig) -> list[MediaItem]:
    """Every video listed in the root's (or its parts') metadata.json and labels.csv files."""
    root = cfg.root
    meta_folders = _candidate_folders(root, METADATA)
    csv_folders = _candidate_folders(root, LABELS_CSV)
    if not meta_folders and not csv_folders:
        raise DatasetLayoutError(
            root, FORMAT, f"no {METADATA} or {LABELS_CSV} in the root or its sub-folders (e.g. dfdc_train_part_0/)"
        )
    missing: list[str] = []
    items: list[MediaItem] = []
    for folder in meta_folders:
        items.extend(_read_metadata(root, folder, cfg, missing))
    for folder in csv_folders:
        if folder in meta_folders:
            log.info("%s: %s has both %s and %s; using %s", root, folder, METADATA, LABELS_CSV, METADATA)
            continue
        items.extend(_read_labels_csv(root, folder, cfg, missing))
    if missing:
        log.warning("%s: %d listed DFDC videos are missing and were skipped", root, len(missing))
    return items
