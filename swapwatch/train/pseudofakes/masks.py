"""Soft blending masks built from the five ArcFace landmarks only (no dense landmark model needed).

A pseudo-fake is only as good as its blending boundary: a real face swap pastes a generated face into
the frame through a soft, imperfect region mask, and the seam that leaves is the artifact a detector
should learn. Dense (68/81-point) landmarks would give a tighter face outline, but every crop in our
cache has exactly five points, so the outline is *extrapolated* from them:

* upward from the eyes toward the brows/forehead, downward past the mouth toward the chin, and outward
  from the eye and mouth corners to the cheeks, each by a random fraction of the face's own scale
  (inter-ocular distance `iod` horizontally, eye-to-mouth distance vertically), so the masks are
  resolution independent and follow head roll;
* the convex hull of those points is filled, then deformed: a small random similarity transform, a
  smooth elastic warp (a coarse random displacement grid upsampled with cv2.resize, applied with
  cv2.remap, which is vectorised and cheap), a random erosion or dilation, and a Gaussian blur that makes
  the blend soft.

Trade-offs: a convex hull cannot follow the jaw line of a strongly turned head, and five points say
nothing about hair or ears; the random extents make the detector see many boundary placements rather
than one precise one, which is what Self-Blended Images relies on. Every mask always contains a "core"
(the landmarks' hull, grown by a margin that survives the blur), so the blended region always includes
the eyes, nose and mouth and every landmark keeps a mask value above 0.5.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from pydantic import Field, model_validator

from swapwatch.config import StrictModel

Range = tuple[float, float]


class MaskConfig(StrictModel):
    """Geometry and deformation of the face-hull mask. Lengths are fractions of the inter-ocular distance
    (iod) unless stated otherwise, so one config works at every crop size."""

    up: Range = Field((0.35, 0.8), description="Extent above the eyes, fraction of the eye-to-mouth distance.")
    down: Range = Field((0.35, 0.8), description="Extent below the mouth, fraction of the eye-to-mouth distance.")
    out: Range = Field((0.25, 0.55), description="Extent outward from the eye and mouth corners, fraction of iod.")
    point_jitter: float = Field(0.05, ge=0.0, le=0.3, description="Per-point random offset (std), fraction of iod.")
    affine_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of a random similarity transform.")
    affine_scale: Range = Field((0.95, 1.05), description="Scale range of that transform (about the landmarks' mean).")
    affine_rotate_deg: float = Field(5.0, ge=0.0, le=30.0, description="Max absolute rotation in degrees.")
    affine_translate: float = Field(0.05, ge=0.0, le=0.5, description="Max absolute shift per axis, fraction of iod.")
    elastic_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of a smooth elastic deformation.")
    elastic_grid: tuple[int, int] = Field((3, 6), description="Range of the coarse displacement grid's side (cells).")
    elastic_magnitude: float = Field(0.06, ge=0.0, le=0.5, description="Std of grid displacements, fraction of iod.")
    morph_prob: float = Field(0.5, ge=0.0, le=1.0, description="Chance of eroding or dilating (50/50) the mask.")
    morph_size: Range = Field((0.05, 0.25), description="Structuring-element diameter range, fraction of iod.")
    blur_sigma: Range = Field((0.04, 0.15), description="Gaussian edge-blur sigma range, fraction of iod.")
    core_margin: float = Field(
        0.1, ge=0.0, le=1.0, description="Margin around each landmark always inside the mask, fraction of iod."
    )

    @model_validator(mode="after")
    def _ordered(self) -> MaskConfig:
        for name in ("up", "down", "out", "affine_scale", "morph_size", "blur_sigma", "elastic_grid"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name}: need 0 <= low <= high, got ({lo}, {hi})")
        if self.affine_scale[0] <= 0:
            raise ValueError("affine_scale: scales must be positive")
        if self.elastic_grid[0] < 2:
            raise ValueError("elastic_grid: need at least 2 cells")
        return self


class InnerMaskConfig(MaskConfig):
    """The tighter eyes-nose-mouth region (what a face-swap generator actually replaces): same knobs,
    smaller extents and gentler deformation."""

    up: Range = Field((0.1, 0.3), description="Extent above the eyes, fraction of the eye-to-mouth distance.")
    down: Range = Field((0.1, 0.3), description="Extent below the mouth, fraction of the eye-to-mouth distance.")
    out: Range = Field((0.12, 0.3), description="Extent outward from the eye and mouth corners, fraction of iod.")
    point_jitter: float = Field(0.03, ge=0.0, le=0.3, description="Per-point random offset (std), fraction of iod.")
    elastic_magnitude: float = Field(0.04, ge=0.0, le=0.5, description="Std of grid displacements, fraction of iod.")
    morph_size: Range = Field((0.04, 0.15), description="Structuring-element diameter range, fraction of iod.")
    blur_sigma: Range = Field((0.04, 0.12), description="Gaussian edge-blur sigma range, fraction of iod.")


def check_face_inputs(crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Validate an aligned crop and its landmarks; return the landmarks as float32 (5, 2).

    Raises ValueError naming what is wrong (the generators are called from data loaders, where a clear
    message beats a cv2 assertion deep inside a worker).
    """
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1] or crop.dtype != np.uint8:
        raise ValueError(f"crop must be a square (S, S, 3) uint8 BGR image, got {crop.shape} {crop.dtype}")
    lm = np.asarray(landmarks, np.float32)
    if lm.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2) (ArcFace order), got {lm.shape}")
    return lm


