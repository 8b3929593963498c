"""Quality degradations: deterministic robustness levels and the random training augmentation."""

from __future__ import annotations

import itertools
from functools import lru_cache

import cv2
import numpy as np
import pytest
from pydantic import ValidationError
from skimage import data as skdata

from swapwatch.train.degrade import (
    KINDS,
    ROBUSTNESS_LEVELS,
    DegradeConfig,
    DegradeOp,
    apply_degradation,
    degrade,
)


@lru_cache(maxsize=1)
def _face() -> np.ndarray:
    """The astronaut's face and hair, 224 px, BGR (a real photo with fine detail)."""
    img = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)[10:234, 114:338]
    img.setflags(write=False)
    return img


def face() -> np.ndarray:
    return _face().copy()


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_levels_cover_every_kind() -> None:
    assert set(ROBUSTNESS_LEVELS) == set(KINDS)
    assert all(len(levels) >= 3 for levels in ROBUSTNESS_LEVELS.values())


@pytest.mark.parametrize("kind,level", [(k, v) for k in KINDS for v in ROBUSTNESS_LEVELS[k]])
def test_each_level_keeps_shape_and_dtype(kind: str, level: float) -> None:
    img = face()
    out = apply_degradation(img, kind, level)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out is not img
    np.testing.assert_array_equal(img, _face()), "input must not be modified"
    np.testing.assert_array_equal(out, apply_degradation(img, kind, level)), "levels must be deterministic"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(224, 224, 3), (97, 131, 3)])
def test_error_grows_with_severity(kind: str, shape: tuple[int, int, int]) -> None:
    img = cv2.resize(face(), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    errors = [mad(apply_degradation(img, kind, level), img) for level in ROBUSTNESS_LEVELS[kind]]
    assert errors[0] > 0.0, f"{kind}: mildest level changed nothing"
    assert all(a < b for a, b in itertools.pairwise(errors)), f"{kind}: errors not increasing {errors}"
    psnrs = [psnr(apply_degradation(img, kind, level), img) for level in ROBUSTNESS_LEVELS[kind]]
    assert all(a > b for a, b in itertools.pairwise(psnrs)), f"{kind}: PSNR not decreasing {psnrs}"


@pytest.mark.parametrize(
    "kind,level,min_psnr",
    [("jpeg", 100, 40.0), ("blur", 0.0, float("inf")), ("downscale", 1.0, float("inf")), ("noise", 0.0, float("inf"))],
)
def test_identity_ends_of_each_scale(kind: str, level: float, min_psnr: float) -> None:
    img = face()
    assert psnr(apply_degradation(img, kind, level), img) >= min_psnr


@pytest.mark.parametrize("kind", ["gamma", "JPEG", "", "jpeg "])
def test_unknown_kind_names_it_and_the_allowed_ones(kind: str) -> None:
    with pytest.raises(ValueError) as err:
        apply_degradation(face(), kind, 1.0)
    msg = str(err.value)
    assert repr(kind) in msg and all(k in msg for k in KINDS)


@pytest.mark.parametrize("kind,level", [("jpeg", 0), ("jpeg", 101), ("downscale", 0.0), ("downscale", 1.5),
                                        ("blur", -1.0), ("noise", -2.0)])
def test_out_of_range_level_raises(kind: str, level: float) -> None:
    with pytest.raises(ValueError, match=kind):
        apply_degradation(face(), kind, level)


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)]
)
def test_bad_images_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        apply_degradation(bad, "blur", 1.0)
    with pytest.raises(ValueError, match="uint8"):
        degrade(bad, np.random.default_rng(0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_degrade_is_deterministic_per_seed(seed: int) -> None:
    img = face()
    a = degrade(img, np.random.default_rng(seed))
    b = degrade(img, np.random.default_rng(seed))
    assert a.shape == img.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(img, _face())


def _only(**probs: float) -> DegradeConfig:
    base = DegradeConfig()
    ops = {k: getattr(base, k).model_copy(update={"prob": probs.get(k, 0.0)}) for k in KINDS}
    return DegradeConfig(**ops, max_ops=len(KINDS))


@pytest.mark.parametrize(
    "cfg,expect_change",
    [
        (_only(), False),
        (DegradeConfig(max_ops=0), False),
        (_only(jpeg=1.0), True),
        (_only(blur=1.0), True),
        (_only(noise=1.0), True),
        (_only(jpeg=1.0, blur=1.0, downscale=1.0, noise=1.0), True),
    ],
)
def test_degrade_applies_what_the_config_draws(cfg: DegradeConfig, expect_change: bool) -> None:
    img = face()
    for seed in range(5):
        out = degrade(img, np.random.default_rng(seed), cfg)
        assert out.shape == img.shape and out.dtype == np.uint8 and out is not img
        assert (mad(out, img) > 0) is expect_change


def test_degrade_varies_with_seed_and_default_mostly_degrades() -> None:
    img = face()
    outs = [degrade(img, np.random.default_rng(s)) for s in range(40)]
    changed = sum(mad(o, img) > 0 for o in outs)
    assert 20 <= changed <= 39, changed  # default draws leave a minority untouched
    assert len({o.tobytes() for o in outs}) > 20


def test_degrade_draws_do_not_depend_on_the_image() -> None:
    """Same rng state -> the same random draws for any image, so reals and fakes share one distribution."""
    img = face()
    other = cv2.GaussianBlur(np.ascontiguousarray(img[::-1]), (0, 0), 2.0)
    for seed in range(20):
        ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
        degrade(img, ra)
        degrade(other, rb)
        assert ra.bit_generator.state == rb.bit_generator.state
        assert ra.random() == rb.random()


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"jpeg": {"prob": 0.5, "low": 20, "high": 120}}, "jpeg"),
        ({"downscale": {"prob": 0.5, "low": 0.0, "high": 1.0}}, "downscale"),
        ({"blur": {"prob": 0.5, "low": 2.0, "high": 1.0}}, "low"),
        ({"noise": {"prob": 1.5, "low": 1.0, "high": 2.0}}, "prob"),
        ({"max_ops": 5}, "max_ops"),
        ({"gamma": {"prob": 0.5, "low": 1, "high": 2}}, "gamma"),
    ],
)
def test_config_rejects_bad_values(data: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        DegradeConfig.model_validate(data)


def test_config_defaults_match_the_brief() -> None:
    cfg = DegradeConfig()
    assert (cfg.jpeg.low, cfg.jpeg.high) == (30, 100)
    assert (cfg.blur.low, cfg.blur.high) == (0.3, 2.0)
    assert (cfg.downscale.low, cfg.downscale.high) == (0.35, 1.0)
    assert (cfg.noise.low, cfg.noise.high) == (1.0, 8.0)
    assert DegradeConfig.model_validate(cfg.model_dump()) == cfg
    assert isinstance(cfg.jpeg, DegradeOp)
