"""Which dataset to read and how: `DatasetConfig` (readers.py reads the dataset it describes)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from swapwatch.config import StrictModel

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
