"""The registry of dataset readers, one per `DatasetConfig.format`, and `read_dataset`, which dispatches on it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from swapwatch.errors import DatasetLayoutError
from swapwatch.train.data import celebdf, dfdc, ffpp, folder, reals
from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.data.items import MediaItem, hash_unit

log = logging.getLogger(__name__)

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
