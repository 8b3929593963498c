"""Self-blended pseudo-fakes (the idea of Self-Blended Images, Shiohara & Yamasaki, CVPR 2022).

A face swap pastes a face that differs slightly from its surroundings in colour, sharpness, position
and scale. We imitate that with one real image: a *source* copy of the crop is colour-jittered,
sharpened or blurred, optionally resized down and up, and shifted/rescaled by a few percent; it is then
blended into the *target* through a soft face-hull mask:

    fake = target + mask * ratio * (source - target)

Design choices (and why):

* The target is the untouched crop, so every pixel where mask == 0 is bit-identical to the real image:
  the only evidence of fakery is inside and on the blending boundary. Quality degradations (JPEG, blur,
  downscale, noise) are NOT applied here but by `swapwatch.train.degrade.degrade` to real and fake
  samples alike, afterwards.
* Blur and downscale of the source teach a model "soft = fake" when they are the only sharpness change
  fakes carry (what our first experiment learned, see FACTS.md). So the sharpness op is sharpen OR blur
  with equal odds, the resize-down-up op is mild and not always on, and the whole image quality is then
  randomised for both classes by `degrade`. What remains as a signal is the *mismatch* between the
  inside and outside of the mask, not the absolute sharpness.
* All ops are whole-image cv2/numpy calls (no per-pixel Python), about 1-2 ms at 224 px.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field, model_validator

from swapwatch.config import StrictModel
from swapwatch.train.pseudofakes.masks import MaskConfig, check_face_inputs, face_hull_mask

Range = tuple[float, float]


class SelfBlendConfig(StrictModel):
    """Augmentations that make the source differ from the target, the mask, and the blend ratio."""

    color_prob: float = Field(0.8, ge=0.0, le=1.0, description="Chance of colour-jittering the source.")
    hue_shift: float = Field(6.0, ge=0.0, le=90.0, description="Max absolute hue shift (OpenCV units: 180 = a turn).")
    saturation_scale: Range = Field((0.85, 1.15), description="Saturation multiplier range.")
    brightness_shift: float = Field(0.08, ge=0.0, le=1.0, description="Max absolute brightness shift, fraction of 255.")
    contrast_scale: Range = Field((0.9, 1.1), description="Contrast multiplier range (about the mean).")
    rgb_shift: float = Field(10.0, ge=0.0, le=128.0, description="Max absolute per-channel offset (0-255 units).")
    sharpness_prob: float = Field(0.6, ge=0.0, le=1.0, description="Chance of sharpening or blurring the source.")
    sharpen_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance a sharpness op sharpens (else it blurs).")
    sharpen_amount: Range = Field((0.3, 1.2), description="Unsharp-mask amount range.")
    blur_sigma: Range = Field((0.4, 1.2), description="Source Gaussian blur sigma range (pixels).")
    resize_prob: float = Field(0.25, ge=0.0, le=1.0, description="Chance of resizing the source down and back up.")
    resize_scale: Range = Field((0.6, 0.95), description="Down-scale factor range for that resize.")
    shift_prob: float = Field(0.8, ge=0.0, le=1.0, description="Chance of shifting/rescaling the source.")
    translate: float = Field(0.03, ge=0.0, le=0.2, description="Max absolute source shift per axis, fraction of S.")
    scale: Range = Field((0.95, 1.05), description="Source rescale range (about the landmarks' centre).")
    mask: MaskConfig = Field(default_factory=MaskConfig, description="Face-hull mask geometry and deformation.")
    ratio: Range = Field((0.25, 1.0), description="Blend ratio range (1 = source fully replaces the masked region).")
    ratio_one_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance the blend ratio is exactly 1.")
    min_change: float = Field(
        2.0, ge=0.0, le=64.0,
        description="Floor on the mean change inside the mask (gray levels); weaker draws get a higher ratio. "
        "Not applied when the drawn ratio is 0.",
    )

    @model_validator(mode="after")
    def _ranges(self) -> SelfBlendConfig:
        for name in ("saturation_scale", "contrast_scale", "sharpen_amount", "blur_sigma", "resize_scale",
                     "scale", "ratio"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name}: need 0 <= low <= high, got ({lo}, {hi})")
        if self.ratio[1] > 1.0:
            raise ValueError(f"ratio: must lie in [0, 1], got {self.ratio}")
        if self.resize_scale[0] <= 0 or self.resize_scale[1] > 1.0:
            raise ValueError(f"resize_scale: must lie in (0, 1], got {self.resize_scale}")
        if self.scale[0] <= 0:
            raise ValueError(f"scale: must be positive, got {self.scale}")
        return self


def color_jitter(img: np.ndarray, rng: np.random.Generator, cfg: SelfBlendConfig) -> np.ndarray:
    """HSV shift, brightness/contrast and a per-channel offset on a uint8 BGR image.

    Every step is a per-value mapping, so each is one cv2.LUT call (about 0.2 ms at 224 px).
    """
    values = np.arange(256, dtype=np.float32)
    hue_shift = round(rng.uniform(-cfg.hue_shift, cfg.hue_shift))
    sat = rng.uniform(*cfg.saturation_scale)
    hue_lut = np.where(values < 180, (values + hue_shift) % 180, values)
    hsv_lut = np.stack([hue_lut, np.clip(values * sat, 0, 255), values], axis=1)
    hsv = cv2.LUT(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), hsv_lut.astype(np.uint8).reshape(256, 1, 3))
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    c = rng.uniform(*cfg.contrast_scale)
    mean = float(np.mean(cv2.mean(out)[:3]))
    shift = rng.uniform(-cfg.brightness_shift, cfg.brightness_shift) * 255.0
    per_channel = rng.uniform(-cfg.rgb_shift, cfg.rgb_shift, size=3)
    bgr_lut = (values[:, None] - mean) * c + mean + shift + per_channel[None, :]
    return cv2.LUT(out, np.clip(bgr_lut, 0, 255).astype(np.uint8).reshape(256, 1, 3))


def sharpen_or_blur(img: np.ndarray, rng: np.random.Generator, cfg: SelfBlendConfig) -> np.ndarray:
    """Unsharp mask or Gaussian blur, chosen by `sharpen_prob`."""
    if rng.random() < cfg.sharpen_prob:
        amount = rng.uniform(*cfg.sharpen_amount)
        soft = cv2.GaussianBlur(img, (0, 0), 1.0)
        return cv2.addWeighted(img, 1.0 + amount, soft, -amount, 0)
    sigma = rng.uniform(*cfg.blur_sigma)
    return cv2.GaussianBlur(img, (0, 0), sigma)


_INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)


def resize_down_up(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Down-scale by `factor` and back to the original size with random interpolations."""
    h, w = img.shape[:2]
    sw, sh = max(2, round(w * factor)), max(2, round(h * factor))
    small = cv2.resize(img, (sw, sh), interpolation=_INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))])
    return cv2.resize(small, (w, h), interpolation=_INTERPOLATIONS[int(rng.integers(3))])


