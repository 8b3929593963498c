"""Dataset readers on tiny generated layouts: labels, splits, sources and the layout errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from swapwatch.errors import DatasetLayoutError
from swapwatch.train.data import DatasetConfig, MediaItem, read_dataset
from swapwatch.train.data.items import hash_unit, train_or_val
from swapwatch.train.data.readers import READERS
from tests.train.conftest import CELEBDF_FILES, FOLDER_FILES


def _ids(items: list[MediaItem]) -> set[str]:
    return {it.video_id for it in items}


def _ffpp(root: Path, **kw: object) -> DatasetConfig:
    return DatasetConfig(format="ffpp", root=root, **kw)


# ----- config -------------------------------------------------------------------------------------------


def test_registry_covers_every_format() -> None:
    fmt_field = DatasetConfig.model_fields["format"]
    assert set(READERS) == set(fmt_field.annotation.__args__)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"format": "celebdf", "root": "/x", "methods": ["Deepfakes"]}, "methods applies only"),
        ({"format": "dfdc", "root": "/x", "splits_dir": "/s"}, "splits_dir applies only"),
        ({"format": "ffpp", "root": "/x", "compresion": "c23"}, "compresion"),
        ({"format": "ffpp", "root": "/x", "val_fraction": 1.0}, "val_fraction"),
        ({"format": "ffpp", "root": "/x", "max_items": 0}, "max_items"),
        ({"format": "vox", "root": "/x"}, "format"),
        ({"format": "ffpp", "root": "/x", "compression": "c35"}, "compression"),
    ],
)
def test_config_rejects(data: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        DatasetConfig.model_validate(data)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_dataset(DatasetConfig(format="folder", root=tmp_path / "nope"))


@pytest.mark.parametrize("key, fraction", [("a", 0.0), ("b", 0.5), ("celebdf:id7", 0.2)])
def test_hash_split_is_deterministic(key: str, fraction: float) -> None:
    assert train_or_val(key, fraction) == train_or_val(key, fraction)
    assert 0.0 <= hash_unit(key) < 1.0
    assert train_or_val(key, 0.0) == "train"


def test_val_fraction_is_roughly_honoured() -> None:
    picks = [train_or_val(f"k{i}", 0.25) for i in range(4000)]
    assert 0.22 < picks.count("val") / len(picks) < 0.28


# ----- FaceForensics++ ----------------------------------------------------------------------------------


def _ffpp_expected(ids: tuple[str, str]) -> set[str]:
    a, b = ids
    fakes = {f"{m}/{t}_{s}" for m in ("Deepfakes", "Face2Face") for t, s in ((a, b), (b, a))}
    return {f"youtube/{a}", f"youtube/{b}"} | fakes


@pytest.mark.parametrize("split, pair", [("train", ("000", "003")), ("val", ("001", "002")), ("test", ("004", "005"))])
def test_ffpp_official_splits(ffpp_root: Path, split: str, pair: tuple[str, str]) -> None:
    items = read_dataset(_ffpp(ffpp_root, splits_dir=ffpp_root / "splits", split=split))
    assert _ids(items) == _ffpp_expected(pair)
    assert all(it.split == split and it.kind == "video" and it.dataset == "ffpp" for it in items)
    for it in items:
        assert it.label == (0 if it.source == "youtube" else 1), it
        assert it.path.is_file() and it.path.stem == it.video_id.split("/")[1]


def test_ffpp_all_and_missing_methods_warn(ffpp_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        items = read_dataset(_ffpp(ffpp_root, splits_dir=ffpp_root / "splits"))
    assert len(items) == 6 + 12
    assert {it.source for it in items} == {"youtube", "Deepfakes", "Face2Face"}
    for method in ("FaceSwap", "NeuralTextures", "FaceShifter"):
        assert method in caplog.text


@pytest.mark.parametrize(
    "kw, n_items, sources",
    [
        ({"methods": ["Deepfakes"]}, 6 + 6, {"youtube", "Deepfakes"}),
        ({"methods": []}, 6, {"youtube"}),
        ({"methods": ["Deepfakes", "FaceSwap"]}, 12, {"youtube", "Deepfakes"}),
        ({"methods": [], "compression": "c40"}, 1, {"youtube"}),
    ],
)
def test_ffpp_method_and_compression_choice(ffpp_root: Path, kw: dict, n_items: int, sources: set[str]) -> None:
    items = read_dataset(_ffpp(ffpp_root, **kw))
    assert len(items) == n_items
    assert {it.source for it in items} == sources


@pytest.mark.parametrize(
    "damage, kw, fragment",
    [
        ("original_sequences", {}, "original_sequences/ is missing"),
        (None, {"compression": "raw"}, "original_sequences/youtube/raw/videos/ is missing"),
        (None, {"methods": ["FaceSwap", "NeuralTextures"]}, "none of the methods"),
        ("manipulated_sequences", {}, "none of the methods"),
        ("splits/val.json", {"with_splits": True}, "val.json is missing"),
        (None, {"split": "test"}, "needs the official splits"),
    ],
)
def test_ffpp_layout_errors(ffpp_root: Path, damage: str | None, kw: dict, fragment: str) -> None:
    import shutil

    if damage:
        target = ffpp_root / damage
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    if kw.pop("with_splits", False):
        kw["splits_dir"] = ffpp_root / "splits"
    with pytest.raises(DatasetLayoutError, match=fragment) as info:
        read_dataset(_ffpp(ffpp_root, **kw))
    assert info.value.format == "ffpp"


def test_ffpp_split_json_conflict(ffpp_root: Path) -> None:
    (ffpp_root / "splits" / "test.json").write_text(json.dumps([["004", "000"]]))
    with pytest.raises(DatasetLayoutError, match="000 is in both train.json and test.json"):
        read_dataset(_ffpp(ffpp_root, splits_dir=ffpp_root / "splits"))


@pytest.mark.parametrize("val_fraction", [0.0, 0.5, 0.9])
def test_ffpp_hashed_split_keeps_pairs_together(ffpp_root: Path, val_fraction: float) -> None:
    items = read_dataset(_ffpp(ffpp_root, val_fraction=val_fraction))
    assert len(items) == 18
    groups = {"000": "A", "003": "A", "001": "B", "002": "B", "004": "C", "005": "C"}
    split_of_group: dict[str, set[str]] = {}
    for it in items:
        first_id = it.video_id.split("/")[1].split("_")[0]
        split_of_group.setdefault(groups[first_id], set()).add(it.split)
    assert all(len(s) == 1 for s in split_of_group.values()), split_of_group
    assert {it.split for it in items} <= {"train", "val"}
    if val_fraction == 0.0:
        assert {it.split for it in items} == {"train"}


@pytest.mark.parametrize("max_items", [1, 5, 18, 100])
def test_max_items_is_a_stable_subset(ffpp_root: Path, max_items: int) -> None:
    first = read_dataset(_ffpp(ffpp_root, max_items=max_items))
    again = read_dataset(_ffpp(ffpp_root, max_items=max_items))
    assert first == again
    assert len(first) == min(max_items, 18)
    assert first == sorted(first, key=lambda it: str(it.path))


# ----- Celeb-DF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "video_id, label, split, source",
    [
        # listed with "1" (REAL in the list's convention) -> our label 0
        ("YouTube-real/00170", 0, "test", "YouTube-real"),
        ("Celeb-real/id1_0000", 0, "test", "Celeb-real"),
        # listed with "0" (FAKE) -> our label 1
        ("Celeb-synthesis/id0_id1_0000", 1, "test", "Celeb-synthesis"),
        ("Celeb-synthesis/id1_id0_0000", 1, None, "Celeb-synthesis"),
        ("YouTube-real/00171", 0, None, "YouTube-real"),
        ("Celeb-real/id2_0000", 0, None, "Celeb-real"),
    ],
)
def test_celebdf_labels_and_splits(
    celebdf_root: Path, video_id: str, label: int, split: str | None, source: str
) -> None:
    items = {it.video_id: it for it in read_dataset(DatasetConfig(format="celebdf", root=celebdf_root))}
    assert len(items) == len(CELEBDF_FILES)
    item = items[video_id]
    assert (item.label, item.source, item.dataset) == (label, source, "celebdf")
    if split is None:
        assert item.split in ("train", "val")
    else:
        assert item.split == split


def test_celebdf_identity_groups_share_a_split(celebdf_root: Path) -> None:
    for fraction in (0.3, 0.5, 0.7):
        items = read_dataset(DatasetConfig(format="celebdf", root=celebdf_root, val_fraction=fraction))
        by_target: dict[str, set[str]] = {}
        for it in items:
            if it.split != "test" and it.source != "YouTube-real":
                by_target.setdefault(it.path.stem.split("_")[0], set()).add(it.split)
        assert all(len(s) == 1 for s in by_target.values()), by_target


@pytest.mark.parametrize(
    "list_text, fragment",
    [
        ("0 YouTube-real/00170.mp4\n", "says YouTube-real/00170.mp4 is fake"),
        ("1 Celeb-synthesis/id0_id1_0000.mp4\n", "says Celeb-synthesis/id0_id1_0000.mp4 is real"),
        ("REAL YouTube-real/00170.mp4\n", "line 1"),
        ("1 YouTube-real/00170.mp4\n1\n", "line 2"),
    ],
)
def test_celebdf_bad_test_list(celebdf_root: Path, list_text: str, fragment: str) -> None:
    (celebdf_root / "List_of_testing_videos.txt").write_text(list_text)
    with pytest.raises(DatasetLayoutError, match=fragment):
        read_dataset(DatasetConfig(format="celebdf", root=celebdf_root))


def test_celebdf_listed_but_missing_is_logged(celebdf_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (celebdf_root / "YouTube-real" / "00170.mp4").unlink()
    with caplog.at_level(logging.WARNING):
        items = read_dataset(DatasetConfig(format="celebdf", root=celebdf_root, split="test"))
    assert _ids(items) == {"Celeb-synthesis/id0_id1_0000", "Celeb-real/id1_0000"}
    assert "YouTube-real/00170.mp4" in caplog.text


def test_celebdf_without_folders(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    with pytest.raises(DatasetLayoutError, match="Celeb-real"):
        read_dataset(DatasetConfig(format="celebdf", root=tmp_path))


# ----- DFDC ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "video_id, label, split, source",
    [
        ("dfdc_train_part_0/aaa", 0, None, "dfdc_train_part_0"),
        ("dfdc_train_part_0/bbb", 1, None, "dfdc_train_part_0"),
        ("dfdc_train_part_1/eee", 1, None, "dfdc_train_part_1"),
        ("test_videos/t1", 1, "test", "test_videos"),
        ("test_videos/t2", 0, "test", "test_videos"),
    ],
)
def test_dfdc_items(dfdc_root: Path, video_id: str, label: int, split: str | None, source: str) -> None:
    items = {it.video_id: it for it in read_dataset(DatasetConfig(format="dfdc", root=dfdc_root))}
    assert len(items) == 7
    item = items[video_id]
    assert (item.label, item.source) == (label, source)
    assert item.split == split if split else item.split in ("train", "val")


def test_dfdc_fakes_follow_their_original(dfdc_root: Path) -> None:
    for fraction in (0.2, 0.5, 0.8):
        items = {
            it.video_id: it for it in read_dataset(DatasetConfig(format="dfdc", root=dfdc_root, val_fraction=fraction))
        }
        assert (
            items["dfdc_train_part_0/aaa"].split
            == items["dfdc_train_part_0/bbb"].split
            == items["dfdc_train_part_0/ccc"].split
        )
        assert items["dfdc_train_part_1/ddd"].split == items["dfdc_train_part_1/eee"].split


def test_dfdc_missing_file_is_logged_skip(dfdc_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        items = read_dataset(DatasetConfig(format="dfdc", root=dfdc_root))
    assert "gone.mp4" in caplog.text
    assert not any(it.path.name == "gone.mp4" for it in items)


@pytest.mark.parametrize(
    "rel, text, fragment",
    [
        ("dfdc_train_part_0/metadata.json", '{"aaa.mp4": {"label": "MAYBE"}}', "label 'FAKE' or 'REAL'"),
        ("dfdc_train_part_0/metadata.json", "{not json", "not readable JSON"),
        ("dfdc_train_part_0/metadata.json", '{"aaa.mp4": {"label": "REAL", "split": "dev"}}', "unknown split"),
        ("test_videos/labels.csv", "name,label\nt1.mp4,1\n", "needs columns filename,label"),
        ("test_videos/labels.csv", "filename,label\nt1.mp4,FAKE\n", "line 2"),
    ],
)
def test_dfdc_bad_metadata(dfdc_root: Path, rel: str, text: str, fragment: str) -> None:
    (dfdc_root / rel).write_text(text)
    with pytest.raises(DatasetLayoutError, match=fragment):
        read_dataset(DatasetConfig(format="dfdc", root=dfdc_root))


def test_dfdc_without_metadata(tmp_path: Path) -> None:
    (tmp_path / "dfdc_train_part_0").mkdir()
    with pytest.raises(DatasetLayoutError, match="no metadata.json or labels.csv"):
        read_dataset(DatasetConfig(format="dfdc", root=tmp_path))


# ----- plain folders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, label, kind, source",
    [
        ("real/a.jpg", 0, "image", "real"),
        ("real/B.PNG", 0, "image", "real"),
        ("real/person1/frames/0001.png", 0, "image", "person1"),
        ("real/clips/v1.mp4", 0, "video", "clips"),
        ("fake/Deepfakes/x.mp4", 1, "video", "Deepfakes"),
        ("fake/Deepfakes/y.MOV", 1, "video", "Deepfakes"),
        ("fake/z.webp", 1, "image", "fake"),
    ],
)
def test_folder_items(folder_root: Path, rel: str, label: int, kind: str, source: str) -> None:
    items = {
        str(it.path.relative_to(folder_root)): it
        for it in read_dataset(DatasetConfig(format="folder", root=folder_root))
    }
    assert set(items) == set(FOLDER_FILES), "hidden and non-media files must be ignored"
    item = items[rel]
    assert (item.label, item.kind, item.source, item.dataset) == (label, kind, source, "plain")
    assert item.video_id == rel.rsplit(".", 1)[0]


def test_folder_frames_of_one_folder_share_a_split(folder_root: Path) -> None:
    for fraction in (0.3, 0.5, 0.7):
        items = read_dataset(DatasetConfig(format="folder", root=folder_root, val_fraction=fraction, name="mine"))
        frames = [it for it in items if "frames" in it.path.parts]
        assert len(frames) == 2 and frames[0].split == frames[1].split
        assert {it.dataset for it in items} == {"mine"}


@pytest.mark.parametrize(
    "split, expected",
    [
        ("train", {"train/real/a", "train/fake/b"}),
        ("val", {"val/real/c", "val/fake/d"}),
        ("test", {"test/fake/e"}),
        ("all", {"train/real/a", "train/fake/b", "val/real/c", "val/fake/d", "test/fake/e"}),
    ],
)
def test_folder_split_form(folder_split_root: Path, split: str, expected: set[str]) -> None:
    items = read_dataset(DatasetConfig(format="folder", root=folder_split_root, split=split))
    assert _ids(items) == expected
    for it in items:
        assert it.split == it.video_id.split("/")[0]
        assert it.label == (1 if "/fake/" in f"/{it.video_id}" else 0)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (["other/a.png"], "neither real/ nor fake/"),
        (["real/a.png", "train/fake/b.png"], "use either"),
        (["real/notes.txt", "fake/readme.md"], "no media files found"),
    ],
)
def test_folder_layout_errors(tmp_path: Path, png_bytes: bytes, make: list[str], fragment: str) -> None:
    for rel in make:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(png_bytes)
    with pytest.raises(DatasetLayoutError, match=fragment) as info:
        read_dataset(DatasetConfig(format="folder", root=tmp_path))
    assert info.value.format == "folder"


def test_folder_with_only_real_warns(tmp_path: Path, png_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(png_bytes)
    with caplog.at_level(logging.WARNING):
        items = read_dataset(DatasetConfig(format="folder", root=tmp_path))
    assert [it.label for it in items] == [0]
    assert "fake/ is missing" in caplog.text
