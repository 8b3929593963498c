"""Alignment onto the ArcFace 5-point template: geometry, transform recovery and input checks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from swapwatch.media.image import read_image
from swapwatch.stream.faces import (
    ALIGNMENT,
    EmbeddedRetinaFace,
    align_face,
    alignment_spec,
    similarity_matrix,
    template_landmarks,
)
from swapwatch.stream.faces.align import ARCFACE_112, transform_points

INSIGHTFACE_IMAGES = Path(__import__("insightface").__file__).parent / "data" / "images"


@pytest.fixture(scope="module")
def detector() -> EmbeddedRetinaFace:
    return EmbeddedRetinaFace(min_face=0)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def astronaut_landmarks(detector: EmbeddedRetinaFace, astronaut: np.ndarray) -> np.ndarray:
    (face,) = detector.detect(astronaut)
    return face.landmarks


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(2, 3) affine `outer` after `inner`."""
    out = np.empty((2, 3))
    out[:, :2] = outer[:, :2] @ inner[:, :2]
    out[:, 2] = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return out


def known_similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


# --- template ------------------------------------------------------------------------------------


def test_template_matches_installed_insightface() -> None:
    from insightface.utils.face_align import arcface_dst

    np.testing.assert_array_equal(ARCFACE_112.astype(np.float32), arcface_dst)


@pytest.mark.parametrize("size", [112, 128, 224, 256, 299])
def test_zero_margin_is_the_plain_arcface_template(size: int) -> None:
    np.testing.assert_allclose(template_landmarks(size, 0.0), ARCFACE_112 * size / 112, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("size", "margin"), [(224, 0.15), (224, 0.3), (112, 0.1), (256, 0.0)])
def test_margin_shrinks_the_template_toward_the_centre(size: int, margin: float) -> None:
    plain = template_landmarks(size, 0.0)
    shrunk = template_landmarks(size, margin)
    centre = size / 2
    np.testing.assert_allclose(shrunk - centre, (plain - centre) * (1 - 2 * margin), atol=1e-4)
    # The plain 112 crop's frame [0, size] maps to [margin * size, (1 - margin) * size].
    corner = centre + (0.0 - centre) * (1 - 2 * margin)
    assert corner == pytest.approx(margin * size)


@pytest.mark.parametrize(("size", "margin"), [(8, 0.1), (224, 0.5), (224, -0.1)])
def test_template_rejects_impossible_geometry(size: int, margin: float) -> None:
    with pytest.raises(ValueError, match="size|margin"):
        template_landmarks(size, margin)


def test_alignment_spec_describes_the_geometry() -> None:
    spec = alignment_spec(224, 0.15)
    assert spec["name"] == ALIGNMENT == "arcface5"
    assert (spec["size"], spec["margin"]) == (224, 0.15)
    np.testing.assert_allclose(spec["template"], template_landmarks(224, 0.15), atol=1e-4)


# --- similarity estimate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"), [(0, 1, 0, 0), (17, 0.4, 30, -12), (-60, 2.5, -100, 7), (179, 1.3, 5, 5)]
)
def test_similarity_matrix_recovers_a_known_transform(angle: float, scale: float, tx: float, ty: float) -> None:
    src = np.random.default_rng(3).uniform(0, 200, (5, 2))
    truth = known_similarity(angle, scale, tx, ty)
    np.testing.assert_allclose(similarity_matrix(src, transform_points(src, truth)), truth, atol=1e-9)


def test_similarity_matrix_matches_skimage_least_squares() -> None:
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(4)
    src = rng.uniform(0, 200, (5, 2))
    dst = transform_points(src, known_similarity(25, 0.7, 10, 20)) + rng.normal(0, 3, (5, 2))
    reference = SimilarityTransform.from_estimate(src, dst).params[:2]
    np.testing.assert_allclose(similarity_matrix(src, dst), reference, atol=1e-9)


def test_similarity_matrix_never_reflects() -> None:
    mirrored = template_landmarks(224, 0.15).astype(np.float64) * [-1, 1]
    assert np.linalg.det(similarity_matrix(mirrored, template_landmarks(224, 0.15))[:, :2]) > 0


# --- aligning real faces -------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "margin"), [(224, 0.15), (112, 0.0), (256, 0.25)])
def test_real_face_lands_on_the_template(
    detector: EmbeddedRetinaFace, astronaut: np.ndarray, astronaut_landmarks: np.ndarray, size: int, margin: float
) -> None:
    aligned = align_face(astronaut, astronaut_landmarks, size, margin)
    template = template_landmarks(size, margin)
    assert aligned.crop.shape == (size, size, 3) and aligned.crop.dtype == np.uint8
    np.testing.assert_allclose(aligned.landmarks, transform_points(astronaut_landmarks, aligned.matrix), atol=1e-3)
    # A real face is not the mean template: a 5-point similarity leaves a few percent of residual
    # (measured 1.3-5% of the crop side RMS on the sample faces), but nothing like a misalignment.
    residual = np.linalg.norm(aligned.landmarks - template, axis=1)
    assert np.sqrt((residual**2).mean()) < 0.05 * size
    assert residual.max() < 0.07 * size
    # The crop is where the landmarks say: the detector, run again on it, finds them there.
    (again,) = detector.detect(aligned.crop)
    assert np.linalg.norm(again.landmarks - aligned.landmarks, axis=1).mean() < 0.03 * size


