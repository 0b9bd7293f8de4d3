"""Tests for :func:`lightning_kd.ema.ema_update_` and the EMA pairs every module declares
(:meth:`~lightning_kd.modules.base.LightningKDModule.ema_pairs`, updated by the base class)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_kd.ema import EMAPair, ema_update_
from lightning_kd.modules.base import Batch, LightningKDModule


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def _filled(value: float) -> nn.Sequential:
    """A network whose parameters and floating buffers all equal ``value``."""
    net = _net(0)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(value)
    return net


def _pair() -> tuple[nn.Sequential, nn.Sequential]:
    """(teacher, student) with different weights and different BN statistics."""
    teacher, student = _net(0), _net(1)
    student.train()
    student(torch.randn(16, 3, generator=torch.Generator().manual_seed(2)))  # moves BN stats
    return teacher, student


def _buf(net: nn.Sequential, name: str) -> torch.Tensor:
    """A BatchNorm buffer of the network, e.g. ``"running_mean"``."""
    return net.get_buffer(f"1.{name}")


def test_momentum_zero_copies_exactly() -> None:
    teacher, student = _pair()
    ema_update_(teacher, student, momentum=0.0, buffers="average")
    for (name, t), s in zip(
        teacher.state_dict().items(), student.state_dict().values(), strict=True
    ):
        assert torch.equal(t, s), name


def test_momentum_one_leaves_teacher_unchanged() -> None:
    teacher, student = _pair()
    before = copy.deepcopy(teacher.state_dict())
    ema_update_(teacher, student, momentum=1.0, buffers="average")
    for name, t in teacher.state_dict().items():
        if t.is_floating_point():
            assert torch.equal(t, before[name]), name
    # integer buffers are copied whatever the momentum
    assert _buf(teacher, "num_batches_tracked").item() == 1


def test_momentum_half_is_midpoint() -> None:
    teacher, student = _filled(1.0), _filled(2.0)
    ema_update_(teacher, student, momentum=0.5, buffers="average")
    for name, t in teacher.state_dict().items():
        if t.is_floating_point():
            assert torch.allclose(t, torch.full_like(t, 1.5)), name


def test_hand_value() -> None:
    # 0.9 * 1 + 0.1 * 3 = 1.2
    teacher, student = _filled(1.0), _filled(3.0)
    ema_update_(teacher, student, momentum=0.9)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1.2), msg=name)


def test_float_buffers_averaged_or_copied() -> None:
    # running_mean/var: teacher 1, student 3; momentum 0.75 -> 0.75 * 1 + 0.25 * 3 = 1.5.
    averaged, copied, student = _filled(1.0), _filled(1.0), _filled(3.0)
    ema_update_(averaged, student, momentum=0.75, buffers="average")
    ema_update_(copied, student, momentum=0.75, buffers="copy")
    for net, expected in ((averaged, 1.5), (copied, 3.0)):
        assert torch.equal(_buf(net, "running_mean"), torch.full((4,), expected))
        assert torch.equal(_buf(net, "running_var"), torch.full((4,), expected))
        # parameters are averaged in both modes
        assert torch.equal(net.get_parameter("1.weight"), torch.full((4,), 1.5))


@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_num_batches_tracked_is_copied(buffers: str) -> None:
    teacher, student = _net(0), _net(1)
    _buf(teacher, "num_batches_tracked").fill_(5)
    _buf(student, "num_batches_tracked").fill_(17)
    ema_update_(teacher, student, momentum=0.9, buffers=buffers)  # type: ignore[arg-type]
    counter = _buf(teacher, "num_batches_tracked")
    assert counter.dtype == torch.long
    assert counter.item() == 17


def test_default_buffer_mode_is_copy() -> None:
    teacher, student = _filled(1.0), _filled(3.0)
    ema_update_(teacher, student, momentum=0.5)
    assert torch.equal(_buf(teacher, "running_mean"), torch.full((4,), 3.0))


def test_no_graph_and_no_teacher_grad() -> None:
    teacher, student = _pair()  # student parameters require grad
    teacher.requires_grad_(False)
    ema_update_(teacher, student, momentum=0.5)
    for p in teacher.parameters():
        assert p.grad is None
        assert p.grad_fn is None
        assert not p.requires_grad


def test_no_graph_when_teacher_params_require_grad() -> None:
    teacher, student = _pair()  # plain copy: teacher still requires grad
    ema_update_(teacher, student, momentum=0.5)
    loss = sum(p.sum() for p in student.parameters())
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    for p in teacher.parameters():
        assert p.grad_fn is None
        assert p.is_leaf
        assert p.grad is None


def test_student_unchanged() -> None:
    teacher, student = _pair()
    before = copy.deepcopy(student.state_dict())
    ema_update_(teacher, student, momentum=0.3, buffers="average")
    for name, s in student.state_dict().items():
        assert torch.equal(s, before[name]), name


def test_teacher_dtype_respected() -> None:
    teacher, student = _filled(1.0).double(), _filled(3.0)
    ema_update_(teacher, student, momentum=0.9)
    for p in teacher.parameters():
        assert p.dtype == torch.float64
        assert torch.allclose(p, torch.full_like(p, 1.2))


def test_missing_and_extra_names_raise() -> None:
    teacher = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    msg = (
        r"parameters missing from student: \[1\.weight, 1\.bias\]; "
        r"extra parameters in student: \[2\.weight, 2\.bias\]"
    )
    with pytest.raises(ValueError, match=msg):
        ema_update_(teacher, student, momentum=0.9)


def test_missing_buffers_raise() -> None:
    teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    student = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="architectures differ"):
        ema_update_(teacher, student, momentum=0.9)


def test_shape_mismatch_raises() -> None:
    teacher = nn.Sequential(nn.Linear(3, 4))
    student = nn.Sequential(nn.Linear(3, 5))
    msg = r"parameter '0\.weight' has shape \(4, 3\) in teacher and \(5, 3\) in student"
    with pytest.raises(ValueError, match=msg):
        ema_update_(teacher, student, momentum=0.9)


def test_failed_pairing_leaves_teacher_untouched() -> None:
    teacher = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    student = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    before = copy.deepcopy(teacher.state_dict())
    with pytest.raises(ValueError):
        ema_update_(teacher, student, momentum=0.0)
    for name, t in teacher.state_dict().items():
        assert torch.equal(t, before[name]), name


@pytest.mark.parametrize("momentum", [-0.1, 1.01, math.nan])
def test_bad_momentum_raises(momentum: float) -> None:
    teacher, student = _pair()
    with pytest.raises(ValueError, match=rf"momentum must be in \[0, 1\], got {momentum}"):
        ema_update_(teacher, student, momentum=momentum)


def test_bad_buffer_mode_raises() -> None:
    teacher, student = _pair()
    with pytest.raises(ValueError, match="buffers must be 'average', 'copy' or 'keep', got 'mean'"):
        ema_update_(teacher, student, momentum=0.5, buffers="mean")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- EMA pairs


class TwoPairs(LightningKDModule):
    """Two students regressing 0, each with an EMA teacher: one pair copies the floating
    buffers, the other keeps the teacher's own. ``ema_momentum`` records the steps it is
    asked for and returns 0 (the teachers become copies of the students)."""

    def __init__(self) -> None:
        super().__init__(optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
        self.student_a, self.student_b = _net(0), _net(1)
        self.teacher_a = copy.deepcopy(self.student_a).requires_grad_(False)
        self.teacher_b = copy.deepcopy(self.student_b).requires_grad_(False)
        self.asked: list[int] = []

    def ema_pairs(self) -> list[EMAPair]:
        return [
            EMAPair(self.teacher_a, self.student_a, buffers="copy"),
            EMAPair(self.teacher_b, self.student_b, buffers="keep"),
        ]

    def ema_momentum(self, step: int) -> float:
        self.asked.append(step)
        return 0.0

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        x = batch[0]
        a, b = self.student_a(x), self.student_b(x)
        return {"loss": F.mse_loss(a, torch.zeros_like(a)) + F.mse_loss(b, torch.zeros_like(b))}


def _vectors(n: int) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    return DataLoader(TensorDataset(torch.randn(n, 3, generator=g)), batch_size=4)


def test_declared_pairs_are_updated_once_per_optimizer_step() -> None:
    # 5 batches, accumulate 2: optimizer steps after batches 2, 4 and 5 -> 3 updates, asked for
    # the momentum of steps 0, 1 and 2 (global_step before each step).
    module = TwoPairs()
    kept = {k: v.clone() for k, v in module.teacher_b.named_buffers()}
    t = trainer(max_epochs=1, accumulate_grad_batches=2)
    t.fit(module, train_dataloaders=_vectors(20))
    assert t.global_step == 3
    assert module.asked == [0, 1, 2]
    # momentum 0: the teachers' weights are the students'; buffers by each pair's policy.
    for name, value in module.teacher_a.state_dict().items():
        assert torch.equal(value, module.student_a.state_dict()[name]), name
    for name, value in module.teacher_b.named_parameters():
        assert torch.equal(value, module.student_b.get_parameter(name)), name
    for name, value in module.teacher_b.named_buffers():
        assert torch.equal(value, kept[name]), name
    assert not torch.equal(kept["1.running_mean"], module.student_b.get_buffer("1.running_mean"))


def test_a_module_with_pairs_must_give_its_momentum() -> None:
    class NoMomentum(TwoPairs):
        def ema_momentum(self, step: int) -> float:
            return LightningKDModule.ema_momentum(self, step)

    with pytest.raises(NotImplementedError, match="NoMomentum declares EMA pairs and must"):
        trainer(max_steps=1).fit(NoMomentum(), train_dataloaders=_vectors(4))
