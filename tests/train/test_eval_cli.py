"""`swapwatch eval` end to end: a plain-folder dataset of real faces and pseudo-fakes, torch and ONNX models."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from swapwatch.cli.main import main
from swapwatch.engine.onnx_runtime import OnnxEngine
from swapwatch.samples import sample_face_images
from swapwatch.stream.faces.chain import to_input
from swapwatch.train.data.cache import load_face_cache, read_crop
from swapwatch.train.dataset import fixed_pseudo_fake
from swapwatch.train.degrade import ROBUSTNESS_LEVELS
from swapwatch.train.pseudofakes import PseudoFakeConfig, PseudoFakeGenerator


def expected_metrics(onnx: Path, cache: Path, seed: int = 0) -> dict[str, float]:
    """AUC, AP and video AUC by sklearn, on scores taken straight from the engine: every crop the command
    cached is a real (label 0) followed by its fixed pseudo-fake (label 1, `--seed`), as `eval` documents."""
    engine = OnnxEngine(onnx)
    generator = PseudoFakeGenerator(PseudoFakeConfig())
    labels, scores, videos = [], [], []
    for record in load_face_cache(cache):
        crop = read_crop(record)
        fake = fixed_pseudo_fake(generator, crop, record, seed, len(labels) + 1)
        for label, image, video in ((0, crop, record.video_id), (1, fake, f"{record.video_id}#pseudo")):
            labels.append(label)
            scores.append(float(engine.score_crops(to_input(image, engine.input_size)[None])[0]))
            videos.append(video)
    engine.close()
    per_video: dict[str, list[float]] = defaultdict(list)
    for video, score in zip(videos, scores):
        per_video[video].append(score)
    names = sorted(per_video)
    return {
        "auc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "video_auc": roc_auc_score([int(v.endswith("#pseudo")) for v in names], [np.mean(per_video[v]) for v in names]),
        "pseudo_mean": float(np.mean([s for s, y in zip(scores, labels) if y == 1])),
    }


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_eval_on_samples_with_pseudo_fakes_and_robustness(
    smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    model = smoke_onnx["masm"] if kind == "onnx" else smoke_runs["masm"] / "checkpoints" / "last.pt"
    out = tmp_path / "eval"
    args = ["eval", "--model", str(model), "--format", "samples", "--cache", str(tmp_path / "cache"),
            "--pseudo-fakes", "--robustness", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert m["n"] == 16 and m["n_fake"] == 8  # 8 real sample faces, each also as a pseudo-fake
    # the metrics are those of the model's own scores on these crops (the checkpoint through its ONNX export)
    expected = expected_metrics(smoke_onnx["masm"], tmp_path / "cache")
    for key in ("auc", "ap", "video_auc"):
        assert m[key] == pytest.approx(expected[key], abs=1e-6), key
    assert report["per_source"]["pseudo-fake"]["mean_score"] == pytest.approx(expected["pseudo_mean"], abs=1e-4)
    assert m["eer"] is not None
    assert set(report["robustness"]) == set(ROBUSTNESS_LEVELS)
    assert all(len(row) == 4 for row in report["robustness"].values())
    assert (out / "roc.png").exists() and (out / "robustness.png").exists()


def test_eval_torch_and_onnx_agree(smoke_runs: dict[str, Path], smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    results = []
    for model in (smoke_runs["airl"] / "checkpoints" / "last.pt", smoke_onnx["airl"]):
        out = tmp_path / model.suffix
        assert main(["eval", "--model", str(model), "--format", "samples", "--cache", str(tmp_path / "c"),
                     "--pseudo-fakes", "--out", str(out)]) == 0
        results.append(json.loads((out / "report.json").read_text())["metrics"])
    assert results[0]["auc"] == pytest.approx(results[1]["auc"], abs=1e-6)


def test_eval_plain_folder_with_real_and_fake(smoke_onnx: dict[str, Path], tmp_path: Path) -> None:
    import cv2

    from swapwatch.media.image import read_image

    root = tmp_path / "folder"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    images = sample_face_images()
    t1 = read_image(images["group_t1"])
    cv2.imwrite(str(root / "real" / "astronaut.png"), read_image(images["astronaut"]))
    cv2.imwrite(str(root / "fake" / "group_left.png"), t1[:, : t1.shape[1] // 2])
    cv2.imwrite(str(root / "fake" / "noise.png"), (t1 * 0 + 127).astype("uint8"))  # no face: logged skip
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(smoke_onnx["masm"]), "--format", "folder", "--root", str(root),
                 "--split", "all", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert m["n"] == 2 and m["n_fake"] == 1


def test_eval_needs_a_dataset(smoke_onnx: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(smoke_onnx["masm"])]) == 2
    assert "--data" in capsys.readouterr().err


def test_eval_missing_model_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(tmp_path / "x.onnx"), "--format", "samples"]) == 1
    assert "x.onnx" in capsys.readouterr().err
