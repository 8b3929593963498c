"""`swapwatch bench SOURCE...`: glass-to-score latency of the real monitor on recorded clips replayed live.

    settings = StreamBenchSettings(sources=[Path("call.mp4")], via="rtsp", streams=[1, 2, 4], out=Path("out"))
    result = run_stream_bench(settings)        # bench.json, frames.jsonl and four PNGs in out/

Modules: `settings` (what to run), `inputs` (probe, scale, loop, encode the clips), `transports`
(RTSP server, WebRTC/WHIP sender, paced file), `recorder` (a Source wrapper that reads each frame's
glass stamp and a Monitor observer), `ceiling` (decode-only fps), `results` (percentiles, drops,
real-time verdicts), `plots`, `runner` (the loop over stream counts). docs/bench.md explains the
numbers and the plots.
"""

from swapwatch.stream.stream_bench.runner import (
           StreamBench,
           StreamBenchResult,
           print_summary,
           run_stream_bench,
)
from swapwatch.stream.stream_bench.settings import StreamBenchSettings, Via, parse_size

__all__ = ["StreamBench", "StreamBenchResult", "StreamBenchSettings", "Via", "parse_size", "print_summary",
           "run_stream_bench"]
