"""Scores over time: a robust running score per face track, and hysteresis states clear/suspicious/alert.

The engine scores every aligned crop independently, and single frames lie: motion blur, a hand in front
of the face, a compression burst or a half-turned head can push one crop's raw score anywhere. The
smoother turns that noisy per-frame series into a state a person can act on:

1. **Robust running score.** Each raw score is mapped to its logit, clipped to +-`logit_clip`, and kept
   in a window of the last `window_s` seconds (at most `window_frames` samples). The smoothed score is
   the *trimmed mean* of that window (by default the interquartile mean: the lowest and highest 25 % are
   dropped), mapped back through the sigmoid so it lives on the raw-score scale the calibrated
   thresholds were chosen on.

   Why this estimator and not another:
   - a plain mean lets one frame at 0.9999 (logit 9.2) outweigh a second of 0.1 frames: no;
   - a running median drops outliers just as well, but it jumps from sample to sample, so a track whose
     scores sit on both sides of a threshold flips its smoothed score from frame to frame; the trimmed
     mean averages the middle half and moves smoothly;
   - an EWMA (even on clipped logits) always lets every frame in with some weight, and its reaction time
     depends on the frame rate unless re-derived from time steps; the window here is in seconds, so a
     15 fps and a 60 fps stream behave alike.
   Once the window holds 3 samples at least one is trimmed at each end (3 samples: the median), so a
   young track or a low frame rate is not left with a plain mean; with 1 or 2 samples nothing can be
   trimmed, which the `min_updates` rule below covers. The cost: the window is sorted on every update
   (O(n log n), n <= `window_frames`, microseconds).
   Logits, not probabilities, are averaged because 0.99 and 0.9999 are very different claims while
   their probabilities differ by 1 %; clipping bounds what any one sample can add.

2. **Hysteresis.** A state rises when the smoothed score has stayed at or above its *enter* threshold
   for `min_suspicious_s` / `min_alert_s` seconds **and** over at least `min_updates` consecutive
   updates; it falls when the score has stayed below the *exit* threshold (lower than enter) for
   `min_clear_s` seconds and `min_updates` updates (an alert that falls lands on clear directly when
   the score is by then below `suspicious_exit`). The two conditions together mean one bad frame never
   raises a state and one good frame never clears one, whatever the frame rate: counting updates alone
   would make the dwell time shrink with the frame rate, and timing alone would let one frame followed by
   a long pause hold a state up "for a second".

3. **Gaps.** A track not updated for `max_gap_s` seconds is over: `TrackBook.expire` ends it, unless
   the face tracker still follows it (its scores were dropped or failed; losing a face is the tracker's
   call), and an update that arrives after such a gap starts the track afresh (clear, empty window).

Thresholds apply to the RAW model score (see `swapwatch.calib.score`): `SmoothingConfig.from_calibration`
takes them from the model sidecar's `score_calibration.thresholds`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from swapwatch.config import StrictModel
from swapwatch.engine.metadata import ScoreCalibration

log = logging.getLogger(__name__)

State = Literal["clear", "suspicious", "alert"]
STATES: tuple[State, ...] = ("clear", "suspicious", "alert")
LEVEL: dict[str, int] = {s: i for i, s in enumerate(STATES)}

FALLBACK_SUSPICIOUS_ENTER = 0.5
"""Suspicious threshold when the model carries no calibrated threshold: P(fake) = 0.5, the natural
decision point of an uncalibrated probability output. Its false-positive rate is unknown."""

FALLBACK_ALERT_ENTER = 0.8
"""Alert threshold when the model carries no calibrated threshold (false-positive rate unknown)."""

EXIT_MARGIN_LOGIT = 0.5
"""How far (in logits) below its enter threshold a derived exit threshold sits: about 0.1 in score
around 0.5, less near 0 or 1, so the gap scales with how sharp the model's scores are there."""

SINGLE_THRESHOLD_ALERT_MARGIN_LOGIT = 1.0
"""When the model has one calibrated threshold, alert enters this many logits above it."""

_LOGIT_EPS = 1e-6


