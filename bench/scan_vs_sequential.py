"""`swapwatch scan` against a straightforward sequential loop, side by side, whole processes timed.

    python bench/scan_vs_sequential.py --out runs/scan-bench            # default 720p clip
    python bench/scan_vs_sequential.py my_clip.mp4 --repeats 5 --out runs/scan-bench

What runs, each as its own subprocess timed from start to exit (imports and model loading count):
- (a) `sequential`: the loop in this file (`--sequential`): PyAV decode -> BGR -> the embedded
  RetinaFace -> align each face -> score each face on its own (batch 1) with the same ONNX model.
  It uses swapwatch's detector class, alignment function and the engine's preprocessing, so the two
  sides compute the same thing and differ only in how the work is arranged. Its ORT sessions are tuned
  as ours are (explicit CPU provider, intra-op spinning off, full graph optimisation); it runs with 1
  and with 2 intra-op threads, and the faster of the two is the baseline (the table says which).
- (b) `scan`: `swapwatch scan CLIP --out ...` with its defaults (detection on every 5th frame,
  faces interpolated between agreeing detections, every frame aligned and scored).
- (c) `scan-detectN` for each `--detect-every N` (default: N = 1, detection on every frame, which
  must reproduce (a)'s scores).
Runs alternate (a1, a2, b, c, a1, a2, b, c, ...) `--repeats` times, so load from other processes
falls on all of them alike; the load average and the child's CPU seconds are recorded with each run.
Per-frame scores of every variant are compared with (a)'s: detection on every frame agrees to
rounding; interpolation moves them a little, and by how much is reported. Writes `results.json`,
`scan_vs_sequential.png` and prints a table.

The default clip is 720p (1280x720, 30 fps) made from up to 10 videos in ../shared/data/real/videos
(60 frames each, letterboxed, so it has 10 shots); when that folder is missing the benchmark says so
and exits 0 (pass a clip instead). The clip is written under --out and never committed.

Where (b)'s gain comes from (see swapwatch/stream/scan/scanner.py): mostly from running the detector, ~70%
of (a)'s CPU per frame, on about a quarter of the frames; then from overlapping decode, faces and
scoring on the two cores, which only pays when a core is free. The CPU column shows the first part
alone: it does not depend on what else runs on the machine. Batched scoring saves no CPU on these
cores. (c) with N = 1 shows what the pipeline alone gives.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DATA_VIDEOS = REPO.parent / "shared" / "data" / "real" / "videos"


# --- (a) the sequential loop ------------------------------------------------------------------------

def sequential(clip: Path, threads: int, out: Path) -> None:
    """Decode, detect, align and score each face one at a time; per-frame face scores to `out` (JSONL)."""
    import av

    from swapwatch.engine.onnx_runtime import OnnxEngine
    from swapwatch.stream.faces.align import align_face
    from swapwatch.stream.faces.retinaface_embedded import EmbeddedRetinaFace

    detector = EmbeddedRetinaFace(threads=threads)  # session: CPU EP, spinning off, ORT_ENABLE_ALL
    engine = OnnxEngine(None, threads=threads)  # same session options, the embedded default model
    size, margin = engine.input_size, engine.meta.alignment.margin
    with av.open(str(clip)) as container, open(out, "w") as f:
        for index, frame in enumerate(container.decode(video=0)):
            image = frame.to_ndarray(format="bgr24")
            scores = []
            for face in detector.detect(image):
                crop = align_face(image, face.landmarks, size, margin).crop
                scores.append(float(engine.score_crops(crop[None])[0]))
            f.write(json.dumps({"frame": index, "scores": [round(s, 5) for s in scores]}) + "\n")


# --- the default clip -------------------------------------------------------------------------------

def make_default_clip(path: Path, per_video: int = 60, max_videos: int = 10) -> Path | None:
    """A 1280x720 30 fps H.264 clip from the real videos in ../shared/data (None when they are missing)."""
    if path.exists():
        return path
    videos = sorted(DATA_VIDEOS.glob("*.mp4"))[:max_videos] if DATA_VIDEOS.is_dir() else []
    if not videos:
        return None
    import av
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for video in videos:
            with av.open(str(video)) as src:
                for i, frame in enumerate(src.decode(video=0)):
                    if i >= per_video:
                        break
                    img = frame.to_ndarray(format="bgr24")
                    h, w = img.shape[:2]
                    s = min(1280 / w, 720 / h)
                    nw, nh = int(w * s) // 2 * 2, int(h * s) // 2 * 2
                    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
                    canvas = np.full((720, 1280, 3), 40, np.uint8)
                    y, x = (720 - nh) // 2, (1280 - nw) // 2
                    canvas[y : y + nh, x : x + nw] = img
                    for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="bgr24")):
                        out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


# --- running and timing -----------------------------------------------------------------------------

def timed(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd` to completion: wall seconds from start to exit, child CPU seconds, load average around it."""
    env = {**os.environ, "SWAPWATCH_PROGRESS": "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load_before": load}


