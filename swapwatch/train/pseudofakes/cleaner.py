"""Pseudo-fakes in the other direction: an inner face *cleaner* than its context, and whole-crop synthesis.

Self-blends and decoder reconstructions teach "the inner face is blurrier or lower-resolution than its
surroundings". Modern swappers do the opposite: a 128-512 px generator renders the face, a restorer
(GFPGAN, CodeFormer, GPEN) cleans it, and the result is pasted into a frame that keeps its sensor noise,
compression grain and uneven light. What gives them away is the *inconsistency* of noise, sharpness and
texture statistics between the face and its surroundings, whichever way it goes. Two recipes:

* `clean_face`: the context gets capture grain (sensor noise, chroma noise, a JPEG pass) that the face
  does not; the face goes through a restorer-like chain (render at a generator resolution, edge-preserving
  smoothing of skin, re-sharpened edges, evened-out lighting, an optional fine synthetic texture) and is
  blended back through the same hull masks as the self-blends. The *real* partner of the pair is the
  grainy context itself (`PseudoFake.real`), so grain alone never predicts the label: only its absence
  from the face does.
* `whole_synth`: no blend boundary at all (a face generated whole, e.g. StyleGAN): the entire crop is
  re-rendered through a random up-sampling decoder whose kernel leaves periodic traces (zero insertion or
  resize-convolution), optionally followed by the same restorer smoothing. The real partner is the crop.

Why not plain filters alone: a planning run that only bilateral-filtered the inner face (FACTS.md) did
not move the modern swappers; here the filters are one stage of a chain that also changes the face's
resolution, texture and light, and the context changes with it.
All ops are whole-image cv2 calls (a few ms per 256 px crop).
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.train.pseudofakes.masks import HullBlendConfig, check_face_inputs
from swapwatch.train.pseudofakes.reconstruct import decode
from swapwatch.train.pseudofakes.self_blend import blend, draw_ratio

Range = tuple[float, float]


class CleanFaceConfig(HullBlendConfig):
    """The context's grain, the restorer chain on the face, and the blend."""

    context_noise: Range = Field((2.0, 9.0), description="Sensor-noise sigma added to the context (0-255 units).")
    chroma_noise_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance the context noise is per-channel (colour).")
    context_jpeg_prob: float = Field(0.7, ge=0.0, le=1.0, description="Chance of a JPEG pass over the grainy context.")
    context_jpeg: Range = Field((45.0, 92.0), description="JPEG quality range of that pass.")
    render_prob: float = Field(0.7, ge=0.0, le=1.0, description="Chance the face is rendered at a generator resolution.")
    render_scale: Range = Field((0.4, 0.9), description="Generator resolution as a fraction of the crop side.")
    smooth_strength: Range = Field((20.0, 70.0), description="Bilateral colour sigma of the skin smoothing.")
    edge_preserving_prob: float = Field(0.4, ge=0.0, le=1.0, description="Chance cv2.edgePreservingFilter smooths instead.")
    sharpen_amount: Range = Field((0.3, 1.2), description="Unsharp-mask amount that re-sharpens edges after smoothing.")
    texture_prob: float = Field(0.4, ge=0.0, le=1.0, description="Chance of adding fine synthetic skin texture.")
    texture_sigma: Range = Field((0.8, 2.5), description="Amplitude of that texture (0-255 units).")
    relight_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of evening out the face's low-frequency light.")
    relight_strength: Range = Field((0.2, 0.6), description="How far the light is pulled toward its smooth mean.")


class WholeSynthConfig(StrictModel):
    """Whole-crop re-rendering through a random periodic up-sampler."""

    factors: list[int] = Field([2], min_length=1, description="Down/up-sampling factors (4 mostly blurs: blur alone must not read as fake).")
    zero_insert_prob: float = Field(0.7, ge=0.0, le=1.0, description="Chance of zero insertion (else nearest + conv).")
    checker_strength: Range = Field((0.05, 0.25), description="Zero-insertion kernel tap perturbation range.")
    restore_prob: float = Field(0.3, ge=0.0, le=1.0, description="Chance the restorer smoothing follows.")
    restore: CleanFaceConfig = Field(default_factory=CleanFaceConfig, description="Restorer settings reused from clean_face.")


