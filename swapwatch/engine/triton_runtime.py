"""NVIDIA Triton Inference Server backend: `triton://HOST:PORT/MODEL[/VERSION]` (gRPC).

Many monitor nodes can share one GPU server this way: each node keeps decoding, face finding and
preprocessing (the `Engine` base class, driven by the same metadata sidecar as a local engine) and
sends normalised float32 NCHW batches to Triton, whose dynamic batcher merges the requests of all
nodes into larger GPU batches.

The sidecar travels inside the model's config as the string parameter `swapwatch_metadata`
(`swapwatch export --format triton-repo` writes it into config.pbtxt; `pytriton_serve.py` publishes
the same parameter), so a node needs no local model file and cannot preprocess differently from the
model it talks to. What the node cannot check: the sidecar's `model_sha256` against the served file.

Threads: `Engine` is synchronous and is called from several worker threads at once. The gRPC aio
client lives on a private event loop in one background thread; each `_run` submits its request to
that loop and waits for it, so concurrent callers have concurrent requests in flight (which is what
lets Triton batch them). Tensors are serialised and decoded in the calling thread, so the loop
thread only moves bytes.

tritonclient is imported when an engine opens, never when this module is imported: the monitor
install has no tritonclient (`pip install ".[cluster]"` adds it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import numpy as np
from pydantic import ValidationError

from swapwatch.config import format_validation_error
from swapwatch.engine.base import BackendUnavailable, Engine
from swapwatch.engine.metadata import EngineMetadata
from swapwatch.errors import ConfigError, ModelFileError, SwapwatchError

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEME: Final = "triton"
DEFAULT_PORT: Final = 8001
"""Triton's default gRPC port."""
METADATA_PARAMETER: Final = "swapwatch_metadata"
"""The model config parameter holding the sidecar JSON."""
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")  # what Triton and PyTriton accept as a model name
_INSTALL_HINT = 'the triton backend needs tritonclient with gRPC (pip install ".[cluster]")'


@dataclass(frozen=True)
class TritonURL:
    """A parsed `triton://HOST:PORT/MODEL[/VERSION]`; `version` "" means the server's version policy."""

    host: str
    port: int
    model: str
    version: str = ""

    @property
    def target(self) -> str:
        """HOST:PORT as gRPC takes it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def label(self) -> str:
        """A file-name-like label for messages and `Engine.path`: MODEL[:VERSION]@HOST:PORT (no slashes)."""
        return f"{self.model}{':' + self.version if self.version else ''}@{self.target}"

    def __str__(self) -> str:
        return f"{SCHEME}://{self.target}/{self.model}{'/' + self.version if self.version else ''}"


def is_triton_url(text: object) -> bool:
    return isinstance(text, str) and text.strip().lower().startswith(f"{SCHEME}://")


def parse_triton_url(text: str, field: str = "engine.url") -> TritonURL:
    """Parse and check `triton://HOST[:PORT]/MODEL[/VERSION]` (port 8001 when left out).

    Raises ConfigError starting with `field` (when given) and saying which part is wrong.
    """
    raw = text.strip()
    where = f"{field}: {raw!r}" if field else repr(raw)
    if not is_triton_url(raw):
        raise ConfigError(f"{where}: expected triton://HOST:PORT/MODEL[/VERSION]")
    parts = urlsplit(raw)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: credentials in the URL are not supported")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: no query or fragment is allowed (triton://HOST:PORT/MODEL[/VERSION])")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as err:  # urlsplit's port check: not a number, or out of range
        raise ConfigError(f"{where}: bad port ({err})") from None
    if not host:
        raise ConfigError(f"{where}: no host (triton://HOST:PORT/MODEL)")
    if port == 0:
        raise ConfigError(f"{where}: port 0 is not a server port")
    segments = parts.path.split("/")[1:] if parts.path else []
    if segments and segments[-1] == "":
        segments = segments[:-1]  # a trailing slash
    if not segments or not segments[0]:
        raise ConfigError(f"{where}: no model name (triton://HOST:PORT/MODEL)")
    if len(segments) > 2:
        raise ConfigError(f"{where}: too many path parts; expected /MODEL or /MODEL/VERSION")
    model = segments[0]
    if not MODEL_NAME_RE.match(model):
        raise ConfigError(f"{where}: model name {model!r} may hold only letters, digits, '_', '.' and '-'")
    version = segments[1] if len(segments) == 2 else ""
    if version and not (version.isdigit() and int(version) > 0):
        raise ConfigError(f"{where}: model version {version!r} must be a positive integer")
    return TritonURL(host=host, port=port if port is not None else DEFAULT_PORT, model=model,
                     version=str(int(version)) if version else "")


def _import_client() -> tuple[Any, Any, type[Exception]]:
    """(tritonclient.grpc, tritonclient.grpc.aio, InferenceServerException) or BackendUnavailable."""
    try:
        import tritonclient.grpc as grpc_client
        import tritonclient.grpc.aio as grpc_aio
        from tritonclient.utils import InferenceServerException
    except ImportError as err:
        raise BackendUnavailable(f"{_INSTALL_HINT}: {err}") from None
    return grpc_client, grpc_aio, InferenceServerException


def _reason(err: BaseException) -> str:
    message = getattr(err, "message", None)
    text = message() if callable(message) else str(err)
    return (str(text).strip() or type(err).__name__)[:400]


def _status(err: BaseException) -> str:
    status = getattr(err, "status", None)
    return str(status() or "") if callable(status) else ""


@dataclass(frozen=True)
class ServedModel:
    """What a swapwatch client needs from a served model's config."""

    meta: EngineMetadata
    input_name: str
    output_name: str
    max_batch: int | None
    """The largest batch one request may carry (None: unbounded)."""


