"""`swapwatch publish FILE URL`: play a video file into a WHIP endpoint (a `swapwatch serve`, or any WHIP server).

    swapwatch publish call.mp4 http://127.0.0.1:8080/whip/desk-3 --token "$SWAPWATCH_TOKEN"
    swapwatch publish clip.mp4 http://monitor:8080/whip --loop --size 1280x720 --duration 60

The file plays at its native frame rate, re-encoded live (VP8 by default, or `--codec h264`) like a
camera in a call. It stops at the end of the file (or loops forever with `--loop`), after `--duration`
seconds, or on SIGINT/SIGTERM; then it sends the DELETE that ends the session and exits 0. A status
line shows the connection state and the frames sent every few seconds.

The token comes from `--token` or the SWAPWATCH_TOKEN environment variable and travels only in the
`Authorization: Bearer` header; it is never printed. Exit codes: 2 for bad options (missing or
unreadable file, bad size), 1 when the server refuses the offer or the connection fails.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

STATUS_EVERY_S = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, metavar="FILE", help="video file to publish (anything FFmpeg reads)")
    p.add_argument("url", metavar="URL",
                   help="WHIP endpoint, e.g. http://HOST:8080/whip or http://HOST:8080/whip/NAME to name the stream")
    p.add_argument("--token", help="bearer token for the server (default: the SWAPWATCH_TOKEN environment variable)")
    p.add_argument("--loop", action="store_true", help="start the file over at its end, until stopped")
    p.add_argument("--size", metavar="WxH", help="scale every frame to this size, e.g. 1280x720 (even numbers)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--codec", choices=("vp8", "h264"), help="video codec to offer (default: VP8, then H.264)")
    p.add_argument("--connect-timeout", type=float, default=15.0, metavar="SECONDS",
                   help="give up when the WebRTC connection is not up after this long (default 15)")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'1280x720' -> (1280, 720); ConfigError naming --size otherwise."""
    from swapwatch.errors import ConfigError

    if text is None:
        return None
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m or int(m.group(1)) % 2 or int(m.group(2)) % 2 or not int(m.group(1)) or not int(m.group(2)):
        raise ConfigError(f"--size: expected WIDTHxHEIGHT with even, positive numbers (e.g. 1280x720), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    if not getattr(args, "verbose", 0):
        # aioice logs every ICE candidate pair at INFO: noise for a publisher's console (-v shows it).
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.WARNING)

    from swapwatch.errors import ConfigError, MediaError
    from swapwatch.stream.bench.whip_client import FileTrack

    size = parse_size(args.size)
    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration: must be positive, got {args.duration}")
    if not args.url.lower().startswith(("http://", "https://")):
        raise ConfigError(f"URL: a WHIP endpoint is an http:// or https:// URL, got {args.url!r}")
    token = args.token or os.environ.get("SWAPWATCH_TOKEN") or None
    try:
        track = FileTrack(args.file, loop=args.loop, size=size)
    except MediaError as err:
        raise ConfigError(str(err)) from None
    return asyncio.run(_publish(args, track, token))


async def _publish(args: argparse.Namespace, track: object, token: str | None) -> int:
    import asyncio
    import signal
    import time

    from swapwatch.stream.bench.whip_client import FileTrack, publish

    assert isinstance(track, FileTrack)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stopped_by: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        stopped_by.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass

    width, height = track.size
    print(f"publishing {track.path} ({width}x{height} at {track.fps:g} fps{', looping' if track.loop else ''}) "
          f"to {args.url}", flush=True)
    session = await publish(args.url, track, token, codec=args.codec)
    print(f"session {session.location}", flush=True)
    started = time.monotonic()
    reason = "stopped"
    try:
        await session.wait_connected(args.connect_timeout)
        print(f"connected after {time.monotonic() - started:.2f} s", flush=True)
        ended = asyncio.ensure_future(session.wait_ended())
        stopping = asyncio.ensure_future(stop.wait())
        last_frames, last_t = 0, time.monotonic()
        while True:
            timeout = STATUS_EVERY_S
            if args.duration is not None:
                timeout = min(timeout, max(0.0, started + args.duration - time.monotonic()))
            done, _ = await asyncio.wait({ended, stopping}, timeout=timeout)
            if ended in done:
                reason = ended.result()
                break
            if stopping in done:
                reason = f"{stopped_by[0] if stopped_by else 'signal'} received"
                break
            if args.duration is not None and time.monotonic() >= started + args.duration:
                reason = f"{args.duration:g} s passed"
                break
            now = time.monotonic()
            fps = (track.frames_sent - last_frames) / (now - last_t) if now > last_t else 0.0
            last_frames, last_t = track.frames_sent, now
            print(f"{now - started:7.1f} s  {session.pc.connectionState}  {track.frames_sent} frames sent  "
                  f"{fps:.1f} fps  loops {track.loops}", flush=True)
        for task in (ended, stopping):
            task.cancel()
    finally:
        status = await session.close()
    print(f"done: {reason}; {track.frames_sent} frames sent in {time.monotonic() - started:.1f} s; "
          f"DELETE -> {status if status is not None else 'no answer'}", flush=True)
    if track.error is not None:
        print(f"swapwatch publish: {track.error}", flush=True)
        return 1
    return 0
