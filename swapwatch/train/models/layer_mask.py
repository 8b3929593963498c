"""MASM's selective layer mask: train only the artifact subspaces whose gradients carry a steady signal.

Unit of selection: one (SVD layer, artifact subspace j) pair, i.e. the parameters (U_j, S_j, V_j).
For every parameter tensor p of a unit the mask keeps exponential moving averages of the gradient and
of its square, m = EMA(g), v = EMA(g^2) (elementwise, bias-corrected like Adam), and scores the tensor by

    snr(p) = ||m|| / sqrt(sum(v - m^2) + eps)

i.e. the energy of the mean gradient over the summed per-element gradient variance (a ratio of sums).
A unit's SNR is the mean of its three tensors' scores.

Why this form: a ratio of sums is invariant to rescaling a tensor's gradient (U's gradients scale with S,
S's with U and V, and a GradScaler multiplies everything), it does not blow up on elements whose variance
happens to be ~0 (an elementwise |m|/sigma average would), and averaging the three tensors' scores keeps
the S vector (k elements) from being drowned by U (m x k elements). High SNR = the subspace is being
pushed consistently in one direction = it is learning something; low SNR = it is mostly fitting noise.

Schedule: for `warmup_steps` every unit is active (statistics accumulate). At step == warmup_steps and
then every `interval` steps the mask re-selects: the top `active_fraction` of units by SNR (rounded, at
least 1), or, when `snr_threshold` is set, every unit at or above it (at least the best one). Between
re-selections the active set is fixed.

`apply(step)` is meant for Detector.on_after_backward: it updates the statistics from the current `.grad`
of every unit (inactive ones too, so they can be re-activated later), then sets `.grad = None` on the
parameters of inactive units. torch's AdamW/Adam/SGD skip parameters whose grad is None, so an inactive
subspace gets no update at all: no gradient step, no weight decay, no moment update. Steps whose
gradients are not finite (AMP overflow) leave the statistics untouched.

All state (active flags, scores, moving averages, update count) lives in persistent buffers, so a training
checkpoint resumes the mask exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self, overload

import torch
from pydantic import Field
from torch import nn

from swapwatch.config import StrictModel
from swapwatch.train.models.svd_layers import SVDLayer

__all__ = ["LayerMask", "LayerMaskConfig"]


class LayerMaskConfig(StrictModel):
    """When and how the mask picks the subspaces that train."""

    enabled: bool = Field(True, description="Off: every subspace always trains (the ablation without the mask).")
    warmup_steps: int = Field(
        200, ge=0, description="Steps with every subspace active while gradient statistics accumulate."
    )
    interval: int = Field(100, ge=1, description="Steps between re-selections after warmup.")
    active_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="Fraction of (layer, subspace) units kept active, ranked by SNR."
    )
    snr_threshold: float | None = Field(
        None, ge=0.0, description="If set, activate units with SNR >= this instead of a fixed fraction."
    )
    ema: float = Field(
        0.95,
        ge=0.0,
        lt=1.0,
        description="Decay of the gradient moving averages (0.95 ~ a 20-step window, well inside `interval`).",
    )
    eps: float = Field(1e-20, gt=0.0, description="Added to the variance sum before the square root.")


class LayerMask(nn.Module):
    """Gradient-SNR gate over the artifact subspaces of a set of SVD layers.

    Buffers: `active` (N,) bool, `snr` (N,) float, `num_updates` () long, and per unit and tensor
    `ema_g_{i}_{t}` / `ema_g2_{i}_{t}`. The layers themselves are held in a plain list (not registered),
    so the mask adds no parameters and no duplicate state-dict entries to its owner.
    """

    # Declared for the type checker: registered in __init__ (buffers go through nn.Module.__getattr__).
    active: torch.Tensor
    snr: torch.Tensor
    num_updates: torch.Tensor

    def __init__(self, layers: Sequence[tuple[str, SVDLayer]], cfg: LayerMaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._layers: list[tuple[str, SVDLayer]] = list(layers)
        self.units: list[tuple[str, int]] = []
        for name, layer in self._layers:
            for j in range(layer.num_subspaces):
                self.units.append((name, j))
        n = len(self.units)
        ref = next((layer.weight_frozen for _, layer in self._layers), torch.zeros(()))
        self.register_buffer("active", torch.ones(n, dtype=torch.bool, device=ref.device))
        self.register_buffer("snr", torch.zeros(n, dtype=torch.float32, device=ref.device))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long, device=ref.device))
        for i, params in enumerate(self._unit_params()):
            for t, p in enumerate(params):
                self.register_buffer(f"ema_g_{i}_{t}", torch.zeros_like(p, dtype=torch.float32))
                self.register_buffer(f"ema_g2_{i}_{t}", torch.zeros_like(p, dtype=torch.float32))

    def _unit_params(self) -> list[tuple[nn.Parameter, ...]]:
        out: list[tuple[nn.Parameter, ...]] = []
        for _, layer in self._layers:
            for j in range(layer.num_subspaces):
                out.append(layer.subspace_parameters(j))
        return out

    def __len__(self) -> int:
        return len(self.units)

    @torch.no_grad()
    def update_statistics(self) -> None:
        """Fold the current gradients into the moving averages and recompute every unit's SNR.

        Vectorised so that a GPU run synchronises once per call, not once per tensor.
        """
        unit_params = self._unit_params()
        grads = [g for params in unit_params for g in (p.grad for p in params)]
        present = [g for g in grads if g is not None]
        if not present:
            return
        finite = torch.stack([torch.isfinite(g).all() for g in present]).all()
        if not bool(finite):
            return
        beta = self.cfg.ema
        self.num_updates += 1
        correction = 1.0 - beta ** int(self.num_updates)
        signal_sq: list[torch.Tensor] = []
        var_sum: list[torch.Tensor] = []
        counts: list[int] = []
        for i, params in enumerate(unit_params):
            counts.append(len(params))
            for t, p in enumerate(params):
                m = getattr(self, f"ema_g_{i}_{t}")
                v = getattr(self, f"ema_g2_{i}_{t}")
                if p.grad is not None:
                    g32 = p.grad.detach().float()
                    m.mul_(beta).add_(g32, alpha=1.0 - beta)
                    v.mul_(beta).addcmul_(g32, g32, value=1.0 - beta)
                m_hat = m / correction
                signal_sq.append(m_hat.square().sum())
                var_sum.append((v / correction - m_hat.square()).clamp_min(0.0).sum())
        per_tensor = torch.stack(signal_sq).sqrt() / (torch.stack(var_sum) + self.cfg.eps).sqrt()
        per_tensor = per_tensor.cpu()
        scores = torch.zeros(len(unit_params), dtype=torch.float32)
        pos = 0
        for i, c in enumerate(counts):
            scores[i] = per_tensor[pos : pos + c].mean()
            pos += c
        self.snr.copy_(scores.to(self.snr.device))

    @torch.no_grad()
    def reselect(self) -> None:
        """Set `active` from the current SNR scores (top fraction, or threshold)."""
        n = len(self.units)
        if n == 0:
            return
        order = torch.argsort(self.snr.cpu(), descending=True, stable=True)
        new = torch.zeros(n, dtype=torch.bool)
        if self.cfg.snr_threshold is not None:
            new = self.snr.cpu() >= self.cfg.snr_threshold
            if not bool(new.any()):
                new[order[0]] = True
        else:
            count = min(n, max(1, round(self.cfg.active_fraction * n)))
            new[order[:count]] = True
        self.active.copy_(new.to(self.active.device))

    def is_due(self, step: int) -> bool:
        """True on the steps where the mask re-selects: warmup_steps, then every `interval` after it."""
        w = self.cfg.warmup_steps
        return step >= w and (step - w) % self.cfg.interval == 0

    @overload
    def apply(self, fn: Callable[[nn.Module], None]) -> Self: ...

    @overload
    def apply(self, step: int, /) -> None: ...

    def apply(self, fn: Callable[[nn.Module], None] | int) -> Self | None:
        """`apply(step)`: update statistics, re-select when due, then drop the gradients of inactive units
        (grad=None).

        `apply(fn)` with a function is nn.Module.apply: the owner's `.apply(fn)` reaches the mask as one of
        its children, and must not be taken for a training step.
        """
        if callable(fn):
            return super().apply(fn)
        self._gate(fn)
        return None

    @torch.no_grad()
    def _gate(self, step: int) -> None:
        if not self.cfg.enabled or not self.units:
            return
        self.update_statistics()
        if step < self.cfg.warmup_steps:
            self.active.fill_(True)
            return
        if self.is_due(step):
            self.reselect()
        for is_active, params in zip(self.active.tolist(), self._unit_params()):
            if not is_active:
                for p in params:
                    p.grad = None

    def state(self) -> dict[str, list[bool]]:
        """Layer name -> active flag per subspace, for logging."""
        out: dict[str, list[bool]] = {name: [] for name, _ in self._layers}
        for (name, _), a in zip(self.units, self.active.tolist()):
            out[name].append(bool(a))
        return out

    def active_layers(self) -> list[str]:
        """Names of the layers with at least one active subspace."""
        return [name for name, flags in self.state().items() if any(flags)]

    def summary(self) -> dict[str, float]:
        """Scalars for a training log: active units/layers and the SNR spread."""
        n = len(self.units)
        if n == 0:
            return {"mask/units": 0.0}
        snr = self.snr.float().cpu()
        return {
            "mask/units": float(n),
            "mask/active_units": float(self.active.sum()),
            "mask/active_layers": float(len(self.active_layers())),
            "mask/snr_mean": float(snr.mean()),
            "mask/snr_max": float(snr.max()),
            "mask/snr_min": float(snr.min()),
        }
