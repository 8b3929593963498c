"""`swapwatch train` end to end on real sample faces: reports, checkpoints, resume, interrupt, bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from swapwatch.cli.main import main
from tests.conftest import smoke_recipe


@pytest.mark.parametrize("method", ["masm", "airl"])
def test_smoke_run_writes_reports_and_checkpoints(smoke_runs: dict[str, Path], method: str) -> None:
    run = smoke_runs[method]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6
    assert metrics["pretrained_backbone"] is False  # smoke backbones are random-init and say so
    assert len(metrics["history"]) == 6  # log_every: 1
    assert all(row["total"] == row["total"] for row in metrics["history"])  # no NaN
    assert {e["step"] for e in metrics["evals"]} == {3, 6}
    for png in ("loss.png", "roc.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 6
    assert state["model_config"]["method"] == method
    assert state["data_summary"]["pseudo_fakes"] is True


def test_training_changes_weights_and_resume_continues(tmp_path: Path) -> None:
    recipe = smoke_recipe(tmp_path, "masm")
    assert main(["train", "--config", str(recipe), "--steps", "2"]) == 0
    last = tmp_path / "runs" / "smoke-masm" / "checkpoints" / "last.pt"
    first = torch.load(last, map_location="cpu", weights_only=False)
    assert first["step"] == 2
    assert main(["train", "--config", str(recipe), "--steps", "4"]) == 0  # resumes from step 2
    second = torch.load(last, map_location="cpu", weights_only=False)
    assert second["step"] == 4
    assert [row["step"] for row in second["history"]] == [1, 2, 3, 4]  # history carried over, not restarted
    changed = [k for k, v in first["model"].items() if not torch.equal(v, second["model"][k])]
    assert changed, "two more optimizer steps changed no weight"


def test_interrupted_run_keeps_its_checkpoint_and_resumes(tmp_path: Path) -> None:
    recipe = smoke_recipe(tmp_path, "masm", optim__steps=100000, eval_every=100000)
    last = tmp_path / "runs" / "smoke-masm" / "checkpoints" / "last.pt"
    env = dict(os.environ, SWAPWATCH_PROGRESS="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "swapwatch", "train", "--config", str(recipe)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no checkpoint in 120 s"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out.decode()
    state = torch.load(last, map_location="cpu", weights_only=False)
    stopped_at = state["step"]
    assert stopped_at >= 2
    assert main(["train", "--config", str(recipe), "--steps", str(stopped_at + 1)]) == 0
    assert torch.load(last, map_location="cpu", weights_only=False)["step"] == stopped_at + 1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c.update(colour="red"), "colour"),
        (lambda c: c["optim"].update(stpes=3), "optim.stpes"),
        (lambda c: c["model"].update(method="gan"), "model"),
        (lambda c: c["data"]["sources"][0].update(format="imagenet"), "data.sources.0"),
        (lambda c: c["optim"].update(batch_size=1), "optim.batch_size"),
    ],
)
def test_bad_recipe_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate, field: str  # noqa: ANN001
) -> None:
    path = smoke_recipe(tmp_path, "masm")
    cfg = yaml.safe_load(path.read_text())
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path)]) == 2
    assert field in capsys.readouterr().err


def test_missing_recipe_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
