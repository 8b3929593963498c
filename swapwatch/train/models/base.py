"""The detector interface every trainable model implements (after DeepfakeBench: features, classifier, losses).

Input: a float tensor (B, 3, H, W), RGB, already normalised with the model's `mean`/`std`.
`forward` returns a DetectorOutput; `logit` is the fake logit (sigmoid(logit) = P(fake)).
`losses(output, labels)` returns named scalar losses whose sum is minimised; "total" is the sum.
Export wraps the model with ScoreModel so the ONNX graph maps a normalised batch to P(fake), shape (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DetectorOutput:
    logit: torch.Tensor  # (B,)
    embedding: torch.Tensor  # (B, D) features used by contrastive losses


class Detector(nn.Module):
    """Base class. Subclasses set `input_size`, `mean`, `std` and implement features/classify/losses."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    method: str = "base"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        f = self.features(x)
        return DetectorOutput(logit=self.classify(f), embedding=f)

    def losses(self, output: DetectorOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        bce = nn.functional.binary_cross_entropy_with_logits(output.logit, labels.float())
        return {"bce": bce, "total": bce}

    def on_after_backward(self, step: int) -> None:
        """Hook run by the training loop after backward and before the optimizer step."""

    def extra_state(self) -> object:
        """What a checkpoint keeps beside the state dict (its "extra" entry). Default: None, nothing."""
        return None

    def load_extra_state(self, extra: object) -> None:
        """Restore what `extra_state` returned, when resuming from a checkpoint. Default: nothing to do."""

    def backbone_info(self) -> dict[str, object]:
        """Name, pretrained flag and weights source of the backbone, for checkpoints and engine metadata."""
        return {
            "name": getattr(self, "backbone_name", None),
            "pretrained": getattr(self, "pretrained", None),
            "source": str(getattr(self, "backbone_source", None)),
        }

    def export_module(self) -> nn.Module:
        """A plain module for export (MASM folds its subspaces here). Default: self."""
        return self


class ScoreModel(nn.Module):
    """Wraps a detector for export: normalised (B, 3, H, W) -> P(fake) (B,)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.detector(x)
        logit = out.logit if isinstance(out, DetectorOutput) else out
        return torch.sigmoid(logit)
