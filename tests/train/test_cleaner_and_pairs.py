"""Pseudo-fakes in the other direction (clean_face, whole_synth), SBI-style pairs, source balancing, and
the real-faces-only folder reader. Real faces come from installed packages; nothing reads ../shared."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from swapwatch.train.config import DataSettings
from swapwatch.train.data import DatasetConfig, read_dataset
from swapwatch.train.data.cache import CropRecord
from swapwatch.train.dataset import TrainPairs, source_weights
from swapwatch.train.pseudofakes import PseudoFakeConfig, PseudoFakeGenerator
from swapwatch.train.pseudofakes.cleaner import CleanFaceConfig, add_grain, clean_face, restore, whole_synth
from tests.train.test_pseudofakes import _aligned


def noise_level(img: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise sigma inside `mask`: median absolute Laplacian of the grey image."""
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    return float(np.median(np.abs(lap[mask > 0.5])))


@pytest.mark.parametrize("face", ["tom", "t1", "astronaut"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_face_is_cleaner_than_its_own_context(face: str, seed: int) -> None:
    crop, lm = _aligned(face, 256)
    cfg = CleanFaceConfig(ratio_one_prob=1.0, context_jpeg_prob=0.0, texture_prob=0.0)
    fake, mask, real = clean_face(crop, lm, np.random.default_rng(seed), cfg)
    inside = mask > 0.9
    outside = mask == 0
    # Outside the blend the fake IS its real partner (the grainy context), bit for bit.
    assert np.array_equal(fake[outside], real[outside])
    # The real partner carries grain everywhere; the fake's face does not.
    assert noise_level(fake, inside) < 0.7 * noise_level(real, inside)
    assert not np.array_equal(real, crop)


def test_restore_evens_light_and_keeps_shape() -> None:
    crop, _ = _aligned("astronaut", 256)
    out = restore(crop, np.random.default_rng(0), CleanFaceConfig(render_prob=1.0, relight_prob=1.0))
    assert out.shape == crop.shape and out.dtype == np.uint8
    low_in = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), 20).std()
    low_out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), 20).std()
    assert low_out < low_in


def test_add_grain_adds_noise_of_the_drawn_size() -> None:
    flat = np.full((128, 128, 3), 128, np.uint8)
    cfg = CleanFaceConfig(context_noise=(6.0, 6.0), chroma_noise_prob=1.0, context_jpeg_prob=0.0)
    grainy = add_grain(flat, np.random.default_rng(0), cfg)
    assert 5.0 < float(grainy.astype(np.float32).std()) < 7.0


