"""Calibration crops from a plain folder: `real/**` and `fake/**`, aligned crops or raw images/videos.

Two modes:

* aligned (`--crops`): every image is already an aligned face crop, at the model's input size or at
  its canonical crop size (`crop_size`, the sidecar's `alignment.size`: e.g. crops from the training
  cache), which is shrunk to the input size by the shared chain's `to_input`. A crop of another size
  is an error naming the file: resizing would hide a crop made for another model or template margin,
  and INT8 ranges calibrated on such crops would be wrong for live inference.
* raw: images and videos go through the monitor's own face pipeline and resampling chain (detector,
  ArcFace alignment at the sidecar's canonical size and margin, `to_input` to the input size);
  `frames_per_video` evenly spaced frames per video and the `faces_per_image` largest faces per frame
  are kept (default 1: in a labelled fake video the subject's face is the fake one, bystanders are not).

`max_crops` caps each class; which files are used is a seeded shuffle, so a capped set samples the
whole folder instead of its alphabetically first sub-folder, and the same seed gives the same set.
With `pseudo_fakes`, each real crop also yields one deterministic pseudo-fake (the training
generator with rng seeded per crop, made on the canonical crop before `to_input` as in training), so
a folder of real faces alone can measure AUC and fit score calibration. Unreadable files are skipped
with a warning and listed in `skipped`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.errors import ConfigError, DatasetLayoutError, MediaError, NoFaceError
from swapwatch.media.files import is_video, media_files
from swapwatch.media.image import read_image
from swapwatch.media.video import sample_video

log = logging.getLogger(__name__)

LAYOUT = "calibration folder (real/ and/or fake/)"
CLASSES: dict[str, int] = {"real": 0, "fake": 1}


@dataclass
class CropSet:
    """Aligned uint8 BGR crops with labels (1 = fake) and where each came from."""

    crops: np.ndarray
    labels: np.ndarray
    origins: list[str]
    pseudo: np.ndarray
    root: Path
    aligned: bool
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def n_real(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def n_fake(self) -> int:
        return int(((self.labels == 1) & ~self.pseudo).sum())

    @property
    def n_pseudo_fake(self) -> int:
        return int(self.pseudo.sum())

    def summary(self) -> dict[str, Any]:
        return {
            "source": str(self.root),
            "aligned_crops": self.aligned,
            "n_crops": len(self),
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "n_pseudo_fake": self.n_pseudo_fake,
            "skipped": list(self.skipped),
        }




def list_media(root: str | Path) -> dict[int, list[Path]]:
    """label -> media files under root/real and root/fake. ConfigError when `root` is not a folder,
    DatasetLayoutError naming it when neither class folder exists or no image/video is found."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--data {root}: no such folder (expected real/ and/or fake/ face images or videos)")
    present = [name for name in CLASSES if (root / name).is_dir()]
    if not present:
        raise DatasetLayoutError(root, LAYOUT, "neither real/ nor fake/ exists")
    files = {CLASSES[name]: media_files(root / name) for name in present}
    if not any(files.values()):
        raise DatasetLayoutError(root, LAYOUT, f"no images or videos under {' or '.join(n + '/' for n in present)}")
    return files


def _shuffled(paths: list[Path], seed: int, label: int) -> list[Path]:
    order = np.random.default_rng([seed, 104729, label]).permutation(len(paths))
    return [paths[i] for i in order]


def _read_aligned(path: Path, size: int, crop_size: int) -> np.ndarray:
    """An aligned crop at the input `size` or the canonical `crop_size` (shrunk later by `to_input`)."""
    if is_video(path):
        raise ConfigError(f"{path}: a video in --crops mode; aligned crops must be images (drop --crops to detect faces)")
    img = read_image(path)
    if img.shape[:2] not in ((size, size), (crop_size, crop_size)):
        canonical = f" or its canonical crop {crop_size}x{crop_size}" if crop_size != size else ""
        raise ConfigError(
            f"{path}: aligned crop is {img.shape[1]}x{img.shape[0]} but the model takes {size}x{size}{canonical} "
            "(crop at the model's size and margin, or drop --crops to detect and align faces)"
        )
    return img


def _frames(path: Path, frames_per_video: int) -> list[tuple[str, np.ndarray]]:
    if is_video(path):
        return [(f"{path}#frame{i}", frame) for i, frame in sample_video(path, frames_per_video)]
    return [(str(path), read_image(path))]


