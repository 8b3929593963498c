"""A short demo clip with a genuinely face-swapped segment, built offline from photos installed packages ship.

The scene is two people side by side, each photo filmed by a slowly drifting, zooming virtual camera:

* left: Eileen Collins (scikit-image `astronaut.png`, public domain);
* right: one person of InsightFace's sample group photo (`t1.jpg`).

During the manipulated segment (by default the middle third: 4-8 s of 12 s) the left face is replaced by
another person of `t1.jpg`, the way face-swap tools paste a generated face back into a frame:

1. both faces are aligned on the shared ArcFace 5-point template (`align_face`: the target per frame,
   from its landmarks moved with the camera; the donor once);
2. the donor crop gets the target's colours (Reinhard transfer: per-channel mean and std in Lab, measured
   inside the blend mask), so the seam is not a trivial colour edge;
3. it is blended into the target crop through a soft face-hull mask built from the template landmarks by
   the project's pseudo-fake code (`swapwatch.train.pseudofakes.face_hull_mask`, fixed seed, so the mask is
   the same on every frame as a real swap's would be);
4. the blended crop and the mask are warped back into the frame with the inverse similarity transform and
   composited (the "paste back" step of InsightFace's inswapper).

The donor is a still photo, so the swapped face does not change expression; the target's pose and scale
do change (the camera moves), and the pasted face follows them. This is a classical swap (no generator
network), the kind of artifact the self-blended training data imitates; it says nothing about how a
detector does on GAN or diffusion swaps.

Trade-offs: the camera motion is deliberately gentle (a few percent zoom, drift of a fraction of a face),
enough to make every frame different and to exercise tracking between detections, not enough to make
faces blur. Frames are H.264 (x264 CRF 18), so the clip carries realistic compression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from swapwatch.errors import SwapwatchError
from swapwatch.media.image import read_image
from swapwatch.stream.faces.align import align_face, template_landmarks, transform_points
from swapwatch.stream.faces.detector import FaceDetector
from swapwatch.stream.faces.types import Face

SWAP_SIZE = 256
"""Side of the aligned crops the swap is composed in."""

SWAP_MARGIN = 0.2
"""Template margin of those crops: room for the face hull (forehead, chin, cheeks) inside the crop."""

CREDITS = {
    "left": "Eileen Collins, scikit-image data/astronaut.png (NASA, public domain)",
    "right": "InsightFace sample data/images/t1.jpg",
    "donor": "InsightFace sample data/images/t1.jpg (another person)",
}


@dataclass(frozen=True)
class DemoClip:
    """The written clip and its ground truth."""

    path: Path
    fps: float
    frames: int
    width: int
    height: int
    segment: tuple[float, float]  # manipulated span in seconds of stream time: start <= t < end
    manipulated: str  # which person is swapped during the segment ("left")
    manipulated_frames: int
    credits: dict[str, str] = field(default_factory=lambda: dict(CREDITS))

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    def is_manipulated(self, t: float) -> bool:
        """Whether the frame at stream time `t` (seconds) shows the swapped face."""
        return self.segment[0] <= t < self.segment[1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "fps": self.fps,
            "frames": self.frames,
            "size": [self.width, self.height],
            "duration_s": round(self.duration, 3),
            "segment_s": list(self.segment),
            "manipulated": self.manipulated,
            "manipulated_frames": self.manipulated_frames,
            "credits": self.credits,
        }


def _largest(faces: list[Face]) -> Face:
    return max(faces, key=lambda f: f.width * f.height)


def _sample_faces(detector: FaceDetector) -> tuple[np.ndarray, Face, np.ndarray, Face, Face]:
    """(astronaut image, her face, t1 image, the right-hand person, the donor), found with the detector."""
    from swapwatch.samples import sample_face_images

    images = sample_face_images()
    missing = [k for k in ("astronaut", "group_t1") if k not in images]
    if missing:
        raise SwapwatchError(
            f"the demo clip needs the sample photos {missing} (shipped by scikit-image and insightface); "
            "reinstall those packages"
        )
    astro = read_image(images["astronaut"])
    group = read_image(images["group_t1"])
    a_faces = detector.detect(astro)
    g_faces = sorted(detector.detect(group), key=lambda f: float(f.box[0]))
    if not a_faces or len(g_faces) < 4:
        raise SwapwatchError(
            f"the face detector found {len(a_faces)} face(s) in astronaut.png and {len(g_faces)} in t1.jpg "
            "(expected 1 and 6); the demo clip cannot be built with this detector"
        )
    # t1.jpg, left to right: the third person stays real on the right; the sixth (a frontal face) is the donor.
    return astro, _largest(a_faces), group, g_faces[2], g_faces[-1]


@dataclass(frozen=True)
class _Camera:
    """A slowly drifting, zooming view of one photo, framing one face: source -> viewport affine per time."""

    centre: tuple[float, float]
    face_height: float
    view: tuple[int, int]  # width, height
    fill: float = 0.42  # the face's height as a fraction of the view height
    zoom: float = 0.06  # +- relative zoom
    drift: float = 0.12  # +- drift, in face heights
    period_s: float = 9.0
    phase: float = 0.0

    def matrix(self, t: float) -> np.ndarray:
        w, h = self.view
        k = self.fill * h / self.face_height * (1.0 + self.zoom * math.sin(2 * math.pi * t / self.period_s + self.phase))
        dx = self.drift * self.face_height * math.sin(2 * math.pi * t / (1.3 * self.period_s) + 1.7 * self.phase)
        dy = 0.5 * self.drift * self.face_height * math.cos(2 * math.pi * t / (1.7 * self.period_s) + self.phase)
        cx, cy = self.centre[0] + dx, self.centre[1] + dy
        # The face sits a little above the middle, as people are framed.
        return np.array([[k, 0.0, w / 2 - k * cx], [0.0, k, 0.45 * h - k * cy]], np.float64)


def _face_centre(face: Face) -> tuple[float, float]:
    x1, y1, x2, y2 = (float(v) for v in face.box)
    return (x1 + x2) / 2, (y1 + y2) / 2


def _lab_stats(image: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32).reshape(-1, 3)
    w = weight.reshape(-1, 1).astype(np.float32)
    total = float(w.sum()) or 1.0
    mean = (lab * w).sum(axis=0) / total
    std = np.sqrt(((lab - mean) ** 2 * w).sum(axis=0) / total) + 1e-3
    return mean, std


def color_transfer(source: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`source` recoloured so its Lab mean and std inside `weight` match `target`'s (Reinhard et al. 2001)."""
    s_mean, s_std = _lab_stats(source, weight)
    t_mean, t_std = _lab_stats(target, weight)
    lab = cv2.cvtColor(source, cv2.COLOR_BGR2LAB).astype(np.float32)
    lab = (lab - s_mean) * (t_std / s_std) + t_mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR)


