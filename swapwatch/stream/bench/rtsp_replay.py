"""Replay a recorded clip as a live RTSP stream from a real server on a loopback port.

Used by the source tests (servers they kill, restart and freeze) and by `swapwatch bench` (recorded
clips replayed as live cameras, each frame stamped with its send time, see glass_stamp.py).

Backends (FACTS.md, "Video"):
- `gstreamer` (preferred): Debian's GStreamer RTSP server (gir1.2-gst-rtsp-server-1.0), run by the
  system interpreter `/usr/bin/python3`, which owns python3-gi (the venv cannot import `gi`). The
  clip is decoded here with PyAV into raw I420 frames once; the server script feeds them to an
  `appsrc`, encodes with x264enc (zerolatency, no B-frames, an IDR every second so a reconnecting
  client gets a picture quickly) and packetises with rtph264pay. Feeding raw frames (rather than
  `filesrc ! qtdemux`) is what makes looping, playing once, and freezing (the connection stays up
  but no frame is sent: a real stall) a few lines each. Each client gets its own pipeline, so every
  connection plays the clip from its first frame.
  With `stamp=True` the server plays like a camera: a thread per connection pushes each frame at its
  due time (appsrc is-live, do-timestamp) and draws into it, just before the push, a glass stamp with
  that due time (the frame's capture moment) and the connection's frame counter. The server loads
  glass_stamp.py from this package by file path, so sender and receiver share one implementation.
  A pusher that wakes late does not move the stamp: the lateness counts as latency, as a camera's
  capture clock would not wait either. When the encoder cannot keep up, at most two frames wait for
  it and older ones are dropped (they show as gaps in the frame counter), as a camera drops frames.
- `listen` (fallback when GStreamer is not installed): the roles swap. The reader opens the URL with
  `rtsp_flags=listen` (it becomes the RTSP server) and a publisher process (the venv's python with
  PyAV; the machines have no ffmpeg CLI) pushes the clip to it over TCP, paced at its frame rate.
  Tests must then open the source with `server.reader_options`. Killing the publisher ends the
  stream; restarting it publishes again. A 404 cannot be produced in this mode.

`start_rtsp_server` picks GStreamer when it works and the fallback otherwise;
SWAPWATCH_TEST_RTSP_BACKEND=gstreamer|listen forces one. Stamping needs GStreamer (the fallback
only remuxes packets, so it cannot draw into the pictures).
"""

from __future__ import annotations

import functools
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import av
import numpy as np

SYSTEM_PYTHON = "/usr/bin/python3"
Backend = Literal["gstreamer", "listen"]
READY_TIMEOUT_S = 20.0
STAMP_MODULE = Path(__file__).with_name("glass_stamp.py")

GST_ELEMENTS = ("appsrc", "videoconvert", "x264enc", "rtph264pay")

