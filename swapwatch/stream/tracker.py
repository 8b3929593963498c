"""Keep one identity per face between detections: IoU + centre-distance matching, damped motion.

The live monitor detects faces only every few frames, and scores each face through a per-track
smoother, so the tracker's job is (1) stable ids while a face moves, turns or is briefly hidden, and
(2) a box and five landmarks for every live face on frames where the detector did not run.

Choices and their trade-offs:
- Written here rather than taken from PyPI. norfair (BSD) pins numpy<2; supervision's ByteTrack and
  the SORT packages count age in update calls, so a frame on which detection was skipped would read
  as a miss, and none of them carries landmarks or reports ended tracks; motpy is unmaintained since
  2021; BoxMOT is AGPL. Faces per stream are few (tens at most), so a small tracker on scipy's
  Hungarian solver costs microseconds and does exactly what the pipeline needs.
- Motion model: constant velocity on box centre and size, damped with a time constant, and not a
  Kalman filter. Detector boxes are precise relative to their size, frames arrive at irregular times
  (live sources drop frames), and a prediction is made in closed form from the last matched
  detection, so it does not depend on how many predict-only frames came in between. Damping keeps a
  coasting (occluded) track from flying off: it travels at most `velocity * damping_seconds`.
- Matching: one Hungarian assignment over all tracks and detections with cost (1 - IoU) plus a
  weighted centre distance (in units of the predicted face size). IoU alone fails when a face moves
  more than about a third of its width between detection rounds or turns (its box narrows); centre
  distance alone confuses two faces side by side of different sizes. A pair is allowed when either
  criterion passes its gate and the face size changed by less than `max_scale_change`.
- Ageing counts detection rounds, not frames: a track that was matched by the last detection is
  never ended on a predict-only frame. Once a detection round misses it, its budget
  (`max_missed_frames` update calls or `max_missed_seconds`, whichever ends first) runs from that
  first missing round; any detection that matches it again resets it.
- Coasting tracks (missed by the latest detection) are kept but not returned by default: their box
  most likely shows the occluder, and a deepfake score on an occluder is noise for the smoother.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from swapwatch.config import StrictModel
from swapwatch.stream.faces.types import Face

_INVALID = 1e6  # cost of a pair that failed the gates; any real cost is far below it
_MIN_SIDE = 2.0  # predicted box sides never shrink below this many pixels


class TrackerConfig(StrictModel):
    """How faces are matched between detections and how long a face may go unseen."""

    iou_match: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="A detection may continue a track when its IoU with the track's predicted box is at least this.",
    )
    centre_gate: float = Field(
        1.0,
        ge=0.0,
        description="...or when its centre lies within this many predicted face sizes (sqrt of box area) of the "
        "predicted centre; catches fast motion and turning heads whose IoU drops.",
    )
    distance_weight: float = Field(
        0.5,
        ge=0.0,
        description="Weight of the centre distance (in face sizes) next to 1 - IoU in the assignment cost.",
    )
    max_scale_change: float = Field(
        2.0,
        gt=1.0,
        description="A detection whose face size differs from the predicted size by more than this factor "
        "(either way) never continues the track.",
    )
    min_hits: int = Field(
        2,
        ge=1,
        description="Detections needed before a track is confirmed and returned; a tentative track that misses "
        "a detection round is dropped silently (filters one-frame false positives).",
    )
    max_missed_frames: int = Field(
        30,
        ge=0,
        description="A confirmed track ends once it has gone unmatched for more than this many frames (update "
        "calls), counted from the first detection round that missed it.",
    )
    max_missed_seconds: float = Field(
        1.0,
        ge=0.0,
        description="...or for more than this many seconds, whichever comes first; brief occlusions survive.",
    )
    damping_seconds: float = Field(
        0.5,
        gt=0.0,
        description="Time constant of the velocity decay while predicting: a coasting track moves at most "
        "velocity x this far. Large values approach plain constant velocity.",
    )
    velocity_smoothing: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="Weight of the newest measured velocity in the running velocity estimate (1 = newest only).",
    )
    landmarks: Literal["box", "hold"] = Field(
        "box",
        description="Landmarks between detections: 'box' moves and scales them with the predicted box; "
        "'hold' keeps the last detected ones.",
    )
    output_missed: bool = Field(
        False,
        description="Also return confirmed tracks the latest detection round missed (coasting, predicted "
        "boxes); off by default because their boxes usually show whatever hides the face.",
    )


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), x1y1x2y2: (N, M) float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_to_state(box: np.ndarray) -> np.ndarray:
    """x1y1x2y2 -> (cx, cy, w, h) float64."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


