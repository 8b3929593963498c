"""The benchmark's WebRTC senders, in a process of their own (as a caller's browser would be).

    python -m swapwatch.stream.bench.webrtc_sender --url http://127.0.0.1:PORT/whip \\
        --size 1280x720 clip.mp4 clip-1 clip-2

publishes one aiortc `FileTrack` per NAME (the file looped, scaled, each frame stamped with its send
time by `StampHook` as it goes to the encoder) to URL/NAME over WHIP, prints `READY` once every peer
connection is up, and runs until its standard input closes or it gets SIGTERM; then it hangs up
(DELETE) and exits. Errors print one `ERROR <reason>` line and exit 1.

Keeping the senders out of the monitor's process matters on a small machine: aiortc's VP8 encoding and
packetising run partly in Python, and in the monitor's process they would compete with it for the
GIL and the event loop, which is not how a monitor meets its callers in production.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from swapwatch.stream.bench.glass_stamp import draw_stamp, now_us


class StampHook:
    """A FileTrack transform: draws the glass stamp (send time now, and a per-track counter) into each frame."""

    def __init__(self) -> None:
        self._seq = itertools.count()

    def __call__(self, image: Any, _t_send_wall: float) -> Any:
        draw_stamp(image, now_us(), next(self._seq))
        return image


async def publish_all(url: str, path: Path, names: list[str], size: tuple[int, int]) -> list[Any]:
    """Publish one stamped, looping FileTrack per name; returns the connected sessions."""
    from swapwatch.stream.bench.whip_client import FileTrack, publish

    sessions: list[Any] = []
    try:
        for name in names:
            track = FileTrack(path, loop=True, size=size, transform=StampHook())
            session = await publish(f"{url}/{name}", track, codec="vp8")
            sessions.append(session)
            await session.wait_connected(timeout=15.0)
    except BaseException:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        raise
    return sessions


async def _main(args: argparse.Namespace) -> int:
    from swapwatch.errors import SwapwatchError

    w, _, h = args.size.partition("x")
    try:
        sessions = await publish_all(args.url, Path(args.file), args.names, (int(w), int(h)))
    except (SwapwatchError, OSError, ValueError) as err:
        print(f"ERROR {err}", flush=True)
        return 1
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def wait_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe (or died)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_stdin, daemon=True).start()
    await stop.wait()
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m swapwatch.stream.bench.webrtc_sender")
    p.add_argument("--url", required=True, help="the WHIP endpoint; each stream publishes to URL/NAME")
    p.add_argument("--size", required=True, help="WIDTHxHEIGHT every frame is scaled to")
    p.add_argument("file", help="the video file to play, looped")
    p.add_argument("names", nargs="+", help="stream names, one peer connection each")
    return asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
