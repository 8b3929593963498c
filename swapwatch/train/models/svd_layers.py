"""SVD-split layers for MASM: a frozen semantic subspace plus K learnable artifact subspaces.

A pretrained weight W (m x n; a conv weight is read as out x (in/groups * kh * kw)) is factorised once,
W = U diag(s) V^T with s sorted descending, and its singular triplets are split into three bands:

* principal (top `r_p` triplets): the "semantic" subspace. Frozen. Its bases U_p, V_p are kept as
  buffers because the orthogonality loss pushes the artifact bases away from them.
* residual (the middle triplets, possibly none): frozen too; it only exists so that the effective weight
  equals W exactly when `principal_rank` is set below "everything else".
* artifact subspaces (the K*k smallest triplets): K groups of k triplets, each a learnable
  (U_j (m x k), S_j (k), V_j (n x k)), initialised to their SVD values. Subspace 0 holds the largest
  of these tail singular values, subspace K-1 the smallest.

The effective weight is  W_eff = W_frozen + sum_j U_j diag(S_j) V_j^T,  where the frozen part
(principal + residual) is stored as ONE dense buffer computed as W - sum_j U_j diag(S_j) V_j^T in float64.
That makes W_eff == W at init to float rounding regardless of the SVD's own accuracy, and costs one
addmm per forward instead of re-expanding the principal factors.

Defaults and why:
* `principal_rank=None`: everything that is not artifact is "semantic" (the residual band is empty), as in
  Effort-style orthogonal fine-tuning, so the artifact bases are kept orthogonal to all frozen directions.
  An int/fraction shrinks the stored principal basis (memory: U_p, V_p cost (m + n) * r_p floats, up to
  about 2x the layer's own weight for square layers) at the price of not regularising against the middle.
* `num_subspaces=3`, `subspace_rank=4`: 12 learnable directions per layer. The tail of a pretrained
  spectrum carries little of the pretrained function, so moving it cannot wreck semantics; 3 groups give
  the layer mask something to choose between without making each group a single noisy direction.
* `max_artifact_fraction=0.25`: at most a quarter of a layer's rank is learnable; small layers get a
  smaller k (never below 1) and layers too small for even k=1 are left alone (see `plan_ranks`).
* Grouped / depthwise convs are skipped by default (`decompose_grouped=False`): a 3x3 depthwise kernel
  reshapes to C x 9, rank <= 9, so a K-subspace split leaves almost no frozen part, and these layers hold
  ~1-3 % of the parameters of MobileNet-style nets. They stay plain convs (trainable iff the detector's
  `freeze_non_svd` is False).
* The SVD runs in float64 (about 1.6x the float32 time; all attn+mlp layers of ViT-B/16 take ~11 s on
  2 CPU cores, ViT-L/14 ~45-60 s, CenterFace 0.1 s; far less on a GPU) so the stored bases are orthonormal
  to ~1e-15 and the orthogonality loss is ~0 at init. Wide matrices are factored transposed (faster).
* Memory: W_frozen equals the original weight; U_p and V_p add (m + n) * r_p floats (ViT-B/16 attn+mlp
  with the defaults: 800 MB of buffers for 343 MB of weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from swapwatch.config import StrictModel

__all__ = [
    "RankPlan",
    "SVDConfig",
    "SVDConv2d",
    "SVDLayer",
    "SVDLinear",
    "decompose",
    "fold",
    "plan_ranks",
    "svd_layers",
]


class SVDConfig(StrictModel):
    """How each eligible layer is split. See the module docstring for the reasons behind the defaults."""

    principal_rank: int | float | None = Field(
        None,
        gt=0,
        description=(
            "Frozen semantic rank per layer: an int (triplets), a float in (0, 1] (fraction of min(m, n)), "
            "or null for 'every triplet not in an artifact subspace' (no residual band). Always capped so "
            "principal + artifact <= min(m, n)."
        ),
    )
    num_subspaces: int = Field(3, ge=1, le=64, description="K: learnable artifact subspaces per layer.")
    subspace_rank: int | float = Field(
        4,
        gt=0,
        description=(
            "k: rank of each artifact subspace, an int or a float in (0, 1) meaning a fraction of min(m, n) "
            "(at least 1). Reduced on small layers by max_artifact_fraction."
        ),
    )
    max_artifact_fraction: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="Cap on K*k as a fraction of min(m, n); a layer whose cap leaves k < 1 is not decomposed.",
    )
    decompose_grouped: bool = Field(
        False, description="Also split grouped/depthwise convs (weight read as out x (in/groups*kh*kw))."
    )
    train_bias: bool = Field(
        False,
        description=(
            "Whether decomposed layers' biases train. Off by default so the frozen semantic part really is "
            "frozen; biases are not part of any subspace, so the layer mask never gates them."
        ),
    )


@dataclass(frozen=True)
class RankPlan:
    """Ranks of one layer's bands; principal + residual + num_subspaces * subspace_rank == min(m, n)."""

    principal: int
    residual: int
    num_subspaces: int
    subspace_rank: int

    @property
    def artifact(self) -> int:
        return self.num_subspaces * self.subspace_rank


