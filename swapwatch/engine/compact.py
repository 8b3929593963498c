"""Half-size FP32 ONNX files: weights stored as float16, computed in float32.

Every large float32 initializer is stored as float16 and fed through a `Cast` back to float32. ONNX
Runtime's constant folding turns each Cast of an initializer into a plain float32 tensor when the session
is created, so inference runs the same float32 kernels at the same speed; only the weights' rounding
changes (scores move by ~1e-3). This halves the file, which is what the package ships; FP16 *compute*
is a different thing (`--precision fp16`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swapwatch.engine.metadata import file_sha256, read_metadata, write_metadata

if TYPE_CHECKING:
    from onnx import ModelProto

MIN_ELEMENTS = 1024  # small tensors (biases, norms) stay float32: no size to win, and they are the sensitive ones


def store_weights_fp16(model: ModelProto, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite an onnx.ModelProto in place; returns how many initializers now go through a Cast."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(init)
        if weights.size < min_elements:
            continue
        half = numpy_helper.from_array(weights.astype(np.float16), f"{init.name}__fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # casts first keeps the node list topologically sorted
    return len(casts)


def compact_onnx(path: Path, crops: np.ndarray) -> dict[str, Any]:
    """Store `path`'s weights as float16 (see the module docstring) and update its sidecar: new hash, and
    `export.weights_storage` with the largest score change on `crops` (aligned crops at the input size)."""
    import onnx

    from swapwatch.engine.onnx_runtime import OnnxEngine

    before = OnnxEngine(path)
    x = before.preprocess(crops)
    reference = before.infer(x)
    before.close()

    model = onnx.load(str(path))
    n = store_weights_fp16(model)
    onnx.checker.check_model(model)
    size_before = path.stat().st_size
    onnx.save(model, str(path))
    meta = read_metadata(path, verify_hash=False)
    meta.model_sha256 = file_sha256(path)
    write_metadata(path, meta)
    after = OnnxEngine(path)
    drift = float(np.max(np.abs(after.infer(x) - reference)))
    after.close()
    info = {"dtype": "float16", "compute": "float32", "tensors": n, "bytes_before": size_before,
            "bytes_after": path.stat().st_size, "max_abs_diff": drift, "check_crops": len(crops)}
    meta.export["weights_storage"] = info
    write_metadata(path, meta)
    return info
