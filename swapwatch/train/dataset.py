"""Torch datasets over the aligned-crop cache: real crops, pseudo-fakes made on the fly, shared degradations.

Every sample, real or fake, goes through the same geometric jitter and the same random quality
degradations (JPEG, blur, downscale, noise), so image quality carries no information about the label.
Pseudo-fakes are made at cache resolution before any resizing, as a generator's output would be.

`TrainPairs` (the SBI way, `data.paired: true`) returns each real crop together with its own
pseudo-fake, with ONE draw of jitter, flip and degradation applied to both members, so the only
difference between them is the manipulation. `source_weights` balances sampling across sources.

Resampling follows the one chain of `swapwatch.stream.faces.chain`: jitter is a near-identity bilinear
warp at the cache's canonical size, then `to_input` shrinks to the model input with INTER_AREA, as
the monitor and `scan` do on live frames.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from swapwatch.stream.faces.chain import to_input
from swapwatch.train.config import DataSettings
from swapwatch.train.data.cache import CropRecord, read_crop
from swapwatch.train.degrade import degrade
from swapwatch.train.pseudofakes.generator import PseudoFakeGenerator


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def split_by_video(records: Sequence[CropRecord], val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split at video level (never frames of one video on both sides)."""
    train, val = [], []
    for r in records:
        if r.split == "val" or r.split == "test":
            val.append(r)
        elif r.split == "train" and val_fraction > 0 and (stable_hash(f"{seed}:{r.video_id}") % 10_000) < val_fraction * 10_000:
            val.append(r)
        else:
            train.append(r)
    return train, val


def fixed_pseudo_fake(generator: PseudoFakeGenerator, crop: np.ndarray, rec: CropRecord, seed: int, index: int) -> np.ndarray:
    """The pseudo-fake of sample `index` used for validation and evaluation: the same on every run."""
    return generator(crop, np.asarray(rec.landmarks, np.float32), np.random.default_rng([seed, 7919, index])).image


