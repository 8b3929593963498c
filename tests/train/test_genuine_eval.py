"""`swapwatch eval --genuine`: the metrics on hand-made score tables, label derivation, and one real run.

The tables give each file a score by hand, so every expected value below can be checked with a pencil.
Only the last test reads ../shared/data (the 4 DeepFaceLab pairs), and it is skipped when that is absent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from swapwatch.errors import ConfigError
from swapwatch.train.genuine import (
    GenuineItem,
    ItemScore,
    derive_labels,
    describe_drivers,
    drivers,
    item_score,
    load_genuine,
    overall,
    pair_summary,
    per_method,
    read_labels,
    sorted_items,
    summarize,
    threshold_rates,
    win_share,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

Row = tuple[str, int, float | None, str | None, str]  # (file, label, score, pair group, method)


def table(rows: list[Row]) -> list[ItemScore]:
    return [
        ItemScore(GenuineItem(name, label, group, method), score, reason=None if score is not None else "no face found")
        for name, label, score, group, method in rows
    ]


# --- AUC ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fakes", "reals", "expected"),
    [
        ([0.9, 0.8], [0.1, 0.2], 1.0),  # perfectly separated
        ([0.1, 0.2], [0.9, 0.8], 0.0),  # perfectly inverted
        ([0.3, 0.8], [0.1, 0.35], 0.75),  # 3 of 4 (fake, real) combinations right
        ([0.5, 0.5], [0.5, 0.5], 0.5),  # all ties: half each
        ([0.5, 0.9], [0.5], 0.75),  # one tie (0.5) + one win (1): 1.5 / 2
        ([0.4], [0.2, 0.4, 0.6], 0.5),  # win, tie, loss
        ([], [0.1], None),  # one side empty: undefined, not an error
        ([0.1], [], None),
    ],
)
def test_win_share_is_the_auc_with_ties_half(fakes: list[float], reals: list[float], expected: float | None) -> None:
    got = win_share(fakes, reals)
    assert got == (None if expected is None else pytest.approx(expected))
    if expected is not None and len(set(fakes + reals)) > 1:
        from sklearn.metrics import roc_auc_score

        assert got == pytest.approx(roc_auc_score([1] * len(fakes) + [0] * len(reals), fakes + reals))


@pytest.mark.parametrize(
    ("rows", "auc", "n_scored_fake", "n_scored_real", "n_unscored"),
    [
        ([("a", 1, 0.9, None, "X"), ("b", 0, 0.1, None, "real")], 1.0, 1, 1, 0),
        # unscored files are left out of the AUC, not counted as 0 or 1
        ([("a", 1, 0.9, None, "X"), ("b", 1, None, None, "X"), ("c", 0, 0.2, None, "real"),
          ("d", 0, None, None, "real")], 1.0, 1, 1, 2),
        ([("a", 1, 0.3, None, "X"), ("b", 1, 0.7, None, "X"), ("c", 0, 0.5, None, "real")], 0.5, 2, 1, 0),
        ([("a", 1, 0.3, None, "X"), ("b", 1, None, None, "X")], None, 1, 0, 1),  # no real scored
    ],
)
def test_overall_auc_on_scored_files(
    rows: list[Row], auc: float | None, n_scored_fake: int, n_scored_real: int, n_unscored: int
) -> None:
    o = overall(table(rows))
    assert o.auc == (None if auc is None else pytest.approx(auc))
    got = (o.n_scored_fake, o.n_scored_real, o.n_unscored, o.n)
    assert got == (n_scored_fake, n_scored_real, n_unscored, len(rows))


# --- pairs --------------------------------------------------------------------------------------------

PAIRS: list[Row] = [
    ("g1_fake_a", 1, 0.8, "g1", "A"),  # g1: two fakes of one real (0.5): a wins, b ties
    ("g1_fake_b", 1, 0.5, "g1", "B"),
    ("g1_real", 0, 0.5, "g1", "real"),
    ("g2_fake", 1, 0.2, "g2", "A"),  # g2: lost
    ("g2_real", 0, 0.6, "g2", "real"),
    ("g3_fake", 1, 0.9, "g3", "B"),  # g3: the real has no face: unscored comparison
    ("g3_real", 0, None, "g3", "real"),
    ("lone_fake", 1, 0.99, None, "C"),  # no group: in no comparison
    ("lone_real", 0, 0.01, None, "real"),
]


def test_pair_wins_count_ties_half_and_list_unscored() -> None:
    s = pair_summary(table(PAIRS))
    got = [(c.group, c.fake, c.real, c.win) for c in s.comparisons]
    assert got == [
        ("g1", "g1_fake_a", "g1_real", 1.0),
        ("g1", "g1_fake_b", "g1_real", 0.5),
        ("g2", "g2_fake", "g2_real", 0.0),
        ("g3", "g3_fake", "g3_real", None),
    ]
    assert (s.wins, s.n, s.n_unscored, s.n_groups) == (1.5, 3, 1, 3)
    assert s.won == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("rows", "won", "n"),
    [
        ([("f", 1, 0.6, "g", "A"), ("r", 0, 0.4, "g", "real")], 1.0, 1),
        ([("f", 1, 0.4, "g", "A"), ("r", 0, 0.4, "g", "real")], 0.5, 1),
        # one fake, two reals in its group: both comparisons count
        ([("f", 1, 0.5, "g", "A"), ("r1", 0, 0.4, "g", "real"), ("r2", 0, 0.6, "g", "real")], 0.5, 2),
        ([("f", 1, None, "g", "A"), ("r", 0, 0.4, "g", "real")], None, 0),  # nothing scored
        ([("f", 1, 0.6, "g", "A")], None, 0),  # a group without a real
    ],
)
def test_pair_share(rows: list[Row], won: float | None, n: int) -> None:
    s = pair_summary(table(rows))
    assert s.won == (None if won is None else pytest.approx(won))
    assert s.n == n


# --- per method ---------------------------------------------------------------------------------------

def test_per_method_auc_uses_all_reals() -> None:
    # reals scored: g1_real 0.5, g2_real 0.6, lone_real 0.01 (g3_real unscored)
    methods = {m.method: m for m in per_method(table(PAIRS))}
    assert list(methods) == ["A", "B", "C"]
    a, b, c = methods["A"], methods["B"], methods["C"]
    # A: fakes 0.8 (beats all 3) and 0.2 (beats 0.01 only): (3 + 1) / 6
    assert a.auc == pytest.approx(4 / 6) and (a.n_fake, a.n_scored_fake, a.n_real) == (2, 2, 3)
    assert a.mean_score == pytest.approx(0.5)
    # B: 0.5 (tie 0.5, loses 0.6, beats 0.01) and 0.9 (beats all): (1.5 + 3) / 6
    assert b.auc == pytest.approx(4.5 / 6)
    assert c.auc == pytest.approx(1.0) and c.n_fake == 1


def test_per_method_with_unscored_fakes_only_has_no_auc() -> None:
    (m,) = per_method(table([("f", 1, None, None, "Z"), ("r", 0, 0.3, None, "real")]))
    assert (m.method, m.auc, m.n_fake, m.n_scored_fake, m.mean_score) == ("Z", None, 1, 0, None)


def test_threshold_rates_and_sorting() -> None:
    rows = table(PAIRS)
    rates = threshold_rates(rows, {"fpr_0.01": 0.55})
    # fakes >= 0.55: 0.8, 0.9, 0.99 of the 5 scored; reals >= 0.55: 0.6 of the 3 scored
    assert rates["fpr_0.01"] == {"threshold": 0.55, "tpr": pytest.approx(3 / 5), "fpr": pytest.approx(1 / 3)}
    names = [r.item.name for r in sorted_items(rows)]
    assert names[0] == "lone_fake" and names[-1] == "g3_real"  # highest first, unscored last


def test_report_dict_is_json_ready_and_lists_unscored() -> None:
    body = summarize(table(PAIRS), {"fpr_0.01": 0.55}).to_dict()
    text = json.dumps(body)
    assert "NaN" not in text
    assert body["metrics"]["pairs_won"] == pytest.approx(0.5) and body["metrics"]["pairs_n"] == 3
    assert body["unscored"] == [{"file": "g3_real", "label": 0, "reason": "no face found"}]
    assert [m["method"] for m in body["per_method"]] == ["A", "B", "C"]
    assert body["items"][0]["file"] == "lone_fake"


# --- scan results -> item scores ----------------------------------------------------------------------

def test_item_score_keeps_what_drove_a_video_and_an_image() -> None:
    video = {
        "path": "v.mp4", "kind": "video", "score": 0.4, "faces": 2, "frames": 5, "frames_with_faces": 3,
        "detail": [
            {"frame": 0, "score": 0.2, "faces": [{"box": [0, 0, 9, 9], "score": 0.2, "track": 0}]},
            {"frame": 2, "score": 0.7, "faces": [{"box": [0, 0, 9, 9], "score": 0.1, "track": 0},
                                                  {"box": [20, 0, 29, 9], "score": 0.7, "track": 1}]},
            {"frame": 3, "score": 0.3, "faces": [{"box": [0, 0, 9, 9], "score": 0.3, "track": 0}]},
        ],
        "tracks": [{"track": 0, "frames": 3, "mean": 0.2, "max": 0.3},
                   {"track": 1, "frames": 1, "mean": 0.7, "max": 0.7}],
    }
    s = item_score(GenuineItem("v.mp4", 1, None, "X"), video)
    assert s.score == 0.4 and s.faces == 2
    tops = s.drivers["top_frames"]
    assert [(t["frame"], t["face"], t["track"]) for t in tops] == [(2, 1, 1), (3, 0, 0), (0, 0, 0)]
    assert s.drivers["tracks"][0]["track"] == 1  # highest mean first
    assert describe_drivers(s.drivers) == "frame 2 (0.700, track 1); 3/5 frames with a face"

    image = {"path": "i.png", "kind": "image", "score": 0.6, "faces": 2,
             "detail": [{"box": [1, 2, 3, 4], "det_score": 0.9, "score": 0.1},
                        {"box": [10, 20, 30, 40], "det_score": 0.9, "score": 0.6}]}
    d = drivers(image)
    assert [f["face"] for f in d["faces"]] == [1, 0]
    assert describe_drivers(d) == "face 2/2 at 10,20,30,40"

    none = item_score(GenuineItem("n.png", 0), {"path": "n.png", "kind": "image", "score": None, "faces": 0,
                                                  "reason": "no face found"})
    assert not none.scored and none.reason == "no face found" and none.drivers == {}


# --- labels -------------------------------------------------------------------------------------------

def _face_image() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture
def pairs_folder(tmp_path: Path) -> Path:
    """dfl_a_{real,fake}.jpg, dfl_b_{real,fake}.png, a lone other_fake.jpg, a file with no suffix, a subfolder pair."""
    img = _face_image()
    root = tmp_path / "pairs"
    (root / "sub").mkdir(parents=True)
    for name in ("dfl_a_real.jpg", "dfl_a_fake.jpg", "dfl_b_real.png", "dfl_b_fake.png", "other_fake.jpg",
                 "notes.jpg", "sub/x_real.jpg", "sub/x_fake.jpg"):
        cv2.imwrite(str(root / name), img)
    (root / "README.txt").write_text("not media")
    return root


def test_pairs_folder_labels_from_suffixes(pairs_folder: Path) -> None:
    items = {it.name: it for it in derive_labels(pairs_folder)}
    assert sorted(items) == ["dfl_a_fake.jpg", "dfl_a_real.jpg", "dfl_b_fake.png", "dfl_b_real.png",
                             "other_fake.jpg", "sub/x_fake.jpg", "sub/x_real.jpg"]
    got = {n: (it.label, it.pair_group, it.method) for n, it in items.items()}
    assert got["dfl_a_fake.jpg"] == (1, "dfl_a", "DeepFaceLab")
    assert got["dfl_a_real.jpg"] == (0, "dfl_a", "real")
    assert got["dfl_b_fake.png"] == (1, "dfl_b", "DeepFaceLab")
    assert got["other_fake.jpg"] == (1, None, "unknown")  # no real with its prefix: no pair group
    assert got["sub/x_fake.jpg"] == (1, "sub/x", "unknown")
    assert all(it.path == pairs_folder / n for n, it in items.items())
    # an explicit method wins over the dfl_ rule
    assert {it.method for it in derive_labels(pairs_folder, "FaceFusion") if it.label == 1} == {"FaceFusion"}


def test_labels_tsv_is_read_and_checked(tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.mkdir()
    (root / "labels.tsv").write_text(
        "filename\tlabel\tpair_group\tmethod\n"
        "images/a_fake.png\t1\tg\tSomeSwap\n"
        "images/a_real.png\t0\tg\treal\n"
        "videos/b.mp4\t1\t-\tOther\n"
        "\n"
    )
    items, source = load_genuine(root)
    assert source == "labels.tsv"
    assert [(i.name, i.label, i.pair_group, i.method) for i in items] == [
        ("images/a_fake.png", 1, "g", "SomeSwap"),
        ("images/a_real.png", 0, "g", "real"),
        ("videos/b.mp4", 1, None, "Other"),
    ]
    (root / "labels.tsv").write_text("filename\tlabel\tpair_group\tmethod\nx.png\t2\t-\treal\n")
    with pytest.raises(ConfigError, match=r"labels.tsv:2: label must be 0"):
        read_labels(root)
    (root / "labels.tsv").write_text("name\tlabel\n")
    with pytest.raises(ConfigError, match="header"):
        read_labels(root)


def test_empty_or_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        load_genuine(tmp_path / "nope")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        load_genuine(tmp_path)


# --- end to end ---------------------------------------------------------------------------------------

def _default_model() -> Path:
    from swapwatch.engine.onnx_runtime import default_model_path

    return default_model_path()


def test_eval_genuine_cli_on_generated_pairs(pairs_folder: Path, tmp_path: Path) -> None:
    """The CLI on generated files: the astronaut photo as both sides, and one faceless fake (unscored)."""
    from swapwatch.cli.main import main

    root = tmp_path / "small"
    root.mkdir()
    for name in ("dfl_a_real.jpg", "dfl_a_fake.jpg"):
        (root / name).write_bytes((pairs_folder / name).read_bytes())
    cv2.imwrite(str(root / "blank_fake.png"), np.full((200, 200, 3), 127, np.uint8))
    out = tmp_path / "out"
    assert main(["eval", "--model", str(_default_model()), "--genuine", str(root), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["labels"].startswith("file names")
    assert report["thresholds"]  # the shipped sidecar has FPR thresholds
    assert report["pairs"]["n"] == 1 and report["pairs"]["comparisons"][0]["win"] == 0.5  # same image: a tie
    assert report["unscored"] == [{"file": "blank_fake.png", "label": 1, "reason": "no face found"}]
    assert (out / "roc.png").stat().st_size > 0 and (out / "method_auc.png").stat().st_size > 0
    assert len((out / "scan.jsonl").read_text().splitlines()) == 3


@pytest.mark.data
def test_eval_genuine_on_the_shared_dfl_pairs(tmp_path: Path) -> None:
    pairs = SHARED_DATA / "pairs"
    if not any(pairs.glob("*_fake.*")):
        pytest.skip(f"no *_fake files under {pairs} (shared data not present)")
    from swapwatch.cli.main import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(_default_model()), "--genuine", str(pairs), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"]["n"] == 4 and report["pairs"]["n_unscored"] == 0
    assert [m["method"] for m in report["per_method"]] == ["DeepFaceLab"]
    assert all(math.isfinite(item["score"]) for item in report["items"])
    assert all(c["win"] in (0.0, 0.5, 1.0) for c in report["pairs"]["comparisons"])