def score_to_logit(p: float) -> float:
    """log(p / (1 - p)), with p clipped to [1e-6, 1 - 1e-6] (the clip `swapwatch.calib.score` uses)."""
    q = min(max(float(p), _LOGIT_EPS), 1.0 - _LOGIT_EPS)
    return math.log(q) - math.log1p(-q)


def logit_to_score(z: float) -> float:
    """The sigmoid, written so that large |z| never overflows."""
    return 0.5 * (1.0 + math.tanh(0.5 * float(z)))


@dataclass(frozen=True)
class CalibrationThresholds:
    """The two enter thresholds taken from a model's calibration, and where they came from."""

    suspicious_enter: float
    alert_enter: float
    source: str
    reliable: bool
    warning: str | None = None
    """When not reliable: why, and what to do about it (logged when the thresholds are used)."""


_FPR_KEY = re.compile(r"^fpr_([0-9.eE+-]+)$")
_FIX_COMMAND = (
    "`swapwatch calibrate MODEL.onnx --data DIR --scores` with real/ and fake/ faces in DIR; docs/calibration.md"
)


def _fpr_of(key: str) -> float | None:
    m = _FPR_KEY.match(key)
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def thresholds_from_calibration(cal: ScoreCalibration | None) -> CalibrationThresholds:
    """Pick the suspicious and alert enter thresholds (raw score) from a model's score calibration.

    Preference order:
    1. `fpr_0.01` -> suspicious, `fpr_0.001` -> alert (what `swapwatch calibrate` writes by default);
    2. otherwise any `fpr_<rate>` keys: the largest rate -> suspicious, the smallest -> alert;
       with a single key, alert sits `SINGLE_THRESHOLD_ALERT_MARGIN_LOGIT` logits above it;
    3. no thresholds at all: suspicious 0.5, alert 0.8 (`source` says "fallback"; FPR unknown).
    `reliable` is False when the fallback is used or the calibration flagged a chosen key unreliable
    (fitted on fewer reals than its FPR needs).
    """
    thresholds = dict(cal.thresholds) if cal is not None else {}
    fit = (cal.params.get("fit") or {}) if cal is not None else {}
    flags = fit.get("thresholds", {}) if isinstance(fit, dict) else {}

    def is_reliable(key: str) -> bool:
        info = flags.get(key) if isinstance(flags, dict) else None
        return not (isinstance(info, dict) and info.get("reliable") is False)

    if "fpr_0.01" in thresholds and "fpr_0.001" in thresholds:
        s_key, a_key = "fpr_0.01", "fpr_0.001"
    else:
        rated = []
        for key in thresholds:
            m = _FPR_KEY.match(key)
            if m:
                try:
                    rated.append((float(m.group(1)), key))
                except ValueError:
                    continue
        if not rated:
            return CalibrationThresholds(
                FALLBACK_SUSPICIOUS_ENTER,
                FALLBACK_ALERT_ENTER,
                source="fallback: the model has no score_calibration.thresholds (false-positive rate unknown)",
                reliable=False,
                warning=(
                    f"not reliable: the model carries no calibrated thresholds, so suspicious_enter="
                    f"{FALLBACK_SUSPICIOUS_ENTER:g} and alert_enter={FALLBACK_ALERT_ENTER:g} are generic guesses "
                    "whose false-alert rate on real faces is unknown. To fix: calibrate the model on labelled "
                    f"real and fake faces ({_FIX_COMMAND}), or set smoothing.suspicious_enter and "
                    "smoothing.alert_enter for this model"
                ),
            )
        rated.sort()
        s_key, a_key = rated[-1][1], rated[0][1]
    suspicious = float(thresholds[s_key])
    if s_key == a_key:
        alert = logit_to_score(score_to_logit(suspicious) + SINGLE_THRESHOLD_ALERT_MARGIN_LOGIT)
        source = f"suspicious={s_key}, alert={s_key} + {SINGLE_THRESHOLD_ALERT_MARGIN_LOGIT:g} logit"
    else:
        alert = float(thresholds[a_key])
        source = f"suspicious={s_key}, alert={a_key}"
    # A lower FPR target can only give an equal or higher threshold; guard against hand-edited sidecars.
    alert = max(alert, suspicious)
    weak = [key for key in dict.fromkeys((s_key, a_key)) if not is_reliable(key)]
    warning = None
    if weak:
        n_real = fit.get("n_real") if isinstance(fit, dict) else None
        counted = f"only {n_real} real faces" if isinstance(n_real, int) else "too few real faces"
        plural = len(weak) > 1
        needs = [f"{key} needs at least {math.ceil(1.0 / rate - 1e-9)}" for key in weak
                 if (rate := _fpr_of(key)) is not None and rate > 0]
        warning = (
            f"not reliable: the model's {' and '.join(weak)} threshold{'s were' if plural else ' was'} calibrated on "
            f"{counted}, too few to measure {'those false-positive rates' if plural else 'that false-positive rate'}"
            + (f" ({', '.join(needs)})" if needs else "")
            + ", so real faces may raise more alerts than the rate says. To fix: "
            f"recalibrate with more real faces ({_FIX_COMMAND}), or set smoothing.suspicious_enter and "
            "smoothing.alert_enter for this model"
        )
    return CalibrationThresholds(suspicious, alert, source=source, reliable=not weak, warning=warning)


