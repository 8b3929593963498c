"""INT8 by explicit quantization: Q/DQ nodes placed by post-training static calibration on real face crops.

TensorRT 11 has no INT8 builder flag and no implicit calibrators: an INT8 engine is built from an ONNX
graph that already carries QuantizeLinear/DequantizeLinear pairs with their scales. ONNX Runtime's
`quantize_static(quant_format=QDQ)` writes exactly such a graph, and the same file runs on ORT CPU, so
calibration is built and tested here without a GPU.

Pipeline: `quant_pre_process` (ONNX + symbolic shape inference, ORT basic graph optimisation: constant
folding, Conv+BN/Add/Mul folding) -> choose the nodes that stay float (below) -> `quantize_static` fed by
`CropBatchReader`, which yields batches already normalised by the engine's own `preprocess`, so the
ranges are those of the tensors inference will see.

Settings (measured on the smoke models, ORT 1.31 CPU, 2 cores with AVX-512 VNNI; see docs/calibration.md):

* Weights: signed INT8, symmetric, per output channel. Per-tensor weight scales lose the small
  channels of conv layers; per-channel costs nothing measurable here.
* Activations, `target="cpu"` (default): unsigned INT8. ORT's x86 integer kernels are built around
  u8 x s8 products (VNNI `vpdpbusd`): the u8s8 ResNet-18 ran 3.7x faster than FP32 at batch 8, the
  s8s8 one only 1.2x. Graphs with MatMul get a symmetric range (zero point 128): ORT's fused attention
  path (QLinearMatMul / QLinearSoftmax) with asymmetric u8 activations drifted by 0.31 on the smoke
  ViT, although the same Q/DQ graph executed unfused drifted by 0.008. Graphs without MatMul (CNNs)
  get an asymmetric range (`activation_symmetric=None`) and their Relu nodes go to the quantizer
  (`fuse_relu`), which removes them (a Relu output's range starts at 0, so the Q clips); ORT then
  fuses the whole Conv chain into QLinearConv/QLinearAdd. With a symmetric range every Relu stayed
  as DequantizeLinear -> Relu -> QuantizeLinear and Q/DQ took 62 % of the default model's time
  (INT8 0.5x FP32). Relus read by float-kept nodes or by the output are not removed.
* Cross-layer equalization (`equalize`, on): Conv -> [Relu] -> Conv pairs get their channel ranges
  evened (float-exact). Folded BatchNorm left the default MobileNetV2-style model with stem channels
  ranging 1e-5..0.02 that the next depthwise conv scales back by up to 1e6: one activation scale
  per tensor rounds the small channels away.
* Activations, `target="tensorrt"`: signed INT8, symmetric (zero point 0), the only form TensorRT's
  explicit quantization accepts. Runs on ORT CPU too, but slowly.
* `reduce_range` stays off: it is a workaround for u8 saturation on CPUs *without* VNNI (7-bit weights
  cost accuracy for nothing on these machines). Turn it on for such CPUs.
* Biases stay float (`QuantizeBias: False`): TensorRT does not take INT32 DequantizeLinear, and ORT
  folds a float bias into its integer kernels at load time (same speed as a quantized bias here).
* Quantized op types: Conv, MatMul, Gemm, where the time goes. Quantizing Add/Mul/pooling as well
  adds Q/DQ pairs that ORT cannot fuse: slower (ViT 3.1k vs 4.0k crops/s, s8 activations) and 9x
  the drift.
* Kept in float: the compute layers feeding the output through non-compute ops only (`exclude_head`:
  the logit; tiny), and compute layers whose output reaches Log, Reciprocal, Sqrt, Pow or a Div
  denominator before the next compute layer, plus the layers that feed only those
  (`exclude_sensitive`: these ops amplify an absolute quantization error near zero; AIRL's grey
  conversion and DCT feed a log compression that is meant to see sub-grey-level detail). The
  first layers are quantized by default (`float_stem_layers=0`): keeping ResNet-18's 7x7 stem in
  float cut the INT8 speed-up on ORT CPU from x3.6 to x2.5 at batch 8 for 0.001 less drift. A
  MobileNet stem is the other way round: its 3-channel 3x3 conv is 2.6x slower in INT8 than in
  float (im2col with K=27 feeds the integer GEMM badly), and the float -> u8 NHWC hand-over costs
  in proportion to the tensor it happens on. The default model keeps its first three layers float
  (stem, depthwise, 16-channel projection: `float_stem_layers=3`), so the hand-over falls on the
  narrowest early tensor: x1.55 instead of x1.41 at batch 8.
* Calibration: MinMax by default: with a few hundred crops it is stable and never clips the rare
  large activations a face with strong edges produces. Percentile (99.999) clips outliers and suits
  big calibration sets; Entropy (KL) is slower and needs many crops for a stable histogram.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from swapwatch.calib import PreprocessedCrops
from swapwatch.config import StrictModel
from swapwatch.errors import ModelFileError, SwapwatchError

log = logging.getLogger(__name__)

COMPUTE_OPS: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
SENSITIVE_OPS: frozenset[str] = frozenset({"Log", "Reciprocal", "Sqrt", "Pow"})
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


class Int8Config(StrictModel):
    """How `quantize_onnx_int8` places Q/DQ nodes and calibrates their scales."""

    target: Literal["cpu", "tensorrt"] = Field(
        "cpu",
        description="cpu: u8 activations (zero point 128) + s8 weights, fast on x86 ORT; "
        "tensorrt: s8 activations with zero point 0, the form TensorRT 11 accepts.",
    )
    calibrate_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="How activation ranges are taken from the calibration crops."
    )
    percentile: float = Field(99.999, gt=90.0, le=100.0, description="Percentile kept by calibrate_method=percentile.")
    per_channel: bool = Field(True, description="One weight scale per output channel (else one per tensor).")
    reduce_range: bool = Field(False, description="7-bit weights: only for x86 CPUs without VNNI (u8 saturation).")
    op_types: list[str] = Field(list(COMPUTE_OPS), min_length=1, description="ONNX op types that get Q/DQ inputs.")
    float_stem_layers: int = Field(
        0, ge=0, le=16,
        description="Keep the first N compute layers on each path from the input in float. 0 quantizes the stem; "
        "on few-channel images a float stem up to the first narrow tensor can be faster (see docs/calibration.md).",
    )
    exclude_head: bool = Field(True, description="Keep the compute layers that produce the output in float.")
    exclude_sensitive: bool = Field(
        True, description="Keep compute layers feeding Log/Reciprocal/Sqrt/Pow/Div-denominator in float."
    )
    exclude_nodes: list[str] = Field(default_factory=list, description="More node names to keep in float.")
    equalize: bool = Field(
        True, description="Cross-layer equalization of Conv -> [Relu] -> Conv pairs before calibration (float-exact; "
        "MobileNet-style depthwise stacks lose whole channels to per-tensor activation scales without it)."
    )
    activation_symmetric: bool | None = Field(
        None, description="Symmetric activation ranges. None: asymmetric for target=cpu when the graph has no "
        "MatMul (lets ORT drop Relu and fuse QLinearConv chains), symmetric otherwise (attention, TensorRT)."
    )
    fuse_relu: bool = Field(
        True, description="Give Relu nodes to the quantizer so that, with asymmetric activations, it removes them "
        "(the quantized range clips at zero) and ORT fuses Conv chains without a DQ -> Q in between."
    )
    batch_size: int = Field(8, ge=1, description="Crops per calibration batch.")


@dataclass
class Int8Result:
    """What `calibrate_int8` wrote."""

    path: Path
    sidecar: Path
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_ort_quantization() -> Iterator[None]:
    """Drop the per-tensor chatter ORT's quantizer logs on the root logger (e.g. 'Axis 1 is out-of-range
    for weight ... with rank 1' for every LayerNorm weight); our own summary is logged instead."""

    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname.replace("\\", "/") or record.levelno >= logging.ERROR

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class CropBatchReader:
    """ORT `CalibrationDataReader` over preprocessed NCHW float32 crops (an array or PreprocessedCrops),
    `batch_size` crops at a time."""

    def __init__(self, batch: np.ndarray | PreprocessedCrops, input_name: str, batch_size: int = 8) -> None:
        if batch.ndim != 4 or len(batch) == 0:
            raise ValueError(f"calibration batch must be (N, 3, S, S) with N >= 1, got {batch.shape}")
        self.batch = batch
        self.input_name = input_name
        self.batch_size = batch_size
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.batch):
            return None
        chunk = self.batch[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return (len(self.batch) + self.batch_size - 1) // self.batch_size


def _tensor_types(model: Any) -> dict[str, int]:
    """Element type of every tensor name the graph declares (inputs, outputs, value_info, initializers)."""
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def float_kept_nodes(
    model: Any,
    op_types: list[str] | tuple[str, ...] = COMPUTE_OPS,
    stem: int = 1,
    head: bool = True,
    sensitive: bool = True,
) -> dict[str, list[str]]:
    """Names of the compute nodes to leave in float, by reason: {"stem": [...], "head": [...], "sensitive": [...]}.

    stem: the first `stem` compute nodes on each float path from a graph input (0: none); head: compute nodes that reach
    a graph output through non-compute ops only; sensitive: compute nodes whose output reaches a
    SENSITIVE_OPS op (or the denominator of a Div) before the next compute node, and, transitively,
    compute nodes whose output feeds only such nodes.

    Walks float data edges only (shape arithmetic in int64 is never followed, so a Shape of the input
    does not make every Reshape-fed layer a "stem"); needs a model with value_info (shape inference).
    """
    g = model.graph
    types = _tensor_types(model)
    inits = {t.name for t in g.initializer}
    compute = set(op_types)
    consumers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n

    def is_float(name: str) -> bool:
        return bool(name) and name not in inits and types.get(name) in FLOAT_TYPES

    def forward_compute(start: list[str], stop_at: frozenset[str] = frozenset()) -> tuple[set[str], bool]:
        """Compute nodes reached from tensors `start` through non-compute ops; and whether a `stop_at`
        op (sensitive) was reached on the way."""
        found: set[str] = set()
        hit = False
        seen: set[str] = set()
        todo = [t for t in start if is_float(t)]
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for n in consumers.get(t, []):
                if n.op_type in compute:
                    found.add(n.name)
                    continue
                if n.op_type in stop_at or (n.op_type == "Div" and len(n.input) > 1 and n.input[1] == t):
                    hit = True
                todo.extend(o for o in n.output if is_float(o))
        return found, hit

    out: dict[str, list[str]] = {"stem": [], "head": [], "sensitive": []}
    stem_nodes: set[str] = set()
    frontier = [i.name for i in g.input]
    by_name = {n.name: n for n in g.node}
    for _ in range(int(stem)):
        found, _ = forward_compute(frontier)
        found -= stem_nodes
        if not found:
            break
        stem_nodes |= found
        frontier = [o for name in found for o in by_name[name].output]
    out["stem"] = sorted(stem_nodes)
    if head:
        found_head: set[str] = set()
        seen: set[str] = set()
        todo = [o.name for o in g.output]
        while todo:
            t = todo.pop()
            if t in seen or t not in producer:
                continue
            seen.add(t)
            n = producer[t]
            if n.op_type in compute:
                found_head.add(n.name)
                continue
            todo.extend(i for i in n.input if is_float(i))
        out["head"] = sorted(found_head)
    if sensitive:
        nodes = {n.name: n for n in g.node if n.op_type in compute}
        successors = {name: forward_compute(list(n.output), SENSITIVE_OPS) for name, n in nodes.items()}
        kept = {name for name, (_, hit) in successors.items() if hit}
        # A layer whose output goes only into float-kept sensitive layers gains nothing from INT8 and
        # its output quantization is exactly the error those layers amplify: keep it float too
        # (AIRL: the folded un-normalise + grey 1x1 conv in front of the DCT).
        changed = True
        while changed:
            changed = False
            for name, (succ, _) in successors.items():
                if name not in kept and succ and succ <= kept:
                    kept.add(name)
                    changed = True
        out["sensitive"] = sorted(kept)
    return out


def restore_float_inputs(model: Any, names: set[str] | list[str]) -> int:
    """Rewire the float-kept nodes `names` to read the float tensor instead of a DQ(Q(tensor)) copy.

    ORT's quantizer replaces a tensor for *all* its consumers once one quantized node reads it (its
    `DedicatedQDQPair` option only helps when two or more quantized nodes share it), so a node kept in
    float that shares its input with a quantized one still sees the INT8-rounded values: AIRL's grey
    conversion shares the image with the quantized RGB stem. Returns the number of inputs rewired.
    """
    g = model.graph
    wanted = set(names)
    producer = {o: n for n in g.node for o in n.output}
    rewired = 0
    for n in g.node:
        if n.name not in wanted:
            continue
        for i, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation pair (weights have no Q)
                n.input[i] = q.input[0]
                rewired += 1
    return rewired


def equalize_cross_layer(model: Any, iterations: int = 20) -> int:
    """Cross-layer equalization (Nagel et al. 2019) in place: for each Conv A whose output feeds only a Conv
    B, directly or through one Relu (positive-homogeneous), scale A's output channel c by 1/s_c and B's
    matching input channel by s_c, with s_c = sqrt(r_A[c] / r_B[c]) (r: largest |weight| of the channel),
    so that both weight ranges become sqrt(r_A r_B). The float function is unchanged (up to rounding).

    Folded BatchNorm leaves MobileNet-style stacks with channels a thousand times smaller than their
    neighbours that the next (depthwise) layer scales back up: one per-tensor activation scale then
    rounds those channels away. Returns the number of pairs equalized.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}

    def group(n: Any) -> int:
        return next((a.i for a in n.attribute if a.name == "group"), 1)

    def single_consumer(t: str) -> Any:
        c = consumers.get(t, [])
        return c[0] if len(c) == 1 and t not in graph_outputs else None

    weights: dict[str, np.ndarray] = {}
    pairs: list[tuple[Any, Any, bool]] = []
    for a in g.node:
        if a.op_type != "Conv" or len(a.input) < 2 or a.input[1] not in inits:
            continue
        nxt = single_consumer(a.output[0])
        if nxt is not None and nxt.op_type == "Relu":
            nxt = single_consumer(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or len(nxt.input) < 2 or nxt.input[1] not in inits:
            continue
        if nxt.input[0] not in (a.output[0], *(c.output[0] for c in consumers.get(a.output[0], []))):
            continue  # a reads A's tensor only as its weight or bias: not a data edge
        for name in (a.input[1], nxt.input[1], *(a.input[2:3] if len(a.input) > 2 and a.input[2] else [])):
            if name not in weights:
                if name not in inits:
                    break
                weights[name] = numpy_helper.to_array(inits[name]).astype(np.float64)
        else:
            wa, wb = weights[a.input[1]], weights[nxt.input[1]]
            c, gb = wa.shape[0], group(nxt)
            if wa.ndim != 4 or wb.ndim != 4 or (len(a.input) > 2 and a.input[2] and a.input[2] not in inits):
                continue
            depthwise = gb == c and wb.shape[0] == c and wb.shape[1] == 1
            if (gb == 1 and wb.shape[1] == c) or depthwise:
                pairs.append((a, nxt, depthwise))
    if not pairs:
        return 0
    for _ in range(iterations):
        for a, b, depthwise in pairs:
            wa, wb = weights[a.input[1]], weights[b.input[1]]
            ra = np.abs(wa).reshape(wa.shape[0], -1).max(1)
            rb = np.abs(wb if depthwise else wb.transpose(1, 0, 2, 3)).reshape(wa.shape[0], -1).max(1)
            s = np.where((ra > 0) & (rb > 0), np.sqrt(ra / np.maximum(rb, 1e-30)), 1.0)
            weights[a.input[1]] = wa / s.reshape(-1, 1, 1, 1)
            if len(a.input) > 2 and a.input[2]:
                weights[a.input[2]] = weights[a.input[2]] / s
            weights[b.input[1]] = wb * (s.reshape(-1, 1, 1, 1) if depthwise else s.reshape(1, -1, 1, 1))
    for name, arr in weights.items():
        inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    return len(pairs)


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


def _pre_process(quant_pre_process: Any, src: Path, pre: Path, tmp: Path) -> None:
    """ORT's pre-processing, run inside `tmp` (its symbolic shape inference drops temporary files into the
    working directory). A graph whose shapes it cannot infer symbolically (AIRL's block-DCT reshapes) is
    pre-processed again with ONNX's own shape inference only, which is all quantisation needs here."""
    try:
        with contextlib.chdir(tmp):
            quant_pre_process(str(src.resolve()), str(pre))
        return
    except Exception as err:  # noqa: BLE001 - ORT raises plain Exception here
        first = str(err).strip()[:300]
    log.warning("%s: symbolic shape inference failed (%s); pre-processing with ONNX shape inference only", src, first)
    try:
        with contextlib.chdir(tmp):
            quant_pre_process(str(src.resolve()), str(pre), skip_symbolic_shape=True)
    except Exception as err:  # noqa: BLE001
        raise ModelFileError(src, f"quantization pre-processing failed: {str(err).strip()[:300]}") from err


def quantize_onnx_int8(
    fp32_onnx: str | Path, out: str | Path, batch: np.ndarray | PreprocessedCrops, cfg: Int8Config | None = None
) -> dict[str, Any]:
    """Write a Q/DQ INT8 ONNX of `fp32_onnx` to `out`, calibrated on `batch` (preprocessed NCHW float32,
    as an array or PreprocessedCrops).

    Writes only the model (the caller owns the sidecar: see `calibrate_int8`). Returns a summary:
    settings, number of calibration crops, Q/DQ node counts, and the nodes kept in float by reason.
    Raises ModelFileError naming the model when it cannot be read or pre-processed, SwapwatchError when
    the quantized graph does not load in ONNX Runtime (the output is then removed).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from swapwatch.media.onnx_session import make_session

    cfg = cfg or Int8Config()
    src, dst = Path(fp32_onnx), Path(out)
    if not src.is_file():
        raise ModelFileError(src, "no such model file (expected an FP32 .onnx exported by swapwatch export)")
    if isinstance(batch, np.ndarray):
        batch = np.asarray(batch, np.float32)
    if batch.ndim != 4 or len(batch) == 0:
        raise ValueError(f"{src.name}: calibration batch must be (N, 3, S, S) with N >= 1, got {batch.shape}")
    if len(batch) < 32:
        log.warning("int8: only %d calibration crops; use a few hundred real crops for a deployable model", len(batch))
    input_name = make_session(src).get_inputs()[0].name  # also validates the file (ModelFileError)

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="swapwatch-int8-") as tmp, _quiet_ort_quantization():
        pre = Path(tmp) / "pre.onnx"
        _pre_process(quant_pre_process, src, pre, Path(tmp))
        pre_model = onnx.load(str(pre))
        equalized = equalize_cross_layer(pre_model) if cfg.equalize else 0
        if equalized:
            onnx.save(pre_model, str(pre))
        kept = float_kept_nodes(pre_model, cfg.op_types, cfg.float_stem_layers, cfg.exclude_head, cfg.exclude_sensitive)
        exclude = sorted({*kept["stem"], *kept["head"], *kept["sensitive"], *cfg.exclude_nodes})
        s8 = cfg.target == "tensorrt"
        symmetric = cfg.activation_symmetric
        if symmetric is None:
            symmetric = s8 or any(n.op_type == "MatMul" for n in pre_model.graph.node)
        op_types = list(cfg.op_types)
        quant_exclude = list(exclude)
        if cfg.fuse_relu and not symmetric and "Relu" not in op_types:
            # The quantizer then removes each Relu, relying on the Q/DQ of its output to clip at 0. A Relu
            # read by a float-kept node (rewired below to the unclipped float tensor) or by the graph
            # output must stay.
            op_types.append("Relu")
            readers: dict[str, set[str]] = {}
            for n in pre_model.graph.node:
                for i in n.input:
                    readers.setdefault(i, set()).add(n.name)
            outputs = {o.name for o in pre_model.graph.output}
            kept_set = set(exclude)
            quant_exclude += [
                n.name for n in pre_model.graph.node
                if n.op_type == "Relu" and (n.output[0] in outputs or readers.get(n.output[0], set()) & kept_set)
            ]
        extra = {
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "CalibPercentile": cfg.percentile,
            # merge min/max every 16 batches instead of holding every intermediate tensor of every batch
            **({"CalibMaxIntermediateOutputs": 16} if cfg.calibrate_method == "minmax" else {}),
        }
        try:
            quantize_static(
                str(pre),
                str(dst),
                CropBatchReader(batch, input_name, cfg.batch_size),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
                activation_type=QuantType.QInt8 if s8 else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=quant_exclude,
                calibrate_method=_calibration_method(cfg.calibrate_method),
                extra_options=extra,
            )
        except Exception as err:  # ORT's quantizer raises plain Exceptions/AssertionErrors on odd graphs
            dst.unlink(missing_ok=True)
            raise SwapwatchError(f"{src}: INT8 quantization failed: {str(err).strip()[:300]}") from err
    quantized = onnx.load(str(dst))
    rewired = restore_float_inputs(quantized, exclude)
    if rewired:
        onnx.save(quantized, str(dst))
    try:
        make_session(dst)
    except SwapwatchError as err:
        dst.unlink(missing_ok=True)
        raise SwapwatchError(f"{dst}: the quantized graph does not load in ONNX Runtime: {err}") from err
    ops = [n.op_type for n in quantized.graph.node]
    info: dict[str, Any] = {
        "target": cfg.target,
        "format": "QDQ",
        "activations": ("int8" if s8 else "uint8") + (" symmetric" if symmetric else " asymmetric")
        + (" (zero point 0)" if s8 else " (zero point 128)" if symmetric else ""),
        "weights": "int8 symmetric " + ("per-channel" if cfg.per_channel else "per-tensor"),
        "reduce_range": cfg.reduce_range,
        "calibrate_method": cfg.calibrate_method,
        "op_types": ",".join(op_types),
        "equalized_pairs": equalized,
        "calibration_crops": len(batch),
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "float_nodes": exclude,
        "float_inputs_restored": rewired,
        "float_nodes_by_reason": kept,
    }
    log.info(
        "int8: %s -> %s (%d Q / %d DQ nodes, %d compute nodes kept in float, %d calibration crops)",
        src.name, dst.name, info["quantize_linear"], info["dequantize_linear"], len(exclude), len(batch),
    )
    return info


def calibrate_int8(
    model_path: str | Path,
    crops: np.ndarray,
    out: str | Path | None = None,
    cfg: Int8Config | None = None,
    source: str | None = None,
    counts: dict[str, int] | None = None,
) -> Int8Result:
    """`model.onnx` + uint8 BGR aligned crops -> `model.int8.onnx` and its sidecar (precision "int8").

    The crops go through the FP32 engine's own `preprocess`, so calibration sees what inference sees.
    The sidecar is the FP32 one with precision, hash and `export.calibration` / `export.quantization`
    notes (number of crops, method, source folder).
    """
    from swapwatch.calib import derived_metadata
    from swapwatch.engine.onnx_runtime import OnnxEngine

    cfg = cfg or Int8Config()
    src = Path(model_path)
    dst = Path(out) if out is not None else src.with_name(f"{src.stem}.int8.onnx")
    engine = OnnxEngine(src)
    meta = engine.meta
    engine.close()  # only its preprocessing is used from here on; it needs no session
    if meta.precision != "fp32":
        raise ModelFileError(src, f"INT8 calibration needs the FP32 model, this sidecar says precision={meta.precision}")
    batch = PreprocessedCrops(np.asarray(crops), engine.preprocess)
    batch[:1]  # wrong-size crops fail here, naming the model, before any slow step
    info = quantize_onnx_int8(src, dst, batch, cfg)
    note = {
        "calibration": {
            "n_crops": len(batch),
            "method": cfg.calibrate_method,
            "source": source,
            **(counts or {}),
        },
        "quantization": {k: v for k, v in info.items() if k != "float_nodes_by_reason"},
    }
    sidecar = derived_metadata(meta, src, dst, "int8", note)
    return Int8Result(dst, sidecar, info)
