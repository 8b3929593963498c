"""Score calibration: Platt and isotonic fits, FPR thresholds on sets with a worked-out answer, apply_calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from swapwatch.calib.score import (
    apply_calibration,
    choose_threshold,
    fit_calibration,
    fit_isotonic,
    fit_platt,
    logit,
    threshold_key,
)
from swapwatch.engine.metadata import ScoreCalibration
from swapwatch.errors import ConfigError, SwapwatchError

E = math.e


@pytest.mark.parametrize(("a", "b"), [(1.0, 0.0), (2.0, -1.0), (0.5, 0.8), (3.0, 1.5)])
def test_platt_recovers_a_known_logistic_map(a: float, b: float) -> None:
    rng = np.random.default_rng(42)
    z = rng.normal(0.0, 1.5, 40_000)
    scores = 1.0 / (1.0 + np.exp(-z))  # raw scores whose logit is z
    labels = (rng.random(z.size) < 1.0 / (1.0 + np.exp(-(a * z + b)))).astype(int)
    fa, fb = fit_platt(scores, labels)
    # standard errors at n = 40k are ~0.02; 0.1 leaves room without letting a wrong fit pass
    assert fa == pytest.approx(a, abs=0.1)
    assert fb == pytest.approx(b, abs=0.1)


def test_platt_stays_finite_on_perfectly_separated_scores() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    a, b = fit_platt(scores, labels)  # smoothed targets: no divergence
    assert np.isfinite(a) and np.isfinite(b) and a > 0
    cal = ScoreCalibration(method="platt", params={"a": a, "b": b})
    p = apply_calibration(scores, cal)
    assert p[:3].max() < 0.5 < p[3:].min()
    assert p.max() < 1.0  # N+ = 3: the top target is (3 + 1) / (3 + 2) = 0.8, so no certainty


@pytest.mark.parametrize("distortion", ["square", "sqrt", "step"])
def test_isotonic_is_monotone_and_bounded(distortion: str) -> None:
    rng = np.random.default_rng(7)
    s = rng.random(5_000)
    true_p = {"square": s**2, "sqrt": np.sqrt(s), "step": np.where(s > 0.6, 0.9, 0.2)}[distortion]
    y = (rng.random(s.size) < true_p).astype(int)
    xs, ys = fit_isotonic(s, y)
    assert np.all(np.diff(xs) >= 0) and np.all(np.diff(ys) >= 0)
    assert 0.0 <= min(ys) and max(ys) <= 1.0
    grid = np.linspace(-0.5, 1.5, 401)  # beyond the data on both sides: clamped
    out = apply_calibration(grid, ScoreCalibration(method="isotonic", params={"x": xs, "y": ys}))
    assert np.all(np.diff(out) >= -1e-7)
    # it learns the distortion: within 0.1 of the true probability in the middle of the range
    mid = (grid > 0.2) & (grid < 0.8) & (np.abs(grid - 0.6) > 0.05)
    truth = {"square": grid**2, "sqrt": np.sqrt(np.clip(grid, 0, None)), "step": np.where(grid > 0.6, 0.9, 0.2)}
    assert np.max(np.abs(out[mid] - truth[distortion][mid])) < 0.1


# Reals 0.000, 0.001, ..., 0.999 (1,000 of them). Fakes: 40 at 0.3, 30 at 0.9935, 30 at 0.9995.
# target 0.01  -> at most floor(10) reals may score >= t. Sorted high to low, the 11th real (index 10) is 0.989,
#                 which must not be flagged; the smallest observed score above it is 0.990 (a real).
#                 FPR = #{0.990..0.999} / 1000 = 10 / 1000; TPR = (30 + 30) / 100.
# target 0.005 -> 5 reals allowed, bound 0.994, next score 0.995: FPR 5/1000; 0.9935 < 0.995 so TPR = 30/100.
# target 0.001 -> 1 real allowed, bound 0.998, next score 0.999: FPR 1/1000; TPR = 30/100 (the 0.9995 fakes).
# target 0.0005 -> 0 reals allowed, bound 0.999, next score 0.9995 (a fake): FPR 0; TPR 30/100.
REALS = np.arange(1000) / 1000.0
FAKES = np.array([0.3] * 40 + [0.9935] * 30 + [0.9995] * 30)


@pytest.mark.parametrize(
    ("target", "threshold", "fpr", "tpr", "reliable"),
    [
        (0.01, 0.990, 0.010, 0.60, True),
        (0.005, 0.995, 0.005, 0.30, True),
        (0.001, 0.999, 0.001, 0.30, True),
        (0.0005, 0.9995, 0.0, 0.30, False),  # needs 2,000 reals to measure
    ],
)
def test_thresholds_on_a_set_with_a_known_answer(
    target: float, threshold: float, fpr: float, tpr: float, reliable: bool
) -> None:
    scores = np.concatenate([REALS, FAKES])
    labels = np.concatenate([np.zeros(REALS.size, int), np.ones(FAKES.size, int)])
    c = choose_threshold(scores, labels, target)
    assert c.threshold == pytest.approx(threshold, abs=1e-12)
    assert c.fpr == pytest.approx(fpr, abs=1e-12) and c.fpr <= target
    assert c.tpr == pytest.approx(tpr, abs=1e-12)
    assert (c.n_real, c.n_fake, c.reliable) == (1000, 100, reliable)
    assert c.key == threshold_key(target)
    # the smallest such threshold: every observed score below it flags too many reals
    below = scores[scores < c.threshold]
    assert np.mean(REALS >= below.max()) > target


@pytest.mark.parametrize(
    ("fakes", "threshold", "tpr"),
    [
        ([0.95] * 10 + [0.5] * 10, 0.95, 0.5),  # ties at 0.9 cannot be split: next observed score
        ([0.5] * 20, float(np.nextafter(0.9, 1.0)), 0.0),  # nothing above the highest real: just above it
    ],
)
def test_tied_reals_are_never_split(fakes: list[float], threshold: float, tpr: float) -> None:
    reals = [0.9] * 5 + [0.1] * 95  # 5 % of reals tie at 0.9; target 1 % allows 1 of them: none can be
    scores = np.array(reals + fakes)
    labels = np.array([0] * 100 + [1] * len(fakes))
    c = choose_threshold(scores, labels, 0.01)
    assert c.threshold == threshold and c.fpr == 0.0 and c.tpr == tpr


def test_too_few_reals_warn_with_the_needed_count() -> None:
    scores = np.r_[np.linspace(0, 0.5, 50), np.linspace(0.4, 1, 50)]
    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    fit = fit_calibration(scores, labels, "platt", (0.1, 0.01))
    by_key = {t.key: t for t in fit.thresholds}
    assert by_key["fpr_0.1"].reliable and by_key["fpr_0.1"].warning is None
    assert not by_key["fpr_0.01"].reliable and "needs at least 100" in by_key["fpr_0.01"].warning
    assert fit.calibration.thresholds == {"fpr_0.1": by_key["fpr_0.1"].threshold, "fpr_0.01": by_key["fpr_0.01"].threshold}
    assert fit.calibration.params["fit"]["thresholds"]["fpr_0.01"]["reliable"] is False


@pytest.mark.parametrize(
    ("cal", "scores", "expected"),
    [
        (ScoreCalibration(), [0.0, 0.2, 0.7, 1.0], [0.0, 0.2, 0.7, 1.0]),
        # a = 2, b = -1: logit(0.5) = 0 -> 1/(1+e); logit(0.8) = ln 4 -> 16/(16+e); logit(0.1) = -ln 9 -> 1/(1+81e)
        (
            ScoreCalibration(method="platt", params={"a": 2.0, "b": -1.0}),
            [0.5, 0.8, 0.1],
            [1 / (1 + E), 16 / (16 + E), 1 / (1 + 81 * E)],
        ),
        # a = -0.5, b = 0.3 (an inverted model): logit(0.8) = ln 4 -> sigmoid(0.3 - ln 2) = 1 / (1 + 2 e^-0.3)
        (ScoreCalibration(method="platt", params={"a": -0.5, "b": 0.3}), [0.8], [1 / (1 + 2 * math.exp(-0.3))]),
        # breakpoints (0.2, 0.1) and (0.6, 0.9): clamped outside, linear between
        (
            ScoreCalibration(method="isotonic", params={"x": [0.2, 0.6], "y": [0.1, 0.9]}),
            [0.0, 0.2, 0.4, 0.5, 0.6, 1.0],
            [0.1, 0.1, 0.5, 0.7, 0.9, 0.9],
        ),
    ],
)
def test_apply_calibration_by_hand(cal: ScoreCalibration, scores: list[float], expected: list[float]) -> None:
    out = apply_calibration(np.array(scores, np.float32), cal)
    assert out.dtype == np.float32 and out.shape == (len(scores),)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_logit_is_finite_at_the_ends() -> None:
    assert np.all(np.isfinite(logit(np.array([0.0, 1.0]))))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: apply_calibration(np.ones(2), ScoreCalibration(method="platt", params={"a": 1.0})), ConfigError, "'a' and 'b'"),
        (lambda: apply_calibration(np.ones(2), ScoreCalibration(method="isotonic", params={"x": [0.1], "y": []})),
         ConfigError, "equal-length"),
        (lambda: apply_calibration(np.ones(2), ScoreCalibration(method="isotonic", params={"x": [0.5, 0.1], "y": [0, 1]})),
         ConfigError, "non-decreasing"),
        (lambda: fit_calibration(np.array([0.1, 0.2]), np.array([0, 0])), SwapwatchError, "2 real and 0 fake"),
        (lambda: choose_threshold(np.array([0.1, 0.9]), np.array([0, 1]), 1.0), ConfigError, r"in \(0, 1\)"),
        (lambda: fit_calibration(np.array([0.1, np.nan]), np.array([0, 1])), SwapwatchError, "NaN"),
        (lambda: fit_calibration(np.array([0.1, 0.9]), np.array([0, 1]), "beta"), ConfigError, "platt, isotonic"),  # type: ignore[arg-type]
    ],
)
def test_bad_inputs_raise_clear_errors(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_fit_improves_calibration_of_a_miscalibrated_score(method: str) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    raw = 1 / (1 + np.exp(-3 * z + 1))  # overconfident and shifted
    fit = fit_calibration(raw, y, method)  # type: ignore[arg-type]
    assert fit.ece_calibrated < 0.03 < fit.ece_raw
    assert fit.brier_calibrated < fit.brier_raw
