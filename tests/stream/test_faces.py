"""Face detection, sessions, configs and the pipeline, on real face images shipped by installed packages."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from pydantic import ValidationError

from swapwatch.config import parse_config
from swapwatch.errors import ConfigError, MediaError, ModelFileError
from swapwatch.media.image import read_image
from swapwatch.media.onnx_session import make_session
from swapwatch.stream.faces import (
    DetectorConfig,
    EmbeddedRetinaFace,
    Face,
    FaceDetector,
    FacePipeline,
    InsightFaceDetector,
    load_detector,
)
from swapwatch.stream.faces.retinaface_embedded import embedded_weights

INSIGHTFACE_IMAGES = Path(__import__("insightface").__file__).parent / "data" / "images"


def load_sample(name: str) -> np.ndarray:
    if name == "astronaut":
        return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    return read_image(INSIGHTFACE_IMAGES / name)


@pytest.fixture(scope="module")
def detector() -> EmbeddedRetinaFace:
    return EmbeddedRetinaFace(min_face=0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- embedded detector on real faces -------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected_faces"),
    [("t1.jpg", 6), ("astronaut", 1), ("Tom_Hanks_54745.png", 1)],
)
def test_embedded_detector_counts_faces(detector: EmbeddedRetinaFace, image: str, expected_faces: int) -> None:
    faces = detector.detect(load_sample(image))
    assert len(faces) == expected_faces
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    assert all(0.6 < s <= 1.0 for s in scores)


@pytest.mark.parametrize("image", ["t1.jpg", "astronaut", "Tom_Hanks_54745.png"])
def test_landmarks_are_in_arcface_order_inside_the_box(detector: EmbeddedRetinaFace, image: str) -> None:
    faces = detector.detect(load_sample(image))
    assert faces
    for face in faces:
        x1, y1, x2, y2 = face.box
        pts = face.landmarks
        assert pts.shape == (5, 2) and face.box.shape == (4,)
        assert ((pts[:, 0] >= x1) & (pts[:, 0] <= x2) & (pts[:, 1] >= y1) & (pts[:, 1] <= y2)).all()
        left_eye, right_eye, nose, left_mouth, right_mouth = pts
        assert left_eye[0] < right_eye[0]
        assert left_mouth[0] < right_mouth[0]
        assert left_eye[0] < nose[0] < right_eye[0]
        assert nose[1] > max(left_eye[1], right_eye[1])
        assert min(left_mouth[1], right_mouth[1]) > nose[1] - 0.05 * face.height


@pytest.mark.parametrize(
    ("factor", "max_side", "box_tol", "landmark_tol"),
    [
        # 2560 px is fitted back to 640 px: the network sees the same pixels, so only our mapping differs.
        (2.0, 640, 0.01, 0.01),
        (0.5, 640, 0.01, 0.01),
        # Nothing is resized: the network itself sees faces twice as large; its box regression varies
        # by up to ~11% of the face width across scales (measured), landmarks by ~6%.
        (2.0, 2600, 0.15, 0.08),
    ],
)
def test_boxes_follow_image_resizing(
    detector: EmbeddedRetinaFace, factor: float, max_side: int, box_tol: float, landmark_tol: float
) -> None:
    image = load_sample("t1.jpg")
    reference = detector.detect(image)
    resized = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    scaled = EmbeddedRetinaFace(max_side=max_side, min_face=0).detect(resized)
    assert len(scaled) >= len(reference) == 6
    for ref in reference:
        mapped = [Face(box=f.box / factor, landmarks=f.landmarks / factor, score=f.score) for f in scaled]
        best = max(mapped, key=lambda f: iou(f.box, ref.box))
        assert iou(best.box, ref.box) > 0.7
        assert np.abs(best.box - ref.box).max() <= box_tol * ref.width + 1.0
        assert np.abs(best.landmarks - ref.landmarks).max() <= landmark_tol * ref.width + 1.0


def test_max_side_maps_boxes_back_to_source_pixels(detector: EmbeddedRetinaFace) -> None:
    image = load_sample("t1.jpg")  # 1280x886 -> 500x346: a non-integer factor
    small = EmbeddedRetinaFace(max_side=500, min_face=0).detect(image)
    full = detector.detect(image)
    assert len(small) == len(full) == 6
    for face in full:
        assert max(iou(face.box, s.box) for s in small) > 0.8


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((360, 640, 3), np.uint8),
        np.full((480, 480, 3), 128, np.uint8),
        np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8),
        np.zeros((7, 5, 3), np.uint8),
    ],
    ids=["black", "grey", "noise", "tiny"],
)
def test_no_faces_in_faceless_images(detector: EmbeddedRetinaFace, image: np.ndarray) -> None:
    assert detector.detect(image) == []


@pytest.mark.parametrize(("min_face", "expected"), [(0, 6), (105, 3), (200, 0)])
def test_min_face_drops_small_faces(min_face: int, expected: int) -> None:
    faces = load_detector(DetectorConfig(min_face=min_face)).detect(load_sample("t1.jpg"))
    assert len(faces) == expected
    assert all(min(f.width, f.height) >= min_face for f in faces)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)],
    ids=["grey", "bgra", "float"],
)
def test_detector_rejects_non_bgr_input(detector: EmbeddedRetinaFace, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        detector.detect(bad)


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720)])
def test_stream_frames_give_the_same_faces_on_every_call(detector: EmbeddedRetinaFace, width: int, height: int) -> None:
    """A stream's frames go through one detector, one after another: at a stream's frame size the six faces
    of t1, the same boxes, landmarks and scores on every call, and the frame left as it was. (What a
    detection costs is measured by `swapwatch bench`, stages_ms.detect, and bench/scan_vs_sequential.py.)"""
    frame = cv2.resize(load_sample("t1.jpg")[100:820], (width, height), interpolation=cv2.INTER_AREA)
    before = frame.copy()
    first, second = detector.detect(frame), detector.detect(frame)
    np.testing.assert_array_equal(frame, before)
    assert len(first) == len(second) == 6
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        assert a.score == b.score


# --- config and factory --------------------------------------------------------------------------


def test_detector_config_defaults() -> None:
    cfg = DetectorConfig()
    assert (cfg.type, cfg.model_path, cfg.score_threshold, cfg.nms_threshold) == ("embedded", None, 0.6, 0.4)
    assert (cfg.max_side, cfg.min_face, cfg.threads) == (640, 20, 1)
    assert all(field.description for field in DetectorConfig.model_fields.values())


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"type": "insightface"}, "model_path"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"threads": 0}, "threads"),
        ({"max_side": 10}, "max_side"),
        ({"detector": "yunet"}, "detector"),
        ({"type": "yunet"}, "type"),
    ],
)
def test_detector_config_errors_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        DetectorConfig(**data)
    assert field in {str(err["loc"][0]) for err in info.value.errors()}
    with pytest.raises(ConfigError, match=field):
        parse_config(DetectorConfig, data, source="detector.yaml")


def test_load_detector_default_is_embedded() -> None:
    det = load_detector()
    assert isinstance(det, EmbeddedRetinaFace) and isinstance(det, FaceDetector)
    assert det.name == "retinaface-mnet0.25"


# --- ONNX sessions -------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_make_session_uses_explicit_cpu_provider_and_no_spinning(threads: int) -> None:
    session = make_session(embedded_weights(), threads=threads)
    assert session.get_providers() == ["CPUExecutionProvider"]
    opts = session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (threads, 1)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_make_session_accepts_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "retinaface.onnx"
    path.write_bytes(embedded_weights())
    assert [i.name for i in make_session(path).get_inputs()] == ["input"]


@pytest.mark.parametrize("layout", ["missing", "folder", "corrupt"])
def test_make_session_names_a_bad_model_path(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "model.onnx"
    if layout == "folder":
        path.mkdir()
    elif layout == "corrupt":
        path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ModelFileError) as info:
        make_session(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


@pytest.mark.parametrize(
    ("providers", "message"),
    [(["AzureExecutionProvider"], "AzureExecutionProvider"), (["NoSuchExecutionProvider"], "none of")],
)
def test_make_session_rejects_unusable_providers(providers: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_session(embedded_weights(), providers=providers)


def test_make_session_skips_unavailable_providers_before_cpu() -> None:
    wanted = ["NoSuchExecutionProvider", "CPUExecutionProvider"]
    assert make_session(embedded_weights(), providers=wanted).get_providers() == ["CPUExecutionProvider"]


# --- InsightFace backend -------------------------------------------------------------------------


def _write_retinaface_as(path: Path) -> None:
    path.write_bytes(embedded_weights())  # a valid ONNX that InsightFace does not route to a detector


@pytest.mark.parametrize(
    ("layout", "expected_text"),
    [
        ("missing", "nothing exists"),
        ("empty_folder", "holds no .onnx"),
        ("folder_without_detector", "w600k_r50.onnx"),
        ("corrupt_file", "onnxruntime can load"),
        ("corrupt_in_folder", "onnxruntime can load"),
        ("not_a_detector", "unrecognised model"),
        ("not_onnx", "InsightFace detection model"),
    ],
)
def test_insightface_pack_errors_name_the_path(tmp_path: Path, layout: str, expected_text: str) -> None:
    pack = tmp_path / "buffalo_x"
    target = pack
    junk = np.random.default_rng(2).bytes(2048)
    if layout == "empty_folder":
        pack.mkdir()
    elif layout == "folder_without_detector":
        pack.mkdir()
        (pack / "w600k_r50.onnx").write_bytes(junk)
    elif layout == "corrupt_file":
        pack.mkdir()
        target = pack / "det_10g.onnx"
        target.write_bytes(junk)
    elif layout == "corrupt_in_folder":
        pack.mkdir()
        (pack / "det_10g.onnx").write_bytes(junk)
    elif layout == "not_a_detector":
        pack.mkdir()
        _write_retinaface_as(pack / "scrfd_fake.onnx")
    elif layout == "not_onnx":
        pack.mkdir()
        target = pack / "det_10g.bin"
        target.write_bytes(junk)
    with pytest.raises(ModelFileError) as info:
        load_detector(DetectorConfig(type="insightface", model_path=target))
    message = str(info.value)
    assert str(target) in message, message
    assert expected_text in message, message


def _scrfd_shaped_graph(path: Path) -> None:
    """A tiny ONNX with SCRFD's interface (9 outputs, 2 anchors, strides 8/16/32) and fixed behaviour.

    Only the stride-16 score head responds: a cell fires when its 16x16 patch is bright. Every box
    spans 2 strides around the anchor centre and landmarks sit at fixed offsets, so the expected
    faces can be computed by hand. It exercises InsightFace's real routing/decoding and our adapter.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights, outputs = [], [], []
    heads = {"score": 1, "bbox": 4, "kps": 10}
    kps_offsets = np.tile([-1, -1, 1, -1, 0, 0, -1, 1, 1, 1], 2).astype(np.float32)
    for head, width in heads.items():
        for stride in (8, 16, 32):
            tag = f"{head}_{stride}"
            channels = 2 * width
            kernel = np.zeros((channels, 3, 1, 1), np.float32)
            bias = np.zeros(channels, np.float32)
            if head == "score":
                if stride == 16:
                    kernel[:] = 20.0 / 3  # input is (x - 127.5) / 128: white -> logit +20, black -> -20
                else:
                    bias[:] = -20.0
            elif head == "bbox":
                bias[:] = 2.0
            else:
                bias[:] = kps_offsets
            weights += [
                numpy_helper.from_array(kernel, f"w_{tag}"),
                numpy_helper.from_array(bias, f"b_{tag}"),
                numpy_helper.from_array(np.array([-1, width], np.int64), f"shape_{tag}"),
            ]
            window = [stride, stride]
            pool = helper.make_node("AveragePool", ["input.1"], [f"pool_{tag}"], kernel_shape=window, strides=window)
            nodes.append(pool)
            nodes.append(helper.make_node("Conv", [f"pool_{tag}", f"w_{tag}", f"b_{tag}"], [f"conv_{tag}"]))
            last = f"conv_{tag}"
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [last], [f"sig_{tag}"]))
                last = f"sig_{tag}"
            nodes.append(helper.make_node("Transpose", [last], [f"nhwc_{tag}"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [f"nhwc_{tag}", f"shape_{tag}"], [tag]))
            outputs.append(helper.make_tensor_value_info(tag, TensorProto.FLOAT, ["n", width]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    model = helper.make_model(
        helper.make_graph(nodes, "scrfd_shaped", [image], outputs, weights), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize(("frame_scale", "expected_box"), [(1, [288, 64, 352, 128]), (2, [576, 128, 704, 256])])
def test_insightface_adapter_maps_scrfd_outputs(tmp_path: Path, frame_scale: int, expected_box: list[int]) -> None:
    pack = tmp_path / "pack"
    pack.mkdir()
    _scrfd_shaped_graph(pack / "det_tiny.onnx")
    det = load_detector(DetectorConfig(type="insightface", model_path=pack, min_face=0, score_threshold=0.5))
    assert isinstance(det, InsightFaceDetector) and det.name == "insightface:det_tiny"
    # One bright 16x16 cell (column 20, row 6 of the stride-16 grid) in a 640x360 frame; 2x: 1280x720.
    frame = np.zeros((360 * frame_scale, 640 * frame_scale, 3), np.uint8)
    s = 16 * frame_scale
    frame[6 * s : 7 * s, 20 * s : 21 * s] = 255
    faces = det.detect(frame)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, expected_box, atol=0.5)
    cx, cy = 320 * frame_scale, 96 * frame_scale
    step = 16 * frame_scale
    expected_kps = [
        [cx - step, cy - step], [cx + step, cy - step], [cx, cy], [cx - step, cy + step], [cx + step, cy + step]
    ]
    np.testing.assert_allclose(faces[0].landmarks, expected_kps, atol=0.5)


@pytest.mark.skipif(
    not os.environ.get("SWAPWATCH_INSIGHTFACE_PACK"),
    reason="SWAPWATCH_INSIGHTFACE_PACK is not set (point it at a local InsightFace pack such as buffalo_l)",
)
@pytest.mark.parametrize(("image", "expected_faces"), [("t1.jpg", 6), ("astronaut", 1)])
def test_insightface_real_pack(image: str, expected_faces: int) -> None:
    cfg = DetectorConfig(type="insightface", model_path=Path(os.environ["SWAPWATCH_INSIGHTFACE_PACK"]))
    faces = load_detector(cfg).detect(load_sample(image))
    assert len(faces) == expected_faces
    for face in faces:
        assert face.landmarks[0, 0] < face.landmarks[1, 0]


# --- pipeline and image reading ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected_count"),
    [({}, 6), ({"max_faces": 2}, 2), ({"min_face": 105}, 3), ({"max_faces": 1, "keep": "largest"}, 1)],
)
def test_pipeline_aligns_each_kept_face(detector: EmbeddedRetinaFace, kwargs: dict, expected_count: int) -> None:
    image = load_sample("t1.jpg")
    aligned = FacePipeline(detector, size=160, margin=0.1, **kwargs).process(image)
    assert len(aligned) == expected_count
    all_faces = detector.detect(image)
    for item in aligned:
        assert item.crop.shape == (160, 160, 3) and item.crop.dtype == np.uint8
        assert item.matrix.shape == (2, 3) and item.face is not None
    if kwargs.get("keep") == "largest":
        assert aligned[0].face.width * aligned[0].face.height == max(f.width * f.height for f in all_faces)
    elif "max_faces" in kwargs:
        assert [a.face.score for a in aligned] == [f.score for f in all_faces[:expected_count]]


def test_read_image_handles_unicode_paths(tmp_path: Path) -> None:
    source = load_sample("astronaut")
    path = tmp_path / "gesichter_ü" / "ölbild 顔.png"
    path.parent.mkdir()
    ok, encoded = cv2.imencode(".png", source)
    assert ok
    path.write_bytes(encoded.tobytes())
    np.testing.assert_array_equal(read_image(path), source)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xd8\xff\xe0 truncated jpeg" + bytes(64), "not a readable image: corrupt, truncated or an unsupported format"),
        (b"", "the file is empty"),
        (None, "file not found"),
    ],
    ids=["corrupt", "empty", "missing"],
)
def test_read_image_errors_name_the_file(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "frame.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError) as info:
        read_image(path)
    assert info.value.path == str(path) and info.value.reason == reason
    assert str(path) in str(info.value)

