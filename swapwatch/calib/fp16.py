"""FP16 by mixed-precision ONNX: most of the graph in float16, numerically sensitive ops kept in float32.

TensorRT 11 builds strongly typed networks: FP16 is no longer a builder flag but the types written in
the ONNX graph. NVIDIA's tool for this is ModelOpt AutoCast; this is a small pass of our own with the
same kind of rules, so it runs anywhere with only `onnx` installed:

1. Nodes stay FP32 when their op is in `block_ops` (defaults: Softmax, the normalisations, Sigmoid,
   Exp/Log/Pow/Sqrt/Reciprocal, the sum/mean reductions including GlobalAveragePool, Resize, Range,
   CumSum: ops that overflow, underflow or accumulate many terms), when ONNX does not define them for
   float16 (checked against the op schema), when they are not standard-domain ops, when a tensor type
   is unknown, when an initializer they read exceeds `init_max`, and, given probe data, when any
   float input or output they saw on real crops exceeds `data_max` in magnitude (AutoCast's
   `data_max` rule: FP16 keeps ~3 significant digits and overflows at 65504, so big activations
   lose absolute precision first).
2. Everything else runs in FP16: its float initializers are stored as FP16 (halving the file) and a
   Cast is inserted on each edge where the precision changes. Graph inputs and outputs stay FP32, so
   the engine's preprocessing and the sidecar contract do not change.

Trade-off: the data rule needs crops; without them only the op and initializer rules apply. The
result is validated with `onnx.checker` (full check). ONNX Runtime's CPU provider lacks FP16 kernels
for some ops and is not faster in FP16 on x86 anyway: FP16 is for GPUs (TensorRT, ORT CUDA), and a
CPU run here is only a parity check, done where ORT can run the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from swapwatch.calib import PreprocessedCrops, iter_batches
from swapwatch.config import StrictModel
from swapwatch.errors import ModelFileError, SwapwatchError

log = logging.getLogger(__name__)

DEFAULT_BLOCK_OPS: tuple[str, ...] = (
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "BatchNormalization", "LpNormalization", "Sigmoid", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "GlobalAveragePool", "GlobalLpPool", "Resize", "Upsample", "Range", "CumSum",
)
"""Op types kept in FP32 by default: overflow-, underflow- or accumulation-sensitive."""

NEVER_CONVERT: frozenset[str] = frozenset({
    "Cast", "CastLike", "Constant", "ConstantOfShape", "Shape", "Size", "EyeLike", "RandomNormal", "RandomUniform",
    "RandomNormalLike", "RandomUniformLike", "Multinomial", "QuantizeLinear", "DequantizeLinear",
    "DynamicQuantizeLinear", "If", "Loop", "Scan",
})
"""Ops whose output type is fixed by an attribute, that only read shapes, or that hold subgraphs."""

PRECISION_NEUTRAL: frozenset[str] = frozenset({"Shape", "Size"})
"""Ops that read any float type without changing meaning: they take whichever version exists, no Cast."""

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10  # onnx.TensorProto.FLOAT16
FP16_MAX = 65504.0


class Fp16Config(StrictModel):
    """Which nodes `convert_onnx_fp16` keeps in FP32."""

    block_ops: list[str] = Field(list(DEFAULT_BLOCK_OPS), description="Op types kept in FP32.")
    block_nodes: list[str] = Field(default_factory=list, description="Node names kept in FP32.")
    data_max: float = Field(
        512.0, gt=0, description="With probe crops: nodes whose float inputs/outputs exceed this magnitude stay FP32."
    )
    init_max: float = Field(
        FP16_MAX, gt=0, le=FP16_MAX, description="Nodes reading an initializer above this magnitude stay FP32."
    )
    probe_batch: int = Field(8, ge=1, description="Crops per probe run when measuring activation ranges.")


@dataclass
class Fp16Result:
    """What `calibrate_fp16` wrote."""

    path: Path
    sidecar: Path
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- type helpers


def _infer(model: Any) -> Any:
    """The model with value_info for as many tensors as ONNX (then ORT's symbolic) inference can type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    if _untyped(inferred):
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            symbolic = SymbolicShapeInference.infer_shapes(inferred, auto_merge=True)
            if symbolic is not None and len(_untyped(symbolic)) < len(_untyped(inferred)):
                return symbolic
        except Exception as err:  # noqa: BLE001 - best effort: untyped tensors just stay FP32
            log.debug("fp16: symbolic shape inference failed: %s", err)
    return inferred


def _types(model: Any) -> dict[str, int]:
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _untyped(model: Any) -> list[str]:
    types = _types(model)
    return [o for n in model.graph.node for o in n.output if o and o not in types]


def _opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ModelFileError("<model>", "no default-domain opset import")


def _constants_to_initializers(model: Any) -> None:
    """Float `Constant` nodes (value=tensor) become initializers, so one rule converts all constant data."""
    g = model.graph
    keep = []
    for n in g.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and set(attrs) == {"value"}:
            t = attrs["value"].t
            if t.data_type == FLOAT and not t.data_location:
                new = type(t)()
                new.CopyFrom(t)
                new.name = n.output[0]
                g.initializer.append(new)
                continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)


