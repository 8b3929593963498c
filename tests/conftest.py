"""Session-wide fixtures: the smoke training runs, made once and shared by the train/engine/stream tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def smoke_recipe(tmp: Path, method: str, **overrides: object) -> Path:
    """The CI smoke recipe for `method`, writing its run and crop cache under `tmp`."""
    cfg = yaml.safe_load((REPO / "configs" / "smoke" / f"{method}.yaml").read_text())
    cfg["output_dir"] = str(tmp / "runs")
    cfg["data"]["cache"]["root"] = str(tmp / "cache")
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[key] = value
    path = tmp / f"{method}-{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train both smoke recipes once through the real CLI; method -> run folder."""
    from swapwatch.cli.main import main

    tmp = tmp_path_factory.mktemp("smoke")
    runs = {}
    for method in ("masm", "airl"):
        assert main(["train", "--config", str(smoke_recipe(tmp, method))]) == 0
        runs[method] = tmp / "runs" / f"smoke-{method}"
    return runs


@pytest.fixture(scope="session")
def smoke_onnx(smoke_runs: dict[str, Path]) -> dict[str, Path]:
    """Both smoke checkpoints exported to ONNX through the real CLI; method -> model path."""
    from swapwatch.cli.main import main

    out = {}
    for method, run in smoke_runs.items():
        path = run / "model.onnx"
        assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(path)]) == 0
        out[method] = path
    return out