class SmoothingConfig(StrictModel):
    """Knobs of the per-track smoother. Thresholds are on the raw model score (0..1)."""

    window_s: float = Field(1.0, gt=0, description="Seconds of recent scores the running score is computed over.")
    window_frames: int = Field(
        90, ge=1, description="At most this many recent scores are kept, whatever the frame rate (bounds CPU)."
    )
    trim: float = Field(
        0.25,
        ge=0.0,
        lt=0.5,
        description="Fraction of the window dropped at EACH end before averaging (0.25: interquartile mean; "
        "0: plain mean, not robust).",
    )
    logit_clip: float = Field(
        6.0, gt=0, description="Logits are clipped to +-this before averaging (6 ~ scores 0.0025..0.9975)."
    )
    suspicious_enter: float = Field(
        FALLBACK_SUSPICIOUS_ENTER, gt=0, lt=1, description="Smoothed score at or above which a track turns suspicious."
    )
    suspicious_exit: float = Field(
        0.38, gt=0, lt=1, description="Smoothed score below which a suspicious track clears (< suspicious_enter)."
    )
    alert_enter: float = Field(
        FALLBACK_ALERT_ENTER, gt=0, lt=1, description="Smoothed score at or above which a track raises an alert."
    )
    alert_exit: float = Field(
        0.71, gt=0, lt=1, description="Smoothed score below which an alert falls back (< alert_enter)."
    )
    min_suspicious_s: float = Field(
        0.3, ge=0, description="Seconds the score must stay >= suspicious_enter before the track turns suspicious."
    )
    min_alert_s: float = Field(
        1.0, ge=0, description="Seconds the score must stay >= alert_enter before the track raises an alert."
    )
    min_clear_s: float = Field(
        2.0, ge=0, description="Seconds the score must stay below an exit threshold before the state falls."
    )
    min_updates: int = Field(
        3,
        ge=2,
        description="Consecutive updates a condition must hold (besides the seconds) before any state change; "
        ">= 2, so one frame alone never changes a state.",
    )
    max_gap_s: float = Field(
        2.0, gt=0, description="A track not updated for this many seconds ends; a later update starts it afresh."
    )

    @model_validator(mode="after")
    def _check_order(self) -> SmoothingConfig:
        if not self.suspicious_exit < self.suspicious_enter:
            raise ValueError(
                f"suspicious_exit ({self.suspicious_exit}) must be below suspicious_enter ({self.suspicious_enter})"
            )
        if not self.alert_exit < self.alert_enter:
            raise ValueError(f"alert_exit ({self.alert_exit}) must be below alert_enter ({self.alert_enter})")
        if self.alert_enter < self.suspicious_enter:
            raise ValueError(
                f"alert_enter ({self.alert_enter}) must be at least suspicious_enter ({self.suspicious_enter})"
            )
        if self.alert_exit < self.suspicious_exit:
            raise ValueError(
                f"alert_exit ({self.alert_exit}) must be at least suspicious_exit ({self.suspicious_exit})"
            )
        return self

    @classmethod
    def from_calibration(cls, cal: ScoreCalibration | None, **overrides: Any) -> SmoothingConfig:
        """Defaults derived from the model's calibration; `overrides` (any field) win.

        suspicious_enter = thresholds["fpr_0.01"], alert_enter = thresholds["fpr_0.001"] (see
        `thresholds_from_calibration` for the fallbacks). Each exit threshold sits `EXIT_MARGIN_LOGIT`
        logits below its enter threshold; alert_exit is never below suspicious_exit. Overriding an enter
        threshold without its exit re-derives the exit from the new enter.
        """
        picked = thresholds_from_calibration(cal)
        if not picked.reliable and not {"suspicious_enter", "alert_enter"} <= overrides.keys():
            log.warning("smoothing thresholds are %s", picked.warning)
        s_enter = float(overrides.get("suspicious_enter", picked.suspicious_enter))
        a_enter = float(overrides.get("alert_enter", picked.alert_enter))
        s_exit = logit_to_score(score_to_logit(s_enter) - EXIT_MARGIN_LOGIT)
        a_exit = max(logit_to_score(score_to_logit(a_enter) - EXIT_MARGIN_LOGIT), s_exit)
        values: dict[str, Any] = {
            "suspicious_enter": s_enter,
            "alert_enter": a_enter,
            "suspicious_exit": s_exit,
            "alert_exit": a_exit,
        }
        values.update(overrides)
        return cls(**values)

    def thresholds(self) -> dict[str, float]:
        """The four thresholds by name (for plots and the event's model info)."""
        return {
            "suspicious_enter": self.suspicious_enter,
            "suspicious_exit": self.suspicious_exit,
            "alert_enter": self.alert_enter,
            "alert_exit": self.alert_exit,
        }


