"""Which files count as images or videos (by suffix, any case), and finding them under a folder."""

from __future__ import annotations

import os
from pathlib import Path

from swapwatch.errors import MediaError

VIDEO_EXTS: frozenset[str] = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})
"""Lower-case suffixes read as videos."""

IMAGE_EXTS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
"""Lower-case suffixes read as still images."""


def is_video(path: str | Path) -> bool:
    """True when the file's suffix (any case) is a video extension."""
    return Path(path).suffix.lower() in VIDEO_EXTS


def is_image(path: str | Path) -> bool:
    """True when the file's suffix (any case) is an image extension."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def is_media(path: str | Path) -> bool:
    """True for a video or an image, judged by suffix."""
    return is_video(path) or is_image(path)


def media_files(folder: str | Path) -> list[Path]:
    """Every image or video under `folder`, at any depth, skipping hidden entries; sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if not name.startswith(".") and is_media(path):
                found.append(path)
    return sorted(found)


def require_file(path: Path) -> None:
    """Raise MediaError unless `path` is a non-empty regular file: "file not found", "not a file" or
    "the file is empty", the wording every reader here uses."""
    if not path.exists():
        raise MediaError(path, "file not found")
    if not path.is_file():
        raise MediaError(path, "not a file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise MediaError(path, f"could not read the file: {err.strerror or err}") from None
    if size == 0:
        raise MediaError(path, "the file is empty")
