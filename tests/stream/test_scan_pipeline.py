"""The pipelined scanner on real media with the embedded default model and detector.

Covers: results in input order with bad files in the middle of a batch of files; bounded queues on a
long video; scores equal to a plain sequential loop (detection on every frame) on a real clip and real
photos; interpolation between keyframes (fewer detections, scores close, cuts detected frame by
frame); early stop; option errors; the progress bar's on/off rules.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from swapwatch.cli.main import main
from swapwatch.errors import ConfigError
from swapwatch.media.image import read_image
from swapwatch.media.video import read_frames
from swapwatch.samples import sample_face_images
from swapwatch.stream.faces.chain import face_input
from swapwatch.stream.scan.cadence import SCAN_DETECT_EVERY
from swapwatch.stream.scan.progress import ScanProgress, progress_enabled
from swapwatch.stream.scan.queues import StageQueue
from swapwatch.stream.scan.scanner import Scanner
from tests.stream.conftest import ClipFactory


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    """Detection on every frame; the other settings are per test via `with_settings`."""
    return Scanner(detect_every=1)


def with_settings(base: Scanner, **options: object) -> Scanner:
    """Another scanner sharing `base`'s detector and engine sessions."""
    return Scanner(settings=base.settings.model_copy(update=options), detector=base.detector, engine=base.engine)


def sequential_scores(scanner: Scanner, frames: list[np.ndarray]) -> list[list[float]]:
    """The plain loop: detect, align (through the model's canonical crop) and score each face on its own,
    frame after frame."""
    engine = scanner.engine
    size, margin, crop_size = engine.input_size, engine.meta.alignment.margin, engine.meta.alignment.size
    out = []
    for image in frames:
        faces = scanner.detector.detect(image)
        crops = [face_input(image, f.landmarks, size, margin, crop_size).crop for f in faces]
        out.append([float(engine.score_crops(crop[None])[0]) for crop in crops])
    return out


