"""Which CUDA GPU this machine has: name and compute capability, through torch or nvidia-smi."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess


def nvidia_smi_gpu(device: int = 0) -> tuple[str, str] | None:
    """(name, compute capability) from nvidia-smi, or None: a torch-free probe for the monitor install."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader,nounits", "-i", str(device)],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    parts = [p.strip() for p in out.splitlines()[0].split(",")] if out else []
    return (parts[0], parts[1]) if len(parts) == 2 else None


def cuda_gpu(device: int = 0) -> tuple[str, str] | None:
    """(name, 'major.minor') of CUDA device `device`, or None when there is no usable CUDA GPU.

    Uses torch when it is installed (the [gpu] and [train] installs), else nvidia-smi, so the light
    monitor install can still probe. Importing torch costs ~1 s, so callers probe only when they must.
    """
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available() or device >= torch.cuda.device_count():
            return None
        major, minor = torch.cuda.get_device_capability(device)
        return torch.cuda.get_device_name(device), f"{major}.{minor}"
    return nvidia_smi_gpu(device)
