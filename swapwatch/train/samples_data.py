"""Media items for the package-shipped sample faces (see swapwatch.samples): the smoke recipes' data."""

from __future__ import annotations

from swapwatch.samples import sample_face_images
from swapwatch.train.data.items import MediaItem


def sample_items(split: str = "all") -> list[MediaItem]:
    return [
        MediaItem(
            path=path,
            label=0,
            video_id=f"samples/{name}",
            split="train" if split == "all" else split,
            dataset="samples",
            source="package",
            kind="image",
        )
        for name, path in sorted(sample_face_images().items())
    ]
