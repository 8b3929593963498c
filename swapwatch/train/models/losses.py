"""Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020).

Formula (the "L_out" variant of the paper, averaging over positives outside the log). With z_i the
L2-normalised embedding of sample i, tau the temperature, P(i) = {p != i : y_p = y_i} and
A(i) = {a != i}:

    L_i  = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )
    loss = mean of L_i over the anchors i with |P(i)| >= 1

Anchors with no positive in the batch are ignored; a batch where no anchor has a positive returns a
zero that is still attached to the graph (backward works and gives zero gradients).

Binary mode (default): labels are mapped to (label != 0), so real = 0 and every fake = 1 whatever
method made it. This is AIRL's choice: it pulls all manipulations into one cluster away from real
faces instead of learning one cluster per generator, which would reward memorising known methods and
hurt generalisation to unseen ones. Set binary=False to use the labels as given.

Numerics: logits are shifted by their per-row maximum over a != i before exp (the shift cancels in the
ratio), so the denominator is >= 1 and nothing overflows even for tau = 0.01.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SupConLoss(nn.Module):
    """Supervised contrastive loss over (B, D) embeddings and (B,) integer labels; see module docstring."""

    def __init__(self, temperature: float = 0.07, binary: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.binary = binary

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be (B, D), got {tuple(embeddings.shape)}")
        labels = labels.reshape(-1)
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
        if self.binary:
            labels = labels != 0
        n = embeddings.shape[0]
        # Half-precision inputs are upcast (exp/log of logits up to 1/tau); float64 stays float64.
        low_precision = embeddings.dtype in (torch.float16, torch.bfloat16)
        z = F.normalize(embeddings.float() if low_precision else embeddings, dim=1)
        logits = z @ z.t() / self.temperature

        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        positive = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
        n_pos = positive.sum(dim=1)
        has_pos = n_pos > 0
        if not bool(has_pos.any()):
            return embeddings.sum() * 0.0

        others = logits.masked_fill(eye, float("-inf"))
        row_max = others.max(dim=1, keepdim=True).values.detach()
        shifted = others - row_max  # exp(-inf) = 0 removes a = i from the denominator
        log_denominator = torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
        log_prob = shifted - log_denominator
        # where(), not multiplication by the mask: the diagonal holds -inf and -inf * 0 is NaN.
        pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos].to(log_prob.dtype)
        return per_anchor.mean()
