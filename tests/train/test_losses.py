"""SupConLoss: a value worked out by hand, a plain-Python reference, invariances, binary labels, numerics."""

from __future__ import annotations

import math

import pytest
import torch

from swapwatch.train.models.losses import SupConLoss

SQ3_2 = math.sqrt(3.0) / 2.0
# Four unit vectors in 2-D: z0 = (1, 0), z1 = (1/2, sqrt3/2) at 60 deg, z2 = (-1, 0), z3 = (0, 1).
HAND_Z = [[1.0, 0.0], [0.5, SQ3_2], [-1.0, 0.0], [0.0, 1.0]]


def _supcon_reference(z: list[list[float]], labels: list[int], tau: float) -> float:
    """The docstring formula with scalar loops and the math module (no vectorised code shared)."""
    unit = [[c / math.sqrt(sum(v * v for v in row)) for c in row] for row in z]
    n = len(unit)

    def sim(i: int, j: int) -> float:
        return sum(a * b for a, b in zip(unit[i], unit[j])) / tau

    per_anchor = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(sim(i, a)) for a in range(n) if a != i)
        per_anchor.append(-sum(math.log(math.exp(sim(i, p)) / denom) for p in pos) / len(pos))
    return sum(per_anchor) / len(per_anchor)


def test_value_worked_out_by_hand() -> None:
    # tau = 1, labels [0, 0, 1, 1]. Dot products: s01 = 0.5, s02 = -1, s03 = 0, s12 = -0.5,
    # s13 = sqrt3/2 ~ 0.8660, s23 = 0. Each anchor has exactly one positive, so
    #   L0 = log(e^0.5 + e^-1 + e^0)        - 0.5  = log(3.01660) - 0.5 ~ 0.60413
    #   L1 = log(e^0.5 + e^-0.5 + e^0.8660) - 0.5  = log(4.63269) - 0.5 ~ 1.03312
    #   L2 = log(e^-1 + e^-0.5 + e^0)       - 0    = log(1.97441)       ~ 0.68027
    #   L3 = log(e^0 + e^0.8660 + e^0)      - 0    = log(4.37744)       ~ 1.47648
    #   loss = (L0 + L1 + L2 + L3) / 4 ~ 0.94850
    e = math.exp
    l0 = math.log(e(0.5) + e(-1.0) + e(0.0)) - 0.5
    l1 = math.log(e(0.5) + e(-0.5) + e(SQ3_2)) - 0.5
    l2 = math.log(e(-1.0) + e(-0.5) + e(0.0))
    l3 = math.log(e(0.0) + e(SQ3_2) + e(0.0))
    expected = (l0 + l1 + l2 + l3) / 4.0
    assert abs(expected - 0.94850) < 1e-4
    got = SupConLoss(temperature=1.0)(torch.tensor(HAND_Z), torch.tensor([0, 0, 1, 1]))
    assert abs(got.item() - expected) < 1e-6


def test_two_positives_and_an_anchor_without_positives_by_hand() -> None:
    # tau = 0.5, labels [0, 0, 0, 1]: anchor 3 has no positive and is ignored; anchors 0..2 average
    # over two positives each. Logits are dot / 0.5:
    #   L0 = LSE(1, -2, 0)       - (1 + -2) / 2
    #   L1 = LSE(1, -1, sqrt3)   - (1 + -1) / 2
    #   L2 = LSE(-2, -1, 0)      - (-2 + -1) / 2
    def lse(*v: float) -> float:
        return math.log(sum(math.exp(t) for t in v))

    expected = (
        (lse(1.0, -2.0, 0.0) + 0.5) + (lse(1.0, -1.0, 2 * SQ3_2) - 0.0) + (lse(-2.0, -1.0, 0.0) + 1.5)
    ) / 3.0
    got = SupConLoss(temperature=0.5)(torch.tensor(HAND_Z), torch.tensor([0, 0, 0, 1]))
    assert abs(got.item() - expected) < 1e-6
    assert abs(expected - _supcon_reference(HAND_Z, [0, 0, 0, 1], 0.5)) < 1e-12


