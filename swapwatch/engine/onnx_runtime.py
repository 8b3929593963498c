"""ONNX Runtime engine: a batch of aligned face crops in, P(fake) per crop out.

This is the portable CPU default. Sessions use explicit providers (never ORT's Azure provider, which
1.31 lists first) and no spin-waiting, so the detector and classifier sessions share two cores well.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from swapwatch.engine.metadata import EngineMetadata, read_metadata
from swapwatch.errors import ModelFileError
from swapwatch.stream.faces.onnx_session import make_session

log = logging.getLogger(__name__)


def default_model_path() -> Path:
    """The embedded default detector shipped inside the package (see swapwatch/assets/MODEL_CARD.md)."""
    path = Path(str(resources.files("swapwatch") / "assets" / "default.onnx"))
    if not path.is_file():
        raise ModelFileError(path, "the embedded default model is missing from this installation")
    return path


class OnnxEngine:
    """Scores aligned crops with an exported swapwatch model and its metadata sidecar."""

    name = "onnxruntime"

    def __init__(
        self, model_path: str | Path | None = None, threads: int = 1, providers: Sequence[str] | None = None
    ) -> None:
        self.path = Path(model_path) if model_path is not None else default_model_path()
        if not self.path.is_file():
            raise ModelFileError(self.path, "no such model file (expected an .onnx exported by swapwatch export)")
        self.meta: EngineMetadata = read_metadata(self.path)
        self.session = make_session(self.path, threads=threads, providers=list(providers) if providers else None)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or shape[2] not in (self.meta.input_size, None) and not isinstance(shape[2], str):
            raise ModelFileError(
                self.path, f"model input shape {shape} does not match sidecar input_size {self.meta.input_size}"
            )
        self._mean = np.asarray(self.meta.mean, np.float32).reshape(1, 1, 1, 3)
        self._inv_std = (1.0 / np.asarray(self.meta.std, np.float32)).reshape(1, 1, 1, 3)

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    def preprocess(self, crops_bgr: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 BGR crops (N, S, S, 3) at the model's input size -> normalised float32 NCHW."""
        size = self.meta.input_size
        batch = np.stack([np.asarray(c) for c in crops_bgr]) if not isinstance(crops_bgr, np.ndarray) else crops_bgr
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{self.path.name}: expected crops of shape (N, {size}, {size}, 3), got {tuple(batch.shape)}"
            )
        x = batch[..., ::-1] if self.meta.color == "RGB" else batch
        x = (x.astype(np.float32) * (1.0 / 255.0) - self._mean) * self._inv_std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 (N, 3, S, S) -> P(fake) float32 (N,)."""
        if batch.shape[0] == 0:
            return np.zeros(0, np.float32)
        out = self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]
        return np.asarray(out, np.float32).reshape(-1)

    def score_crops(self, crops_bgr: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(crops_bgr) == 0:
            return np.zeros(0, np.float32)
        return self.infer(self.preprocess(crops_bgr))


def resize_crop(crop: np.ndarray, size: int) -> np.ndarray:
    if crop.shape[0] == size and crop.shape[1] == size:
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