def state_to_box(state: np.ndarray) -> np.ndarray:
    """(cx, cy, w, h) -> x1y1x2y2 float32."""
    cx, cy, w, h = state
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)


@dataclass
class _Track:
    """One face's identity and the state of its motion model (internal)."""

    track_id: int
    state: np.ndarray  # (cx, cy, w, h) at the last match
    velocity: np.ndarray  # per second, same layout
    landmarks: np.ndarray  # (5, 2) at the last match
    score: float
    t_hit: float
    hits: int = 1
    confirmed: bool = False
    missed_since_t: float | None = None  # time of the first detection round that missed it
    missed_frames: int = 0  # update calls since that round (inclusive)
    rel_landmarks: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rel_landmarks = self._relative(self.landmarks, self.state)

    @staticmethod
    def _relative(landmarks: np.ndarray, state: np.ndarray) -> np.ndarray:
        size = np.maximum(state[2:], _MIN_SIDE)
        return (np.asarray(landmarks, dtype=np.float64) - state[:2]) / size

    @property
    def missed(self) -> bool:
        return self.missed_since_t is not None

    def predict(self, t: float, damping: float) -> np.ndarray:
        """(cx, cy, w, h) at time t, from the last match and the damped velocity."""
        dt = max(0.0, t - self.t_hit)
        travel = damping * (1.0 - math.exp(-dt / damping))  # integral of exp(-s / damping) over [0, dt]
        state = self.state + self.velocity * travel
        state[2:] = np.maximum(state[2:], _MIN_SIDE)
        return state

    def predicted_landmarks(self, state: np.ndarray, mode: str) -> np.ndarray:
        if mode == "hold":
            return self.landmarks.copy()
        return state[:2] + self.rel_landmarks * state[2:]

    def hit(self, face: Face, t: float, smoothing: float) -> None:
        new = box_to_state(face.box)
        dt = t - self.t_hit
        if dt > 0:
            measured = (new - self.state) / dt
            weight = 1.0 if self.hits == 1 else smoothing
            self.velocity = self.velocity + weight * (measured - self.velocity)
        self.state = new
        self.landmarks = np.asarray(face.landmarks, dtype=np.float64)
        self.rel_landmarks = self._relative(self.landmarks, new)
        self.score = float(face.score)
        self.t_hit = max(t, self.t_hit)
        self.hits += 1
        self.missed_since_t = None
        self.missed_frames = 0


