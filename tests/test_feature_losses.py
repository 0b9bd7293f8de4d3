"""Feature losses (FitNets hints, attention transfer) against hand-worked numbers."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lightning_kd.losses.feature import attention_map, attention_transfer_loss, hint_loss

INV_SQRT2 = 1.0 / math.sqrt(2.0)

# ----------------------------------------------------------------------------- hint_loss


def test_hint_loss_on_paper() -> None:
    # Squared differences [[0, 4], [9, 0]] -> mean 13 / 4 = 3.25.
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    loss = hint_loss(student, teacher)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(3.25, abs=1e-6)


def test_hint_loss_4d_averages_over_every_element() -> None:
    # (2, 3, 2, 2): 24 elements; only one differs, by 2 -> 4 / 24.
    student = torch.zeros(2, 3, 2, 2)
    teacher = torch.zeros(2, 3, 2, 2)
    teacher[1, 2, 0, 1] = 2.0
    assert hint_loss(student, teacher).item() == pytest.approx(4.0 / 24.0, abs=1e-7)


def test_hint_loss_identical_is_zero() -> None:
    features = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    assert hint_loss(features, features.clone()).item() == 0.0


def test_hint_loss_gradient_is_two_diff_over_n() -> None:
    # d/ds mean((s - t)^2) = 2 (s - t) / N with N = 4: 2 * [[0, 2], [3, 0]] / 4.
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    hint_loss(student, teacher).backward()
    assert student.grad is not None
    torch.testing.assert_close(student.grad, torch.tensor([[0.0, 1.0], [1.5, 0.0]]))


def test_hint_loss_fp32_under_bf16_autocast() -> None:
    # The values are exact in bf16, so the float32 result is exactly 3.25.
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).bfloat16()
    teacher = torch.tensor([[1.0, 0.0], [0.0, 4.0]]).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = hint_loss(student, teacher)
    assert loss.dtype == torch.float32
    assert loss.item() == 3.25


def test_hint_loss_validation() -> None:
    with pytest.raises(ValueError, match=re.escape("shape (2, 8, 4, 4) does not match") + ".*"):
        hint_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 4, 4))
    with pytest.raises(ValueError, match=re.escape("teacher_features shape (2, 16, 4, 4)")):
        hint_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 4, 4))
    with pytest.raises(ValueError, match=re.escape("at least 2-D (B, D) or (B, C, H, W), got")):
        hint_loss(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match=re.escape("got shape (0, 3)")):
        hint_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(TypeError, match=r"student_features .*got dtype torch\.int64"):
        hint_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"teacher_features .*got dtype torch\.int64"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


# ----------------------------------------------------------------------------- attention_map


def test_attention_map_p2_on_paper() -> None:
    # (1, 2, 1, 2): channel 0 = [2, 0], channel 1 = [2, 4].
    # Mean of squares over channels: [(4 + 4) / 2, (0 + 16) / 2] = [4, 8] -> / sqrt(80)
    # = [1, 2] / sqrt(5) = [0.447214, 0.894427].
    features = torch.tensor([[[[2.0, 0.0]], [[2.0, 4.0]]]])
    amap = attention_map(features)
    assert amap.dtype == torch.float32
    torch.testing.assert_close(amap, torch.tensor([[0.447214, 0.894427]]), rtol=0, atol=1e-6)


def test_attention_map_p1_uses_absolute_values() -> None:
    # channel 0 = [2, -4], channel 1 = [4, 4]; mean |f| = [3, 4] -> [0.6, 0.8].
    features = torch.tensor([[[[2.0, -4.0]], [[4.0, 4.0]]]])
    amap = attention_map(features, p=1.0)
    torch.testing.assert_close(amap, torch.tensor([[0.6, 0.8]]), rtol=0, atol=1e-6)


def test_attention_map_shape_and_unit_rows() -> None:
    features = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    amap = attention_map(features)
    assert amap.shape == (2, 20)
    torch.testing.assert_close(amap.norm(dim=1), torch.ones(2))


def test_attention_map_ignores_channel_count() -> None:
    # Repeating every channel leaves the channel mean, hence the map, unchanged.
    features = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    doubled = torch.cat([features, features], dim=1)  # (2, 6, 4, 4)
    torch.testing.assert_close(attention_map(doubled), attention_map(features))


def test_attention_map_of_zeros_is_zero() -> None:
    amap = attention_map(torch.zeros(1, 3, 2, 2))
    assert torch.equal(amap, torch.zeros(1, 4))


# ----------------------------------------------------------------------------- AT loss

# Student (1, 1, 1, 2) = [[1, 1]] -> map [1, 1] / sqrt2 = [0.707107, 0.707107].
# Teacher (1, 3, 1, 2), channels [5, 0], [1, 0], [0, 0] -> mean squares [26/3, 0] -> [1, 0].
# loss = ((1/sqrt2 - 1)^2 + (1/sqrt2)^2) / 2 = (1 - sqrt2 + 1/2 + 1/2) / 2 = 1 - 1/sqrt2
#      = 0.292893.
AT_STUDENT = [[[[1.0, 1.0]]]]
AT_TEACHER = [[[[5.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]]]]


def test_attention_transfer_loss_on_paper_with_different_channels() -> None:
    loss = attention_transfer_loss(torch.tensor(AT_STUDENT), torch.tensor(AT_TEACHER))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.292893, abs=1e-6)


def test_attention_transfer_loss_averages_over_batch() -> None:
    # Row 1: student [[3, 0]] and teacher [[7, 0], [0, 0], [0, 0]] both map to [1, 0] -> 0.
    student = torch.tensor([AT_STUDENT[0], [[[3.0, 0.0]]]])  # (2, 1, 1, 2)
    teacher = torch.tensor([AT_TEACHER[0], [[[7.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])
    loss = attention_transfer_loss(student, teacher)
    assert loss.item() == pytest.approx(0.292893 / 2, abs=1e-6)


def test_attention_transfer_loss_gradient_on_paper() -> None:
    # L = ((a0 - 1)^2 + a1^2) / 2 with a = v / |v|, v = (x^2, y^2), x = y = 1, |v| = sqrt2.
    # dL/da = (1/sqrt2 - 1, 1/sqrt2); (I - a a^T) dL/da = (-1/2, 1/2); / |v| -> (-1, 1) / (2 sqrt2);
    # dv/dx = 2x = 2 -> grad = (-1/sqrt2, 1/sqrt2) = (-0.707107, 0.707107).
    student = torch.tensor(AT_STUDENT, requires_grad=True)
    attention_transfer_loss(student, torch.tensor(AT_TEACHER)).backward()
    assert student.grad is not None
    expected = torch.tensor([[[[-INV_SQRT2, INV_SQRT2]]]])
    torch.testing.assert_close(student.grad, expected, rtol=0, atol=1e-6)


def test_attention_transfer_loss_identical_maps_is_zero() -> None:
    features = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(3))
    scaled = torch.cat([2.0 * features, 2.0 * features], dim=1)  # same map, 8 channels
    assert attention_transfer_loss(features, scaled).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_transfer_loss_fp32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(2, 4, 3, 3, generator=gen).bfloat16()
    teacher = torch.randn(2, 6, 3, 3, generator=gen).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = attention_transfer_loss(student, teacher)
    assert loss.dtype == torch.float32
    reference = attention_transfer_loss(student.float(), teacher.float())
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((2, 4, 8, 8), (3, 4, 8, 8)), ((2, 4, 8, 8), (2, 4, 4, 4)), ((2, 4, 8, 8), (2, 4, 8, 7))],
)
def test_attention_transfer_loss_size_mismatch_names_both_shapes(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]
) -> None:
    pattern = re.escape(f"{student_shape}") + ".*" + re.escape(f"{teacher_shape}")
    with pytest.raises(ValueError, match=r"\(B, H, W\) must match.*" + pattern):
        attention_transfer_loss(torch.zeros(student_shape), torch.zeros(teacher_shape))


@pytest.mark.parametrize("p", [0.0, -1.0, math.inf, math.nan])
def test_bad_p_raises(p: float) -> None:
    features = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match=f"p must be a finite number > 0, got {p}"):
        attention_map(features, p=p)
    with pytest.raises(ValueError, match=f"p must be a finite number > 0, got {p}"):
        attention_transfer_loss(features, features, p=p)


def test_attention_rank_and_dtype_validation() -> None:
    good = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=re.escape("features must be 4-D (B, C, H, W), got")):
        attention_map(torch.zeros(2, 16))
    with pytest.raises(ValueError, match=re.escape("student_features must be 4-D") + ".*16"):
        attention_transfer_loss(torch.zeros(2, 16), good)
    with pytest.raises(ValueError, match=re.escape("teacher_features must be 4-D")):
        attention_transfer_loss(good, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=re.escape("must be non-empty, got shape (0, 3, 4, 4)")):
        attention_map(torch.zeros(0, 3, 4, 4))
    with pytest.raises(TypeError, match=r"features .*got dtype torch\.int64"):
        attention_map(good.long())
    with pytest.raises(TypeError, match=r"teacher_features .*got dtype torch\.int64"):
        attention_transfer_loss(good, good.long())