def frame_scores(row: dict) -> dict[int, list[float]]:
    return {d["frame"]: [f["score"] for f in d["faces"]] for d in row.get("detail", [])}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, make_clip: ClipFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    clip = make_clip("face_360p.mp4").read_bytes()
    files = {
        "missing": root / "missing.mp4",
        "empty": root / "empty.mp4",
        "not_video": root / "notes.mp4",
        "corrupt_image": root / "corrupt.jpg",
        "truncated": root / "truncated.mp4",
    }
    files["empty"].write_bytes(b"")
    files["not_video"].write_text("this is a text file, not a video\n")
    files["corrupt_image"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files["truncated"].write_bytes(clip[: len(clip) // 2])  # the moov atom is at the end: nothing decodes
    return files


def test_results_come_in_input_order_and_bad_files_do_not_stop_the_scan(
    scanner: Scanner, clip_360p: Path, bad_files: dict[str, Path]
) -> None:
    photos = sample_face_images()
    paths = [
        Path(photos["group_t1"]), bad_files["missing"], clip_360p, bad_files["empty"], bad_files["corrupt_image"],
        Path(photos["astronaut"]), bad_files["not_video"], bad_files["truncated"], clip_360p,
    ]
    s = with_settings(scanner, max_frames=12, batch=5)
    rows = list(s.scan_paths(paths))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    by_name = dict(zip(["group", "missing", "clip", "empty", "corrupt", "astro", "text", "trunc", "clip2"], rows))
    for name, reason in [
        ("missing", "file not found"),
        ("empty", "the file is empty"),
        ("corrupt", "not a readable image"),
        ("text", "not a readable video"),
        ("trunc", "not a readable video"),
    ]:
        row = by_name[name]
        assert row["score"] is None and row["faces"] == 0 and reason in row["error"], (name, row)
    assert by_name["group"]["faces"] == 6
    assert by_name["astro"]["faces"] == 1
    for clip in ("clip", "clip2"):
        assert by_name[clip]["frames"] == 12 and by_name[clip]["frames_with_faces"] == 12
    assert frame_scores(by_name["clip"]) == frame_scores(by_name["clip2"])  # same file, same scores
    assert s.stats.files == len(paths)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        # MP4 with its index (moov) at the front: the cut media data ends in FFmpeg's "invalid data"
        ("face_360p_faststart.mp4", {"faststart": True}),
        # Matroska keeps its index at the front too, but FFmpeg reads a cut file to a clean EOF: the
        # shortfall against the frames its header announces is the warning
        ("face_360p.mkv", {}),
    ],
)
def test_a_video_cut_short_in_the_middle_keeps_its_frames_and_warns(
    scanner: Scanner, make_clip: ClipFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str,
    options: dict[str, object],
) -> None:
    whole = make_clip(name, **options)  # 90 frames
    cut = tmp_path / f"cut{whole.suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="swapwatch.stream.scan.decode"):
        (row,) = with_settings(scanner, detect_every=4).scan_paths([cut])
    assert row["score"] is not None and 0 < row["frames"] < 90
    assert row.get("error") is None
    # the result says where decoding stopped, and so does the log, once
    assert row.get("warning", "").startswith(f"decoding stopped after {row['frames']} frames: ")
    assert [r.getMessage() for r in caplog.records if str(cut) in r.getMessage()] == [f"{cut}: {row['warning']}"]


def _waits_on_a_full_queue(thread_name: str) -> bool:
    """True while the named scan thread waits in `StageQueue.put` on a queue that is full: back-pressure."""
    thread = next((t for t in threading.enumerate() if t.name == thread_name), None)
    frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident is not None else None
    while frame is not None:
        queue = frame.f_locals.get("self")
        if frame.f_code.co_name == "put" and isinstance(queue, StageQueue):
            return queue.qsize() >= queue.maxsize
        frame = frame.f_back
    return False


class HeldConsumer(ScanProgress):
    """The scan's progress (called on the consumer's thread) holding the consumer at its first frame until
    the decoder waits on a full frame queue: the slowest consumer, whatever the machine's speed."""

    def __init__(self) -> None:
        super().__init__(1, enabled=False)
        self.held = False

    def advance(self, frames: int = 1) -> None:
        if not self.held:
            self.held = True
            deadline = time.monotonic() + 30.0
            while not _waits_on_a_full_queue("scan-decode"):
                assert time.monotonic() < deadline, "the decoder never waited on a full frame queue"
                time.sleep(0.01)
        super().advance(frames)


def test_a_long_video_goes_through_bounded_queues(scanner: Scanner, make_clip: ClipFactory) -> None:
    long_clip = make_clip("face_360p_10s.mp4", seconds=10.0)  # 300 frames
    s = with_settings(scanner, frame_queue=4, face_queue=6, detect_every=4)
    (row,) = s.scan_paths([long_clip], HeldConsumer())
    st = s.stats
    assert row["frames"] == 300 and st.frames == 300
    # With the consumer held, the frame queue fills up to its bound and no further; so do the others.
    assert st.peak_frame_queue == 4
    assert st.peak_face_queue <= 6 and st.peak_located_queue <= 4
    # Items waiting to be put back in order: at most what the face queue and the workers hold.
    assert st.peak_reorder <= 6 + st.workers + 1
    assert st.peak_pending <= 256


def test_detection_on_every_frame_gives_the_sequential_scores_on_a_real_clip(
    scanner: Scanner, clip_360p: Path
) -> None:
    frames = [img for _, img in read_frames(clip_360p, range(40))]
    expected = sequential_scores(scanner, frames)
    (row,) = with_settings(scanner, max_frames=40, batch=8).scan_paths([clip_360p])
    got = frame_scores(row)
    assert sorted(got) == [i for i, s in enumerate(expected) if s]
    for i, scores in got.items():
        assert scores == pytest.approx(expected[i], abs=2e-5), i  # batch-of-8 vs single inference, 5-decimal output
    assert row["score"] == pytest.approx(np.mean([max(s) for s in expected if s]), abs=2e-5)


@pytest.mark.data
def test_detection_on_every_frame_gives_the_sequential_scores_on_a_shared_data_video(scanner: Scanner) -> None:
    from tests.conftest import SHARED_DATA

    videos = sorted((SHARED_DATA / "real" / "videos").glob("*.mp4"))
    if not videos:
        pytest.skip(f"no videos under {SHARED_DATA / 'real' / 'videos'} (shared data not present)")
    video = videos[0]
    frames = [img for _, img in read_frames(video, range(30))]
    expected = sequential_scores(scanner, frames)
    (row,) = with_settings(scanner, max_frames=30).scan_paths([video])
    for i, scores in frame_scores(row).items():
        assert scores == pytest.approx(expected[i], abs=2e-5), i


def test_photos_get_the_sequential_scores(scanner: Scanner) -> None:
    photos = [Path(p) for p in sample_face_images().values()]
    rows = list(with_settings(scanner, batch=4).scan_paths(photos))
    for path, row in zip(photos, rows):
        expected = sequential_scores(scanner, [read_image(path)])[0]
        assert [f["score"] for f in row["detail"]] == pytest.approx(expected, abs=2e-5), path.name
        assert row["score"] == pytest.approx(max(expected), abs=2e-5)


def test_interpolation_detects_less_and_keeps_scores_close(scanner: Scanner, clip_360p: Path) -> None:
    (exact,) = with_settings(scanner, detect_every=1).scan_paths([clip_360p])
    s = with_settings(scanner, detect_every=4)
    (row,) = s.scan_paths([clip_360p])
    assert row["frames"] == exact["frames"] == 90
    assert s.stats.detections <= 90 // 4 + 2
    flags = [f["detected"] for d in row["detail"] for f in d["faces"]]
    assert flags.count(False) >= 60
    assert {f["track"] for d in row["detail"] for f in d["faces"]} == {1}  # one face, one track all along
    assert row["tracks"][0]["frames"] == 90
    a, b = frame_scores(exact), frame_scores(row)
    diffs = [abs(max(a[i]) - max(b[i])) for i in a]
    assert np.mean(diffs) < 0.05
    assert abs(row["score"] - exact["score"]) < 0.02


def test_interpolation_detects_every_frame_across_a_scene_cut(scanner: Scanner, tmp_path: Path) -> None:
    # 10 frames of the astronaut, then 10 of the six-face group photo: the cut sits between keyframes
    # 8 and 12, which disagree, so frame 10 is detected, then frame 9 (8 and 10 disagree too); frame 11
    # lies between 10 and 12, in one shot, and is interpolated.
    astro = cv2.resize(read_image(sample_face_images()["astronaut"]), (640, 640))[:360]
    group = cv2.resize(read_image(sample_face_images()["group_t1"]), (640, 360))
    clip = tmp_path / "cut.mp4"
    with av.open(str(clip), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for img in [astro] * 10 + [group] * 10:
            for p in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")):
                c.mux(p)
        for p in stream.encode():
            c.mux(p)
    (row,) = with_settings(scanner, detect_every=4).scan_paths([clip])
    detail = {d["frame"]: d["faces"] for d in row["detail"]}
    assert all(f["detected"] for i in (8, 9, 10, 12) for f in detail[i])
    assert len(detail[9]) == 1 and len(detail[10]) > 1 and len(detail[11]) == len(detail[12])
    assert not any(f["detected"] for f in detail[11])
    assert not any(f["detected"] for f in detail[1])  # within the first shot: interpolated


def test_stopping_early_stops_the_stage_threads(scanner: Scanner, make_clip: ClipFactory) -> None:
    long_clip = make_clip("face_360p_10s.mp4", seconds=10.0)
    before = {t.name for t in threading.enumerate()}
    results = with_settings(scanner, detect_every=4).scan_paths([Path("missing.png"), long_clip, long_clip])
    first = next(results)
    assert first["error"] == "file not found"
    results.close()
    left = [t for t in threading.enumerate() if t.name.startswith("scan-") and t.name not in before]
    assert not left


@pytest.mark.parametrize(
    ("options", "field"),
    [({"every": 0}, "every"), ({"detect_every": 0}, "detect_every"), ({"batch": "big"}, "batch"),
     ({"frame_queue": 0}, "frame_queue"), ({"speed": 2}, "speed")],
)
def test_bad_options_name_the_field(scanner: Scanner, options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Scanner(detector=scanner.detector, engine=scanner.engine, **options)


def test_cli_bad_option_exits_2(capsys: pytest.CaptureFixture[str], clip_360p: Path) -> None:
    assert main(["scan", str(clip_360p), "--detect-every", "0"]) == 2
    assert "detect_every" in capsys.readouterr().err


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "env", "enabled"),
    [(io.StringIO(), None, False), (FakeTty(), None, True), (FakeTty(), "0", False), (FakeTty(), "1", True)],
)
def test_progress_shows_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, env: str | None, enabled: bool
) -> None:
    if env is None:
        monkeypatch.delenv("SWAPWATCH_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("SWAPWATCH_PROGRESS", env)
    assert progress_enabled(stream) is enabled
    with ScanProgress(2, stream=stream) as progress:
        progress.add_total(3)
        progress.advance(3)
        progress.file_done()
    assert ("frames" in stream.getvalue()) is enabled


def test_cli_writes_results_and_stats_and_no_progress_when_not_a_terminal(
    capsys: pytest.CaptureFixture[str], clip_360p: Path, tmp_path: Path
) -> None:
    out, stats = tmp_path / "r.jsonl", tmp_path / "stats.json"
    assert main(["scan", str(clip_360p), "--max-frames", "8", "--out", str(out), "--stats", str(stats)]) == 0
    (row,) = map(json.loads, out.read_text().splitlines())
    assert row["frames"] == 8 and row["detect_every"] == SCAN_DETECT_EVERY
    assert json.loads(stats.read_text())["frames"] == 8
    err = capsys.readouterr().err
    assert "fps" not in err and "━" not in err