def plan_ranks(m: int, n: int, cfg: SVDConfig) -> RankPlan | None:
    """Split rank min(m, n) into bands, or return None when the layer is too small to split.

    k = cfg.subspace_rank (int, or fraction of min(m, n) rounded, at least 1), then reduced to
    floor(max_artifact_fraction * min(m, n) / K); k < 1 means "skip". The principal band takes
    cfg.principal_rank (capped at what the artifact bands leave) and the rest is residual.
    """
    full = min(m, n)
    K = cfg.num_subspaces
    if isinstance(cfg.subspace_rank, float) and cfg.subspace_rank < 1.0:
        k = max(1, round(cfg.subspace_rank * full))
    else:
        k = int(cfg.subspace_rank)
    k = min(k, int(cfg.max_artifact_fraction * full) // K)
    if k < 1 or K * k >= full:
        return None
    free = full - K * k
    if cfg.principal_rank is None:
        principal = free
    elif isinstance(cfg.principal_rank, float) and cfg.principal_rank <= 1.0:
        principal = min(free, max(1, round(cfg.principal_rank * full)))
    else:
        principal = min(free, max(1, int(cfg.principal_rank)))
    return RankPlan(principal=principal, residual=free - principal, num_subspaces=K, subspace_rank=k)


class SVDLayer(nn.Module):
    """Shared state of SVDLinear/SVDConv2d: the frozen part, the principal bases and K learnable triplets.

    Buffers (persistent, so a checkpoint restores them exactly): `weight_frozen` (m, n),
    `principal_U` (m, r_p), `principal_V` (n, r_p), `init_S` (K, k), `init_norm` (scalar ||W||_F),
    `mean_sq_singular` (scalar mean of s^2, a scale for the spectral loss's denominators).
    Parameters: `U[j]` (m, k), `S[j]` (k,), `V[j]` (n, k) for j < K, and `bias` (kept, trainable per cfg).
    """

    # Declared for the type checker: registered in `_init_split` (buffers go through nn.Module.__getattr__).
    plan: RankPlan
    weight_frozen: torch.Tensor
    principal_U: torch.Tensor
    principal_V: torch.Tensor
    init_S: torch.Tensor
    init_norm: torch.Tensor
    mean_sq_singular: torch.Tensor
    bias: nn.Parameter | None

    def _init_split(
        self, weight2d: torch.Tensor, bias: torch.Tensor | None, plan: RankPlan, train_bias: bool
    ) -> None:
        m, n = weight2d.shape
        dtype, device = weight2d.dtype, weight2d.device
        w64 = weight2d.detach().to(torch.float64)
        if m >= n:
            U, s, Vh = torch.linalg.svd(w64, full_matrices=False)
            V = Vh.transpose(0, 1)
        else:  # LAPACK is ~3x faster on tall matrices: factor W^T = V s U^T instead
            V, s, Uh = torch.linalg.svd(w64.transpose(0, 1), full_matrices=False)
            U = Uh.transpose(0, 1)
        full = s.numel()
        k, K = plan.subspace_rank, plan.num_subspaces
        start = full - plan.artifact
        art_U = U[:, start:]
        art_S = s[start:]
        art_V = V[:, start:]
        artifact = (art_U * art_S) @ art_V.transpose(0, 1)
        self.plan = plan
        self.register_buffer("weight_frozen", (w64 - artifact).to(dtype))
        self.register_buffer("principal_U", U[:, : plan.principal].to(dtype).contiguous())
        self.register_buffer("principal_V", V[:, : plan.principal].to(dtype).contiguous())
        self.register_buffer("init_S", art_S.reshape(K, k).to(dtype).clone())
        self.register_buffer("init_norm", torch.linalg.matrix_norm(w64).to(dtype))
        self.register_buffer("mean_sq_singular", (s.square().mean()).to(dtype))
        self.U = nn.ParameterList(
            [nn.Parameter(art_U[:, j * k : (j + 1) * k].to(dtype).contiguous()) for j in range(K)]
        )
        self.S = nn.ParameterList([nn.Parameter(art_S[j * k : (j + 1) * k].to(dtype).clone()) for j in range(K)])
        self.V = nn.ParameterList(
            [nn.Parameter(art_V[:, j * k : (j + 1) * k].to(dtype).contiguous()) for j in range(K)]
        )
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=train_bias)
        else:
            self.register_parameter("bias", None)
        self.to(device)

    @property
    def num_subspaces(self) -> int:
        return self.plan.num_subspaces

    def subspace_parameters(self, j: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """(U_j, S_j, V_j): the parameters the layer mask gates together."""
        return self.U[j], self.S[j], self.V[j]

    def artifact_bases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated artifact bases (m, K*k) and (n, K*k), subspace j in columns j*k:(j+1)*k."""
        return torch.cat(list(self.U), dim=1), torch.cat(list(self.V), dim=1)

    def weight2d(self) -> torch.Tensor:
        """Effective (m, n) weight: frozen part + sum_j U_j diag(S_j) V_j^T (differentiable)."""
        scaled = torch.cat([u * s for u, s in zip(self.U, self.S)], dim=1)
        _, V = self.artifact_bases()
        return torch.addmm(self.weight_frozen, scaled, V.transpose(0, 1))


class SVDLinear(SVDLayer):
    """Drop-in for nn.Linear whose weight is split by SVD. `.weight` returns the effective weight."""

    def __init__(self, linear: nn.Linear, plan: RankPlan, train_bias: bool = False) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._init_split(linear.weight, linear.bias, plan, train_bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight2d(), self.bias)

    def to_dense(self) -> nn.Linear:
        """A plain nn.Linear holding the current effective weight (used by `fold`)."""
        ref = self.weight_frozen
        out = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=ref.device, dtype=ref.dtype
        )
        with torch.no_grad():
            out.weight.copy_(self.weight2d())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        p = self.plan
        return (
            f"in={self.in_features}, out={self.out_features}, principal={p.principal}, residual={p.residual}, "
            f"K={p.num_subspaces}, k={p.subspace_rank}"
        )


def _pair(values: tuple[int, ...]) -> tuple[int, int]:
    a, b = values
    return a, b


class SVDConv2d(SVDLayer):
    """Drop-in for nn.Conv2d; the weight (out, in/g, kh, kw) is split as an out x (in/g*kh*kw) matrix."""

    def __init__(self, conv: nn.Conv2d, plan: RankPlan, train_bias: bool = False) -> None:
        super().__init__()
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        # nn.Conv2d stores these as 2-tuples (typed tuple[int, ...] by its _ConvNd base)
        self.kernel_size = _pair(conv.kernel_size)
        self.stride = _pair(conv.stride)
        self.padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        self.dilation = _pair(conv.dilation)
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = list(conv._reversed_padding_repeated_twice)
        self._init_split(conv.weight.reshape(conv.out_channels, -1), conv.bias, plan, train_bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight2d().reshape(
            self.out_channels, self.in_channels // self.groups, *self.kernel_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_dense(self) -> nn.Conv2d:
        """A plain nn.Conv2d holding the current effective weight (used by `fold`)."""
        ref = self.weight_frozen
        out = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.bias is not None and out.bias is not None:  # both or neither (bias= above)
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        p = self.plan
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, principal={p.principal}, residual={p.residual}, "
            f"K={p.num_subspaces}, k={p.subspace_rank}"
        )


LayerPredicate = Callable[[str, nn.Module], bool]


def _matrix_shape(layer: nn.Module) -> tuple[int, int] | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features
    if isinstance(layer, nn.Conv2d):
        w = layer.weight
        return w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]
    return None


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def decompose(module: nn.Module, cfg: SVDConfig, include: LayerPredicate | None = None) -> list[str]:
    """Replace eligible nn.Linear/nn.Conv2d layers of `module` in place; return their qualified names.

    Eligible: `include(name, layer)` is true (default: every Linear/Conv2d), the layer is exactly an
    nn.Linear or nn.Conv2d (subclasses such as quantised or LoRA layers are left alone), it is not grouped
    unless cfg.decompose_grouped, and `plan_ranks` finds room for at least one rank-1 subspace.
    Outputs are unchanged at init (to float rounding). Existing SVD layers are never re-split.
    """
    chosen: list[tuple[str, nn.Module, RankPlan]] = []
    for name, layer in module.named_modules():
        if type(layer) not in (nn.Linear, nn.Conv2d):
            continue
        if include is not None and not include(name, layer):
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups > 1 and not cfg.decompose_grouped:
            continue
        shape = _matrix_shape(layer)
        assert shape is not None
        plan = plan_ranks(shape[0], shape[1], cfg)
        if plan is None:
            continue
        chosen.append((name, layer, plan))
    for name, layer, plan in chosen:
        if isinstance(layer, nn.Linear):
            new: nn.Module = SVDLinear(layer, plan, cfg.train_bias)
        else:
            new = SVDConv2d(layer, plan, cfg.train_bias)  # type: ignore[arg-type]
        new.train(layer.training)
        _replace(module, name, new)
    return [name for name, _, _ in chosen]


def svd_layers(module: nn.Module) -> Iterator[tuple[str, SVDLayer]]:
    """(qualified name, layer) for every SVD layer under `module`, in registration order."""
    for name, layer in module.named_modules():
        if isinstance(layer, SVDLayer):
            yield name, layer


def fold(module: nn.Module) -> nn.Module:
    """Replace every SVD layer under `module` (in place) by a plain Linear/Conv2d with its effective weight.

    Outputs are identical up to float rounding (the same sum, computed once). Returns `module`, or the
    dense replacement when `module` itself is an SVD layer.
    """
    if isinstance(module, (SVDLinear, SVDConv2d)):
        return module.to_dense()
    for name, layer in list(svd_layers(module)):
        assert isinstance(layer, (SVDLinear, SVDConv2d))
        dense = layer.to_dense()
        dense.train(layer.training)
        _replace(module, name, dense)
    return module
