"""Plain-folder layout: images and/or videos sorted into real/ and fake/.

    root/real/**  root/fake/**                       (any nesting) -> train/val by hashing
    root/{train,val,test}/{real,fake}/**             -> the split is the folder

Files are recognised by extension (images: jpg jpeg png bmp webp; videos: mp4 mov avi mkv webm, any
case); hidden files and folders are ignored. An item's `source` is its first sub-folder under real/ or
fake/ (e.g. fake/Deepfakes/x.mp4 -> "Deepfakes"), else "real"/"fake". For the hashed train/val split,
images in a sub-folder are kept together (a folder of one video's frames never straddles train and val);
videos, and images lying directly in real/ or fake/, are assigned one by one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from swapwatch.errors import DatasetLayoutError
from swapwatch.media.files import is_video, media_files
from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.data.items import FAKE, REAL, SPLITS, MediaItem, MediaKind, relative_id, train_or_val

log = logging.getLogger(__name__)

FORMAT = "folder"
CLASSES: dict[str, int] = {"real": REAL, "fake": FAKE}




def _class_items(root: Path, class_dir: Path, label: int, split: str | None, cfg: DatasetConfig) -> list[MediaItem]:
    items: list[MediaItem] = []
    for path in media_files(class_dir):
        rel = path.relative_to(class_dir)
        source = rel.parts[0] if len(rel.parts) > 1 else class_dir.name
        kind: MediaKind = "video" if is_video(path) else "image"
        video_id = relative_id(root, path)
        if split is not None:
            item_split = split
        else:
            nested_image = kind == "image" and path.parent != class_dir
            group = path.parent.relative_to(root).as_posix() + "/" if nested_image else video_id
            item_split = train_or_val(f"folder:{group}", cfg.val_fraction)
        items.append(
            MediaItem(
                path=path,
                label=label,
                video_id=video_id,
                split=item_split,
                dataset=cfg.dataset_name(),
                source=source,
                kind=kind,
            )
        )
    return items


def read_folder(cfg: DatasetConfig) -> list[MediaItem]:
    """Every image and video under real/ and fake/ (or train|val|test/real|fake)."""
    root = cfg.root
    split_dirs = [s for s in SPLITS if any((root / s / c).is_dir() for c in CLASSES)]
    flat_dirs = [c for c in CLASSES if (root / c).is_dir()]
    if split_dirs and flat_dirs:
        raise DatasetLayoutError(
            root,
            FORMAT,
            f"both {', '.join(c + '/' for c in flat_dirs)} and {', '.join(s + '/' for s in split_dirs)} exist: "
            "use either real/ + fake/ or {train,val,test}/{real,fake}/",
        )
    if not split_dirs and not flat_dirs:
        raise DatasetLayoutError(root, FORMAT, "neither real/ nor fake/ exists (nor train|val|test/real|fake/)")

    items: list[MediaItem] = []
    if split_dirs:
        for split in split_dirs:
            for name, label in CLASSES.items():
                class_dir = root / split / name
                if class_dir.is_dir():
                    items.extend(_class_items(root, class_dir, label, split, cfg))
                else:
                    log.warning("%s: %s/%s/ is missing", root, split, name)
    else:
        for name, label in CLASSES.items():
            class_dir = root / name
            if class_dir.is_dir():
                items.extend(_class_items(root, class_dir, label, None, cfg))
            else:
                log.warning(
                    "%s: %s/ is missing: every item will be %s", root, name, "fake" if label == REAL else "real"
                )
    return items
