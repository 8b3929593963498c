"""Restorer pseudo-fakes: the face re-rendered by a small network trained here on real faces.

Filters (cleaner.py) imitate what a restorer leaves; this recipe runs a real one. Modern swappers render
the face with a 128-512 px encoder-decoder (inswapper works on a 128 px aligned crop, DeepFaceLab's
SAEHD at 128-256, SimSwap at 224), often clean it with a restoration network, and paste the result back
with a bilinear or bicubic warp. What they leave is a decoder's texture: learned transposed convolutions,
detail synthesised from a bottleneck instead of captured, and an upsampling from the generator's
resolution to the frame's.

`RestorerNet` (restorer_net.py, the torch half; this module needs only numpy and OpenCV) is such a decoder, small enough to train on the CPU in minutes: no skip connections, so
every output pixel is synthesised from an 4x-downsampled bottleneck, and transposed-convolution
upsampling, as in the autoencoders of DeepFaceLab and faceswap. It is trained as a restorer: a real
crop degraded (down-scaled, noisy, JPEG) goes in, the crop itself is the target. `swapwatch train` trains
it from the run's own training crops the first time a recipe asks for the `restored` pseudo-fake and
keeps it at `restored.weights` (never on validation faces or genuine fakes).

The recipe (`restored_face`): the aligned crop at a generator resolution goes through the network, is
upsampled back to the crop, colour-matched inside the mask (swappers transfer the target's colour), is
optionally re-sharpened, and blended through the same hull masks as the other recipes. Its real partner
is the untouched crop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from pydantic import Field, field_validator

from swapwatch.train.pseudofakes.masks import HullBlendConfig, check_face_inputs
from swapwatch.train.pseudofakes.self_blend import blend, draw_ratio

Range = tuple[float, float]
DOWN = 4
"""The network's total downsampling: input sides must be multiples of it."""


class RestorerConfig(HullBlendConfig):
    """Where the restorer network lives, how it is trained, and how its faces are blended back."""

    weights: Path = Field(Path("runs/restorer/restorer.pt"), description="The trained network (trained by `swapwatch train` when missing).")
    width: int = Field(32, ge=8, le=128, description="Channels of the first layer (doubled twice below).")
    train_steps: int = Field(1500, ge=1, description="Training steps when the weights must be trained.")
    train_batch: int = Field(16, ge=1, description="Training batch size.")
    train_size: int = Field(96, ge=32, multiple_of=DOWN, description="Training crop side.")
    work_sizes: list[int] = Field([96, 128, 160], min_length=1, description="Generator resolutions to choose from (multiples of 4).")
    input_jpeg_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance the network's input is JPEG-compressed first.")
    colour_match_prob: float = Field(0.8, ge=0.0, le=1.0, description="Chance of matching the face's colour statistics to the crop.")
    sharpen_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of an unsharp mask after upsampling (restorer post-pass).")

    @field_validator("work_sizes")
    @classmethod
    def _sides(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if s < DOWN or s % DOWN]
        if bad:
            raise ValueError(f"work sizes must be positive multiples of {DOWN}, got {bad}")
        return v


def degrade_input(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the restorer learns to undo: a lower resolution, sensor noise and a JPEG pass, each at random."""
    size = img.shape[0]
    out = img
    if rng.random() < 0.7:
        side = int(size * rng.uniform(0.35, 0.8))
        out = cv2.resize(cv2.resize(out, (side, side), interpolation=cv2.INTER_AREA), (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        noisy = out.astype(np.float32) + rng.normal(0.0, rng.uniform(2.0, 8.0), out.shape).astype(np.float32)
        out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(30, 90))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        out = out if decoded is None else decoded
    return out


def colour_match(face: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift `face`'s per-channel Lab mean and spread inside `mask` to `target`'s (Reinhard transfer)."""
    sel = mask > 0.5
    if sel.sum() < 16:
        return face
    f = cv2.cvtColor(face, cv2.COLOR_BGR2LAB).astype(np.float32)
    t = cv2.cvtColor(target, cv2.COLOR_BGR2LAB).astype(np.float32)
    fm, fs = f[sel].mean(0), f[sel].std(0) + 1e-3
    tm, ts = t[sel].mean(0), t[sel].std(0) + 1e-3
    out = (f - fm) * (ts / fs) + tm
    return cv2.cvtColor(np.clip(np.rint(out), 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


Render = Callable[[np.ndarray], np.ndarray]
"""A BGR uint8 image (sides multiples of DOWN) -> the restorer network's rendering of it (restorer_net.run_net)."""


def restored_face(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, render: Render,
                  cfg: RestorerConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fake, mask): the crop rendered by the restorer at a generator resolution, pasted back into the crop."""
    cfg = cfg or RestorerConfig()
    lm = check_face_inputs(crop, landmarks)
    size = crop.shape[0]
    side = int(rng.choice(cfg.work_sizes))
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    if rng.random() < cfg.input_jpeg_prob:
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(50, 95))])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        small = small if decoded is None else decoded
    rendered = render(small)
    interp = cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC
    face = cv2.resize(rendered, (size, size), interpolation=interp)
    mask = cfg.draw_mask(lm, size, rng)
    if rng.random() < cfg.colour_match_prob:
        face = colour_match(face, crop, mask)
    if rng.random() < cfg.sharpen_prob:
        amount = float(rng.uniform(0.3, 1.0))
        soft = cv2.GaussianBlur(face, (0, 0), float(rng.uniform(0.8, 1.5)))
        face = cv2.addWeighted(face, 1.0 + amount, soft, -amount, 0)
    ratio = draw_ratio(rng, cfg.ratio, cfg.ratio_one_prob)
    return blend(crop, face, mask, ratio), (mask * np.float32(ratio)).astype(np.float32)
