"""Block DCT and high-pass DCT: exact agreement with scipy, orthonormality, and which bands survive."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
from torch.nn import functional as F

from swapwatch.train.models.dct import BT601, BlockDCT, HighPassDCT, band_index, dct_basis, dct_matrix

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize("n", [2, 4, 8])
def test_basis_is_orthonormal(n: int) -> None:
    b = dct_basis(n).reshape(n * n, n * n).double()
    torch.testing.assert_close(b @ b.T, torch.eye(n * n, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [4, 8])
def test_1d_matrix_matches_scipy(n: int) -> None:
    expected = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)  # column j = DCT of e_j
    np.testing.assert_allclose(dct_matrix(n).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("h", "w"),
    [(8, 8), (16, 24), (64, 64), (40, 56), (20, 30)],  # (20, 30): not multiples of 8, cropped to 16 x 24
)
def test_block_dct_matches_scipy_per_block(h: int, w: int) -> None:
    gen = torch.Generator().manual_seed(h * 100 + w)
    img = torch.rand(2, 1, h, w, generator=gen)
    out = BlockDCT()(img)
    assert out.shape == (2, 64, h // 8, w // 8)
    arr = img.double().numpy()
    for b in range(2):
        for i in range(h // 8):
            for j in range(w // 8):
                block = arr[b, 0, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
                ref = scipy.fft.dctn(block, type=2, norm="ortho")  # ref[u, v] -> channel u*8+v
                np.testing.assert_allclose(out[b, :, i, j].double().numpy(), ref.reshape(64), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(8, 16), (32, 32), (48, 24)])
def test_block_dct_inverse_is_transposed_conv(h: int, w: int) -> None:
    dct = BlockDCT()
    img = torch.randn(3, 1, h, w, generator=torch.Generator().manual_seed(1))
    back = F.conv_transpose2d(dct(img), dct.weight, stride=8)
    torch.testing.assert_close(back, img, atol=1e-5, rtol=0)
    # Parseval: an orthonormal transform keeps the energy.
    torch.testing.assert_close(dct(img).pow(2).sum(), img.pow(2).sum(), rtol=1e-5, atol=0)


def test_dc_is_eight_times_block_mean_and_kernels_are_buffers() -> None:
    dct = BlockDCT()
    img = torch.rand(1, 1, 16, 16)
    means = F.avg_pool2d(img, 8)
    torch.testing.assert_close(dct(img)[:, 0:1], 8.0 * means, atol=1e-5, rtol=0)
    assert list(dct.parameters()) == []
    assert "weight" in dict(dct.named_buffers())


def test_channel_subset_equals_slicing_full_output() -> None:
    img = torch.rand(2, 1, 24, 16)
    picked = [63, 0, 9, 17]
    torch.testing.assert_close(BlockDCT(picked)(img), BlockDCT()(img)[:, picked])


@pytest.mark.parametrize(
    ("low_cut", "n_kept", "first_kept"),
    [
        (1, 63, 1),  # only DC dropped
        (2, 61, 2),  # drops (0,0) (0,1) (1,0); first kept is (0,2) = channel 2
        (3, 58, 3),  # drops k(k+1)/2 = 6 bands
        (8, 64 - 36, 15),  # first kept with u+v >= 8 in row-major order is (1,7) = 15
        (14, 1, 63),  # only (7,7) survives
    ],
)
def test_band_index(low_cut: int, n_kept: int, first_kept: int) -> None:
    kept = band_index(low_cut)
    assert len(kept) == n_kept and kept[0] == first_kept
    assert all((c // 8) + (c % 8) >= low_cut for c in kept)


@pytest.mark.parametrize("low_cut", [0, 15])
def test_band_index_rejects_cuts_that_keep_dc_or_nothing(low_cut: int) -> None:
    with pytest.raises(ValueError):
        band_index(low_cut)


@pytest.mark.parametrize(("mean", "std"), [IMAGENET, HALF])
def test_gray_undoes_normalisation_on_0_255_scale(mean: tuple, std: tuple) -> None:
    rgb01 = torch.rand(2, 3, 16, 16)
    x = (rgb01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    gray = HighPassDCT(mean, std).to_gray(x)
    r, g, b = rgb01[:, 0:1], rgb01[:, 1:2], rgb01[:, 2:3]
    expected = 255.0 * (BT601[0] * r + BT601[1] * g + BT601[2] * b)
    torch.testing.assert_close(gray, expected, atol=1e-4, rtol=0)


def _normalise(rgb01: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    return (rgb01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize(("level", "low_cut"), [(0.0, 1), (0.37, 2), (1.0, 3)])
@pytest.mark.parametrize(("mean", "std"), [IMAGENET, HALF])
def test_constant_image_gives_zero(level: float, low_cut: int, mean: tuple, std: tuple) -> None:
    hp = HighPassDCT(mean, std, low_cut=low_cut)
    out = hp(_normalise(torch.full((1, 3, 32, 32), level), mean, std))
    assert out.shape == (1, 64 - low_cut * (low_cut + 1) // 2, 4, 4)
    assert out.abs().max().item() < 1e-3


@pytest.mark.parametrize("low_cut", [2, 3, 5])
def test_image_made_of_dropped_bands_gives_zero(low_cut: int) -> None:
    """Each 8x8 block is DC + random amounts of the bands with u+v < low_cut (smooth within the block)."""
    gen = torch.Generator().manual_seed(low_cut)
    coeffs = torch.zeros(1, 64, 4, 4)
    dropped = [c for c in range(64) if (c // 8) + (c % 8) < low_cut]
    coeffs[:, dropped] = 60.0 * torch.randn(1, len(dropped), 4, 4, generator=gen)
    coeffs[:, 0] += 8 * 128.0  # DC: mid grey
    gray = F.conv_transpose2d(coeffs, dct_basis(), stride=8)  # 0..255-ish gray, 32 x 32
    rgb01 = (gray / 255.0).expand(1, 3, 32, 32)  # BT.601 weights sum to 1: gray(rgb=g,g,g) = 255 g
    hp = HighPassDCT(*HALF, low_cut=low_cut)
    assert hp.coefficients(_normalise(rgb01, *HALF)).abs().max().item() < 1e-2
    assert hp(_normalise(rgb01, *HALF)).abs().max().item() < 1e-2


def _checkerboard(h: int) -> torch.Tensor:
    i = torch.arange(h)
    return ((i.view(h, 1) + i.view(1, h)) % 2).float().expand(1, 3, h, h)


def test_checkerboard_gives_large_response_in_the_highest_band() -> None:
    hp = HighPassDCT(*HALF, low_cut=3)
    out = hp(_normalise(_checkerboard(32), *HALF))
    per_band = out.abs().amax(dim=(0, 2, 3))
    assert hp.bands[int(per_band.argmax())] == 63  # (u, v) = (7, 7)
    # gray = 0/255 around 127.5: coefficient = 127.5 * (sum_x (-1)^x M[7, x])^2, log1p of it.
    s = sum((-1) ** x * 0.5 * math.cos(math.pi * (2 * x + 1) * 7 / 16) for x in range(8))
    expected = math.log1p(127.5 * s * s)
    assert abs(per_band.max().item() - expected) < 1e-3
    assert expected > 6.0


@pytest.mark.parametrize(
    ("name", "rgb01"),
    [
        ("horizontal ramp", torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)),
        ("diagonal ramp", ((torch.linspace(0, 1, 64).view(64, 1) + torch.linspace(0, 1, 64)) / 2).expand(1, 3, 64, 64)),
    ],
)
def test_smooth_gradient_is_tiny_next_to_checkerboard(name: str, rgb01: torch.Tensor) -> None:
    """A linear ramp is not exactly in the dropped span: within a block it leaks into the odd bands
    (0,3), (0,5), (0,7) about 1.9 coefficient units per grey level of slope. A 0..255 ramp over 64 px
    (4 levels / px) thus gives raw kept coefficients < 10, against ~840 for a checkerboard."""
    hp = HighPassDCT(*HALF, low_cut=3)
    smooth = hp.coefficients(_normalise(rgb01, *HALF)).abs().max().item()
    sharp = hp.coefficients(_normalise(_checkerboard(64), *HALF)).abs().max().item()
    assert smooth < 10.0 and smooth < 0.012 * sharp


@pytest.mark.parametrize("value", [-300.0, -1.0, 0.0, 0.5, 250.0])
def test_log_compression_is_signed_log1p(value: float) -> None:
    hp = HighPassDCT(*HALF, low_cut=1, log_scale=2.0)
    c = torch.tensor([value])
    ref = math.copysign(math.log1p(2.0 * abs(value)), value) if value else 0.0
    out = torch.sign(c) * torch.log1p(torch.abs(c) * hp.log_scale)
    assert abs(out.item() - ref) < 1e-5


def test_high_pass_gradient_is_finite_at_zero() -> None:
    hp = HighPassDCT(*HALF, low_cut=2)
    x = torch.zeros(1, 3, 16, 16, requires_grad=True)  # constant image: every kept coefficient is 0
    hp(x).sum().backward()
    assert torch.isfinite(x.grad).all()
