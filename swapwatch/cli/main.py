"""The `swapwatch` console command.

Each subcommand lives in its own module and is imported only when it runs, so `swapwatch --help` and
the monitor start quickly without torch. Exit codes: 0 success, 2 bad usage or config, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Collection, Sequence

from swapwatch import __version__
from swapwatch.errors import ConfigError, SwapwatchError

# name -> (module implementing `add_arguments(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("swapwatch.cli.demo_command", "build a clip with a face swap in it and watch it with the monitor, offline"),
    "watch": ("swapwatch.cli.watch_command", "monitor streams and files for deepfaked faces; events to JSONL/webhooks"),
    "serve": (
        "swapwatch.cli.serve_command",
        "run the monitor as a server: REST API, live dashboard, WebRTC/WHIP ingest, /metrics",
    ),
    "publish": ("swapwatch.cli.publish_command", "publish a video file to a WHIP endpoint (WebRTC), like a camera in a call"),
    "scan": ("swapwatch.cli.scan_command", "score the faces in images, videos and folders"),
    "train": ("swapwatch.cli.train_command", "train a MASM or AIRL detector from a YAML recipe"),
    "eval": ("swapwatch.cli.eval_command", "evaluate a checkpoint or ONNX model: AUC, EER, AP, robustness"),
    "export": ("swapwatch.cli.export_command", "export a checkpoint to ONNX / TensorRT with a metadata sidecar"),
    "calibrate": (
        "swapwatch.cli.calibrate_command",
        "INT8/FP16 ONNX variants and score calibration with false-positive-rate thresholds",
    ),
    "bench": ("swapwatch.cli.bench_command",
              "engine throughput per batch size; with SOURCE files, live glass-to-score latency of the monitor"),
}


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` runs: its first token that is not an option (the top-level options take no
    value), when that names a command."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(only: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The full command line; `only` limits which commands' modules are imported to register their
    arguments (the others keep their name and help), None means all of them."""
    parser = argparse.ArgumentParser(
        prog="swapwatch",
        description="Real-time deepfake monitor for live video, and the toolkit that trains its detectors.",
    )
    parser.add_argument("--version", action="version", version=f"swapwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if only is None or name in only:
            # Registering arguments imports only the command module; heavy imports happen inside run().
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the command that runs is imported: `swapwatch scan` must not load the training package
    # through `train`'s or `eval`'s argument definitions.
    command = command_in(argv)
    parser = build_parser(only=() if command is None else (command,))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except ConfigError as err:
        print(f"swapwatch {args.command}: {err}", file=sys.stderr)
        return 2
    except SwapwatchError as err:
        print(f"swapwatch {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"swapwatch {args.command}: interrupted", file=sys.stderr)
        return 130
