"""Decoupled KD: hand-worked TCKD / NCKD, the KD decomposition, gradients and validation."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lightning_kd.losses import kd_loss, softmax_with_temperature
from lightning_kd.losses.dkd import dkd_loss, dkd_parts

# Hand example, C = 3, T = 2, target class 0. Logits z = T * log(p), so softmax(z / T) = p:
#   teacher p_t = [0.5, 0.3, 0.2], student p_s = [0.2, 0.4, 0.4].
# Binary split [p[y], 1 - p[y]]: b_t = [0.5, 0.5], b_s = [0.2, 0.8].
#   KL(b_t || b_s) = 0.5 ln(0.5 / 0.2) + 0.5 ln(0.5 / 0.8) = 0.5 ln(1.5625) = ln 1.25 = 0.223144
#   TCKD = T^2 * 0.223144 = 0.892574.
# Non-target renormalised: q_t = [0.3, 0.2] / 0.5 = [0.6, 0.4], q_s = [0.4, 0.4] / 0.8 = [0.5, 0.5].
#   KL(q_t || q_s) = 0.6 ln 1.2 + 0.4 ln 0.8 = 0.109393 - 0.089257 = 0.020136
#   NCKD = T^2 * 0.020136 = 0.080542.
# DKD (alpha 1, beta 8) = 0.892574 + 8 * 0.080542 = 1.536911.
# Check against KD: T^2 KL(p_t || p_s) = 4 (0.5 ln 2.5 + 0.3 ln 0.75 + 0.2 ln 0.5) = 0.932845
#   = TCKD + (1 - 0.5) * NCKD = 0.892574 + 0.040271.
T = 2.0
TEACHER_P = [0.5, 0.3, 0.2]
STUDENT_P = [0.2, 0.4, 0.4]
TCKD = 0.892574
NCKD = 0.080542


def _logits(probs: list[float]) -> torch.Tensor:
    """Logits ``T * log(p)``, shape (1, C), whose softmax at temperature T is ``probs``."""
    return T * torch.tensor([probs]).log()


def _random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(6, 5, generator=gen) * 3
    teacher = torch.randn(6, 5, generator=gen) * 3
    targets = torch.randint(0, 5, (6,), generator=gen)
    return student, teacher, targets


# ----------------------------------------------------------------------------- values


def test_dkd_parts_on_paper() -> None:
    tckd, nckd = dkd_parts(_logits(STUDENT_P), _logits(TEACHER_P), torch.tensor([0]), temperature=T)
    assert tckd.dtype == torch.float32
    assert nckd.dtype == torch.float32
    assert tckd.item() == pytest.approx(TCKD, abs=1e-4)
    assert nckd.item() == pytest.approx(NCKD, abs=1e-4)


def test_dkd_parts_target_index_is_respected() -> None:
    # Row 1 is row 0 with classes rotated so that the old class 0 sits at index 2 (target 2):
    # the same numbers, so the batch means are unchanged.
    perm = [1, 2, 0]
    student = torch.cat([_logits(STUDENT_P), _logits([STUDENT_P[i] for i in perm])])
    teacher = torch.cat([_logits(TEACHER_P), _logits([TEACHER_P[i] for i in perm])])
    tckd, nckd = dkd_parts(student, teacher, torch.tensor([0, 2]), temperature=T)
    assert tckd.item() == pytest.approx(TCKD, abs=1e-4)
    assert nckd.item() == pytest.approx(NCKD, abs=1e-4)


def test_dkd_loss_on_paper() -> None:
    student, teacher, targets = _logits(STUDENT_P), _logits(TEACHER_P), torch.tensor([0])
    loss = dkd_loss(student, teacher, targets, temperature=T)  # alpha 1, beta 8
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1.536911, abs=1e-4)
    # alpha 0.5, beta 2: 0.5 * 0.892574 + 2 * 0.080542 = 0.446287 + 0.161084 = 0.607371.
    loss = dkd_loss(student, teacher, targets, alpha=0.5, beta=2.0, temperature=T)
    assert loss.item() == pytest.approx(0.607371, abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_identical_logits_give_zero(temperature: float) -> None:
    _, teacher, targets = _random_batch(0)
    tckd, nckd = dkd_parts(teacher.clone(), teacher, targets, temperature=temperature)
    assert abs(tckd.item()) < 1e-6
    assert abs(nckd.item()) < 1e-6
    assert abs(dkd_loss(teacher.clone(), teacher, targets).item()) < 1e-5


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_decomposes_into_tckd_plus_weighted_nckd(temperature: float) -> None:
    # DKD paper, Eq. (5): per sample, KD = TCKD + (1 - p_t[target]) * NCKD. Checked against the
    # library's independent kd_loss on a random batch, one row of dkd_parts at a time.
    student, teacher, targets = _random_batch(1)
    p_t = softmax_with_temperature(teacher, temperature=temperature)  # (B, C)
    total = torch.zeros(())
    for row in range(student.shape[0]):
        tckd, nckd = dkd_parts(
            student[row : row + 1],
            teacher[row : row + 1],
            targets[row : row + 1],
            temperature=temperature,
        )
        total = total + tckd + (1.0 - p_t[row, targets[row]]) * nckd
    expected = kd_loss(student, teacher, temperature=temperature)
    torch.testing.assert_close(total / student.shape[0], expected, rtol=1e-5, atol=1e-6)


def test_extreme_logits_stay_finite() -> None:
    student = torch.tensor([[1000.0, -1000.0, 0.0], [0.0, 500.0, -500.0]], requires_grad=True)
    teacher = torch.tensor([[-1000.0, 1000.0, 0.0], [0.0, -500.0, 500.0]])
    tckd, nckd = dkd_parts(student, teacher, torch.tensor([0, 1]), temperature=1.0)
    assert torch.isfinite(tckd)
    assert torch.isfinite(nckd)
    (tckd + nckd).backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------- gradients


def test_gradients_on_paper() -> None:
    # NCKD: d/dz_c = T * (q_s[c] - q_t[c]) for c != y, 0 for the target: 2 * [0, -0.1, 0.1].
    # TCKD: d/dz_y = T * (p_s[y] - p_t[y]) = 2 * (0.2 - 0.5) = -0.6; for c != y,
    #   d/dz_c = -T * (p_s[y] - p_t[y]) * p_s[c] / (1 - p_s[y]) = -2 * (-0.3) * 0.4 / 0.8 = 0.3.
    student = _logits(STUDENT_P).requires_grad_(True)
    tckd, nckd = dkd_parts(student, _logits(TEACHER_P), torch.tensor([0]), temperature=T)
    (grad_tckd,) = torch.autograd.grad(tckd, student, retain_graph=True)
    (grad_nckd,) = torch.autograd.grad(nckd, student)
    torch.testing.assert_close(grad_tckd, torch.tensor([[-0.6, 0.3, 0.3]]), rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_nckd, torch.tensor([[0.0, -0.2, 0.2]]), rtol=0, atol=1e-5)
    assert grad_nckd[0, 0].item() == 0.0  # NCKD never moves the target logit


def test_teacher_is_not_detached() -> None:
    teacher = _logits(TEACHER_P).requires_grad_(True)
    dkd_loss(_logits(STUDENT_P), teacher, torch.tensor([0]), temperature=T).backward()
    assert teacher.grad is not None
    assert teacher.grad.abs().sum().item() > 0


# ----------------------------------------------------------------------------- precision


def test_fp32_under_bf16_autocast() -> None:
    student, teacher, targets = _random_batch(2)
    student, teacher = student.bfloat16(), teacher.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tckd, nckd = dkd_parts(student, teacher, targets, temperature=4.0)
        loss = dkd_loss(student, teacher, targets)
    assert tckd.dtype == nckd.dtype == loss.dtype == torch.float32
    reference = dkd_loss(student.float(), teacher.float(), targets)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)


def test_accepts_int32_targets() -> None:
    tckd, _ = dkd_parts(
        _logits(STUDENT_P), _logits(TEACHER_P), torch.tensor([0], dtype=torch.int32), temperature=T
    )
    assert tckd.item() == pytest.approx(TCKD, abs=1e-4)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("temperature", [0.0, -2.0, math.inf, math.nan])
def test_bad_temperature_raises(temperature: float) -> None:
    logits, targets = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    match = f"temperature must be a finite number > 0, got {temperature}"
    with pytest.raises(ValueError, match=match):
        dkd_parts(logits, logits, targets, temperature=temperature)
    with pytest.raises(ValueError, match=match):
        dkd_loss(logits, logits, targets, temperature=temperature)


@pytest.mark.parametrize(("name", "value"), [("alpha", -0.5), ("beta", -1.0), ("beta", math.nan)])
def test_bad_weights_raise(name: str, value: float) -> None:
    logits, targets = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got {value}"):
        dkd_loss(logits, logits, targets, **{name: value})


def test_shape_and_dtype_validation() -> None:
    targets = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 2 classes.*" + re.escape("(2, 1)")):
        dkd_parts(torch.zeros(2, 1), torch.zeros(2, 1), targets)
    with pytest.raises(ValueError, match="student has 2 rows, teacher has 3"):
        dkd_parts(torch.zeros(2, 4), torch.zeros(3, 4), targets)
    with pytest.raises(ValueError, match="student has 4 classes, teacher has 5"):
        dkd_loss(torch.zeros(2, 4), torch.zeros(2, 5), targets)
    with pytest.raises(ValueError, match=re.escape("student_logits must be 2-D (B, C)")):
        dkd_parts(torch.zeros(2, 4, 1), torch.zeros(2, 4, 1), targets)
    with pytest.raises(ValueError, match=re.escape("targets must have shape (2,)") + ".*(3,)"):
        dkd_parts(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"targets must be integer.*torch\.float32"):
        dkd_parts(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(TypeError, match=r"student_logits .*got dtype torch\.int64"):
        dkd_loss(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4), targets)
