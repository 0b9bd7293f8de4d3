"""Consistency losses of Mean Teacher: hand-worked values, gradients, precision, validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from lightning_kd.losses.consistency import softmax_kl_loss, softmax_mse_loss
from lightning_kd.losses.logit import kd_loss

LN3 = math.log(3.0)
# Student logits [0, 0] -> p_s = [0.5, 0.5]; teacher [ln 3, 0] -> p_t = [0.75, 0.25].
# Squared differences 0.0625 + 0.0625 = 0.125, divided by C = 2 -> 0.0625.
# KL(p_t || p_s) = 0.75 ln(0.75 / 0.5) + 0.25 ln(0.25 / 0.5) = 0.75 ln 1.5 + 0.25 ln 0.5.
MSE_2 = 0.0625
KL_2 = 0.130812

LOSSES: list[Callable[[Tensor, Tensor], Tensor]] = [softmax_mse_loss, softmax_kl_loss]


def _pair() -> tuple[Tensor, Tensor]:
    return torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]])


def test_two_class_values_by_hand() -> None:
    s, t = _pair()
    assert softmax_mse_loss(s, t).item() == pytest.approx(MSE_2, abs=1e-7)
    assert softmax_kl_loss(s, t).item() == pytest.approx(KL_2, abs=1e-6)


def test_three_class_values_by_hand() -> None:
    # p_s uniform, p_t = [1/2, 1/4, 1/4]: squared differences 1/36 + 1/144 + 1/144 = 1/24,
    # over C = 3 -> 1/72. KL = 0.5 ln(1.5) + 2 * 0.25 ln(0.75) = 0.058892.
    s = torch.zeros(1, 3)
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    assert softmax_mse_loss(s, t).item() == pytest.approx(1 / 72, abs=1e-7)
    assert softmax_kl_loss(s, t).item() == pytest.approx(0.058892, abs=1e-6)


def test_batch_mean() -> None:
    # A second row with identical logits adds 0, so the batch mean halves the one-row value.
    s = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    t = torch.tensor([[LN3, 0.0], [2.0, -1.0]])
    assert softmax_mse_loss(s, t).item() == pytest.approx(MSE_2 / 2, abs=1e-7)
    assert softmax_kl_loss(s, t).item() == pytest.approx(KL_2 / 2, abs=1e-6)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_zero_for_equal_distributions(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    assert loss_fn(logits, logits.clone()).item() == 0.0
    # Softmax ignores a per-row shift, so shifted teacher logits give (numerically) zero too.
    shift = torch.arange(6.0).unsqueeze(1)
    assert loss_fn(logits, logits + shift).item() == pytest.approx(0.0, abs=1e-6)


def test_extreme_logits_stay_finite() -> None:
    # Opposite one-hot distributions: squared differences 1 + 1 over C = 2 -> 1;
    # KL = 1 * (log 1 - log p_s) with log p_s = -2000 (log_softmax, not log(softmax)).
    s = torch.tensor([[1000.0, -1000.0]])
    t = torch.tensor([[-1000.0, 1000.0]])
    assert softmax_mse_loss(s, t).item() == pytest.approx(1.0)
    assert softmax_kl_loss(s, t).item() == pytest.approx(2000.0)


def test_kl_is_kd_loss_at_temperature_one() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    torch.testing.assert_close(softmax_kl_loss(s, t), kd_loss(s, t, temperature=1.0))


def test_mse_gradient_by_hand() -> None:
    # d loss / d z_s = (2 / (B C)) * J_s (p_s - p_t) with J = diag(p) - p p^T.
    # p_s = [.5, .5]: J_s = .25 * [[1, -1], [-1, 1]], p_s - p_t = [-.25, .25],
    # so the gradient is [-0.125, 0.125] (2 / (B C) = 1 here).
    # Teacher side (when it requires grad): -(2 / (B C)) * J_t (p_s - p_t) with
    # J_t = .1875 * [[1, -1], [-1, 1]] -> [0.09375, -0.09375].
    s, t = _pair()
    s.requires_grad_(True)
    t.requires_grad_(True)
    softmax_mse_loss(s, t).backward()
    assert s.grad is not None and t.grad is not None
    torch.testing.assert_close(s.grad, torch.tensor([[-0.125, 0.125]]), atol=1e-7, rtol=0)
    torch.testing.assert_close(t.grad, torch.tensor([[0.09375, -0.09375]]), atol=1e-7, rtol=0)


def test_kl_gradient_by_hand() -> None:
    # d KL / d z_s = (p_s - p_t) / B: [0.5 - 0.75, 0.5 - 0.25] / 2 for two equal rows.
    s = torch.zeros(2, 2, requires_grad=True)
    t = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    softmax_kl_loss(s, t).backward()
    assert s.grad is not None
    expected = torch.tensor([[-0.125, 0.125], [-0.125, 0.125]])
    torch.testing.assert_close(s.grad, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_teacher_without_grad_gets_none(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    # Teacher logits are used as given: produced under no_grad they stay out of autograd.
    student = torch.nn.Linear(4, 3)
    teacher = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss_fn(student(x), teacher_logits).backward()
    assert student.weight.grad is not None
    assert teacher.weight.grad is None


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_float32_math_under_bf16_autocast(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 10, generator=g).bfloat16()
    t = torch.randn(4, 10, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(s, t)
    assert loss.dtype == torch.float32
    # The same value as float32 math on the (bf16-rounded) inputs outside autocast.
    torch.testing.assert_close(loss, loss_fn(s.float(), t.float()), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_validation(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    with pytest.raises(ValueError, match=r"student_logits must be 2-D \(B, C\), got shape \(3,\)"):
        loss_fn(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="class counts differ: student has 3 classes"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="batch sizes differ: student has 2 rows"):
        loss_fn(torch.zeros(2, 3), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="teacher_logits must be a floating-point tensor"):
        loss_fn(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
