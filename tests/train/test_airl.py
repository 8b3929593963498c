"""AIRL: config, the loss arithmetic, gradients into both streams, merged fake kinds, ONNX parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from swapwatch.config import StrictModel
from swapwatch.train.models.airl import AIRLConfig, AIRLDetector
from swapwatch.train.models.base import DetectorOutput, ScoreModel

SMALL = dict(rgb_backbone="resnet18", image_size=64, freq_widths=(16, 32, 64), fusion_dim=64, embed_dim=16)


def _model(seed: int = 0, **overrides: object) -> AIRLDetector:
    torch.manual_seed(seed)
    return AIRLDetector(AIRLConfig(**{**SMALL, **overrides}))


def _batch(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- config


def test_config_defaults_and_descriptions() -> None:
    cfg = AIRLConfig()
    assert isinstance(cfg, StrictModel)
    assert (cfg.method, cfg.rgb_backbone, cfg.rgb_weights) == ("airl", "efficientnet_b4", None)
    assert 0.0 < cfg.supcon_weight <= 0.5 and cfg.temperature == 0.07
    assert all(f.description for f in AIRLConfig.model_fields.values())


@pytest.mark.parametrize(
    "bad",
    [
        {"typo_field": 1},
        {"method": "masm"},
        {"image_size": 100},  # not a multiple of 8
        {"low_cut": 0},  # would keep DC
        {"freq_widths": ()},
        {"dropout": 1.0},
        {"temperature": 0.0},
        {"supcon_weight": -0.1},
    ],
)
def test_config_rejects(bad: dict) -> None:
    with pytest.raises(ValueError):
        AIRLConfig(**bad)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize(
    ("backbone", "size"),
    [
        ("resnet18", 64),  # ImageNet mean/std
        ("vit_tiny", 64),  # (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5)
        ("centerface", 64),  # 0..255 input: mean 0, std 1/255
    ],
)
def test_normalisation_comes_from_the_backbone(backbone: str, size: int) -> None:
    from swapwatch.train.models.backbones import create_backbone

    ref = create_backbone(backbone, image_size=size)
    m = _model(rgb_backbone=backbone, image_size=size).eval()
    assert m.method == "airl" and m.input_size == size
    assert m.mean == ref.mean and m.std == ref.std
    assert (m.rgb_pretrained, m.rgb_source) == (ref.pretrained, ref.source)
    # The frequency stream undoes exactly this normalisation: gray = 255 * BT.601(rgb01).
    rgb01 = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = (rgb01 - torch.tensor(m.mean).view(1, 3, 1, 1)) / torch.tensor(m.std).view(1, 3, 1, 1)
    gray = 255.0 * (0.299 * rgb01[:, 0:1] + 0.587 * rgb01[:, 1:2] + 0.114 * rgb01[:, 2:3])
    torch.testing.assert_close(m.freq.dct.to_gray(x), gray, atol=1e-3, rtol=0)
    assert m.freq.dct(x).shape == (2, 58, size // 8, size // 8)  # 64 - 6 bands kept at low_cut 3
    with torch.no_grad():
        out = m(x)
    assert out.logit.shape == (2,) and torch.isfinite(out.logit).all()


def test_forward_shapes_and_unit_embedding() -> None:
    m = _model().eval()
    with torch.no_grad():
        out = m(_batch(3))
    assert isinstance(out, DetectorOutput)
    assert out.logit.shape == (3,) and out.embedding.shape == (3, 16)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(m.export_module()(_batch(3)), out.logit)


def _bce_by_hand(logits: list[float], targets: list[float]) -> float:
    sig = [1.0 / (1.0 + math.exp(-z)) for z in logits]
    return -sum(t * math.log(s) + (1 - t) * math.log(1 - s) for s, t in zip(sig, targets)) / len(logits)


@pytest.mark.parametrize(
    ("labels", "binary"),
    [
        ([0, 1, 0, 1], [0, 1, 0, 1]),
        ([0, 2, 0, 1], [0, 1, 0, 1]),  # two fake kinds: one class
        ([3, 1, 0, 2], [1, 1, 0, 1]),
    ],
)
@pytest.mark.parametrize("weight", [0.0, 0.2, 1.0])
def test_losses_arithmetic_and_merged_fake_kinds(labels: list[int], binary: list[int], weight: float) -> None:
    m = _model(supcon_weight=weight).eval()
    with torch.no_grad():
        out = m(_batch(4, seed=1))
        got = m.losses(out, torch.tensor(labels))
        ref = m.losses(out, torch.tensor(binary))
    assert set(got) == {"bce", "supcon", "total"}
    for key in got:
        torch.testing.assert_close(got[key], ref[key], atol=0, rtol=0)
    assert abs(got["bce"].item() - _bce_by_hand(out.logit.tolist(), [float(b) for b in binary])) < 1e-5
    torch.testing.assert_close(got["supcon"], m.supcon(out.embedding, torch.tensor(binary)))
    assert abs(got["total"].item() - (got["bce"].item() + weight * got["supcon"].item())) < 1e-5


def test_float_labels_are_bce_targets_as_given() -> None:
    m = _model().eval()
    with torch.no_grad():
        out = m(_batch(4, seed=2))
        soft = m.losses(out, torch.tensor([0.05, 0.95, 0.05, 0.95]))
        hard = m.losses(out, torch.tensor([0, 1, 0, 1]))
    assert abs(soft["bce"].item() - _bce_by_hand(out.logit.tolist(), [0.05, 0.95, 0.05, 0.95])) < 1e-5
    torch.testing.assert_close(soft["supcon"], hard["supcon"])


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_backward_reaches_both_streams(backbone: str) -> None:
    m = _model(rgb_backbone=backbone).train()
    out = m(_batch(4, seed=3))
    losses = m.losses(out, torch.tensor([0, 1, 2, 0]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["supcon"].item() > 0
    losses["total"].backward()

    def grad_norm(module: nn.Module) -> float:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        return float(sum(g.norm() ** 2 for g in grads) ** 0.5)

    assert grad_norm(m.rgb) > 0 and grad_norm(m.freq) > 0
    assert grad_norm(m.projection) > 0 and grad_norm(m.head) > 0
    # The DCT is fixed: buffers only, nothing in the optimizer.
    assert list(m.freq.dct.parameters()) == []


def test_supcon_gradient_reaches_streams_without_bce() -> None:
    """The contrastive term alone trains the shared feature (not just its projection head)."""
    m = _model().train()
    out = m(_batch(4, seed=4))
    m.losses(out, torch.tensor([0, 1, 0, 1]))["supcon"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.freq.cnn.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.rgb.parameters())


# ---------------------------------------------------------------- export


@pytest.mark.parametrize(
    ("exporter", "use_export_module"),
    [("legacy", True), ("legacy", False), ("dynamo", True)],
)
def test_onnx_export_matches_torch(tmp_path: Path, exporter: str, use_export_module: bool) -> None:
    m = _model(seed=5).eval()
    score = ScoreModel(m.export_module() if use_export_module else m).eval()
    path = tmp_path / "airl.onnx"
    names = dict(input_names=["input"], output_names=["p_fake"])
    if exporter == "legacy":
        torch.onnx.export(
            score,
            (_batch(2),),
            str(path),
            dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "p_fake": {0: "batch"}},
            opset_version=17,
            **names,
        )
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(
            score, (_batch(2),), str(path), dynamo=True, external_data=False, dynamic_shapes={"x": {0: batch}}, **names
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["airl.onnx"]  # no side .onnx.data file
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    if use_export_module:  # the projection head is not in the deployed graph
        shapes = {tuple(t.dims) for t in graph.graph.initializer}
        assert (16, 64) not in shapes and (64, 16) not in shapes
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = _batch(n, seed=10 + n)
        with torch.no_grad():
            expected = score(x).numpy()
        (got,) = sess.run(None, {"input": x.numpy()})
        assert got.shape == (n,)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
