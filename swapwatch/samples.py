"""Real face images that installed packages ship, so demos, smoke training and tests work offline.

- insightface: data/images/t1.jpg (a group photo, 6 faces) and Tom_Hanks_54745.png (an aligned 112x112 face).
- scikit-image: data/astronaut.png (Eileen Collins, public domain, 1 face).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.errors import NoFaceError, SwapwatchError


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SwapwatchError(f"package {name!r} is not installed; it ships the sample faces")
    return Path(spec.origin).parent


def sample_face_images() -> dict[str, Path]:
    """name -> path of each shipped real-face image (only those present on disk)."""
    insight = _package_dir("insightface") / "data" / "images"
    skimage = _package_dir("skimage") / "data"
    candidates = {
        "group_t1": insight / "t1.jpg",
        "tom_hanks": insight / "Tom_Hanks_54745.png",
        "astronaut": skimage / "astronaut.png",
    }
    found = {k: p for k, p in candidates.items() if p.is_file()}
    if not found:
        raise SwapwatchError("no sample face images found in the installed insightface / scikit-image packages")
    return found


def sample_crops(size: int, margin: float, limit: int = 16, *, crop_size: int | None = None) -> np.ndarray:
    """Aligned crops (N, size, size, 3) of the faces in the sample images: real inputs for export checks,
    engine profiles and benchmarks. Needs no torch.

    They go through the shared resampling chain: aligned at `crop_size` (pass the model's
    `alignment.size`; None means `CANONICAL_SIZE`), then shrunk to `size`, as the monitor does.
    """
    from swapwatch.media.image import read_image
    from swapwatch.stream.faces import CANONICAL_SIZE, FacePipeline, load_detector

    pipeline = FacePipeline(
        load_detector(), size=size, margin=margin, crop_size=CANONICAL_SIZE if crop_size is None else crop_size
    )
    crops: list[np.ndarray] = []
    for path in sample_face_images().values():
        crops.extend(a.crop for a in pipeline.process(read_image(path)))
    if not crops:
        raise NoFaceError("no face found in the package sample images")
    return np.stack(crops[:limit])


def model_sample_crops(meta: Any) -> np.ndarray:
    """`sample_crops` with a model's own geometry: its input size, alignment margin and canonical crop
    (an `EngineMetadata`, e.g. `engine.meta`)."""
    return sample_crops(int(meta.input_size), float(meta.alignment.margin), crop_size=int(meta.alignment.size))