GST_SERVER_SCRIPT = r'''
"""RTSP test server: raw I420 frames from a file -> appsrc -> x264enc -> rtph264pay (GstRtspServer)."""
import argparse
import importlib.util
import os
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--path", required=True)
ap.add_argument("--raw", required=True)
ap.add_argument("--width", type=int, required=True)
ap.add_argument("--height", type=int, required=True)
ap.add_argument("--fps", type=int, required=True)
ap.add_argument("--loop", type=int, default=1)
ap.add_argument("--freeze-after", type=int, default=-1)
ap.add_argument("--parent", type=int, default=0)
ap.add_argument("--stamp-module", default="")
args = ap.parse_args()

stamp = None
if args.stamp_module:
    spec = importlib.util.spec_from_file_location("glass_stamp", args.stamp_module)
    stamp = importlib.util.module_from_spec(spec)
    sys.modules["glass_stamp"] = stamp  # dataclasses look their module up while the class is built
    spec.loader.exec_module(stamp)

Gst.init(None)
FRAME_BYTES = args.width * args.height * 3 // 2
with open(args.raw, "rb") as f:
    DATA = f.read()
N_FRAMES = len(DATA) // FRAME_BYTES
DURATION = Gst.SECOND // args.fps
# Stamped (camera) mode: a live source; when the encoder falls behind, the oldest waiting frames are
# dropped (at most 2 wait), as a camera drops frames, instead of queueing up seconds of latency.
LIVE = "is-live=true do-timestamp=true max-buffers=2 max-bytes=0 leaky-type=downstream " if stamp is not None else ""
LAUNCH = (
    f"( appsrc name=src format=time {LIVE}"
    f"caps=video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1 "
    f"! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast bframes=0 threads=1 key-int-max={args.fps} "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def need_data(src, _length, state):
    i = state["i"]
    if not args.loop and i >= N_FRAMES:
        src.emit("end-of-stream")
        return
    if 0 <= args.freeze_after <= i:
        return  # stop feeding: the RTSP session stays up, but no frame ever comes (a stall)
    k = i % N_FRAMES
    buf = Gst.Buffer.new_wrapped(DATA[k * FRAME_BYTES:(k + 1) * FRAME_BYTES])
    buf.pts = buf.dts = i * DURATION
    buf.duration = DURATION
    state["i"] = i + 1
    src.emit("push-buffer", buf)


def pusher(src, stop):
    """Stamped mode: push frame i at t0 + i/fps, stamped with that due time (a camera's capture clock)."""
    interval = 1.0 / args.fps
    t0 = time.monotonic()
    i = 0
    while not stop.is_set():
        if not args.loop and i >= N_FRAMES:
            src.emit("end-of-stream")
            return
        due = t0 + i * interval
        delay = due - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        if time.monotonic() - due > 1.0:  # suspended for a second or more: restart the clock, do not burst
            t0 = time.monotonic() - i * interval
            due = t0 + i * interval
        if 0 <= args.freeze_after <= i:
            stop.wait(0.1)
            continue
        k = i % N_FRAMES
        frame = bytearray(DATA[k * FRAME_BYTES:(k + 1) * FRAME_BYTES])
        stamp.draw_stamp_i420(frame, args.width, args.height, int(due * 1e6), i)
        buf = Gst.Buffer.new_wrapped(bytes(frame))
        buf.duration = DURATION
        i += 1
        if src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
            return


def start_pusher(src, _length, state):
    if state.get("thread") is None:  # the first need-data: the pipeline is playing
        state["thread"] = threading.Thread(target=pusher, args=(src, state["stop"]), daemon=True)
        state["thread"].start()


class Factory(GstRtspServer.RTSPMediaFactory):
    def __init__(self):
        super().__init__()
        self.set_shared(False)
        self.set_launch(LAUNCH)
        self.connect("media-configure", self.configure)

    def configure(self, _factory, media):
        src = media.get_element().get_child_by_name("src")
        if stamp is None:
            src.connect("need-data", need_data, {"i": 0})
            return
        state = {"stop": threading.Event(), "thread": None}
        src.connect("need-data", start_pusher, state)
        media.connect("unprepared", lambda _media: state["stop"].set())


server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(str(args.port))
server.get_mount_points().add_factory("/" + args.path, Factory())
if server.attach(None) == 0:
    print(f"ERROR: cannot listen on 127.0.0.1:{args.port}", flush=True)
    sys.exit(3)


def parent_alive():
    if os.getppid() != args.parent:  # the test process died without stopping us: do not linger
        os._exit(0)
    return True


if args.parent:
    GLib.timeout_add(500, parent_alive)
print("READY", flush=True)
GLib.MainLoop().run()
'''

