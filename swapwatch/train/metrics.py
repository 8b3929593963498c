"""Detection metrics after DeepfakeBench: frame AUC, video AUC (mean frame score per video), EER, AP, accuracy.

All functions take P(fake) scores and binary labels (1 = fake). A metric that is undefined for the
input (one class only) is returned as None rather than raising, so partial reports still print.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass
class Metrics:
    auc: float | None
    eer: float | None
    ap: float | None
    accuracy: float
    n: int
    n_fake: int
    video_auc: float | None = None
    n_videos: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _two_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < int(labels.sum()) < labels.size


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The rate where false positives equal false negatives, interpolated on the ROC curve."""
    labels = np.asarray(labels)
    if not _two_classes(labels):
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    # Interpolate between the two ROC points that bracket fpr == fnr.
    if i + 1 < len(fpr) and (fnr[i] - fpr[i]) * (fnr[i + 1] - fpr[i + 1]) < 0:
        d0, d1 = fnr[i] - fpr[i], fnr[i + 1] - fpr[i + 1]
        t = d0 / (d0 - d1)
        return float(fpr[i] + t * (fpr[i + 1] - fpr[i]))
    return float((fpr[i] + fnr[i]) / 2)


def video_scores(
    video_ids: Sequence[str], labels: Sequence[int], scores: Sequence[float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean frame score per video; a video's label is its frames' label (mixed labels: any fake -> fake)."""
    groups: dict[str, list[float]] = defaultdict(list)
    glabels: dict[str, int] = {}
    for vid, lab, s in zip(video_ids, labels, scores, strict=True):
        groups[vid].append(float(s))
        glabels[vid] = max(glabels.get(vid, 0), int(lab))
    ids = sorted(groups)
    return ids, np.array([glabels[v] for v in ids]), np.array([np.mean(groups[v]) for v in ids])


def compute_metrics(
    labels: Sequence[int],
    scores: Sequence[float],
    video_ids: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> Metrics:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    two = _two_classes(y)
    m = Metrics(
        auc=float(roc_auc_score(y, s)) if two else None,
        eer=equal_error_rate(y, s),
        ap=float(average_precision_score(y, s)) if two else None,
        accuracy=float(np.mean((s >= threshold) == (y == 1))) if y.size else float("nan"),
        n=int(y.size),
        n_fake=int(y.sum()),
    )
    if video_ids is not None:
        _, vy, vs = video_scores(video_ids, y.tolist(), s.tolist())
        m.video_auc = float(roc_auc_score(vy, vs)) if _two_classes(vy) else None
        m.n_videos = int(vy.size)
    return m