def test_aligned_sample_crop_is_already_near_the_template(detector: EmbeddedRetinaFace) -> None:
    # Tom_Hanks_54745.png is an ArcFace-aligned 112x112 crop, so its matrix is close to identity.
    image = read_image(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png")
    (face,) = detector.detect(image)
    aligned = align_face(image, face.landmarks, 112, 0.0)
    scale = np.sqrt(np.linalg.det(aligned.matrix[:, :2]))
    angle = np.degrees(np.arctan2(aligned.matrix[1, 0], aligned.matrix[0, 0]))
    assert 0.9 < scale < 1.1 and abs(angle) < 5
    assert np.abs(aligned.matrix[:, 2]).max() < 10


@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"),
    [(0, 1.0, 40, -25), (20, 1.0, 0, 0), (-35, 0.6, 120, 80), (10, 3.0, 300, 200)],
    ids=["shift", "rotate", "shrink", "enlarge-antialiased"],
)
def test_alignment_undoes_a_known_similarity(
    astronaut: np.ndarray, astronaut_landmarks: np.ndarray, angle: float, scale: float, tx: float, ty: float
) -> None:
    size, margin = 224, 0.15
    truth = known_similarity(angle, scale, tx, ty)
    # Rotate about the face so it stays in the frame, then apply the requested shift.
    centre = astronaut_landmarks.mean(axis=0)
    truth[:, 2] = centre + [tx, ty] - truth[:, :2] @ centre
    out_size = (int(astronaut.shape[1] * max(scale, 1)), int(astronaut.shape[0] * max(scale, 1)))
    moved = cv2.warpAffine(astronaut, truth, out_size, flags=cv2.INTER_CUBIC)
    moved_landmarks = transform_points(astronaut_landmarks, truth)

    original = align_face(astronaut, astronaut_landmarks, size, margin)
    recovered = align_face(moved, moved_landmarks, size, margin)

    # crop <- moved <- original must equal crop <- original, so the known transform is recovered.
    np.testing.assert_allclose(compose(recovered.matrix, truth), original.matrix, atol=1e-3)
    estimated_truth = compose(cv2.invertAffineTransform(recovered.matrix), original.matrix)
    np.testing.assert_allclose(estimated_truth, truth, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(recovered.landmarks, original.landmarks, atol=1e-2)
    # And the pixels agree, up to the resampling of the synthetic warp.
    inner = slice(20, size - 20)
    diff = np.abs(recovered.crop[inner, inner].astype(int) - original.crop[inner, inner].astype(int))
    assert diff.mean() < 6.0


@pytest.mark.parametrize("upscale", [1.5, 3.0, 6.0])  # 3x and 6x take the shrink-then-warp path
def test_large_faces_give_the_same_crop_as_small_ones(
    astronaut: np.ndarray, astronaut_landmarks: np.ndarray, upscale: float
) -> None:
    big = cv2.resize(astronaut, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    big_landmarks = astronaut_landmarks * upscale + (upscale - 1) / 2  # cv2.resize pixel-centre convention
    small_crop = align_face(astronaut, astronaut_landmarks, 224, 0.15).crop.astype(int)
    big_crop = align_face(big, big_landmarks, 224, 0.15).crop.astype(int)
    # Measured ~0.95 grey levels; a 0.7 px misregistration of the crop gives ~6.
    assert np.abs(big_crop - small_crop)[20:-20, 20:-20].mean() < 1.5


def test_border_outside_the_frame_is_black(astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    # Shift the face to the top-left corner: the crop extends past the frame edge.
    shifted = astronaut_landmarks - astronaut_landmarks.min(axis=0) + 5
    aligned = align_face(astronaut, shifted, 224, 0.15)
    assert (aligned.crop[:10, :10] == 0).all()


# --- input checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 2), (5, 3), (10,), (68, 2), (1, 5, 2)])
def test_wrong_landmark_shape_is_rejected(astronaut: np.ndarray, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"shape \(5, 2\), got {re_shape(shape)}"):
        align_face(astronaut, np.ones(shape), 224)


def re_shape(shape: tuple[int, ...]) -> str:
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [(np.full((5, 2), np.nan), "NaN"), (np.full((5, 2), 50.0), "degenerate")],
    ids=["nan", "coincident"],
)
def test_unusable_landmarks_are_rejected(astronaut: np.ndarray, landmarks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        align_face(astronaut, landmarks, 224)
