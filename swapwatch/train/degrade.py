"""Image-quality degradations: random ones for training, fixed levels for robustness evaluation.

Why this exists: a detector trained on self-blended pseudo-fakes learned "soft/low-resolution = fake"
(FACTS.md, first from-scratch experiment), because only the fakes carried blur and resampling. The
training loop therefore applies `degrade` to real AND fake samples, after pseudo-fake generation, with
the same distribution for both classes, so image quality never predicts the label; the only remaining
evidence is what differs *within* a fake (its blended region vs the rest).

Kinds (shared by training and evaluation):

* "jpeg"      - JPEG re-encoding at a quality (100 = near lossless, 30 = blocky);
* "blur"      - Gaussian blur with a sigma in pixels (out-of-focus, motion-free);
* "downscale" - down-scaling by a factor (< 1) and back up to the original size (low-resolution
                sources, video conferencing scalers);
* "noise"     - additive Gaussian noise with a sigma in 0-255 units (sensor noise).

`degrade` draws a random subset (each kind with its own probability, at most `max_ops`) in a random
order with random strengths and random interpolations. `apply_degradation` applies one kind at one
level deterministically (fixed interpolations, fixed noise seed) so robustness curves are reproducible;
`ROBUSTNESS_LEVELS` lists the levels from mild to severe.

Trade-off: real-world chains are usually resize -> noise -> JPEG; a random order also produces
"JPEG then blur" chains that are rarer in practice but harmless as augmentation, and it keeps the model
from keying on one fixed pipeline.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field, model_validator

from swapwatch.config import StrictModel

KINDS: tuple[str, ...] = ("jpeg", "blur", "downscale", "noise")

ROBUSTNESS_LEVELS: dict[str, list[float]] = {
    "jpeg": [90, 70, 50, 30],  # quality; lower is worse
    "blur": [0.5, 1.0, 2.0, 3.0],  # sigma in pixels
    "downscale": [0.75, 0.5, 0.35, 0.25],  # scale factor before upscaling back
    "noise": [2.0, 5.0, 10.0, 20.0],  # sigma in 0-255 units
}

# Valid level range per kind (inclusive), used by both the config validator and apply_degradation.
_LIMITS: dict[str, tuple[float, float]] = {
    "jpeg": (1.0, 100.0),
    "blur": (0.0, 20.0),
    "downscale": (0.05, 1.0),
    "noise": (0.0, 100.0),
}

_DOWN_INTERP = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)
_UP_INTERP = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)


class DegradeOp(StrictModel):
    """One degradation kind: how often it is drawn and its strength range."""

    prob: float = Field(..., ge=0.0, le=1.0, description="Chance the op is drawn for a sample.")
    low: float = Field(..., description="Lower end of the strength range (kind-specific units).")
    high: float = Field(..., description="Upper end of the strength range (kind-specific units).")

    @model_validator(mode="after")
    def _ordered(self) -> DegradeOp:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class DegradeConfig(StrictModel):
    """Random quality degradations applied identically to real and fake training samples."""

    jpeg: DegradeOp = Field(
        default_factory=lambda: DegradeOp(prob=0.5, low=30, high=100), description="JPEG quality range (1-100)."
    )
    blur: DegradeOp = Field(
        default_factory=lambda: DegradeOp(prob=0.3, low=0.3, high=2.0), description="Gaussian blur sigma (pixels)."
    )
    downscale: DegradeOp = Field(
        default_factory=lambda: DegradeOp(prob=0.3, low=0.35, high=1.0),
        description="Down-then-up scale factor range (0.05-1, random interpolations).",
    )
    noise: DegradeOp = Field(
        default_factory=lambda: DegradeOp(prob=0.2, low=1.0, high=8.0), description="Gaussian noise sigma (0-255)."
    )
    max_ops: int = Field(3, ge=0, le=len(KINDS), description="Most ops applied to one sample (random subset).")

    @model_validator(mode="after")
    def _limits(self) -> DegradeConfig:
        for kind in KINDS:
            op: DegradeOp = getattr(self, kind)
            lo, hi = _LIMITS[kind]
            if op.low < lo or op.high > hi:
                raise ValueError(f"{kind}: range ({op.low}, {op.high}) must lie within [{lo}, {hi}]")
        return self


def jpeg(img: np.ndarray, quality: float) -> np.ndarray:
    """Encode and decode as JPEG at `quality` (rounded, 1-100)."""
    q = round(min(max(quality, 1.0), 100.0))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for an image of shape {img.shape}")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if out is None:
        raise RuntimeError(f"JPEG decoding failed for an image of shape {img.shape}")
    return out


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; sigma <= 0.1 is a no-op (a kernel that small changes nothing visible)."""
    if sigma <= 0.1:
        return img.copy()
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT101)


def downscale(img: np.ndarray, factor: float, down: int = cv2.INTER_AREA, up: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize by `factor` (<= 1) and back to the original size."""
    h, w = img.shape[:2]
    sw, sh = max(1, round(w * factor)), max(1, round(h * factor))
    if (sw, sh) == (w, h):
        return img.copy()
    small = cv2.resize(img, (sw, sh), interpolation=down)
    return cv2.resize(small, (w, h), interpolation=up)


def noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive per-pixel, per-channel Gaussian noise (0-255 units), clipped to uint8."""
    n = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(img.astype(np.float32) + n, 0, 255).round().astype(np.uint8)


def _check_image(img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a (H, W, 3) uint8 BGR image, got {img.shape} {img.dtype}")


def apply_degradation(img: np.ndarray, kind: str, level: float) -> np.ndarray:
    """Apply one degradation at one level, deterministically (for robustness evaluation).

    Fixed choices: INTER_AREA down / INTER_LINEAR up for "downscale", noise from a fixed seed (0).
    Raises ValueError for an unknown kind (naming it and the allowed kinds) or an out-of-range level.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown degradation kind {kind!r}; allowed: {', '.join(KINDS)}")
    lo, hi = _LIMITS[kind]
    if not lo <= float(level) <= hi:
        raise ValueError(f"{kind}: level {level} outside [{lo}, {hi}]")
    _check_image(img)
    img = np.ascontiguousarray(img)
    if kind == "jpeg":
        return jpeg(img, level)
    if kind == "blur":
        return blur(img, level)
    if kind == "downscale":
        return downscale(img, level)
    return noise(img, level, np.random.default_rng(0))


def degrade(img: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig | None = None) -> np.ndarray:
    """Random quality degradation of a uint8 BGR image; same shape and dtype out.

    Each kind is drawn with its probability, the drawn set is shuffled and cut to `max_ops`, and each op
    gets a random strength from its range. Deterministic for a given rng state. Apply it to real and fake
    samples alike.
    """
    cfg = cfg or DegradeConfig()
    _check_image(img)
    img = np.ascontiguousarray(img)
    chosen = [k for k in KINDS if rng.random() < getattr(cfg, k).prob]
    order = [chosen[i] for i in rng.permutation(len(chosen))][: cfg.max_ops]
    out = img
    for kind in order:
        op: DegradeOp = getattr(cfg, kind)
        level = float(rng.uniform(op.low, op.high))
        if kind == "jpeg":
            out = jpeg(out, level)
        elif kind == "blur":
            out = blur(out, level)
        elif kind == "downscale":
            down = _DOWN_INTERP[int(rng.integers(len(_DOWN_INTERP)))]
            up = _UP_INTERP[int(rng.integers(len(_UP_INTERP)))]
            out = downscale(out, level, down, up)
        else:
            out = noise(out, level, rng)
    return out if out is not img else img.copy()
