"""A folder of real faces only, grouped by source: `root/<anything>/<source>/file` (e.g. real_more/).

Every image and video under the root is real (label 0). Its `source` is the collection it came from,
the second folder level when there is one (`photos/utkface/males_asian/x.jpg` -> "utkface";
`videos/dagan/driving.mp4` -> "dagan"; `videos/liveportrait_d1.mp4` -> "liveportrait"), so training can balance batches by source and no single
collection sets what "real" looks like. The train/val split keeps one person on one side: by the
`identity_or_group` column of a `manifest.tsv` at the root when it lists the file, else by folder.

`exclude_like`: folders whose files must never be trained on (e.g. a validation set of genuine fakes
that holds byte-identical copies of some of these reals): any file here whose SHA-256 matches a file
there is left out and counted in the log.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from swapwatch.media.files import is_video, media_files
from swapwatch.train.data.config import DatasetConfig
from swapwatch.train.data.items import REAL, MediaItem, relative_id, train_or_val

log = logging.getLogger(__name__)

FORMAT = "reals"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def excluded_hashes(folders: list[Path]) -> set[str]:
    """SHA-256 of every media file under `folders` (missing folders are skipped with a warning)."""
    hashes: set[str] = set()
    for folder in folders:
        if not folder.is_dir():
            log.warning("exclude_like: %s is not a folder; nothing excluded from it", folder)
            continue
        hashes.update(file_sha256(p) for p in media_files(folder))
    return hashes


def manifest_groups(root: Path) -> dict[str, str]:
    """relative_path -> identity_or_group from root/manifest.tsv ({} when there is none)."""
    path = root / "manifest.tsv"
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    header = lines[0].split("\t")
    if "relative_path" not in header or "identity_or_group" not in header:
        return {}
    rel_col, group_col = header.index("relative_path"), header.index("identity_or_group")
    groups: dict[str, str] = {}
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) > max(rel_col, group_col):
            groups[cols[rel_col]] = cols[group_col]
    return groups


def _flat_source(rel: Path, root: Path) -> str:
    """Source of a file one level down (`videos/liveportrait_d1.mp4`): its name up to the first '_'."""
    if len(rel.parts) < 2:
        return root.name
    return rel.stem.split("_", 1)[0] or rel.parts[0]


def read_reals(cfg: DatasetConfig) -> list[MediaItem]:
    root = cfg.root
    banned = excluded_hashes(list(cfg.exclude_like))
    identities = manifest_groups(root)
    items: list[MediaItem] = []
    dropped = 0
    for path in media_files(root):
        if banned and file_sha256(path) in banned:
            dropped += 1
            continue
        rel = path.relative_to(root)
        source = rel.parts[1] if len(rel.parts) >= 3 else _flat_source(rel, root)
        folder = path.parent.relative_to(root).as_posix()
        group = f"{folder}/{identities[rel.as_posix()]}" if rel.as_posix() in identities else folder
        items.append(
            MediaItem(
                path=path,
                label=REAL,
                video_id=relative_id(root, path),
                split=train_or_val(f"reals:{group}", cfg.val_fraction),
                dataset=cfg.dataset_name(),
                source=source,
                kind="video" if is_video(path) else "image",
            )
        )
    if dropped:
        log.info("%s: left out %d file(s) identical to files under %s", root, dropped, ", ".join(map(str, cfg.exclude_like)))
    return items