def _subgraph_names(model: Any) -> set[str]:
    """Every tensor name read inside a subgraph (If/Loop/Scan bodies may read outer-scope tensors)."""
    names: set[str] = set()

    def visit(graph: Any) -> None:
        for n in graph.node:
            names.update(i for i in n.input if i)
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    visit(sub)

    for n in model.graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                visit(sub)
    return names


def _fp16_slots(node: Any, opset: int, types: dict[str, int]) -> tuple[list[int], list[int]] | None:
    """(float inputs to feed FP16, float outputs) if ONNX defines `node` for float16, else None."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}

    def ok(formals: list[Any], i: int) -> bool:
        if not formals:
            return False
        formal = formals[i] if i < len(formals) else formals[-1]
        return "tensor(float16)" in allowed.get(formal.type_str, {formal.type_str})

    ins = [i for i, name in enumerate(node.input) if name and types.get(name) == FLOAT]
    outs = [i for i, name in enumerate(node.output) if name and types.get(name) == FLOAT]
    if not outs or not all(ok(list(schema.outputs), i) for i in outs):
        return None
    return [i for i in ins if ok(list(schema.inputs), i)], outs


def probe_ranges(model: Any, batch: np.ndarray | PreprocessedCrops, chunk: int = 8) -> dict[str, float]:
    """Max |value| of every FP32 tensor of `model` over `batch` (NCHW float32 array or PreprocessedCrops),
    on ONNX Runtime CPU, `chunk` crops per run."""
    import onnx

    from swapwatch.media.onnx_session import make_session

    types = _types(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    inits = {t.name for t in probe.graph.initializer}
    names = [o for n in probe.graph.node for o in n.output if o and types.get(o) == FLOAT and o not in inits]
    for name in names:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, FLOAT, None))
            have.add(name)
    session = make_session(probe.SerializeToString())
    input_name = session.get_inputs()[0].name
    out_names = [o.name for o in session.get_outputs()]
    ranges: dict[str, float] = {}
    for x in iter_batches(batch, chunk):
        values = session.run(None, {input_name: x})
        for name, v in [*zip(out_names, values, strict=True), *[(i.name, x) for i in model.graph.input]]:
            a = np.asarray(v)
            if a.size and a.dtype.kind == "f":
                m = float(np.max(np.abs(a))) if np.all(np.isfinite(a)) else float("inf")
                ranges[name] = max(ranges.get(name, 0.0), m)
    return ranges


# ----------------------------------------------------------------------------------------------- pass


def to_mixed_fp16(model: Any, cfg: Fp16Config | None = None, ranges: dict[str, float] | None = None) -> tuple[Any, dict[str, Any]]:
    """Mixed-precision copy of an FP32 ModelProto (see the module docstring) and a summary of what moved."""
    import onnx
    from onnx import helper, numpy_helper

    cfg = cfg or Fp16Config()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _constants_to_initializers(m)
    m = _infer(m)
    g = m.graph
    types = _types(m)
    opset = _opset(m)
    inits = {t.name: t for t in g.initializer}
    init_max = {name: float(np.max(np.abs(numpy_helper.to_array(t)))) if t.data_type == FLOAT and np.prod(t.dims) else 0.0
                for name, t in inits.items()}
    block_ops, block_nodes = set(cfg.block_ops), set(cfg.block_nodes)
    pinned = {o.name for o in g.output} | _subgraph_names(m)  # must stay FP32 under their own name

    reasons: dict[str, int] = {}

    def keep32(why: str) -> None:
        reasons[why] = reasons.get(why, 0) + 1

    plan: dict[int, tuple[list[int], list[int]]] = {}
    for idx, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx") or n.op_type in NEVER_CONVERT:
            continue
        names = [t for t in [*n.input, *n.output] if t]
        if not any(types.get(t) == FLOAT for t in names):
            continue  # integer / bool only: nothing to convert
        if n.op_type in block_ops or n.name in block_nodes:
            keep32(f"blocked op {n.op_type}" if n.op_type in block_ops else "blocked node")
            continue
        if any(t not in types for t in names):
            keep32("unknown tensor type")
            continue
        slots = _fp16_slots(n, opset, types)
        if slots is None:
            keep32("no float16 in the op schema")
            continue
        if any(init_max.get(n.input[i], 0.0) > cfg.init_max for i in slots[0]):
            keep32("initializer beyond init_max")
            continue
        if ranges is not None:
            seen = [ranges.get(t) for t in names if types.get(t) == FLOAT and t not in inits]
            if any(v is None or v > cfg.data_max for v in seen):
                keep32("activation beyond data_max" if all(v is not None for v in seen) else "not probed")
                continue
        plan[idx] = slots

    used = {n.name for n in g.node} | set(types) | {t for n in g.node for t in [*n.input, *n.output]}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    version: dict[tuple[str, int], str] = {}  # (tensor, elem type) -> name holding it
    for name, t in inits.items():
        if t.data_type == FLOAT:
            version[(name, FLOAT)] = name
    for i in g.input:
        if types.get(i.name) == FLOAT:
            version[(i.name, FLOAT)] = i.name
    new_inits: list[Any] = []
    new_nodes: list[Any] = []
    casts = 0

    def get(name: str, want: int) -> str:
        nonlocal casts
        if (name, want) in version:
            return version[(name, want)]
        if name in inits and want == FLOAT16:
            arr = np.clip(numpy_helper.to_array(inits[name]), -FP16_MAX, FP16_MAX).astype(np.float16)
            new = numpy_helper.from_array(arr, fresh(f"{name}_fp16"))
            new_inits.append(new)
            version[(name, want)] = new.name
            return new.name
        have = FLOAT16 if want == FLOAT else FLOAT
        src = version[(name, have)]
        out = fresh(f"{name}_{'fp16' if want == FLOAT16 else 'fp32'}")
        new_nodes.append(helper.make_node("Cast", [src], [out], name=fresh(f"{out}/Cast"), to=want))
        casts += 1
        version[(name, want)] = out
        return out

    n_fp16 = 0
    for idx, n in enumerate(g.node):
        if idx in plan:
            n_fp16 += 1
            to16, outs = plan[idx]
            for i, name in enumerate(n.input):
                if name and types.get(name) == FLOAT:
                    n.input[i] = get(name, FLOAT16 if i in to16 else FLOAT)
            after = []
            for i in outs:
                name = n.output[i]
                if name in pinned:
                    n.output[i] = fresh(f"{name}_fp16")
                    after.append(helper.make_node("Cast", [n.output[i]], [name], name=fresh(f"{name}/Cast"), to=FLOAT))
                    version[(name, FLOAT)] = name
                version[(name, FLOAT16)] = n.output[i]
            new_nodes.append(n)
            new_nodes.extend(after)
            casts += len(after)
            continue
        neutral = n.op_type in PRECISION_NEUTRAL
        for i, name in enumerate(n.input):
            if name and types.get(name) == FLOAT:
                if neutral and (name, FLOAT) not in version:
                    n.input[i] = version[(name, FLOAT16)]
                else:
                    n.input[i] = get(name, FLOAT)
        for name in n.output:
            if name and types.get(name) == FLOAT:
                version[(name, FLOAT)] = name
        new_nodes.append(n)

    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    referenced = {t for n in g.node for t in n.input} | {o.name for o in g.output} | _subgraph_names(m)
    kept_inits = [t for t in g.initializer if t.name in referenced]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    del g.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    summary = {
        "fp16_nodes": n_fp16,
        "kept_fp32_nodes": sum(reasons.values()),
        "other_nodes": sum(1 for n in g.node if n.op_type != "Cast") - n_fp16 - sum(reasons.values()),
        "casts_inserted": casts,
        "fp32_reasons": ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())),
        "data_max": cfg.data_max if ranges is not None else None,
        "init_max": cfg.init_max,
        "block_ops": ",".join(cfg.block_ops),
    }
    return m, summary


def check_fp16_graph(model: Any, block_ops: Iterable[str] = DEFAULT_BLOCK_OPS) -> list[str]:
    """Problems with a mixed FP16 graph, empty when it is as `to_mixed_fp16` promises: FP32 inputs and
    outputs, no FP32 weight left on an FP16 node, no blocked op computing in FP16."""
    types = _types(_infer(model))
    g = model.graph
    problems = []
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type != FLOAT:
            problems.append(f"graph io {vi.name} is not float32")
    blocked = set(block_ops)
    for n in g.node:
        float_io = [types.get(t) for t in [*n.input, *n.output] if t and types.get(t) in (FLOAT, FLOAT16)]
        if n.op_type in blocked and FLOAT16 in float_io:
            problems.append(f"blocked op {n.op_type} ({n.name}) computes in float16")
    if not any(t.data_type == FLOAT16 for t in g.initializer):
        problems.append("no float16 initializer: nothing was converted")
    return problems


def convert_onnx_fp16(
    fp32_onnx: str | Path,
    out: str | Path,
    batch: np.ndarray | PreprocessedCrops | None = None,
    cfg: Fp16Config | None = None,
) -> dict[str, Any]:
    """Write the mixed FP16 version of `fp32_onnx` to `out` (model only; the caller owns the sidecar).

    `batch` (preprocessed NCHW float32 crops) enables the `data_max` rule. Raises ModelFileError naming
    the model when it cannot be read, SwapwatchError when the result fails `onnx.checker`.
    """
    import onnx

    cfg = cfg or Fp16Config()
    src, dst = Path(fp32_onnx), Path(out)
    if not src.is_file():
        raise ModelFileError(src, "no such model file (expected an FP32 .onnx exported by swapwatch export)")
    try:
        model = onnx.load(str(src))
    except Exception as err:
        raise ModelFileError(src, f"expected a valid ONNX model ({str(err).strip()[:200]})") from err
    ranges = probe_ranges(_infer(model), batch, cfg.probe_batch) if batch is not None else None
    converted, summary = to_mixed_fp16(model, cfg, ranges)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except onnx.checker.ValidationError as err:
        raise SwapwatchError(f"{dst}: the FP16 graph of {src.name} fails onnx.checker: {str(err)[:300]}") from err
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst))
    summary["probe_crops"] = len(batch) if batch is not None else 0
    log.info("fp16: %s -> %s (%d nodes in FP16, %d kept in FP32 by the rules, %d casts)", src.name, dst.name,
             summary["fp16_nodes"], summary["kept_fp32_nodes"], summary["casts_inserted"])
    return summary


def calibrate_fp16(
    model_path: str | Path,
    crops: np.ndarray | None = None,
    out: str | Path | None = None,
    cfg: Fp16Config | None = None,
    source: str | None = None,
) -> Fp16Result:
    """`model.onnx` (+ optional uint8 BGR crops for the range rule) -> `model.fp16.onnx` and its sidecar."""
    from swapwatch.calib import derived_metadata
    from swapwatch.engine.onnx_runtime import OnnxEngine

    src = Path(model_path)
    dst = Path(out) if out is not None else src.with_name(f"{src.stem}.fp16.onnx")
    engine = OnnxEngine(src)
    meta = engine.meta
    engine.close()  # only its preprocessing is used from here on; it needs no session
    batch = PreprocessedCrops(np.asarray(crops), engine.preprocess) if crops is not None and len(crops) else None
    if batch is not None:
        batch[:1]  # wrong-size crops fail here, naming the model
    if meta.precision != "fp32":
        raise ModelFileError(src, f"FP16 conversion needs the FP32 model, this sidecar says precision={meta.precision}")
    info = convert_onnx_fp16(src, dst, batch, cfg)
    note = {"fp16": {**info, "source": source}}
    sidecar = derived_metadata(meta, src, dst, "fp16", note)
    return Fp16Result(dst, sidecar, info)