@dataclass(frozen=True)
class TrackState:
    """What one update (or an expiry) made of a track.

    t: stream clock in seconds of the update; score: the smoothed score (raw-score scale); since: stream
    time the current state was entered; changed: the state differs from `previous`; ended: the track is
    over (expired after `max_gap_s`, or reset by an update after such a gap); window: samples in the
    window; reason: why the state changed (None when unchanged).
    """

    track: int
    t: float
    raw_score: float | None
    score: float | None
    state: State
    previous: State
    changed: bool
    since: float
    window: int
    ended: bool = False
    reason: str | None = None


@dataclass
class _Condition:
    """A condition that has held over consecutive updates since `since` (None when it does not hold)."""

    since: float | None = None
    updates: int = 0

    def observe(self, holds: bool, t: float) -> None:
        if holds:
            if self.since is None:
                self.since = t
                self.updates = 0
            self.updates += 1
        else:
            self.since = None
            self.updates = 0

    def held(self, t: float, seconds: float, updates: int) -> bool:
        return self.since is not None and t - self.since >= seconds and self.updates >= updates


class TrackSmoother:
    """Smoothing and hysteresis for one face track. Not thread-safe; one per track.

    Timestamps must not go backwards; an update with an older `t` than the last is treated as arriving
    at the last time (a reordered frame must not stretch dwell times).
    """

    def __init__(self, config: SmoothingConfig, track: int = 0) -> None:
        self.config = config
        self.track = track
        self.reset()

    def reset(self) -> None:
        """Forget everything: empty window, state clear."""
        self._window: deque[tuple[float, float]] = deque()
        self._state: State = "clear"
        self._since: float | None = None
        self._last_t: float | None = None
        self._score: float | None = None
        self._above_alert = _Condition()
        self._above_suspicious = _Condition()
        self._below_alert_exit = _Condition()
        self._below_suspicious_exit = _Condition()

    @property
    def state(self) -> State:
        return self._state

    @property
    def score(self) -> float | None:
        """The last smoothed score (None before the first update)."""
        return self._score

    @property
    def last_t(self) -> float | None:
        return self._last_t

    def _smoothed(self) -> float:
        values = sorted(z for _, z in self._window)
        n = len(values)
        k = int(n * self.config.trim)
        if self.config.trim > 0 and n >= 3:
            k = max(k, 1)  # short windows (track start, low fps) still drop their extremes: n = 3 -> median
        kept = values[k : n - k]
        return logit_to_score(sum(kept) / len(kept))

    def update(self, t: float, raw_score: float) -> TrackState:
        """Add one raw score at stream time `t` (seconds); return the smoothed score and state."""
        cfg = self.config
        t = float(t)
        raw = float(raw_score)
        if not math.isfinite(raw):
            raise ValueError(f"track {self.track}: raw score must be finite, got {raw_score!r}")
        previous = self._state
        reset_reason = None
        if self._last_t is not None and t - self._last_t > cfg.max_gap_s:
            reset_reason = f"track unseen for {t - self._last_t:.2f} s (> max_gap_s {cfg.max_gap_s:g}): restarted"
            self.reset()
        if self._last_t is not None and t < self._last_t:
            t = self._last_t
        if self._since is None:
            self._since = t
        self._last_t = t

        z = max(-cfg.logit_clip, min(cfg.logit_clip, score_to_logit(raw)))
        self._window.append((t, z))
        while len(self._window) > cfg.window_frames or (
            len(self._window) > 1 and self._window[0][0] <= t - cfg.window_s
        ):
            self._window.popleft()
        s = self._smoothed()
        self._score = s

        self._above_alert.observe(s >= cfg.alert_enter, t)
        self._above_suspicious.observe(s >= cfg.suspicious_enter, t)
        self._below_alert_exit.observe(s < cfg.alert_exit, t)
        self._below_suspicious_exit.observe(s < cfg.suspicious_exit, t)

        n = cfg.min_updates
        new: State = self._state
        reason = reset_reason
        if self._state != "alert" and self._above_alert.held(t, cfg.min_alert_s, n):
            new = "alert"
            reason = f"score >= alert_enter {cfg.alert_enter:.4g} for {t - self._above_alert.since:.2f} s"  # type: ignore[operator]
        elif self._state == "clear" and self._above_suspicious.held(t, cfg.min_suspicious_s, n):
            new = "suspicious"
            reason = (
                f"score >= suspicious_enter {cfg.suspicious_enter:.4g} "
                f"for {t - self._above_suspicious.since:.2f} s"  # type: ignore[operator]
            )
        elif self._state == "alert" and self._below_alert_exit.held(t, cfg.min_clear_s, n):
            # Leaving alert lands where the score is now: straight to clear when it is already below
            # suspicious_exit (no alert -> suspicious -> clear pair of events a frame apart).
            if s < cfg.suspicious_exit:
                new = "clear"
                reason = f"score < alert_exit {cfg.alert_exit:.4g} for {cfg.min_clear_s:g} s, now < suspicious_exit"
            else:
                new = "suspicious"
                reason = f"score < alert_exit {cfg.alert_exit:.4g} for {cfg.min_clear_s:g} s"
        elif self._state == "suspicious" and self._below_suspicious_exit.held(t, cfg.min_clear_s, n):
            new = "clear"
            reason = f"score < suspicious_exit {cfg.suspicious_exit:.4g} for {cfg.min_clear_s:g} s"
        if new != self._state:
            self._state = new
            self._since = t
        return TrackState(
            track=self.track,
            t=t,
            raw_score=raw,
            score=s,
            state=self._state,
            previous=previous,
            changed=self._state != previous,
            since=self._since,
            window=len(self._window),
            ended=reset_reason is not None,
            reason=reason if self._state != previous else None,
        )

    def end(self, t: float, reason: str) -> TrackState:
        """Close the track (face lost): a final record with state clear; changed if it was not clear."""
        previous = self._state
        last_score = self._score
        self.reset()
        return TrackState(
            track=self.track,
            t=float(t),
            raw_score=None,
            score=last_score,
            state="clear",
            previous=previous,
            changed=previous != "clear",
            since=float(t),
            window=0,
            ended=True,
            reason=reason,
        )


