"""Training data: dataset readers (FF++, Celeb-DF, DFDC, plain folders) and the face-crop cache.

    items = read_dataset(DatasetConfig(format="ffpp", root=Path("/data/ffpp"), split="train"))
    report = build_face_cache(items, FaceCacheConfig(root=Path("/cache/ffpp")))
    records = load_face_cache(Path("/cache/ffpp"))

The cache names are imported lazily, so reading datasets does not load the face detector's stack.
Reading and sampling images and videos lives in `swapwatch.media` (shared with the monitor).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.data.items import MediaItem
from swapwatch.train.data.readers import read_dataset

if TYPE_CHECKING:
    from swapwatch.train.data.cache import (
        CacheReport,
        CropRecord,
        FaceCacheConfig,
        build_face_cache,
        load_face_cache,
        read_crop,
    )

_CACHE_NAMES = {"CacheReport", "CropRecord", "FaceCacheConfig", "build_face_cache", "load_face_cache", "read_crop"}

__all__ = [
    "CacheReport",
    "CropRecord",
    "DatasetConfig",
    "FaceCacheConfig",
    "MediaItem",
    "build_face_cache",
    "load_face_cache",
    "read_crop",
    "read_dataset",
]


def __getattr__(name: str) -> Any:
    if name in _CACHE_NAMES:
        from swapwatch.train.data import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
