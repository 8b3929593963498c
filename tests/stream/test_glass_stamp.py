"""The glass stamp: drawn at send time, read back after real encoders (PyAV's libx264 and libvpx)."""

from __future__ import annotations

import fractions
import time

import av
import numpy as np
import pytest

from swapwatch.stream.bench.glass_stamp import (
    BITS,
    COLS,
    Stamp,
    StampLayout,
    decode_bits,
    draw_stamp,
    draw_stamp_i420,
    encode_bits,
    now_us,
    read_stamp,
)
from tests.stream.conftest import face_frames


def _encode_decode(frames: list[np.ndarray], codec: str, bitrate: int, fps: int = 30) -> list[np.ndarray]:
    """Encode BGR frames with a real encoder and decode them back (what a sender and a receiver do)."""
    h, w = frames[0].shape[:2]
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = fractions.Fraction(1, fps)
    enc.framerate = fractions.Fraction(fps, 1)
    enc.bit_rate = bitrate
    if codec == "libx264":
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "bframes": "0"}
    else:
        enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    dec = av.CodecContext.create("h264" if codec == "libx264" else "vp8", "r")
    out: list[np.ndarray] = []
    packets = []
    for i, img in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    for packet in packets:
        out += [f.to_ndarray(format="bgr24") for f in dec.decode(packet)]
    return out


@pytest.mark.parametrize(
    ("codec", "width", "height", "bitrate"),
    [
        ("libx264", 1280, 720, 1_500_000),
        ("libx264", 640, 360, 400_000),
        ("libvpx", 1280, 720, 1_000_000),
        ("libvpx", 640, 360, 300_000),
    ],
)
def test_round_trip_through_a_real_encoder(codec: str, width: int, height: int, bitrate: int) -> None:
    base = now_us()
    frames = []
    for i, img in enumerate(face_frames(20, width, height)):
        draw_stamp(img, base + i * 33_333, 1000 + i)
        frames.append(img)
    decoded = _encode_decode(frames, codec, bitrate)
    assert len(decoded) == len(frames)
    stamps = [read_stamp(img) for img in decoded]
    # Every frame must come back exactly: a wrong time is worse than none, and none is a test failure too.
    assert stamps == [Stamp(base + i * 33_333, 1000 + i) for i in range(len(frames))]


def test_read_after_the_receiver_rescales_the_picture() -> None:
    import cv2

    img = next(face_frames(1, 1280, 720))
    draw_stamp(img, 123_456_789, 42)
    small = cv2.resize(img, (640, 360), interpolation=cv2.INTER_AREA)
    assert read_stamp(small) == Stamp(123_456_789, 42)


def test_i420_drawing_reads_back_after_conversion() -> None:
    w, h = 640, 360
    img = next(face_frames(1, w, h))
    yuv = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p").to_ndarray()
    buf = np.ascontiguousarray(yuv).reshape(-1).copy()
    draw_stamp_i420(buf, w, h, 987_654_321, 7)
    back = av.VideoFrame.from_ndarray(buf.reshape(h * 3 // 2, w), format="yuv420p").to_ndarray(format="bgr24")
    assert read_stamp(back) == Stamp(987_654_321, 7)


@pytest.mark.parametrize(
    "picture",
    [
        "face_frame",   # a real picture with no stamp
        "black",
        "white",
        "grey",
        "noise",
        "checker",      # black/white cells everywhere, but no magic/CRC
    ],
)
def test_a_frame_without_a_stamp_reads_as_none(picture: str) -> None:
    rng = np.random.default_rng(0)
    img = {
        "face_frame": lambda: next(face_frames(1, 1280, 720)),
        "black": lambda: np.zeros((720, 1280, 3), np.uint8),
        "white": lambda: np.full((720, 1280, 3), 255, np.uint8),
        "grey": lambda: np.full((720, 1280, 3), 128, np.uint8),
        "noise": lambda: rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8),
        "checker": lambda: ((np.indices((720, 1280)).sum(0) // 16 % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2),
    }[picture]()
    assert read_stamp(img) is None


def test_random_bit_patterns_never_decode() -> None:
    rng = np.random.default_rng(1)
    hits = sum(decode_bits(rng.integers(0, 2, BITS)) is not None for _ in range(20_000))
    assert hits == 0


@pytest.mark.parametrize("cell", [0, 8, 40, 70, 100, 111])
def test_one_flipped_cell_reads_as_none_never_a_wrong_time(cell: int) -> None:
    img = np.zeros((360, 640, 3), np.uint8)
    draw_stamp(img, now_us(), 5)
    layout = StampLayout.for_size(640, 360)
    assert layout is not None
    y0, y1, x0, x1 = layout.box(*divmod(cell, COLS))
    img[y0:y1, x0:x1] = 255 - img[y0:y1, x0:x1]
    assert read_stamp(img) is None


@pytest.mark.parametrize(("width", "height"), [(160, 120), (100, 400)])
def test_too_small_pictures_are_refused_when_drawing_and_read_as_none(width: int, height: int) -> None:
    img = np.zeros((height, width, 3), np.uint8)
    with pytest.raises(ValueError, match="too small"):
        draw_stamp(img, 1, 1)
    assert read_stamp(img) is None


def test_the_stamp_clock_is_time_monotonic() -> None:
    before = time.monotonic()
    t = now_us() / 1e6
    assert before - 1e-6 <= t <= time.monotonic() + 1e-6
    assert len(encode_bits(2**63, 2**24 + 3)) == BITS
    assert decode_bits(encode_bits(2**63, 2**24 + 3)) == Stamp(2**63, 3)  # the sequence wraps at 24 bits
