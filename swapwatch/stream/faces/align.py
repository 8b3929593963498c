"""Warp a face onto the shared ArcFace 5-point template, with a margin of context around it.

Training crops and live crops must come from this one function, so a model never sees a geometry
at run time that it did not see in training; `alignment_spec` records the geometry in model metadata.

Choices and their trade-offs:
- Transform: least-squares similarity (Umeyama) over all five points, the same estimate InsightFace's
  `estimate_norm` makes with skimage. It is deterministic and smooth from frame to frame; LMEDS
  (cv2.estimateAffinePartial2D) fits random 2-point subsets, which makes crops jitter on video and
  buys little when the five points come from one detector. Written in numpy (~20 us) rather than
  through skimage, whose estimate API changed in 0.26.
- Border: constant black, as InsightFace's norm_crop does. Replicated borders smear edge pixels into
  streaks that resemble blending seams; a flat black band carries no texture a detector could learn.
- Large faces: warpAffine's bilinear sampling aliases when it shrinks more than 2x, and that aliasing
  depends on the face's size in the frame, a quality cue that must not predict real vs fake. Such
  faces are first shrunk with INTER_AREA on just the region the crop covers, then warped.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from swapwatch.stream.faces.types import AlignedFace, Face

ALIGNMENT = "arcface5"

# InsightFace's ArcFace template for 112x112 crops (insightface.utils.face_align.arcface_dst): left eye,
# right eye, nose tip, left and right mouth corners. Kept here so aligning does not import insightface;
# a test checks it against the installed package.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
_ARCFACE_SIZE = 112.0
_ANTIALIAS_BELOW = 0.5  # pre-shrink when the warp would scale by less than this


def _check_geometry(size: int, margin: float) -> None:
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")


def template_landmarks(size: int = 224, margin: float = 0.15) -> np.ndarray:
    """Where the five landmarks land in a `size` x `size` crop: (5, 2) float32.

    The 112-pixel ArcFace template is scaled to `size`, then shrunk toward the crop centre by
    (1 - 2 * margin), so the region the plain ArcFace crop would cover leaves `margin * size` pixels of
    extra context on each side. margin=0 gives exactly arcface_dst * size / 112.
    """
    _check_geometry(size, margin)
    centre = size / 2.0
    points = ARCFACE_112 * (size / _ARCFACE_SIZE)
    points = centre + (points - centre) * (1.0 - 2.0 * margin)
    return points.astype(np.float32)


def alignment_spec(size: int = 224, margin: float = 0.15) -> dict[str, Any]:
    """JSON-ready description of the crop geometry, stored with every model that consumes crops."""
    return {
        "name": ALIGNMENT,
        "size": int(size),
        "margin": float(margin),
        "template": template_landmarks(size, margin).round(4).tolist(),
    }


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst: (2, 3) float64.

    Umeyama's closed form; reflections are excluded. Raises ValueError when src points coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / len(src)
    if var_src < 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float((sigma * d).sum() / var_src)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_dst - matrix[:, :2] @ mu_src
    return matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def _warp_antialiased(image: np.ndarray, matrix: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Shrink the covered source region with INTER_AREA to about crop resolution, then warp the rest."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    src_corners = transform_points(corners, inverse)
    h, w = image.shape[:2]
    x0, y0 = np.floor(src_corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(src_corners.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:  # crop lies (almost) entirely outside the frame
        return _warp(image, matrix, size)
    roi = image[y0:y1, x0:x1]
    out_w = max(1, round((x1 - x0) * scale))
    out_h = max(1, round((y1 - y0) * scale))
    small = cv2.resize(roi, (out_w, out_h), interpolation=cv2.INTER_AREA)
    # Pixel-centre convention of cv2.resize: source x = (u + 0.5) / s - 0.5 + x0 for small-image column u.
    sx, sy = out_w / (x1 - x0), out_h / (y1 - y0)
    small_to_src = np.array(
        [[1.0 / sx, 0.0, 0.5 / sx - 0.5 + x0], [0.0, 1.0 / sy, 0.5 / sy - 0.5 + y0]], dtype=np.float64
    )
    combined = np.empty((2, 3), dtype=np.float64)
    combined[:, :2] = matrix[:, :2] @ small_to_src[:, :2]
    combined[:, 2] = matrix[:, :2] @ small_to_src[:, 2] + matrix[:, 2]
    return _warp(small, combined, size)


def align_face(
    image_bgr: np.ndarray, landmarks: np.ndarray, size: int = 224, margin: float = 0.15, *, face: Face | None = None
) -> AlignedFace:
    """Crop one face onto the template: the crop, its landmarks in crop pixels and the source->crop matrix.

    `landmarks` are (5, 2) source pixels in ArcFace order. `face`, when given, is carried along in the
    result for callers that need the box/score/track id next to the crop.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or infinite values")
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) BGR image, got shape {image_bgr.shape}")
    matrix = similarity_matrix(points, template_landmarks(size, margin))
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < _ANTIALIAS_BELOW:
        crop = _warp_antialiased(image_bgr, matrix, size, scale)
    else:
        crop = _warp(image_bgr, matrix, size)
    mapped = transform_points(points, matrix).astype(np.float32)
    return AlignedFace(crop=crop, landmarks=mapped, matrix=matrix.astype(np.float32), face=face)