def to_tensor(img_bgr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    # float32 throughout (numpy's stubs widen these operators' result types, so no dtype in the annotation)
    rgb: np.ndarray = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    rgb = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def draw_jitter(rng: np.random.Generator | None, jitter: float, hflip: bool) -> tuple[float, float, float, bool]:
    """One geometric draw (scale, shift x, shift y as fractions of the side, flip), shared by a pair."""
    if rng is None:
        return 1.0, 0.0, 0.0, False
    s, tx, ty = (1.0 + rng.uniform(-jitter, jitter), *rng.uniform(-jitter, jitter, size=2)) if jitter > 0 else (1.0, 0.0, 0.0)
    return float(s), float(tx), float(ty), bool(hflip and rng.random() < 0.5)


def apply_jitter(img: np.ndarray, params: tuple[float, float, float, bool]) -> np.ndarray:
    """Scale/shift about the centre at the crop's own (canonical) size, bilinear; then the flip."""
    s, tx, ty, flip = params
    out = img
    if (s, tx, ty) != (1.0, 0.0, 0.0):
        h, w = img.shape[:2]
        m = np.array([[s, 0, (1 - s) * w / 2 + tx * w], [0, s, (1 - s) * h / 2 + ty * h]], np.float32)
        out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def jitter_resize(img: np.ndarray, size: int, rng: np.random.Generator | None, jitter: float, hflip: bool) -> np.ndarray:
    """Random small scale/shift of the canonical crop, then the chain's shrink to the model input size."""
    return to_input(apply_jitter(img, draw_jitter(rng, jitter, hflip)), size)


def source_key(rec: CropRecord) -> str:
    return f"{rec.dataset}/{rec.source}"


def source_weights(records: Sequence[CropRecord], power: float) -> np.ndarray:
    """Sampling weight per record so that source s gets a share proportional to n_s ** (1 - power).

    power 0 = plain uniform over crops; 1 = every source equally often (its few crops repeat a lot);
    0.5 = between the two (a source with 100x the crops gets 10x the samples).
    """
    counts = Counter(source_key(r) for r in records)
    w = np.asarray([counts[source_key(r)] ** (-power) for r in records], np.float64)
    return w / w.sum()


class TrainFaces(Dataset):
    """Training samples: each real crop becomes a pseudo-fake with probability `fake_fraction`."""

    def __init__(
        self,
        records: Sequence[CropRecord],
        data: DataSettings,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ) -> None:
        self.records = [r for r in records if r.label == 0 or data.use_dataset_fakes]
        if not self.records:
            raise ValueError("no training crops left after filtering")
        self.data = data
        self.size = image_size
        self.mean, self.std = mean, std
        self.seed = seed
        self.generator = PseudoFakeGenerator(data.pseudo_fakes) if data.pseudo_fakes is not None else None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        # A fresh stream per (seed, epoch, index): reproducible and different in every worker and epoch.
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rec = self.records[index]
        img = read_crop(rec)
        label = int(rec.label)
        kind = 0
        if label == 0 and self.generator is not None and rng.random() < self.data.fake_fraction:
            fake = self.generator(img, np.asarray(rec.landmarks, np.float32), rng)
            img, label, kind = fake.image, 1, 1
        img = jitter_resize(img, self.size, rng, self.data.jitter, self.data.hflip)
        img = degrade(img, rng, self.data.degrade)
        return to_tensor(img, self.mean, self.std), label, kind


class TrainPairs(TrainFaces):
    """SBI-style samples: (2, C, H, W) = a real crop and its own pseudo-fake, labels (0, 1).

    Both members get the same geometric jitter and flip and the same degradation draw (the same
    JPEG quality, blur, noise pattern), applied at canonical size before the shrink to the input.
    kind: 0 for the real, 1 + index of the recipe in KINDS for the fake.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        from swapwatch.train.pseudofakes.generator import KINDS

        if self.generator is None:
            raise ValueError("paired training needs data.pseudo_fakes")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rec = self.records[index]
        crop = read_crop(rec)
        fake = self.generator(crop, np.asarray(rec.landmarks, np.float32), rng)
        geometry = draw_jitter(rng, self.data.jitter, self.data.hflip)
        degrade_seed = int(rng.integers(2**62))
        pair = []
        for img in (fake.real, fake.image):
            img = degrade(apply_jitter(img, geometry), np.random.default_rng(degrade_seed), self.data.degrade)
            pair.append(to_tensor(to_input(img, self.size), self.mean, self.std))
        return torch.stack(pair), torch.tensor([0, 1]), torch.tensor([0, 1 + KINDS.index(fake.kind)])


class ValFaces(Dataset):
    """Validation: every real crop once as itself and once as a deterministic pseudo-fake; dataset fakes as-is.

    No jitter and no degradation, so the number is comparable from run to run.
    """

    def __init__(
        self,
        records: Sequence[CropRecord],
        data: DataSettings,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ) -> None:
        self.size = image_size
        self.mean, self.std = mean, std
        self.seed = seed
        self.generator = PseudoFakeGenerator(data.pseudo_fakes) if data.pseudo_fakes is not None else None
        self.samples: list[tuple[CropRecord, bool]] = []
        for r in records:
            self.samples.append((r, False))
            if r.label == 0 and self.generator is not None:
                self.samples.append((r, True))

    def __len__(self) -> int:
        return len(self.samples)

    def label_of(self, index: int) -> int:
        rec, faked = self.samples[index]
        return 1 if faked else int(rec.label)

    def video_of(self, index: int) -> str:
        rec, faked = self.samples[index]
        return f"{rec.video_id}#pseudo" if faked else rec.video_id

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        rec, faked = self.samples[index]
        img = read_crop(rec)
        if faked:
            img = fixed_pseudo_fake(self.generator, img, rec, self.seed, index)  # type: ignore[arg-type]
        return to_tensor(to_input(img, self.size), self.mean, self.std), self.label_of(index), int(faked)
