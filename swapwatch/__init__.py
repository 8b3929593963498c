"""swapwatch: a real-time deepfake monitor for live video, and the toolkit that trains its detectors."""

__version__ = "0.1.0"
