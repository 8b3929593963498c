"""How recorded clips reach the monitor as live streams: RTSP, WebRTC (WHIP) or the paced file source.

Every transport starts its senders once (`start`), then for each run hands out `copies` monitor
sources per input (`open`), ready to be wrapped by `GlassSource`, and closes what it opened for that
run (`close_run`). Senders run on this machine and share its CPU with the monitor, as on any loopback
benchmark; `sender_cpu_s()` says how much they used so the numbers can be read with that in mind.

- `rtsp`: one GStreamer RTSP server process per input (rtsp_replay.py, stamped mode). Every client
  connection gets its own pipeline (x264 encoder, frame counter), so `copies` readers of one URL are
  `copies` independent cameras. Needs Debian's GStreamer RTSP server; its absence is an error that
  names the apt packages.
- `webrtc`: an aiohttp app in this process with the WHIP routes (server/whip.py) receives, as
  `swapwatch serve` does; a sender process per input (webrtc_sender.py) publishes one aiortc
  `FileTrack` per copy to it (whip_client.py) through a real peer connection (ICE, DTLS, SRTP, VP8),
  drawing the glass stamp in its transform hook as each frame is sent. aioice offers no 127.0.0.1
  candidate (FACTS.md), so the machine needs a non-loopback IPv4 address.
- `file`: the monitor's paced file source reads a prepared H.264 file (the sender's encoding) at its
  frame rate with the `latest` policy, as a live camera would deliver it. No stamp is drawn; the
  glass time is the frame's place on the file's schedule (see recorder.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapwatch.errors import SwapwatchError
from swapwatch.stream.bench.inputs import BenchInput, encoded_file, raw_frames

if TYPE_CHECKING:
    from swapwatch.stream.sources.base import Source

log = logging.getLogger(__name__)


class TransportUnavailable(SwapwatchError):
    """What a transport needs is missing on this machine; the message says what and how to install it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Transport(ABC):
    """Senders for the inputs, and monitor sources that receive from them."""

    via: str
    stamped: bool = True

    def __init__(self, inputs: list[BenchInput], workdir: Path, seconds_needed: float,
                 queue_size: int | None = None) -> None:
        self.inputs = inputs
        self.workdir = workdir
        self.seconds_needed = seconds_needed
        self.queue_size = queue_size

    async def start(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Prepare and start the senders (once per benchmark)."""

    @abstractmethod
    async def open(self, copies: int) -> list[Source]:
        """`copies` sources per input for one run, named `<input>-<k>` (not started)."""

    async def close_run(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what `open` created once the run's monitor has stopped."""

    async def stop(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Stop the senders."""

    def sender_cpu_s(self) -> float | None:
        """CPU seconds the senders used so far (None when unknown)."""
        return None


class RtspTransport(Transport):
    via = "rtsp"

    def __init__(self, inputs: list[BenchInput], workdir: Path, seconds_needed: float,
                 queue_size: int | None = None) -> None:
        super().__init__(inputs, workdir, seconds_needed, queue_size)
        self.servers: list[Any] = []

    async def start(self) -> None:
        from swapwatch.stream.bench.rtsp_replay import (
            gstreamer_problem,
            install_hint,
            start_rtsp_server,
        )

        problem = await asyncio.to_thread(gstreamer_problem)
        if problem is not None:
            raise TransportUnavailable(
                f"--via rtsp needs Debian's GStreamer RTSP server, run by /usr/bin/python3: {problem}. "
                f"Install it with: {install_hint()} (or use --via file)"
            )
        for item in self.inputs:
            raw = await asyncio.to_thread(raw_frames, item, self.workdir / "raw")
            try:
                server = await asyncio.to_thread(
                    start_rtsp_server, item.source, self.workdir / f"rtsp-{item.name}", backend="gstreamer",
                    stamp=True, raw=raw, path=item.name,
                )
            except RuntimeError as err:
                raise TransportUnavailable(f"the RTSP server for {item.source} did not start: {err}") from None
            self.servers.append(server)

    async def open(self, copies: int) -> list[Source]:
        from swapwatch.stream.sources import SourceConfig, open_source

        return [
            open_source(SourceConfig(url=server.url, name=f"{item.name}-{k}", queue_size=self.queue_size))
            for item, server in zip(self.inputs, self.servers, strict=True)
            for k in range(1, copies + 1)
        ]

    async def stop(self) -> None:
        for server in self.servers:
            await asyncio.to_thread(server.stop)
        self.servers.clear()

    def sender_cpu_s(self) -> float | None:
        values = [s.cpu_seconds() for s in self.servers]
        known = [v for v in values if v is not None]
        return float(sum(known)) if len(known) == len(values) else None


class FileTransport(Transport):
    via = "file"
    stamped = False

    def __init__(self, inputs: list[BenchInput], workdir: Path, seconds_needed: float,
                 queue_size: int | None = None) -> None:
        super().__init__(inputs, workdir, seconds_needed, queue_size)
        self.files: list[Path] = []

    async def start(self) -> None:
        for item in self.inputs:
            self.files.append(await asyncio.to_thread(encoded_file, item, self.workdir / "encoded", self.seconds_needed))

    async def open(self, copies: int) -> list[Source]:
        from swapwatch.stream.sources import SourceConfig, open_source

        return [
            open_source(SourceConfig(url=str(path), name=f"{item.name}-{k}", realtime=True, policy="latest",
                                     live=False, queue_size=self.queue_size))
            for item, path in zip(self.inputs, self.files, strict=True)
            for k in range(1, copies + 1)
        ]


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far, from /proc; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WebRtcTransport(Transport):
    via = "webrtc"
    READY_TIMEOUT_S = 60.0

    def __init__(self, inputs: list[BenchInput], workdir: Path, seconds_needed: float,
                 queue_size: int | None = None) -> None:
        super().__init__(inputs, workdir, seconds_needed, queue_size)
        self.runner: Any = None
        self.url = ""
        self.senders: list[asyncio.subprocess.Process] = []
        self.arrived: dict[str, Source] = {}
        self._arrival = asyncio.Event()

    async def start(self) -> None:
        try:
            from aiohttp import web

            from swapwatch.stream.server.whip import add_whip_routes
            from swapwatch.stream.server.whip_config import WhipConfig
        except ImportError as err:
            raise TransportUnavailable(f"--via webrtc needs aiortc and aiohttp ({err}); install swapwatch's "
                                       "dependencies again") from None

        async def on_source(source: Source) -> str:
            self.arrived[source.name] = source
            self._arrival.set()
            return str(source.name)

        async def on_end(name: str) -> None:
            self.arrived.pop(name, None)

        app = web.Application()
        # No media timeout: the monitor may be busy starting (engine warm-up) while frames already flow.
        add_whip_routes(app, on_source=on_source, on_end=on_end,
                        config=WhipConfig(max_sessions=1024, media_timeout_s=None, queue_size=self.queue_size or 1))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = _free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/whip"

    async def open(self, copies: int) -> list[Source]:
        names: list[str] = []
        for item in self.inputs:
            batch = [f"{item.name}-{k}" for k in range(1, copies + 1)]
            names += batch
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "swapwatch.stream.bench.webrtc_sender", "--url", self.url,
                "--size", f"{item.width}x{item.height}", str(item.source), *batch,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
            self.senders.append(proc)
            assert proc.stdout is not None
            try:
                line = (await asyncio.wait_for(proc.stdout.readline(), self.READY_TIMEOUT_S)).decode().strip()
            except TimeoutError:
                line = f"ERROR no peer connection came up in {self.READY_TIMEOUT_S:g} s"
            if line != "READY":
                reason = line.removeprefix("ERROR ").strip() or f"the sender process exited ({proc.returncode})"
                raise TransportUnavailable(
                    f"WebRTC publishing to the benchmark's own WHIP endpoint failed: {reason}. aioice offers no "
                    "127.0.0.1 candidate, so this machine needs a non-loopback IPv4 address"
                )
        deadline = asyncio.get_running_loop().time() + 15.0
        while not all(n in self.arrived for n in names):
            self._arrival.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                missing = [n for n in names if n not in self.arrived]
                raise TransportUnavailable(f"WebRTC streams never reached the WHIP endpoint: {', '.join(missing)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), left)
        return [self.arrived[n] for n in names]

    async def close_run(self) -> None:
        senders, self.senders = self.senders, []
        for proc in senders:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in senders:
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for _ in range(50):  # let the server side see the hang-ups before the next run reuses the names
            if not self.arrived:
                break
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await self.close_run()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def sender_cpu_s(self) -> float | None:
        values = [proc_cpu_s(p.pid) for p in self.senders if p.returncode is None]
        if not values or any(v is None for v in values):
            return None
        return float(sum(values))  # type: ignore[arg-type]


def make_transport(via: str, inputs: list[BenchInput], workdir: Path, seconds_needed: float,
                   queue_size: int | None = None) -> Transport:
    """The transport named by `--via`; `queue_size` sets each stream's latest-frame queue (None: default)."""
    kinds: dict[str, type[Transport]] = {"rtsp": RtspTransport, "file": FileTransport, "webrtc": WebRtcTransport}
    return kinds[via](inputs, workdir, seconds_needed, queue_size)


def machine_busy_s() -> float | None:
    """CPU seconds all processes on the machine have used so far (busy time of every core), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_s() -> float:
    """CPU seconds (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
