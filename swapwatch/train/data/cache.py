"""The preprocessing cache: aligned face crops of a dataset's sampled frames, built once and reused.

Layout under the cache root:

    manifest.json   build parameters (size, margin, frames per video, faces per frame, detector, alignment)
    index.jsonl     one record per crop (see CropRecord)
    items.jsonl     one line per finished source item: done (with its crop count) or skipped (with why)
    crops/<dataset>/<video_id>/<frame>_<face>.png

Crops are PNG, never JPEG: lossy compression applied by the cache would add an artifact whose strength
could differ between real and fake sources and become a label cue. Each item's crops are written, then
its records appended to index.jsonl in one flushed write, then the item is marked finished in
items.jsonl, so an interrupted build resumes where it stopped: finished items are skipped and records
of an unfinished item are dropped. A cache built with other parameters is never mixed with new crops:
the build stops and asks for another root or `rebuild=True`.

The crops are the *canonical* crops of the shared resampling chain (`swapwatch.stream.faces.chain`):
`align_face` straight at `size`; training and `eval` shrink them to a model's input with `to_input`,
and a model's metadata records `size` as its `alignment.size`, which the monitor aligns at.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field
from tqdm import tqdm

from swapwatch.config import StrictModel
from swapwatch.errors import ConfigError, DatasetLayoutError, MediaError
from swapwatch.media.image import read_image
from swapwatch.media.video import sample_video
from swapwatch.stream.faces import DetectorConfig, FacePipeline, align_face, alignment_spec, load_detector
from swapwatch.train.data.items import MediaItem

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX = "index.jsonl"
ITEMS = "items.jsonl"
CROPS = "crops"
CACHE_VERSION = 1
NO_FACE = "no face found"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FaceCacheConfig(StrictModel):
    """Where the cache lives and how crops are made; every field but `root` is part of the manifest."""

    root: Path = Field(..., description="Cache folder (created if missing). One folder per set of parameters.")
    size: int = Field(256, ge=16, le=2048, description="Side of the square aligned crops, in pixels.")
    margin: float = Field(
        0.15, ge=0.0, lt=0.5, description="Extra context around the ArcFace template, as a fraction of the crop side."
    )
    frames_per_video: int = Field(
        16, ge=1, description="Evenly spaced frames sampled per video (all frames when the video is shorter)."
    )
    max_faces_per_frame: int = Field(1, ge=1, description="Faces kept per frame, in `keep` order.")
    keep: Literal["largest", "score"] = Field(
        "largest",
        description="Which faces count first when a frame holds more than max_faces_per_frame: the largest "
        "box (the subject, usually) or the most confident detection.",
    )
    min_face: int = Field(
        0, ge=0, description="Extra floor on the shorter face-box side in source pixels, on top of the detector's."
    )
    detector: DetectorConfig = Field(
        default_factory=DetectorConfig, description="Face detector settings (default: the embedded RetinaFace)."
    )


@dataclass
class CropRecord:
    """One cached crop and where it came from. `crop` and `source_path` are absolute paths.

    landmarks: (5, 2) float32 in crop pixels (ArcFace order). box: (4,) float32 x1, y1, x2, y2 in source
    pixels. frame: the decoded frame index (0 for images). face: rank of the face within its frame.
    """

    crop: Path
    source_path: Path
    frame: int
    face: int
    label: int
    video_id: str
    split: str
    dataset: str
    source: str
    kind: str
    landmarks: np.ndarray
    det_score: float
    box: np.ndarray


@dataclass
class SkippedItem:
    """A source item that gave no crops, and why. `earlier`: skipped by a previous build of this cache."""

    path: Path
    reason: str
    earlier: bool = False


@dataclass
class CacheReport:
    """What one `build_face_cache` call did."""

    root: Path
    done: int = 0
    reused: int = 0
    crops_written: int = 0
    frames_without_face: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        fresh = sum(1 for s in self.skipped if not s.earlier)
        reasons = Counter(s.reason for s in self.skipped)
        top = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common(3))
        return (
            f"{self.root}: {self.done} items cached ({self.crops_written} crops), {self.reused} already cached, "
            f"{len(self.skipped)} skipped ({fresh} in this run){f' [{top}]' if top else ''}"
        )


# ----- manifest -----------------------------------------------------------------------------------------


def build_parameters(cfg: FaceCacheConfig, detector_name: str) -> dict[str, Any]:
    """The manifest content for a config: everything that changes what the crops look like."""
    return {
        "version": CACHE_VERSION,
        "size": cfg.size,
        "margin": cfg.margin,
        "frames_per_video": cfg.frames_per_video,
        "max_faces_per_frame": cfg.max_faces_per_frame,
        "keep": cfg.keep,
        "min_face": cfg.min_face,
        "detector": {"name": detector_name, **cfg.detector.model_dump(mode="json", exclude={"threads"})},
        "alignment": alignment_spec(cfg.size, cfg.margin),
        "crop_format": "png",
    }


def read_manifest(root: Path) -> dict[str, Any]:
    """The build parameters of an existing cache. Raises DatasetLayoutError when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetLayoutError(root, "face cache", f"no {MANIFEST}: build the cache first (build_face_cache)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetLayoutError(root, "face cache", f"{MANIFEST} is not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise DatasetLayoutError(root, "face cache", f"{MANIFEST} must hold a JSON object")
    return data


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b and key != "template":  # the template follows from size and margin
            diffs.append(f"{prefix}{key}: cache has {a!r}, requested {b!r}")
    return diffs


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _prepare_root(root: Path, params: dict[str, Any], rebuild: bool) -> None:
    """Create the root with its manifest, or check an existing manifest matches `params`."""
    manifest = root / MANIFEST
    if rebuild and root.exists():
        log.info("%s: rebuild requested; removing the previous crops, index and manifest", root)
        for name in (MANIFEST, INDEX, ITEMS):
            (root / name).unlink(missing_ok=True)
        shutil.rmtree(root / CROPS, ignore_errors=True)
    if manifest.is_file():
        diffs = _differences(read_manifest(root), params)
        if diffs:
            raise ConfigError(
                f"{root}: this face cache was built with other parameters ({'; '.join(diffs)}). "
                "Pick another cache root, or pass rebuild=True to delete these crops and build again."
            )
        return
    if (root / INDEX).exists() or (root / CROPS).exists():
        raise ConfigError(
            f"{root}: holds crops but no {MANIFEST}, so their parameters are unknown. "
            "Pick another cache root, or pass rebuild=True to delete them."
        )
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(manifest, (json.dumps(params, indent=2) + "\n").encode())


# ----- journal files ------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Parsed lines of a JSONL file and whether any line was unreadable (e.g. cut by an interruption)."""
    if not path.is_file():
        return [], False
    rows: list[dict[str, Any]] = []
    damaged = False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            damaged = True
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged = True
    return rows, damaged


def _rewrite_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows in one write, flushed to disk, so an item's records land together or not at all."""
    if not rows:
        return
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def _finished_items(root: Path) -> dict[str, dict[str, Any]]:
    """Finished items by source path, after dropping index records of any unfinished item."""
    rows, damaged = _read_jsonl(root / ITEMS)
    finished = {str(r["path"]): r for r in rows if "path" in r}
    if damaged:
        log.warning("%s: %s had an unreadable line (interrupted build?); repairing it", root, ITEMS)
        _rewrite_jsonl(root / ITEMS, finished.values())
    records, index_damaged = _read_jsonl(root / INDEX)
    kept = [r for r in records if str(r.get("source_path")) in finished]
    if index_damaged or len(kept) != len(records):
        log.warning(
            "%s: dropping %d crop records of an unfinished item (interrupted build); it will be redone",
            root,
            len(records) - len(kept),
        )
        _rewrite_jsonl(root / INDEX, kept)
    return finished


# ----- building -----------------------------------------------------------------------------------------


def _safe_part(text: str) -> str:
    part = _UNSAFE.sub("_", text).strip("._")
    return part or "_"


def crop_folder(item: MediaItem) -> str:
    """Relative folder of an item's crops: crops/<dataset>/<video_id>, each part made filesystem-safe."""
    parts = [_safe_part(item.dataset)] + [_safe_part(p) for p in item.video_id.split("/") if p not in ("", ".", "..")]
    return "/".join([CROPS, *parts])


def _frames(item: MediaItem, frames_per_video: int) -> Iterator[tuple[int, np.ndarray]]:
    if item.kind == "image":
        yield 0, read_image(item.path)
    else:
        yield from sample_video(item.path, frames_per_video)


def _round(array: np.ndarray, digits: int) -> list[Any]:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def _cache_item(
    item: MediaItem, root: Path, pipeline: FacePipeline, cfg: FaceCacheConfig, report: CacheReport
) -> tuple[list[dict[str, Any]], str | None]:
    """Crop one item: write its PNGs and return its index records, or ([], reason) when it gives none."""
    folder = crop_folder(item)
    records: list[dict[str, Any]] = []
    frames_seen = 0
    try:
        for frame_index, image in _frames(item, cfg.frames_per_video):
            frames_seen += 1
            try:
                # canonical crops: the pipeline detects and selects, the crop is a direct warp at cfg.size
                aligned = [
                    align_face(image, f.landmarks, cfg.size, cfg.margin, face=f) for f in pipeline.faces(image)
                ]
            except ValueError as err:  # e.g. degenerate landmarks from the detector
                log.warning("%s frame %d: face alignment failed (%s); frame skipped", item.path, frame_index, err)
                aligned = []
            if not aligned:
                report.frames_without_face += 1
                log.debug("%s frame %d: no face found", item.path, frame_index)
                continue
            for rank, face in enumerate(aligned):
                rel = f"{folder}/{frame_index:06d}_{rank:02d}.png"
                ok, buf = cv2.imencode(".png", face.crop, [cv2.IMWRITE_PNG_COMPRESSION, 3])
                if not ok:
                    raise MediaError(root / rel, "PNG encoding failed")
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(target, buf.tobytes())
                det = face.face
                records.append(
                    {
                        "crop": rel,
                        "source_path": str(item.path.absolute()),
                        "frame": frame_index,
                        "face": rank,
                        "label": item.label,
                        "video_id": item.video_id,
                        "split": item.split,
                        "dataset": item.dataset,
                        "source": item.source,
                        "kind": item.kind,
                        "landmarks": _round(face.landmarks, 3),
                        "det_score": round(float(det.score), 5) if det is not None else None,
                        "box": _round(det.box, 2) if det is not None else None,
                    }
                )
    except MediaError as err:
        if not records:
            return [], err.reason
        log.warning("%s: stopped early (%s); keeping %d crops", item.path, err.reason, len(records))
    if not records:
        return [], NO_FACE if frames_seen else "no frame decoded"
    return records, None


def _make_pipeline(cfg: FaceCacheConfig, pipeline: FacePipeline | None) -> FacePipeline:
    if pipeline is None:
        return FacePipeline(
            load_detector(cfg.detector),
            size=cfg.size,
            margin=cfg.margin,
            max_faces=cfg.max_faces_per_frame,
            min_face=cfg.min_face,
            keep=cfg.keep,
            crop_size=cfg.size,
        )
    wanted = {
        "size": cfg.size,
        "margin": cfg.margin,
        "max_faces": cfg.max_faces_per_frame,
        "min_face": cfg.min_face,
        "keep": cfg.keep,
    }
    actual = {key: getattr(pipeline, key, None) for key in wanted}
    if actual != wanted:
        raise ValueError(f"the given FacePipeline has {actual}, but the cache config asks for {wanted}")
    return pipeline


def build_face_cache(
    items: list[MediaItem],
    cfg: FaceCacheConfig,
    pipeline: FacePipeline | None = None,
    progress: bool = True,
    rebuild: bool = False,
) -> CacheReport:
    """Detect, align and store the faces of every item's sampled frames (images: the image itself).

    Items already in the cache are not redone, so calling this again (after an interruption, or with
    more items) only processes what is new. Unreadable media and items without a face are logged and
    listed in the report's `skipped` with their reason. Raises ConfigError when the cache at `cfg.root`
    was built with other parameters (pick another root or pass `rebuild=True`).
    """
    root = cfg.root
    pipe = _make_pipeline(cfg, pipeline)
    detector_name = str(getattr(pipe.detector, "name", type(pipe.detector).__name__))
    _prepare_root(root, build_parameters(cfg, detector_name), rebuild)
    finished = _finished_items(root)
    # crop folder -> the source item whose crops it holds (two items must never share one)
    owners = {str(row["folder"]): str(row["path"]) for row in finished.values() if row.get("folder")}
    report = CacheReport(root=root)

    seen: set[str] = set()
    bar = tqdm(items, desc="face cache", unit="item", disable=not progress, dynamic_ncols=True)
    for item in bar:
        key = str(item.path.absolute())
        if key in seen:
            continue
        seen.add(key)
        if key in finished:
            report.reused += 1
            row = finished[key]
            if row.get("status") == "skipped":
                report.skipped.append(SkippedItem(item.path, str(row.get("reason", "")), earlier=True))
            continue
        folder = crop_folder(item)
        owner = owners.get(folder)
        if owner is not None and owner != key:
            clash = f"its crop folder {folder} already holds crops of {owner} (same dataset and video_id)"
            log.warning("%s: skipped: %s", item.path, clash)
            report.skipped.append(SkippedItem(item.path, clash))
            continue
        records, reason = _cache_item(item, root, pipe, cfg, report)
        if records:
            _append_jsonl(root / INDEX, records)
            row = {"path": key, "status": "done", "crops": len(records), "folder": folder}
            owners[folder] = key
            report.done += 1
            report.crops_written += len(records)
        else:
            assert reason is not None
            log.warning("%s: skipped: %s", item.path, reason)
            report.skipped.append(SkippedItem(item.path, reason))
            row = {"path": key, "status": "skipped", "reason": reason}
        _append_jsonl(root / ITEMS, [row])
        finished[key] = row
        bar.set_postfix(crops=report.crops_written, skipped=len(report.skipped), refresh=False)
    bar.close()
    log.info("%s", report.summary())
    return report


# ----- reading ------------------------------------------------------------------------------------------


def _record(root: Path, row: dict[str, Any]) -> CropRecord:
    box = row.get("box")
    return CropRecord(
        crop=root / row["crop"],
        source_path=Path(row["source_path"]),
        frame=int(row["frame"]),
        face=int(row["face"]),
        label=int(row["label"]),
        video_id=str(row["video_id"]),
        split=str(row["split"]),
        dataset=str(row["dataset"]),
        source=str(row["source"]),
        kind=str(row.get("kind", "video")),
        landmarks=np.asarray(row["landmarks"], dtype=np.float32).reshape(5, 2),
        det_score=float(row["det_score"]) if row.get("det_score") is not None else float("nan"),
        box=np.asarray(box if box is not None else [np.nan] * 4, dtype=np.float32).reshape(4),
    )


def load_face_cache(root: Path) -> list[CropRecord]:
    """Every crop record of a built cache (records of an interrupted, unfinished item are left out)."""
    root = Path(root).absolute()
    read_manifest(root)
    finished_rows, _ = _read_jsonl(root / ITEMS)
    finished = {str(r["path"]) for r in finished_rows if r.get("status") == "done"}
    rows, damaged = _read_jsonl(root / INDEX)
    if damaged:
        log.warning("%s: %s has unreadable lines; they were ignored", root, INDEX)
    records: list[CropRecord] = []
    for row in rows:
        if str(row.get("source_path")) not in finished:
            continue
        try:
            records.append(_record(root, row))
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetLayoutError(root, "face cache", f"{INDEX}: malformed record {row!r}: {err}") from None
    return records


def read_crop(record: CropRecord) -> np.ndarray:
    """A cached crop as (size, size, 3) uint8 BGR. Raises MediaError when the file is gone or damaged."""
    return read_image(record.crop)
