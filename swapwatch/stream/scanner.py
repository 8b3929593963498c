"""The offline scanner behind `swapwatch scan`: detect, align and score every face in images and videos.

A straightforward sequential version; a corrupt file is reported in its own result and skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.engine.onnx_runtime import OnnxEngine, resize_crop
from swapwatch.errors import MediaError
from swapwatch.stream.faces import FacePipeline, load_detector
from swapwatch.stream.faces.pipeline import read_image
from swapwatch.train.data.media import IMAGE_EXTS, VIDEO_EXTS, count_frames, read_frames

log = logging.getLogger(__name__)


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given (kept even if unreadable, so they get an error line) and media files inside folders."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS))
        else:
            out.append(p)
    return out


class Scanner:
    def __init__(
        self, model: Path | None = None, threads: int = 1, every: int = 1, max_frames: int | None = None
    ) -> None:
        self.engine = OnnxEngine(model, threads=threads)
        a = self.engine.meta.alignment
        self.pipeline = FacePipeline(load_detector(), size=self.engine.input_size, margin=a.margin)
        self.every = max(1, every)
        self.max_frames = max_frames

    def _faces(self, image: np.ndarray) -> list[dict[str, Any]]:
        aligned = self.pipeline.process(image)
        if not aligned:
            return []
        scores = self.engine.score_crops(np.stack([a.crop for a in aligned]))
        return [
            {
                "box": [round(float(v), 1) for v in a.face.box] if a.face is not None else None,
                "det_score": round(float(a.face.score), 4) if a.face is not None else None,
                "score": round(float(s), 5),
            }
            for a, s in zip(aligned, scores)
        ]

    def scan(self, path: Path, crops: bool = False) -> dict[str, Any]:
        try:
            if not path.exists():
                raise MediaError(path, "no such file")
            if path.suffix.lower() in VIDEO_EXTS:
                return self._scan_video(path)
            return self._scan_image(path, crops)
        except MediaError as err:
            log.warning("skipped %s", err)
            return {"path": str(path), "score": None, "faces": 0, "error": err.reason, "reason": err.reason}

    def _scan_image(self, path: Path, crops: bool) -> dict[str, Any]:
        image = read_image(path)
        if crops:
            score = float(self.engine.score_crops(resize_crop(image, self.engine.input_size)[None])[0])
            return {"path": str(path), "kind": "crop", "score": round(score, 5), "faces": 1,
                    "detail": [{"score": round(score, 5)}]}
        faces = self._faces(image)
        if not faces:
            return {"path": str(path), "kind": "image", "score": None, "faces": 0, "reason": "no face found"}
        return {"path": str(path), "kind": "image", "score": max(f["score"] for f in faces), "faces": len(faces),
                "detail": faces}

    def _scan_video(self, path: Path) -> dict[str, Any]:
        frames: list[dict[str, Any]] = []
        scored = 0
        wanted = range(0, count_frames(path), self.every)
        if self.max_frames:
            wanted = wanted[: self.max_frames]
        for index, image in read_frames(path, wanted):
            faces = self._faces(image)
            if faces:
                frames.append({"frame": index, "score": max(f["score"] for f in faces), "faces": faces})
            scored += 1
        if not frames:
            return {"path": str(path), "kind": "video", "score": None, "faces": 0, "frames": scored,
                    "reason": "no face found"}
        return {
            "path": str(path),
            "kind": "video",
            "score": round(float(np.mean([f["score"] for f in frames])), 5),
            "faces": max(len(f["faces"]) for f in frames),
            "frames": scored,
            "frames_with_faces": len(frames),
            "detail": frames,
        }
