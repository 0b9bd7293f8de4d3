"""RKD distance and angle losses against closed-form triangles, invariances and gradients."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from lightning_kd.losses.relation import rkd_angle_loss, rkd_distance_loss

LossFn = Callable[..., torch.Tensor]
SQRT3 = math.sqrt(3.0)

# Student: right isosceles triangle A = (0, 0), B = (1, 0), C = (0, 1) (right angle at A).
# Teacher: equilateral triangle with unit sides.
RIGHT = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
EQUILATERAL = [[0.0, 0.0], [1.0, 0.0], [0.5, SQRT3 / 2]]

# Distance loss by hand.
#   Student distances AB = AC = 1, BC = sqrt2; off-diagonal mean (2 + sqrt2) / 3 = 1.138071.
#   Normalised: AB = AC = 3 / (2 + sqrt2) = 0.878680, BC = 3 sqrt2 / (2 + sqrt2) = 1.242641.
#   Teacher: all distances 1 -> normalised 1.
#   Differences x1 = 2 - 1.5 sqrt2 = -0.121320 (AB, AC), x2 = 3 sqrt2 - 4 = 0.242641 (BC),
#   all |x| < 1, so Huber = x^2 / 2. The (3, 3) matrix holds each pair twice and a zero diagonal:
#   sum = 2 * (x1^2 / 2 + x1^2 / 2 + x2^2 / 2) = 2 x1^2 + x2^2
#       = 2 (8.5 - 6 sqrt2) + (34 - 24 sqrt2) = 51 - 36 sqrt2 = 0.088312,
#   mean over all 9 entries (diagonal included) = 17/3 - 4 sqrt2 = 0.009812.
#   (The mean over the 6 off-diagonal pairs would be 0.014719.)
DISTANCE_RIGHT_VS_EQUILATERAL = 0.0098124

# Angle loss by hand: cosines at each vertex, student A: cos 90 = 0, B and C: cos 45 = 0.707107;
# teacher everywhere cos 60 = 0.5. In the (3, 3, 3) tensor each vertex has 2 ordered proper
# pairs (i != k); entries with i == j or k == j are 0 for both, i == k gives 1 for both.
#   A: 2 * (0 - 0.5)^2 / 2 = 0.25;  B, C: 4 * (0.707107 - 0.5)^2 / 2 = 2 * (3 - 2 sqrt2) / 4
#   = 0.085786;  sum = 1.75 - sqrt2 = 0.335786;  mean over 27 entries = 0.012437.
ANGLE_RIGHT_VS_EQUILATERAL = 0.0124365


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- closed form


def test_distance_loss_right_vs_equilateral_triangle() -> None:
    loss = rkd_distance_loss(torch.tensor(RIGHT), torch.tensor(EQUILATERAL))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(DISTANCE_RIGHT_VS_EQUILATERAL, abs=1e-6)


def test_angle_loss_right_vs_equilateral_triangle() -> None:
    loss = rkd_angle_loss(torch.tensor(RIGHT), torch.tensor(EQUILATERAL))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ANGLE_RIGHT_VS_EQUILATERAL, abs=1e-6)


def test_triangle_losses_with_different_dims_and_higher_rank_input() -> None:
    # Teacher triangle embedded in 3-D (D_t = 3); student as (3, 1, 2), flattened to (3, 2).
    student = torch.tensor(RIGHT).view(3, 1, 2)
    teacher = torch.tensor([[*row, 0.0] for row in EQUILATERAL])
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(
        DISTANCE_RIGHT_VS_EQUILATERAL, abs=1e-6
    )
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(
        ANGLE_RIGHT_VS_EQUILATERAL, abs=1e-6
    )


def test_distance_loss_two_points_is_always_zero() -> None:
    # With B = 2 the only distance is divided by itself: both normalised matrices are [[0, 1],
    # [1, 0]], whatever the points.
    loss = rkd_distance_loss(_random(2, 5, seed=0), _random(2, 9, seed=1))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("loss_fn", [rkd_distance_loss, rkd_angle_loss])
def test_identical_embeddings_give_exactly_zero(loss_fn: LossFn) -> None:
    embeddings = _random(8, 6, seed=2)
    assert loss_fn(embeddings, embeddings.clone()).item() == 0.0


@pytest.mark.parametrize("loss_fn", [rkd_distance_loss, rkd_angle_loss])
def test_power_of_two_scaling_gives_exactly_zero(loss_fn: LossFn) -> None:
    # Scaling by 4 is exact in floating point, so every relation matches bit for bit.
    student = _random(8, 6, seed=3)
    assert loss_fn(student, 4.0 * student).item() == 0.0


@pytest.mark.parametrize("loss_fn", [rkd_distance_loss, rkd_angle_loss])
def test_similarity_transform_into_wider_space_gives_zero(loss_fn: LossFn) -> None:
    # teacher = 3.7 * student @ Q^T + shift with Q (7, 5) of orthonormal columns: an isometry
    # into D_t = 7, scaled and translated. Distances and angles are preserved up to scale.
    student = _random(8, 5, seed=4)
    q, _ = torch.linalg.qr(_random(7, 5, seed=5))  # (7, 5)
    teacher = 3.7 * student @ q.T + _random(1, 7, seed=6)  # (8, 7)
    assert loss_fn(student, teacher).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("loss_fn", [rkd_distance_loss, rkd_angle_loss])
def test_gradient_reaches_student_not_teacher(loss_fn: LossFn) -> None:
    student = _random(6, 4, seed=7).requires_grad_(True)
    teacher = _random(6, 10, seed=8).requires_grad_(True)
    loss = loss_fn(student, teacher)
    assert loss.requires_grad
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum().item() > 0


@pytest.mark.parametrize("loss_fn", [rkd_distance_loss, rkd_angle_loss])
def test_gradient_is_zero_at_the_optimum(loss_fn: LossFn) -> None:
    # Huber'(0) = 0 for every pair / triplet, so a student equal to the teacher gets zero grad.
    teacher = _random(5, 3, seed=9)
    student = teacher.clone().requires_grad_(True)
    loss_fn(student, teacher).backward()
    assert student.grad is not None
    torch.testing.assert_close(student.grad, torch.zeros(5, 3), rtol=0, atol=1e-7)


def test_duplicate_embeddings_stay_finite() -> None:
    # Coinciding rows hit the eps clamp (distance) and the zero-vector normalisation (angle).
    student = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [3.0, -1.0]], requires_grad=True)
    teacher = _random(4, 3, seed=10)
    loss = rkd_distance_loss(student, teacher) + rkd_angle_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss)
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("loss_fn", [rkd_distance_loss, rkd_angle_loss])
def test_fp32_under_bf16_autocast(loss_fn: LossFn) -> None:
    student = _random(6, 8, seed=11).bfloat16()
    teacher = _random(6, 12, seed=12).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(student, teacher)
    assert loss.dtype == torch.float32
    reference = loss_fn(student.float(), teacher.float())
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- validation


def test_too_small_batches_raise() -> None:
    with pytest.raises(ValueError, match=r"distances need a batch of at least 2.*got batch size 1"):
        rkd_distance_loss(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"angles need a batch of at least 3.*got batch size 2"):
        rkd_angle_loss(torch.zeros(2, 4), torch.zeros(2, 4))


@pytest.mark.parametrize("loss_fn", [rkd_distance_loss, rkd_angle_loss])
def test_shape_and_dtype_validation(loss_fn: LossFn) -> None:
    good = torch.zeros(4, 3)
    both = re.escape("student has shape (4, 3), teacher has shape (5, 8)")
    with pytest.raises(ValueError, match=f"batch sizes differ: {both}"):
        loss_fn(good, torch.zeros(5, 8))
    with pytest.raises(ValueError, match=re.escape("student must be a non-empty (B, D) tensor")):
        loss_fn(torch.zeros(4), good)
    with pytest.raises(ValueError, match=re.escape("teacher must be a non-empty (B, D)") + ".*0"):
        loss_fn(good, torch.zeros(4, 0))
    with pytest.raises(TypeError, match=r"student .*got dtype torch\.int64"):
        loss_fn(good.long(), good)
    with pytest.raises(TypeError, match=r"teacher .*got dtype torch\.int64"):
        loss_fn(good, good.long())


@pytest.mark.parametrize("eps", [0.0, -1e-12, math.inf, math.nan])
def test_bad_eps_raises(eps: float) -> None:
    good = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=f"eps must be a finite number > 0, got {eps}"):
        rkd_distance_loss(good, good, eps=eps)
