"""One way to open ONNX Runtime sessions: explicit providers, bounded threads, no spin-waiting.

ORT 1.31's CPU wheel lists the Azure EP first, and by default every session spin-waits its
intra-op threads. With a detector and a classifier sharing two cores, spinning sessions starve each
other (measured: the loop ran at half speed), so spinning is switched off here for every session.
The cost is a few microseconds of wake-up latency per operator batch, which is noise next to a
multi-millisecond model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from swapwatch.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
_FORBIDDEN_PROVIDERS = frozenset({"AzureExecutionProvider"})
IN_MEMORY = "<in-memory ONNX model>"


def session_options(threads: int = 1) -> ort.SessionOptions:
    """SessionOptions shared by every swapwatch session (intra-op `threads`, inter-op 1, no spinning)."""
    if threads < 1:
        raise ConfigError(f"threads: must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def resolve_providers(providers: list[str] | None = None) -> list[str]:
    """Keep the requested providers this ORT build has, in order; never the Azure EP.

    Asking for CUDA first and CPU second on a CPU-only machine therefore runs on CPU (with a log
    line), while a list with no available provider at all is a ConfigError rather than a silent
    fallback to whatever ORT would pick.
    """
    wanted = list(providers) if providers else list(DEFAULT_PROVIDERS)
    bad = [p for p in wanted if p in _FORBIDDEN_PROVIDERS]
    if bad:
        raise ConfigError(f"providers: {bad[0]} is not supported (it needs network access); use CPU/CUDA/TensorRT")
    available = set(ort.get_available_providers())
    kept = [p for p in wanted if p in available]
    if not kept:
        raise ConfigError(f"providers: none of {wanted} is available; this onnxruntime has {sorted(available)}")
    if len(kept) < len(wanted):
        log.info("onnxruntime: providers %s unavailable, using %s", [p for p in wanted if p not in kept], kept)
    return kept


def make_session(
    model: str | Path | bytes, threads: int = 1, providers: list[str] | None = None
) -> ort.InferenceSession:
    """Open an ORT session on a model file or on serialized ONNX bytes.

    Raises ModelFileError naming the path (or "<in-memory ONNX model>" for bytes) when the file is
    missing or ORT cannot parse it as an ONNX model; ConfigError for bad threads/providers.
    """
    opts = session_options(threads)
    chosen = resolve_providers(providers)
    source: str | bytes
    if isinstance(model, (bytes, bytearray, memoryview)):
        label, source = IN_MEMORY, bytes(model)
    else:
        path = Path(model)
        label, source = str(path), str(path)
        if not path.is_file():
            what = "a folder" if path.is_dir() else "nothing"
            raise ModelFileError(path, f"expected an ONNX model file, found {what}")
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=chosen)
    except Exception as err:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(label, f"expected a valid ONNX model ({reason[:200]})") from err