def add_grain(img: np.ndarray, rng: np.random.Generator, cfg: CleanFaceConfig) -> np.ndarray:
    """Sensor noise (grey or colour) and an optional JPEG pass: what a camera and a codec leave."""
    sigma = float(rng.uniform(*cfg.context_noise))
    shape = img.shape if rng.random() < cfg.chroma_noise_prob else (*img.shape[:2], 1)
    noisy = img.astype(np.float32) + rng.normal(0.0, sigma, size=shape).astype(np.float32)
    out: np.ndarray = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if rng.random() < cfg.context_jpeg_prob:
        q = int(rng.uniform(*cfg.context_jpeg))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        out = out if decoded is None else decoded
    return out


def restore(img: np.ndarray, rng: np.random.Generator, cfg: CleanFaceConfig) -> np.ndarray:
    """A restorer-like chain: generator resolution, skin smoothing, crisp edges, even light, fine texture."""
    size = img.shape[0]
    out = img
    if rng.random() < cfg.render_prob:
        side = max(32, round(size * rng.uniform(*cfg.render_scale)))
        small = cv2.resize(out, (side, side), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    if rng.random() < cfg.edge_preserving_prob:
        out = cv2.edgePreservingFilter(out, flags=cv2.RECURS_FILTER, sigma_s=float(rng.uniform(10, 40)),
                                       sigma_r=float(rng.uniform(0.1, 0.3)))
    else:
        sc = float(rng.uniform(*cfg.smooth_strength))
        out = cv2.bilateralFilter(out, d=0, sigmaColor=sc, sigmaSpace=float(rng.uniform(2.0, 5.0)))
    amount = float(rng.uniform(*cfg.sharpen_amount))
    soft = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.8, 1.6)))
    out = cv2.addWeighted(out, 1.0 + amount, soft, -amount, 0)
    f = out.astype(np.float32)
    if rng.random() < cfg.relight_prob:
        # Pull the low-frequency luminance toward its mean: restorers and generators light faces evenly.
        low = cv2.GaussianBlur(f, (0, 0), size / 12.0)
        strength = float(rng.uniform(*cfg.relight_strength))
        f = f - strength * (low - low.mean(axis=(0, 1), keepdims=True))
    if rng.random() < cfg.texture_prob:
        # Band-limited, spatially uniform "pores": synthesized detail, unlike sensor noise it is smooth.
        tex = rng.normal(0.0, 1.0, size=img.shape[:2]).astype(np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), 0.7) - cv2.GaussianBlur(tex, (0, 0), 2.0)
        tex *= float(rng.uniform(*cfg.texture_sigma)) / max(float(tex.std()), 1e-6)
        f = f + tex[..., None]
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def clean_face(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               cfg: CleanFaceConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fake, mask, real partner): a restored face pasted into a grainy context, and that context alone."""
    cfg = cfg or CleanFaceConfig()
    lm = check_face_inputs(crop, landmarks)
    size = crop.shape[0]
    mask = cfg.draw_mask(lm, size, rng)
    context = add_grain(crop, rng, cfg)
    face = restore(crop, rng, cfg)
    ratio = draw_ratio(rng, cfg.ratio, cfg.ratio_one_prob)
    return blend(context, face, mask, ratio), (mask * np.float32(ratio)).astype(np.float32), context


def whole_synth(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                cfg: WholeSynthConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fake, mask of ones): the whole crop re-rendered by a periodic up-sampler, optionally restored."""
    cfg = cfg or WholeSynthConfig()
    check_face_inputs(crop, landmarks)
    factor = int(rng.choice(cfg.factors))
    method = "zero_insert" if rng.random() < cfg.zero_insert_prob else "nearest"
    out = np.clip(np.rint(decode(crop, factor, method, rng, cfg.checker_strength)), 0, 255).astype(np.uint8)
    if rng.random() < cfg.restore_prob:
        out = restore(out, rng, cfg.restore.model_copy(update={"render_prob": 0.0, "texture_prob": 0.0}))
    return out, np.ones(crop.shape[:2], np.float32)
