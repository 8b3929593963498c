"""`read_image`: a still image file as an upright (H, W, 3) uint8 BGR array."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from swapwatch.errors import MediaError
from swapwatch.media.files import require_file

_UINT16_TO_UINT8 = 255.0 / 65535.0


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR: EXIF orientation applied, grey expanded, alpha dropped.

    16-bit images are scaled to 8 bits with rounding (65535 -> 255, 257 -> 1), whatever the format;
    OpenCV's own 8-bit decode truncates 16-bit PNGs (keeps the high byte) but rounds TIFFs.
    Decodes from bytes because cv2.imread cannot open non-ASCII paths on every platform.
    Raises MediaError naming the file and the reason: "file not found", "not a file", "the file is
    empty", "could not read the file: ..." or "not a readable image: ...".
    """
    p = Path(path)
    require_file(p)
    try:
        data = np.frombuffer(p.read_bytes(), dtype=np.uint8)
    except OSError as err:
        raise MediaError(p, f"could not read the file: {err.strerror or err}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise MediaError(p, "not a readable image: corrupt, truncated or an unsupported format")
    if image.dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=_UINT16_TO_UINT8)
    if image.dtype == np.uint8:
        return image
    # Float or 32-bit images (HDR, some TIFFs) have no fixed full scale: let OpenCV map them to 8 bits.
    eight_bit = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if eight_bit is None:
        raise MediaError(p, f"not a readable image: {image.dtype} pixels OpenCV cannot convert to 8 bits")
    return eight_bit
