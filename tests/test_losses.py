"""Loss values against hand-worked / closed-form numbers, gradients, and validation."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.losses import (
    distillation_loss,
    kd_loss,
    smooth_labels,
    soft_cross_entropy,
    softmax_with_temperature,
    uniform_smooth_labels,
)

SQRT3 = math.sqrt(3.0)


def _log(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is ``probs``, shape (1, C)."""
    return torch.tensor([probs]).log()


# Teacher [0.2, 0.6, 0.2] softened at T=2 is proportional to [sqrt(.2), sqrt(.6), sqrt(.2)]
# = sqrt(.2) * [1, sqrt(3), 1], i.e. [1, sqrt3, 1] / (2 + sqrt3) = [2 - sqrt3, 2 sqrt3 - 3, ...]
# = [0.267949, 0.464102, 0.267949].
SOFT_T2 = [0.2679, 0.4641, 0.2679]


# ----------------------------------------------------------------------------- softmax


def test_softmax_with_temperature_closed_form() -> None:
    probs = softmax_with_temperature(_log([0.2, 0.6, 0.2]), temperature=2.0)
    torch.testing.assert_close(probs, torch.tensor([SOFT_T2]), rtol=0, atol=1e-4)


def test_softmax_with_temperature_one_recovers_probs() -> None:
    probs = softmax_with_temperature(_log([0.1, 0.7, 0.2]), temperature=1.0)
    torch.testing.assert_close(probs, torch.tensor([[0.1, 0.7, 0.2]]))


def test_softmax_with_temperature_is_float32_under_autocast() -> None:
    logits = _log([0.2, 0.6, 0.2]).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = softmax_with_temperature(logits, temperature=2.0)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.tensor([SOFT_T2]), rtol=0, atol=5e-3)


# ----------------------------------------------------------------------------- kd_loss


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 20.0])
def test_kd_loss_identical_logits_is_zero(temperature: float) -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 5
    loss = kd_loss(logits, logits.clone(), temperature=temperature)
    assert loss.dtype == torch.float32
    assert abs(loss.item()) < 1e-7


def test_kd_loss_two_class_t1_on_paper() -> None:
    # KL([.5, .5] || [.25, .75]) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln 2 + .5 ln(2/3)
    loss = kd_loss(_log([0.25, 0.75]), _log([0.5, 0.5]), temperature=1.0)
    assert loss.item() == pytest.approx(0.143841, abs=1e-5)


def test_kd_loss_two_class_t2_includes_t_squared() -> None:
    # At T=2 the teacher stays [.5, .5]; the student [.25, .75] becomes proportional to
    # [sqrt(.25), sqrt(.75)] = [.5, sqrt3/2], i.e. [1, sqrt3] / (1 + sqrt3) = [0.366025, 0.633975].
    # KL = .5 ln(.5 / .366025) + .5 ln(.5 / .633975) = 0.037252; times T^2 = 4 -> 0.149009.
    loss = kd_loss(_log([0.25, 0.75]), _log([0.5, 0.5]), temperature=2.0)
    assert loss.item() == pytest.approx(0.149009, abs=1e-5)


def test_kd_loss_averages_over_batch_rows() -> None:
    # Row 0 is the T=1 example above (0.143841); row 1 has identical logits (0).
    student = torch.cat([_log([0.25, 0.75]), torch.zeros(1, 2)])
    teacher = torch.cat([_log([0.5, 0.5]), torch.zeros(1, 2)])
    loss = kd_loss(student, teacher, temperature=1.0)
    assert loss.item() == pytest.approx(0.143841 / 2, abs=1e-5)


def test_kd_loss_gradient_matches_formula() -> None:
    # d/dz_s [T^2 KL(p_t || p_s)] = T (p_s - p_t) / B. With z_s = 0, p_s = 1/3 everywhere;
    # with T = 2: 2 * ([1/3] * 3 - [0.267949, 0.464102, 0.267949]).
    student = torch.zeros(1, 3, requires_grad=True)
    teacher = _log([0.2, 0.6, 0.2])
    kd_loss(student, teacher, temperature=2.0).backward()
    assert student.grad is not None
    expected = torch.tensor([[0.130768, -0.261537, 0.130768]])
    torch.testing.assert_close(student.grad, expected, rtol=0, atol=1e-5)


def test_kd_loss_gradient_divides_by_batch_size() -> None:
    student = torch.zeros(4, 3, requires_grad=True)
    teacher = _log([0.2, 0.6, 0.2]).expand(4, 3)
    kd_loss(student, teacher, temperature=2.0).backward()
    assert student.grad is not None
    expected = torch.tensor([[0.130768, -0.261537, 0.130768]]).expand(4, 3) / 4
    torch.testing.assert_close(student.grad, expected, rtol=0, atol=1e-5)


