"""Write a Triton Inference Server model repository for an exported swapwatch model.

    REPO/
      MODEL/
        config.pbtxt          platform, max_batch_size, input/output, dynamic batching, the sidecar
        1/
          model.onnx          (or model.plan for TensorRT)
          model.onnx.json     the sidecar, beside the model as everywhere in swapwatch

`tritonserver --model-repository REPO` serves it (ONNX Runtime or TensorRT backend), and so does
`pytriton_serve.py REPO` on a machine without the full server. The sidecar JSON is also put into
config.pbtxt as the string parameter `swapwatch_metadata`: TritonEngine reads it from the served
config, so every node preprocesses exactly as the model was trained, with no local model file.
The sidecar file beside the model is for tools that read the repository from disk (pytriton_serve.py,
a human); Triton's backends load only `model.onnx` / `model.plan` and ignore it.

Shapes follow Triton's rules: dims leave out the batch dim (`max_batch_size` > 0), and the model's
score output of shape [N] is declared as dims [1] with `reshape: { shape: [ ] }`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from swapwatch.engine.metadata import EngineMetadata, read_metadata, sidecar_path
from swapwatch.engine.triton_runtime import METADATA_PARAMETER, MODEL_NAME_RE
from swapwatch.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

Platform = Literal["onnxruntime_onnx", "tensorrt_plan"]
PLAN_SUFFIXES: Final = (".plan", ".engine", ".trt")
DEFAULT_NAME: Final = "swapwatch"
DEFAULT_QUEUE_DELAY_US: Final = 500
"""How long Triton may hold a request to merge it with others: 0.5 ms, small next to a ~30 ms frame."""
_TYPES: Final = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]
    """Without the batch dim."""
    reshape_to_batch_only: bool = False
    """The model's tensor is [N]: declared as dims [1] with `reshape: { shape: [ ] }`."""


@dataclass(frozen=True)
class TritonRepo:
    """What `write_triton_repo` wrote."""

    repo: Path
    model_name: str
    version: int
    platform: Platform
    max_batch: int
    config: Path
    model: Path
    sidecar: Path


def text_format_string(value: str) -> str:
    """`value` as a quoted protobuf text-format string: UTF-8 bytes, C escapes, octal for the rest."""
    out = ['"']
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    out.append('"')
    return "".join(out)


def _tensor_block(spec: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in spec.dims)
    lines = ["  {", f"    name: {text_format_string(spec.name)}", f"    data_type: {spec.data_type}", f"    dims: [ {dims} ]"]
    if spec.reshape_to_batch_only:
        lines.append("    reshape: { shape: [ ] }")
    lines.append("  }")
    return "\n".join(lines)


