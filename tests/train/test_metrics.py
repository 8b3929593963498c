"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from swapwatch.train.metrics import compute_metrics, equal_error_rate, video_scores


@pytest.mark.parametrize(
    ("labels", "scores", "auc"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),  # perfectly separated
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),  # perfectly inverted
        ([0, 1, 0, 1], [0.1, 0.3, 0.35, 0.8], 0.75),  # 3 of 4 (real, fake) pairs ordered right
        ([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # ties count half
    ],
)
def test_frame_auc(labels: list[int], scores: list[float], auc: float) -> None:
    assert compute_metrics(labels, scores).auc == pytest.approx(auc)


@pytest.mark.parametrize(
    ("labels", "scores", "eer"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 1.0),
        # 4 reals, 4 fakes, one of each on the wrong side of every threshold near the middle: EER 1/4
        ([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.85, 0.9], 0.25),
    ],
)
def test_equal_error_rate(labels: list[int], scores: list[float], eer: float) -> None:
    assert equal_error_rate(np.array(labels), np.array(scores)) == pytest.approx(eer, abs=1e-9)


def test_single_class_metrics_are_none_not_errors() -> None:
    m = compute_metrics([0, 0, 0], [0.1, 0.6, 0.2])
    assert m.auc is None and m.eer is None and m.ap is None
    assert m.accuracy == pytest.approx(2 / 3)


def test_video_auc_uses_mean_frame_score_per_video() -> None:
    # video a (real): frames 0.1, 0.9 -> mean 0.5; video b (fake): 0.6, 0.6 -> 0.6; video c (real): 0.2
    vids = ["a", "a", "b", "b", "c"]
    labels = [0, 0, 1, 1, 0]
    scores = [0.1, 0.9, 0.6, 0.6, 0.2]
    ids, vy, vs = video_scores(vids, labels, scores)
    assert ids == ["a", "b", "c"]
    assert vy.tolist() == [0, 1, 0]
    assert vs.tolist() == pytest.approx([0.5, 0.6, 0.2])
    m = compute_metrics(labels, scores, vids)
    assert m.video_auc == pytest.approx(1.0)  # the fake video beats both real ones
    assert m.auc == pytest.approx(4 / 6)  # frame level: the real 0.9 outranks both fake 0.6 frames
    assert m.n_videos == 3


def test_average_precision_by_hand() -> None:
    # ranking: 0.9 (fake), 0.8 (real), 0.7 (fake): precision at each fake = 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    m = compute_metrics([1, 0, 1], [0.9, 0.8, 0.7])
    assert m.ap == pytest.approx((1 + 2 / 3) / 2)
    assert math.isclose(m.accuracy, 2 / 3)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        compute_metrics([0, 1], [0.5])
