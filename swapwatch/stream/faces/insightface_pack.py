"""Optional detector backend: an InsightFace detection model (SCRFD / det_10g) from a local pack.

InsightFace ships no models, and its packs (buffalo_l, antelopev2, ...) are licensed for
non-commercial research only, so this backend only ever loads a folder or file the user provides;
nothing is downloaded. The session gets our options (CPU provider, bounded threads, no spinning).

Trade-off on input size: SCRFD letterboxes each frame into a fixed canvas. Instead of the square
640x640 canvas InsightFace defaults to, each frame gets a canvas of its own aspect ratio (longer side
`max_side`, both sides rounded up to a multiple of 32), which spends ~45% less compute on 16:9 video.
That needs a dynamic-shape session (InsightFace otherwise builds one static session per canvas
size, which would grow without bound on a dataset of mixed image sizes). Models exported with a
fixed input size keep that size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.errors import ModelFileError
from swapwatch.media.onnx_session import resolve_providers, session_options
from swapwatch.stream.faces.config import DetectorConfig
from swapwatch.stream.faces.detector_base import check_image, keep_large_enough, scale_to_max_side
from swapwatch.stream.faces.types import Face

EXPECTED_FOLDER = "a folder holding an InsightFace detection model such as det_10g.onnx or scrfd_*.onnx"
EXPECTED_FILE = "an InsightFace detection model (.onnx, e.g. det_10g.onnx or scrfd_*.onnx) that onnxruntime can load"
DETECTION_PATTERNS = ("det_*.onnx", "scrfd*.onnx", "*retinaface*.onnx")
_ALIGN = 32


def find_detection_model(path: Path) -> Path:
    """The detection .onnx inside a pack folder (or `path` itself when it is a file).

    Classic packs name it det_<size>.onnx (buffalo_*: det_10g / det_500m) or scrfd_*.onnx
    (antelopev2); when several match, the first in sorted order wins, which is deterministic.
    """
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise ModelFileError(path, EXPECTED_FILE)
        return path
    if not path.is_dir():
        raise ModelFileError(path, f"{EXPECTED_FOLDER} (nothing exists at this path)")
    for pattern in DETECTION_PATTERNS:
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found[0]
    present = sorted(p.name for p in path.glob("*.onnx"))
    listing = f"; it holds {', '.join(present)}" if present else "; it holds no .onnx files"
    raise ModelFileError(path, f"{EXPECTED_FOLDER}{listing}")


def canvas_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(width, height) of the letterbox canvas: the frame fitted to max_side, each side rounded up to 32."""
    factor = scale_to_max_side(height, width, max_side)

    def up(v: float) -> int:
        return max(_ALIGN, math.ceil(v / _ALIGN) * _ALIGN)

    return up(width * factor), up(height * factor)


class InsightFaceDetector:
    """An InsightFace SCRFD-family detector (boxes + 5 landmarks) on ONNX Runtime CPU."""

    def __init__(
        self,
        model_path: str | Path,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.4,
        max_side: int = 640,
        min_face: int = 20,
        threads: int = 1,
    ) -> None:
        requested = Path(model_path).expanduser().absolute()
        self.model_file = find_detection_model(requested)
        self.max_side = int(max_side)
        self.min_face = int(min_face)
        self.model = _load_model(self.model_file, threads)
        canvas = canvas_size(self.max_side, self.max_side, self.max_side)
        # InsightFace's SCRFD.prepare takes `input_size`; `det_size` is FaceAnalysis's name and SCRFD ignores it.
        self.model.prepare(
            ctx_id=-1, input_size=canvas, det_thresh=float(score_threshold), nms_thresh=float(nms_threshold)
        )
        self.name = f"insightface:{self.model_file.stem}"

    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> InsightFaceDetector:
        if cfg.model_path is None:  # DetectorConfig already rejects this; kept for direct callers
            raise ModelFileError("<unset>", EXPECTED_FOLDER)
        return cls(cfg.model_path, cfg.score_threshold, cfg.nms_threshold, cfg.max_side, cfg.min_face, cfg.threads)

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        check_image(image_bgr)
        h, w = image_bgr.shape[:2]
        dets, kpss = self.model.detect(image_bgr, input_size=canvas_size(h, w, self.max_side), max_num=0)
        if dets is None or len(dets) == 0 or kpss is None:
            return []
        order = np.argsort(-dets[:, 4], kind="stable")
        boxes = dets[order, :4].astype(np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        faces = [
            Face(box=b, landmarks=k, score=float(s))
            for b, k, s in zip(boxes, kpss[order], dets[order, 4])
        ]
        return keep_large_enough(faces, self.min_face)


def _load_model(model_file: Path, threads: int) -> Any:
    """Open `model_file` through InsightFace's router and insist it is a detector with landmarks."""
    try:
        from insightface.model_zoo import get_model
    except ImportError as err:
        raise ModelFileError(model_file, f"{EXPECTED_FILE}; the insightface package is not installed ({err})") from err
    try:
        model = get_model(
            str(model_file),
            providers=resolve_providers(["CPUExecutionProvider"]),
            sess_options=session_options(threads),
            static_shape_sessions=False,
        )
    except Exception as err:  # ORT/protobuf/insightface raise many unrelated types for a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(model_file, f"{EXPECTED_FILE} ({reason[:200]})") from err
    task = getattr(model, "taskname", None)
    if task != "detection":
        raise ModelFileError(model_file, f"{EXPECTED_FILE}; this is a {task or 'unrecognised'} model")
    if not getattr(model, "use_kps", False):
        raise ModelFileError(model_file, f"{EXPECTED_FILE} with 5-point landmarks (this one predicts boxes only)")
    return model