def model_config_text(
    name: str, platform: Platform, max_batch: int, inp: TensorSpec, out: TensorSpec, meta: EngineMetadata,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> str:
    """config.pbtxt for one swapwatch model (ModelConfig in protobuf text format)."""
    sidecar = json.dumps(meta.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
    return "\n".join([
        f"name: {text_format_string(name)}",
        f"platform: {text_format_string(platform)}",
        f"max_batch_size: {max_batch}",
        "input [", _tensor_block(inp), "]",
        "output [", _tensor_block(out), "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "# the swapwatch metadata sidecar (preprocessing, calibration): TritonEngine reads it from the served config",
        "parameters: {",
        f"  key: {text_format_string(METADATA_PARAMETER)}",
        f"  value: {{ string_value: {text_format_string(sidecar)} }}",
        "}",
        "",
    ])


def _onnx_tensors(onnx_path: Path, meta: EngineMetadata) -> tuple[TensorSpec, TensorSpec]:
    """Input and output specs read from the ONNX graph (one input, one score output, dynamic batch)."""
    from swapwatch.media.onnx_session import make_session

    session = make_session(onnx_path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(onnx_path, f"expected one input and one output, found {len(inputs)} and {len(outputs)}")
    i, o = inputs[0], outputs[0]
    s = meta.input_size
    if len(i.shape) != 4 or [d if isinstance(d, int) else -1 for d in i.shape[1:]] not in ([3, s, s], [3, -1, -1]):
        raise ModelFileError(onnx_path, f"input {i.name!r} has shape {i.shape}; the sidecar's input_size needs [N, 3, {s}, {s}]")
    if isinstance(i.shape[0], int) or isinstance(o.shape[0] if o.shape else 1, int):
        raise ModelFileError(onnx_path, f"the batch dim must be dynamic (input {i.shape}, output {o.shape}); "
                             "export writes it so")
    if i.type != "tensor(float)":
        raise ModelFileError(onnx_path, f"input {i.name!r} is {i.type}; TritonEngine sends float32")
    if o.type not in _TYPES:
        raise ModelFileError(onnx_path, f"output {o.name!r} is {o.type}; expected float32 or float16 scores")
    rest = [d if isinstance(d, int) else -1 for d in o.shape[1:]]
    if rest not in ([], [1]):
        raise ModelFileError(onnx_path, f"output {o.name!r} has shape {o.shape}; expected one score per crop ([N] or [N, 1])")
    return (TensorSpec(i.name, _TYPES[i.type], (3, s, s)),
            TensorSpec(o.name, _TYPES[o.type], (1,), reshape_to_batch_only=not rest))


def _plan_max_batch(plan: Path, wanted: int) -> int:
    from swapwatch.engine.plan_cache import descriptor_path, read_descriptor

    if not descriptor_path(plan).is_file():
        log.warning("triton-repo: %s has no build descriptor; assuming its profile accepts batches 1..%d", plan.name, wanted)
        return wanted
    profile = read_descriptor(plan).profile
    if profile.min_batch != 1:
        raise ConfigError(f"{plan}: the plan's profile starts at batch {profile.min_batch}; Triton's dynamic batcher "
                          "sends any batch from 1, so rebuild it with min_batch 1")
    if wanted > profile.max_batch:
        raise ConfigError(f"--max-batch {wanted}: the plan {plan.name} was built for batches up to {profile.max_batch}")
    return wanted


def check_repo_options(name: str, version: int, max_batch: int, max_queue_delay_us: int) -> None:
    """ConfigError naming the option (as `swapwatch export` spells it) that cannot make a valid repository."""
    if not MODEL_NAME_RE.match(name):
        raise ConfigError(f"--triton-name: {name!r} may hold only letters, digits, '_', '.' and '-'")
    if version < 1:
        raise ConfigError(f"--triton-version: must be >= 1, got {version}")
    if max_batch < 1:
        raise ConfigError(f"--max-batch: must be >= 1, got {max_batch}")
    if max_queue_delay_us < 0:
        raise ConfigError(f"--max-queue-delay-us: must be >= 0, got {max_queue_delay_us}")


def write_triton_repo(
    model: Path | None,
    repo: Path,
    name: str = DEFAULT_NAME,
    *,
    version: int = 1,
    max_batch: int = 32,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> TritonRepo:
    """Lay out `REPO/NAME/config.pbtxt` and `REPO/NAME/VERSION/model.onnx|model.plan` (+ sidecar).

    `model`: an exported .onnx or TensorRT plan with its sidecar (None: the embedded default model).
    The model is copied unless it already lies at its place in the repository (export writes it there).
    A TensorRT plan's tensor names come from the ONNX it was built from when that lies beside it
    (export keeps it), else the exporter's names `input` / `score`.
    """
    check_repo_options(name, version, max_batch, max_queue_delay_us)
    if model is None:
        from swapwatch.engine.onnx_runtime import default_model_path

        model = default_model_path()
    model = Path(model)
    if not model.is_file():
        raise ModelFileError(model, "no such model file (expected an .onnx or .plan written by swapwatch export)")
    meta = read_metadata(model)  # also checks the sidecar's hash against the file
    suffix = model.suffix.lower()
    platform: Platform
    if suffix == ".onnx":
        platform, filename = "onnxruntime_onnx", "model.onnx"
        inp, out = _onnx_tensors(model, meta)
    elif suffix in PLAN_SUFFIXES:
        platform, filename = "tensorrt_plan", "model.plan"
        max_batch = _plan_max_batch(model, max_batch)
        source = model.with_suffix(".onnx")
        if source.is_file():
            inp, out = _onnx_tensors(source, read_metadata(source, verify_hash=False))
        else:
            s = meta.input_size
            inp = TensorSpec("input", "TYPE_FP32", (3, s, s))
            out = TensorSpec("score", "TYPE_FP32", (1,), reshape_to_batch_only=True)
    else:
        raise ConfigError(f"{model}: a Triton repository takes an .onnx model or a TensorRT plan, not {suffix or 'this file'}")

    model_dir = repo / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / filename
    if model.resolve() != target.resolve():
        shutil.copyfile(model, target)
        shutil.copyfile(sidecar_path(model), sidecar_path(target))
    config = model_dir / "config.pbtxt"
    config.write_text(model_config_text(name, platform, max_batch, inp, out, meta, max_queue_delay_us))
    log.info("triton-repo: wrote %s (%s, max_batch_size %d)", model_dir, platform, max_batch)
    return TritonRepo(repo=repo, model_name=name, version=version, platform=platform, max_batch=max_batch,
                      config=config, model=target, sidecar=sidecar_path(target))
