"""Pseudo-fake generators and their masks, on real faces shipped by installed packages.

Crops are aligned by hand (no face detector): the five landmarks of each shipped image were measured
once and are mapped onto the ArcFace template (0.15 margin) with a similarity transform.
"""

from __future__ import annotations

import itertools
import os
from functools import lru_cache

import cv2
import insightface
import numpy as np
import pytest
from insightface.utils.face_align import arcface_dst
from pydantic import ValidationError
from skimage import data as skdata

from swapwatch.train.pseudofakes import (
    InnerMaskConfig,
    MaskConfig,
    PseudoFakeConfig,
    PseudoFakeGenerator,
    ReconstructConfig,
    SelfBlendConfig,
    face_hull_mask,
    inner_face_mask,
    reconstruct_blend,
    self_blend,
)

_IMAGES = os.path.join(os.path.dirname(insightface.__file__), "data", "images")

# name -> (loader of a BGR image, its 5 landmarks in ArcFace order, measured once by hand/detector)
_FACES = {
    "tom": (lambda: cv2.imread(os.path.join(_IMAGES, "Tom_Hanks_54745.png")),
            [(35.3, 50.0), (71.7, 49.7), (61.0, 75.7), (38.0, 89.0), (68.7, 88.7)]),
    "t1": (lambda: cv2.imread(os.path.join(_IMAGES, "t1.jpg")),
           [(493, 320), (540, 330), (506, 363), (483, 366), (529, 374)]),
    "astronaut": (lambda: cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR),
                  [(204, 100), (247, 103), (223, 129), (202, 138), (244, 140)]),
}
FACES = tuple(_FACES)


def template_landmarks(size: int, margin: float = 0.15) -> np.ndarray:
    return (arcface_dst / 112.0 * size * (1 - 2 * margin) + margin * size).astype(np.float32)


@lru_cache(maxsize=16)
def _aligned(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    load, points = _FACES[name]
    img = load()
    assert img is not None, f"shipped image for {name} is missing"
    src = np.asarray(points, np.float32)
    m, _ = cv2.estimateAffinePartial2D(src, template_landmarks(size), method=cv2.LMEDS)
    crop = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    lm = (src @ m[:, :2].T + m[:, 2]).astype(np.float32)
    crop.setflags(write=False)
    lm.setflags(write=False)
    return crop, lm


def aligned_face(name: str, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    crop, lm = _aligned(name, size)
    return crop.copy(), lm.copy()


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- masks

MASKS = [("hull", face_hull_mask), ("inner", inner_face_mask)]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("size", [128, 224, 256])
@pytest.mark.parametrize("kind,fn", MASKS)
def test_mask_range_corners_and_determinism(face: str, size: int, kind: str, fn) -> None:
    _, lm = aligned_face(face, size)
    for seed in range(10):
        m = fn(lm, size, rng(seed))
        assert m.dtype == np.float32 and m.shape == (size, size)
        assert m.min() >= 0.0 and m.max() <= 1.0
        assert m.max() > 0.99, "a mask must have a fully blended interior"
        assert m[0, 0] == m[0, -1] == m[-1, 0] == m[-1, -1] == 0.0, "corners must stay real"
        np.testing.assert_array_equal(m, fn(lm, size, rng(seed)))
    assert not np.array_equal(fn(lm, size, rng(1)), fn(lm, size, rng(2))), "rng must vary the mask"


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("size", [128, 256])
def test_hull_mask_covers_all_landmarks(face: str, size: int) -> None:
    _, lm = aligned_face(face, size)
    ij = np.round(lm).astype(int)
    for seed in range(60):
        m = face_hull_mask(lm, size, rng(seed))
        values = m[ij[:, 1], ij[:, 0]]
        assert (values > 0.5).all(), f"seed {seed}: landmark mask values {values}"


@pytest.mark.parametrize(
    "cfg,bigger_than_inner",
    [
        (MaskConfig(), True),
        (MaskConfig(up=(0.8, 0.8), down=(0.8, 0.8), out=(0.5, 0.5)), True),
        (InnerMaskConfig(), False),
    ],
)
def test_hull_is_larger_than_inner_region(cfg: MaskConfig, bigger_than_inner: bool) -> None:
    _, lm = aligned_face("astronaut", 224)
    area = np.mean([face_hull_mask(lm, 224, rng(s), cfg).sum() for s in range(10)])
    inner = np.mean([inner_face_mask(lm, 224, rng(s)).sum() for s in range(10)])
    assert bool(area > 1.3 * inner) is bigger_than_inner, (area, inner)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"up": (0.8, 0.2)}, "up"),
        ({"blur_sigma": (-0.1, 0.1)}, "blur_sigma"),
        ({"elastic_grid": (1, 3)}, "elastic_grid"),
        ({"affine_prob": 1.5}, "affine_prob"),
        ({"jitter": 0.1}, "jitter"),
    ],
)
def test_mask_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        MaskConfig(**kwargs)


# ---------------------------------------------------------------- self blend


