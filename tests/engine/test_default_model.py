"""The embedded default model: ships inside the package, loads offline, scores real faces."""

from __future__ import annotations

import numpy as np
import pytest

from swapwatch.engine.metadata import read_metadata
from swapwatch.engine.onnx_runtime import OnnxEngine, default_model_path
from swapwatch.samples import sample_crops


def test_default_model_and_sidecar_ship_with_the_package() -> None:
    path = default_model_path()
    assert path.stat().st_size < 30 * 1024 * 1024
    meta = read_metadata(path)  # also checks the sha256 against the file
    assert meta.backbone.get("pretrained") is True, "the shipped detector must not be a random-init backbone"
    assert meta.data.get("pseudo_fakes") is True


def test_default_model_scores_real_sample_faces() -> None:
    engine = OnnxEngine()
    crops = sample_crops(engine.input_size, engine.meta.alignment.margin, crop_size=engine.meta.alignment.size)
    a = engine.score_crops(crops)
    b = engine.score_crops(crops[::-1])[::-1]
    assert a.shape == (len(crops),) and np.all((a >= 0) & (a <= 1))
    np.testing.assert_allclose(a, b, atol=1e-5)  # batch order does not change a crop's score
    assert not np.allclose(a, a[0]), "every face scored the same: the model is not looking at the input"


@pytest.mark.parametrize("threads", [1, 2])
def test_default_model_runs_with_explicit_thread_counts(threads: int) -> None:
    engine = OnnxEngine(threads=threads)
    assert engine.session.get_providers() == ["CPUExecutionProvider"]
