"""Reading media and opening ONNX Runtime sessions, shared by the monitor, the scanner, calibration and training.

- `files`: which files count as images or videos, and finding them under a folder.
- `image`: `read_image`, a still image as 8-bit BGR.
- `video`: opening, decoding and sampling videos with PyAV; `to_bgr` for a decoded frame.
- `onnx_session`: the one way to open an ONNX Runtime session.

Nothing here imports torch or any swapwatch module above `swapwatch.errors`, so the live monitor can
read media without loading the training package. Import the submodule you need: this package
re-exports nothing, so reading an image does not load onnxruntime.
"""
