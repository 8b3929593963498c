"""The one resampling chain from a frame to a model input, shared by training, `eval`, `scan` and the monitor.

    frame --align_face(crop_size, margin)--> canonical crop --to_input(input_size)--> model input

1. `align_face` warps the face onto the ArcFace template at the *canonical* crop size (the aligned-crop
   cache's size, 256 by default, recorded in every model's metadata as `alignment.size`), bilinear, with
   an area pre-shrink for faces more than twice that size (see align.py).
2. `to_input` shrinks the canonical crop to the model's input side with INTER_AREA, an honest box
   filter (unlike `cv2.warpAffine(..., INTER_AREA)`, which silently means bilinear and aliases).

Training reads canonical crops from the cache (PNG, lossless), makes pseudo-fakes and applies its
geometric jitter at canonical size, then calls `to_input`; the monitor and `scan` call `face_input`,
which is the same two steps on the live frame. So the high frequencies a detector depends on are the
same in training and in use (a test checks the two paths agree within one grey level).
"""

from __future__ import annotations

import cv2
import numpy as np

from swapwatch.stream.faces.align import align_face
from swapwatch.stream.faces.types import AlignedFace, Face

CANONICAL_SIZE = 256
"""Side of the canonical aligned crop (the training cache's crops) unless a model's metadata says otherwise."""


def to_input(crop: np.ndarray, input_size: int) -> np.ndarray:
    """Canonical crop -> model input side: INTER_AREA shrink (identity when the sizes match).

    Upscaling (a model whose input is larger than its canonical crop) uses INTER_CUBIC.
    """
    h, w = crop.shape[:2]
    if h == input_size and w == input_size:
        return crop
    interp = cv2.INTER_AREA if input_size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(crop, (input_size, input_size), interpolation=interp)


def face_input(
    image_bgr: np.ndarray,
    landmarks: np.ndarray,
    input_size: int,
    margin: float,
    crop_size: int = CANONICAL_SIZE,
    *,
    face: Face | None = None,
) -> AlignedFace:
    """Frame -> model input through the canonical crop; landmarks and matrix are in input pixels."""
    aligned = align_face(image_bgr, landmarks, crop_size, margin, face=face)
    if crop_size == input_size:
        return aligned
    scale = input_size / crop_size
    # cv2.resize maps pixel centres: x_in = (x_crop + 0.5) * scale - 0.5.
    offset = 0.5 * scale - 0.5
    matrix = aligned.matrix.astype(np.float64) * scale
    matrix[:, 2] += offset
    return AlignedFace(
        crop=to_input(aligned.crop, input_size),
        landmarks=(aligned.landmarks * scale + offset).astype(np.float32),
        matrix=matrix.astype(np.float32),
        face=face,
    )
