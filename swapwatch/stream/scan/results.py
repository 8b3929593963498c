"""One JSON-ready result per file, built from its scored frames (the DESIGN.md scan contract).

- image: `score` = the highest face score, `faces` = how many, `detail` = one entry per face;
- crop (`--crops`): the image is one aligned face, scored as is;
- video: `score` = the mean over frames with a face of each frame's highest face score (the rule the
  evaluation uses for video AUC), `faces` = the most faces on one frame, `frames` = frames scored,
  `detail` = per frame its index, score and faces; with tracking on, each face carries its `track` id
  and whether it was `detected` on that frame, and `tracks` sums each track up (frames, mean, max);
- no face anywhere: `score: null` and `reason: "no face found"`;
- unreadable file: `score: null`, `faces: 0`, and `error` = `reason` = what went wrong;
- a video that broke partway keeps what it scored and adds `warning`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsFloat

import numpy as np

from swapwatch.stream.scan.items import FaceFrame, FileEnd, FileStart

NO_FACE = "no face found"


def _r(x: SupportsFloat) -> float:
    return round(float(x), 5)


@dataclass
class FileResult:
    """Collects one file's frames until its `FileEnd`, then `build()`s the result dict."""

    start: FileStart
    frames: list[FaceFrame] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.start.path

    def add(self, frame: FaceFrame) -> None:
        # Crops are dropped once scored (a 160 px float crop is 300 KB), and a frame without faces
        # is kept only as a count, so what a long video holds is its per-frame detail and no more.
        frame.crops = None
        self.frames.append(frame if frame.faces or frame.error else FaceFrame(frame.seq, frame.file, frame.index))

    def build(self, end: FileEnd) -> dict[str, Any]:
        base: dict[str, Any] = {"path": str(self.path), "kind": self.start.kind}
        if end.error is not None:
            return {**base, "score": None, "faces": 0, "error": end.error, "reason": end.error}
        if self.start.kind == "video":
            out = self._video(base)
        else:
            out = self._still(base)
        if end.warning:
            out["warning"] = end.warning
        return out

    def _faces(self, frame: FaceFrame) -> list[dict[str, Any]]:
        assert frame.scores is not None or not frame.faces
        faces = []
        for info, score in zip(frame.faces, frame.scores if frame.scores is not None else []):
            face: dict[str, Any] = {}
            if info.box is not None:
                face["box"] = list(info.box)
                face["det_score"] = info.det_score
            if info.track is not None:
                face["track"] = info.track
                face["detected"] = info.detected
            face["score"] = _r(score)
            faces.append(face)
        return faces

    def _still(self, base: dict[str, Any]) -> dict[str, Any]:
        frame = self.frames[0] if self.frames else None
        if frame is not None and frame.error:
            return {**base, "score": None, "faces": 0, "error": frame.error, "reason": frame.error}
        faces = self._faces(frame) if frame is not None else []
        if not faces:
            return {**base, "score": None, "faces": 0, "reason": NO_FACE}
        return {**base, "score": max(f["score"] for f in faces), "faces": len(faces), "detail": faces}

    def _video(self, base: dict[str, Any]) -> dict[str, Any]:
        detail: list[dict[str, Any]] = []
        errors = 0
        tracks: dict[int, list[float]] = {}
        for frame in self.frames:
            if frame.error:
                errors += 1
                detail.append({"frame": frame.index, "score": None, "faces": [], "error": frame.error})
                continue
            faces = self._faces(frame)
            if not faces:
                continue
            for f in faces:
                if "track" in f:
                    tracks.setdefault(f["track"], []).append(f["score"])
            detail.append({"frame": frame.index, "score": max(f["score"] for f in faces), "faces": faces})
        scored = [d["score"] for d in detail if d["score"] is not None]
        out: dict[str, Any] = {**base, "detect_every": self.start.detect_every}
        if not scored:
            out.update({"score": None, "faces": 0, "frames": len(self.frames), "reason": NO_FACE})
        else:
            out.update({
                "score": _r(np.mean(scored)),
                "faces": max(len(d["faces"]) for d in detail),
                "frames": len(self.frames),
                "frames_with_faces": len(scored),
            })
        if errors:
            out["frame_errors"] = errors
        if tracks:
            out["tracks"] = [
                {"track": t, "frames": len(s), "mean": _r(np.mean(s)), "max": _r(max(s))} for t, s in tracks.items()
            ]
        if detail:
            out["detail"] = detail
        return out
