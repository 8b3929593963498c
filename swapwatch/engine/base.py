"""The one interface every inference backend implements: aligned face crops in, P(fake) per crop out.

    engine = load_engine(path)                 # swapwatch.engine.select picks a backend
    scores = engine.score_crops(crops_bgr)     # uint8 (N, S, S, 3) BGR -> float32 (N,)
    # or, when the caller batches itself:
    scores = engine.infer(engine.preprocess(crops_bgr))

Preprocessing lives here, once, and is driven only by the metadata sidecar (input size, channel order,
mean/std), so a TensorRT plan, an ONNX Runtime session and a torch module fed the same crops see the
same tensor. Backends implement `_run(batch)` for one batch no larger than `max_batch`; `infer` does the
checks, the dtype conversion and the splitting of oversized batches for all of them.

Trade-off: preprocessing is NumPy on the CPU even for GPU backends. At face-crop sizes (64-224 px) that
is ~0.1 ms per crop and keeps one reference implementation; a fused GPU normalisation would save the
host-side float conversion but would have to be kept bit-identical per backend.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from swapwatch.engine.metadata import EngineMetadata
from swapwatch.errors import SwapwatchError

log = logging.getLogger(__name__)

Crops = Sequence[np.ndarray] | np.ndarray


class BackendUnavailable(SwapwatchError):
    """The requested backend cannot run here (package, provider or GPU missing); says what is missing.

    A runtime failure (exit 1), not a config error: the same config is valid on a machine that has the
    GPU or package. `auto` catches it and falls back to the next backend.
    """


class Engine(ABC):
    """Base class of every backend; subclasses set `name`, `path`, `meta`, `max_batch` and implement `_run`.

    Attributes:
        name: backend id, e.g. "onnxruntime:cpu", "onnxruntime:cuda", "onnxruntime:tensorrt", "tensorrt",
            "torch-tensorrt", "torch:cpu", "torch:cuda".
        path: the engine file (ONNX, plan, compiled program or checkpoint) the metadata describes.
        meta: its metadata sidecar.
        max_batch: largest batch one `_run` call accepts (from a TensorRT optimization profile);
            None means unbounded. `infer` splits larger batches, so callers never have to.
    """

    name: str = "engine"
    path: Path
    meta: EngineMetadata
    max_batch: int | None = None

    def _init_preprocessing(self, path: Path, meta: EngineMetadata) -> None:
        self.path = Path(path)
        self.meta = meta
        self._mean = np.asarray(meta.mean, np.float32).reshape(1, 1, 1, 3)
        self._inv_std = (1.0 / np.asarray(meta.std, np.float32)).reshape(1, 1, 1, 3)
        self._closed = False

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    def preprocess(self, crops_bgr: Crops) -> np.ndarray:
        """uint8 BGR crops (N, S, S, 3) at the model's input size -> normalised float32 NCHW.

        Raises ValueError naming the model file when the crops are not (N, S, S, 3) with S = input_size:
        resizing here would hide an alignment mismatch, so the caller must crop at the right size.
        """
        size = self.meta.input_size
        batch = crops_bgr if isinstance(crops_bgr, np.ndarray) else np.stack([np.asarray(c) for c in crops_bgr])
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{self.path.name}: expected crops of shape (N, {size}, {size}, 3), got {tuple(batch.shape)}"
            )
        x = batch[..., ::-1] if self.meta.color == "RGB" else batch
        x = (x.astype(np.float32) * (1.0 / 255.0) - self._mean) * self._inv_std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 (N, 3, S, S) -> P(fake) float32 (N,); batches above max_batch are split."""
        if self._closed:
            raise SwapwatchError(f"{self.path.name}: engine {self.name} was closed")
        n = int(batch.shape[0]) if batch.ndim else 0
        if n == 0:
            return np.zeros(0, np.float32)
        size = self.meta.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise ValueError(
                f"{self.path.name}: expected a batch of shape (N, 3, {size}, {size}), got {tuple(batch.shape)}"
            )
        x = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.max_batch or n
        parts = [self._checked_run(x[i : i + step]) for i in range(0, n, step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _checked_run(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self._run(x), np.float32).reshape(-1)
        if out.shape[0] != x.shape[0]:
            raise SwapwatchError(
                f"{self.path.name}: {self.name} returned {out.shape[0]} scores for {x.shape[0]} crops "
                "(the model output must be P(fake) with shape (N,))"
            )
        return out

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One contiguous float32 batch with 1 <= N <= max_batch -> N scores."""

    def score_crops(self, crops_bgr: Crops) -> np.ndarray:
        """uint8 BGR crops -> P(fake) float32 (N,)."""
        if len(crops_bgr) == 0:
            return np.zeros(0, np.float32)
        return self.infer(self.preprocess(crops_bgr))

    def close(self) -> None:
        """Release the session / device memory. Idempotent; `infer` after close raises."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.path.name} input={self.input_size} max_batch={self.max_batch}>"