def test_kd_loss_does_not_detach_teacher() -> None:
    student = torch.zeros(1, 3)
    teacher = _log([0.2, 0.6, 0.2]).requires_grad_(True)
    kd_loss(student, teacher, temperature=2.0).backward()
    assert teacher.grad is not None
    assert teacher.grad.abs().sum().item() > 0


def test_kd_loss_detached_teacher_gets_no_grad() -> None:
    student = torch.zeros(1, 3, requires_grad=True)
    teacher_param = _log([0.2, 0.6, 0.2]).requires_grad_(True)
    kd_loss(student, teacher_param.detach(), temperature=2.0).backward()
    assert teacher_param.grad is None
    assert student.grad is not None


def test_kd_loss_is_finite_for_extreme_logits() -> None:
    student = torch.tensor([[1000.0, -1000.0, 0.0]])
    teacher = torch.tensor([[-1000.0, 1000.0, 0.0]])
    assert torch.isfinite(kd_loss(student, teacher, temperature=1.0))


def test_kd_loss_fp32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(16, 10, generator=gen) * 3).bfloat16()
    teacher = (torch.randn(16, 10, generator=gen) * 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = kd_loss(student, teacher, temperature=3.0)
    reference = kd_loss(student.float(), teacher.float(), temperature=3.0)
    assert loss.dtype == torch.float32
    assert reference.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- distillation


def test_cross_entropy_part_on_paper() -> None:
    # alpha = 1 is pure CE: -ln(0.7) = 0.356675 for probabilities [.1, .7, .2] and class 1.
    student = _log([0.1, 0.7, 0.2])
    loss = distillation_loss(student, torch.zeros(1, 3), torch.tensor([1]), alpha=1.0)
    assert loss.item() == pytest.approx(0.356675, abs=1e-5)


def test_distillation_loss_alpha_zero_is_kd() -> None:
    loss = distillation_loss(
        _log([0.25, 0.75]), _log([0.5, 0.5]), torch.tensor([0]), temperature=2.0, alpha=0.0
    )
    assert loss.item() == pytest.approx(0.149009, abs=1e-5)  # the T=2 example above


def test_distillation_loss_weighted_sum() -> None:
    # CE = -ln(0.75) = 0.287682; KD at T=2 = 0.149009 (above).
    # 0.1 * 0.287682 + 0.9 * 0.149009 = 0.162877.
    loss = distillation_loss(
        _log([0.25, 0.75]), _log([0.5, 0.5]), torch.tensor([1]), temperature=2.0, alpha=0.1
    )
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.162877, abs=1e-5)


def test_distillation_loss_accepts_int32_targets() -> None:
    loss = distillation_loss(
        _log([0.1, 0.7, 0.2]), torch.zeros(1, 3), torch.tensor([1], dtype=torch.int32), alpha=1.0
    )
    assert loss.item() == pytest.approx(0.356675, abs=1e-5)


def test_distillation_loss_fp32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(1)
    student = (torch.randn(16, 10, generator=gen) * 3).bfloat16()
    teacher = (torch.randn(16, 10, generator=gen) * 3).bfloat16()
    targets = torch.randint(0, 10, (16,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = distillation_loss(student, teacher, targets, temperature=2.0, alpha=0.3)
    reference = distillation_loss(
        student.float(), teacher.float(), targets, temperature=2.0, alpha=0.3
    )
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- labels / soft CE


def test_smooth_labels_on_paper() -> None:
    labels = smooth_labels(torch.tensor([1]), 4, epsilon=0.3)
    assert labels.dtype == torch.float32
    torch.testing.assert_close(labels, torch.tensor([[0.1, 0.7, 0.1, 0.1]]))


def test_uniform_smooth_labels_on_paper() -> None:
    labels = uniform_smooth_labels(torch.tensor([1]), 4, epsilon=0.3)
    assert labels.dtype == torch.float32
    torch.testing.assert_close(labels, torch.tensor([[0.075, 0.775, 0.075, 0.075]]))


def test_smooth_labels_epsilon_zero_is_one_hot() -> None:
    labels = smooth_labels(torch.tensor([2, 0]), 3, epsilon=0.0)
    torch.testing.assert_close(labels, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))


def test_soft_cross_entropy_one_hot_on_paper() -> None:
    loss = soft_cross_entropy(_log([0.1, 0.7, 0.2]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.356675, abs=1e-5)


def test_soft_cross_entropy_soft_target_on_paper() -> None:
    # -(0.5 ln 0.25 + 0.5 ln 0.75) = 0.5 * (1.386294 + 0.287682) = 0.836988
    loss = soft_cross_entropy(_log([0.25, 0.75]), torch.tensor([[0.5, 0.5]]))
    assert loss.item() == pytest.approx(0.836988, abs=1e-5)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3, 1.0])
def test_soft_cross_entropy_with_uniform_labels_matches_torch(epsilon: float) -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 5, generator=gen) * 2
    targets = torch.randint(0, 5, (6,), generator=gen)
    ours = soft_cross_entropy(logits, uniform_smooth_labels(targets, 5, epsilon=epsilon))
    reference = F.cross_entropy(logits, targets, label_smoothing=epsilon)
    torch.testing.assert_close(ours, reference)