class FaceTracker:
    """Gives detected faces stable track ids and predicts them on frames where detection is skipped.

    Call `update(t, detections)` once per frame in time order: with the detector's faces on frames
    where it ran (an empty list when it found none), with None on frames where it was skipped. One
    instance per stream; ids start at 1 and are never reused within an instance.
    """

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._ended: list[int] = []
        self._matched: frozenset[int] = frozenset()
        self._t_last: float | None = None

    # --- state queries --------------------------------------------------------------------------

    @property
    def detected_ids(self) -> frozenset[int]:
        """Ids whose box in the latest update is a detection (matched or new); empty after a predict-only one."""
        return self._matched

    @property
    def has_tracks(self) -> bool:
        """Whether any track (tentative, confirmed or coasting) is alive."""
        return bool(self._tracks)

    @property
    def has_tentative(self) -> bool:
        """Whether a detected face is waiting for `min_hits` detections before it is confirmed."""
        return any(not tr.confirmed for tr in self._tracks)

    @property
    def has_missed(self) -> bool:
        """Whether a confirmed track was missed by the latest detection round (occluded, gone or missed)."""
        return any(tr.missed for tr in self._tracks)

    def ended_tracks(self) -> list[int]:
        """Ids of confirmed tracks that ended since the previous call (oldest first); clears the list."""
        ended, self._ended = self._ended, []
        return ended

    def reset(self) -> None:
        """End every track (their ids are reported by `ended_tracks`), e.g. when a stream restarts."""
        self._ended.extend(tr.track_id for tr in self._tracks if tr.confirmed)
        self._tracks = []
        self._matched = frozenset()
        self._t_last = None

    # --- the update -----------------------------------------------------------------------------

    def update(self, t: float, detections: list[Face] | None) -> list[Face]:
        """Advance to time `t` (seconds, e.g. the frame's pts) and return the live confirmed faces.

        Faces matched by a detection in this update are the detector's box, landmarks and score;
        the others carry the predicted box and propagated landmarks and their last detection score.
        All carry `track_id`. A `t` earlier than the previous one is treated as no time passing.
        """
        if not math.isfinite(t):
            raise ValueError(f"t must be a finite time in seconds, got {t}")
        if self._t_last is not None:
            t = max(t, self._t_last)
        self._t_last = t
        for tr in self._tracks:
            if tr.missed:
                tr.missed_frames += 1
        if detections is None:
            self._matched = frozenset()
        else:
            self._associate(t, detections)
        self._expire(t)
        return self._output(t)

    def _associate(self, t: float, detections: list[Face]) -> None:
        cfg = self.cfg
        predicted = np.array([tr.predict(t, cfg.damping_seconds) for tr in self._tracks]).reshape(-1, 4)
        matches: list[tuple[int, int]] = []
        if len(self._tracks) and len(detections):
            # imported here: scipy.optimize takes ~0.3 s to import, which `swapwatch --help` should not pay
            from scipy.optimize import linear_sum_assignment

            cost = self._cost(predicted, np.array([box_to_state(d.box) for d in detections]))
            rows, cols = linear_sum_assignment(cost)
            matches = [(r, c) for r, c in zip(rows, cols) if cost[r, c] < _INVALID]
        matched_tracks = {r for r, _ in matches}
        matched_dets = {c for _, c in matches}
        detected_ids: list[int] = []
        for r, c in matches:
            tr = self._tracks[r]
            detected_ids.append(tr.track_id)
            tr.hit(detections[c], t, cfg.velocity_smoothing)
            tr.confirmed = tr.confirmed or tr.hits >= cfg.min_hits
        survivors = []
        for i, tr in enumerate(self._tracks):
            if i not in matched_tracks:
                if not tr.confirmed:
                    continue  # a tentative track must be seen again at the very next detection round
                if not tr.missed:
                    tr.missed_since_t, tr.missed_frames = t, 0
            survivors.append(tr)
        for c, det in enumerate(detections):
            if c not in matched_dets:
                survivors.append(self._new_track(det, t))
                detected_ids.append(survivors[-1].track_id)
        self._tracks = survivors
        self._matched = frozenset(detected_ids)

    def _cost(self, predicted: np.ndarray, dets: np.ndarray) -> np.ndarray:
        """(tracks, detections) assignment cost; gated pairs cost _INVALID."""
        cfg = self.cfg
        iou = iou_matrix(np.array([state_to_box(p) for p in predicted]), np.array([state_to_box(d) for d in dets]))
        size_t = np.sqrt(predicted[:, 2] * predicted[:, 3])[:, None]
        size_d = np.sqrt(np.maximum(dets[:, 2] * dets[:, 3], 1e-6))[None, :]
        dist = np.linalg.norm(predicted[:, None, :2] - dets[None, :, :2], axis=2) / size_t
        scale = np.maximum(size_t / size_d, size_d / size_t)
        # iou > 0 as well: iou_match 0 means "any overlap", not "anything anywhere".
        overlaps = (iou >= cfg.iou_match) & (iou > 0.0)
        allowed = (overlaps | (dist <= cfg.centre_gate)) & (scale <= cfg.max_scale_change)
        cost = (1.0 - iou) + cfg.distance_weight * dist
        return np.where(allowed, cost, _INVALID)

    def _new_track(self, det: Face, t: float) -> _Track:
        tr = _Track(
            track_id=self._next_id,
            state=box_to_state(det.box),
            velocity=np.zeros(4),
            landmarks=np.asarray(det.landmarks, dtype=np.float64),
            score=float(det.score),
            t_hit=t,
        )
        tr.confirmed = self.cfg.min_hits <= 1
        self._next_id += 1
        return tr

    def _expire(self, t: float) -> None:
        cfg = self.cfg
        alive = []
        for tr in self._tracks:
            if tr.missed_since_t is not None and (
                tr.missed_frames > cfg.max_missed_frames or t - tr.missed_since_t > cfg.max_missed_seconds
            ):
                self._ended.append(tr.track_id)
                continue
            alive.append(tr)
        self._tracks = alive

    def _output(self, t: float) -> list[Face]:
        out = []
        for tr in self._tracks:
            if not tr.confirmed or (tr.missed and not self.cfg.output_missed):
                continue
            if tr.track_id in self._matched:
                state, landmarks = tr.state, tr.landmarks
            else:
                state = tr.predict(t, self.cfg.damping_seconds)
                landmarks = tr.predicted_landmarks(state, self.cfg.landmarks)
            out.append(Face(box=state_to_box(state), landmarks=landmarks, score=tr.score, track_id=tr.track_id))
        return out
