"""`swapwatch scan PATH... --out results.jsonl`: offline scoring of images, videos and folders.

One JSON object per media file, in input order, written as soon as the file is done: path, score
(P(file contains a fake face)), faces, and per-face / per-frame detail. Image score = the highest face
score; video score = the mean over frames with a face of each frame's highest face score (the
video-level rule the evaluation uses). No face -> score null + reason; an unreadable file -> its
`error`, and the scan goes on. Decoding, detection and inference run as a pipeline
(swapwatch/stream/scan/scanner.py); a progress bar goes to stderr when it is a terminal.

Exit codes (EXIT_CODES, also in `--help`): 0 every input was read (with or without faces); 1 no input
could be read; 3 some inputs could not be read (EXIT_PARTIAL: the others were scored, and each
unreadable one is named once on stderr as it comes); 2 bad options, or nothing to scan. A file without
a face was read: it is not a failure.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from swapwatch.stream.scan.cadence import SCAN_DETECT_EVERY

if TYPE_CHECKING:
    from swapwatch.engine.base import Engine

EXIT_PARTIAL = 3
"""Some inputs could not be read, others could (2 is taken: argparse and config errors)."""
EXIT_CODES = (
    f"exit codes: 0 every input was read; 1 no input could be read; {EXIT_PARTIAL} some inputs could not be read "
    "(each named on stderr, the others scored); 2 bad options or nothing to scan"
)


def _batch(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXIT_CODES
    p.add_argument("paths", nargs="*", type=Path, help="images, videos or folders (searched recursively)")
    p.add_argument("--samples", action="store_true", help="also scan the real face photos that installed packages ship")
    p.add_argument("--out", type=Path, help="write JSON Lines here (default: print to stdout)")
    p.add_argument("--model", type=Path, help="exported .onnx with its sidecar (default: the embedded model)")
    p.add_argument("--engine", metavar="URL",
                   help="run the detector on NVIDIA Triton Inference Server: triton://HOST:PORT/MODEL[/VERSION] (gRPC; "
                   "needs the [cluster] extra; model and sidecar come from the server, so no --model; docs/triton.md)")
    p.add_argument("--every", type=int, default=1, help="score every Nth video frame (default 1: every frame)")
    p.add_argument("--max-frames", type=int, help="stop after this many scored frames per video")
    p.add_argument("--crops", action="store_true", help="treat images as already aligned face crops")
    p.add_argument(
        "--detect-every", type=int, default=None, metavar="N",
        help="run the face detector on every Nth scored frame and interpolate faces between two agreeing "
        f"detections (default {SCAN_DETECT_EVERY}; 1 detects on every frame: slower, the exact per-frame scores; "
        "docs/scan.md)",
    )
    p.add_argument(
        "--batch", type=_batch, default=None, metavar="N|auto",
        help="crops per inference call, across frames and files (default 4; 'auto' measures the engine first)",
    )
    p.add_argument("--workers", type=int, help="face-stage worker threads: alignment, and detection too with --detect-every 1 (default 2)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per session (default 1)")
    p.add_argument("--stats", type=Path, help="write the run's counters (frames, faces, batches, peak queue sizes) as JSON")


def _remote_engine(args: argparse.Namespace) -> Engine | None:
    """`--engine triton://...`: the engine on the Triton server (None: the local ONNX Runtime one)."""
    if args.engine is None:
        return None
    from swapwatch.engine.select import load_engine
    from swapwatch.engine.triton_runtime import parse_triton_url
    from swapwatch.errors import ConfigError

    url = parse_triton_url(args.engine, "--engine")
    if args.model is not None:
        raise ConfigError(f"--engine {url}: the model and its sidecar come from the server; leave out --model")
    return load_engine(str(url), "triton")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from contextlib import ExitStack

    from swapwatch.stream.scan.progress import ScanProgress
    from swapwatch.stream.scan.scanner import Scanner, expand_paths

    paths = list(args.paths)
    if args.samples:
        from swapwatch.samples import sample_face_images

        paths.extend(Path(p) for p in sample_face_images().values())
    files = expand_paths(paths)
    if not files:
        print("swapwatch scan: no images or videos found in the given paths", file=sys.stderr)
        return 2
    options = {"every": args.every, "max_frames": args.max_frames, "crops": args.crops,
               "workers": args.workers, "threads": args.threads}
    if args.detect_every is not None:
        options["detect_every"] = args.detect_every
    if args.batch is not None:
        options["batch"] = args.batch
    engine = _remote_engine(args)
    scanner = Scanner(model=args.model, engine=engine, **options)
    failures = 0
    with ExitStack() as stack:
        if engine is not None:
            stack.callback(engine.close)
        out = None
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(args.out, "w"))
        progress = stack.enter_context(ScanProgress(len(files)))
        for result in scanner.scan_paths(files, progress):
            if result.get("error") is not None:
                failures += 1
                print(f"swapwatch scan: cannot read {result['path']}: {result['error']}", file=sys.stderr)
            # sys.stdout is looked up each time: while the bar shows, rich swaps in a proxy that prints
            # above the bar
            target = out if out is not None else sys.stdout
            target.write(json.dumps(result) + "\n")
            target.flush()
    if args.stats:
        args.stats.write_text(json.dumps(scanner.stats.to_dict(), indent=2) + "\n")
    if args.out:
        print(f"scanned {len(files)} file(s) -> {args.out}" + (f" ({failures} unreadable)" if failures else ""))
    if failures == len(files):
        print(f"swapwatch scan: none of the {len(files)} input(s) could be read (exit 1)", file=sys.stderr)
        return 1
    if failures:
        print(f"swapwatch scan: {failures} of {len(files)} inputs could not be read, the other "
              f"{len(files) - failures} were scored (exit {EXIT_PARTIAL})", file=sys.stderr)
        return EXIT_PARTIAL
    return 0