PUBLISHER_SCRIPT = r'''
"""RTSP publisher for the listen-mode fallback: remux a clip to rtsp://... over TCP, paced, optionally looping."""
import os
import sys
import time

import av

url, clip, loop, parent = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
deadline = time.monotonic() + 30
while True:  # the reader listens only while it is (re)opening: retry until it accepts
    try:
        src = av.open(clip)
        ist = src.streams.video[0]
        out = av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"})
        ost = out.add_stream_from_template(ist)
        out.start_encoding()
        break
    except (ConnectionRefusedError, av.FFmpegError, OSError):
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
print("READY", flush=True)
tb = ist.time_base
offset = 0
t0 = time.monotonic()
while True:
    last = 0
    step = 0
    for pkt in src.demux(ist):
        if pkt.dts is None:
            continue
        if os.getppid() != parent:  # the test process died without stopping us: do not linger
            sys.exit(0)
        step = pkt.duration or step
        due = t0 + float((pkt.pts + offset) * tb)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        last = max(last, pkt.pts + offset)
        pkt.pts += offset
        pkt.dts += offset
        pkt.stream = ost
        out.mux(pkt)
    if not loop:
        break
    offset = last + (step or 1)
    src.close()
    src = av.open(clip)
    ist = src.streams.video[0]
out.close()
'''


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def gstreamer_problem() -> str | None:
    """None when the system python can run a GStreamer RTSP server, else why not (for skip reasons)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        f"missing = [e for e in {GST_ELEMENTS!r} if Gst.ElementFactory.find(e) is None]; "
        "print('MISSING ' + ' '.join(missing) if missing else 'OK')"
    )
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"cannot run {SYSTEM_PYTHON}: {err}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server not importable by {SYSTEM_PYTHON} ({last})"
    if out.stdout.strip() != "OK":
        return f"GStreamer elements missing: {out.stdout.strip()[len('MISSING '):]}"
    return None


@functools.cache
def listen_problem() -> str | None:
    """None when PyAV can both publish and listen over RTSP (the fallback), else why not."""
    if "rtsp" not in av.formats_available:
        return "PyAV's FFmpeg has no rtsp format"
    return None


def install_hint() -> str:
    """The apt line that makes the preferred backend available."""
    return (
        "apt-get install -y --no-install-recommends gir1.2-gst-rtsp-server-1.0 python3-gi python3-numpy "
        "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly"
    )


@dataclass(frozen=True)
class RawClip:
    """A clip decoded to raw I420 frames (what the GStreamer server's appsrc reads)."""

    path: Path
    width: int
    height: int
    fps: int
    frames: int


def decode_to_raw(
    clip: Path,
    dest: Path,
    *,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> RawClip:
    """Decode `clip` to a raw I420 file (once; reused when `dest` exists), optionally scaled to `size`
    (width, height; even numbers) and cut to its first `max_frames` frames."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        fps = round(float(stream.average_rate or 30))
        width, height = size or (stream.codec_context.width, stream.codec_context.height)
        if not dest.exists():
            partial = dest.with_name(dest.name + ".part")
            with partial.open("wb") as f:
                for count, frame in enumerate(container.decode(stream)):
                    if max_frames is not None and count >= max_frames:
                        break
                    plane = frame.reformat(width=width, height=height, format="yuv420p").to_ndarray()
                    f.write(np.ascontiguousarray(plane).tobytes())
            partial.replace(dest)
    frames = dest.stat().st_size // (width * height * 3 // 2)
    return RawClip(dest, width, height, fps, frames)


class RtspServer:
    """One RTSP endpoint on a fixed loopback port; `kill()` and `restart()` keep the port and the URL."""

    def __init__(
        self,
        clip: Path,
        workdir: Path,
        backend: Backend,
        *,
        loop: bool = True,
        freeze_after: int | None = None,
        path: str = "stream",
        port: int | None = None,
        stamp: bool = False,
        raw: RawClip | None = None,
    ) -> None:
        if stamp and backend != "gstreamer":
            raise RuntimeError("stamped frames need the gstreamer backend (the listen fallback cannot draw into "
                               f"frames); install it: {install_hint()}")
        self.clip = Path(clip).resolve()
        self.workdir = Path(workdir).resolve()  # the server runs with it as its cwd: no relative paths
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend: Backend = backend
        self.loop = loop
        self.freeze_after = freeze_after
        self.path = path
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/{path}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stamp = stamp
        self._log = self.workdir / f"server-{self.port}.log"
        self._raw: RawClip | None = raw

    @property
    def reader_options(self) -> dict[str, str]:
        """FFmpeg options the reading source must add (the fallback makes the reader listen)."""
        return {"rtsp_flags": "listen"} if self.backend == "listen" else {}

    @property
    def running(self) -> bool:
        """True while the server (or publisher) process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        """Start the process; for GStreamer, wait until it listens (~0.1 s, at most READY_TIMEOUT_S)."""
        if self.running:
            return self
        if self.backend == "gstreamer":
            self._start_gstreamer()
        else:
            self._start_publisher()
        return self

    def kill(self) -> None:
        """Kill the process abruptly (SIGKILL), as a crashing camera or server would go."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> RtspServer:
        """Start again on the same port and path (kill first if still running)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Stop for good (terminate, then kill)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, s) the server process has used so far; None when not running or unknown."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        """The last lines the process wrote (for assertion messages)."""
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self._log.open("a")
        try:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, cwd=self.workdir, start_new_session=True)
        finally:
            log.close()

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT_S
        buffer = b""
        while time.monotonic() < deadline:
            readable, _, _ = select.select([fd], [], [], 0.05)
            chunk = os.read(fd, 4096) if readable else b""
            buffer += chunk
            if b"READY" in buffer:
                return
            if b"ERROR" in buffer or (readable and not chunk) or self.proc.poll() is not None:
                break
        out = buffer.decode(errors="replace").strip()
        self.kill()
        raise RuntimeError(f"RTSP server ({self.backend}) did not start: {out}\n{self.log_tail()}")

    def _start_gstreamer(self) -> None:
        if self._raw is None:
            self._raw = decode_to_raw(self.clip, self.workdir / f"{self.clip.stem}.i420")
        script = self.workdir / "gst_rtsp_server.py"
        script.write_text(GST_SERVER_SCRIPT)
        raw = self._raw
        argv = [
            SYSTEM_PYTHON, str(script), "--port", str(self.port), "--path", self.path, "--raw", str(raw.path),
            "--width", str(raw.width), "--height", str(raw.height), "--fps", str(raw.fps),
            "--loop", "1" if self.loop else "0",
            "--freeze-after", str(-1 if self.freeze_after is None else self.freeze_after),
            "--parent", str(os.getpid()),
            "--stamp-module", str(STAMP_MODULE) if self.stamp else "",
        ]  # fmt: skip
        # The port may still be held for a moment by the process just killed: retry binding briefly.
        for _ in range(50):
            self.proc = self._spawn(argv)
            try:
                self._wait_ready()
                return
            except RuntimeError as err:
                if "cannot listen" not in str(err):
                    raise
                time.sleep(0.1)
        raise RuntimeError(f"RTSP server could not bind 127.0.0.1:{self.port}")

    def _start_publisher(self) -> None:
        if self.freeze_after is not None:
            raise RuntimeError("freeze_after needs the gstreamer backend")
        script = self.workdir / "rtsp_publisher.py"
        script.write_text(PUBLISHER_SCRIPT)
        # No wait: the publisher retries until the reader (the listener) accepts it.
        loop = "1" if self.loop else "0"
        self.proc = self._spawn([sys.executable, str(script), self.url, str(self.clip), loop, str(os.getpid())])


def choose_backend() -> tuple[Backend | None, str]:
    """The backend to use and, when none works, why (the skip reason)."""
    forced = os.environ.get("SWAPWATCH_TEST_RTSP_BACKEND", "").strip().lower()
    gst, listen = gstreamer_problem(), listen_problem()
    if forced == "gstreamer":
        return (None, f"GStreamer forced but unavailable: {gst}") if gst else ("gstreamer", "")
    if forced == "listen":
        return (None, f"listen mode forced but unavailable: {listen}") if listen else ("listen", "")
    if gst is None:
        return "gstreamer", ""
    if listen is None:
        return "listen", ""
    return None, f"no RTSP test server: {gst}; fallback: {listen}. Install: {install_hint()}"


def start_rtsp_server(
    clip: Path,
    workdir: Path,
    *,
    loop: bool = True,
    freeze_after: int | None = None,
    path: str = "stream",
    port: int | None = None,
    backend: Backend | None = None,
    stamp: bool = False,
    raw: RawClip | None = None,
) -> RtspServer:
    """Start an RTSP server for `clip` (see the module docstring); raises RuntimeError when none can run.

    `raw` reuses frames already decoded (and scaled) by `decode_to_raw`; `stamp` draws glass stamps.
    """
    if backend is None:
        chosen, why = choose_backend()
        if chosen is None:
            raise RuntimeError(why)
        backend = chosen
    return RtspServer(clip, workdir, backend, loop=loop, freeze_after=freeze_after, path=path, port=port,
                      stamp=stamp, raw=raw).start()
