"""Celeb-DF (v2) layout.

    root/Celeb-real/id0_0000.mp4           real
    root/Celeb-synthesis/id0_id16_0000.mp4 fake (id0's video with id16's face)
    root/YouTube-real/00170.mp4            real
    root/List_of_testing_videos.txt        lines "1 YouTube-real/00170.mp4"

In the test list 1 means REAL and 0 means FAKE: the inverse of our labels (0 real, 1 fake). Listed
videos form the test split; the rest are split train/val by hashing the target identity (id0), so one
person's videos never straddle train and val.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from swapwatch.errors import DatasetLayoutError
from swapwatch.media.files import is_video
from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.data.items import FAKE, REAL, MediaItem, relative_id, train_or_val

log = logging.getLogger(__name__)

FORMAT = "celebdf"
FOLDERS: dict[str, int] = {"Celeb-real": REAL, "Celeb-synthesis": FAKE, "YouTube-real": REAL}
TEST_LIST = "List_of_testing_videos.txt"
_LIST_LABELS = {"1": REAL, "0": FAKE}  # the list's own convention: 1 = real, 0 = fake
_IDENTITY = re.compile(r"^(id\d+)_")


def read_test_list(root: Path) -> dict[str, int]:
    """Map 'Folder/name.mp4' to our label (0 real, 1 fake) for every video in the official test list."""
    path = root / TEST_LIST
    listed: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in _LIST_LABELS:
            raise DatasetLayoutError(
                root, FORMAT, f"{TEST_LIST} line {number}: expected '<1 real|0 fake> <folder/file>', got {line!r}"
            )
        listed[parts[1].replace("\\", "/").removeprefix("./")] = _LIST_LABELS[parts[0]]
    return listed


def _group_key(folder: str, stem: str) -> str:
    match = _IDENTITY.match(stem)
    return f"celebdf:{match.group(1)}" if match else f"celebdf:{folder}/{stem}"


def read_celebdf(cfg: DatasetConfig) -> list[MediaItem]:
    """Every video of the three Celeb-DF folders; those in the test list are 'test'."""
    root = cfg.root
    dataset = cfg.dataset_name()
    present = [name for name in FOLDERS if (root / name).is_dir()]
    if not present:
        raise DatasetLayoutError(root, FORMAT, f"none of the folders {', '.join(FOLDERS)} exists")
    for name in FOLDERS:
        if name not in present:
            log.warning("%s: Celeb-DF folder %s/ is missing; reading the others", root, name)
    if (root / TEST_LIST).is_file():
        listed = read_test_list(root)
    else:
        log.warning("%s: %s is missing: no video is put in the test split", root, TEST_LIST)
        listed = {}

    items: list[MediaItem] = []
    for name in present:
        label = FOLDERS[name]
        for path in sorted((root / name).iterdir()):
            if not (path.is_file() and is_video(path)) or path.name.startswith("."):
                continue
            key = f"{name}/{path.name}"
            if key in listed:
                if listed.pop(key) != label:
                    said = "real (1)" if label == FAKE else "fake (0)"
                    raise DatasetLayoutError(root, FORMAT, f"{TEST_LIST} says {key} is {said}, but it lies in {name}/")
                split = "test"
            else:
                split = train_or_val(_group_key(name, path.stem), cfg.val_fraction)
            items.append(
                MediaItem(
                    path=path,
                    label=label,
                    video_id=relative_id(root, path),
                    split=split,
                    dataset=dataset,
                    source=name,
                    kind="video",
                )
            )
    if listed:
        missing = sorted(listed)
        log.warning(
            "%s: %d videos of %s are not on disk and were skipped: %s",
            root,
            len(missing),
            TEST_LIST,
            ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        )
    return items
