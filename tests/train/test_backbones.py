"""Backbone factory: the offline CenterFace backbone matches its ONNX source, weights files round-trip
through `weights=`, and missing/mismatched files fail with ModelFileError naming the path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from swapwatch.errors import ConfigError, ModelFileError
from swapwatch.train.models.backbones import (
    CENTERFACE_STD,
    centerface_backbone_onnx,
    create_backbone,
    hf_clip_to_timm,
    load_backbone_weights,
)


@pytest.fixture(scope="module")
def centerface():
    return create_backbone("centerface")


@pytest.mark.parametrize("size, batch", [(160, 2), (224, 1), (64, 3)])
def test_centerface_builds_offline_pretrained(centerface, size: int, batch: int) -> None:
    assert centerface.pretrained is True
    assert centerface.source.endswith("centerface.onnx")
    assert centerface.feature_dim == 320 and centerface.kind == "cnn"
    assert centerface.mean == (0.0, 0.0, 0.0) and centerface.std == CENTERFACE_STD
    x = torch.rand(batch, 3, size, size) * 255.0
    with torch.no_grad():
        y = centerface.module.eval()(x)
        fmap = centerface.module.body(x)
    assert y.shape == (batch, 320)
    assert fmap.shape == (batch, 320, size // 32, size // 32)  # stride 32
    assert torch.allclose(y, fmap.mean(dim=(2, 3)))  # global average pooling


def test_centerface_conv_weights_equal_onnx_initializers(centerface) -> None:
    from onnx import numpy_helper

    model = centerface_backbone_onnx()
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    onnx_convs = [n for n in model.graph.node if n.op_type == "Conv"]
    body = centerface.module.body
    torch_convs = [body.get_submodule(n.target) for n in body.graph.nodes if n.op == "call_module"]
    torch_convs = [m for m in torch_convs if isinstance(m, nn.Conv2d)]
    assert len(onnx_convs) == len(torch_convs) == 51
    for node, conv in zip(onnx_convs, torch_convs):
        assert np.array_equal(conv.weight.detach().numpy(), inits[node.input[1]])
        assert np.array_equal(conv.bias.detach().numpy(), inits[node.input[2]])
    n_params = sum(p.numel() for p in centerface.module.parameters())
    assert n_params == sum(inits[n.input[i]].size for n in onnx_convs for i in (1, 2))


@pytest.mark.parametrize("size", [96, 160])
def test_centerface_torch_matches_onnxruntime(centerface, size: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        centerface_backbone_onnx().SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    x = (torch.rand(2, 3, size, size) * 255.0).numpy()
    (ref,) = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        got = centerface.module.body(torch.from_numpy(x)).numpy()
    assert np.allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("size", [100, 16])
def test_centerface_rejects_sizes_not_divisible_by_32(size: int) -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        create_backbone("centerface", image_size=size)


@pytest.mark.parametrize("name", ["vit_tiny", "centerface", "clip_vit_l14", "resnet18"])
def test_missing_weights_path_names_the_path(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(ModelFileError) as info:
        create_backbone(name, weights=missing)
    assert str(missing) in str(info.value)
    assert info.value.path == str(missing)
    assert ".safetensors" in info.value.expected


def test_random_init_vit_is_labelled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        bb = create_backbone("vit_tiny")
    assert bb.pretrained is False and bb.source == "random-init"
    assert bb.kind == "vit" and bb.feature_dim == 64 and bb.input_size == 160
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)


def test_unknown_backbone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown name"):
        create_backbone("not_a_model_xyz")


def _perturbed_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in module.state_dict().items()
    }


def _save(sd: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "fmt, wrap, filename, point_at_folder",
    [
        ("safetensors", lambda sd: sd, "model.safetensors", False),
        ("torch", lambda sd: sd, "w.pth", False),
        ("torch", lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, "ck.pt", False),
        ("torch", lambda sd: {"model": {f"backbone.{k}": v for k, v in sd.items()}}, "pytorch_model.bin", True),
        (
            "safetensors",
            lambda sd: {f"visual.trunk.{k}": v for k, v in sd.items()},
            "open_clip_model.safetensors",
            True,
        ),
    ],
)
def test_state_dict_round_trips_through_weights(
    tmp_path: Path, fmt: str, wrap, filename: str, point_at_folder: bool
) -> None:
    ref = create_backbone("vit_tiny").module
    sd = _perturbed_state(ref, seed=1)
    path = _save(wrap(sd), tmp_path / filename, fmt)
    bb = create_backbone("vit_tiny", weights=tmp_path if point_at_folder else path)
    assert bb.pretrained is True and bb.source == str(path)
    got = bb.module.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def test_centerface_weights_round_trip(tmp_path: Path, centerface) -> None:
    sd = _perturbed_state(centerface.module, seed=2)
    assert all(k.startswith("body.") for k in sd)
    path = _save({k[len("body.") :]: v for k, v in sd.items()}, tmp_path / "cf.pth", "torch")  # bare GraphModule keys
    bb = create_backbone("centerface", weights=path)
    assert bb.pretrained and bb.source == str(path)
    assert all(torch.equal(bb.module.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("drop", [1, 5])
def test_missing_keys_are_listed(tmp_path: Path, drop: int) -> None:
    ref = create_backbone("vit_tiny").module
    sd = ref.state_dict()
    dropped = list(sd)[-drop:]
    for k in dropped:
        del sd[k]
    path = _save(sd, tmp_path / "partial.pth", "torch")
    with pytest.raises(ModelFileError) as info:
        create_backbone("vit_tiny", weights=path)
    msg = str(info.value)
    assert str(path) in msg and f"{drop} of {len(sd) + drop} weights missing" in msg
    assert dropped[0] in msg


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    sd = create_backbone("vit_tiny").module.state_dict()
    sd["head.weight"] = torch.zeros(3)  # extra keys are ignored
    sd["norm.weight"] = torch.zeros(65)
    path = _save(sd, tmp_path / "bad.pth", "torch")
    with pytest.raises(ModelFileError, match="norm.weight"):
        create_backbone("vit_tiny", weights=path)


def _timm_to_hf_clip(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Inverse of hf_clip_to_timm, written independently from the HF naming scheme."""
    p = "vision_model."
    out = {
        p + "embeddings.class_embedding": sd["cls_token"].reshape(-1),
        p + "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        p + "embeddings.position_embedding.weight": sd["pos_embed"][0],
        p + "embeddings.position_ids": torch.arange(sd["pos_embed"].shape[1])[None],
        p + "pre_layrnorm.weight": sd["norm_pre.weight"],
        p + "pre_layrnorm.bias": sd["norm_pre.bias"],
        p + "post_layernorm.weight": sd["norm.weight"],
        p + "post_layernorm.bias": sd["norm.bias"],
        "text_model.embeddings.token_embedding.weight": torch.zeros(10, 4),
        "visual_projection.weight": torch.zeros(8, sd["norm.weight"].shape[0]),
    }
    for i in range(depth):
        b, h = f"blocks.{i}.", f"{p}encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[b + f"attn.qkv.{leaf}"].chunk(3, dim=0)
            out[h + f"self_attn.q_proj.{leaf}"] = q
            out[h + f"self_attn.k_proj.{leaf}"] = k
            out[h + f"self_attn.v_proj.{leaf}"] = v
            out[h + f"self_attn.out_proj.{leaf}"] = sd[b + f"attn.proj.{leaf}"]
            out[h + f"layer_norm1.{leaf}"] = sd[b + f"norm1.{leaf}"]
            out[h + f"layer_norm2.{leaf}"] = sd[b + f"norm2.{leaf}"]
            out[h + f"mlp.fc1.{leaf}"] = sd[b + f"mlp.fc1.{leaf}"]
            out[h + f"mlp.fc2.{leaf}"] = sd[b + f"mlp.fc2.{leaf}"]
    return out