def _assert_fake_contract(crop: np.ndarray, fake: np.ndarray, mask: np.ndarray, min_inside_diff: float) -> None:
    assert fake.shape == crop.shape and fake.dtype == np.uint8
    assert mask.shape == crop.shape[:2] and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    outside = mask == 0
    assert outside.mean() > 0.3, "most of the crop must stay real"
    np.testing.assert_array_equal(fake[outside], crop[outside])
    inside = mask > 0.9 * mask.max()
    diff = np.abs(fake.astype(np.int16) - crop.astype(np.int16))[inside].mean()
    assert diff > min_inside_diff, f"blended region barely changed: mean |diff| {diff:.2f}"


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(
    "label,cfg",
    [
        ("default", SelfBlendConfig()),
        ("colour only", SelfBlendConfig(color_prob=1.0, sharpness_prob=0.0, resize_prob=0.0, shift_prob=0.0)),
        ("blur only", SelfBlendConfig(color_prob=0.0, sharpness_prob=1.0, sharpen_prob=0.0, resize_prob=0.0,
                                      shift_prob=0.0)),
        ("shift only", SelfBlendConfig(color_prob=0.0, sharpness_prob=0.0, resize_prob=0.0, shift_prob=1.0)),
        ("all ops, ratio 1", SelfBlendConfig(color_prob=1.0, sharpness_prob=1.0, resize_prob=1.0, ratio_one_prob=1.0)),
    ],
)
def test_self_blend_changes_only_the_masked_region(face: str, label: str, cfg: SelfBlendConfig) -> None:
    crop, lm = aligned_face(face)
    for seed in range(5):
        fake, mask = self_blend(crop, lm, rng(seed), cfg)
        _assert_fake_contract(crop, fake, mask, min_inside_diff=0.5)


@pytest.mark.parametrize("face", FACES)
def test_self_blend_ratio_zero_returns_the_crop(face: str) -> None:
    crop, lm = aligned_face(face)
    cfg = SelfBlendConfig(ratio=(0.0, 0.0), ratio_one_prob=0.0, color_prob=1.0, sharpness_prob=1.0)
    fake, mask = self_blend(crop, lm, rng(0), cfg)
    np.testing.assert_array_equal(fake, crop)
    assert not mask.any()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_self_blend_is_deterministic_per_seed(seed: int) -> None:
    crop, lm = aligned_face("t1")
    a = self_blend(crop, lm, rng(seed))
    b = self_blend(crop, lm, rng(seed))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], self_blend(crop, lm, rng(seed + 100))[0])


@pytest.mark.parametrize(
    "crop,landmarks,match",
    [
        (np.zeros((64, 32, 3), np.uint8), np.zeros((5, 2)), "square"),
        (np.zeros((64, 64), np.uint8), np.zeros((5, 2)), "square"),
        (np.zeros((64, 64, 3), np.float32), np.zeros((5, 2)), "uint8"),
        (np.zeros((64, 64, 3), np.uint8), np.zeros((68, 2)), "landmarks"),
    ],
)
def test_generators_reject_bad_inputs(crop: np.ndarray, landmarks: np.ndarray, match: str) -> None:
    for fn in (self_blend, reconstruct_blend):
        with pytest.raises(ValueError, match=match):
            fn(crop, landmarks, rng(0))


@pytest.mark.parametrize(
    "kwargs,field",
    [({"ratio": (0.5, 1.5)}, "ratio"), ({"ratio": (0.9, 0.2)}, "ratio"), ({"resize_scale": (0.5, 2.0)}, "resize_scale"),
     ({"color_prob": -0.1}, "color_prob"), ({"mask": {"nope": 1}}, "nope")],
)
def test_self_blend_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        SelfBlendConfig(**kwargs)


# ---------------------------------------------------------------- reconstruction


def _clean_decoder(method: str, factor: int | None = None) -> ReconstructConfig:
    return ReconstructConfig(
        factors=[factor] if factor else [2, 3, 4], upsample={method: 1.0}, refine_prob=0.0, color_prob=0.0,
        resample_prob=0.0, ratio=(1.0, 1.0), ratio_one_prob=1.0,
    )


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic", "zero_insert"])
def test_reconstruct_changes_only_the_inner_face(face: str, method: str) -> None:
    crop, lm = aligned_face(face)
    for seed in range(3):
        fake, mask = reconstruct_blend(crop, lm, rng(seed), _clean_decoder(method))
        _assert_fake_contract(crop, fake, mask, min_inside_diff=0.5)
        # The defaults (random frame, refinement, colour shift) keep the same contract.
        fake, mask = reconstruct_blend(crop, lm, rng(seed))
        _assert_fake_contract(crop, fake, mask, min_inside_diff=0.3)


