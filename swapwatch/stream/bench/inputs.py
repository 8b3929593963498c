"""Recorded sources checked and prepared for replay: probed, scaled, cut, looped and re-encoded.

Each SOURCE is probed first, so an unreadable file stops the benchmark before anything starts, with
an error naming it. What each transport needs is then made once per run:

- `raw_frames` (RTSP): the first `clip_seconds` of the source decoded to raw I420 at the replay size;
  the RTSP server keeps them in memory and loops them, encoding live with x264 like a camera.
- `encoded_file`: the same frames looped to a given length and encoded the way the sender encodes
  (H.264: x264 ultrafast, zero latency, no B-frames, a key frame every second, 2 Mbit/s, as the RTSP
  server; VP8 in real-time mode, as aiortc). The `file` transport plays the H.264 one through the
  monitor's own paced file source, and the decode-only ceiling decodes the transport's, so the
  ceiling is measured on the kind of bitstream the monitor really receives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error

from swapwatch.errors import ConfigError
from swapwatch.stream.bench.glass_stamp import StampLayout
from swapwatch.stream.bench.rtsp_replay import RawClip, decode_to_raw
from swapwatch.stream.names import to_stream_name

SENDER_BITRATE = 2_048_000
"""What GStreamer's x264enc sends by default (2048 kbit/s); the prepared H.264 files use it too."""


@dataclass(frozen=True)
class BenchInput:
    """One probed SOURCE: its replay name, size and frame rate, and how many of its frames are replayed."""

    source: Path
    name: str
    width: int
    height: int
    fps: int
    frames: int

    def to_dict(self) -> dict[str, object]:
        return {"source": str(self.source), "name": self.name, "width": self.width, "height": self.height,
                "fps": self.fps, "frames": self.frames}


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def probe_input(path: Path, size: tuple[int, int] | None, clip_seconds: float, name: str) -> BenchInput:
    """Check that `path` is a readable video and describe its replay; ConfigError naming the file if not."""
    if not path.exists():
        raise ConfigError(f"SOURCE {path}: file not found")
    if path.is_dir():
        raise ConfigError(f"SOURCE {path}: is a directory; give video files")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ConfigError(f"SOURCE {path}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = round(float(rate)) if rate else 30
            w, h = stream.codec_context.width, stream.codec_context.height
            first = next(container.decode(stream), None)
    except (av.error.FFmpegError, OSError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise ConfigError(f"SOURCE {path}: not a readable video ({reason})") from None
    if first is None:
        raise ConfigError(f"SOURCE {path}: no frame could be decoded")
    width, height = size or (_even(w), _even(h))
    if StampLayout.for_size(width, height) is None:
        raise ConfigError(f"SOURCE {path}: {width}x{height} is too small to carry a glass stamp "
                          "(the shorter side needs at least 180 px; use --size)")
    declared = int(stream.frames or 0)
    wanted = max(1, round(clip_seconds * fps))
    return BenchInput(path, name, width, height, max(1, fps), min(wanted, declared) if declared else wanted)


def probe_inputs(paths: list[Path], size: tuple[int, int] | None, clip_seconds: float) -> list[BenchInput]:
    """Probe every SOURCE; names are the file stems (made unique), used as stream-name prefixes."""
    inputs: list[BenchInput] = []
    used: set[str] = set()
    for path in paths:
        # Room left for the "-k" suffixes; to_stream_name drops a leading symbol a stream name may not start with.
        base = to_stream_name(re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:100], fallback="clip")
        name, k = base, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        inputs.append(probe_input(path, size, clip_seconds, name))
    return inputs


def raw_frames(item: BenchInput, workdir: Path) -> RawClip:
    """The replayed frames as raw I420 at the replay size (decoded once per workdir)."""
    workdir.mkdir(parents=True, exist_ok=True)
    dest = workdir / f"{item.name}-{item.width}x{item.height}-{item.frames}.i420"
    return decode_to_raw(item.source, dest, size=(item.width, item.height), max_frames=item.frames)


def encoded_file(item: BenchInput, workdir: Path, seconds: float, codec: str = "h264") -> Path:
    """The replayed frames looped to at least `seconds` and encoded as the sender does (cached by name).

    `h264`: x264 as the RTSP sender encodes (MP4); `vp8`: libvpx in real-time mode, as aiortc sends (WebM).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    total = max(item.frames, round(seconds * item.fps))
    suffix = ".mp4" if codec == "h264" else ".webm"
    dest = workdir / f"{item.name}-{item.width}x{item.height}-{total}f-{codec}{suffix}"
    if dest.exists():
        return dest
    partial = dest.with_name(dest.stem + ".part" + suffix)
    with av.open(str(partial), mode="w") as out:
        stream = out.add_stream("libx264" if codec == "h264" else "libvpx", rate=Fraction(item.fps, 1))
        stream.width, stream.height, stream.pix_fmt = item.width, item.height, "yuv420p"
        stream.bit_rate = SENDER_BITRATE
        if codec == "h264":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency", "bframes": "0", "g": str(item.fps),
                              "profile": "baseline"}
        else:
            stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "g": str(item.fps)}
        written = 0
        while written < total:
            with av.open(str(item.source)) as src:
                for k, frame in enumerate(src.decode(video=0)):
                    if k >= item.frames or written >= total:
                        break
                    scaled = frame.reformat(width=item.width, height=item.height, format="yuv420p")
                    scaled.pts = written
                    scaled.time_base = Fraction(1, item.fps)
                    out.mux(stream.encode(scaled))
                    written += 1
        out.mux(stream.encode(None))
    partial.replace(dest)
    return dest
