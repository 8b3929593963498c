"""torch backend: a training checkpoint (.pt from `swapwatch train`) scored directly, CPU or CUDA.

The checkpoint is rebuilt with `model_from_checkpoint`, folded with `export_module()` (MASM's subspaces
become dense weights, exactly what ONNX export writes) and wrapped in ScoreModel, so it computes the
same function as the exported engines; it runs in eval mode under `torch.inference_mode`.

Use it to check an engine against its checkpoint, to evaluate a checkpoint without exporting, or on a
machine where nothing else is installed. It is the slowest backend (no graph optimisation) and needs the
[train] install: torch is imported only when this backend is used, never by `swapwatch.engine.select`.
There is no sidecar file: the metadata is built from the checkpoint, with its sha256 as `model_sha256`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swapwatch.engine.base import Engine
from swapwatch.engine.metadata import AlignmentSpec, EngineMetadata, Precision, file_sha256
from swapwatch.errors import ConfigError, ModelFileError

if TYPE_CHECKING:
    from swapwatch.train.models.base import Detector, ScoreModel

log = logging.getLogger(__name__)


def checkpoint_margin(state: dict[str, Any]) -> float:
    """The alignment margin the checkpoint's crops were cut with (the training recipe's cache margin)."""
    return float(state.get("train_config", {}).get("data", {}).get("cache", {}).get("margin", 0.15))


def checkpoint_crop_size(state: dict[str, Any]) -> int:
    """The canonical crop side the checkpoint was trained on: the training recipe's `data.cache.size`
    (the aligned-crop cache, 256 by default), which training shrinks to the model's input size."""
    from swapwatch.stream.faces.chain import CANONICAL_SIZE

    return int(state.get("train_config", {}).get("data", {}).get("cache", {}).get("size", CANONICAL_SIZE))


def metadata_for_checkpoint(
    model: Detector,
    state: dict[str, Any],
    checkpoint: Path,
    model_sha256: str,
    precision: Precision = "fp32",
    export: dict[str, Any] | None = None,
) -> EngineMetadata:
    """The metadata every engine made from `checkpoint` carries (only the hash, precision and export differ).

    `alignment.size` is the canonical crop the model was trained on (the recipe's cache size), not the
    input size: the monitor aligns at it and shrinks to `input_size`, as training did (faces/chain.py).
    """
    from swapwatch.stream.faces.align import template_landmarks

    size = int(model.input_size)
    crop_size = checkpoint_crop_size(state)
    margin = checkpoint_margin(state)
    return EngineMetadata(
        method=model.method,
        input_size=size,
        mean=list(model.mean),
        std=list(model.std),
        alignment=AlignmentSpec(
            name="arcface5", size=crop_size, margin=margin, template=template_landmarks(crop_size, margin).tolist()
        ),
        precision=precision,
        model_sha256=model_sha256,
        checkpoint=str(checkpoint),
        backbone=model.backbone_info(),
        data=state.get("data_summary", {}),
        export=export or {},
    )


def load_score_module(checkpoint: Path) -> tuple[ScoreModel, Detector, dict[str, Any]]:
    """(folded ScoreModel in eval mode on the CPU, the detector, the checkpoint state)."""
    from swapwatch.train.loop import model_from_checkpoint
    from swapwatch.train.models.base import ScoreModel

    model, state = model_from_checkpoint(checkpoint)
    return ScoreModel(model.export_module()).eval(), model, state


def resolve_device(device: str | int | None) -> str:
    """None -> 'cuda:0' when CUDA is usable else 'cpu'; an int -> 'cuda:N'; 'cuda' without a GPU -> ConfigError."""
    import torch

    if device is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    text = f"cuda:{device}" if isinstance(device, int) else str(device)
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {text} requested but torch sees no CUDA GPU; use cpu")
    return text


class TorchEngine(Engine):
    """Scores crops with a training checkpoint through torch (name 'torch:cpu' or 'torch:cuda')."""

    def __init__(self, checkpoint: str | Path, device: str | int | None = "cpu", threads: int | None = None) -> None:
        path = Path(checkpoint)
        if not path.is_file():
            raise ModelFileError(path, "no such checkpoint (expected a .pt written by swapwatch train)")
        import torch

        self._torch = torch
        dev = resolve_device(device)
        if threads is not None and dev == "cpu":
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        module, model, state = load_score_module(path)
        meta = metadata_for_checkpoint(
            model, state, path, file_sha256(path), export={"format": "torch", "folded": True}
        )
        self._init_preprocessing(path, meta)
        self.device = torch.device(dev)
        self.name = f"torch:{self.device.type}"
        self.module: ScoreModel | None = module.to(self.device)
        self.max_batch = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        assert self.module is not None  # infer() refuses a closed engine
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        return out.float().cpu().numpy()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        super().close()
        self.module = None
