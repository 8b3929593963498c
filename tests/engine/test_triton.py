"""The Triton backend against a real tritonserver: PyTriton's, on the CPU, on loopback.

`swapwatch/engine/pytriton_serve.py` runs in `.venv-triton` (nvidia-pytriton needs numpy<2; README command
2 makes it) and serves the embedded default model from a repository written by `swapwatch export --format
triton-repo`. The server tests skip, with the reason, only when that venv or PyTriton is missing.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swapwatch.cli.main import main
from swapwatch.config import parse_config
from swapwatch.engine.base import BackendUnavailable
from swapwatch.engine.metadata import EngineMetadata, file_sha256, read_metadata
from swapwatch.engine.onnx_runtime import OnnxEngine, default_model_path
from swapwatch.engine.select import EngineConfig, load_engine
from swapwatch.engine.triton_repo import TensorSpec, model_config_text, write_triton_repo
from swapwatch.engine.triton_runtime import TritonEngine, TritonURL, parse_triton_url, served_model
from swapwatch.errors import ConfigError, ModelFileError
from swapwatch.samples import model_sample_crops

REPO = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
SERVE_SCRIPT = REPO / "swapwatch" / "engine" / "pytriton_serve.py"
SERVER_MAX_BATCH = 4
"""Small, so that the engine's batches are split and Triton's merged batches stay visible."""
START_TIMEOUT_S = 120.0
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def pytriton_venv() -> Path:
    """The .venv-triton interpreter, or a skip saying why the server tests cannot run."""
    if not TRITON_PYTHON.is_file():
        pytest.skip(f"{TRITON_PYTHON.parent.parent} is missing (README command 2 creates it)")
    probe = subprocess.run([str(TRITON_PYTHON), "-c", "import pytriton"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"nvidia-pytriton does not import in .venv-triton: {probe.stderr.strip()[-300:]}")
    return TRITON_PYTHON


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Served:
    """A running pytriton_serve.py: its URL prefix and the `batch N` lines it printed."""

    proc: subprocess.Popen[bytes]
    grpc_port: int
    stdout: Path
    log: Path

    def url(self, model: str = "swapwatch") -> str:
        return f"triton://127.0.0.1:{self.grpc_port}/{model}"

    def batches(self) -> list[int]:
        return [int(line.rsplit(" ", 1)[1]) for line in self.stdout.read_text().splitlines()
                if line.startswith("pytriton_serve: batch ")]

    def tail(self) -> str:
        return f"stdout:\n{self.stdout.read_text()[-2000:]}\ntritonserver log:\n" + \
            (self.log.read_text()[-3000:] if self.log.exists() else "(none)")


@contextmanager
def pytriton_server(source: Path, folder: Path, *extra: str) -> Iterator[Served]:
    """Start pytriton_serve.py on free loopback ports; wait (bounded) for its ready line; stop it after."""
    folder.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = free_ports(2)
    stdout, log = folder / "stdout.txt", folder / "tritonserver.log"
    # No LD_LIBRARY_PATH here: the script sets the one its server needs (and this checks that it does).
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    with open(stdout, "wb") as out:
        proc = subprocess.Popen(
            [str(TRITON_PYTHON), str(SERVE_SCRIPT), str(source), "--grpc-port", str(grpc_port),
             "--http-port", str(http_port), "--log-file", str(log), "--log-batches", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    served = Served(proc, grpc_port, stdout, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "pytriton_serve: ready" not in stdout.read_text():
            if proc.poll() is not None:
                pytest.fail(f"pytriton_serve.py exited with {proc.returncode} before it was ready\n{served.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"pytriton_serve.py not ready within {START_TIMEOUT_S:.0f} s\n{served.tail()}")
            time.sleep(0.2)
        yield served
    finally:
        stop_server(served)


def stop_server(served: Served, timeout: float = 30.0) -> int | None:
    """SIGTERM, then (past `timeout`) SIGKILL to the server's process group; its exit code."""
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
        try:
            served.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(served.proc.pid, signal.SIGKILL)
            served.proc.wait(10)
            return None
    return served.proc.returncode


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default model as a Triton repository, written by the real CLI."""
    root = tmp_path_factory.mktemp("triton") / "repo"
    assert main(["export", "--format", "triton-repo", "--out", str(root), "--max-batch", str(SERVER_MAX_BATCH),
                 "--max-queue-delay-us", "2000"]) == 0
    return root


@pytest.fixture(scope="module")
def server(repo: Path, pytriton_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with pytriton_server(repo, tmp_path_factory.mktemp("server")) as served:
        yield served


@pytest.fixture(scope="module")
def local() -> Iterator[OnnxEngine]:
    engine = OnnxEngine()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def crops(local: OnnxEngine) -> np.ndarray:
    """Real aligned faces from the package sample photos, and their mirror images."""
    faces = model_sample_crops(local.meta)
    return np.concatenate([faces, faces[:, :, ::-1]])


# ------------------------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize(("text", "expected"), [
    ("triton://127.0.0.1:8001/swapwatch", TritonURL("127.0.0.1", 8001, "swapwatch")),
    ("triton://gpu-box/swapwatch", TritonURL("gpu-box", 8001, "swapwatch")),
    ("triton://gpu-box:9001/swap.watch-2/3", TritonURL("gpu-box", 9001, "swap.watch-2", "3")),
    ("triton://[::1]:8001/m/", TritonURL("::1", 8001, "m")),
    ("  TRITON://Host:8001/m  ", TritonURL("host", 8001, "m")),
])
def test_triton_urls_parse(text: str, expected: TritonURL) -> None:
    assert parse_triton_url(text) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("http://127.0.0.1:8001/m", "expected triton://"),
    ("127.0.0.1:8001/m", "expected triton://"),
    ("triton://127.0.0.1:8001", "no model name"),
    ("triton://127.0.0.1:8001/", "no model name"),
    ("triton://:8001/m", "no host"),
    ("triton://h:port/m", "bad port"),
    ("triton://h:70000/m", "bad port"),
    ("triton://h:0/m", "port 0"),
    ("triton://h:8001/m/v1", "positive integer"),
    ("triton://h:8001/m/0", "positive integer"),
    ("triton://h:8001/m/1/x", "too many path parts"),
    ("triton://h:8001/m%20x", "may hold only"),
    ("triton://user:secret@h:8001/m", "credentials"),
    ("triton://h:8001/m?timeout=3", "no query"),
])
def test_bad_triton_urls_name_the_field_and_the_part(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        parse_triton_url(text, "--engine")
    assert str(info.value).startswith("--engine: ")


@pytest.mark.parametrize(("data", "error"), [
    ({"backend": "triton", "url": "triton://h/m"}, None),
    ({"backend": "triton", "url": "triton://h/m", "timeout_s": 2.5}, None),
    ({"backend": "triton"}, "backend triton needs url"),
    ({"url": "triton://h:8001/m"}, "url is only for backend triton"),
    ({"backend": "onnxruntime", "url": "triton://h:8001/m"}, "url is only for backend triton"),
    ({"backend": "triton", "url": "triton://h/m", "model": "x.onnx"}, "takes no model file"),
    ({"backend": "triton", "url": "grpc://h/m"}, "url: Value error"),
    ({"backend": "triton", "url": "triton://h/m", "timeout_s": 0}, "timeout_s"),
    ({"backend": "triton", "url": "triton://h/m", "host": "h"}, "host"),
])
def test_engine_config_triton_fields(data: dict[str, Any], error: str | None) -> None:
    if error is None:
        cfg = parse_config(EngineConfig, data, "engine")
        assert cfg.url == "triton://h:8001/m"  # canonical form: the default port filled in
    else:
        with pytest.raises(ConfigError, match=error):
            parse_config(EngineConfig, data, "engine")


def test_selecting_an_engine_never_imports_tritonclient() -> None:
    code = ("import sys; from swapwatch.engine.select import load_engine; e = load_engine(None, 'onnxruntime'); "
            "print(sorted(m for m in sys.modules if m.startswith('tritonclient')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_tritonclient_is_backend_unavailable_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.aio", None)  # what an install without it looks like
    with pytest.raises(BackendUnavailable, match=r'pip install "\.\[cluster\]"'):
        load_engine("triton://127.0.0.1:8001/swapwatch")


@pytest.mark.parametrize(("path", "backend", "error"), [
    ("triton://127.0.0.1:8001/m", "onnxruntime", "served by backend triton"),
    (None, "triton", "needs a triton://"),
])
def test_load_engine_refuses_triton_mixed_with_other_backends(path: str | None, backend: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_engine(path, backend)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- the repository


def parse_pbtxt(path: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repo_export_writes_a_config_tritonserver_parses(repo: Path) -> None:
    model_dir = repo / "swapwatch"
    config = parse_pbtxt(model_dir / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == ("swapwatch", "onnxruntime_onnx", SERVER_MAX_BATCH)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims)) == ("input", [3, 224, 224])
    assert (out.name, list(out.dims)) == ("score", [1])
    assert inp.data_type == out.data_type == 11  # TYPE_FP32 in model_config.proto's DataType
    assert out.HasField("reshape") and list(out.reshape.shape) == []  # the model's score is [N]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    sidecar = json.loads(config.parameters["swapwatch_metadata"].string_value)
    assert EngineMetadata.model_validate(sidecar) == read_metadata(default_model_path())
    model = model_dir / "1" / "model.onnx"
    assert file_sha256(model) == file_sha256(default_model_path()) == read_metadata(model).model_sha256


def test_config_strings_survive_protobuf_text_format(tmp_path: Path) -> None:
    meta = read_metadata(default_model_path()).model_copy(update={"checkpoint": 'runs/été "final"\\\tlast.pt\n'})
    text = model_config_text("m", "tensorrt_plan", 8, TensorSpec("in put", "TYPE_FP32", (3, 224, 224)),
                             TensorSpec("score", "TYPE_FP16", (1,)), meta, 0)
    (tmp_path / "config.pbtxt").write_text(text)
    config = parse_pbtxt(tmp_path / "config.pbtxt")
    assert config.input[0].name == "in put" and not config.output[0].HasField("reshape")
    assert EngineMetadata.model_validate_json(config.parameters["swapwatch_metadata"].string_value) == meta


@pytest.mark.parametrize(("args", "error"), [
    (["--triton-name", "bad name"], "--triton-name"),
    (["--triton-version", "0"], "--triton-version"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-queue-delay-us", "-1"], "--max-queue-delay-us"),
    (["--precision", "int8"], "--precision"),
])
def test_triton_repo_export_refuses_bad_options(args: list[str], error: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--format", "triton-repo", "--out", str(tmp_path / "repo"), *args]) == 2
    assert error in capsys.readouterr().err


def test_triton_repo_refuses_files_it_cannot_serve(tmp_path: Path) -> None:
    other = tmp_path / "model.ep"
    other.write_bytes(b"x")
    (tmp_path / "model.ep.json").write_text(read_metadata(default_model_path()).model_copy(
        update={"model_sha256": file_sha256(other)}).model_dump_json())
    with pytest.raises(ConfigError, match="takes an .onnx model or a TensorRT plan"):
        write_triton_repo(other, tmp_path / "repo")
    with pytest.raises(ModelFileError, match="no such model file"):
        write_triton_repo(tmp_path / "missing.onnx", tmp_path / "repo")


def test_other_formats_still_need_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "needs a CHECKPOINT" in capsys.readouterr().err


# ------------------------------------------------------------------------------ against a real server


def test_scores_equal_onnx_runtime_on_real_faces(server: Served, local: OnnxEngine, crops: np.ndarray) -> None:
    with TritonEngine(server.url()) as engine:
        assert (engine.name, engine.max_batch, engine.input_size) == ("triton", SERVER_MAX_BATCH, local.input_size)
        assert engine.meta == local.meta  # the sidecar came from the served model config
        remote, reference = engine.score_crops(crops[:SERVER_MAX_BATCH]), local.score_crops(crops[:SERVER_MAX_BATCH])
    diff = float(np.max(np.abs(remote - reference)))
    print(f"triton vs onnxruntime on {SERVER_MAX_BATCH} real face crops: max |diff| = {diff:.2e}")
    assert diff <= TOLERANCE
    assert not np.allclose(remote, remote[0]), "every face scored the same"


def test_batches_larger_than_max_batch_are_split(server: Served, local: OnnxEngine, crops: np.ndarray) -> None:
    big = np.concatenate([crops, crops[::-1], crops[:3]])  # 35 real crops: 9 requests of at most 4
    before = len(server.batches())
    with load_engine(server.url()) as engine:
        remote = engine.score_crops(big)
    diff = float(np.max(np.abs(remote - local.score_crops(big))))
    print(f"triton vs onnxruntime on {len(big)} crops in batches of {SERVER_MAX_BATCH}: max |diff| = {diff:.2e}")
    assert remote.shape == (len(big),) and diff <= TOLERANCE
    ran = server.batches()[before:]
    assert sum(ran) == len(big) and max(ran) <= SERVER_MAX_BATCH


def test_concurrent_calls_from_threads_are_batched_together(server: Served, local: OnnxEngine,
                                                            crops: np.ndarray) -> None:
    """Threads share one engine with one crop per call; Triton merges requests that were in flight at once."""
    expected = local.score_crops(crops)
    results: dict[tuple[int, int], float] = {}
    errors: list[BaseException] = []
    before = len(server.batches())

    with TritonEngine(server.url()) as engine:
        def work(worker: int) -> None:
            try:
                for i in range(worker, len(crops), 2):
                    results[(worker, i)] = float(engine.score_crops(crops[i : i + 1])[0])
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                errors.append(err)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    assert len(results) == sum(len(range(w, len(crops), 2)) for w in range(8))
    assert max(abs(score - expected[i]) for (_, i), score in results.items()) <= TOLERANCE
    ran = server.batches()[before:]
    print(f"{len(results)} one-crop requests from 8 threads ran as server batches {dict(sorted(Counter(ran).items()))}")
    assert sum(ran) == len(results)
    assert max(ran) > 1, f"every request ran alone ({ran}): no two one-crop requests were in flight together"


@pytest.mark.parametrize(("model", "timeout_s", "exc", "message"), [
    ("nope", 10.0, BackendUnavailable, "has no model 'nope'"),
    ("swapwatch/7", 10.0, BackendUnavailable, "has no model 'swapwatch' version 7"),
])
def test_unknown_models_fail_at_once_naming_url_and_model(server: Served, model: str, timeout_s: float,
                                                          exc: type[Exception], message: str) -> None:
    started = time.monotonic()
    with pytest.raises(exc, match=message) as info:
        TritonEngine(server.url(model), timeout_s=timeout_s)
    assert server.url(model) in str(info.value)
    assert time.monotonic() - started < 5.0  # NOT_FOUND is final: no waiting for the timeout


def test_a_server_that_is_not_there_fails_after_the_timeout_naming_the_url() -> None:
    (port,) = free_ports(1)
    url = f"triton://127.0.0.1:{port}/swapwatch"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"not ready within 1 s: .*(refused|connect)") as info:
        TritonEngine(url, timeout_s=1.0)
    assert url in str(info.value) and time.monotonic() - started < 8.0


def test_bad_urls_are_config_errors_before_any_connection() -> None:
    with pytest.raises(ConfigError, match="no model name"):
        TritonEngine("triton://127.0.0.1:8001")


def _served_config(server: Served) -> dict[str, Any]:
    import tritonclient.grpc as grpc_client

    client = grpc_client.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        answer = client.get_model_config("swapwatch", as_json=True)
    finally:
        client.close()
    return dict(answer["config"])


def _mutated(config: dict[str, Any], change: str) -> dict[str, Any]:
    c = json.loads(json.dumps(config))
    if change == "no sidecar":
        c["parameters"].pop("swapwatch_metadata")
    elif change == "bad sidecar":
        c["parameters"]["swapwatch_metadata"]["string_value"] = '{"format": "swapwatch-engine/1"}'
    elif change == "wrong input size":
        c["input"][0]["dims"] = ["3", "112", "112"]
    elif change == "fp16 input":
        c["input"][0]["data_type"] = "TYPE_FP16"
    elif change == "two outputs":
        c["output"].append({**c["output"][0], "name": "logits"})
    elif change == "vector output":
        c["output"][0]["dims"] = ["2"]
    elif change == "no batching, fixed batch":
        c["max_batch_size"] = 0
        c["input"][0]["dims"] = ["4", "3", "224", "224"]
    return c


@pytest.mark.parametrize(("change", "message"), [
    ("no sidecar", "no 'swapwatch_metadata' parameter"),
    ("bad sidecar", "model config parameter swapwatch_metadata"),
    ("wrong input size", r"dims \[3, 112, 112\].*needs \[3, 224, 224\]"),
    ("fp16 input", "TYPE_FP16"),
    ("two outputs", "one input and one output"),
    ("vector output", "one score per crop"),
    ("no batching, fixed batch", "max_batch_size 0 needs"),
])
def test_served_configs_that_do_not_fit_are_refused(server: Served, change: str, message: str) -> None:
    """The served config, changed one field at a time into configs a hand-written repository could have."""
    config = _served_config(server)
    assert served_model(config, server.url()).max_batch == SERVER_MAX_BATCH  # as served: accepted
    with pytest.raises(ModelFileError, match=message) as info:
        served_model(_mutated(config, change), server.url())
    assert server.url() in str(info.value)


def test_server_script_serves_an_onnx_file_and_stops_cleanly_on_sigterm(
    pytriton_venv: Path, local: OnnxEngine, crops: np.ndarray, tmp_path: Path,
) -> None:
    with pytriton_server(default_model_path(), tmp_path, "--model-name", "detector") as served:
        with TritonEngine(served.url("detector")) as engine:
            assert engine.max_batch == 32  # the script's default without a config.pbtxt
            assert float(np.max(np.abs(engine.score_crops(crops) - local.score_crops(crops)))) <= TOLERANCE
        assert stop_server(served) == 0
        assert "pytriton_serve: stopped" in served.stdout.read_text()
    with pytest.raises(BackendUnavailable, match="not ready within"):
        TritonEngine(served.url("detector"), timeout_s=0.5)


# ---------------------------------------------------------------------------- two nodes, one server


def _scan(args: list[str], out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SWAPWATCH_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "swapwatch", "scan", *args, "--out", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 300.0) -> None:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(10)
        pytest.fail(f"swapwatch scan did not finish within {timeout:.0f} s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]


def assert_same_results(got: Any, want: Any, where: str = "") -> None:
    """Equal JSON, numbers within TOLERANCE (scan rounds scores to 5 decimals, so 1e-5 is one last digit)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            assert_same_results(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_results(g, w, f"{where}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=0, abs_tol=TOLERANCE + 1e-12), f"{where}: {got} != {want}"
    else:
        assert got == want, where


def test_two_scan_nodes_sharing_one_server_score_like_onnx_runtime(server: Served, tmp_path: Path) -> None:
    from swapwatch.stream.bench.face_clip import write_face_clip

    clip = write_face_clip(tmp_path / "astronaut.mp4", fps=30, seconds=3.0)  # a real face, 90 frames
    _finish(_scan([str(clip)], tmp_path / "local.jsonl"))
    before = len(server.batches())
    nodes = [_scan([str(clip), "--engine", server.url()], tmp_path / f"node{i}.jsonl") for i in range(2)]
    for node in nodes:
        _finish(node)
    (want,) = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert want["frames_with_faces"] == 90 and want["score"] is not None
    for i in range(2):
        (got,) = [json.loads(line) for line in (tmp_path / f"node{i}.jsonl").read_text().splitlines()]
        assert_same_results(got, want, f"node{i}")
    ran = server.batches()[before:]
    print(f"two scan nodes: server batches (size: count) {dict(sorted(Counter(ran).items()))}")
    assert sum(ran) == 2 * 90  # every face of both nodes went through the one server


def test_watch_runs_the_monitor_on_the_server(server: Served, tmp_path: Path) -> None:
    from swapwatch.stream.bench.face_clip import write_face_clip

    clip = write_face_clip(tmp_path / "astronaut.mp4", fps=15, seconds=2.0)
    before = len(server.batches())
    env = {**os.environ, "SWAPWATCH_PROGRESS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "swapwatch", "watch", str(clip), "--engine", server.url(), "--no-realtime",
         "--no-console", "--events", str(tmp_path / "events.jsonl"), "--report", str(tmp_path / "report.json"),
         "--set", "batcher.max_batch=4", "--set", "batcher.max_wait_ms=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"]["name"] == f"swapwatch@127.0.0.1:{server.grpc_port}"
    scored = sum(s["faces_scored"] for s in report["streams"].values())
    assert scored > 0 and sum(server.batches()[before:]) >= scored  # every face, and the monitor's warm-up crop
