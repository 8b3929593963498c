"""Tooling around the monitor: the stream latency bench (`swapwatch bench SOURCE...`), and what it and the
demo are built from: an RTSP server replaying clips (`rtsp_replay`), glass stamps drawn into frames
(`glass_stamp`), a WHIP publisher (`whip_client`, also behind `swapwatch publish`) and the demo's clip
and report (`demo_clip`, `demo_report`). Nothing here is imported by the monitor itself; this package
imports nothing on import, so `swapwatch publish` does not load the bench.

    from swapwatch.stream.bench.runner import run_stream_bench
    from swapwatch.stream.bench.settings import StreamBenchSettings
    settings = StreamBenchSettings(sources=[Path("call.mp4")], via="rtsp", streams=[1, 2, 4], out=Path("out"))
    result = run_stream_bench(settings)        # bench.json, frames.jsonl and four PNGs in out/

Modules: `settings` (what to run), `inputs` (probe, scale, loop, encode the clips), `transports`
(RTSP server, WebRTC/WHIP sender, paced file), `recorder` (a Source wrapper that reads each frame's
glass stamp and a Monitor observer), `ceiling` (decode-only fps), `results` (percentiles, drops,
real-time verdicts), `plots`, `runner` (the loop over stream counts). docs/bench.md explains the
numbers and the plots.
"""