def shift_scale(img: np.ndarray, centre: np.ndarray, rng: np.random.Generator, cfg: SelfBlendConfig) -> np.ndarray:
    """Shift by a few percent and rescale about `centre`: the landmark/boundary mismatch of a swap."""
    size = img.shape[0]
    s = rng.uniform(*cfg.scale)
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * size
    cx, cy = float(centre[0]), float(centre[1])
    m = np.array([[s, 0.0, (1 - s) * cx + tx], [0.0, s, (1 - s) * cy + ty]], np.float32)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray, ratio: float) -> np.ndarray:
    """target + mask*ratio*(source - target), rounded to uint8. Exact copy of target where mask*ratio == 0.

    Only the mask's bounding box is computed (the face is a fraction of the crop).
    """
    out = target.copy()
    if ratio <= 0:
        return out
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    if w == 0 or h == 0:
        return out
    box = (slice(y, y + h), slice(x, x + w))
    weight = (mask[box] * np.float32(ratio))[..., None]
    t = target[box].astype(np.float32)
    mixed = t + weight * (source[box].astype(np.float32) - t)
    out[box] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def draw_ratio(rng: np.random.Generator, ratio: Range, one_prob: float) -> float:
    """Blend ratio: 1 with chance `one_prob`, else uniform in `ratio`."""
    if rng.random() < one_prob:
        return 1.0
    return float(rng.uniform(*ratio))


def self_blend(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               cfg: SelfBlendConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Make a self-blended pseudo-fake from one aligned real crop.

    Returns (fake uint8 BGR (S, S, 3), mask float32 (S, S)); the mask is the blend weight actually used
    (hull mask * ratio): wherever it is 0 the fake equals the crop bit for bit.
    """
    cfg = cfg or SelfBlendConfig()
    lm = check_face_inputs(crop, landmarks)
    size = crop.shape[0]
    mask = face_hull_mask(lm, size, rng, cfg.mask)
    source = crop
    if rng.random() < cfg.color_prob:
        source = color_jitter(source, rng, cfg)
    if rng.random() < cfg.sharpness_prob:
        source = sharpen_or_blur(source, rng, cfg)
    if rng.random() < cfg.resize_prob:
        source = resize_down_up(source, float(rng.uniform(*cfg.resize_scale)), rng)
    if rng.random() < cfg.shift_prob or source is crop:
        # Never a no-op: a "fake" identical to its real crop would be a mislabelled sample.
        source = shift_scale(source, lm.mean(axis=0), rng, cfg)
    ratio = draw_ratio(rng, cfg.ratio, cfg.ratio_one_prob)
    if ratio > 0 and cfg.min_change > 0:
        source, ratio = _enforce_min_change(crop, source, mask, ratio, lm.mean(axis=0), rng, cfg)
    fake = blend(crop, source, mask, ratio)
    return fake, (mask * np.float32(ratio)).astype(np.float32)


def _masked_change(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    """Mean absolute difference (gray levels, over channels) where `inside` is nonzero (uint8 mask)."""
    return float(np.mean(cv2.mean(cv2.absdiff(a, b), mask=inside)[:3]))


def _enforce_min_change(crop: np.ndarray, source: np.ndarray, mask: np.ndarray, ratio: float, centre: np.ndarray,
                        rng: np.random.Generator, cfg: SelfBlendConfig) -> tuple[np.ndarray, float]:
    """Make the mean change inside the mask reach `cfg.min_change` gray levels where possible.

    About 1-2 % of unconstrained draws (weak ops, a 0.25 ratio, a flat face) change the face by under
    two gray levels; after JPEG such a "fake" is its real crop with a fake label, i.e. label noise. Too
    weak a source gets up to three extra colour+shift rounds; then the ratio is raised (up to 1).
    """
    inside = (mask > 0.5).astype(np.uint8)
    if not inside.any():
        return source, ratio
    change = _masked_change(source, crop, inside)
    for _ in range(3):
        if change >= cfg.min_change:
            break
        source = shift_scale(color_jitter(source, rng, cfg), centre, rng, cfg)
        change = _masked_change(source, crop, inside)
    if change > 0 and change * ratio < cfg.min_change:
        ratio = min(1.0, cfg.min_change / change)
    return source, ratio
