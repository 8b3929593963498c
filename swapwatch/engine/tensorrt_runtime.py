"""TensorRT backend: a serialized plan, one execution context, device buffers held as torch CUDA tensors.

Before the plan is deserialized its build descriptor (`model.plan.build.json`, see plan_cache.py) is
compared with this GPU and TensorRT version, and its metadata sidecar with the plan bytes: a plan built
elsewhere is refused with the list of mismatches instead of failing inside TensorRT or running with
kernels tuned for another GPU. (`load_engine(..., plan_cache=...)` rebuilds a stale plan from its source
ONNX instead.)

Memory and streams: input and output buffers are allocated once, at the profile's max batch, as torch
tensors on the GPU (the simplest correct way to own device memory without pycuda/cuda-python), and their
addresses are bound once with `set_tensor_address`. Each call sets the input shape for the actual batch,
copies the batch in on a private `torch.cuda.Stream`, runs `execute_async_v3` on that stream and copies the
scores back. The I/O dtypes come from the engine (an FP16 graph with FP16 inputs gets FP16 buffers).

Trade-offs: one context means one batch in flight per engine (the batcher feeds it sequentially); the
host-to-device copy is from pageable memory, which costs ~0.1 ms for a batch of 32 224-px crops, small
next to the model. Batches above the profile's max are split by Engine.infer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from swapwatch.engine.base import Engine
from swapwatch.engine.metadata import read_metadata
from swapwatch.engine.plan_cache import GpuTarget, check_plan, current_target
from swapwatch.engine.trt_build import cuda_device_context, import_tensorrt, make_logger, require_cuda
from swapwatch.errors import ModelFileError, SwapwatchError

log = logging.getLogger(__name__)


def torch_dtype(trt: Any, torch: Any, dt: Any) -> Any:
    """TensorRT DataType -> torch dtype for the I/O buffers."""
    table = {
        "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
        "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
    }
    for name, tdt in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return tdt
    raise SwapwatchError(f"TensorRT I/O dtype {dt} has no torch equivalent")


class TensorRTEngine(Engine):
    """Runs a swapwatch TensorRT plan (`model.plan` + `model.plan.json` + `model.plan.build.json`)."""

    def __init__(self, plan_path: str | Path, device: int = 0, target: GpuTarget | None = None) -> None:
        path = Path(plan_path)
        if not path.is_file():
            raise ModelFileError(path, "no such TensorRT plan (build one with swapwatch export --format tensorrt)")
        trt = import_tensorrt()
        require_cuda(device)
        import torch

        meta = read_metadata(path)  # sidecar matches these plan bytes
        check_plan(path, target or current_target(device))  # built for this GPU and TensorRT
        self._init_preprocessing(path, meta)
        self.name = "tensorrt"
        self.device = torch.device("cuda", device)
        self._torch = torch
        self._logger = make_logger(trt)
        with cuda_device_context(device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise ModelFileError(path, "TensorRT could not deserialize the plan: " + "; ".join(self._logger.errors))
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise SwapwatchError(f"{path}: TensorRT could not create an execution context (GPU memory?)")
            self._setup_io(trt, torch)

    def _setup_io(self, trt: Any, torch: Any) -> None:
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(self.path, f"expected 1 input and 1 output tensor, the plan has {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        size = self.meta.input_size
        mn, _, mx = (tuple(d) for d in eng.get_tensor_profile_shape(self.input_name, 0))
        if tuple(mx[1:]) != (3, size, size) or tuple(mn[1:]) != (3, size, size):
            raise ModelFileError(
                self.path, f"plan profile for {self.input_name!r} is {mn}..{mx}, sidecar input_size is {size}"
            )
        self.min_batch, self.max_batch = int(mn[0]), int(mx[0])
        self._in_dtype = torch_dtype(trt, torch, eng.get_tensor_dtype(self.input_name))
        out_dtype = torch_dtype(trt, torch, eng.get_tensor_dtype(self.output_name))
        if not self._context.set_input_shape(self.input_name, tuple(mx)):
            raise ModelFileError(self.path, f"plan rejects its own max input shape {mx}")
        out_shape = tuple(self._context.get_tensor_shape(self.output_name))
        self._stream = torch.cuda.Stream(device=self.device)
        self._in = torch.empty(tuple(mx), dtype=self._in_dtype, device=self.device)
        self._out = torch.empty(out_shape, dtype=out_dtype, device=self.device)
        ok = self._context.set_tensor_address(self.input_name, self._in.data_ptr())
        ok = ok and self._context.set_tensor_address(self.output_name, self._out.data_ptr())
        if not ok:
            raise SwapwatchError(f"{self.path}: TensorRT refused the I/O buffer addresses")
        log.info("TensorRT engine %s: input %s %s batch %d..%d, output %s %s", self.path.name, self.input_name,
                 self._in_dtype, self.min_batch, self.max_batch, self.output_name, out_dtype)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = batch.shape[0]
        if n < self.min_batch:  # a plan built with min > 1: pad with copies, drop their scores
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.min_batch - n, axis=0)])
        m = batch.shape[0]
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            # rows [0, m) of the contiguous max-batch buffer start at the bound address
            self._in[:m].copy_(torch.from_numpy(batch).to(self.device, non_blocking=False))
            if not self._context.set_input_shape(self.input_name, (m, *batch.shape[1:])):
                raise SwapwatchError(f"{self.path.name}: TensorRT rejected input shape {(m, *batch.shape[1:])}")
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise SwapwatchError(f"{self.path.name}: TensorRT execution failed: " + "; ".join(self._logger.errors[-3:]))
            scores = self._out.reshape(self._out.shape[0], -1)[:m, 0].float().cpu()
        self._stream.synchronize()
        return scores.numpy()[:n]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        super().close()
        self._stream.synchronize()
        # the context must go before the engine, the engine before the runtime
        for attr in ("_context", "_engine", "_runtime", "_in", "_out"):
            setattr(self, attr, None)
