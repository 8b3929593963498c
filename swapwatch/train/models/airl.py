"""AIRL: an RGB stream and a high-pass DCT frequency stream, fused into one head.

    x (normalised RGB) ─> RGB backbone ─> pooled (B, D_rgb) ─> LayerNorm ────────────────┐
      └─> HighPassDCT ─> (B, K, H/8, W/8) ─> BN ─> conv stack ─> GAP ─> LayerNorm ─┴─> concat
    concat ─> Linear ─> ReLU ─> Dropout = fused (B, fusion_dim)
    fused ─> Linear ─> fake logit (B,)                         (classify; the only exported path)
    fused ─> Linear ─> ReLU ─> Linear ─> L2 normalise = embedding (B, embed_dim)   (training only)

Training objective: total = BCE(logit, y) + supcon_weight * SupCon(embedding, y != 0). The SupCon term
sees binary labels, so every fake is one class whatever generator made it (see losses.py for why).

Design trade-offs:
- The frequency stream is deliberately small (three 3x3 conv blocks on an H/8 x W/8 map, 0.4 M
  parameters with the default widths): measured with torch's FlopCounterMode it costs ~0.076 GMAC at
  256 px, ~4% of EfficientNet-B4 at 256 px but ~15% of EfficientNet-B0 at 224 px (narrow it for B0).
- Each stream is LayerNorm-ed before the concat so neither dominates the fusion layer by scale alone
  (RGB pooled features and ReLU-ed frequency features have very different magnitudes).
- The contrastive loss acts on a separate projection head (SimCLR / SupCon practice) rather than on
  the fused feature itself, so the classifier's feature is not forced onto the unit sphere; the
  projection head is dropped at export (`export_module`).
- BatchNorm in the frequency stream needs batches larger than 1 in training (as the CNN backbones do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from swapwatch.config import StrictModel
from swapwatch.train.models.backbones import Backbone, create_backbone
from swapwatch.train.models.base import Detector, DetectorOutput
from swapwatch.train.models.dct import HighPassDCT
from swapwatch.train.models.losses import SupConLoss


class AIRLConfig(StrictModel):
    """Configuration of AIRLDetector."""

    method: Literal["airl"] = Field("airl", description="Detector method tag; always 'airl'.")
    rgb_backbone: str = Field(
        "efficientnet_b4",
        description="RGB stream backbone name for create_backbone (e.g. efficientnet_b4, resnet18, any timm name).",
    )
    rgb_weights: Path | None = Field(
        None, description="Local weights file for the RGB backbone; None = random init (nothing is downloaded)."
    )
    image_size: int = Field(
        256,
        ge=32,
        multiple_of=8,
        description="Square input size in pixels; a multiple of 8 so the 8x8 block DCT tiles it exactly.",
    )
    low_cut: int = Field(
        3,
        ge=1,
        le=14,
        description="DCT bands with u+v < low_cut are dropped (DC always); 3 drops the 6 smoothest bands.",
    )
    log_scale: float = Field(
        1.0, gt=0, description="Scale s in sign(c)*log1p(s*|c|) applied to DCT coefficients (0..255 gray scale)."
    )
    freq_widths: tuple[int, ...] = Field(
        (64, 128, 256),
        min_length=1,
        description="Output channels of the frequency CNN's 3x3 conv+BN+ReLU blocks; all but the first have stride 2.",
    )
    fusion_dim: int = Field(512, ge=8, description="Width of the fused feature that the classifier sees.")
    embed_dim: int = Field(128, ge=2, description="Width of the L2-normalised projection used by SupCon.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on the fused feature during training.")
    supcon_weight: float = Field(
        0.2,
        ge=0.0,
        description=(
            "Weight of SupCon in total = bce + w * supcon. 0.2 keeps BCE (the deployed objective) dominant: "
            "SupCon at tau=0.07 starts near log(B-1) (~4 at B=64), several times BCE's log 2, so w=0.2 puts "
            "the two on a similar scale early on. 0 disables it."
        ),
    )
    temperature: float = Field(0.07, gt=0.0, description="SupCon temperature tau (Khosla et al. use 0.07-0.1).")


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FrequencyStream(nn.Module):
    """High-pass DCT map -> small CNN -> global average pool: (B, 3, H, W) -> (B, widths[-1]).

    The input BatchNorm learns a per-band standardisation: high bands are far weaker than mid bands
    even after log compression, and a fixed scale would leave the first conv dominated by a few bands.
    """

    def __init__(
        self,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        low_cut: int,
        widths: tuple[int, ...],
        log_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.dct = HighPassDCT(mean, std, low_cut=low_cut, log_scale=log_scale)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.dct.out_channels)]
        c_in = self.dct.out_channels
        for i, w in enumerate(widths):
            layers.append(_conv_block(c_in, w, stride=1 if i == 0 else 2))
            c_in = w
        self.cnn = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(self.dct(x)).mean(dim=(2, 3))


class _AIRLScorer(nn.Module):
    """Export view of AIRL: normalised (B, 3, H, W) -> fake logit (B,), without the projection head."""

    def __init__(self, detector: AIRLDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector.classify(self.detector.features(x))


class AIRLDetector(Detector):
    """Two-stream (RGB + high-pass DCT) detector with BCE + binary supervised contrastive loss.

    `backbone` may be passed in (an already built Backbone, e.g. shared or a test double); otherwise it
    is built with create_backbone(cfg.rgb_backbone, cfg.rgb_weights, cfg.image_size).
    """

    method = "airl"

    def __init__(self, cfg: AIRLConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if backbone is None:
            backbone = create_backbone(cfg.rgb_backbone, weights=cfg.rgb_weights, image_size=cfg.image_size)
        self.input_size = cfg.image_size
        self.mean = tuple(float(v) for v in backbone.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in backbone.std)  # type: ignore[assignment]
        self.rgb_pretrained = bool(backbone.pretrained)
        self.rgb_source = str(backbone.source)
        # The names every Detector exposes (see Detector.backbone_info): the RGB stream is the pretrained part.
        self.pretrained = self.rgb_pretrained
        self.backbone_source = self.rgb_source
        self.backbone_name = cfg.rgb_backbone

        self.rgb = backbone.module
        self.freq = FrequencyStream(self.mean, self.std, cfg.low_cut, cfg.freq_widths, cfg.log_scale)
        self.rgb_norm = nn.LayerNorm(backbone.feature_dim)
        self.freq_norm = nn.LayerNorm(self.freq.out_dim)
        self.fusion = nn.Sequential(
            nn.Linear(backbone.feature_dim + self.freq.out_dim, cfg.fusion_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
        )
        self.head = nn.Linear(cfg.fusion_dim, 1)
        self.projection = nn.Sequential(
            nn.Linear(cfg.fusion_dim, cfg.fusion_dim),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.fusion_dim, cfg.embed_dim),
        )
        self.supcon = SupConLoss(temperature=cfg.temperature, binary=True)

    def stream_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two streams' pooled features before fusion: (B, D_rgb), (B, widths[-1])."""
        return self.rgb(x), self.freq(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        rgb, freq = self.stream_features(x)
        return self.fusion(torch.cat([self.rgb_norm(rgb), self.freq_norm(freq)], dim=1))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(1)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised projection of the fused feature, (B, embed_dim)."""
        return F.normalize(self.projection(features), dim=1)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        f = self.features(x)
        return DetectorOutput(logit=self.classify(f), embedding=self.embed(f))

    def losses(self, output: DetectorOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"bce", "supcon", "total"}. Integer labels: 0 = real, any non-zero = fake (kinds merged).

        Float labels are taken as BCE targets as given (e.g. smoothed) and thresholded at 0.5 for SupCon.
        """
        labels = labels.reshape(-1)
        if labels.is_floating_point():
            target = labels.to(output.logit.dtype)
            fake = labels >= 0.5
        else:
            fake = labels != 0
            target = fake.to(output.logit.dtype)
        bce = F.binary_cross_entropy_with_logits(output.logit, target)
        supcon = self.supcon(output.embedding, fake.long())
        return {"bce": bce, "supcon": supcon, "total": bce + self.cfg.supcon_weight * supcon}

    def export_module(self) -> nn.Module:
        """Logit-only view (no projection head) for ScoreModel / ONNX export; shares this model's weights."""
        return _AIRLScorer(self)
