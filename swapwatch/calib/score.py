"""Score calibration: raw detector scores -> calibrated probabilities, and thresholds for target FPRs.

Two mappings are fitted on a labelled set (0 = real, 1 = fake):

* **platt**: p = sigmoid(a * logit(s) + b), fitted by Newton's method on the log loss with Platt's
  smoothed targets ((N+ + 1) / (N+ + 2) for fakes, 1 / (N- + 2) for reals), so perfectly separated
  scores give a finite, steep map instead of diverging. Two parameters: stable on a few hundred crops,
  but it can only stretch and shift the logit, not fix a non-sigmoid distortion.
* **isotonic**: the best non-decreasing step map (scikit-learn's IsotonicRegression, only at fit time).
  It can fix any monotone distortion but needs many samples per class and its flat steps put many raw
  scores on one probability. It is stored as x/y breakpoints and applied with `np.interp`, so inference
  needs numpy only.

Thresholds are chosen on the **raw** score (what the engine outputs), never on the calibrated
probability: the isotonic map is flat in places, so thresholding its output would merge scores the
model ranks apart, while raw thresholds keep the model's full ranking. A threshold is the smallest
observed score whose false-positive rate on the reals is <= the target (the decision is
`raw_score >= threshold`). An FPR of `t` cannot be measured on fewer than 1 / t reals, so such a
threshold is flagged `reliable: false` with a warning (it is still written: it is then just above the
highest real score).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from swapwatch.engine.metadata import ScoreCalibration, read_metadata, write_metadata
from swapwatch.errors import ConfigError, SwapwatchError

log = logging.getLogger(__name__)

DEFAULT_TARGET_FPRS: tuple[float, ...] = (0.01, 0.001)
"""False-positive rates a threshold is chosen for by default: 1 % and 0.1 % of real faces flagged."""

EPS = 1e-6
"""Scores are clipped to [EPS, 1 - EPS] before the logit, so 0 and 1 map to finite values (+-13.8)."""

Method = Literal["identity", "platt", "isotonic"]


@dataclass
class ThresholdChoice:
    """One chosen threshold and what it achieved on the fitting set (flag when raw score >= threshold)."""

    key: str
    target_fpr: float
    threshold: float
    fpr: float
    tpr: float | None
    n_real: int
    n_fake: int
    reliable: bool
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CalibrationFit:
    """A fitted calibration, its thresholds, and in-sample quality numbers for the report."""

    calibration: ScoreCalibration
    thresholds: list[ThresholdChoice]
    brier_raw: float
    brier_calibrated: float
    ece_raw: float
    ece_calibrated: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.calibration.method,
            "params": {k: v for k, v in self.calibration.params.items() if k in ("a", "b")},
            "thresholds": {t.key: t.as_dict() for t in self.thresholds},
            "brier_raw": self.brier_raw,
            "brier_calibrated": self.brier_calibrated,
            "ece_raw": self.ece_raw,
            "ece_calibrated": self.ece_calibrated,
        }


def threshold_key(target_fpr: float) -> str:
    """Sidecar key of a target FPR: 0.01 -> "fpr_0.01", 0.001 -> "fpr_0.001"."""
    return f"fpr_{target_fpr:g}"


def logit(scores: np.ndarray) -> np.ndarray:
    """log(s / (1 - s)) in float64, with s clipped to [EPS, 1 - EPS]."""
    s = np.clip(np.asarray(scores, np.float64), EPS, 1.0 - EPS)
    return np.log(s) - np.log1p(-s)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + exp(-z))


def _check_labelled(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    if not np.all(np.isfinite(s)):
        raise SwapwatchError(f"score calibration: {int(np.sum(~np.isfinite(s)))} scores are NaN or infinite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return s, y.astype(np.int64)


def _need_both_classes(y: np.ndarray, what: str) -> None:
    n_fake = int(y.sum())
    if n_fake == 0 or n_fake == y.size:
        raise SwapwatchError(
            f"{what} needs real and fake scores: got {y.size - n_fake} real and {n_fake} fake "
            "(add fake/ crops or make pseudo-fakes of the reals)"
        )


def fit_platt(scores: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * logit(s) + b), by damped Newton steps on the smoothed-target log loss."""
    s, y = _check_labelled(scores, labels)
    _need_both_classes(y, "Platt scaling")
    z = logit(s)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(a: float, b: float) -> float:
        f = a * z + b
        # log(1 + exp(f)) - t * f, computed stably
        return float(np.sum(np.logaddexp(0.0, f) - t * f))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(max_iter):
        p = _sigmoid(a * z + b)
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        w = p * (1.0 - p)
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(h, g)
        lr = 1.0
        while lr > 1e-8:
            na, nb = a - lr * step[0], b - lr * step[1]
            new = loss(na, nb)
            if new <= current:
                break
            lr *= 0.5
        else:
            break
        a, b = float(na), float(nb)
        done = current - new < 1e-12 * max(1.0, abs(current))
        current = new
        if done or float(np.max(np.abs(lr * step))) < 1e-10:
            break
    return a, b


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    """Breakpoints (x, y) of the non-decreasing least-squares fit of labels on scores, y in [0, 1]."""
    from sklearn.isotonic import IsotonicRegression

    s, y = _check_labelled(scores, labels)
    _need_both_classes(y, "isotonic calibration")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y.astype(np.float64))
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def apply_calibration(scores: np.ndarray, cal: ScoreCalibration) -> np.ndarray:
    """Raw scores -> calibrated probabilities (float32, same shape). Needs numpy only.

    identity: the scores unchanged; platt: sigmoid(a * logit(s) + b); isotonic: piecewise-linear
    interpolation between the stored breakpoints, clamped to the end values outside them.
    """
    s = np.asarray(scores, np.float64)
    if cal.method == "identity":
        return s.astype(np.float32)
    if cal.method == "platt":
        try:
            a, b = float(cal.params["a"]), float(cal.params["b"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"score_calibration.params: platt needs numbers 'a' and 'b', got keys {sorted(cal.params)}"
            ) from None
        return _sigmoid(a * logit(s) + b).astype(np.float32)
    if cal.method == "isotonic":
        x = np.asarray(cal.params.get("x", []), np.float64)
        y = np.asarray(cal.params.get("y", []), np.float64)
        if x.ndim != 1 or x.size == 0 or x.shape != y.shape:
            raise ConfigError(
                f"score_calibration.params: isotonic needs equal-length non-empty 'x' and 'y', "
                f"got {x.size} and {y.size} values"
            )
        if np.any(np.diff(x) < 0):
            raise ConfigError("score_calibration.params: isotonic 'x' breakpoints must be non-decreasing")
        return np.interp(s, x, y).astype(np.float32)
    raise ConfigError(f"score_calibration.method: unknown method {cal.method!r}")  # pragma: no cover


def choose_threshold(scores: np.ndarray, labels: np.ndarray, target_fpr: float) -> ThresholdChoice:
    """The smallest observed score t with FPR(t) = mean(real >= t) <= target_fpr; TPR = mean(fake >= t).

    When no observed score qualifies (every score above the highest allowed real is missing), the
    threshold is the next float above the highest real score (nothing real is flagged).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ConfigError(f"target FPR must be in (0, 1), got {target_fpr}")
    s, y = _check_labelled(scores, labels)
    reals = np.sort(s[y == 0])[::-1]
    fakes = s[y == 1]
    n_real = int(reals.size)
    if n_real == 0:
        raise SwapwatchError("choosing a threshold for a false-positive rate needs real faces: got none")
    allowed = math.floor(target_fpr * n_real + 1e-9)  # most reals that may score >= t
    bound = reals[allowed]  # the highest real that must NOT be flagged (allowed < n_real as target < 1)
    above = s[s > bound]
    threshold = float(above.min()) if above.size else float(np.nextafter(bound, np.inf))
    fpr = float(np.mean(reals >= threshold))
    tpr = float(np.mean(fakes >= threshold)) if fakes.size else None
    needed = math.ceil(1.0 / target_fpr - 1e-9)
    reliable = n_real >= needed
    warning = None
    if not reliable:
        warning = (
            f"only {n_real} real faces: a false-positive rate of {target_fpr:g} needs at least {needed} "
            "to be measured; this threshold is just above the highest real score"
        )
    return ThresholdChoice(
        key=threshold_key(target_fpr),
        target_fpr=float(target_fpr),
        threshold=threshold,
        fpr=fpr,
        tpr=tpr,
        n_real=n_real,
        n_fake=int(fakes.size),
        reliable=reliable,
        warning=warning,
    )


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error between probabilities and 0/1 labels (lower is better)."""
    p = np.asarray(probs, np.float64)
    return float(np.mean((p - np.asarray(labels, np.float64)) ** 2))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width probability bins: mean predicted probability, fraction of fakes and count per bin."""
    p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
    y = np.asarray(labels, np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"mean_prob": float(p[m].mean()), "frac_fake": float(y[m].mean()), "n": int(m.sum())})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |mean probability - fraction of fakes| over equal-width bins."""
    rows = reliability_bins(probs, labels, bins)
    n = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["mean_prob"] - r["frac_fake"]) for r in rows) / max(n, 1))


