"""MASM: a detector whose pretrained weights are split by SVD into a frozen semantic subspace and K
learnable artifact subspaces, trained under a gradient-SNR layer mask with orthogonality and
spectral-consistency regularisers (after arXiv 2601.01041; the paper is not fully public, so every
choice below is ours, configurable, and explained in docs/masm.md).

Pipeline: backbone (pooled features, D) -> LayerNorm -> dropout -> Linear(D, 1) = fake logit.

Loss: BCE + orth_weight * orthogonality + spectral_weight * spectral consistency, both regularisers
averaged over the decomposed layers so their scale does not grow with depth:

* orthogonality (per layer, for both the left bases U and the right bases V):
  sum_{a<b} ||U_a^T U_b||_F^2  (distinct artifact subspaces)
  + sum_j ||U_p^T U_j||_F^2    (each artifact subspace against the frozen principal basis)
  + sum_j ||U_j^T U_j - I||_F^2 (optional, `orth_self`: keeps each basis orthonormal so S_j carries scale).
  Exactly 0 for SVD bases (up to float rounding) and growing as one basis is mixed into another.
  The residual band (if `principal_rank` leaves one) is not part of it.
* spectral consistency (per layer): (||W_eff||_F / ||W_0||_F - 1)^2
  + mean_j ||S_j - S_j^0||^2 / (||S_j^0||^2 + 0.01 * k * mean(s^2)).
  The first term keeps the layer's overall energy, the second keeps the artifact singular values near
  their pretrained tail values; the small spectrum-relative floor in the denominator keeps it finite
  when a tail singular value is ~0 (pruned or low-rank layers). Zero at init.

Defaults and why: orth_weight=1.0 (one fully overlapping direction then costs about as much as the BCE
of an undecided classifier, ~0.7: enough to keep the geometry the method relies on);
spectral_weight=0.1 (weaker on purpose: the tail values must be free to grow to express artifacts; the
Frobenius term alone stops the layer from drifting far). freeze_non_svd=True (only the artifact subspaces
and the head learn; BatchNorm layers are also held in eval mode so their running statistics stay
pretrained). Backbone "centerface": the only face-pretrained backbone available offline (the paper uses
CLIP ViT-L/14, which needs user-supplied weights).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from swapwatch.config import StrictModel
from swapwatch.errors import ConfigError
from swapwatch.train.models.backbones import create_backbone
from swapwatch.train.models.base import Detector, DetectorOutput
from swapwatch.train.models.layer_mask import LayerMask, LayerMaskConfig
from swapwatch.train.models.svd_layers import SVDConfig, SVDLayer, decompose, fold, svd_layers

__all__ = [
    "LAYER_PRESETS",
    "MASMConfig",
    "MASMDetector",
    "layer_predicate",
    "orthogonality_loss",
    "spectral_loss",
]

_ATTN = r"(^|\.)attn\.(qkv|proj|q|k|v|q_proj|k_proj|v_proj|out_proj)$"
_MLP = r"(^|\.)mlp\.(fc1|fc2|c_fc|c_proj)$"

#: Preset -> (regex on the qualified module name or None for any, module types allowed).
LAYER_PRESETS: dict[str, tuple[str | None, tuple[type[nn.Module], ...]]] = {
    "attn": (_ATTN, (nn.Linear,)),
    "mlp": (_MLP, (nn.Linear,)),
    "attn+mlp": (f"(?:{_ATTN})|(?:{_MLP})", (nn.Linear,)),
    "conv": (None, (nn.Conv2d,)),
    "linear": (None, (nn.Linear,)),
    "all": (None, (nn.Linear, nn.Conv2d)),
}


def layer_predicate(spec: str, kind: str):
    """Predicate (name, module) -> bool for `decompose` from a preset name or "re:<regex>".

    "auto" means "attn+mlp" for ViT backbones and "conv" for CNNs. A regex is matched with re.search
    against qualified names and applies to both Linear and Conv2d layers.
    """
    if spec == "auto":
        spec = "attn+mlp" if kind == "vit" else "conv"
    if spec.startswith("re:"):
        pattern: re.Pattern[str] | None = re.compile(spec[3:])
        types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
    else:
        regex, types = LAYER_PRESETS[spec]
        pattern = re.compile(regex) if regex else None

    def include(name: str, module: nn.Module) -> bool:
        return isinstance(module, types) and (pattern is None or pattern.search(name) is not None)

    return include


class MASMConfig(StrictModel):
    """Everything MASMDetector needs; see the module docstring and docs/masm.md for the defaults."""

    method: Literal["masm"] = Field("masm", description="Discriminator for the model config union.")
    backbone: str = Field(
        "centerface",
        description="Backbone name: centerface, clip_vit_b16, clip_vit_l14, vit_tiny, efficientnet_b0/b4, "
        "resnet18 or any timm model name.",
    )
    weights: Path | None = Field(
        None, description="Local backbone weights file or folder; null = random init (centerface: bundled)."
    )
    image_size: int | None = Field(None, ge=32, description="Square input side; null = the backbone's default.")
    layers: str = Field(
        "auto",
        description="Which layers to split: auto (attn+mlp for ViTs, conv for CNNs), attn, mlp, attn+mlp, conv, "
        "linear, all, or 're:<regex>' on qualified module names.",
    )
    svd: SVDConfig = Field(default_factory=SVDConfig, description="Rank split of each decomposed layer.")
    mask: LayerMaskConfig = Field(default_factory=LayerMaskConfig, description="Selective layer mask schedule.")
    orth_weight: float = Field(1.0, ge=0.0, description="Weight of the orthogonality loss.")
    orth_self: bool = Field(True, description="Include ||U_j^T U_j - I||^2 (basis orthonormality) in it.")
    spectral_weight: float = Field(0.1, ge=0.0, description="Weight of the spectral-consistency loss.")
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout before the linear head.")
    head_norm: bool = Field(
        True,
        description="LayerNorm on pooled features before the head (CNN features such as CenterFace's have "
        "an arbitrary scale; normalising them makes one head learning rate fit every backbone).",
    )
    freeze_non_svd: bool = Field(
        True,
        description="Freeze every backbone parameter outside the artifact subspaces (norms, embeddings, "
        "undecomposed and depthwise layers; BatchNorm statistics too).",
    )

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: str) -> str:
        if value == "auto" or value in LAYER_PRESETS:
            return value
        if value.startswith("re:"):
            try:
                re.compile(value[3:])
            except re.error as err:
                raise ValueError(f"invalid regex {value[3:]!r}: {err}") from None
            return value
        raise ValueError(f"expected auto, {', '.join(LAYER_PRESETS)} or 're:<regex>', got {value!r}")


def _block_same(num: int, k: int, device: torch.device) -> torch.Tensor:
    ids = torch.arange(num * k, device=device) // k
    return ids[:, None] == ids[None, :]


def orthogonality_loss(layer: SVDLayer, include_self: bool = True) -> torch.Tensor:
    """Orthogonality penalty of one SVD layer (see module docstring); 0 for its SVD initialisation."""
    K, k = layer.plan.num_subspaces, layer.plan.subspace_rank
    U, V = layer.artifact_bases()
    same = _block_same(K, k, U.device)
    eye = torch.eye(K * k, device=U.device, dtype=U.dtype)
    total = U.new_zeros(())
    for B, P in ((U, layer.principal_U), (V, layer.principal_V)):
        gram = B.transpose(0, 1) @ B
        total = total + gram.square().masked_fill(same, 0.0).sum() / 2
        if include_self:
            total = total + (gram - eye).square().masked_fill(~same, 0.0).sum()
        if P.numel():
            total = total + (P.transpose(0, 1) @ B).square().sum()
    return total


def spectral_loss(layer: SVDLayer) -> torch.Tensor:
    """Spectral-consistency penalty of one SVD layer (see module docstring); 0 at init."""
    W = layer.weight2d()
    fro = (W.square().sum().sqrt() / layer.init_norm - 1.0).square()
    k = layer.plan.subspace_rank
    floor = 0.01 * k * layer.mean_sq_singular
    dev = torch.stack(
        [(s - s0).square().sum() / (s0.square().sum() + floor) for s, s0 in zip(layer.S, layer.init_S)]
    ).mean()
    return fro + dev


class MASMDetector(Detector):
    """MASM detector (see module docstring). Attributes beyond Detector's: `pretrained`,
    `backbone_source`, `svd_layer_names`, `mask` (LayerMask)."""

    method = "masm"

    def __init__(self, cfg: MASMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        bb = create_backbone(cfg.backbone, cfg.weights, cfg.image_size)
        self.input_size = bb.input_size
        self.mean = bb.mean
        self.std = bb.std
        self.pretrained = bb.pretrained
        self.backbone_source = bb.source
        self.backbone_name = bb.name
        self.backbone = bb.module
        if cfg.freeze_non_svd:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self.svd_layer_names = decompose(self.backbone, cfg.svd, include=layer_predicate(cfg.layers, bb.kind))
        if not self.svd_layer_names:
            raise ConfigError(
                f"masm: no layer of backbone {cfg.backbone!r} matched layers={cfg.layers!r} with room for an "
                "artifact subspace (check `layers`, `svd.subspace_rank`, `svd.max_artifact_fraction`)"
            )
        self.feature_norm: nn.Module = nn.LayerNorm(bb.feature_dim) if cfg.head_norm else nn.Identity()
        self.head_dropout = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(bb.feature_dim, 1)
        self.mask = LayerMask(list(svd_layers(self.backbone)), cfg.mask)

    # ---------------------------------------------------------------------------- Detector interface
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_norm(self.backbone(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(features)).squeeze(-1)

    def losses(self, output: DetectorOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        bce = F.binary_cross_entropy_with_logits(output.logit, labels.float())
        orth = self.orthogonality_loss()
        spectral = self.spectral_loss()
        total = bce + self.cfg.orth_weight * orth + self.cfg.spectral_weight * spectral
        return {"bce": bce, "orth": orth, "spectral": spectral, "total": total}

    def on_after_backward(self, step: int) -> None:
        self.mask.apply(step)

    def export_module(self) -> nn.Module:
        """A deep copy with every SVD layer folded into a plain Linear/Conv2d, in eval mode."""
        out = copy.deepcopy(self)
        fold(out.backbone)
        out.mask = LayerMask([], self.cfg.mask)
        return out.eval()

    # ------------------------------------------------------------------------------------- helpers
    def svd_modules(self) -> list[SVDLayer]:
        return [layer for _, layer in svd_layers(self.backbone)]

    def orthogonality_loss(self) -> torch.Tensor:
        """Mean over decomposed layers of `orthogonality_loss(layer)`."""
        layers = self.svd_modules()
        return torch.stack([orthogonality_loss(layer, self.cfg.orth_self) for layer in layers]).mean()

    def spectral_loss(self) -> torch.Tensor:
        """Mean over decomposed layers of `spectral_loss(layer)`."""
        return torch.stack([spectral_loss(layer) for layer in self.svd_modules()]).mean()

    def mask_state(self) -> dict[str, list[bool]]:
        """Layer name -> active flag per artifact subspace (for logging)."""
        return self.mask.state()

    def mask_summary(self) -> dict[str, float]:
        return self.mask.summary()

    def train(self, mode: bool = True) -> MASMDetector:
        """As nn.Module.train, but with freeze_non_svd the backbone's BatchNorms stay in eval mode."""
        super().train(mode)
        if mode and self.cfg.freeze_non_svd:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