def served_model(config: dict[str, Any], url: TritonURL | str) -> ServedModel:
    """Check a model config (tritonclient's `get_model_config(as_json=True)["config"]`) and read what the
    client needs: the sidecar from the `swapwatch_metadata` parameter, the tensor names and the max batch.

    Refuses (ModelFileError naming `url`) a config without the sidecar, with other than one input and
    one output, an input that is not float32 [3, S, S] for the sidecar's S, or an output that is not one
    score per crop. JSON int64 fields arrive as strings; both forms are accepted.
    """
    where = str(url)
    param = (config.get("parameters") or {}).get(METADATA_PARAMETER)
    text = param.get("string_value") if isinstance(param, dict) else None
    if not text:
        raise ModelFileError(
            where, f"the model config has no {METADATA_PARAMETER!r} parameter, so the preprocessing is unknown; "
            "serve a repository written by `swapwatch export --format triton-repo` (or pytriton_serve.py)")
    try:
        meta = EngineMetadata.model_validate_json(text)
    except ValidationError as err:
        raise ModelFileError(where, format_validation_error(err, f"model config parameter {METADATA_PARAMETER}")) from None
    max_batch_size = int(config.get("max_batch_size") or 0)
    inputs, outputs = config.get("input") or [], config.get("output") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(where, f"expected a model with one input and one output, the config lists inputs "
                             f"{[i.get('name') for i in inputs]} and outputs {[o.get('name') for o in outputs]}")
    inp, out = inputs[0], outputs[0]
    s = meta.input_size
    in_dims = [int(d) for d in inp.get("dims") or []]
    out_dims = [int(d) for d in out.get("dims") or []]
    if max_batch_size == 0:  # no implicit batch dim: the dims include it, and it must be variable
        if len(in_dims) != 4 or in_dims[0] != -1 or not out_dims or out_dims[0] != -1:
            raise ModelFileError(where, f"max_batch_size 0 needs input dims [-1, 3, {s}, {s}] and output [-1, ...], "
                                 f"got {in_dims} and {out_dims}")
        in_dims, out_dims = in_dims[1:], out_dims[1:] or [1]
    if len(in_dims) != 3 or any(d not in (want, -1) for d, want in zip(in_dims, (3, s, s))):
        raise ModelFileError(where, f"input {inp.get('name')!r} has dims {in_dims} (without the batch dim); the "
                             f"sidecar's input_size {s} needs [3, {s}, {s}]")
    if inp.get("data_type") != "TYPE_FP32":
        raise ModelFileError(where, f"input {inp.get('name')!r} is {inp.get('data_type')}; swapwatch sends TYPE_FP32")
    if -1 in out_dims or int(np.prod(out_dims)) != 1:
        raise ModelFileError(where, f"output {out.get('name')!r} has dims {out_dims} per crop; expected one score "
                             "per crop ([1], or [1] reshaped to [])")
    return ServedModel(meta=meta, input_name=str(inp["name"]), output_name=str(out["name"]),
                       max_batch=max_batch_size if max_batch_size > 0 else None)