def fit_calibration(
    scores: np.ndarray,
    labels: np.ndarray,
    method: Method = "platt",
    target_fprs: Sequence[float] = DEFAULT_TARGET_FPRS,
    warn: bool = True,
) -> CalibrationFit:
    """Fit `method` on (scores, labels) and choose a raw-score threshold for each target FPR.

    The quality numbers (Brier score, ECE) are in-sample: measured on the data the map was fitted on,
    so they flatter the map, isotonic more than Platt.
    """
    s, y = _check_labelled(scores, labels)
    _need_both_classes(y, "score calibration")
    if method == "platt":
        a, b = fit_platt(s, y)
        params: dict[str, Any] = {"a": a, "b": b}
    elif method == "isotonic":
        xs, ys = fit_isotonic(s, y)
        params = {"x": xs, "y": ys}
    elif method == "identity":
        params = {}
    else:
        raise ConfigError(f"score calibration method must be platt, isotonic or identity, got {method!r}")
    choices = [choose_threshold(s, y, t) for t in target_fprs]
    for c in choices:
        if warn and c.warning:
            log.warning("%s: %s", c.key, c.warning)
    params["fit"] = {
        "n_real": int((y == 0).sum()),
        "n_fake": int(y.sum()),
        "thresholds_on": "raw_score",
        "thresholds": {
            c.key: {"fpr": c.fpr, "tpr": c.tpr, "reliable": c.reliable, **({"warning": c.warning} if c.warning else {})}
            for c in choices
        },
    }
    cal = ScoreCalibration(method=method, params=params, thresholds={c.key: c.threshold for c in choices})
    calibrated = apply_calibration(s, cal)
    return CalibrationFit(
        calibration=cal,
        thresholds=choices,
        brier_raw=brier(s, y),
        brier_calibrated=brier(calibrated, y),
        ece_raw=expected_calibration_error(s, y),
        ece_calibrated=expected_calibration_error(calibrated, y),
    )


def write_score_calibration(model_path: str | Path, cal: ScoreCalibration) -> Path:
    """Store `cal` in the sidecar of `model_path`, in place; the sidecar must match the model's hash."""
    meta = read_metadata(model_path, verify_hash=True)
    meta.score_calibration = cal
    return write_metadata(model_path, meta)