class FaceSwapper:
    """Pastes one donor face onto a target face given the target's five landmarks (see the module docstring)."""

    def __init__(self, donor_image: np.ndarray, donor_landmarks: np.ndarray, seed: int = 0) -> None:
        from swapwatch.train.pseudofakes.masks import MaskConfig, face_hull_mask

        self.donor = align_face(donor_image, donor_landmarks, SWAP_SIZE, SWAP_MARGIN).crop
        # A fixed, moderately generous hull without random deformation: the same mask on every frame.
        mask_cfg = MaskConfig(up=(0.55, 0.55), down=(0.45, 0.45), out=(0.35, 0.35), point_jitter=0.0,
                              affine_prob=0.0, elastic_prob=0.0, morph_prob=0.0, blur_sigma=(0.12, 0.12))
        self.mask = face_hull_mask(template_landmarks(SWAP_SIZE, SWAP_MARGIN), SWAP_SIZE,
                                   np.random.default_rng(seed), mask_cfg)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """A copy of `image` with the face at `landmarks` replaced by the donor's."""
        target = align_face(image, landmarks, SWAP_SIZE, SWAP_MARGIN)
        donor = color_transfer(self.donor, target.crop, self.mask)
        m = self.mask[..., None]
        crop = target.crop.astype(np.float32) * (1 - m) + donor.astype(np.float32) * m
        inverse = cv2.invertAffineTransform(target.matrix.astype(np.float64))
        h, w = image.shape[:2]
        back = cv2.warpAffine(crop, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(self.mask, inverse, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
        out = image.astype(np.float32) * (1 - alpha) + back * alpha
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class DemoScene:
    """Renders frame `i` of the demo scene (BGR uint8), swapped or not."""

    def __init__(self, detector: FaceDetector, size: tuple[int, int] = (640, 360), seed: int = 0) -> None:
        width, height = size
        if width < 64 or height < 64 or width % 4 or height % 2:
            raise ValueError(f"size must be at least 64x64 with width % 4 == 0 and even height, got {size}")
        self.size = (int(width), int(height))
        astro, a_face, group, right, donor = _sample_faces(detector)
        half = (width // 2, height)
        self.left_image, self.right_image = astro, group
        self.left_landmarks = a_face.landmarks.astype(np.float64)
        self.left_camera = _Camera(_face_centre(a_face), a_face.height, half, phase=0.0)
        self.right_camera = _Camera(_face_centre(right), right.height, half, phase=2.1, period_s=11.0)
        self.swapper = FaceSwapper(group, donor.landmarks, seed=seed)

    def render(self, t: float, swapped: bool) -> np.ndarray:
        """The frame at time `t` seconds; `swapped` replaces the left face with the donor's."""
        h, half = self.size[1], self.size[0] // 2
        m_left = self.left_camera.matrix(t)
        left = cv2.warpAffine(self.left_image, m_left, (half, h), flags=cv2.INTER_AREA if m_left[0, 0] < 1 else
                              cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        right = cv2.warpAffine(self.right_image, self.right_camera.matrix(t), (half, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
        if swapped:
            left = self.swapper(left, transform_points(self.left_landmarks, m_left))
        frame = np.concatenate([left, right], axis=1)
        frame[:, half - 1 : half + 1] = 24  # a thin divider, as in a two-person call layout
        return frame


def build_demo_clip(
    path: str | Path,
    *,
    seconds: float = 12.0,
    fps: int = 25,
    size: tuple[int, int] = (640, 360),
    segment: tuple[float, float] | None = None,
    seed: int = 0,
    detector: FaceDetector | None = None,
) -> DemoClip:
    """Write the demo clip (H.264 MP4) to `path` and return its description and ground truth.

    `segment` is the manipulated span in seconds (default: the middle third). Deterministic for given
    arguments (up to the encoder). Raises SwapwatchError when the sample photos are missing.
    """
    import av

    if not 1.0 <= seconds <= 600.0:
        raise ValueError(f"seconds must be between 1 and 600, got {seconds}")
    if not 1 <= fps <= 120:
        raise ValueError(f"fps must be between 1 and 120, got {fps}")
    start, end = segment if segment is not None else (round(seconds / 3, 3), round(2 * seconds / 3, 3))
    if not 0.0 <= start < end <= seconds:
        raise ValueError(f"segment must satisfy 0 <= start < end <= seconds, got {(start, end)} for {seconds} s")
    if detector is None:
        from swapwatch.stream.faces.detector import load_detector

        detector = load_detector()
    scene = DemoScene(detector, size, seed)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = round(seconds * fps)
    manipulated = 0
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = scene.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i in range(n):
            t = i / fps
            swapped = start <= t < end
            manipulated += swapped
            frame = av.VideoFrame.from_ndarray(scene.render(t, swapped), format="bgr24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return DemoClip(out, float(fps), n, scene.size[0], scene.size[1], (float(start), float(end)), "left", manipulated)
