"""The restorer network of the `restored` pseudo-fakes (restorer.py): its layers, training and loading.

Kept apart from restorer.py so that making pseudo-fakes with the other recipes (the demo clip, tests)
never imports torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from swapwatch.train.pseudofakes.restorer import RestorerConfig, degrade_input

log = logging.getLogger(__name__)


def _conv(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 if stride == 1 else 1), nn.LeakyReLU(0.1, inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.1, inplace=True))


class RestorerNet(nn.Module):
    """Encoder-decoder without skips: BGR uint8-range input (N, 3, H, W), H and W multiples of 4, same-size output."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.width = w
        self.encode = nn.Sequential(_conv(3, w, 3, 1), _conv(w, 2 * w, 4, 2), _conv(2 * w, 4 * w, 4, 2),
                                    _conv(4 * w, 4 * w, 3, 1))
        self.decode = nn.Sequential(_up(4 * w, 2 * w), _up(2 * w, w), nn.Conv2d(w, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x / 127.5 - 1.0))) * 255.0


def run_net(net: RestorerNet, image: np.ndarray) -> np.ndarray:
    """One BGR uint8 image (sides multiples of DOWN) through the network, uint8 out."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
        y = net(x)[0].permute(1, 2, 0).numpy()
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def train_restorer(
    read_crop: Callable[[int], np.ndarray],
    n_crops: int,
    cfg: RestorerConfig,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> RestorerNet:
    """Train `RestorerNet` to map degraded crops back to the crops; `read_crop(i)` gives crop i (BGR uint8).

    Saves to `cfg.weights` (with the width, so `load_restorer` rebuilds it) and returns the network.
    """
    if n_crops < 1:
        raise ValueError("training the restorer needs at least one real crop")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = RestorerNet(cfg.width)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps)
    s = cfg.train_size
    for step in range(1, cfg.train_steps + 1):
        targets, inputs = [], []
        for i in rng.integers(0, n_crops, cfg.train_batch):
            crop = cv2.resize(read_crop(int(i)), (s, s), interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            targets.append(crop)
            inputs.append(degrade_input(np.ascontiguousarray(crop), rng))
        x = torch.from_numpy(np.stack(inputs).transpose(0, 3, 1, 2).copy()).float()
        t = torch.from_numpy(np.stack(targets).transpose(0, 3, 1, 2).copy()).float()
        y = net(x)
        # L1 on pixels and on their gradients: the gradient term keeps edges crisp, as restorers do.
        grad = (y.diff(dim=-1) - t.diff(dim=-1)).abs().mean() + (y.diff(dim=-2) - t.diff(dim=-2)).abs().mean()
        loss = (y - t).abs().mean() + 0.5 * grad
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, loss.item())
    cfg.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"width": cfg.width, "state": net.state_dict(), "steps": cfg.train_steps, "crops": n_crops}, cfg.weights)
    return net.eval()


def load_restorer(path: Path) -> RestorerNet:
    """The network saved by `train_restorer`; a clear error when it is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"restorer weights not found: {path} (swapwatch train trains them when a recipe uses 'restored')")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = RestorerNet(int(state["width"]))
    net.load_state_dict(state["state"])
    return net.eval()


def ensure_restorer(cfg: RestorerConfig, crops: Sequence[Path], read: Callable[[Path], np.ndarray], seed: int) -> None:
    """Train the restorer from `crops` unless `cfg.weights` already exists (logging progress)."""
    if cfg.weights.is_file():
        log.info("restorer: using %s", cfg.weights)
        return
    log.info("restorer: training %d steps on %d real crops -> %s", cfg.train_steps, len(crops), cfg.weights)
    start = time.monotonic()
    every = max(1, cfg.train_steps // 10)

    def report(step: int, loss: float) -> None:
        if step % every == 0 or step == cfg.train_steps:
            log.info("restorer step %d/%d  L1 %.2f  (%.0f s)", step, cfg.train_steps, loss, time.monotonic() - start)

    train_restorer(lambda i: read(crops[i]), len(crops), cfg, seed, report)
