"""The record every dataset reader returns, and the helpers readers share to name and split items."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")

REAL = 0
FAKE = 1

MediaKind = Literal["video", "image"]


@dataclass(frozen=True)
class MediaItem:
    """One video or image of a dataset, with its label and where it belongs.

    label: 0 real, 1 fake. video_id: groups the frames of one video for video-level metrics (unique within
    its dataset; for images, the image's own key). source: the sub-collection it came from, e.g.
    "youtube", "Deepfakes", "Celeb-synthesis".
    """

    path: Path
    label: int
    video_id: str
    split: str
    dataset: str
    source: str
    kind: MediaKind

    def __post_init__(self) -> None:
        if self.label not in (REAL, FAKE):
            raise ValueError(f"{self.path}: label must be 0 (real) or 1 (fake), got {self.label!r}")
        if self.split not in SPLITS:
            raise ValueError(f"{self.path}: split must be one of {SPLITS}, got {self.split!r}")
        if self.kind not in ("video", "image"):
            raise ValueError(f"{self.path}: kind must be 'video' or 'image', got {self.kind!r}")


def hash_unit(key: str) -> float:
    """A deterministic number in [0, 1) for a key: stable across runs, machines and Python versions."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def train_or_val(group_key: str, val_fraction: float) -> str:
    """'val' for about `val_fraction` of group keys, chosen by hashing the key; 'train' for the rest.

    Give every item of one identity or source video the same key so no group straddles train and val.
    """
    return "val" if hash_unit(group_key) < val_fraction else "train"


def relative_id(root: Path, path: Path) -> str:
    """The file's path under `root`, POSIX-style, without its suffix: a stable, unique item key."""
    rel = PurePosixPath(path.relative_to(root).as_posix())
    return str(rel.with_suffix(""))