@pytest.mark.parametrize("depth, dim", [(1, 32), (2, 48)])
def test_hf_clip_checkpoint_maps_to_timm(tmp_path: Path, depth: int, dim: int) -> None:
    from timm.models.vision_transformer import VisionTransformer

    def clip_like() -> VisionTransformer:
        return VisionTransformer(
            img_size=32, patch_size=16, embed_dim=dim, depth=depth, num_heads=2, pre_norm=True,
            class_token=True, global_pool="token", num_classes=0,
        )

    torch.manual_seed(depth)
    src = clip_like()
    sd = _perturbed_state(src, seed=3)
    hf = _timm_to_hf_clip(sd, depth)
    mapped = hf_clip_to_timm(hf)
    assert set(mapped) == set(sd)
    assert all(torch.equal(mapped[k], sd[k]) for k in sd)
    path = _save(hf, tmp_path / "model.safetensors", "safetensors")
    dst = clip_like()
    assert load_backbone_weights(dst, tmp_path, "clip-like") == path
    x = torch.randn(2, 3, 32, 32)
    src.load_state_dict(sd)
    assert torch.allclose(dst(x), src(x), atol=1e-6)


def _timm_to_openai_clip(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """OpenAI CLIP's own layout (`visual.*`, fused in_proj, ln_1/ln_2, c_fc/c_proj, `proj` matrix)."""
    p = "visual."
    out = {
        p + "conv1.weight": sd["patch_embed.proj.weight"],
        p + "class_embedding": sd["cls_token"].reshape(-1),
        p + "positional_embedding": sd["pos_embed"][0],
        p + "ln_pre.weight": sd["norm_pre.weight"],
        p + "ln_pre.bias": sd["norm_pre.bias"],
        p + "ln_post.weight": sd["norm.weight"],
        p + "ln_post.bias": sd["norm.bias"],
        p + "proj": torch.zeros(sd["norm.weight"].shape[0], 8),
        "token_embedding.weight": torch.zeros(10, 4),
    }
    for i in range(depth):
        b, h = f"blocks.{i}.", f"{p}transformer.resblocks.{i}."
        out[h + "attn.in_proj_weight"] = sd[b + "attn.qkv.weight"]
        out[h + "attn.in_proj_bias"] = sd[b + "attn.qkv.bias"]
        for leaf in ("weight", "bias"):
            out[h + f"attn.out_proj.{leaf}"] = sd[b + f"attn.proj.{leaf}"]
            out[h + f"ln_1.{leaf}"] = sd[b + f"norm1.{leaf}"]
            out[h + f"ln_2.{leaf}"] = sd[b + f"norm2.{leaf}"]
            out[h + f"mlp.c_fc.{leaf}"] = sd[b + f"mlp.fc1.{leaf}"]
            out[h + f"mlp.c_proj.{leaf}"] = sd[b + f"mlp.fc2.{leaf}"]
    return out


@pytest.mark.parametrize(
    "layout, dst_size",
    [("openai", 32), ("openai", 48), ("hf", 48)],  # 48: position embeddings resampled from 2x2 to 3x3
)
def test_clip_checkpoints_load_and_resample(tmp_path: Path, layout: str, dst_size: int) -> None:
    from timm.models.vision_transformer import VisionTransformer

    def clip_like(size: int) -> VisionTransformer:
        return VisionTransformer(
            img_size=size, patch_size=16, embed_dim=32, depth=2, num_heads=2, pre_norm=True,
            class_token=True, global_pool="token", num_classes=0,
        )

    sd = _perturbed_state(clip_like(32), seed=4)
    conv = _timm_to_openai_clip if layout == "openai" else _timm_to_hf_clip
    path = _save(conv(sd, 2), tmp_path / "clip.pt", "torch")
    dst = clip_like(dst_size)
    load_backbone_weights(dst, path, "clip-like")
    got = dst.state_dict()
    for k, v in sd.items():
        if k == "pos_embed" and dst_size != 32:
            assert got[k].shape == (1, 1 + (dst_size // 16) ** 2, 32)
            assert torch.equal(got[k][:, 0], v[:, 0])  # the class-token position is kept as is
        else:
            assert torch.equal(got[k], v), k