@pytest.mark.parametrize(
    ("n", "d", "tau", "labels"),
    [
        (4, 2, 1.0, [0, 0, 1, 1]),
        (6, 3, 0.07, [0, 1, 0, 1, 1, 0]),
        (5, 8, 0.2, [1, 1, 1, 1, 0]),  # the lone real is ignored as an anchor but stays a negative
        (8, 16, 0.1, [0, 0, 0, 0, 1, 1, 1, 1]),
        (3, 4, 2.0, [0, 1, 1]),
    ],
)
def test_matches_plain_python_reference(n: int, d: int, tau: float, labels: list[int]) -> None:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(n * d), dtype=torch.float64)
    got = SupConLoss(temperature=tau)(z, torch.tensor(labels)).item()
    assert abs(got - _supcon_reference(z.tolist(), labels, tau)) < 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariant_to_permuting_the_batch(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)
    perm = torch.randperm(10, generator=gen)
    loss = SupConLoss(0.1)
    torch.testing.assert_close(loss(z[perm], y[perm]), loss(z, y), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [0.1, 3.0, 50.0])
def test_embeddings_are_l2_normalised_inside(scale: float) -> None:
    z = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    loss = SupConLoss(0.2)
    torch.testing.assert_close(loss(scale * z, y), loss(z, y), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("labels", "fake_kinds_merged"),
    [
        ([0, 0, 1, 2], [0, 0, 1, 1]),
        ([3, 0, 7, 0, 1], [1, 0, 1, 0, 1]),
    ],
)
def test_binary_mode_merges_fake_kinds(labels: list[int], fake_kinds_merged: list[int]) -> None:
    z = torch.randn(len(labels), 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    binary = SupConLoss(0.1, binary=True)
    torch.testing.assert_close(binary(z, torch.tensor(labels)), binary(z, torch.tensor(fake_kinds_merged)))
    torch.testing.assert_close(
        binary(z, torch.tensor(labels)),
        torch.tensor(_supcon_reference(z.tolist(), fake_kinds_merged, 0.1), dtype=torch.float64),
    )
    multiclass = SupConLoss(0.1, binary=False)
    assert abs(multiclass(z, torch.tensor(labels)).item() - binary(z, torch.tensor(labels)).item()) > 1e-3


def _on_circle(angles: list[float]) -> torch.Tensor:
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_lower_when_same_class_embeddings_cluster(tau: float) -> None:
    # Three reals and three fakes on the unit circle, each spread +-0.1 rad around its class centre.
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    spread = [-0.1, 0.0, 0.1]
    clustered = _on_circle([0.0 + s for s in spread] + [math.pi + s for s in spread])  # classes opposite
    orthogonal = _on_circle([0.0 + s for s in spread] + [math.pi / 2 + s for s in spread])
    mixed = _on_circle([0.0, math.pi, 0.1, math.pi + 0.1, -0.1, math.pi - 0.1])  # each class split in two
    loss = SupConLoss(tau)
    assert loss(clustered, y) < loss(orthogonal, y) < loss(mixed, y)


@pytest.mark.parametrize("labels", [[0, 1], [5], [0, 3]])  # [0, 3]: binary -> real vs fake, no pair
def test_no_positive_pair_returns_zero_with_grad(labels: list[int]) -> None:
    z = torch.randn(len(labels), 4, requires_grad=True)
    out = SupConLoss()(z, torch.tensor(labels))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_stable_at_low_temperature() -> None:
    # Logits span +-100 at tau = 0.01; a naive exp(100) fits float32 but exp of 1/tau = 1000 would not.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    for tau in (0.01, 0.001):
        out = SupConLoss(tau)(z, torch.tensor([0, 0, 1, 1]))
        (g,) = torch.autograd.grad(out, z)
        assert torch.isfinite(out) and torch.isfinite(g).all()
        # Positives identical, negatives opposite: each anchor's ratio is ~1, so the loss is ~0.
        assert out.item() < 1e-6


def test_gradient_matches_finite_differences() -> None:
    z = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda e: SupConLoss(0.3)(e, y), (z,))
