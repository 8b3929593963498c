"""Detect every Nth frame and interpolate the faces in between: the offline form of tracking.

The live monitor has to extrapolate (it cannot see the future), so between detections its tracker
moves the last landmarks with a damped velocity. A scan can look ahead: it holds the N-1 frames after
a detected keyframe, detects the next keyframe, and when the two keyframes agree it places each face
on the frames between by linear interpolation of its box and five landmarks, then aligns and scores
it there as usual. Interpolation between two real detections is much closer to what the detector
would have said than extrapolation from one (measured: docs/scan.md).

The keyframes must agree; otherwise the middle frame is detected and each half is tried again, down
to detecting frame by frame (so a window with a cut costs about log2(N) extra detections, and frames
next to the cut get their own detection, exactly as with detection on every frame). Agreeing means:
- the same number of faces, each with exactly one candidate on the other keyframe: IoU >= `min_iou` or
  centres within one face size, and sizes within 1.5x (see `pair_cost`); two faces close enough to
  be confused make the window detected frame by frame;
- no scene cut in between: consecutive frames' 32x18 thumbnails differ by less than `cut_threshold`
  (mean absolute difference, 0-255 scale; cuts in the benchmark clip score 27-52, motion within a shot
  under 10). A cut between agreeing keyframes would otherwise put crops of one shot on the other.
Trade-off: a face that appears and leaves between two faceless keyframes (shorter than N frames) is
missed; with N = 3 at 30 fps that is a face on screen for less than 0.1 s.

Track ids: every emitted frame's faces are matched to the previous frame's the same way, so a face
keeps its id while it stays in view; ids are per file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import cv2
import numpy as np

from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.faces.types import Face
from swapwatch.stream.scan.items import FrameJob
from swapwatch.stream.tracker import iou_matrix

THUMB = (32, 18)


@dataclass
class PlacedFace:
    """A face on one frame: box and landmarks in source pixels, detector score, track id, and whether
    the detector found it on this very frame (False: interpolated)."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    track: int
    detected: bool


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A tiny int16 picture of the frame for cut detection (~0.05 ms at 720p: strided, then area-shrunk)."""
    h, w = image.shape[:2]
    step = max(1, min(h // (THUMB[1] * 2), w // (THUMB[0] * 2)))
    return cv2.resize(image[::step, ::step], THUMB, interpolation=cv2.INTER_AREA).astype(np.int16)


def _size(box: np.ndarray) -> float:
    return float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)))


def pair_cost(a: np.ndarray, b: np.ndarray, min_iou: float, centre_gate: float, max_scale: float) -> float | None:
    """Cost of calling boxes a and b the same face, or None when they cannot be.

    Allowed when they overlap by `min_iou` or their centres lie within `centre_gate` face sizes (a
    fast-moving face overlaps little with itself a few frames later), and their sizes differ by less
    than `max_scale`. Cost: (1 - IoU) + half the centre distance in face sizes, as the tracker uses.
    """
    iou = float(iou_matrix(a, b)[0, 0])
    sa, sb = _size(a), _size(b)
    if max(sa / sb, sb / sa) > max_scale:
        return None
    dist = float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)) / sa
    if iou < min_iou and dist > centre_gate:
        return None
    return (1.0 - iou) + 0.5 * dist


def candidate_pairs(
    a: list[np.ndarray], b: list[np.ndarray], min_iou: float = 0.3, centre_gate: float = 1.0, max_scale: float = 1.5
) -> list[tuple[float, int, int]]:
    """Every allowed (cost, i, j) between boxes of `a` and `b` (see `pair_cost`)."""
    costs = []
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            c = pair_cost(x, y, min_iou, centre_gate, max_scale)
            if c is not None:
                costs.append((c, i, j))
    return costs


def greedy_match(costs: list[tuple[float, int, int]]) -> list[tuple[int, int]]:
    """Pairs (i, j), cheapest first, each index used once. Faces per frame are few, so this is cheaper
    than importing a Hungarian solver and agrees with it on non-crowded frames."""
    used_a: set[int] = set()
    used_b: set[int] = set()
    out = []
    for _, i, j in sorted(costs):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((i, j))
    return out


class KeyframeInterpolator:
    """One video's faces with detection every `every` frames (see the module docstring).

    `push(job)` returns the frames now resolved, in order, each with its faces; `finish()` resolves the
    frames still held at the end of the file. At most `every` frames are held.
    """

    def __init__(
        self, detector: FaceDetector, every: int, min_iou: float = 0.3, cut_threshold: float = 20.0,
        on_detect: Callable[[], None] | None = None,
    ) -> None:
        if every < 2:
            raise ValueError(f"every must be >= 2 for interpolation, got {every}")
        self.detector = detector
        self.every = every
        self.min_iou = min_iou
        self.cut_threshold = cut_threshold
        self.on_detect = on_detect
        self._key: tuple[FrameJob, list[Face]] | None = None
        self._held: list[FrameJob] = []
        self._thumbs: list[np.ndarray] = []  # of key, then held frames
        self._prev: list[PlacedFace] = []
        self._next_id = 1

    def _detect(self, image: np.ndarray) -> list[Face]:
        if self.on_detect is not None:
            self.on_detect()
        return self.detector.detect(image)

    def push(self, job: FrameJob) -> list[tuple[FrameJob, list[PlacedFace]]]:
        thumb = thumbnail(job.image)
        if self._key is None:
            self._key, self._thumbs = (job, self._detect(job.image)), [thumb]
            return [self._emit(job, self._key[1], detected=True)]
        self._held.append(job)
        self._thumbs.append(thumb)
        return self._resolve() if len(self._held) >= self.every else []

    def finish(self) -> list[tuple[FrameJob, list[PlacedFace]]]:
        return self._resolve() if self._held else []

    def _resolve(self) -> list[tuple[FrameJob, list[PlacedFace]]]:
        assert self._key is not None
        key_job, key_faces = self._key
        jobs = [key_job, *self._held]
        faces: list[list[Face] | None] = [key_faces] + [None] * len(self._held)
        detected = [True] + [False] * len(self._held)
        faces[-1], detected[-1] = self._detect(jobs[-1].image), True
        self._fill(jobs, faces, detected, 0, len(jobs) - 1)
        out = [self._emit(job, f or [], d) for job, f, d in zip(jobs[1:], faces[1:], detected[1:])]
        self._key, self._held, self._thumbs = (jobs[-1], faces[-1] or []), [], [self._thumbs[-1]]
        return out

    def _fill(
        self, jobs: list[FrameJob], faces: list[list[Face] | None], detected: list[bool], lo: int, hi: int
    ) -> None:
        """Faces for the frames strictly between positions lo and hi, whose faces are known (detected).

        Interpolate when the two ends agree; otherwise detect the middle frame and do each half, so a
        window with a cut costs about log2(N) extra detections rather than N - 1.
        """
        if hi - lo < 2:
            return
        a, b = faces[lo], faces[hi]
        assert a is not None and b is not None
        pairs = self._agree(a, b, lo, hi)
        if pairs is not None:
            span = float(jobs[hi].index - jobs[lo].index)
            for k in range(lo + 1, hi):
                w = (jobs[k].index - jobs[lo].index) / span
                faces[k] = [_lerp(a[i], b[j], w) for i, j in pairs]
            return
        mid = (lo + hi) // 2
        faces[mid], detected[mid] = self._detect(jobs[mid].image), True
        self._fill(jobs, faces, detected, lo, mid)
        self._fill(jobs, faces, detected, mid, hi)

    def _agree(self, a: list[Face], b: list[Face], lo: int = 0, hi: int = -1) -> list[tuple[int, int]] | None:
        """The pairs of faces when the frames between positions lo and hi can be interpolated, else None."""
        if len(a) != len(b):
            return None
        thumbs = self._thumbs[lo : (hi + 1 if hi >= 0 else None)]
        diffs = [float(np.abs(y - x).mean()) for x, y in pairwise(thumbs)]
        if diffs and max(diffs) >= self.cut_threshold:
            return None
        candidates = candidate_pairs([f.box for f in a], [f.box for f in b], self.min_iou)
        # With several faces the pairing must also be unambiguous (one candidate per face), or
        # interpolation could slide one person's landmarks onto another's face.
        if len(candidates) != len(a):
            return None
        pairs = greedy_match(candidates)
        return pairs if len(pairs) == len(a) else None

    def _emit(self, job: FrameJob, faces: list[Face], detected: bool) -> tuple[FrameJob, list[PlacedFace]]:
        matches = {j: i for i, j in greedy_match(candidate_pairs([p.box for p in self._prev], [f.box for f in faces]))}
        placed = []
        for j, f in enumerate(faces):
            if j in matches:
                track = self._prev[matches[j]].track
            else:
                track, self._next_id = self._next_id, self._next_id + 1
            placed.append(PlacedFace(f.box, f.landmarks, float(f.score), track, detected))
        self._prev = placed
        return job, placed


def _lerp(a: Face, b: Face, w: float) -> Face:
    return Face(
        box=(1.0 - w) * a.box + w * b.box,
        landmarks=(1.0 - w) * a.landmarks + w * b.landmarks,
        score=min(a.score, b.score),
    )
