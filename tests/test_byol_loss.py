"""BYOL loss and negative cosine similarity: closed-form values, gradients, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lightning_kd.losses import byol_loss, negative_cosine_similarity


def _pair(p1: list[float], p2: list[float], z1: list[float], z2: list[float]) -> Tensor:
    return byol_loss(
        [torch.tensor([p1]), torch.tensor([p2])], [torch.tensor([z1]), torch.tensor([z2])]
    )


@pytest.mark.parametrize(
    ("z_direction", "expected"),
    [
        ([1.0, 2.0, -1.0], 0.0),  # same direction as p: 2 - 2 * 1 per direction
        ([-1.0, -2.0, 1.0], 8.0),  # opposite: 2 - 2 * (-1) = 4 per direction
        ([2.0, -1.0, 0.0], 4.0),  # orthogonal: 2 - 2 * 0 = 2 per direction
    ],
)
def test_closed_form_values(z_direction: list[float], expected: float) -> None:
    p = [1.0, 2.0, -1.0]
    z = torch.tensor(z_direction)
    loss = _pair(p, [3 * x for x in p], (0.5 * z).tolist(), (4 * z).tolist())
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_mean_over_batch_sum_over_directions() -> None:
    # Row 0 is aligned in both directions (0 + 0), row 1 opposite in both (4 + 4):
    # the batch mean of the direction sums is (0 + 8) / 2 = 4.
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    assert byol_loss([p, p], [z, z]).item() == pytest.approx(4.0, abs=1e-6)
    # The directions pair p1 with z2 and p2 with z1: only the crossed pairing is aligned.
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    assert _pair(e1, e2, e2, e1).item() == pytest.approx(0.0, abs=1e-6)
    assert _pair(e1, e2, e1, e2).item() == pytest.approx(4.0, abs=1e-6)


def test_scale_invariance() -> None:
    gen = torch.Generator().manual_seed(0)
    p = [torch.randn(5, 8, generator=gen) for _ in range(2)]
    z = [torch.randn(5, 8, generator=gen) for _ in range(2)]
    reference = byol_loss(p, z)
    scaled = byol_loss([p[0] * 1e3, p[1] * 0.01], [z[0] * 7.0, z[1] * 1e-4])
    torch.testing.assert_close(scaled, reference)
    assert 0.0 <= reference.item() <= 8.0


def test_targets_get_no_gradient() -> None:
    p = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    z = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    byol_loss(p, z).backward()
    assert all(t.grad is None for t in z)
    assert all(x.grad is not None for x in p)


def test_gradient_hand_example() -> None:
    # B = 1, D = 2. d cos(p, z) / dp = z / (|p| |z|) - cos(p, z) * p / |p|^2.
    # Direction 1: p1 = (1, 0), z2 = (1, 1): cos = 1/sqrt2,
    #   d cos / dp1 = (1, 1)/sqrt2 - (1/sqrt2)(1, 0) = (0, 1/sqrt2)
    #   d (2 - 2 cos) / dp1 = (0, -sqrt2)
    # Direction 2: p2 = (0, 2), z1 = (1, 0): cos = 0,
    #   d cos / dp2 = (1, 0) / 2 = (1/2, 0);  d (2 - 2 cos) / dp2 = (-1, 0)
    # Loss: (2 - sqrt2) + (2 - 0) = 4 - sqrt2 = 2.5857864376
    p1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 2.0]], requires_grad=True)
    loss = byol_loss([p1, p2], [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])])
    assert loss.item() == pytest.approx(4 - math.sqrt(2), abs=1e-6)
    loss.backward()
    assert p1.grad is not None and p2.grad is not None
    torch.testing.assert_close(p1.grad, torch.tensor([[0.0, -math.sqrt(2)]]))
    torch.testing.assert_close(p2.grad, torch.tensor([[-1.0, 0.0]]))


def test_bf16_autocast_gives_float32() -> None:
    gen = torch.Generator().manual_seed(1)
    p = [torch.randn(4, 16, generator=gen) for _ in range(2)]
    z = [torch.randn(4, 16, generator=gen) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = byol_loss([x.bfloat16() for x in p], [x.bfloat16() for x in z])
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    torch.testing.assert_close(loss16, byol_loss(p, z), rtol=0.02, atol=0.02)


def test_negative_cosine_similarity_values() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0]])
    z = torch.tensor([[5.0, 0.0], [2.0, 0.0], [-2.0, -2.0], [1.0, 2.0]])
    # aligned -> -1, orthogonal -> 0, opposite -> 1, zero row -> 0
    per_sample = negative_cosine_similarity(p, z, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([-1.0, 0.0, 1.0, 0.0]))
    assert negative_cosine_similarity(p, z).item() == pytest.approx(0.0, abs=1e-6)


def test_negative_cosine_similarity_does_not_detach() -> None:
    p = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0]], requires_grad=True)
    negative_cosine_similarity(p, z).backward()
    assert p.grad is not None and z.grad is not None
    # d(-cos)/dp = -(0, 1/sqrt2) (see the BYOL hand example)
    torch.testing.assert_close(p.grad, torch.tensor([[0.0, -1 / math.sqrt(2)]]))


@pytest.mark.parametrize(
    ("predictions", "targets", "error", "match"),
    [
        ([torch.ones(2, 3)], [torch.ones(2, 3)] * 2, ValueError, "exactly 2 views"),
        ([torch.ones(2, 3)] * 3, [torch.ones(2, 3)] * 2, ValueError, "exactly 2 views"),
        (torch.ones(2, 3), [torch.ones(2, 3)] * 2, ValueError, "two"),
        ([torch.ones(2, 3)] * 2, [torch.ones(2, 4)] * 2, ValueError, "same shape"),
        ([torch.ones(2, 3), torch.ones(1, 3)], [torch.ones(2, 3)] * 2, ValueError, "same shape"),
        ([torch.ones(3)] * 2, [torch.ones(3)] * 2, ValueError, r"2-D \(B, D\)"),
        ([torch.ones(0, 3)] * 2, [torch.ones(0, 3)] * 2, ValueError, "non-empty"),
        ([torch.ones(2, 3, dtype=torch.long)] * 2, [torch.ones(2, 3)] * 2, TypeError, "floating"),
        (None, [torch.ones(2, 3)] * 2, TypeError, "sequence of two"),
    ],
)
def test_byol_invalid_inputs(
    predictions: object, targets: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        byol_loss(predictions, targets)  # type: ignore[arg-type]


def test_negative_cosine_similarity_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="reduction"):
        negative_cosine_similarity(torch.ones(2, 3), torch.ones(2, 3), reduction="sum")
    with pytest.raises(ValueError, match="same shape"):
        negative_cosine_similarity(torch.ones(2, 3), torch.ones(3, 3))
