"""Evaluation of a checkpoint or an exported ONNX model on a dataset: metrics, ROC, robustness table.

Crops come from the same aligned-crop cache the training uses, so frame sampling and alignment match
exactly, and reach the model's input size by the shared chain's last step (`faces.chain.to_input`), as
in training and in the monitor. Optionally each real crop is also scored as a deterministic pseudo-fake
(`pseudo_fakes`), which gives the held-out pseudo-fake AUC when the dataset has no fakes of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from swapwatch.stream.faces.chain import to_input
from swapwatch.train.data.cache import CropRecord, read_crop
from swapwatch.train.degrade import ROBUSTNESS_LEVELS, apply_degradation
from swapwatch.train.metrics import compute_metrics

log = logging.getLogger(__name__)


class Scorer:
    """Batch of uint8 BGR crops at `input_size` -> P(fake)."""

    input_size: int
    margin: float
    name: str

    def score(self, crops: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class OnnxScorer(Scorer):
    def __init__(self, path: Path, threads: int = 2) -> None:
        from swapwatch.engine.onnx_runtime import OnnxEngine

        self.engine = OnnxEngine(path, threads=threads)
        self.input_size = self.engine.input_size
        self.margin = self.engine.meta.alignment.margin
        self.name = f"onnx:{path}"

    def score(self, crops: np.ndarray) -> np.ndarray:
        return self.engine.score_crops(crops)


class TorchScorer(Scorer):
    def __init__(self, checkpoint: Path) -> None:
        import torch

        from swapwatch.train.loop import model_from_checkpoint

        self.torch = torch
        self.model, state = model_from_checkpoint(checkpoint)
        self.input_size = int(self.model.input_size)
        self.margin = float(state.get("train_config", {}).get("data", {}).get("cache", {}).get("margin", 0.15))
        self._mean = np.asarray(self.model.mean, np.float32)
        self._std = np.asarray(self.model.std, np.float32)
        self.name = f"torch:{checkpoint}"

    def score(self, crops: np.ndarray) -> np.ndarray:
        x = crops[..., ::-1].astype(np.float32) / 255.0
        x = ((x - self._mean) / self._std).transpose(0, 3, 1, 2)
        with self.torch.no_grad():
            out = self.model(self.torch.from_numpy(np.ascontiguousarray(x)))
        return self.torch.sigmoid(out.logit).numpy().astype(np.float32)


def load_scorer(model: Path) -> Scorer:
    return OnnxScorer(model) if model.suffix == ".onnx" else TorchScorer(model)


@dataclass
class EvalSample:
    record: CropRecord
    label: int
    video_id: str
    pseudo: bool = False


@dataclass
class EvalReport:
    metrics: dict[str, Any]
    robustness: dict[str, dict[str, float | None]] = field(default_factory=dict)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    per_source: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_samples(records: Sequence[CropRecord], pseudo_fakes: bool) -> list[EvalSample]:
    out = []
    for r in records:
        out.append(EvalSample(r, int(r.label), r.video_id))
        if pseudo_fakes and r.label == 0:
            out.append(EvalSample(r, 1, f"{r.video_id}#pseudo", pseudo=True))
    return out


def load_images(
    samples: Sequence[EvalSample], seed: int, pseudo_cfg: Any = None
) -> list[np.ndarray]:
    from swapwatch.train.dataset import fixed_pseudo_fake
    from swapwatch.train.pseudofakes.generator import PseudoFakeConfig, PseudoFakeGenerator

    gen = PseudoFakeGenerator(pseudo_cfg or PseudoFakeConfig())
    images = []
    for i, s in enumerate(track(samples, description="loading crops", transient=True)):
        img = read_crop(s.record)
        if s.pseudo:
            img = fixed_pseudo_fake(gen, img, s.record, seed, i)
        images.append(img)
    return images


def score_images(
    scorer: Scorer,
    images: Sequence[np.ndarray],
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 32,
    desc: str = "scoring",
) -> np.ndarray:
    size = scorer.input_size
    scores = []
    for start in track(range(0, len(images), batch_size), description=desc, transient=True):
        batch = []
        for img in images[start : start + batch_size]:
            if transform is not None:
                img = transform(img)
            batch.append(to_input(img, size))
        scores.append(scorer.score(np.stack(batch)))
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def evaluate(
    scorer: Scorer,
    records: Sequence[CropRecord],
    pseudo_fakes: bool = False,
    robustness: bool = False,
    seed: int = 0,
    batch_size: int = 32,
) -> EvalReport:
    samples = build_samples(records, pseudo_fakes)
    if not samples:
        raise ValueError("nothing to evaluate: no face crops")
    images = load_images(samples, seed)
    labels = [s.label for s in samples]
    vids = [s.video_id for s in samples]
    scores = score_images(scorer, images, batch_size=batch_size)
    report = EvalReport(
        metrics=compute_metrics(labels, scores.tolist(), vids).as_dict(),
        labels=labels,
        scores=scores.tolist(),
    )
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        key = "pseudo-fake" if s.pseudo else f"{s.record.dataset}/{s.record.source}"
        by_source.setdefault(key, []).append(i)
    for key, idx in sorted(by_source.items()):
        sc = scores[idx]
        report.per_source[key] = {"n": len(idx), "mean_score": float(np.mean(sc)), "label": labels[idx[0]]}
    if robustness:
        for kind, levels in ROBUSTNESS_LEVELS.items():
            row: dict[str, float | None] = {}
            for level in levels:
                sc = score_images(
                    scorer, images, transform=functools.partial(apply_degradation, kind=kind, level=level),
                    batch_size=batch_size, desc=f"{kind} {level}",
                )
                row[str(level)] = compute_metrics(labels, sc.tolist()).auc
            report.robustness[kind] = row
    return report
