"""Layers: `swapwatch watch`, `serve` and `scan` never load the training package, and `swapwatch.media`
(decoding, image reading, the ONNX Runtime session factory) sits below everything else of ours.

Each check runs in a fresh interpreter, so what other tests imported does not count, and it looks at
`sys.modules` after the command really ran: an import inside a function counts as soon as it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MARK = "LOADED "
COMMAND_MODULES = ["swapwatch.cli.watch_command", "swapwatch.cli.serve_command", "swapwatch.cli.scan_command"]
# Fixed batcher sizes: the monitor would otherwise measure the engine for seconds before it starts.
MONITOR_SETS = ["--set", "batcher.max_batch=8", "--set", "batcher.max_wait_ms=2"]

RUN_CLI = f"""
import json, sys
from swapwatch.cli.main import main
rc = main(sys.argv[1:])
train = sorted(m for m in sys.modules if m.startswith("swapwatch.train"))
print({MARK!r} + json.dumps({{"rc": rc, "train": train, "torch": "torch" in sys.modules}}))
"""

IMPORT_MEDIA = f"""
import json, pkgutil, importlib, sys
import swapwatch.media
for info in pkgutil.walk_packages(swapwatch.media.__path__, "swapwatch.media."):
    importlib.import_module(info.name)
ours = sorted(m for m in sys.modules if m == "swapwatch" or m.startswith("swapwatch."))
print({MARK!r} + json.dumps({{"ours": ours, "torch": "torch" in sys.modules}}))
"""


def python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWAPWATCH_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def report(done: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    assert lines, f"no report (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(lines[-1][len(MARK):])


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small still image and a short clip (no faces: what matters is the code path, not the scores)."""
    root = tmp_path_factory.mktemp("layers")
    image = root / "still.png"
    cv2.imwrite(str(image), np.full((64, 96, 3), 120, np.uint8))
    clip = root / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 30 * i, np.uint8), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return {"image": image, "clip": clip, "root": root}


def test_importing_the_monitor_commands_loads_no_training_module(tmp_path: Path) -> None:
    done = python(["-X", "importtime", "-c", "import " + ", ".join(COMMAND_MODULES)], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    names = [line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert set(COMMAND_MODULES) <= set(names)
    assert [n for n in names if n.startswith("swapwatch.train")] == []


@pytest.mark.parametrize(
    "command",
    [
        lambda m: ["scan", str(m["image"]), str(m["clip"])],
        lambda m: ["watch", str(m["clip"]), "--no-realtime", "--no-console", *MONITOR_SETS],
        lambda m: ["serve", str(m["clip"]), "--port", "0", "--no-auth", "--duration", "1", *MONITOR_SETS],
    ],
    ids=["scan", "watch", "serve"],
)
def test_running_a_monitor_command_loads_no_training_module(
    media: dict[str, Path], command: Callable[[dict[str, Path]], list[str]]
) -> None:
    argv = command(media)
    got = report(python(["-c", RUN_CLI, *argv], media["root"]))
    assert got["rc"] == 0, got
    assert got["train"] == [], f"swapwatch {argv[0]} loaded {got['train']}"
    assert not got["torch"], f"swapwatch {argv[0]} loaded torch"


def test_media_imports_no_torch_and_nothing_above_errors_and_config(tmp_path: Path) -> None:
    got = report(python(["-c", IMPORT_MEDIA], tmp_path))
    assert not got["torch"]
    allowed = {"swapwatch", "swapwatch.errors", "swapwatch.config"}
    above = [m for m in got["ours"] if m not in allowed and not m.startswith("swapwatch.media")]
    assert above == [], f"swapwatch.media loads {above}"
    assert {"swapwatch.media.files", "swapwatch.media.image", "swapwatch.media.video",
            "swapwatch.media.onnx_session"} <= set(got["ours"])
