"""Serve one swapwatch ONNX model through NVIDIA PyTriton: a real tritonserver, no GPU needed.

    .venv-triton/bin/python swapwatch/engine/pytriton_serve.py triton-repo/ --grpc-port 8001
    swapwatch scan clip.mp4 --engine triton://127.0.0.1:8001/swapwatch

A standalone script, not part of the swapwatch package's import graph: it runs in its own interpreter
(`.venv-triton`, because nvidia-pytriton needs numpy<2) and imports only numpy, onnxruntime, pytriton and
the standard library. The tritonserver inside the PyTriton wheel has only the Python backend, so the
model runs in ONNX Runtime inside a Python callable; Triton's dynamic batcher still merges requests
from all clients before they reach it. This is how tests and CI stand in for a GPU Triton server
serving the `swapwatch export --format triton-repo` repository with its ONNX Runtime backend. The
server's Python backend needs this interpreter's library folder on LD_LIBRARY_PATH; the script puts it
there for the server it starts.

SOURCE is a repository (REPO, holding one model, or any with --model-name), one model folder
(REPO/MODEL, with config.pbtxt and VERSION/model.onnx + model.onnx.json), or an .onnx file with its
sidecar. From config.pbtxt it takes max_batch_size and the dynamic batcher's queue delay (options
override them); the sidecar comes from the file beside the model and is checked against its hash.

The model config it serves carries the same `swapwatch_metadata` parameter as the exported
config.pbtxt, so TritonEngine reads the preprocessing the same way from either server. PyTriton 0.7
has no public option for model config parameters: the script adds it where PyTriton builds the
config (`Model._get_triton_model_config`, checked at start: a PyTriton without it stops the script
with a message rather than serving a config without the sidecar).

Listens on --host (default 127.0.0.1) for gRPC and HTTP; metrics are off. Prints one line
`pytriton_serve: ready ...` on stdout when the model is loaded (tritonserver's own log goes to stdout
too unless --log-file moves it), and stops cleanly (exit 0) on
SIGTERM or SIGINT. Exit 2 for a bad SOURCE or option, 1 when the server fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PARAMETER = "swapwatch_metadata"
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 500
PREFIX = "pytriton_serve:"


class UsageError(Exception):
    """A bad SOURCE or option (exit 2)."""


class Source:
    """The model to serve: ONNX file, sidecar JSON text, name and batching settings."""

    def __init__(self, onnx: Path, sidecar: dict[str, Any], name: str, max_batch: int, queue_delay_us: int) -> None:
        self.onnx = onnx
        self.sidecar = sidecar
        self.name = name
        self.max_batch = max_batch
        self.queue_delay_us = queue_delay_us


def _config_int(text: str, key: str) -> int | None:
    match = re.search(rf"^\s*{key}\s*:\s*(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _read_sidecar(onnx: Path) -> dict[str, Any]:
    path = onnx.with_name(onnx.name + ".json")
    if not path.is_file():
        raise UsageError(f"{path}: missing metadata sidecar for {onnx.name} (swapwatch export writes it)")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: sidecar is not valid JSON: {err}") from None
    digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
    if not isinstance(sidecar, dict) or sidecar.get("model_sha256") != digest:
        raise UsageError(f"{path}: sidecar does not match {onnx.name} (model sha256 {digest[:12]}...)")
    return sidecar


def _model_folder(root: Path, name: str | None) -> Path:
    if (root / "config.pbtxt").is_file():
        return root
    models = sorted(p for p in root.iterdir() if (p / "config.pbtxt").is_file())
    if name is not None:
        models = [p for p in models if p.name == name]
    if len(models) != 1:
        found = ", ".join(p.name for p in models) or "none"
        raise UsageError(f"{root}: expected one model folder with a config.pbtxt (found: {found}); "
                         "pass REPO/MODEL or --model-name")
    return models[0]


def resolve_source(args: argparse.Namespace) -> Source:
    """Find the ONNX model, its sidecar and the batching settings that SOURCE and the options describe."""
    path = Path(args.source)
    if path.is_file():
        if path.suffix.lower() != ".onnx":
            raise UsageError(f"{path}: expected an .onnx model, a model folder or a repository")
        return Source(path, _read_sidecar(path), args.model_name or "swapwatch",
                      args.max_batch or DEFAULT_MAX_BATCH,
                      DEFAULT_QUEUE_DELAY_US if args.max_queue_delay_us is None else args.max_queue_delay_us)
    if not path.is_dir():
        raise UsageError(f"{path}: no such file or folder")
    folder = _model_folder(path, args.model_name)
    config = (folder / "config.pbtxt").read_text()
    if re.search(r'platform\s*:\s*"tensorrt_plan"', config):
        raise UsageError(f"{folder}: a TensorRT plan needs tritonserver with its TensorRT backend on a GPU; "
                         "PyTriton serves ONNX models only (export the repository with the onnx platform)")
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file())
    if args.version is not None:
        if args.version not in versions:
            raise UsageError(f"{folder}: no version {args.version} with a model.onnx (found: {versions or 'none'})")
        versions = [args.version]
    if not versions:
        raise UsageError(f"{folder}: no VERSION/model.onnx inside")
    onnx = folder / str(versions[-1]) / "model.onnx"
    max_batch = args.max_batch or _config_int(config, "max_batch_size") or DEFAULT_MAX_BATCH
    delay = args.max_queue_delay_us
    if delay is None:
        found = _config_int(config, "max_queue_delay_microseconds")
        delay = DEFAULT_QUEUE_DELAY_US if found is None else found
    return Source(onnx, _read_sidecar(onnx), folder.name, max_batch, delay)


def add_model_parameters(parameters: dict[str, str]) -> None:
    """Make PyTriton put `parameters` into every model config it builds (see the module docstring)."""
    from pytriton.models import model as model_module

    original = getattr(model_module.Model, "_get_triton_model_config", None)
    if original is None:
        raise RuntimeError("this PyTriton has no Model._get_triton_model_config (written for nvidia-pytriton 0.7): "
                           f"cannot publish the {PARAMETER} parameter TritonEngine reads")

    def with_parameters(self: Any) -> Any:
        config = original(self)
        config.backend_parameters.update(parameters)
        return config

    model_module.Model._get_triton_model_config = with_parameters


def make_session(onnx: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session set up as swapwatch's own (swapwatch/media/onnx_session.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx), sess_options=opts, providers=["CPUExecutionProvider"])


def make_infer(
    session: Any, input_name: str, output_name: str, log_batches: bool = False
) -> Callable[..., dict[str, np.ndarray]]:
    """The callable PyTriton runs on each dynamic batch (requests stacked along the batch dim by @batch)."""
    from pytriton.decorators import batch

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(inputs[input_name], dtype=np.float32)
        if log_batches:
            print(f"{PREFIX} batch {x.shape[0]}", flush=True)
        scores = session.run([output_name], {input_name: x})[0]
        return {output_name: np.asarray(scores, np.float32).reshape(-1, 1)}

    return infer


def serve(source: Source, args: argparse.Namespace) -> int:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    sessions = [make_session(source.onnx, args.threads) for _ in range(args.instances)]
    inp, out = sessions[0].get_inputs()[0], sessions[0].get_outputs()[0]
    size = int(source.sidecar["input_size"])
    add_model_parameters({PARAMETER: json.dumps(source.sidecar, separators=(",", ":"), ensure_ascii=False)})

    # tritonserver's Python backend loads libpython when the model loads. Without this interpreter's LIBDIR
    # first on the path it can find the system's libpython of another patch release, which then fails on
    # this interpreter's standard library (seen: Debian's 3.11 under pyenv's 3.11.7, an AttributeError in
    # multiprocessing). The server is a child process and inherits the variable.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libdir), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config = TritonConfig(http_address=args.host, http_port=args.http_port, grpc_address=args.host,
                          grpc_port=args.grpc_port, allow_metrics=False, log_verbose=0, exit_timeout_secs=5,
                          log_file=Path(args.log_file) if args.log_file else None)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=source.name,
            infer_func=[make_infer(s, inp.name, out.name, args.log_batches) for s in sessions],
            inputs=[Tensor(name=inp.name, dtype=np.float32, shape=(3, size, size))],
            outputs=[Tensor(name=out.name, dtype=np.float32, shape=(1,))],
            config=ModelConfig(max_batch_size=source.max_batch,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=source.queue_delay_us)),
            strict=True,
        )
        triton.run()
        print(f"{PREFIX} ready grpc={args.host}:{args.grpc_port} http={args.host}:{args.http_port} "
              f"model={source.name} onnx={source.onnx} max_batch={source.max_batch} "
              f"queue_delay_us={source.queue_delay_us} instances={args.instances}", flush=True)
        while not stop.wait(0.5):
            if not triton.is_alive():
                print(f"{PREFIX} the Triton server or its model stopped unexpectedly", file=sys.stderr, flush=True)
                return 1
    print(f"{PREFIX} stopped", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pytriton_serve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="triton-repo folder (REPO or REPO/MODEL) or an .onnx file with its sidecar")
    p.add_argument("--model-name", help="model to serve from a repository with several, or the name to serve an "
                   ".onnx under (default: the model folder's name, or swapwatch)")
    p.add_argument("--version", type=int, help="model version folder (default: the highest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--max-batch", type=int, help="max_batch_size (default: config.pbtxt's, else 32)")
    p.add_argument("--max-queue-delay-us", type=int,
                   help="dynamic batcher queue delay in microseconds (default: config.pbtxt's, else 500)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per instance (default 1)")
    p.add_argument("--instances", type=int, default=1, help="model instances, each with its own session (default 1)")
    p.add_argument("--log-file", help="write tritonserver's log to this file (default: this script's stdout)")
    p.add_argument("--log-batches", action="store_true",
                   help="print `pytriton_serve: batch N` for every batch the model runs (shows dynamic batching)")
    args = p.parse_args(argv)
    for name in ("grpc_port", "http_port"):
        if not 0 < getattr(args, name) < 65536:
            p.error(f"--{name.replace('_', '-')}: not a port: {getattr(args, name)}")
    for name in ("max_batch", "threads", "instances"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.max_queue_delay_us is not None and args.max_queue_delay_us < 0:
        p.error(f"--max-queue-delay-us: must be >= 0, got {args.max_queue_delay_us}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source = resolve_source(args)
    except UsageError as err:
        print(f"{PREFIX} {err}", file=sys.stderr)
        return 2
    try:
        return serve(source, args)
    except Exception as err:  # noqa: BLE001 - one line naming the cause, then exit 1
        print(f"{PREFIX} {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    # Run as a script, Python puts this file's folder first on sys.path, where swapwatch/engine/select.py
    # would shadow the standard library's `select` (imported by subprocess, which PyTriton uses).
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.exit(main())
