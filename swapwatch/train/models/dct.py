"""Fixed 8x8 block DCT as a convolution, and the high-pass DCT front end of AIRL's frequency stream.

Why a convolution: an 8x8 block DCT-II is linear and acts on non-overlapping blocks, so it is exactly a
Conv2d with 64 fixed 8x8 kernels and stride 8. That exports to ONNX as one `Conv` node and runs on
TensorRT / ONNX Runtime without any FFT op (neither has a DCT op; ONNX's `DFT` is complex and poorly
supported by TensorRT). The kernels are registered buffers, never parameters: they are not trained, do
not appear in the optimizer, but are saved in the state dict and moved with `.to(device)`.

Conventions (match `scipy.fft.dctn(block, type=2, norm="ortho")`):
- block pixel f[x, y], x = row (vertical), y = column (horizontal), 0..7;
- coefficient F[u, v] = c(u) c(v) sum_{x,y} f[x,y] cos(pi (2x+1) u / 16) cos(pi (2y+1) v / 16),
  c(0) = sqrt(1/8), c(k>0) = sqrt(2/8) (orthonormal: the 64 kernels form an orthonormal basis);
- output channel index u * 8 + v, so channel 0 is DC (= 8 * block mean) and channel 63 the (7, 7) band.

Sizes that are not multiples of 8 are CROPPED (the stride-8, unpadded conv drops the last H % 8 rows
and W % 8 columns). Trade-off: padding would keep those pixels but creates an artificial step edge
whose spectrum is all high frequency, exactly what the frequency stream is meant to look at; losing at
most 7 border pixels of a face crop costs nothing. Detectors should use sizes that are multiples of 8.

Gray scale choice: HighPassDCT works on 0..255 gray (undoing the model's mean/std normalisation), so a
coefficient of 1 is one grey level, the scale JPEG quantisation tables use. The log compression
`sign(x) * log1p(scale * |x|)` then leaves sub-grey-level noise near 0 and squeezes strong edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

BLOCK = 8

# ITU-R BT.601 luma weights, the ones JPEG (JFIF) uses to build its Y channel.
BT601 = (0.299, 0.587, 0.114)


def dct_matrix(n: int = BLOCK) -> torch.Tensor:
    """Orthonormal 1-D DCT-II matrix M (n, n) in float64, rows = frequencies: F = M @ f."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # frequency u
    x = torch.arange(n, dtype=torch.float64).unsqueeze(0)  # sample index
    m = torch.cos(math.pi * (2.0 * x + 1.0) * k / (2.0 * n))
    scale = torch.full((n, 1), math.sqrt(2.0 / n), dtype=torch.float64)
    scale[0, 0] = math.sqrt(1.0 / n)
    return m * scale


def dct_basis(n: int = BLOCK) -> torch.Tensor:
    """The n*n 2-D DCT-II basis images as conv kernels, shape (n*n, 1, n, n), float32.

    Kernel u*n+v is outer(M[u], M[v]); correlating it with a block (what Conv2d does: no flip) gives
    F[u, v]. The kernels are orthonormal, so the inverse transform is the transposed convolution.
    """
    m = dct_matrix(n)
    basis = torch.einsum("ux,vy->uvxy", m, m).reshape(n * n, 1, n, n)
    return basis.to(torch.float32)


def band_index(low_cut: int, n: int = BLOCK) -> list[int]:
    """Channels u*n+v kept by a high pass that drops every band with u + v < low_cut (DC always)."""
    if low_cut < 1:
        raise ValueError(f"low_cut must be >= 1 (the DC band is always dropped), got {low_cut}")
    if low_cut > 2 * (n - 1):
        raise ValueError(f"low_cut={low_cut} would drop every band of an {n}x{n} DCT (max {2 * (n - 1)})")
    return [u * n + v for u in range(n) for v in range(n) if u + v >= low_cut]


class BlockDCT(nn.Module):
    """Non-overlapping 8x8 block DCT-II, orthonormal: (B, 1, H, W) -> (B, C, H // 8, W // 8).

    `channels` picks a subset of the 64 bands (indices u*8+v, in the given order); default all 64.
    Picking at construction (instead of slicing the output) means dropped bands are never computed
    and the exported graph is a single Conv. H, W that are not multiples of 8 are cropped (see module
    docstring).
    """

    weight: torch.Tensor

    def __init__(self, channels: Sequence[int] | None = None) -> None:
        super().__init__()
        basis = dct_basis(BLOCK)
        if channels is not None:
            idx = list(channels)
            if not idx or min(idx) < 0 or max(idx) >= BLOCK * BLOCK:
                raise ValueError(f"channels must be a non-empty subset of 0..63, got {idx}")
            basis = basis[idx]
        self.register_buffer("weight", basis.contiguous())

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 1):
            raise ValueError(f"BlockDCT expects (B, 1, H, W), got {tuple(x.shape)}")
        return F.conv2d(x, self.weight.to(x.dtype), stride=BLOCK)


class HighPassDCT(nn.Module):
    """Normalised RGB -> 0..255 gray -> 8x8 block DCT -> drop low bands -> signed log compression.

    Input: (B, 3, H, W) normalised as `(rgb01 - mean) / std` (the detector's own normalisation).
    Output: (B, len(band_index(low_cut)), H // 8, W // 8), channels in u*8+v order of the kept bands.

    The gray conversion undoes the normalisation and applies BT.601 weights in one fixed 1x1 conv:
    gray = 255 * sum_c w_c * (std_c * x_c + mean_c). Bands with u + v < low_cut carry smooth shading and
    illumination (which the RGB stream sees anyway and which vary with lighting, not manipulation);
    the kept mid/high bands carry blending seams, resampling and re-compression traces.
    Compression `sign(c) * log1p(scale * |c|)` keeps the sign (phase) and uses only Abs/Sign/Log/Mul,
    all plain ONNX ops TensorRT supports; its gradient is finite everywhere, including at 0.
    Trade-off: dropping the bands loses information for good (set low_cut=1 to keep all but DC).
    """

    gray_weight: torch.Tensor
    gray_bias: torch.Tensor

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        low_cut: int = 3,
        log_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {std}")
        if log_scale <= 0:
            raise ValueError(f"log_scale must be positive, got {log_scale}")
        w = torch.tensor([255.0 * c * s for c, s in zip(BT601, std)], dtype=torch.float32)
        b = torch.tensor([255.0 * sum(c * m for c, m in zip(BT601, mean))], dtype=torch.float32)
        self.register_buffer("gray_weight", w.reshape(1, 3, 1, 1))
        self.register_buffer("gray_bias", b)
        self.low_cut = low_cut
        self.log_scale = float(log_scale)
        self.bands = band_index(low_cut)
        self.dct = BlockDCT(self.bands)

    @property
    def out_channels(self) -> int:
        return self.dct.out_channels

    def to_gray(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> 0..255 BT.601 gray (B, 1, H, W)."""
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"HighPassDCT expects (B, 3, H, W), got {tuple(x.shape)}")
        return F.conv2d(x, self.gray_weight.to(x.dtype), self.gray_bias.to(x.dtype))

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (uncompressed) kept DCT coefficients of the gray image."""
        return self.dct(self.to_gray(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.coefficients(x)
        return torch.sign(c) * torch.log1p(torch.abs(c) * self.log_scale)