class TritonEngine(Engine):
    """Scores crops on a model served by Triton Inference Server (gRPC), preprocessing locally.

    `timeout_s` bounds the start (server live and ready, model ready, config read: waiting for a server
    or model that is still starting) and each inference request.
    """

    name = "triton"

    def __init__(self, url: str | TritonURL, *, timeout_s: float = 10.0) -> None:
        self.url = parse_triton_url(url) if isinstance(url, str) else url
        if not timeout_s > 0:
            raise ConfigError(f"engine.timeout_s: must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self._grpc, grpc_aio, self._server_error = _import_client()
        self._client: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"triton-{self.url.model}", daemon=True)
        self._thread.start()
        try:
            config = self._call(self._open(grpc_aio), self.timeout_s + 5.0, "start-up checks")
            self._configure(config)
        except BaseException:
            self._shutdown()
            raise
        log.info("triton: %s ready (max_batch %s, input %s, output %s)", self.url, self.max_batch,
                 self._input_name, self._output_name)

    # ------------------------------------------------------------------------------------------ opening

    async def _open(self, grpc_aio: Any) -> dict[str, Any]:
        """Connect, wait for the server and the model, and return the model config as a dict."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        self._client = grpc_aio.InferenceServerClient(self.url.target)
        last = "no answer"
        while True:  # the server may still be starting (nodes and server often start together)
            remaining = deadline - loop.time()
            try:
                live = await self._client.is_server_live(client_timeout=max(remaining, 0.1))
                ready = live and await self._client.is_server_ready(client_timeout=max(deadline - loop.time(), 0.1))
                if ready:
                    break
                last = "the server answers but is not ready" if live else "the server is not live"
            except self._server_error as err:
                last = _reason(err)
            if loop.time() >= deadline:
                raise BackendUnavailable(f"{self.url}: Triton server not ready within {self.timeout_s:g} s: {last}")
            await asyncio.sleep(min(0.2, max(deadline - loop.time(), 0.0)))
        model = self.url.model
        while True:
            try:
                if await self._client.is_model_ready(model, self.url.version,
                                                     client_timeout=max(deadline - loop.time(), 0.1)):
                    break
                # not ready: unknown (NOT_FOUND from the config call, at once) or still loading (wait)
                await self._client.get_model_config(model, self.url.version, as_json=True,
                                                    client_timeout=max(deadline - loop.time(), 0.1))
                last = "the model is known but not ready (loading, or failed to load: see the server log)"
            except self._server_error as err:
                if "NOT_FOUND" in _status(err):
                    raise BackendUnavailable(f"{self.url}: the server has no model {self._model_label()}: "
                                             f"{_reason(err)}") from None
                last = _reason(err)
            if loop.time() >= deadline:
                raise BackendUnavailable(f"{self.url}: model {self._model_label()} not ready within "
                                         f"{self.timeout_s:g} s: {last}")
            await asyncio.sleep(min(0.2, max(deadline - loop.time(), 0.0)))
        try:
            answer = await self._client.get_model_config(model, self.url.version, as_json=True,
                                                         client_timeout=max(deadline - loop.time(), 0.1))
        except self._server_error as err:
            raise BackendUnavailable(f"{self.url}: cannot read the model config: {_reason(err)}") from None
        config = answer.get("config", answer) if isinstance(answer, dict) else None
        if not isinstance(config, dict):
            raise ModelFileError(str(self.url), f"unexpected model config answer: {answer!r:.200}")
        return config

    def _model_label(self) -> str:
        return repr(self.url.model) + (f" version {self.url.version}" if self.url.version else "")

    def _configure(self, config: dict[str, Any]) -> None:
        served = served_model(config, self.url)
        self._init_preprocessing(Path(self.url.label), served.meta)
        self._input_name, self._output_name = served.input_name, served.output_name
        self.max_batch = served.max_batch

    # ------------------------------------------------------------------------------------------ running

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BackendUnavailable(f"{self.url}: no answer to the {what} within {timeout:g} s") from None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = self._grpc.InferInput(self._input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)  # serialised here, in the caller's thread
        wanted = self._grpc.InferRequestedOutput(self._output_name)
        started = time.perf_counter()
        result = self._call(self._infer(request, wanted), self.timeout_s + 1.0, "inference request")
        scores = result.as_numpy(self._output_name)
        if scores is None:
            raise SwapwatchError(f"{self.url}: the answer has no output {self._output_name!r}")
        log.debug("triton: %d crops in %.1f ms", batch.shape[0], (time.perf_counter() - started) * 1e3)
        return np.asarray(scores, np.float32).reshape(-1)

    async def _infer(self, request: Any, wanted: Any) -> Any:
        try:
            return await self._client.infer(self.url.model, [request], model_version=self.url.version,
                                            outputs=[wanted], client_timeout=self.timeout_s)
        except self._server_error as err:
            status = _status(err)
            if any(s in status for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED")):
                raise BackendUnavailable(f"{self.url}: inference request failed ({status}): {_reason(err)}") from None
            raise SwapwatchError(f"{self.url}: inference request failed ({status or 'error'}): {_reason(err)}") from None

    # ------------------------------------------------------------------------------------------ closing

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        super().close()
        self._shutdown()

    def _shutdown(self) -> None:
        """Close the client on its loop, then stop and join the loop thread (bounded waits)."""
        if not self._thread.is_alive():
            return
        if self._client is not None:
            try:
                self._call(self._client.close(), 5.0, "close")
            except Exception as err:  # noqa: BLE001 - closing a dead channel must not hide the real error
                log.debug("triton: closing the client of %s: %s", self.url, err)
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __repr__(self) -> str:
        return f"<TritonEngine {self.url} input={self.meta.input_size if hasattr(self, 'meta') else '?'} " \
               f"max_batch={self.max_batch}>"
