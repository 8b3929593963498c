"""How often `swapwatch scan` runs the face detector: the defaults, defined once for the scanner, its
stages, `swapwatch scan` and `swapwatch eval --genuine` (the live monitor's is `LIVE_DETECT_EVERY`).

Kept apart from scanner.py so the commands can show the default in `--help` without importing the
scanner's engine stack.
"""

SCAN_DETECT_EVERY = 6
"""Detector cadence of a scan: 6 keeps per-frame score drift under the model's own frame-to-frame jitter
on the benchmark clip while cutting detections ~5x (docs/scan.md has the table for N = 1, 4, 5, 6, 8).
Recorded files can afford interpolating between two later detections; the live monitor cannot wait for
the next one, so it detects more often."""

DETECT_EVERY_FRAME = 1
"""No interpolation: the detector runs on every frame, giving exactly a plain loop's scores. The cadence
of a still image, and of a stage built without one."""
