"""DINO loss, teacher entropy and DINOCenter: closed-form values, gradients, state, DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from dino_center_ddp_script import DIM, MOMENTUM, NUM_STEPS, rank_views
from torch import Tensor

from lightning_kd.losses import DINOCenter, dino_loss, teacher_entropy

HERE = Path(__file__).parent
LN3 = math.log(3.0)

# Hand example, B = 1, K = 2, V_t = V_s = 2, tau_t = 0.5, tau_s = 2, center c = [ln3 / 2, 0]:
#   teacher view 0: t0 = [ln3 / 2, 0] -> (t0 - c) / 0.5 = [0, 0]    -> q0 = [1/2, 1/2]
#   teacher view 1: t1 = [ln3, 0]     -> (t1 - c) / 0.5 = [ln3, 0]  -> q1 = [3/4, 1/4]
#   student view 0: s0 = [2 ln3, 0]   -> s0 / 2 = [ln3, 0]          -> p0 = [3/4, 1/4]
#   student view 1: s1 = [0, 0]                                     -> p1 = [1/2, 1/2]
#   H(q0, p1) = -(1/2 ln 1/2 + 1/2 ln 1/2)  = ln 2                   = 0.6931471806
#   H(q1, p0) = -(3/4 ln 3/4 + 1/4 ln 1/4)                           = 0.5623351446
#   loss = (0.6931471806 + 0.5623351446) / 2                         = 0.6277411626
# The excluded same-view pairs would be H(q0, p0) = 0.8369882168 and H(q1, p1) = ln 2; with
# them the mean over 4 pairs would be 0.6964044306.
HAND_TEACHER = [[[LN3 / 2, 0.0]], [[LN3, 0.0]]]
HAND_STUDENT = [[[2 * LN3, 0.0]], [[0.0, 0.0]]]
HAND_CENTER = [LN3 / 2, 0.0]
HAND_LOSS = 0.6277411626
HAND_LOSS_WITH_SAME_VIEW_PAIRS = 0.6964044306


def _hand_loss(
    student_out: Sequence[Tensor] | Tensor | None = None,
    teacher_out: Sequence[Tensor] | Tensor | None = None,
    center: Tensor | None = None,
    student_temperature: float = 2.0,
    teacher_temperature: float = 0.5,
) -> Tensor:
    """``dino_loss`` on the hand example, with any argument replaced."""
    return dino_loss(
        [torch.tensor(v) for v in HAND_STUDENT] if student_out is None else student_out,
        [torch.tensor(v) for v in HAND_TEACHER] if teacher_out is None else teacher_out,
        torch.tensor(HAND_CENTER) if center is None else center,
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
    )


def test_hand_computed_two_view_example() -> None:
    loss = _hand_loss()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, torch.tensor(HAND_LOSS), rtol=0, atol=1e-6)


def test_same_view_pairs_are_excluded() -> None:
    loss = _hand_loss()
    assert abs(loss.item() - HAND_LOSS_WITH_SAME_VIEW_PAIRS) > 0.05
    # With one teacher view, student view 0 is only ever paired with itself: it cannot matter.
    gen = torch.Generator().manual_seed(0)
    teacher = [torch.randn(3, 5, generator=gen)]
    local = torch.randn(3, 5, generator=gen)
    center = torch.zeros(5)
    values = [
        dino_loss(
            [torch.randn(3, 5, generator=gen) * 10, local],
            teacher,
            center,
            student_temperature=0.1,
            teacher_temperature=0.04,
        )
        for _ in range(3)
    ]
    assert values[0] == values[1] == values[2]


def test_accepts_stacked_tensor_and_1_by_k_center() -> None:
    stacked = _hand_loss(
        student_out=torch.tensor(HAND_STUDENT),
        teacher_out=torch.tensor(HAND_TEACHER),
        center=torch.tensor([HAND_CENTER]),
    )
    torch.testing.assert_close(stacked, torch.tensor(HAND_LOSS), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("n_teacher", "n_student"), [(1, 2), (2, 2), (2, 6)])
def test_uniform_distributions_give_log_k(n_teacher: int, n_student: int) -> None:
    k = 7
    loss = dino_loss(
        torch.zeros(n_student, 4, k),
        torch.zeros(n_teacher, 4, k),
        torch.zeros(1, k),
        student_temperature=0.1,
        teacher_temperature=0.04,
    )
    assert loss.item() == pytest.approx(math.log(k), abs=1e-6)


def test_uniform_student_gives_log_k_for_any_teacher() -> None:
    # -sum_k q_k log(1 / K) = log K whatever q is.
    gen = torch.Generator().manual_seed(1)
    k = 10
    loss = dino_loss(
        [torch.full((3, k), 2.5)] * 4,
        [torch.randn(3, k, generator=gen) * 5 for _ in range(2)],
        torch.randn(k, generator=gen),
        student_temperature=0.1,
        teacher_temperature=0.04,
    )
    assert loss.item() == pytest.approx(math.log(k), abs=1e-5)


def test_center_subtracted_from_teacher_gives_uniform_targets() -> None:
    # Teacher logits equal to the center: uniform targets, so the loss is the mean
    # cross-entropy of the student against uniform, -mean_k log p_k.
    student = [torch.tensor([[LN3, 0.0]]), torch.tensor([[LN3, 0.0]])]  # p = [3/4, 1/4]
    teacher = [torch.tensor([[4.0, -1.0]])] * 2
    loss = dino_loss(
        student,
        teacher,
        torch.tensor([4.0, -1.0]),
        student_temperature=1.0,
        teacher_temperature=0.04,
    )
    expected = -(math.log(0.75) + math.log(0.25)) / 2  # 0.8369882168
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gradient_single_pair_hand_values() -> None:
    # V_t = 1, V_s = 2: the only pair is (teacher 0, student 1). B = 1, tau_s = 0.5:
    #   q0 = softmax([ln3, 0] / 1) = [3/4, 1/4], p1 = softmax([0, 0] / 0.5) = [1/2, 1/2]
    #   d loss / d s1 = (p1 - q0) / (tau_s * P * B) = [-1/4, 1/4] / 0.5 = [-1/2, 1/2]
    s0 = torch.tensor([[1.0, -2.0]], requires_grad=True)
    s1 = torch.zeros(1, 2, requires_grad=True)
    loss = dino_loss(
        [s0, s1],
        [torch.tensor([[LN3, 0.0]])],
        torch.zeros(2),
        student_temperature=0.5,
        teacher_temperature=1.0,
    )
    loss.backward()
    assert s1.grad is not None
    torch.testing.assert_close(s1.grad, torch.tensor([[-0.5, 0.5]]), rtol=0, atol=1e-6)
    assert s0.grad is None or torch.count_nonzero(s0.grad) == 0


def test_gradient_matches_formula_with_several_pairs() -> None:
    # d loss / d s_j = sum_{i != j} (p_j - q_i) / (tau_s * P * B), P = V_t * V_s - V_t.
    gen = torch.Generator().manual_seed(2)
    batch, k, tau_s, tau_t = 3, 5, 0.2, 0.07
    n_teacher, n_student = 2, 4
    n_pairs = n_teacher * n_student - n_teacher  # 6
    student = [torch.randn(batch, k, generator=gen).requires_grad_() for _ in range(n_student)]
    teacher = [torch.randn(batch, k, generator=gen) for _ in range(n_teacher)]
    center = torch.randn(1, k, generator=gen)
    dino_loss(
        student, teacher, center, student_temperature=tau_s, teacher_temperature=tau_t
    ).backward()
    q = [torch.softmax((t - center) / tau_t, dim=1) for t in teacher]
    for j, s in enumerate(student):
        p = torch.softmax(s.detach() / tau_s, dim=1)
        expected = sum(p - q[i] for i in range(n_teacher) if i != j) / (tau_s * n_pairs * batch)
        assert s.grad is not None
        torch.testing.assert_close(s.grad, expected)


def test_teacher_and_center_get_no_gradient() -> None:
    teacher = [torch.randn(2, 3, requires_grad=True) for _ in range(2)]
    student = [torch.randn(2, 3, requires_grad=True) for _ in range(3)]
    center = torch.randn(3, requires_grad=True)
    dino_loss(
        student, teacher, center, student_temperature=0.1, teacher_temperature=0.04
    ).backward()
    assert all(t.grad is None for t in teacher)
    assert center.grad is None
    assert all(s.grad is not None for s in student)


def test_bf16_autocast_gives_float32_close_to_fp32() -> None:
    gen = torch.Generator().manual_seed(3)
    k = 64
    student32 = [torch.randn(4, k, generator=gen) * 20 for _ in range(4)]
    teacher32 = [torch.randn(4, k, generator=gen) * 20 for _ in range(2)]
    center = torch.randn(1, k, generator=gen)
    kwargs = {"student_temperature": 0.1, "teacher_temperature": 0.04}
    student16 = [s.bfloat16() for s in student32]
    teacher16 = [t.bfloat16() for t in teacher32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = dino_loss(student16, teacher16, center, **kwargs)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    # Same bf16 values, computed in fp32 outside autocast: identical math.
    upcast = dino_loss(
        [s.float() for s in student16], [t.float() for t in teacher16], center, **kwargs
    )
    torch.testing.assert_close(loss16, upcast)
    # Against the original fp32 inputs, only the bf16 rounding of the logits differs.
    loss32 = dino_loss(student32, teacher32, center, **kwargs)
    torch.testing.assert_close(loss16, loss32, rtol=0.05, atol=0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"student_temperature": 0.0}, ValueError, "student_temperature must be"),
        ({"teacher_temperature": -1.0}, ValueError, "teacher_temperature must be"),
        ({"teacher_temperature": math.nan}, ValueError, "teacher_temperature must be"),
        ({"student_out": [torch.zeros(1, 2)]}, ValueError, "more views"),
        (
            {"student_out": [torch.zeros(1, 2)], "teacher_out": [torch.zeros(1, 2)]},
            ValueError,
            "at least one",
        ),
        ({"student_out": [torch.zeros(1, 2), torch.zeros(2, 2)]}, ValueError, "same shape"),
        ({"student_out": [torch.zeros(1, 3)] * 2}, ValueError, "same shape"),
        ({"student_out": torch.zeros(1, 2)}, ValueError, r"3-D \(V, B, K\)"),
        ({"student_out": []}, ValueError, "non-empty"),
        ({"student_out": [torch.zeros(1, 2, dtype=torch.long)] * 2}, TypeError, "floating"),
        ({"teacher_out": [torch.zeros(2)] * 2}, ValueError, r"2-D \(B, K\)"),
        ({"center": torch.zeros(3)}, ValueError, r"center must have shape \(2,\)"),
        ({"center": torch.zeros(2, 2)}, ValueError, "center must have shape"),
        ({"center": torch.zeros(2, dtype=torch.long)}, TypeError, "center must be"),
    ],
)
def test_invalid_inputs(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _hand_loss(**kwargs)


# ---------------------------------------------------------------------------- teacher_entropy


def test_teacher_entropy_uniform_and_one_hot() -> None:
    k = 6
    uniform = teacher_entropy([torch.zeros(3, k)] * 2, torch.zeros(k), teacher_temperature=0.04)
    assert uniform.item() == pytest.approx(math.log(k), abs=1e-6)
    # Logits equal to the center are uniform after centring, whatever the logits are.
    logits = torch.randn(3, k)
    centred = teacher_entropy([logits], logits[0], teacher_temperature=0.04)
    assert centred.item() == pytest.approx(
        teacher_entropy([logits - logits[0]], torch.zeros(k), teacher_temperature=0.04).item(),
        abs=1e-6,
    )
    peaked = torch.zeros(2, 3, k)
    peaked[..., 2] = 10.0
    one_hot = teacher_entropy(peaked, torch.zeros(1, k), teacher_temperature=0.04)
    assert one_hot.dtype == torch.float32
    assert 0.0 <= one_hot.item() < 1e-6


def test_teacher_entropy_hand_value_and_no_grad() -> None:
    # Two rows: q = [1/2, 1/2] (entropy ln 2) and q = [3/4, 1/4] (entropy 0.5623351446).
    logits = torch.tensor([[0.0, 0.0], [LN3 / 2, 0.0]], requires_grad=True)
    entropy = teacher_entropy([logits], torch.zeros(2), teacher_temperature=0.5)
    assert entropy.item() == pytest.approx((math.log(2) + 0.5623351446) / 2, abs=1e-6)
    assert not entropy.requires_grad
    with pytest.raises(ValueError, match="teacher_temperature"):
        teacher_entropy([logits], torch.zeros(2), teacher_temperature=0.0)


# -------------------------------------------------------------------------------- DINOCenter


def test_center_starts_at_zero_and_forward_does_not_mutate() -> None:
    center = DINOCenter(3, momentum=0.9)
    assert center.center.shape == (1, 3) and center.center.dtype == torch.float32
    assert torch.count_nonzero(center.center) == 0
    assert torch.equal(center(), torch.zeros(1, 3))
    assert list(center.state_dict()) == ["center"]
    before = center.center.clone()
    center()
    assert torch.equal(center.center, before)


@pytest.mark.parametrize(
    ("momentum", "expected"), [(0.0, [3.0, 5.0]), (1.0, [1.0, -1.0]), (0.5, [2.0, 2.0])]
)
def test_center_update_momentum(momentum: float, expected: list[float]) -> None:
    # Old center [1, -1]; batch mean [3, 5]: m = 0 copies, m = 1 keeps, m = 0.5 is the midpoint.
    center = DINOCenter(2, momentum=momentum)
    center.center.copy_(torch.tensor([[1.0, -1.0]]))
    center.accumulate(
        [torch.tensor([[2.0, 4.0], [4.0, 6.0]]), torch.tensor([[3.0, 5.0], [3.0, 5.0]])]
    )
    assert torch.equal(center.center, torch.tensor([[1.0, -1.0]]))  # accumulate only adds up
    center.update()
    assert torch.equal(center.center, torch.tensor([expected]))
    assert center.pending_rows == 0


def test_center_update_uses_the_mean_over_all_rows() -> None:
    # Views with 2 and 3 rows: sum [4, 15] over 5 rows = [0.8, 3.0]. The mean of the two
    # view means would be [1.0, 2.5].
    center = DINOCenter(2, momentum=0.0)
    center.accumulate([torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[0.0, 5.0]] * 3)])
    assert center.pending_rows == 5
    center.update()
    torch.testing.assert_close(center.center, torch.tensor([[0.8, 3.0]]))
    center.accumulate(torch.tensor([[1.0, 1.0], [3.0, 3.0]]))  # one (N, K) tensor
    center.update()
    torch.testing.assert_close(center.center, torch.tensor([[2.0, 2.0]]))
    center.accumulate(torch.tensor([[[1.0, 1.0]], [[3.0, 5.0]]]))  # one (V, B, K) tensor
    center.update()
    torch.testing.assert_close(center.center, torch.tensor([[2.0, 3.0]]))


def test_accumulated_micro_batches_move_the_center_once_by_their_joint_mean() -> None:
    # Micro-batches of 2 rows (mean [2, 2]) and 3 rows (mean [1, 6]); m = 0.5, old c = [0, 4].
    # Jointly: sum [7, 22] over 5 rows = [1.4, 4.4] -> c = 0.5 [0, 4] + 0.5 [1.4, 4.4]
    # = [0.7, 4.2]. One update per micro-batch would give 0.5 (0.5 c + 0.5 [2, 2]) + 0.5 [1, 6]
    # = [1.0, 4.5].
    center = DINOCenter(2, momentum=0.5)
    center.center.copy_(torch.tensor([[0.0, 4.0]]))
    center.accumulate([torch.tensor([[1.0, 3.0]]), torch.tensor([[3.0, 1.0]])])
    center.accumulate(torch.tensor([[1.0, 6.0], [0.0, 7.0], [2.0, 5.0]]))
    assert center.pending_rows == 5
    assert torch.equal(center.center, torch.tensor([[0.0, 4.0]]))
    center.update()
    torch.testing.assert_close(center.center, torch.tensor([[0.7, 4.2]]), rtol=0, atol=1e-6)
    # The pending total was emptied: an update with nothing accumulated keeps the center.
    center.update()
    torch.testing.assert_close(center.center, torch.tensor([[0.7, 4.2]]), rtol=0, atol=1e-6)


def test_reset_drops_the_pending_rows_without_moving_the_center() -> None:
    center = DINOCenter(2, momentum=0.0)
    center.accumulate(torch.tensor([[float("nan"), 1.0]]))  # e.g. a skipped, non-finite step
    center.reset()
    assert center.pending_rows == 0
    center.update()
    assert torch.equal(center.center, torch.zeros(1, 2))
    center.accumulate(torch.tensor([[2.0, 1.0]]))
    center.update()
    assert torch.equal(center.center, torch.tensor([[2.0, 1.0]]))


def test_only_update_all_reduces_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_kd.losses.dino as dino_module

    calls: list[Tensor] = []

    def counting_all_reduce(tensor: Tensor) -> Tensor:
        calls.append(tensor.clone())
        return tensor

    monkeypatch.setattr(dino_module, "all_reduce_sum_", counting_all_reduce)
    center = DINOCenter(2, momentum=0.5)
    for _ in range(3):
        center.accumulate(torch.ones(4, 2))
    assert calls == []
    center.update()
    # One call with the packed [row sum (K,), row count] of the 3 micro-batches.
    assert len(calls) == 1
    assert torch.equal(calls[0], torch.tensor([12.0, 12.0, 12.0]))
    assert list(center.state_dict()) == ["center"]  # the pending total is not state


def test_center_update_is_gradient_free_and_float32_under_autocast() -> None:
    center = DINOCenter(2, momentum=0.5)
    out = torch.tensor([[2.0, 4.0]], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        center.accumulate([out.bfloat16()])
        center.update()
    assert center.center.dtype == torch.float32
    assert not center.center.requires_grad
    torch.testing.assert_close(center.center, torch.tensor([[1.0, 2.0]]))


@pytest.mark.parametrize(
    ("args", "match"),
    [((0,), "dim must be"), ((2, -0.1), "momentum must be"), ((2, 1.5), "momentum must be")],
)
def test_center_invalid_construction(args: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DINOCenter(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("teacher_out", "error", "match"),
    [
        ([torch.zeros(2, 3)], ValueError, r"\(N, 2\)"),
        ([], ValueError, "non-empty"),
        ([torch.zeros(0, 2)], ValueError, "at least one row"),
        (torch.zeros(2), ValueError, r"\(N, 2\)"),
        ([torch.zeros(2, 2, dtype=torch.long)], TypeError, "floating"),
    ],
)
def test_center_invalid_update(teacher_out: object, error: type[Exception], match: str) -> None:
    center = DINOCenter(2)
    with pytest.raises(error, match=match):
        center.accumulate(teacher_out)  # type: ignore[arg-type]
    assert center.pending_rows == 0
    center.update()
    assert torch.count_nonzero(center.center) == 0


def test_center_is_identical_across_two_ddp_processes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "dino_center_ddp_script.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].shape == (NUM_STEPS, 1, DIM)
    assert torch.equal(ranks[0], ranks[1])

    # Expected: one process updating with all rows of both ranks (3 + 5 per view).
    expected = DINOCenter(DIM, momentum=MOMENTUM)
    local_only = DINOCenter(DIM, momentum=MOMENTUM)
    for step in range(NUM_STEPS):
        expected.accumulate(rank_views(0, step) + rank_views(1, step))
        expected.update()
        local_only.accumulate(rank_views(0, step))
        local_only.update()
        torch.testing.assert_close(ranks[0][step], expected.center)
    # The all-reduce mattered: rank 0's own rows alone give a clearly different center.
    assert not torch.allclose(ranks[0][-1], local_only.center, atol=0.5)
    # The data tells the mean over rows apart from the mean of the two ranks' means.
    rows = [torch.cat(rank_views(r, 0)) for r in (0, 1)]
    mean_of_means = (rows[0].mean(0) + rows[1].mean(0)) / 2
    assert not torch.allclose(torch.cat(rows).mean(0), mean_of_means, atol=0.1)