def _face_scale(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Unit axes (horizontal: left->right eye, vertical: eyes->mouth) and the two face lengths."""
    eye_c = (lm[0] + lm[1]) / 2
    mouth_c = (lm[3] + lm[4]) / 2
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    dem = float(np.linalg.norm(mouth_c - eye_c))
    iod = max(iod, 1.0)
    dem = max(dem, 1.0)
    h = (lm[1] - lm[0]) / iod
    # Vertical axis: perpendicular to the eye line, pointing toward the mouth (robust to a turned head,
    # where eyes->mouth is skewed).
    v = np.array([-h[1], h[0]], np.float32)
    if float(np.dot(v, mouth_c - eye_c)) < 0:
        v = -v
    return h.astype(np.float32), v, iod, dem


def _outline_points(lm: np.ndarray, rng: np.random.Generator, cfg: MaskConfig) -> tuple[np.ndarray, float]:
    """Extrapolated face-outline points (N, 2) and the iod used to scale everything else."""
    h, v, iod, dem = _face_scale(lm)
    le, re, nose, lmo, rmo = lm
    u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731 - tiny local helper
    up, down = u(cfg.up) * dem, u(cfg.down) * dem
    out_eye_l, out_eye_r = u(cfg.out) * iod, u(cfg.out) * iod
    out_mouth_l, out_mouth_r = u(cfg.out) * iod, u(cfg.out) * iod
    pts = [
        le - h * out_eye_l,  # outer eye corners / temples
        re + h * out_eye_r,
        le - v * up - h * 0.6 * out_eye_l,  # brows / forehead
        re - v * up + h * 0.6 * out_eye_r,
        (le + re) / 2 - v * up * 1.1,
        (le + lmo) / 2 - h * max(out_eye_l, out_mouth_l),  # cheeks
        (re + rmo) / 2 + h * max(out_eye_r, out_mouth_r),
        lmo - h * out_mouth_l,  # jaw beside the mouth
        rmo + h * out_mouth_r,
        lmo + v * down * 0.8 - h * 0.4 * out_mouth_l,  # chin
        rmo + v * down * 0.8 + h * 0.4 * out_mouth_r,
        (lmo + rmo) / 2 + v * down,
    ]
    # The nose can leave the eye-mouth quadrilateral on a turned head: keep it inside with a margin.
    centre = lm.mean(axis=0)
    d = nose - centre
    n = float(np.linalg.norm(d))
    pts.append(nose + (d / n if n > 1e-3 else v) * u(cfg.out) * iod * 0.6)
    p = np.asarray(pts, np.float32)
    if cfg.point_jitter > 0:
        p += rng.normal(0.0, cfg.point_jitter * iod, size=p.shape).astype(np.float32)
    return p, iod


_OCTAGON = np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1).astype(np.float32)


def _core_points(lm: np.ndarray, margin: float) -> np.ndarray:
    """Eight points around each landmark at radius `margin`: their hull contains a disc of radius
    0.92 * margin around every landmark."""
    return (lm[:, None, :] + _OCTAGON[None] * margin).reshape(-1, 2).astype(np.float32)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _fill_hull(points: np.ndarray, size: int) -> np.ndarray:
    hull = cv2.convexHull(np.round(points * 16).astype(np.int32))  # 4 fractional bits: sub-pixel edges
    m = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(m, hull, 1.0, lineType=cv2.LINE_AA, shift=4)
    return m


def _random_similarity(points: np.ndarray, centre: np.ndarray, iod: float, rng: np.random.Generator,
                       cfg: MaskConfig) -> np.ndarray:
    s = rng.uniform(*cfg.affine_scale)
    a = np.deg2rad(rng.uniform(-cfg.affine_rotate_deg, cfg.affine_rotate_deg))
    t = rng.uniform(-cfg.affine_translate, cfg.affine_translate, size=2) * iod
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32) * s
    return ((points - centre) @ rot.T + centre + t).astype(np.float32)


def _elastic(mask: np.ndarray, iod: float, rng: np.random.Generator, cfg: MaskConfig) -> np.ndarray:
    size = mask.shape[0]
    g = int(rng.integers(cfg.elastic_grid[0], cfg.elastic_grid[1] + 1))
    coarse = rng.normal(0.0, cfg.elastic_magnitude * iod, size=(g, g, 2)).astype(np.float32)
    disp = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    xs, ys = _pixel_grid(size)
    return cv2.remap(mask, xs + disp[..., 0], ys + disp[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _deformed_mask(points: np.ndarray, lm: np.ndarray, iod: float, size: int, rng: np.random.Generator,
                   cfg: MaskConfig) -> np.ndarray:
    if rng.random() < cfg.affine_prob:
        points = _random_similarity(points, lm.mean(axis=0), iod, rng, cfg)
    mask = _fill_hull(points, size)
    if rng.random() < cfg.elastic_prob and cfg.elastic_magnitude > 0:
        mask = _elastic(mask, iod, rng, cfg)
    if rng.random() < cfg.morph_prob:
        k = max(1, round(rng.uniform(*cfg.morph_size) * iod))
        if k > 1:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
            mask = cv2.erode(mask, kernel) if rng.random() < 0.5 else cv2.dilate(mask, kernel)
    sigma = float(rng.uniform(*cfg.blur_sigma)) * iod
    # The core survives every deformation; grown by 2 sigma so the blur keeps landmarks above 0.5.
    core = _fill_hull(_core_points(lm, cfg.core_margin * iod + 2.0 * sigma), size)
    mask = np.maximum(mask, core)
    if sigma >= 0.3:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(mask, 0.0, 1.0, out=mask).astype(np.float32, copy=False)


def face_hull_mask(landmarks: np.ndarray, size: int, rng: np.random.Generator,
                   cfg: MaskConfig | None = None) -> np.ndarray:
    """Soft (size, size) float32 mask in [0, 1] of a randomly extended, deformed face region.

    The region reaches from the brows/forehead to the chin and out to the cheeks; it always covers the
    five landmarks (value > 0.5). Deterministic for a given rng state.
    """
    cfg = cfg or MaskConfig()
    lm = np.asarray(landmarks, np.float32).reshape(5, 2)
    points, iod = _outline_points(lm, rng, cfg)
    return _deformed_mask(points, lm, iod, int(size), rng, cfg)


def inner_face_mask(landmarks: np.ndarray, size: int, rng: np.random.Generator,
                    cfg: MaskConfig | None = None) -> np.ndarray:
    """Soft mask of the inner face (eyes, nose, mouth): what a swap generator's output usually covers.

    Same construction as `face_hull_mask` with the tighter `InnerMaskConfig` defaults; passing a plain
    `MaskConfig` gives the full hull.
    """
    return face_hull_mask(landmarks, size, rng, cfg or InnerMaskConfig())


class HullBlendConfig(StrictModel):
    """How a rendered face is blended back: the whole hull or the inner face, and the blend ratio.

    Shared by the recipes that paste a re-rendered face over the crop (clean_face, restored)."""

    hull_prob: float = Field(0.6, ge=0.0, le=1.0, description="Chance of the whole face hull (else the inner face).")
    mask: MaskConfig = Field(default_factory=MaskConfig, description="Face-hull mask geometry.")
    inner_mask: InnerMaskConfig = Field(default_factory=InnerMaskConfig, description="Inner-face mask geometry.")
    ratio: Range = Field((0.7, 1.0), description="Blend ratio range.")
    ratio_one_prob: float = Field(0.6, ge=0.0, le=1.0, description="Chance the blend ratio is exactly 1.")

    def draw_mask(self, landmarks: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """The hull (with chance `hull_prob`) or the inner-face mask for this draw."""
        if rng.random() < self.hull_prob:
            return face_hull_mask(landmarks, size, rng, self.mask)
        return inner_face_mask(landmarks, size, rng, self.inner_mask)
