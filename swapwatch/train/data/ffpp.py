"""FaceForensics++ layout.

    root/original_sequences/youtube/<comp>/videos/000.mp4
    root/manipulated_sequences/<Method>/<comp>/videos/000_003.mp4   (target 000, face of 003)

Official splits (`splits_dir/{train,val,test}.json`) are lists of [a, b] id pairs: the pair puts the
originals a and b and the fakes a_b and b_a in that split. Without them, videos are split train/val by
hashing the pair group (ids linked by a fake), so an identity never straddles train and val.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

from swapwatch.errors import DatasetLayoutError
from swapwatch.media.files import is_video
from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.data.items import FAKE, REAL, SPLITS, MediaItem, train_or_val

log = logging.getLogger(__name__)

FORMAT = "ffpp"
ORIGINALS = "original_sequences"
MANIPULATED = "manipulated_sequences"
_PAIR = re.compile(r"^(\d+)_(\d+)$")


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_video(p) and not p.name.startswith("."))


def read_official_splits(splits_dir: Path) -> dict[str, str]:
    """Map each video id ('000') to its official split, from train.json/val.json/test.json."""
    id_split: dict[str, str] = {}
    for split in SPLITS:
        path = splits_dir / f"{split}.json"
        if not path.is_file():
            raise DatasetLayoutError(splits_dir, FORMAT, f"split file {path.name} is missing")
        try:
            pairs = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetLayoutError(splits_dir, FORMAT, f"{path.name} is not valid JSON: {err}") from None
        if not isinstance(pairs, list):
            raise DatasetLayoutError(splits_dir, FORMAT, f"{path.name} must be a list of [target, source] pairs")
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DatasetLayoutError(splits_dir, FORMAT, f"{path.name}: expected [target, source], got {pair!r}")
            for vid in pair:
                key = str(vid)
                previous = id_split.setdefault(key, split)
                if previous != split:
                    raise DatasetLayoutError(
                        splits_dir, FORMAT, f"video id {key} is in both {previous}.json and {split}.json"
                    )
    return id_split


class _Groups:
    """Union-find over video ids: ids joined by a fake share one train/val group."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _group_ids(stem: str) -> tuple[str, ...]:
    match = _PAIR.match(stem)
    return (match.group(1), match.group(2)) if match else (stem,)


def read_ffpp(cfg: DatasetConfig) -> list[MediaItem]:
    """Every original and manipulated video of the configured compression, with split and label."""
    root = cfg.root
    dataset = cfg.dataset_name()
    comp = cfg.compression
    originals_root = root / ORIGINALS
    if not originals_root.is_dir():
        raise DatasetLayoutError(root, FORMAT, f"folder {ORIGINALS}/ is missing")
    originals_dir = originals_root / "youtube" / comp / "videos"
    if not originals_dir.is_dir():
        raise DatasetLayoutError(root, FORMAT, f"folder {originals_dir.relative_to(root)}/ is missing")

    # (path, label, source, stem)
    found: list[tuple[Path, int, str, str]] = [(p, REAL, "youtube", p.stem) for p in _videos(originals_dir)]
    methods = cfg.ffpp_methods()
    present = []
    for method in methods:
        method_dir = root / MANIPULATED / method / comp / "videos"
        if not method_dir.is_dir():
            log.warning("%s: FF++ method %s has no folder %s; skipping it", root, method, method_dir.relative_to(root))
            continue
        present.append(method)
        found.extend((p, FAKE, method, p.stem) for p in _videos(method_dir))
    if methods and not present:
        raise DatasetLayoutError(
            root,
            FORMAT,
            f"none of the methods {methods} has a folder {MANIPULATED}/<method>/{comp}/videos/",
        )

    if cfg.splits_dir is not None:
        splits_of = _official_assigner(cfg.splits_dir)
    else:
        splits_of = _hashed_assigner(found, cfg)
    items: list[MediaItem] = []
    unassigned: list[str] = []
    for path, label, source, stem in found:
        split = splits_of(stem)
        if split is None:
            unassigned.append(f"{source}/{path.name}")
            continue
        items.append(
            MediaItem(
                path=path,
                label=label,
                video_id=f"{source}/{stem}",
                split=split,
                dataset=dataset,
                source=source,
                kind="video",
            )
        )
    if unassigned:
        log.warning(
            "%s: %d FF++ videos are in no official split and were left out (e.g. %s)",
            root,
            len(unassigned),
            ", ".join(unassigned[:3]),
        )
    return items


def _official_assigner(splits_dir: Path) -> Callable[[str], str | None]:
    id_split = read_official_splits(splits_dir)

    def split_of(stem: str) -> str | None:
        # A fake a_b lies in the split of its pair; the target id decides (both ids share the pair).
        return id_split.get(_group_ids(stem)[0])

    return split_of


def _hashed_assigner(found: list[tuple[Path, int, str, str]], cfg: DatasetConfig) -> Callable[[str], str | None]:
    if cfg.split == "test":
        raise DatasetLayoutError(
            cfg.root, FORMAT, "split 'test' needs the official splits: set splits_dir to the folder with test.json"
        )
    groups = _Groups()
    for _, _, _, stem in found:
        ids = _group_ids(stem)
        for other in ids[1:]:
            groups.union(ids[0], other)

    def split_of(stem: str) -> str | None:
        return train_or_val(f"ffpp:{groups.find(_group_ids(stem)[0])}", cfg.val_fraction)

    return split_of
