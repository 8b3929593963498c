"""MASM: SVD split exactness, subspace masking through a real AdamW, regularisers' mathematics, folding,
the gradient-SNR layer mask, and decomposition shapes on the CLIP ViT backbones (random init)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from swapwatch.train.models import MASMConfig, build_model, parse_model_config
from swapwatch.train.models.layer_mask import LayerMask, LayerMaskConfig
from swapwatch.train.models.masm import MASMDetector, layer_predicate, orthogonality_loss, spectral_loss
from swapwatch.train.models.svd_layers import (
    SVDConfig,
    SVDConv2d,
    SVDLayer,
    SVDLinear,
    decompose,
    plan_ranks,
    svd_layers,
)


def _linear(out_f: int, in_f: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight.normal_(0, 1 / math.sqrt(in_f))
    return layer


def _svd_linear(out_f: int, in_f: int, cfg: SVDConfig, seed: int = 0) -> SVDLinear:
    lin = _linear(out_f, in_f, seed)
    plan = plan_ranks(out_f, in_f, cfg)
    assert plan is not None
    return SVDLinear(lin, plan)


# ------------------------------------------------------------------------------ rank planning


@pytest.mark.parametrize(
    "m, n, cfg_kwargs, expected",
    [
        # (m, n), config, (principal, residual, K, k) or None
        (768, 768, {}, (756, 0, 3, 4)),
        (3072, 768, {}, (756, 0, 3, 4)),
        (768, 768, {"principal_rank": 0.5}, (384, 372, 3, 4)),
        (768, 768, {"principal_rank": 100}, (100, 656, 3, 4)),
        (64, 288, {}, (52, 0, 3, 4)),
        (32, 27, {}, (21, 0, 3, 2)),  # cap: floor(0.25 * 27 / 3) = 2
        (16, 24, {"num_subspaces": 2, "subspace_rank": 0.25}, (12, 0, 2, 2)),  # 0.25*16=4 -> cap 2
        (32, 9, {}, None),  # depthwise 3x3: floor(0.25 * 9 / 3) = 0 -> skipped
        (8, 8, {"max_artifact_fraction": 1.0, "num_subspaces": 8, "subspace_rank": 1}, None),  # nothing frozen
    ],
)
def test_plan_ranks(m: int, n: int, cfg_kwargs: dict, expected: tuple[int, int, int, int] | None) -> None:
    plan = plan_ranks(m, n, SVDConfig(**cfg_kwargs))
    if expected is None:
        assert plan is None
        return
    assert plan is not None
    assert (plan.principal, plan.residual, plan.num_subspaces, plan.subspace_rank) == expected
    assert plan.principal + plan.residual + plan.artifact == min(m, n)


# ------------------------------------------------------------------- exact reconstruction at init


@pytest.mark.parametrize(
    "out_f, in_f, principal_rank",
    [
        (768, 768, None),  # ViT-B/16 attn.proj
        (3072, 768, None),  # ViT-B/16 mlp.fc1
        (768, 768, 0.5),  # with a frozen residual band
        (40, 130, 7),
    ],
)
def test_svd_linear_reconstructs_weight(out_f: int, in_f: int, principal_rank: int | float | None) -> None:
    lin = _linear(out_f, in_f, seed=1)
    cfg = SVDConfig(principal_rank=principal_rank)
    plan = plan_ranks(out_f, in_f, cfg)
    assert plan is not None
    svd = SVDLinear(lin, plan)
    W = lin.weight.detach()
    assert torch.allclose(svd.weight, W, atol=1e-5 * W.abs().max().item(), rtol=0)
    # principal bases are orthonormal and the artifact bases orthogonal to them
    Up, Ua = svd.principal_U, svd.artifact_bases()[0]
    assert torch.allclose(Up.T @ Up, torch.eye(plan.principal), atol=1e-5)
    assert (Up.T @ Ua).abs().max() < 1e-5
    # artifact singular values are the tail, sorted descending, all below the principal ones
    s = torch.linalg.svdvals(W.double())
    tail = torch.cat(list(svd.S)).double()
    assert torch.allclose(tail, s[-plan.artifact :], rtol=1e-4)
    x = torch.randn(5, in_f)
    assert torch.allclose(svd(x), lin(x), atol=1e-5)


@pytest.mark.parametrize(
    "conv_kwargs, decompose_grouped",
    [
        (dict(in_channels=32, out_channels=64, kernel_size=3, padding=1), False),
        (dict(in_channels=16, out_channels=96, kernel_size=1), False),
        (dict(in_channels=24, out_channels=48, kernel_size=3, stride=2, padding=1, padding_mode="reflect"), False),
        (dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, groups=64), True),  # depthwise
        (dict(in_channels=32, out_channels=64, kernel_size=(3, 5), padding=(1, 2), groups=2, dilation=1), True),
    ],
)
def test_svd_conv_reconstructs_weight(conv_kwargs: dict, decompose_grouped: bool) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(**conv_kwargs)
    cfg = SVDConfig(decompose_grouped=decompose_grouped, max_artifact_fraction=0.5, subspace_rank=1)
    w2 = conv.weight.reshape(conv.out_channels, -1)
    plan = plan_ranks(*w2.shape, cfg)
    assert plan is not None
    svd = SVDConv2d(conv, plan)
    assert svd.weight.shape == conv.weight.shape
    assert torch.allclose(svd.weight, conv.weight, atol=1e-6)
    x = torch.randn(2, conv.in_channels, 17, 19)
    assert torch.allclose(svd(x), conv(x), atol=1e-5)


def _toy_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise: skipped by default
        nn.Conv2d(32, 64, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 48),
        nn.ReLU(),
        nn.Linear(48, 8),  # min(8, 48) = 8: too small for K=3 under the 0.25 cap -> skipped
    )


@pytest.mark.parametrize(
    "cfg_kwargs, expected_names",
    [
        ({}, ["0", "3", "7"]),
        ({"decompose_grouped": True, "max_artifact_fraction": 0.5, "subspace_rank": 1}, ["0", "2", "3", "7", "9"]),
    ],
)
def test_decompose_keeps_model_outputs(cfg_kwargs: dict, expected_names: list[str]) -> None:
    model = _toy_cnn().eval()
    x = torch.randn(3, 3, 12, 12)
    before = model(x)
    names = decompose(model, SVDConfig(**cfg_kwargs))
    assert names == expected_names
    assert [n for n, _ in svd_layers(model)] == expected_names
    assert torch.allclose(model(x), before, atol=1e-5)
    assert decompose(model, SVDConfig(**cfg_kwargs)) == []  # SVD layers are never re-split


# ------------------------------------------------------------------ masking through a real AdamW


def _two_layer_svd_model(K: int) -> nn.Module:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(24, 32), nn.Tanh(), nn.Linear(32, 16))
    names = decompose(model, SVDConfig(num_subspaces=K, subspace_rank=1, max_artifact_fraction=0.5))
    assert names == ["0", "2"]
    return model


@pytest.mark.parametrize("K, fraction, expected_active", [(2, 0.5, 2), (3, 1 / 3, 2), (4, 0.25, 2), (4, 0.75, 6)])
def test_inactive_subspaces_get_no_adamw_update(K: int, fraction: float, expected_active: int) -> None:
    model = _two_layer_svd_model(K)
    layers = list(svd_layers(model))
    mask = LayerMask(layers, LayerMaskConfig(warmup_steps=3, interval=100, active_fraction=fraction, ema=0.5))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    frozen = {n: b.clone() for n, b in model.named_buffers()}
    torch.manual_seed(5)
    x, y = torch.randn(16, 24), torch.randn(16, 16)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss = (model(x) - y).square().mean()
        loss.backward()
        mask.apply(i)
        opt.step()

    for i in range(3):  # warmup: every subspace active and updated
        step(i)
        assert bool(mask.active.all())
    snapshot = {id(p): p.detach().clone() for p in params}
    adam_steps = {id(p): float(opt.state[p]["step"]) for p in params}
    step(3)  # re-selection happens here
    assert int(mask.active.sum()) == expected_active
    for (lname, j), active in zip(mask.units, mask.active.tolist()):
        layer = dict(layers)[lname]
        for p in layer.subspace_parameters(j):
            unchanged = torch.equal(p.detach(), snapshot[id(p)])
            assert unchanged != active, (lname, j, active)
            # AdamW skipped the inactive tensors entirely: no moment/step bookkeeping either
            assert (float(opt.state[p]["step"]) == adam_steps[id(p)]) != active
    for n, b in model.named_buffers():  # principal + residual (and init spectra) never change
        assert torch.equal(b, frozen[n]), n
    for _, layer in layers:
        assert not layer.weight_frozen.requires_grad and not layer.principal_U.requires_grad


# ----------------------------------------------------------------------- orthogonality loss


@pytest.mark.parametrize(
    "shape, K, k, a, b",
    [
        ((96, 64), 3, 4, 0, 1),
        ((96, 64), 3, 4, 2, 0),
        ((40, 200), 2, 3, 1, 0),
    ],
)
def test_orthogonality_zero_at_init_and_grows_with_mixing(
    shape: tuple[int, int], K: int, k: int, a: int, b: int
) -> None:
    layer = _svd_linear(*shape, SVDConfig(num_subspaces=K, subspace_rank=k, max_artifact_fraction=0.5))
    assert orthogonality_loss(layer).item() <= 1e-6
    U_b0 = layer.U[b].detach().clone()
    values = []
    for alpha in (0.0, 0.05, 0.1, 0.3, 1.0):
        with torch.no_grad():
            layer.U[b].copy_(U_b0 + alpha * layer.U[a])  # mix subspace a's basis into b's
        values.append(orthogonality_loss(layer).item())
        # closed form: cross term alpha^2 * k, orthonormality term k * alpha^4 (U_a^T U_b = 0 initially)
        assert values[-1] == pytest.approx(k * alpha**2 + k * alpha**4, abs=1e-4)
        without_self = orthogonality_loss(layer, include_self=False).item()
        assert without_self == pytest.approx(k * alpha**2, abs=1e-4)
    assert all(v2 > v1 for v1, v2 in itertools.pairwise(values))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5])
def test_orthogonality_penalises_overlap_with_principal(alpha: float) -> None:
    layer = _svd_linear(64, 48, SVDConfig())
    with torch.no_grad():
        v0 = layer.V[0].detach().clone()
        layer.V[0].copy_(v0 + alpha * layer.principal_V[:, : v0.shape[1]])
    # principal term alpha^2 * k plus self term k * alpha^4
    k = layer.plan.subspace_rank
    assert orthogonality_loss(layer).item() == pytest.approx(k * alpha**2 + k * alpha**4, rel=1e-3)


# -------------------------------------------------------------------------- spectral loss


@pytest.mark.parametrize("factor, j", [(1.5, 0), (0.5, 1), (2.0, 2), (1.01, 0)])
def test_spectral_loss_closed_form(factor: float, j: int) -> None:
    layer = _svd_linear(80, 60, SVDConfig())
    assert spectral_loss(layer).item() <= 1e-10
    s0 = layer.init_S[j].double()
    with torch.no_grad():
        layer.S[j].mul_(factor)
    W0_sq = layer.init_norm.double() ** 2
    fro = (torch.sqrt(W0_sq + (factor**2 - 1) * s0.square().sum()) / layer.init_norm.double() - 1) ** 2
    floor = 0.01 * layer.plan.subspace_rank * layer.mean_sq_singular.double()
    dev = (factor - 1) ** 2 * s0.square().sum() / (s0.square().sum() + floor) / layer.plan.num_subspaces
    got = spectral_loss(layer).item()
    assert got > 0
    assert got == pytest.approx(float(fro + dev), rel=1e-3)


# ------------------------------------------------------------------------ the selective mask


def _units_with_controlled_grads(
    n_layers: int, K: int, signal: set[int], steps: int, cfg: LayerMaskConfig, seed: int = 0
) -> tuple[LayerMask, list[list[torch.Tensor | None]]]:
    svd_cfg = SVDConfig(num_subspaces=K, subspace_rank=1, max_artifact_fraction=0.5)
    layers = [(f"l{i}", _svd_linear(32, 24, svd_cfg, seed=i)) for i in range(n_layers)]
    mask = LayerMask(layers, cfg)
    gen = torch.Generator().manual_seed(seed)
    directions = {}
    last_grads: list[list[torch.Tensor | None]] = []
    for step in range(steps):
        last_grads = []
        for u, (lname, j) in enumerate(mask.units):
            layer = dict(layers)[lname]
            gs = []
            for t, p in enumerate(layer.subspace_parameters(j)):
                noise = torch.randn(p.shape, generator=gen)
                if u in signal:
                    d = directions.setdefault((u, t), torch.randn(p.shape, generator=gen))
                    g = 1e-4 * (d + 0.1 * noise)  # tiny but consistent
                else:
                    g = 10.0 * noise  # large but zero-mean
                p.grad = g
                gs.append(g)
            last_grads.append(gs)
        mask.apply(step)
        if step < cfg.warmup_steps:
            assert bool(mask.active.all())
    return mask, last_grads


@pytest.mark.parametrize(
    "n_layers, K, fraction, signal",
    [
        (2, 3, 0.5, {0, 4, 5}),
        (3, 2, 1 / 3, {1, 2}),
        (4, 3, 0.25, {0, 3, 6}),
        (1, 4, 0.75, {0, 2, 3}),
    ],
)
def test_mask_selects_highest_snr_fraction(n_layers: int, K: int, fraction: float, signal: set[int]) -> None:
    cfg = LayerMaskConfig(warmup_steps=40, interval=10, active_fraction=fraction, ema=0.9)
    mask, last = _units_with_controlled_grads(n_layers, K, signal, steps=41, cfg=cfg)
    n = n_layers * K
    assert len(mask) == n
    assert int(mask.active.sum()) == round(fraction * n) == len(signal)
    assert {i for i, a in enumerate(mask.active.tolist()) if a} == signal
    snr = mask.snr.tolist()
    assert min(snr[i] for i in signal) > max(snr[i] for i in range(n) if i not in signal)
    # gradients of inactive units were dropped, active ones left untouched
    layers = dict(mask._layers)
    for u, (lname, j) in enumerate(mask.units):
        for p, g in zip(layers[lname].subspace_parameters(j), last[u]):
            if u in signal:
                assert p.grad is g
            else:
                assert p.grad is None
    state = mask.state()
    assert sum(sum(flags) for flags in state.values()) == len(signal)
    assert set(mask.active_layers()) == {mask.units[i][0] for i in signal}


@pytest.mark.parametrize("threshold, expect_signal_only", [(1.0, True), (1e9, False)])
def test_mask_threshold_mode(threshold: float, expect_signal_only: bool) -> None:
    signal = {1, 3}
    cfg = LayerMaskConfig(warmup_steps=30, interval=10, snr_threshold=threshold, ema=0.9)
    mask, _ = _units_with_controlled_grads(2, 2, signal, steps=31, cfg=cfg)
    active = {i for i, a in enumerate(mask.active.tolist()) if a}
    if expect_signal_only:
        assert active == signal
    else:  # nothing reaches the threshold: the single best unit stays active
        assert len(active) == 1 and active <= signal


def test_mask_reselects_on_schedule() -> None:
    cfg = LayerMaskConfig(warmup_steps=5, interval=3, active_fraction=0.5)
    mask = LayerMask([], cfg)
    assert [s for s in range(15) if mask.is_due(s)] == [5, 8, 11, 14]


# --------------------------------------------------------------------- detector end to end


def _train_steps(model: MASMDetector, size: int, steps: int, lr: float) -> None:
    torch.manual_seed(6)
    x = torch.randn(4, 3, size, size)
    y = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    model.train()
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        losses = model.losses(model(x), y)
        losses["total"].backward()
        model.on_after_backward(i)
        opt.step()


@pytest.mark.parametrize(
    "backbone, size, scale, expected_layers",
    [
        ("vit_tiny", 64, 1.0, 24),  # 6 blocks x (qkv, proj, fc1, fc2)
        ("centerface", 64, 255.0, 34),  # every non-depthwise conv with room for k >= 1
    ],
)
def test_folded_export_matches_trained_model(backbone: str, size: int, scale: float, expected_layers: int) -> None:
    cfg = MASMConfig(backbone=backbone, image_size=size if backbone == "centerface" else None,
                     mask=LayerMaskConfig(warmup_steps=2, interval=2, active_fraction=0.5))
    if backbone == "vit_tiny":
        cfg = cfg.model_copy(update={"image_size": size})
    model = build_model(cfg)
    assert isinstance(model, MASMDetector) and model.method == "masm"
    assert len(model.svd_layer_names) == expected_layers
    assert model.input_size == size
    x = torch.rand(3, 3, size, size) * scale
    model.eval()
    start = model(x).logit.detach()
    losses = model.losses(model(x), torch.tensor([0, 1, 0]))
    assert set(losses) == {"bce", "orth", "spectral", "total"}
    assert losses["orth"].item() <= 1e-6 and losses["spectral"].item() <= 1e-8
    _train_steps(model, size, steps=4, lr=5e-2)
    model.eval()
    trained = model(x).logit.detach()
    assert not torch.allclose(trained, start)  # training moved something
    exported = model.export_module()
    assert not any(isinstance(m, SVDLayer) for m in exported.modules())
    assert (exported(x).logit - trained).abs().max().item() < 1e-5
    assert model.mask_summary()["mask/active_units"] == round(0.5 * len(model.mask))


@pytest.mark.parametrize(
    "backbone, layers, shapes",
    [
        (
            "clip_vit_b16",
            r"re:^blocks\.0\.",
            {
                "blocks.0.attn.qkv": (2304, 768),
                "blocks.0.attn.proj": (768, 768),
                "blocks.0.mlp.fc1": (3072, 768),
                "blocks.0.mlp.fc2": (768, 3072),
            },
        ),
        (
            "clip_vit_l14",
            r"re:^blocks\.23\.mlp\.",
            {"blocks.23.mlp.fc1": (4096, 1024), "blocks.23.mlp.fc2": (1024, 4096)},
        ),
    ],
)
def test_clip_vit_decomposition_shapes(backbone: str, layers: str, shapes: dict[str, tuple[int, int]]) -> None:
    """Random-init CLIP towers; only one block is split (a full ViT-L/14 split takes ~45 s on 2 cores)."""
    model = MASMDetector(MASMConfig(backbone=backbone, layers=layers))
    assert not model.pretrained and model.backbone_source == "random-init"
    assert model.input_size == 224 and model.mean[0] == pytest.approx(0.48145466)
    split = dict(svd_layers(model.backbone))
    assert sorted(split) == sorted(shapes)
    for name, (m, n) in shapes.items():
        layer = split[name]
        r = min(m, n) - 3 * 4  # principal = everything but K * k = 3 * 4
        assert layer.weight_frozen.shape == (m, n)
        assert layer.principal_U.shape == (m, r) and layer.principal_V.shape == (n, r)
        assert [tuple(u.shape) for u in layer.U] == [(m, 4)] * 3
        assert [tuple(s.shape) for s in layer.S] == [(4,)] * 3
        assert [tuple(v.shape) for v in layer.V] == [(n, 4)] * 3
        assert layer.init_S.shape == (3, 4)
    # the "auto" preset would split attn + mlp of every block (the ones split above are SVD layers now)
    include = layer_predicate("auto", "vit")
    depth = len(model.backbone.blocks)
    assert sum(include(n, m) for n, m in model.backbone.named_modules()) == 4 * depth - len(shapes)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        any(f".{t}." in n for t in "USV") or n.startswith(("head.", "feature_norm.")) for n in trainable
    )


@pytest.mark.parametrize(
    "data, error",
    [
        ({"method": "masm", "layers": "attention"}, "layers"),
        ({"method": "masm", "mask": {"active_fraction": 0}}, "active_fraction"),
        ({"method": "masm", "svd": {"num_subspaces": 3, "rank": 4}}, "rank"),
        ({"method": "masm", "layers": "re:("}, "regex"),
        ({"method": "masm", "svd": {"principal_rank": 0}}, "principal_rank"),
        ({"method": "masm", "backbone": "centerface", "extra": 1}, "extra"),
    ],
)
def test_masm_config_rejects_bad_values(data: dict, error: str) -> None:
    from swapwatch.errors import ConfigError

    with pytest.raises(ConfigError, match=error):
        parse_model_config(data)


def test_freeze_non_svd_off_trains_everything() -> None:
    model = MASMDetector(MASMConfig(backbone="vit_tiny", freeze_non_svd=False, layers="mlp"))
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.endswith(".bias") for n in frozen)  # only the split layers' biases (train_bias=False)
    assert len(model.svd_layer_names) == 12


def test_frozen_batchnorm_statistics_stay_pretrained() -> None:
    model = MASMDetector(MASMConfig(backbone="resnet18", layers=r"re:^layer4\.1\.conv2$"))
    assert model.svd_layer_names == ["layer4.1.conv2"]
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bns]
    model.train()
    assert model.training and model.head_dropout.training and not any(b.training for b in bns)
    model(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(b.running_mean, r) for b, r in zip(bns, before))