def load_crops(
    root: str | Path,
    size: int,
    margin: float,
    *,
    aligned: bool,
    max_crops: int | None = None,
    pseudo_fakes: bool = False,
    seed: int = 0,
    frames_per_video: int = 8,
    faces_per_image: int = 1,
    detector: Any = None,
    crop_size: int | None = None,
) -> CropSet:
    """Crops at `size` (the model's input size) from `root`; see the module docstring for the modes.

    `crop_size` is the model's canonical crop side (its sidecar's `alignment.size`; None means
    `CANONICAL_SIZE`): faces are aligned at it and shrunk to `size`, as the monitor does.

    Raises ConfigError (usage: missing folder, wrong-size or video crops in aligned mode, bad caps),
    DatasetLayoutError (no class folder, no media), NoFaceError (raw mode found no face at all).
    """
    from swapwatch.stream.faces.align import template_landmarks
    from swapwatch.stream.faces.chain import CANONICAL_SIZE, to_input

    crop_size = CANONICAL_SIZE if crop_size is None else int(crop_size)
    if max_crops is not None and max_crops < 1:
        raise ConfigError(f"--max-crops must be >= 1, got {max_crops}")
    if frames_per_video < 1 or faces_per_image < 1:
        raise ConfigError("frames per video and faces per image must be >= 1")
    root = Path(root)
    files = list_media(root)
    pipeline = None
    if not aligned:
        from swapwatch.stream.faces import FacePipeline, load_detector

        # canonical crops (landmarks in crop pixels) for the pseudo-fakes; to_input makes the model inputs
        pipeline = FacePipeline(
            detector or load_detector(), size=crop_size, margin=margin, max_faces=faces_per_image, keep="largest",
            crop_size=crop_size,
        )
    templates = {s: template_landmarks(s, margin).astype(np.float32) for s in {size, crop_size}}

    crops: list[np.ndarray] = []
    labels: list[int] = []
    origins: list[str] = []
    pseudo_crops: list[np.ndarray] = []
    pseudo_origins: list[str] = []
    skipped: list[str] = []
    gen = None
    if pseudo_fakes:
        from swapwatch.train.pseudofakes.generator import PseudoFakeGenerator

        gen = PseudoFakeGenerator()
    for label in sorted(files):
        chosen: list[tuple[str, np.ndarray, np.ndarray]] = []
        for path in _shuffled(files[label], seed, label):
            if max_crops is not None and len(chosen) >= max_crops:
                break
            try:
                if pipeline is None:
                    img = _read_aligned(path, size, crop_size)
                    chosen.append((str(path), img, templates[img.shape[0]]))
                    continue
                for origin, frame in _frames(path, frames_per_video):
                    faces = pipeline.process(frame)
                    chosen.extend((f"{origin}#face{k}", f.crop, f.landmarks) for k, f in enumerate(faces))
            except MediaError as err:
                log.warning("calibration: skipping %s", err)
                skipped.append(str(err))
        chosen = sorted(chosen[:max_crops] if max_crops is not None else chosen, key=lambda c: c[0])
        for origin, crop, lm in chosen:
            crops.append(to_input(crop, size))
            labels.append(label)
            origins.append(origin)
            if gen is not None and label == 0:
                rng = np.random.default_rng([seed, 7919, len(pseudo_crops)])
                pseudo_crops.append(to_input(gen(crop, np.asarray(lm, np.float32), rng).image, size))
                pseudo_origins.append(f"pseudo:{origin}")
    if not crops:
        if aligned:
            raise DatasetLayoutError(root, LAYOUT, "no readable image")
        raise NoFaceError(f"{root}: no face found in any image or video (a face must be detected to calibrate)")

    pseudo = [False] * len(crops) + [True] * len(pseudo_crops)
    crops.extend(pseudo_crops)
    labels.extend([1] * len(pseudo_crops))
    origins.extend(pseudo_origins)
    out = CropSet(
        crops=np.stack(crops).astype(np.uint8, copy=False),
        labels=np.asarray(labels, np.int64),
        origins=origins,
        pseudo=np.asarray(pseudo, bool),
        root=root,
        aligned=aligned,
        skipped=skipped,
    )
    log.info("calibration crops from %s: %d real, %d fake, %d pseudo-fake, %d skipped",
             root, out.n_real, out.n_fake, out.n_pseudo_fake, len(skipped))
    return out
