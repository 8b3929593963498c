"""`swapwatch scan PATH... --out results.jsonl`: offline scoring of images, videos and folders.

One JSON object per media file: path, score (P(file contains a fake face)), faces, and per-face /
per-frame detail. Image score = the highest face score; video score = the mean over scored frames of
each frame's highest face score (the video-level rule the evaluation uses). No face -> score null + reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", type=Path, help="images, videos or folders (searched recursively)")
    p.add_argument("--samples", action="store_true", help="also scan the real face photos that installed packages ship")
    p.add_argument("--out", type=Path, help="write JSON Lines here (default: print to stdout)")
    p.add_argument("--model", type=Path, help="exported .onnx with its sidecar (default: the embedded model)")
    p.add_argument("--every", type=int, default=1, help="score every Nth video frame (default 1: every frame)")
    p.add_argument("--max-frames", type=int, help="stop after this many scored frames per video")
    p.add_argument("--crops", action="store_true", help="treat images as already aligned face crops")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per session (default 1)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from rich.progress import track

    from swapwatch.stream.scanner import Scanner, expand_paths

    paths = list(args.paths)
    if args.samples:
        from swapwatch.samples import sample_face_images

        paths.extend(sample_face_images().values())
    files = expand_paths(paths)
    if not files:
        print("swapwatch scan: no images or videos found in the given paths", file=sys.stderr)
        return 2
    scanner = Scanner(model=args.model, threads=args.threads, every=args.every, max_frames=args.max_frames)
    out = open(args.out, "w") if args.out else sys.stdout
    failures = 0
    try:
        for path in track(files, description="scanning", disable=args.out is None or len(files) < 2):
            result = scanner.scan(path, crops=args.crops)
            failures += result.get("error") is not None
            out.write(json.dumps(result) + "\n")
            out.flush()
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"scanned {len(files)} file(s) -> {args.out}" + (f" ({failures} unreadable)" if failures else ""))
    return 0