def periodic_peak_ratio(img: np.ndarray, top: int, left: int, n: int, factor: int) -> float:
    """Mean ratio of the spectrum at the up-sampling period's harmonics (k*n/f) to nearby bins.

    n must be a multiple of factor so the harmonics fall on exact FFT bins.
    """
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)[top:top + n, left:left + n]
    g = (g - g.mean()) * np.outer(np.hanning(n), np.hanning(n))
    spec = np.abs(np.fft.fft2(g))
    step = n // factor
    ratios = []
    for a in range(factor):
        for b in range(factor):
            if a == 0 and b == 0:
                continue
            y, x = a * step, b * step
            ring = [spec[(y + d) % n, x] for d in (-3, -2, 2, 3)] + [spec[y, (x + d) % n] for d in (-3, -2, 2, 3)]
            ratios.append(spec[y, x] / (np.median(ring) + 1e-9))
    return float(np.mean(ratios))


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_zero_insertion_leaves_periodic_spectral_peaks(face: str, factor: int) -> None:
    crop, lm = aligned_face(face, 224)
    n = 48  # multiple of 2, 3 and 4; fits inside the inner-face mask
    cy, cx = (int(v) for v in lm.mean(axis=0)[::-1])
    top, left = cy - n // 2, cx - n // 2
    real = periodic_peak_ratio(crop, top, left, n, factor)
    for seed in range(3):
        fake, mask = reconstruct_blend(crop, lm, rng(seed), _clean_decoder("zero_insert", factor))
        assert mask[top:top + n, left:left + n].min() > 0.5, "analysis window must lie inside the blend"
        ratio = periodic_peak_ratio(fake, top, left, n, factor)
        assert ratio > 4.0 * max(real, 1.0), f"seed {seed}: peak ratio fake {ratio:.2f} vs real {real:.2f}"


@pytest.mark.parametrize("seed", [0, 3])
def test_reconstruct_is_deterministic_per_seed(seed: int) -> None:
    crop, lm = aligned_face("astronaut")
    a = reconstruct_blend(crop, lm, rng(seed))
    b = reconstruct_blend(crop, lm, rng(seed))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"upsample": {"lanczos": 1.0}}, "lanczos"), ({"upsample": {"bilinear": -1.0}}, "bilinear"),
     ({"upsample": {"bilinear": 0.0}}, "positive sum"), ({"factors": [1, 2]}, "factors"), ({"factors": []}, "factors")],
)
def test_reconstruct_config_rejects_bad_values(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        ReconstructConfig(**kwargs)


# ---------------------------------------------------------------- generator


@pytest.mark.parametrize(
    "mix,expected",
    [
        ({"reconstruct": 1.0}, {"reconstruct"}),
        ({"self_blend": 1.0}, {"self_blend"}),
        ({"self_blend": 0.0, "reconstruct": 2.0}, {"reconstruct"}),
        ({"self_blend": 0.5, "reconstruct": 0.5}, {"self_blend", "reconstruct"}),
    ],
)
def test_generator_follows_the_mix(mix: dict[str, float], expected: set[str]) -> None:
    crop, lm = aligned_face("t1", 128)
    gen = PseudoFakeGenerator(PseudoFakeConfig(mix=mix))
    r = rng(0)
    kinds = set()
    for _ in range(24):
        fake = gen(crop, lm, r)
        kinds.add(fake.kind)
        assert fake.image.shape == crop.shape and fake.image.dtype == np.uint8
        assert fake.mask.shape == crop.shape[:2] and fake.mask.dtype == np.float32
    assert kinds == expected


def test_generator_default_mix_proportions() -> None:
    crop, lm = aligned_face("astronaut", 96)
    gen = PseudoFakeGenerator()
    r = rng(1)
    kinds = [gen(crop, lm, r).kind for _ in range(300)]
    share = kinds.count("self_blend") / len(kinds)
    assert 0.6 < share < 0.8, share


@pytest.mark.parametrize(
    "mix,needle",
    [
        ({"selfblend": 1.0}, "selfblend"),
        ({"self_blend": 1.0, "gan": 1.0}, "gan"),
        ({"reconstruct": -0.5, "self_blend": 1.0}, "reconstruct"),
        ({"self_blend": 0.0}, "positive sum"),
        ({}, "positive sum"),
    ],
)
def test_generator_mix_validation_names_the_key(mix: dict[str, float], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle) as err:
        PseudoFakeConfig(mix=mix)
    assert "mix" in str(err.value)


def test_generator_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = PseudoFakeConfig()
    assert PseudoFakeConfig.model_validate(cfg.model_dump()) == cfg
    with pytest.raises(ValidationError, match="self_blending"):
        PseudoFakeConfig.model_validate({"self_blending": {}})


@pytest.mark.parametrize("fn", [self_blend, reconstruct_blend], ids=["self_blend", "reconstruct_blend"])
def test_a_loader_can_call_a_generator_over_and_over_on_one_crop(fn) -> None:
    """What a data loader does with a cached crop: read-only arrays in, a new fake on every call from one
    random generator, and the crop itself never touched. (Their cost per call is not a unit-test matter.)"""
    crop, lm = aligned_face("t1", 224)
    before = crop.copy()
    crop.setflags(write=False)
    lm.setflags(write=False)
    r = rng(0)
    fakes = [fn(crop, lm, r)[0] for _ in range(4)]
    np.testing.assert_array_equal(crop, before)
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(fakes, 2))
