"""Generator-style pseudo-fakes: the inner face re-rendered through a random upsampling "decoder".

GAN and autoencoder face-swap generators (DeepFaceLab, SimSwap, FaceShifter, ...) produce the face from
a low-resolution feature map through repeated 2x upsampling. Transposed convolutions, and zero insertion
followed by a learned kernel in general, leave uneven kernel overlap: a periodic checkerboard whose
spectrum has peaks at multiples of 1/f of the sampling rate (Odena et al., "Deconvolution and
Checkerboard Artifacts", 2016; Frank et al., "Leveraging Frequency Analysis for Deep Fake Image
Recognition", 2020). Nearest/bilinear/bicubic upsampling leave weaker, smoother fingerprints. These
periodic high-frequency traces are what the frequency stream of the AIRL model is meant to pick up.

We imitate a decoder without training one:

1. optionally resample the crop into a slightly rotated/rescaled "generator frame" (a real swap is made
   in its own aligned frame and warped back, so its grid is neither axis-aligned nor at an integer period
   in our crop);
2. down-sample by a random integer factor f (2-4) with area averaging, at a random grid phase;
3. up-sample by f with nearest (+ a random smooth 3x3, i.e. resize-convolution), bilinear, bicubic, or
   zero insertion + a random smooth kernel (a tent
   interpolator whose taps are randomly perturbed, so the polyphase gains differ and the checkerboard
   appears, of a controlled strength);
4. optionally a mild random 3x3 "refinement" convolution and a per-channel colour shift;
5. warp back and blend into the untouched crop through a soft inner-face mask (outside the mask the
   result is bit-identical to the crop).

Trade-offs: a real decoder's fingerprint depends on its learned weights and on the many layers stacked;
one random stage is a coarse stand-in that teaches "periodic high-frequency structure confined to the
inner face", not any specific generator. Everything is whole-image cv2 (about 1-2 ms at 224 px).
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field, field_validator, model_validator

from swapwatch.config import StrictModel
from swapwatch.train.pseudofakes.masks import InnerMaskConfig, check_face_inputs, inner_face_mask
from swapwatch.train.pseudofakes.self_blend import blend, draw_ratio

Range = tuple[float, float]

UPSAMPLERS = ("nearest", "bilinear", "bicubic", "zero_insert")


def check_weights(value: dict[str, float], allowed: tuple[str, ...], what: str) -> dict[str, float]:
    """Validate a name -> weight table: known names, weights >= 0, positive sum (messages name the key)."""
    for key, w in value.items():
        if key not in allowed:
            raise ValueError(f"unknown {what} {key!r}; allowed: {', '.join(allowed)}")
        if not w >= 0:  # also rejects NaN
            raise ValueError(f"weight of {key!r} must be >= 0, got {w}")
    if not value or sum(value.values()) <= 0:
        raise ValueError(f"{what} weights must have a positive sum, got {value}")
    return value


class ReconstructConfig(StrictModel):
    """The random decoder stage and how its output is blended back."""

    factors: list[int] = Field([2, 3, 4], min_length=1, description="Down/up-sampling factors to choose from.")
    upsample: dict[str, float] = Field(
        {"nearest": 0.15, "bilinear": 0.2, "bicubic": 0.2, "zero_insert": 0.45},
        description=f"Relative weights of the up-samplers ({', '.join(UPSAMPLERS)}).",
    )
    checker_strength: Range = Field(
        (0.03, 0.2), description="Zero-insertion kernel tap perturbation range (0 = a perfect tent interpolator)."
    )
    refine_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of a random 3x3 refinement convolution.")
    refine_strength: Range = Field((0.02, 0.12), description="Std range of the refinement kernel's perturbation.")
    color_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of a per-channel gain/offset colour shift.")
    color_gain: Range = Field((0.97, 1.03), description="Per-channel gain range.")
    color_offset: float = Field(6.0, ge=0.0, le=64.0, description="Max absolute per-channel offset (0-255 units).")
    resample_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of decoding in a rotated/rescaled frame.")
    resample_scale: Range = Field((0.8, 1.25), description="Scale range of that generator frame.")
    resample_rotate_deg: float = Field(8.0, ge=0.0, le=45.0, description="Max absolute rotation of that frame.")
    mask: InnerMaskConfig = Field(default_factory=InnerMaskConfig, description="Inner-face mask settings.")
    ratio: Range = Field((0.6, 1.0), description="Blend ratio range.")
    ratio_one_prob: float = Field(0.6, ge=0.0, le=1.0, description="Chance the blend ratio is exactly 1.")

    @field_validator("factors")
    @classmethod
    def _factors(cls, v: list[int]) -> list[int]:
        bad = [f for f in v if not 2 <= f <= 8]
        if bad:
            raise ValueError(f"factors must lie in [2, 8], got {bad}")
        return v

    @field_validator("upsample")
    @classmethod
    def _upsample(cls, v: dict[str, float]) -> dict[str, float]:
        return check_weights(v, UPSAMPLERS, "upsampler")

    @model_validator(mode="after")
    def _ranges(self) -> ReconstructConfig:
        for name in ("checker_strength", "refine_strength", "color_gain", "resample_scale", "ratio"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name}: need 0 <= low <= high, got ({lo}, {hi})")
        if self.ratio[1] > 1.0:
            raise ValueError(f"ratio: must lie in [0, 1], got {self.ratio}")
        if self.resample_scale[0] <= 0:
            raise ValueError(f"resample_scale: must be positive, got {self.resample_scale}")
        return self


def zero_insert_kernel(factor: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """(2f-1, 2f-1) float32 kernel: a separable tent interpolator with randomly perturbed taps.

    The plain tent has equal polyphase sums (each output phase gets total weight 1) and leaves no
    checkerboard on flat regions; perturbing each tap by up to +-strength makes the phases unequal,
    which is what an imperfect learned transposed-conv kernel does. The total is kept at f*f so the
    mean brightness survives the zero insertion.
    """
    i = np.arange(2 * factor - 1, dtype=np.float32)
    tent = 1.0 - np.abs(i - (factor - 1)) / factor
    k = np.outer(tent, tent) * (1.0 + strength * rng.uniform(-1.0, 1.0, size=(2 * factor - 1,) * 2))
    k = np.maximum(k, 0.0)
    return (k * (factor * factor / k.sum())).astype(np.float32)


def upsample(small: np.ndarray, factor: int, method: str, rng: np.random.Generator,
             strength: Range = (0.03, 0.2)) -> np.ndarray:
    """Up-sample a float32 (h, w, 3) image by an integer factor with the named method."""
    h, w = small.shape[:2]
    if method == "zero_insert":
        up = np.zeros((h * factor, w * factor, small.shape[2]), np.float32)
        c = (factor - 1) // 2
        up[c::factor, c::factor] = small
        k = zero_insert_kernel(factor, float(rng.uniform(*strength)), rng)
        return cv2.filter2D(up, -1, k, borderType=cv2.BORDER_REFLECT101)
    interp = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}.get(method)
    if interp is None:
        raise ValueError(f"unknown upsampler {method!r}; allowed: {', '.join(UPSAMPLERS)}")
    up = cv2.resize(small, (w * factor, h * factor), interpolation=interp)
    if method == "nearest":
        # "Resize-convolution" decoders follow nearest up-sampling with a learned conv; a random smooth
        # 3x3 stands in for it (bare nearest x4 gives blocks no generator outputs).
        k = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5]) * rng.uniform(0.5, 1.5, size=(3, 3))
        up = cv2.filter2D(up, -1, (k / k.sum()).astype(np.float32), borderType=cv2.BORDER_REFLECT101)
    return up


def decode(img: np.ndarray, factor: int, method: str, rng: np.random.Generator,
           strength: Range = (0.03, 0.2)) -> np.ndarray:
    """Area down-sample by `factor` at a random grid phase, then up-sample back: float32, same shape."""
    size_h, size_w = img.shape[:2]
    off_y, off_x = (int(v) for v in rng.integers(0, factor, size=2))
    pad_b = (-(size_h + off_y)) % factor
    pad_r = (-(size_w + off_x)) % factor
    work = cv2.copyMakeBorder(img, off_y, pad_b, off_x, pad_r, cv2.BORDER_REFLECT101).astype(np.float32)
    hh, ww = work.shape[:2]
    small = cv2.resize(work, (ww // factor, hh // factor), interpolation=cv2.INTER_AREA)
    up = upsample(small, factor, method, rng, strength)
    return up[off_y:off_y + size_h, off_x:off_x + size_w]


def _similarity(centre: np.ndarray, rng: np.random.Generator, cfg: ReconstructConfig) -> np.ndarray:
    s = rng.uniform(*cfg.resample_scale)
    angle = rng.uniform(-cfg.resample_rotate_deg, cfg.resample_rotate_deg)
    return cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), float(s))


def reconstruct_blend(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                      cfg: ReconstructConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-render the inner face through a random decoder and blend it back into the crop.

    Returns (fake uint8 BGR (S, S, 3), mask float32 (S, S)); the mask is the blend weight used
    (inner mask * ratio): wherever it is 0 the fake equals the crop bit for bit.
    """
    cfg = cfg or ReconstructConfig()
    lm = check_face_inputs(crop, landmarks)
    size = crop.shape[0]
    mask = inner_face_mask(lm, size, rng, cfg.mask)

    warp = _similarity(lm.mean(axis=0), rng, cfg) if rng.random() < cfg.resample_prob else None
    work = crop if warp is None else cv2.warpAffine(
        crop, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)

    factor = int(rng.choice(cfg.factors))
    names = list(cfg.upsample)
    p = np.asarray([cfg.upsample[n] for n in names], np.float64)
    method = names[int(rng.choice(len(names), p=p / p.sum()))]
    out = decode(work, factor, method, rng, cfg.checker_strength)

    if rng.random() < cfg.refine_prob:
        k = np.zeros((3, 3), np.float32)
        k[1, 1] = 1.0
        k += rng.normal(0.0, rng.uniform(*cfg.refine_strength), size=(3, 3)).astype(np.float32)
        s = float(k.sum())
        if abs(s) > 0.5:  # keep the brightness; a degenerate draw is simply skipped
            out = cv2.filter2D(out, -1, k / s, borderType=cv2.BORDER_REFLECT101)
    if rng.random() < cfg.color_prob:
        gain = rng.uniform(*cfg.color_gain, size=3).astype(np.float32)
        offset = rng.uniform(-cfg.color_offset, cfg.color_offset, size=3).astype(np.float32)
        out = out * gain + offset
    out = np.clip(out, 0.0, 255.0)

    if warp is not None:
        out = cv2.warpAffine(out, warp, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT101)
    ratio = draw_ratio(rng, cfg.ratio, cfg.ratio_one_prob)
    fake = blend(crop, out, mask, ratio)
    return fake, (mask * np.float32(ratio)).astype(np.float32)
