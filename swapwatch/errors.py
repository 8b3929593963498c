"""Errors every part of swapwatch raises. Each one names the file, URL or field at fault.

The CLI maps them to exit codes: ConfigError -> 2 (bad usage or config), everything else -> 1.
"""

from __future__ import annotations

from pathlib import Path


class SwapwatchError(Exception):
    """Base class: a failure with a message a user can act on."""


class ConfigError(SwapwatchError):
    """A config file or option is wrong; the message names the field."""


class MediaError(SwapwatchError):
    """An image or video could not be read or decoded."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelFileError(SwapwatchError):
    """A model file or folder is missing, unreadable or not what was expected."""

    def __init__(self, path: str | Path, expected: str) -> None:
        self.path = str(path)
        self.expected = expected
        super().__init__(f"{path}: {expected}")


class DatasetLayoutError(SwapwatchError):
    """A dataset root does not have the layout its format requires."""

    def __init__(self, root: str | Path, fmt: str, problem: str) -> None:
        self.root = str(root)
        self.format = fmt
        super().__init__(f"{root}: not a valid {fmt} layout: {problem}")


class NoFaceError(SwapwatchError):
    """No face was found where one was required."""
