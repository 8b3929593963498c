"""Which dataset to read and how: `DatasetConfig`, and `read_dataset`, which dispatches on its format."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from swapwatch.config import StrictModel
from swapwatch.errors import DatasetLayoutError
from swapwatch.train.data import celebdf, dfdc, ffpp, folder, reals
from swapwatch.train.data.items import MediaItem, hash_unit

log = logging.getLogger(__name__)

FFPP_METHODS: tuple[str, ...] = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
"""The FaceForensics++ manipulation folders read when `methods` is not given."""


class DatasetConfig(StrictModel):
    """One dataset on disk: its layout, where it lies, and which part of it to read."""

    format: Literal["ffpp", "celebdf", "dfdc", "folder", "reals"] = Field(
        ...,
        description="On-disk layout: FaceForensics++, Celeb-DF v2, DFDC, plain real/ and fake/ folders, or a "
        "folder of real faces only grouped by source folder ('reals').",
    )
    root: Path = Field(..., description="Dataset root folder (the one holding the layout's top-level folders).")
    name: str | None = Field(
        None,
        min_length=1,
        description="Name recorded on every item and used as the cache folder; default: the format "
        "('ffpp', 'celebdf', 'dfdc') or, for 'folder', the root folder's name.",
    )
    compression: Literal["raw", "c23", "c40"] = Field(
        "c23", description="FaceForensics++ only: which compression level's videos to read."
    )
    methods: list[str] | None = Field(
        None,
        description="FaceForensics++ only: manipulation folders to read (default: Deepfakes, Face2Face, "
        "FaceSwap, NeuralTextures, FaceShifter). Absent ones are skipped with a warning; [] reads reals only.",
    )
    splits_dir: Path | None = Field(
        None,
        description="FaceForensics++ only: folder with the official train.json/val.json/test.json "
        "([target, source] id pairs). Without it, videos are split train/val by hashing.",
    )
    split: Literal["train", "val", "test", "all"] = Field(
        "all", description="Which split to return; 'all' returns every item with its split set."
    )
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of non-test groups (identities / source videos) put in 'val' for layouts "
        "without an official val split; chosen deterministically by hashing the group key.",
    )
    exclude_like: list[Path] = Field(
        default_factory=list,
        description="'reals' only: leave out files byte-identical to any file under these folders (e.g. the "
        "genuine-fake validation set, which holds copies of some reals).",
    )
    max_items: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many items (after split filtering): a deterministic subset "
        "chosen by hashing the video id, for quick runs.",
    )

    @model_validator(mode="after")
    def _ffpp_only_fields(self) -> DatasetConfig:
        if self.format != "ffpp":
            for key in ("methods", "splits_dir"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies only to format 'ffpp', not {self.format!r}")
        if self.exclude_like and self.format != "reals":
            raise ValueError(f"exclude_like applies only to format 'reals', not {self.format!r}")
        return self

    def dataset_name(self) -> str:
        """The name written on items: `name`, else the format, else (for 'folder') the root's name."""
        if self.name:
            return self.name
        if self.format in ("folder", "reals"):
            return self.root.name or self.format
        return self.format

    def ffpp_methods(self) -> list[str]:
        """The FaceForensics++ manipulation folders requested (the five defaults when unset)."""
        return list(FFPP_METHODS) if self.methods is None else list(self.methods)


Reader = Callable[[DatasetConfig], list[MediaItem]]

READERS: dict[str, Reader] = {
    "ffpp": ffpp.read_ffpp,
    "celebdf": celebdf.read_celebdf,
    "dfdc": dfdc.read_dfdc,
    "folder": folder.read_folder,
    "reals": reals.read_reals,
}
"""Format name -> reader. Each reader returns every item of the dataset with its split assigned."""


def read_dataset(cfg: DatasetConfig) -> list[MediaItem]:
    """Read a dataset's items, keep the requested split, apply `max_items`, and sort them by path.

    Raises DatasetLayoutError when the root is missing, its layout is wrong, or nothing is left.
    """
    root = cfg.root
    if not root.is_dir():
        raise DatasetLayoutError(root, cfg.format, "the root folder does not exist")
    items = READERS[cfg.format](cfg)
    if cfg.split != "all":
        items = [item for item in items if item.split == cfg.split]
        if not items:
            raise DatasetLayoutError(root, cfg.format, f"no items in split {cfg.split!r}")
    if not items:
        raise DatasetLayoutError(root, cfg.format, "no media files found")
    if cfg.max_items is not None and len(items) > cfg.max_items:
        items = sorted(items, key=lambda it: (hash_unit(f"{it.dataset}/{it.video_id}"), str(it.path)))
        items = items[: cfg.max_items]
    counts = {label: sum(1 for it in items if it.label == label) for label in (0, 1)}
    log.info("%s (%s): %d items, %d real, %d fake", root, cfg.format, len(items), counts[0], counts[1])
    return sorted(items, key=lambda it: str(it.path))