def frame_scores_sequential(path: Path) -> dict[int, list[float]]:
    return {r["frame"]: r["scores"] for r in map(json.loads, path.read_text().splitlines())}


def frame_scores_scan(path: Path) -> dict[int, list[float]]:
    (row,) = [json.loads(line) for line in path.read_text().splitlines()]
    if row.get("error"):
        raise SystemExit(f"scan could not read the clip: {row['error']}")
    return {d["frame"]: [f["score"] for f in d["faces"]] for d in row.get("detail", [])}


def compare(reference: dict[int, list[float]], other: dict[int, list[float]]) -> dict[str, Any]:
    """Per-frame agreement: max |diff| of the frame's top face score, mean |diff|, frames whose face count differs."""
    frames = sorted(set(reference) | set(other))
    diffs, count_mismatch = [], 0
    ref_top, oth_top = [], []
    for i in frames:
        a, b = reference.get(i, []), other.get(i, [])
        if len(a) != len(b):
            count_mismatch += 1
        if a and b:
            diffs.append(abs(max(a) - max(b)))
        if a:
            ref_top.append(max(a))
        if b:
            oth_top.append(max(b))

    def mean(xs: list[float]) -> float:
        return statistics.fmean(xs) if xs else float("nan")

    return {
        "frames": len(frames),
        "frames_face_count_differs": count_mismatch,
        "max_abs_diff": max(diffs) if diffs else 0.0,
        "mean_abs_diff": mean(diffs),
        "p95_abs_diff": sorted(diffs)[int(0.95 * (len(diffs) - 1))] if diffs else 0.0,
        "video_score_ref": round(mean(ref_top), 5),
        "video_score": round(mean(oth_top), 5),
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    med = [summary["variants"][n]["median_wall_s"] for n in names]
    lo = [m - summary["variants"][n]["min_wall_s"] for n, m in zip(names, med)]
    hi = [summary["variants"][n]["max_wall_s"] - m for n, m in zip(names, med)]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["#999999" if n.startswith("sequential") else "#2a7ab9" for n in names]
    bars = ax.bar(names, med, yerr=[lo, hi], capsize=4, color=colors)
    for bar, n in zip(bars, names):
        v = summary["variants"][n]
        ax.annotate(f"{v['median_wall_s']:.1f} s\n{v['fps']:.0f} fps\nx{v['speedup']:.2f}",
                    (bar.get_x() + bar.get_width() / 2, v["max_wall_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("whole process, seconds (median; bars: min-max)")
    ax.set_title(f"{summary['clip_name']}: {summary['frames']} frames, {summary['repeats']} alternating repeats")
    ax.set_ylim(0, max(summary["variants"][n]["max_wall_s"] for n in names) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip", nargs="?", type=Path, help="video to scan (default: a 720p clip made from ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("runs/scan-bench"), help="folder for results.json, the PNG and outputs")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--detect-every", type=int, action="append", default=None, metavar="N",
                   help="also run `swapwatch scan --detect-every N` (repeatable; default: 1, i.e. detection on every frame)")
    p.add_argument("--sequential", action="store_true", help=argparse.SUPPRESS)  # internal: run loop (a)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--scores", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.detect_every is None:
        args.detect_every = [1]

    if args.sequential:
        sequential(args.clip, args.threads, args.scores)
        return 0

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    clip = args.clip or make_default_clip(out / "clip_720p.mp4")
    if clip is None:
        print(f"scan_vs_sequential: skipped: no clip given and no videos in {DATA_VIDEOS}", file=sys.stderr)
        return 0
    if not clip.is_file():
        print(f"scan_vs_sequential: {clip}: no such file", file=sys.stderr)
        return 2

    py = sys.executable
    me = str(Path(__file__).resolve())
    variants: dict[str, list[str]] = {
        "sequential-1t": [py, me, str(clip), "--sequential", "--threads", "1", "--scores", str(out / "sequential-1t.jsonl")],
        "sequential-2t": [py, me, str(clip), "--sequential", "--threads", "2", "--scores", str(out / "sequential-2t.jsonl")],
        "scan": [py, "-m", "swapwatch", "scan", str(clip), "--out", str(out / "scan.jsonl"),
                 "--stats", str(out / "scan.stats.json")],
    }
    for n in args.detect_every:
        name = f"scan-detect{n}"
        variants[name] = [py, "-m", "swapwatch", "scan", str(clip), "--detect-every", str(n),
                          "--out", str(out / f"{name}.jsonl"), "--stats", str(out / f"{name}.stats.json")]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    total = args.repeats * len(variants)
    done = 0
    for r in range(args.repeats):
        for name, cmd in variants.items():
            res = timed(cmd)
            runs[name].append(res)
            done += 1
            print(f"[{done}/{total}] round {r + 1} {name:14s} {res['wall_s']:6.2f} s  cpu {res['cpu_s']:6.2f} s  "
                  f"load {res['load_before']:.2f}", file=sys.stderr, flush=True)

    ref_scores = {n: frame_scores_sequential(out / f"{n}.jsonl") for n in ("sequential-1t", "sequential-2t")}
    frames = len(ref_scores["sequential-1t"])
    seq_med = {n: statistics.median(x["wall_s"] for x in runs[n]) for n in ref_scores}
    baseline = min(seq_med, key=seq_med.get)
    summary: dict[str, Any] = {
        "clip": str(clip), "clip_name": clip.name, "frames": frames, "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "baseline": baseline, "variants": {},
        "note": "whole processes, alternating; other processes shared the 2 cores (see load_before per run)",
    }
    for name, cmd in variants.items():
        walls = [x["wall_s"] for x in runs[name]]
        med = statistics.median(walls)
        entry: dict[str, Any] = {
            "command": " ".join(cmd),
            "runs": runs[name],
            "median_wall_s": med, "min_wall_s": min(walls), "max_wall_s": max(walls),
            "median_cpu_s": statistics.median(x["cpu_s"] for x in runs[name]),
            "fps": frames / med,
            "speedup": seq_med[baseline] / med,
        }
        scores = ref_scores[name] if name in ref_scores else frame_scores_scan(out / f"{name}.jsonl")
        entry["agreement_with_baseline"] = compare(ref_scores[baseline], scores)
        stats = out / f"{name}.stats.json"
        if stats.exists():
            entry["scan_stats"] = json.loads(stats.read_text())
        summary["variants"][name] = entry
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "scan_vs_sequential.png")

    print(f"\n{clip.name}: {frames} frames, {args.repeats} alternating repeats, baseline = {baseline} "
          f"(the faster sequential thread setting)")
    print(f"{'variant':15s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'cpu s':>7s} {'fps':>7s} {'speed-up':>9s}"
          f" {'max |d|':>9s} {'mean |d|':>9s} {'video score':>12s}")
    for name, e in summary["variants"].items():
        a = e["agreement_with_baseline"]
        print(f"{name:15s} {e['median_wall_s']:9.2f} {e['min_wall_s']:7.2f} {e['max_wall_s']:7.2f} "
              f"{e['median_cpu_s']:7.2f} {e['fps']:7.1f} {e['speedup']:8.2f}x {a['max_abs_diff']:9.5f} "
              f"{a['mean_abs_diff']:9.5f} {a['video_score']:12.5f}")
    print(f"\nwrote {out / 'results.json'} and {out / 'scan_vs_sequential.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