@dataclass(frozen=True)
class StreamVerdict:
    """One stream at one moment: the worst state among its live tracks, the top smoothed score, counts."""

    stream: str
    t: float
    state: State
    max_score: float | None
    tracks: int
    counts: dict[str, int] = field(default_factory=dict)
    worst_track: int | None = None

    @classmethod
    def of(cls, stream: str, t: float, states: list[TrackState]) -> StreamVerdict:
        live = [s for s in states if not s.ended]
        counts: dict[str, int] = {name: 0 for name in STATES}
        for s in live:
            counts[s.state] += 1
        if not live:
            return cls(stream=stream, t=float(t), state="clear", max_score=None, tracks=0, counts=counts)
        worst = max(live, key=lambda s: (LEVEL[s.state], s.score if s.score is not None else -1.0))
        scores = [s.score for s in live if s.score is not None]
        return cls(
            stream=stream,
            t=float(t),
            state=worst.state,
            max_score=max(scores) if scores else None,
            tracks=len(live),
            counts=counts,
            worst_track=worst.track,
        )


class TrackBook:
    """All track smoothers of one stream: update by track id, end and expire tracks, summarise.

    The one implementation of per-track bookkeeping: the monitor's `StreamWorker` runs one per stream.
    Memory is bounded by the number of live tracks: an ended or expired track is forgotten.
    """

    def __init__(self, stream: str, config: SmoothingConfig) -> None:
        self.stream = stream
        self.config = config
        self._tracks: dict[int, TrackSmoother] = {}
        self._latest: dict[int, TrackState] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def __contains__(self, track: object) -> bool:
        return track in self._tracks

    def update(self, track: int, t: float, raw_score: float) -> TrackState:
        """Score of `track` at stream time `t`; creates the track on first sight.

        A refused score (not finite) raises ValueError and leaves the book as it was.
        """
        smoother = self._tracks.get(track)
        if smoother is None:
            smoother = TrackSmoother(self.config, track)
        state = smoother.update(t, raw_score)
        self._tracks[track] = smoother
        self._latest[track] = state
        return state

    def state(self, track: int) -> TrackState | None:
        """The latest state of `track` (None when it is not live)."""
        return self._latest.get(track)

    def end(self, track: int, t: float, reason: str) -> TrackState | None:
        """End and forget `track` (e.g. the face tracker lost it); None when it is not live."""
        smoother = self._tracks.pop(track, None)
        self._latest.pop(track, None)
        return smoother.end(t, reason) if smoother is not None else None

    def expire(self, t: float, seen: Collection[int] = ()) -> list[TrackState]:
        """End and forget the tracks not updated for more than `max_gap_s` at stream time `t`.

        Tracks in `seen` (faces the tracker still follows on this frame, whose scores were dropped or
        failed) are kept: losing a face is the tracker's call. Should such a track's next score come
        after more than `max_gap_s`, `update` restarts it (`ended` set, state clear).
        """
        gap = self.config.max_gap_s
        ended = []
        for track, smoother in list(self._tracks.items()):
            last = smoother.last_t
            if track in seen or last is None or t - last <= gap:
                continue
            del self._tracks[track]
            self._latest.pop(track, None)
            ended.append(smoother.end(t, f"track unseen for {t - last:.2f} s (> max_gap_s {gap:g})"))
        return ended

    def end_all(self, t: float, reason: str) -> list[TrackState]:
        """End every track, in the order they were first seen (the stream ended or failed)."""
        ended = [s.end(t, reason) for s in self._tracks.values()]
        self._tracks.clear()
        self._latest.clear()
        return ended

    def states(self) -> list[TrackState]:
        """The latest state of every live track, in the order they were first seen."""
        return list(self._latest.values())

    def verdict(self, t: float) -> StreamVerdict:
        return StreamVerdict.of(self.stream, t, self.states())