@pytest.mark.parametrize("face", ["tom", "astronaut"])
def test_whole_synth_leaves_periodic_traces_over_the_whole_crop(face: str) -> None:
    crop, lm = _aligned(face, 256)
    cfg_kw = {"zero_insert_prob": 1.0, "restore_prob": 0.0, "checker_strength": (0.25, 0.25)}
    from swapwatch.train.pseudofakes.cleaner import WholeSynthConfig

    fake, mask = whole_synth(crop, lm, np.random.default_rng(0), WholeSynthConfig(**cfg_kw))
    assert mask.min() == 1.0
    # Changed everywhere, corners included (no blend boundary).
    diff = np.abs(fake.astype(np.int16) - crop.astype(np.int16)).sum(axis=2)
    for corner in (diff[:32, :32], diff[-32:, -32:]):
        assert corner.mean() > 0.5
    # A period-2 checkerboard: energy at the Nyquist frequency of the residual.
    res = cv2.cvtColor(fake, cv2.COLOR_BGR2GRAY).astype(np.float32) - cv2.GaussianBlur(
        cv2.cvtColor(fake, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 2)
    spec = np.abs(np.fft.fft2(res))
    nyq = spec[128, 128] + spec[0, 128] + spec[128, 0]
    assert nyq > 5 * np.median(spec)


@pytest.mark.parametrize("kind", ["self_blend", "reconstruct", "clean_face", "whole_synth"])
def test_generator_returns_the_real_partner(kind: str) -> None:
    crop, lm = _aligned("tom", 224)
    fake = PseudoFakeGenerator(PseudoFakeConfig(mix={kind: 1.0}))(crop, lm, np.random.default_rng(3))
    assert fake.kind == kind
    assert fake.real.shape == crop.shape and fake.image.shape == crop.shape
    assert not np.array_equal(fake.image, fake.real)
    if kind != "clean_face":
        assert fake.real is crop


def _records(tmp_path: Path, sources: dict[str, int]) -> list[CropRecord]:
    crop, lm = _aligned("tom", 256)
    path = tmp_path / "crop.png"
    cv2.imwrite(str(path), crop)
    recs = []
    for source, n in sources.items():
        for i in range(n):
            recs.append(CropRecord(crop=path, source_path=path, frame=0, face=i, label=0, video_id=f"{source}{i}",
                                   split="train", dataset="d", source=source, kind="image", landmarks=lm,
                                   det_score=1.0, box=np.zeros(4, np.float32)))
    return recs


def test_pairs_share_geometry_and_degradation(tmp_path: Path) -> None:
    recs = _records(tmp_path, {"a": 2})
    data = DataSettings(sources=[{"format": "samples"}], paired=True, jitter=0.05,
                        pseudo_fakes=PseudoFakeConfig(mix={"reconstruct": 1.0}))
    ds = TrainPairs(recs, data, 160, (0.5,) * 3, (0.5,) * 3, seed=0)
    for index in range(2):
        x, y, kind = ds[index]
        assert x.shape == (2, 3, 160, 160)
        assert y.tolist() == [0, 1] and kind[0] == 0 and kind[1] > 0
        # reconstruct changes only the inner face: with one shared jitter/degradation draw, the border
        # of the real and the fake must be identical (an independent draw would differ everywhere).
        border = torch.ones(160, 160, dtype=torch.bool)
        border[24:-24, 24:-24] = False
        assert torch.equal(x[0][:, border], x[1][:, border])
        assert not torch.equal(x[0], x[1])


@pytest.mark.parametrize(
    ("power", "expected_share_a"),
    [(0.0, 0.9), (1.0, 0.5), (0.5, 3 / 4)],  # 90 crops of a, 10 of b: shares 90:10, 1:1, sqrt 90:10 = 3:1
)
def test_source_weights(tmp_path: Path, power: float, expected_share_a: float) -> None:
    recs = _records(tmp_path, {"a": 90, "b": 10})
    w = source_weights(recs, power)
    assert w.sum() == pytest.approx(1.0)
    assert w[:90].sum() == pytest.approx(expected_share_a)


def test_reals_reader_groups_by_source_and_excludes_copies(tmp_path: Path) -> None:
    root = tmp_path / "reals"
    img = np.zeros((32, 32, 3), np.uint8)
    layout = {"photos/lfw/a.jpg": 1, "photos/lfw/b.jpg": 2, "photos/utk/m/c.jpg": 3, "videos/clip_x.png": 4}
    for rel, v in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img + v)
    held = tmp_path / "genuine"
    held.mkdir()
    (held / "copy.jpg").write_bytes((root / "photos/lfw/b.jpg").read_bytes())
    items = read_dataset(DatasetConfig(format="reals", root=root, exclude_like=[held]))
    by_name = {i.path.name: i for i in items}
    assert set(by_name) == {"a.jpg", "c.jpg", "clip_x.png"}
    assert {n: i.source for n, i in by_name.items()} == {"a.jpg": "lfw", "c.jpg": "utk", "clip_x.png": "clip"}
    assert all(i.label == 0 for i in items)


def test_exclude_like_is_only_for_reals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclude_like applies only"):
        DatasetConfig(format="folder", root=tmp_path, exclude_like=[tmp_path])
