"""The decode-only ceiling: how many frames per second this machine decodes the replayed input when it
does nothing else (no detection, no scoring), with as many decoders at once as the run has streams.

It decodes the prepared file in the transport's codec (H.264 as the RTSP sender encodes it, VP8 as
aiortc does) with the monitor's own settings: slice threading and conversion to BGR, one thread per
decoder (the monitor decodes each stream in a thread of its own). Measured right before each run,
when no stream is playing, so it is the machine's headroom, not a share of it. Comparing a run's fps
with the ceiling tells whether decoding could ever be what limits it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import av


def _decode_until(path: Path, deadline: float, counts: list[int], slot: int, stop: threading.Event) -> None:
    while time.monotonic() < deadline and not stop.is_set():
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            for frame in container.decode(stream):
                frame.to_ndarray(format="bgr24")
                counts[slot] += 1
                if time.monotonic() >= deadline:
                    return


def decode_ceiling(files: list[Path], decoders: int, seconds: float) -> dict[str, Any]:
    """Decode `files` (round robin) with `decoders` threads for `seconds`; total and per-decoder fps."""
    counts = [0] * decoders
    stop = threading.Event()
    start = time.monotonic()
    deadline = start + seconds
    threads = [
        threading.Thread(target=_decode_until, args=(files[i % len(files)], deadline, counts, i, stop), daemon=True)
        for i in range(decoders)
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        stop.set()
    elapsed = max(1e-6, time.monotonic() - start)
    total = sum(counts) / elapsed
    return {
        "decoders": decoders,
        "seconds": round(elapsed, 3),
        "fps_total": round(total, 1),
        "fps_per_decoder": round(total / decoders, 1),
    }
