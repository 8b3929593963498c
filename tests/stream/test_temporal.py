"""Smoothing and hysteresis on tables of score sequences (stream-clock times, no wall clock)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from swapwatch.engine.metadata import ScoreCalibration
from swapwatch.stream.temporal import (
    FALLBACK_ALERT_ENTER,
    FALLBACK_SUSPICIOUS_ENTER,
    SmoothingConfig,
    StreamVerdict,
    TrackBook,
    TrackSmoother,
    TrackState,
    logit_to_score,
    score_to_logit,
    thresholds_from_calibration,
)

CFG = SmoothingConfig()  # suspicious 0.5/0.38, alert 0.8/0.71, dwell 0.3/1.0/2.0 s, 3 updates, gap 2 s


def frames(segments: list[tuple[float, float | None]], fps: float = 30.0, start: float = 0.0) -> list[tuple[float, float]]:
    """(duration_s, score) segments -> (t, score) samples at `fps`; a score of None leaves a gap."""
    out = []
    t = start
    for duration, score in segments:
        n = max(1, round(duration * fps))
        for _ in range(n):
            if score is not None:
                out.append((t, score))
            t += 1.0 / fps
    return out


def run(samples: list[tuple[float, float]], cfg: SmoothingConfig = CFG) -> list[TrackState]:
    sm = TrackSmoother(cfg, track=7)
    return [sm.update(t, s) for t, s in samples]


def changes(states: list[TrackState]) -> list[str]:
    return [s.state for s in states if s.changed]


def with_spike(base: float, spike: float, fps: float, at: float, total: float) -> list[tuple[float, float]]:
    samples = frames([(total, base)], fps)
    i = min(range(len(samples)), key=lambda k: abs(samples[k][0] - at))
    samples[i] = (samples[i][0], spike)
    return samples


CASES = [
    # name, samples, expected changes
    ("flat low", frames([(5.0, 0.05)]), []),
    ("single spike mid-track", with_spike(0.05, 0.9999, 30, 2.0, 4.0), []),
    ("single spike as the first frame", with_spike(0.05, 0.9999, 30, 0.0, 4.0), []),
    (
        "single spike then a pause < max_gap",
        [*frames([(1.0, 0.05)]), (1.0, 0.9999), *frames([(3.0, 0.05)], start=2.5)],
        [],
    ),
    ("three spike frames (0.1 s)", frames([(1.0, 0.05), (0.1, 0.9999), (3.0, 0.05)]), []),
    ("sustained rise", frames([(1.0, 0.05), (4.0, 0.95)]), ["suspicious", "alert"]),
    ("moderate rise stops at suspicious", frames([(1.0, 0.05), (4.0, 0.65)]), ["suspicious"]),
    ("rise then sustained fall", frames([(1.0, 0.05), (4.0, 0.95), (5.0, 0.05)]), ["suspicious", "alert", "clear"]),
    ("alert falls back to suspicious", frames([(4.0, 0.95), (5.0, 0.6)]), ["suspicious", "alert", "suspicious"]),
    # raw scores cross suspicious_enter on every other frame; the robust score sits at ~0.47, below it
    (
        "flicker across the enter threshold",
        frames([(1.0, 0.05)]) + [(1.0 + i / 30, 0.6 if i % 2 else 0.35) for i in range(150)],
        [],
    ),
    # a suspicious track whose frames flicker across suspicious_exit stays suspicious
    (
        "flicker across the exit threshold",
        frames([(3.0, 0.65)]) + [(3.0 + i / 30, 0.47 if i % 2 else 0.33) for i in range(150)],
        ["suspicious"],
    ),
    ("single good frame inside an alert", with_spike(0.95, 0.0001, 30, 4.0, 7.0), ["suspicious", "alert"]),
    ("a good second inside an alert", frames([(4.0, 0.95), (1.0, 0.05), (2.0, 0.95)]), ["suspicious", "alert"]),
    ("short gap inside an alert keeps it", frames([(4.0, 0.95), (1.5, None), (1.0, 0.95)]), ["suspicious", "alert"]),
    (
        "gap > max_gap_s restarts the track",
        frames([(4.0, 0.95), (2.5, None), (1.0, 0.05)]),
        ["suspicious", "alert", "clear"],
    ),
]


@pytest.mark.parametrize(("name", "samples", "expected"), CASES, ids=[c[0] for c in CASES])
def test_state_sequences(name: str, samples: list[tuple[float, float]], expected: list[str]) -> None:
    assert changes(run(samples)) == expected


@pytest.mark.parametrize("fps", [2.0, 5.0, 15.0, 30.0, 60.0])
@pytest.mark.parametrize("at", [0.0, 1.0, 2.5])
def test_one_bad_frame_never_raises(fps: float, at: float) -> None:
    states = run(with_spike(0.05, 0.99999, fps, at, 5.0))
    assert [s.state for s in states] == ["clear"] * len(states)


@pytest.mark.parametrize("fps", [2.0, 5.0, 15.0, 30.0, 60.0])
def test_one_good_frame_never_clears(fps: float) -> None:
    base = run(frames([(6.0, 0.97)], fps))
    assert base[-1].state == "alert"
    states = run(with_spike(0.97, 0.00001, fps, 4.5, 6.0))
    assert changes(states) == changes(base)
    assert states[-1].state == "alert"


def test_rise_times_follow_dwell() -> None:
    states = run(frames([(1.0, 0.05), (4.0, 0.95)]))
    first_above = next(s.t for s in states if s.score is not None and s.score >= CFG.alert_enter)
    alert = next(s for s in states if s.changed and s.state == "alert")
    assert alert.t - first_above >= CFG.min_alert_s
    assert alert.t - first_above <= CFG.min_alert_s + 0.1  # the next frame after the dwell, not later
    assert alert.since == alert.t and alert.previous == "suspicious" and alert.reason


def test_fall_waits_min_clear() -> None:
    states = run(frames([(4.0, 0.95), (5.0, 0.05)]))
    first_below = next(s.t for s in states if s.t > 4.0 and s.score is not None and s.score < CFG.alert_exit)
    clear = next(s for s in states if s.changed and s.state == "clear")
    assert clear.previous == "alert"  # straight down: the score is below suspicious_exit by then
    assert CFG.min_clear_s <= clear.t - first_below <= CFG.min_clear_s + 0.1


def test_gap_reset_is_flagged() -> None:
    states = run(frames([(4.0, 0.95), (2.5, None), (1.0, 0.05)]))
    restart = next(s for s in states if s.ended)
    assert restart.changed and restart.previous == "alert" and restart.state == "clear" and restart.window == 1


@pytest.mark.parametrize(("trim", "robust"), [(0.25, True), (0.0, False)])
def test_trimmed_mean_ignores_outliers(trim: float, robust: bool) -> None:
    cfg = SmoothingConfig(trim=trim)
    states = run(with_spike(0.1, 0.9999, 30, 1.5, 2.0), cfg)
    spike = min(states, key=lambda s: abs(s.t - 1.5))
    before = states[states.index(spike) - 1]
    assert (spike.score == pytest.approx(before.score, abs=1e-9)) is robust


def test_window_is_bounded() -> None:
    cfg = SmoothingConfig(window_s=10.0, window_frames=20)
    states = run(frames([(3.0, 0.2)], 60), cfg)
    assert max(s.window for s in states) == 20


def test_non_finite_score_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        TrackSmoother(CFG).update(0.0, math.nan)


@pytest.mark.parametrize("p", [1e-9, 0.01, 0.3, 0.5, 0.9, 0.999999])
def test_logit_round_trip(p: float) -> None:
    assert logit_to_score(score_to_logit(p)) == pytest.approx(min(max(p, 1e-6), 1 - 1e-6), rel=1e-9)


# -- defaults from the model's calibration ------------------------------------------------------------


def _cal(thresholds: dict[str, float], reliable: dict[str, bool] | None = None) -> ScoreCalibration:
    params = {}
    if reliable is not None:
        params = {"fit": {"thresholds": {k: {"reliable": v} for k, v in reliable.items()}}}
    return ScoreCalibration(method="platt", params=params, thresholds=thresholds)


CAL_CASES = [
    # thresholds, expected suspicious_enter, expected alert_enter, reliable
    ({"fpr_0.01": 0.6, "fpr_0.001": 0.9}, 0.6, 0.9, True),
    ({"fpr_0.05": 0.4, "fpr_0.002": 0.7, "fpr_0.01": 0.5}, 0.4, 0.7, True),
    ({"fpr_0.01": 0.6}, 0.6, logit_to_score(score_to_logit(0.6) + 1.0), True),
    ({}, FALLBACK_SUSPICIOUS_ENTER, FALLBACK_ALERT_ENTER, False),
    ({"other": 0.3}, FALLBACK_SUSPICIOUS_ENTER, FALLBACK_ALERT_ENTER, False),
    ({"fpr_0.01": 0.9, "fpr_0.001": 0.85}, 0.9, 0.9, True),  # hand-edited, inverted: alert never below suspicious
]


@pytest.mark.parametrize(("thresholds", "suspicious", "alert", "reliable"), CAL_CASES)
def test_from_calibration(thresholds: dict[str, float], suspicious: float, alert: float, reliable: bool) -> None:
    picked = thresholds_from_calibration(_cal(thresholds))
    assert (picked.suspicious_enter, picked.reliable) == (pytest.approx(suspicious), reliable)
    assert picked.alert_enter == pytest.approx(alert)
    cfg = SmoothingConfig.from_calibration(_cal(thresholds))
    assert cfg.suspicious_enter == pytest.approx(suspicious) and cfg.alert_enter == pytest.approx(alert)
    assert cfg.suspicious_exit < cfg.suspicious_enter and cfg.alert_exit < cfg.alert_enter
    assert cfg.suspicious_exit <= cfg.alert_exit


def test_from_calibration_without_model_matches_plain_defaults() -> None:
    derived = SmoothingConfig.from_calibration(None)
    for key, value in SmoothingConfig().thresholds().items():
        assert derived.thresholds()[key] == pytest.approx(value, abs=0.005)


def test_unreliable_threshold_is_flagged() -> None:
    cal = _cal({"fpr_0.01": 0.6, "fpr_0.001": 0.9}, reliable={"fpr_0.01": True, "fpr_0.001": False})
    assert thresholds_from_calibration(cal).reliable is False


def test_override_rederives_exit() -> None:
    cfg = SmoothingConfig.from_calibration(_cal({"fpr_0.01": 0.6, "fpr_0.001": 0.9}), alert_enter=0.95, min_alert_s=2.0)
    assert cfg.alert_enter == 0.95 and cfg.min_alert_s == 2.0
    assert cfg.alert_exit == pytest.approx(logit_to_score(score_to_logit(0.95) - 0.5))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"suspicious_exit": 0.6}, "suspicious_exit"),
        ({"alert_exit": 0.85}, "alert_exit"),
        ({"alert_enter": 0.45, "alert_exit": 0.4}, "alert_enter"),
        ({"min_updates": 1}, "min_updates"),
        ({"windw_s": 1.0}, "windw_s"),  # unknown keys are rejected
        ({"trim": 0.5}, "trim"),
    ],
)
def test_invalid_configs(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SmoothingConfig(**fields)


# -- many tracks ----------------------------------------------------------------------------------------


def test_trackbook_verdict_and_expiry() -> None:
    book = TrackBook("cam", CFG)
    for t, _ in frames([(4.0, 0.0)]):
        book.update(1, t, 0.95)
        book.update(2, t, 0.05)
    v = book.verdict(4.0)
    assert (v.state, v.tracks, v.worst_track, v.counts) == ("alert", 2, 1, {"clear": 1, "suspicious": 0, "alert": 1})
    assert v.max_score == pytest.approx(book.states()[0].score)
    for t, _ in frames([(1.0, 0.0)], start=4.0):
        book.update(2, t, 0.05)
    ended = book.expire(6.5)  # track 1 last seen at ~3.97 s, track 2 at ~4.97 s; max_gap_s 2
    assert [(e.track, e.previous, e.state, e.changed, e.ended) for e in ended] == [(1, "alert", "clear", True, True)]
    assert book.verdict(6.5).state == "clear" and len(book) == 1
    assert [e.track for e in book.end_all(8.0, "stream ended")] == [2] and len(book) == 0


def test_empty_verdict() -> None:
    v = StreamVerdict.of("cam", 1.0, [])
    assert (v.state, v.max_score, v.tracks) == ("clear", None, 0)


def scored_once(last_scores: dict[int, float]) -> TrackBook:
    """A book whose tracks (in this order) were each scored once, at the given stream time."""
    book = TrackBook("cam", CFG)
    for track, t in last_scores.items():
        book.update(track, t, 0.05)
    return book


EXPIRY_CASES = [
    # name, last score time per track, tracks the face tracker follows, now, tracks that end (in order)
    ("recent track stays", {1: 3.0}, set(), 4.0, []),
    ("exactly max_gap_s old stays", {1: 2.0}, set(), 4.0, []),
    ("stale track ends", {1: 1.0}, set(), 4.0, [1]),
    ("stale but followed by the tracker stays", {1: 1.0}, {1}, 4.0, []),
    ("stale unfollowed tracks end, first seen first", {3: 0.5, 1: 1.0, 2: 3.5, 4: 0.0}, {4}, 4.0, [3, 1]),
]


@pytest.mark.parametrize(("name", "last_scores", "seen", "now", "expected"), EXPIRY_CASES,
                         ids=[c[0] for c in EXPIRY_CASES])
def test_expire(name: str, last_scores: dict[int, float], seen: set[int], now: float, expected: list[int]) -> None:
    book = scored_once(last_scores)
    ended = book.expire(now, seen)
    assert [e.track for e in ended] == expected
    for e in ended:
        assert (e.state, e.ended, e.t, e.window) == ("clear", True, now, 0)
        assert e.reason == f"track unseen for {now - last_scores[e.track]:.2f} s (> max_gap_s 2)"
    assert [s.track for s in book.states()] == [t for t in last_scores if t not in expected]


def test_a_followed_track_past_the_gap_keeps_its_state_until_its_next_score() -> None:
    book = TrackBook("cam", CFG)
    for t, score in frames([(4.0, 0.95)]):
        book.update(1, t, score)
    assert book.expire(7.0, seen={1}) == [] and book.verdict(7.0).state == "alert"
    restart = book.update(1, 7.0, 0.05)
    assert (restart.ended, restart.changed, restart.previous, restart.state) == (True, True, "alert", "clear")
    assert restart.reason is not None and restart.reason.endswith("restarted") and len(book) == 1


END_CASES = [
    # name, score of track 1 over 4 s (None: never scored), (previous, changed) of its end record (None: no record)
    ("clear track", 0.05, ("clear", False)),
    ("alerting track", 0.95, ("alert", True)),
    ("unknown track", None, None),
]


@pytest.mark.parametrize(("name", "score", "expected"), END_CASES, ids=[c[0] for c in END_CASES])
def test_end(name: str, score: float | None, expected: tuple[str, bool] | None) -> None:
    book = TrackBook("cam", CFG)
    if score is not None:
        for t, s in frames([(4.0, score)]):
            book.update(1, t, s)
    last = book.state(1)
    ended = book.end(1, 5.0, "face lost by the tracker")
    assert (None if ended is None else (ended.previous, ended.changed)) == expected
    if ended is not None:
        assert last is not None and ended.score == last.score
        assert (ended.state, ended.ended, ended.t, ended.reason) == ("clear", True, 5.0, "face lost by the tracker")
    assert 1 not in book and book.state(1) is None and book.verdict(5.0).tracks == 0


def test_end_all_in_first_seen_order() -> None:
    book = scored_once({2: 1.0, 1: 1.5, 3: 2.0})
    ended = book.end_all(3.0, "stream ended")
    assert [(e.track, e.reason) for e in ended] == [(2, "stream ended"), (1, "stream ended"), (3, "stream ended")]
    assert len(book) == 0 and book.states() == []


def test_a_refused_first_score_leaves_no_track() -> None:
    book = TrackBook("cam", CFG)
    with pytest.raises(ValueError, match="finite"):
        book.update(1, 0.0, math.nan)
    assert 1 not in book and book.end_all(1.0, "stream ended") == []