def test_soft_cross_entropy_fp32_under_bf16_autocast() -> None:
    logits = _log([0.1, 0.7, 0.2]).bfloat16()
    targets = torch.tensor([[0.0, 1.0, 0.0]]).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = soft_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, soft_cross_entropy(logits.float(), targets.float()))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("temperature", [0.0, -1.5, math.inf, math.nan])
def test_bad_temperature_raises(temperature: float) -> None:
    logits = torch.zeros(2, 3)
    match = f"temperature must be a finite number > 0, got {temperature}"
    with pytest.raises(ValueError, match=match):
        kd_loss(logits, logits, temperature=temperature)
    with pytest.raises(ValueError, match=match):
        distillation_loss(logits, logits, torch.zeros(2, dtype=torch.long), temperature=temperature)
    with pytest.raises(ValueError, match=match):
        softmax_with_temperature(logits, temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_bad_alpha_raises(alpha: float) -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=f"alpha must be in \\[0, 1\\], got {alpha}"):
        distillation_loss(logits, logits, torch.zeros(2, dtype=torch.long), alpha=alpha)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4)])
def test_non_2d_logits_raise(shape: tuple[int, ...]) -> None:
    bad = torch.zeros(shape)
    good = torch.zeros(2, 3)
    got = re.escape(f"got shape {shape}")
    with pytest.raises(ValueError, match=f"student_logits must be 2-D.*{got}"):
        kd_loss(bad, good)
    with pytest.raises(ValueError, match=f"teacher_logits must be 2-D.*{got}"):
        kd_loss(good, bad)
    with pytest.raises(ValueError, match=f"logits must be 2-D.*{got}"):
        soft_cross_entropy(bad, bad)


def test_empty_batch_raises() -> None:
    empty = torch.zeros(0, 3)
    with pytest.raises(ValueError, match=r"must be non-empty, got shape \(0, 3\)"):
        kd_loss(empty, empty)


def test_batch_size_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="student has 2 rows, teacher has 3"):
        kd_loss(torch.zeros(2, 5), torch.zeros(3, 5))


def test_class_count_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="student has 10 classes, teacher has 100"):
        kd_loss(torch.zeros(2, 10), torch.zeros(2, 100))
    with pytest.raises(ValueError, match="student has 10 classes, teacher has 100"):
        distillation_loss(torch.zeros(2, 10), torch.zeros(2, 100), torch.zeros(2).long())


def test_soft_cross_entropy_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"target_probs shape \(2, 4\) does not match"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))


def test_integer_logits_raise_type_error() -> None:
    ints = torch.zeros(2, 3, dtype=torch.long)
    floats = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"student_logits .*got dtype torch\.int64"):
        kd_loss(ints, floats)
    with pytest.raises(TypeError, match=r"teacher_logits .*got dtype torch\.int64"):
        kd_loss(floats, ints)
    with pytest.raises(TypeError, match=r"logits .*got dtype torch\.int64"):
        soft_cross_entropy(ints, floats)
    with pytest.raises(TypeError, match=r"target_probs .*got dtype torch\.int64"):
        soft_cross_entropy(floats, ints)
    with pytest.raises(TypeError, match=r"logits .*got dtype torch\.int64"):
        softmax_with_temperature(ints, temperature=1.0)


def test_distillation_targets_validation() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\).*got \(3,\)"):
        distillation_loss(logits, logits, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\).*got \(2, 3\)"):
        distillation_loss(logits, logits, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"targets must be integer.*got dtype torch\.float32"):
        distillation_loss(logits, logits, torch.zeros(2))


@pytest.mark.parametrize("fn", [smooth_labels, uniform_smooth_labels])
def test_label_helpers_validation(fn: Callable[..., torch.Tensor]) -> None:
    targets = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        fn(targets, 1, epsilon=0.1)
    with pytest.raises(ValueError, match=r"epsilon must be in .*got -0\.1"):
        fn(targets, 3, epsilon=-0.1)
    with pytest.raises(ValueError, match=r"epsilon must be in .*got 1\.5"):
        fn(targets, 3, epsilon=1.5)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\), got label 3"):
        fn(torch.tensor([0, 3]), 3, epsilon=0.1)
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\), got label -1"):
        fn(torch.tensor([-1, 2]), 3, epsilon=0.1)
    with pytest.raises(ValueError, match=r"targets must be 1-D \(B,\), got shape \(2, 1\)"):
        fn(targets.unsqueeze(1), 3, epsilon=0.1)
    with pytest.raises(TypeError, match=r"got dtype torch\.float32"):
        fn(torch.tensor([0.0, 1.0]), 3, epsilon=0.1)


def test_smooth_labels_rejects_epsilon_one() -> None:
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\), got 1.0"):
        smooth_labels(torch.tensor([0]), 3, epsilon=1.0)
