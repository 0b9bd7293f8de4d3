"""DINOModule and BYOLModule (SelfDistillationModule): EMA teacher, schedules, center, resume,
bf16, DDP, errors, embeddings, and an end-to-end run with the online probe and kNN callback.

The linear probe itself is tested in ``test_linear_probe.py``."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from tiny import RecordingLogger, trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_kd.callbacks import KNNEvaluation
from lightning_kd.data import CIFAR10DataModule
from lightning_kd.data.transforms import MultiCropViews, TwoViews
from lightning_kd.modules.byol import BYOLModule
from lightning_kd.modules.dino import DINOModule
from lightning_kd.modules.self_distillation import SelfDistillationModule

HERE = Path(__file__).parent
SQRT2_2 = math.sqrt(2.0) / 2.0
SQRT3_2 = math.sqrt(3.0) / 2.0


# ----------------------------------------------------------------------------- fixtures


class TinyBackbone(nn.Module):
    """conv-BN-ReLU, global average pool: images ``(B, 3, H, W)`` -> features ``(B, width)``."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.num_features = width

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))  # (B, width)


class ViewsDataset(Dataset):
    """Sample ``i`` is ``([view_0[i], view_1[i], ...], targets[i])``."""

    def __init__(self, views: list[Tensor], targets: Tensor) -> None:
        self.views = views
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[list[Tensor], Tensor]:
        return [v[index] for v in self.views], self.targets[index]


class ViewsData(L.LightningDataModule):
    """Fixed 8x8 images in the self-distillation layout, in a fixed order (no randomness).

    Training batches are ``[[global1, global2, local1, ...], y]``: the second global view is
    the mirrored image plus fixed noise (or the image itself with ``same_views``), the local
    views are 4x4 crops. Validation batches are ``[x, y]``.
    """

    def __init__(
        self,
        n: int = 16,
        batch_size: int = 4,
        num_local: int = 2,
        same_views: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        second = self.x.clone() if same_views else self.x.flip(-1) + 0.3 * torch.randn_like(self.x)
        local = [self.x[:, :, i : i + 4, 2 * i : 2 * i + 4].clone() for i in range(num_local)]
        self.views = [self.x, second, *local]
        self.batch_size = batch_size
        self.num_classes = 4

    def train_dataloader(self) -> DataLoader:
        return DataLoader(ViewsDataset(self.views, self.y), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)


def make_dino(
    cls: type[DINOModule] = DINOModule, backbone: nn.Module | None = None, **kwargs: Any
) -> DINOModule:
    """A tiny DINO (K = 8 outputs), no weight-decay schedule, no last-layer freeze."""
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "out_dim": 8,
        "hidden_dim": 8,
        "bottleneck_dim": 4,
        "head_layers": 2,
        "momentum_start": 0.9,
        "weight_decay_end": None,
        "freeze_last_layer_epochs": 0,
    }
    settings.update(kwargs)
    return cls(TinyBackbone() if backbone is None else backbone, **settings)


def make_byol(**kwargs: Any) -> BYOLModule:
    torch.manual_seed(0)
    settings: dict[str, Any] = {"projection_dim": 4, "hidden_dim": 8, "momentum_start": 0.9}
    settings.update(kwargs)
    return BYOLModule(TinyBackbone(), **settings)


def data_for(module: SelfDistillationModule, **kwargs: Any) -> ViewsData:
    """DINO gets 2 global + 2 local views, BYOL 2 views."""
    num_local = 2 if isinstance(module, DINOModule) else 0
    return ViewsData(num_local=kwargs.pop("num_local", num_local), **kwargs)


MAKERS: dict[str, Callable[..., SelfDistillationModule]] = {"dino": make_dino, "byol": make_byol}


def _params(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _buffers(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.named_buffers()}


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def _logged(logger: RecordingLogger, key: str) -> list[tuple[int | None, float]]:
    return [(step, m[key]) for step, m in logger.metrics if key in m]


LAST_LAYER = ("head.last_layer.parametrizations.weight.original0",
              "head.last_layer.parametrizations.weight.original1")  # fmt: skip


# ----------------------------------------------------------------------------- teacher


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_teacher_is_a_frozen_copy_outside_the_optimizer(kind: str) -> None:
    module = MAKERS[kind]()
    assert module.teacher is not module.student
    _assert_equal(_state(module.teacher), _state(module.student))
    assert all(not p.requires_grad for p in module.teacher.parameters())
    initial = _params(module.teacher)

    trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=data_for(module))

    assert all(p.grad is None for p in module.teacher.parameters())
    optimizer = module.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    expected = {id(p) for p in module.student.parameters() if p.requires_grad}
    if isinstance(module, BYOLModule):
        expected |= {id(p) for p in module.predictor.parameters()}
    else:  # norm_last_layer=True: g of the last layer is fixed at 1, not trained
        g = module.student.get_parameter(LAST_LAYER[0])
        assert not g.requires_grad and torch.equal(g, torch.ones_like(g))
    assert in_optimizer == expected
    assert not in_optimizer & {id(p) for p in module.teacher.parameters()}
    # The teacher moved (by EMA only) and is not the final student.
    name = "backbone.conv.weight"
    assert not torch.equal(module.teacher.get_parameter(name), initial[name])
    assert not torch.equal(module.teacher.get_parameter(name), module.student.get_parameter(name))


class _RecordAfterStep(Callback):
    """Teacher and student parameters after every optimizer step (and its teacher update)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *_: object) -> None:
        self.pairs.append((_params(pl_module.teacher), _params(pl_module.student)))


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_momentum_one_leaves_the_teacher_unchanged(kind: str) -> None:
    module = MAKERS[kind](momentum_start=1.0, momentum_end=1.0)
    initial = _params(module.teacher)
    record = _RecordAfterStep()
    trainer(max_steps=3, limit_val_batches=0, callbacks=[record]).fit(
        module, datamodule=data_for(module)
    )
    assert len(record.pairs) == 3
    for teacher, student in record.pairs:
        _assert_equal(teacher, initial)
        assert not torch.equal(student["backbone.conv.weight"], initial["backbone.conv.weight"])


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_momentum_zero_teacher_is_the_student_after_every_step(kind: str) -> None:
    module = MAKERS[kind](momentum_start=0.0, momentum_end=0.0)
    initial = _params(module.teacher)
    record = _RecordAfterStep()
    trainer(max_steps=3, limit_val_batches=0, callbacks=[record]).fit(
        module, datamodule=data_for(module)
    )
    assert len(record.pairs) == 3
    for teacher, student in record.pairs:
        _assert_equal(teacher, student)
    assert not torch.equal(
        record.pairs[0][0]["backbone.conv.weight"], initial["backbone.conv.weight"]
    )
    if kind == "dino":
        # The student's backbone ran on the global and then the local views, the teacher's on
        # the global views only: equal weights, but the BN statistics were not copied.
        assert not torch.equal(
            module.teacher.get_buffer("backbone.bn.running_mean"),
            module.student.get_buffer("backbone.bn.running_mean"),
        )


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_momentum_half_gives_the_midpoint(kind: str) -> None:
    # tau = 0.5 throughout: each update moves the teacher halfway to the new student.
    module = MAKERS[kind](momentum_start=0.5, momentum_end=0.5)
    teacher = _params(module.teacher)
    record = _RecordAfterStep()
    trainer(max_steps=2, limit_val_batches=0, callbacks=[record]).fit(
        module, datamodule=data_for(module)
    )
    for new_teacher, student in record.pairs:
        for name, value in new_teacher.items():
            midpoint = (teacher[name] + student[name]) / 2
            torch.testing.assert_close(value, midpoint, rtol=1e-6, atol=1e-7, msg=name)
        teacher = new_teacher


class _ReplayTeacher(Callback):
    """Checks that after each step the teacher's buffers are those of one forward of the
    pre-step teacher on this step's two global views (its own BatchNorm statistics)."""

    def __init__(self) -> None:
        self.before: nn.Module | None = None
        self.mismatches: list[tuple[int, str]] = []
        self.steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *_: object) -> None:
        self.before = copy.deepcopy(pl_module.teacher)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self.before is not None and self.before.training
        with torch.no_grad():
            self.before(torch.cat(batch[0][:2]))
        replayed = dict(self.before.named_buffers())
        for name, value in pl_module.teacher.named_buffers():
            if not torch.equal(value, replayed[name]):
                self.mismatches.append((batch_idx, name))
        self.steps += 1


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_teacher_batchnorm_statistics_follow_its_own_forwards(kind: str) -> None:
    module = MAKERS[kind](momentum_start=0.5, momentum_end=0.5)
    initial = _buffers(module.teacher)
    replay = _ReplayTeacher()
    trainer(max_steps=3, limit_val_batches=0, callbacks=[replay]).fit(
        module, datamodule=data_for(module)
    )
    assert replay.steps == 3
    assert replay.mismatches == []
    mean = "backbone.bn.running_mean"
    assert not torch.equal(module.teacher.get_buffer(mean), initial[mean])
    # Neither copied nor averaged from the student.
    assert not torch.equal(module.teacher.get_buffer(mean), module.student.get_buffer(mean))


class CountingDINO(DINOModule):
    """Records ``(step, momentum)`` of every teacher update."""

    def update_ema(self, step: int) -> float:
        tau = super().update_ema(step)
        self.updates.append((step, tau))
        return tau


def test_one_teacher_update_per_optimizer_step_with_cosine_momentum() -> None:
    # 5 batches per epoch, accumulate 2: steps after batches 2, 4 and 5 -> 3 per epoch, 6 in
    # all. tau(k) = 1 - 0.25 * (1 + cos(pi k / 6)) from 0.5 to 1: 0.5, 1 - 0.25 (1 + sqrt 3 / 2),
    # 0.625, 0.75 (the midpoint at half the run), 0.875, 1 - 0.25 (1 - sqrt 3 / 2); 1 at step 6.
    module = make_dino(CountingDINO, momentum_start=0.5, momentum_end=1.0)
    assert isinstance(module, CountingDINO)
    module.updates = []
    t = trainer(max_epochs=2, accumulate_grad_batches=2, limit_val_batches=0)
    t.fit(module, datamodule=data_for(module, n=20, batch_size=4))
    assert t.global_step == 6
    steps = [step for step, _ in module.updates]
    taus = [tau for _, tau in module.updates]
    assert steps == [0, 1, 2, 3, 4, 5]
    expected = [0.5, 1 - 0.25 * (1 + SQRT3_2), 0.625, 0.75, 0.875, 1 - 0.25 * (1 - SQRT3_2)]
    assert taus == pytest.approx(expected, abs=1e-12)
    assert module.ema_momentum(6) == 1.0
    assert module.ema_momentum(100) == 1.0


# ----------------------------------------------------------------------------- schedules


def test_teacher_temperature_warmup_values() -> None:
    module = make_dino(
        teacher_temperature_start=0.04,
        teacher_temperature=0.07,
        teacher_temperature_warmup_epochs=2,
    )
    # 2 epochs of 10 steps: 0.04 at 0, 0.055 at 10 (half), 0.07 from 20 on.
    assert module.teacher_temperature_at(0, 10) == pytest.approx(0.04)
    assert module.teacher_temperature_at(5, 10) == pytest.approx(0.0475)
    assert module.teacher_temperature_at(10, 10) == pytest.approx(0.055)
    assert module.teacher_temperature_at(20, 10) == pytest.approx(0.07)
    assert module.teacher_temperature_at(35, 10) == pytest.approx(0.07)
    half = make_dino(
        teacher_temperature_start=0.02,
        teacher_temperature=0.06,
        teacher_temperature_warmup_epochs=0.5,
    )
    # Half an epoch of 8 steps = 4 steps: 0.02, 0.03, 0.04, 0.05, then 0.06.
    assert [half.teacher_temperature_at(s, 8) for s in range(6)] == pytest.approx(
        [0.02, 0.03, 0.04, 0.05, 0.06, 0.06]
    )


def test_teacher_temperature_in_a_run_counts_optimizer_steps() -> None:
    # 8 batches per epoch, accumulate 2 -> 4 optimizer steps per epoch = the 1-epoch warm-up.
    # Each step's two batches log the temperature at that global_step: 0.02 + 0.01 * step
    # for steps 0..3, then 0.06.
    module = make_dino(
        teacher_temperature_start=0.02,
        teacher_temperature=0.06,
        teacher_temperature_warmup_epochs=1,
    )
    logger = RecordingLogger()
    t = trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
    )
    t.fit(module, datamodule=data_for(module, n=32, batch_size=4))
    assert t.global_step == 8
    values = _logged(logger, "train/teacher_temperature_step")
    expected = [(s, 0.02 + 0.01 * min(s, 4)) for s in range(8) for _ in range(2)]
    assert [s for s, _ in values] == [s for s, _ in expected]
    assert [v for _, v in values] == pytest.approx([v for _, v in expected], abs=1e-7)


def _sgd_wd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.04)


def test_weight_decay_schedule() -> None:
    # Cosine from 0.04 to 0.4 over 4 steps: wd(k) = 0.4 - 0.18 (1 + cos(pi k / 4)):
    # 0.04, 0.4 - 0.18 (1 + sqrt 2 / 2), 0.22, 0.4 - 0.18 (1 - sqrt 2 / 2).
    module = make_dino(weight_decay_end=0.4, optimizer=_sgd_wd)
    logger = RecordingLogger()
    t = trainer(max_epochs=1, limit_val_batches=0, logger=logger, log_every_n_steps=1)
    t.fit(module, datamodule=data_for(module))  # 16 images, batches of 4: 4 steps
    assert t.global_step == 4
    expected = [0.04, 0.4 - 0.18 * (1 + SQRT2_2), 0.22, 0.4 - 0.18 * (1 - SQRT2_2)]
    logged = _logged(logger, "train/weight_decay_step")
    assert [s for s, _ in logged] == [0, 1, 2, 3]
    assert [v for _, v in logged] == pytest.approx(expected, abs=1e-7)

    decayed, plain = t.optimizers[0].param_groups
    assert decayed["weight_decay_scheduled"] is True
    assert decayed["weight_decay"] == pytest.approx(expected[-1], abs=1e-12)
    assert plain["weight_decay"] == 0.0
    assert t.optimizers[0].defaults["weight_decay"] == 0.04
    # Weights (2 or more dims) are decayed; biases and BatchNorm parameters are not.
    names = {id(p): n for n, p in module.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == [
        "student.backbone.conv.weight",
        "student.head.last_layer.parametrizations.weight.original1",
        "student.head.mlp.0.weight",
        "student.head.mlp.2.weight",
    ]
    assert sorted(names[id(p)] for p in plain["params"]) == [
        "student.backbone.bn.bias",
        "student.backbone.bn.weight",
        "student.backbone.conv.bias",
        "student.head.mlp.0.bias",
        "student.head.mlp.2.bias",
    ]


def test_weight_decay_is_constant_without_an_end_value() -> None:
    module = make_dino(weight_decay_end=None, optimizer=_sgd_wd)
    t = trainer(max_steps=3, limit_val_batches=0)
    t.fit(module, datamodule=data_for(module))
    decayed, plain = t.optimizers[0].param_groups
    assert decayed["weight_decay"] == 0.04
    assert plain["weight_decay"] == 0.0


# ----------------------------------------------------------------------------- DINO specifics


class _RecordEpochs(Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.states.append(_params(pl_module.student))


@pytest.mark.parametrize("freeze", [0, 1])
def test_last_layer_frozen_during_the_first_epochs(freeze: int) -> None:
    # norm_last_layer=False so that both g and v of the last layer are trained.
    module = make_dino(freeze_last_layer_epochs=freeze, norm_last_layer=False)
    initial = _params(module.student)
    record = _RecordEpochs()
    trainer(max_epochs=2, limit_val_batches=0, callbacks=[record]).fit(
        module, datamodule=data_for(module)
    )
    after_first, after_second = record.states
    for name in LAST_LAYER:
        assert torch.equal(after_first[name], initial[name]) is (freeze == 1), name
        assert not torch.equal(after_second[name], after_first[name]), name
    for name in ("backbone.conv.weight", "head.mlp.0.weight", "head.mlp.2.weight"):
        assert not torch.equal(after_first[name], initial[name]), name


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_center_after_one_step(momentum: float) -> None:
    # The center starts at 0; after one step c = (1 - m) * mean of the teacher outputs of
    # that step (the two global views, 2B rows). The teacher is the initial one for step 0.
    module = make_dino(center_momentum=momentum)
    data = data_for(module)
    assert torch.equal(module.center.center, torch.zeros(1, 8))
    teacher = copy.deepcopy(module.teacher)  # training mode, as in the step
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=data)
    batch = data.views[0][:4], data.views[1][:4]
    with torch.no_grad():
        outputs = teacher(torch.cat(batch))  # (8, 8)
    expected = (1.0 - momentum) * outputs.mean(dim=0, keepdim=True)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(module.center.center, expected, rtol=0, atol=1e-6)


class PooledConv(nn.Module):
    """conv, global average pool, no BatchNorm: each image's features depend on that image
    only, so a batch split in two gives the same teacher outputs as the whole batch (and, in
    the DDP script, the two ranks' different images keep different teacher outputs)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.num_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).mean(dim=(2, 3))  # (B, width)


class _CenterAfterBatch(Callback):
    def __init__(self) -> None:
        self.centers: list[Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *_: object) -> None:
        self.centers.append(pl_module.center.center.clone())


def test_center_moves_once_per_optimizer_step_with_accumulation() -> None:
    # Two micro-batches b1, b2 of 4 images (accumulate 2) and one batch b1 + b2 of 8 images
    # give the same center after one optimizer step: c = m * 0 + (1 - m) * mean over the 16
    # rows of the initial teacher's outputs on the two global views of the 8 images.
    # Updating per micro-batch would give (1 - m) (m mean_1 + mean_2) instead.
    m = 0.5
    centers = {}
    teachers = []
    for name, batch_size, accumulate in (("accumulated", 4, 2), ("whole", 8, 1)):
        torch.manual_seed(0)
        module = make_dino(backbone=PooledConv(), center_momentum=m)
        teachers.append(copy.deepcopy(module.teacher))  # training mode, as in the step
        record = _CenterAfterBatch()
        data = data_for(module, batch_size=batch_size)
        trainer(
            max_steps=1,
            accumulate_grad_batches=accumulate,
            limit_val_batches=0,
            callbacks=[record],
        ).fit(module, datamodule=data)
        assert module.trainer.global_step == 1
        if accumulate == 2:  # after b1 (no step yet) the center has not moved
            assert torch.equal(record.centers[0], torch.zeros(1, 8))
        centers[name] = module.center.center.clone()
        assert module.center.pending_rows == 0
    teacher = teachers[0]
    _assert_equal(_state(teacher), _state(teachers[1]))  # the same initial networks
    with torch.no_grad():
        views = [data.views[0][:8], data.views[1][:8]]
        outputs = teacher(torch.cat(views))  # (16, K)
        halves = [teacher(torch.cat([v[i : i + 4] for v in views])) for i in (0, 4)]
    expected = (1.0 - m) * outputs.mean(dim=0, keepdim=True)  # (1, K)
    per_micro_batch = (1.0 - m) * (m * halves[0].mean(0) + halves[1].mean(0))
    assert not torch.allclose(expected, per_micro_batch, atol=1e-4)  # the test can tell
    torch.testing.assert_close(centers["accumulated"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(centers["whole"], expected, rtol=0, atol=1e-6)


def test_teacher_sees_the_global_views_student_all_views() -> None:
    module = make_dino()
    shapes: dict[str, list[tuple[int, ...]]] = {"teacher.backbone": [], "student.backbone": []}
    for name in shapes:
        module.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: shapes[name].append(tuple(args[0].shape))
        )
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=data_for(module))
    # B = 4: the teacher one batch of both 8x8 global views, the student's backbone that and
    # then one batch of the two 4x4 local views.
    assert shapes == {
        "teacher.backbone": [(8, 3, 8, 8)],
        "student.backbone": [(8, 3, 8, 8), (8, 3, 4, 4)],
    }


def test_uniform_outputs_give_log_k() -> None:
    # A backbone whose features are all zero -> the head gives zero logits for every view
    # (zero biases, normalize(0) = 0): every distribution is uniform over K = 8, so the loss
    # and the teacher entropy are both ln 8, whatever the temperatures.
    module = make_dino(teacher_temperature=0.04, student_temperature=0.1)
    with torch.no_grad():
        for net in (module.student, module.teacher):
            net.get_parameter("backbone.conv.weight").zero_()
            net.get_parameter("backbone.conv.bias").zero_()
    logger = RecordingLogger()
    trainer(max_steps=1, limit_val_batches=0, logger=logger, log_every_n_steps=1).fit(
        module, datamodule=data_for(module)
    )
    assert logger.last("train/loss_step") == pytest.approx(math.log(8.0), abs=1e-6)
    assert logger.last("train/teacher_entropy_step") == pytest.approx(math.log(8.0), abs=1e-6)


def test_identical_networks_and_views_give_loss_equal_to_teacher_entropy() -> None:
    # At step 0 the teacher is the student, the center is 0 and tau_s = tau_t; with two
    # identical global views and no local views every target q equals the student's p, so the
    # cross-entropy H(q, p) is the entropy H(q) that is logged as teacher_entropy.
    module = make_dino(teacher_temperature=0.1, student_temperature=0.1)
    logger = RecordingLogger()
    trainer(max_steps=1, limit_val_batches=0, logger=logger, log_every_n_steps=1).fit(
        module, datamodule=data_for(module, num_local=0, same_views=True)
    )
    loss = logger.last("train/loss_step")
    entropy = logger.last("train/teacher_entropy_step")
    assert 0.1 < entropy < math.log(8.0) - 1e-3  # neither collapsed nor uniform
    assert loss == pytest.approx(entropy, abs=1e-6)


# ----------------------------------------------------------------------------- BYOL specifics


def test_byol_predictor_is_trained_but_not_part_of_the_teacher() -> None:
    module = make_byol()
    assert not any(name.startswith("predictor") for name in module.teacher.state_dict())
    assert module.teacher.state_dict().keys() == module.student.state_dict().keys()
    before = _params(module.predictor)
    t = trainer(max_steps=2, limit_val_batches=0)
    t.fit(module, datamodule=data_for(module))
    in_optimizer = {id(p) for group in t.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in module.predictor.parameters()} <= in_optimizer
    assert not torch.equal(module.predictor.get_parameter("net.0.weight"), before["net.0.weight"])


@pytest.mark.parametrize(("same_views", "zero"), [(True, True), (False, False)])
def test_byol_loss_with_identity_predictor(same_views: bool, zero: bool) -> None:
    # With the predictor replaced by the identity, the student's prediction of a view is the
    # (initially identical) teacher's projection of it. On identical views the prediction of
    # view 1 equals the target of view 2: cos = 1 and the loss is 0. On different views the
    # loss compares the *other* view, so it is clearly positive.
    module = make_byol()
    module.predictor = nn.Identity()  # type: ignore[assignment]
    logger = RecordingLogger()
    trainer(max_steps=1, limit_val_batches=0, logger=logger, log_every_n_steps=1).fit(
        module, datamodule=data_for(module, same_views=same_views)
    )
    loss = logger.last("train/loss_step")
    if zero:
        assert loss == pytest.approx(0.0, abs=1e-5)
    else:
        assert 0.05 < loss <= 8.0


# ----------------------------------------------------------------------------- outputs


class _Outputs(Callback):
    def __init__(self) -> None:
        self.outputs: list[Any] = []
        self.before: dict[str, nn.Module] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *_: object) -> None:
        if not self.before:
            self.before = {
                name: copy.deepcopy(pl_module.get_submodule(name))
                for name in ("student", "teacher")
            }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, *_: object
    ) -> None:
        self.outputs.append(outputs)


@pytest.mark.parametrize(
    ("kind", "eval_network"),
    [("dino", "teacher"), ("dino", "student"), ("byol", "student"), ("byol", "teacher")],
)
def test_training_step_returns_probe_features(kind: str, eval_network: str) -> None:
    module = MAKERS[kind](eval_network=eval_network)
    data = data_for(module)
    record = _Outputs()
    trainer(max_steps=1, limit_val_batches=0, callbacks=[record]).fit(module, datamodule=data)
    (out,) = record.outputs
    assert set(out) == {"loss", "features", "targets"}
    assert torch.equal(out["targets"], data.y[:4])
    assert out["features"].shape == (4, 4) and not out["features"].requires_grad
    # The eval network's backbone features of the first view (the network the probe is then
    # evaluated on; its BatchNorm batch holds both views, as in the step).
    network = record.before[eval_network]
    with torch.no_grad():
        both = network.backbone(torch.cat([data.views[0][:4], data.views[1][:4]]))
    torch.testing.assert_close(out["features"], both[:4], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "eval_network", "expected"),
    [
        ("dino", None, "teacher"),
        ("dino", "student", "student"),
        ("byol", None, "student"),
        ("byol", "teacher", "teacher"),
    ],
)
def test_embeddings_come_from_the_eval_network(
    kind: str, eval_network: str | None, expected: str
) -> None:
    kwargs = {} if eval_network is None else {"eval_network": eval_network}
    module = MAKERS[kind](**kwargs)
    with torch.no_grad():  # make the two networks differ
        for p in module.teacher.parameters():
            p.add_(0.25)
    module.eval()
    net = module.get_submodule(expected)
    other = module.get_submodule("student" if expected == "teacher" else "teacher")
    assert module.exported_model() is net.backbone
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(5)
    with torch.no_grad():
        wanted = net.backbone(x)  # (5, 4)
        assert wanted.shape == (5, 4)
        assert torch.equal(module.embed(x), wanted)
        assert torch.equal(module(x), wanted)
        assert not torch.allclose(other.backbone(x), wanted)
        for step in (module.validation_step, module.test_step):
            out = step([x, y], 0)
            assert set(out) == {"features", "targets"}
            assert torch.equal(out["features"], wanted)
            assert torch.equal(out["targets"], y)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_batch_without_a_list_of_views_is_rejected(kind: str) -> None:
    module = MAKERS[kind]()
    with pytest.raises(TypeError, match=r"views a list of image tensors.*got Tensor"):
        module.compute_losses([torch.zeros(2, 3, 8, 8), torch.zeros(2)])


def test_wrong_number_of_views_is_rejected() -> None:
    views = [torch.zeros(2, 3, 8, 8)] * 3
    with pytest.raises(ValueError, match="expected 2 views per batch, got 3"):
        make_byol().compute_losses([views, torch.zeros(2)])
    with pytest.raises(ValueError, match="expected >= 2 views per batch, got 1"):
        make_dino().compute_losses([views[:1], torch.zeros(2)])


@pytest.mark.parametrize("cls", [DINOModule, BYOLModule])
def test_backbone_width_must_be_known(cls: type[SelfDistillationModule]) -> None:
    backbone = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    small: dict[str, Any] = {"hidden_dim": 8}
    small |= {"out_dim": 8, "bottleneck_dim": 4} if cls is DINOModule else {"projection_dim": 4}
    with pytest.raises(
        TypeError, match=r"Sequential: it has no int num_features .*pass feature_dim"
    ):
        cls(backbone, **small)
    with pytest.raises(ValueError, match="feature_dim must be >= 1 or None, got 0"):
        cls(backbone, feature_dim=0, **small)
    module = cls(backbone, feature_dim=6, **small)
    first = module.student.head.mlp[0] if cls is DINOModule else module.student.head.net[0]
    assert first.in_features == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"momentum_start": 1.5}, r"momentum_start must be in \[0, 1\], got 1.5"),
        ({"momentum_start": -0.1}, r"momentum_start must be in \[0, 1\], got -0.1"),
        ({"momentum_end": 1.01}, r"momentum_end must be in \[0, 1\], got 1.01"),
        (
            {"momentum_start": 0.9, "momentum_end": 0.8},
            "momentum_end must be >= momentum_start, got 0.8 < 0.9",
        ),
        (
            {"weight_decay_end": -0.1},
            "weight_decay_end must be a finite number >= 0 or None, got -0.1",
        ),
        ({"eval_network": "both"}, "eval_network must be 'teacher' or 'student', got 'both'"),
        ({"student_temperature": 0.0}, "student_temperature must be a finite number > 0, got 0.0"),
        (
            {"teacher_temperature": -0.04},
            "teacher_temperature must be a finite number > 0, got -0.04",
        ),
        (
            {"teacher_temperature_start": math.nan},
            "teacher_temperature_start must be a finite number > 0, got nan",
        ),
        (
            {"teacher_temperature_warmup_epochs": -1.0},
            "teacher_temperature_warmup_epochs must be a finite number >= 0, got -1.0",
        ),
        ({"freeze_last_layer_epochs": -1}, "freeze_last_layer_epochs must be >= 0, got -1"),
        ({"center_momentum": 2.0}, r"momentum must be in \[0, 1\], got 2.0"),
    ],
)
def test_dino_invalid_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_dino(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"momentum_start": 2.0}, r"momentum_start must be in \[0, 1\], got 2.0"),
        ({"momentum_end": -1.0}, r"momentum_end must be in \[0, 1\], got -1.0"),
        ({"eval_network": "online"}, "eval_network must be 'teacher' or 'student', got 'online'"),
    ],
)
def test_byol_invalid_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_byol(**kwargs)


class _NoProbeOutputs(DINOModule):
    def compute_losses(self, batch: Any) -> dict[str, Tensor]:
        losses = super().compute_losses(batch)
        self._probe_outputs = None
        return losses


def test_compute_losses_must_hand_over_probe_outputs() -> None:
    module = make_dino(_NoProbeOutputs)
    with pytest.raises(RuntimeError, match=r"must end with add_probe_losses\(losses, features"):
        trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=data_for(module))


# ----------------------------------------------------------------------------- bf16, resume


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_bf16_mixed_runs_finite(kind: str) -> None:
    module = MAKERS[kind]()
    t = trainer(max_steps=3, precision="bf16-mixed", limit_val_batches=0)
    t.fit(module, datamodule=data_for(module))
    assert t.global_step == 3
    loss = t.logged_metrics["train/loss_step"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for net in ("student", "teacher"):
        for name, value in module.get_submodule(net).state_dict().items():
            assert value.dtype != torch.bfloat16 and torch.isfinite(value).all(), (net, name)
    if isinstance(module, DINOModule):
        center = module.center.center
        assert center.dtype == torch.float32 and torch.isfinite(center).all()
        assert center.abs().max() > 0


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    # Resume from the end-of-epoch checkpoint and compare with a run that never stopped:
    # student, teacher, center, SGD state and the weight-decay position carry over (the
    # temperature warm-up and the last-layer freeze cross the epoch boundary too).
    def fresh() -> DINOModule:
        return make_dino(
            momentum_start=0.9,
            weight_decay_end=0.4,
            optimizer=_sgd_wd,
            teacher_temperature_start=0.02,
            teacher_temperature=0.06,
            teacher_temperature_warmup_epochs=1.5,
            freeze_last_layer_epochs=1,
        )

    data = data_for(fresh())  # 4 batches per epoch, fixed order, no randomness
    # The uninterrupted 2-epoch run saves a checkpoint at the end of every epoch; the resumed
    # run starts from the first one (same run length, so the same cosine schedules).
    full = fresh()
    every_epoch = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    t_full = trainer(
        max_epochs=2, limit_val_batches=0, enable_checkpointing=True, callbacks=[every_epoch]
    )
    t_full.fit(full, datamodule=data)
    (ckpt,) = tmp_path.glob("epoch=0-*.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    first = fresh()
    first.load_state_dict(saved["state_dict"])

    resumed = fresh()
    t2 = trainer(max_epochs=2, limit_val_batches=0)
    t2.fit(resumed, datamodule=data, ckpt_path=ckpt)

    assert t2.global_step == t_full.global_step == 8
    assert not torch.equal(first.center.center, full.center.center)
    name = "backbone.conv.weight"
    assert not torch.equal(first.teacher.get_parameter(name), full.teacher.get_parameter(name))
    full_state = full.state_dict()
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, full_state[key], rtol=0, atol=1e-6, msg=key)
    # The decayed group's weight decay is that of the last step (7 of 8):
    # 0.4 - 0.18 (1 + cos(7 pi / 8)).
    wd = 0.4 - 0.18 * (1 + math.cos(7 * math.pi / 8))
    for tr in (t_full, t2):
        decayed, plain = tr.optimizers[0].param_groups
        assert decayed["weight_decay"] == pytest.approx(wd, abs=1e-12)
        assert plain["weight_decay"] == 0.0
    full_sgd = t_full.optimizers[0].state_dict()["state"]
    resumed_sgd = t2.optimizers[0].state_dict()["state"]
    assert full_sgd.keys() == resumed_sgd.keys()
    for index, state in full_sgd.items():
        torch.testing.assert_close(
            resumed_sgd[index]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=1e-6
        )


# ----------------------------------------------------------------------------- DDP


def test_ddp_two_processes_keep_identical_centers_and_teachers(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "self_distillation_ddp_script.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank in ranks:
        assert rank["global_step"] == 3
    # Each rank saw its own images.
    seen0, seen1 = set(ranks[0]["seen"].tolist()), set(ranks[1]["seen"].tolist())
    assert len(seen0) == len(seen1) == 12
    assert not seen0 & seen1
    # Identical centers, moved from zero. With center_momentum = 0 the center after a step is
    # the mean of that step's teacher outputs over both ranks (2 x 8 rows), not of one rank's.
    centers = ranks[0]["centers"]  # (3, 1, K)
    assert torch.equal(centers, ranks[1]["centers"])
    assert centers.abs().amax() > 1e-3
    outputs = [rank["teacher_outputs"] for rank in ranks]  # (3, 8, K) each
    for step in range(3):
        both = torch.cat([outputs[0][step], outputs[1][step]])  # (16, K)
        torch.testing.assert_close(centers[step], both.mean(0, keepdim=True), rtol=0, atol=1e-6)
    # At step 0 (before the tiny head's outputs all but collapse) the ranks' means differ.
    for out in outputs:
        gap = (centers[0] - out[0].mean(0, keepdim=True)).abs().max()
        assert gap > 1e-2
    # Identical weights: students by DDP's gradient averaging, teachers as EMAs of them.
    # (BatchNorm running statistics are per rank between DDP's buffer broadcasts.)
    for net in ("student", "teacher"):
        for key, value in ranks[0][net].items():
            if "running" not in key and "num_batches" not in key:
                assert torch.equal(value, ranks[1][net][key]), (net, key)
    rank0 = ranks[0]
    key = "backbone.conv.weight"
    assert not torch.equal(rank0["teacher"][key], rank0["teacher_initial"][key])
    assert not torch.equal(rank0["teacher"][key], rank0["student"][key])
    # The online probe: one more group of the module's optimizer, so DDP averages its
    # gradients too; identical on both ranks, and trained (it starts at zero).
    assert ranks[0]["probe"].keys() == {"linear.weight", "linear.bias"}
    for key, value in ranks[0]["probe"].items():
        assert torch.equal(value, ranks[1]["probe"][key]), key
    assert ranks[0]["probe"]["linear.weight"].abs().sum() > 0


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_end_to_end_on_cifar_with_online_evaluation(kind: str, cifar10_dir: Path) -> None:
    torch.manual_seed(0)
    if kind == "dino":
        views: MultiCropViews = MultiCropViews(num_local=2)
        module: SelfDistillationModule = DINOModule(
            TinyBackbone(8),
            out_dim=16,
            hidden_dim=16,
            bottleneck_dim=8,
            head_layers=2,
            probe_num_classes=10,
        )
    else:
        views = TwoViews()
        module = BYOLModule(TinyBackbone(8), projection_dim=8, hidden_dim=16, probe_num_classes=10)
    data = CIFAR10DataModule(str(cifar10_dir), batch_size=50, eval_batch_size=100, transform=views)
    t = trainer(max_epochs=1, limit_train_batches=2, callbacks=[KNNEvaluation(k=20)])
    t.fit(module, datamodule=data)
    assert t.global_step == 2
    for key in ("val/knn_acc", "val/probe_acc", "train/probe_acc_epoch"):
        value = t.callback_metrics[key].item()
        assert 0.0 <= value <= 1.0, key
    assert math.isfinite(t.callback_metrics["train/loss_epoch"].item())


class _NaNFirstStep(Callback):
    """Poisons the student's output at the first training batch only."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        pl_module._poison = i == 0


@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_skipped_nonfinite_step_moves_neither_network(kind: str) -> None:
    module = MAKERS[kind](
        momentum_start=0.5, momentum_end=0.5, nonfinite_loss="skip", probe_num_classes=4
    )
    original = module.compute_losses

    def compute_losses(batch: Any) -> dict[str, Tensor]:
        losses = original(batch)
        if module._poison:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    module.compute_losses = compute_losses  # type: ignore[method-assign]
    student, teacher = _params(module.student), _params(module.teacher)
    assert module.probe is not None
    probe = _params(module.probe)
    with pytest.warns(UserWarning, match="skipping this step"):
        trainer(
            max_steps=1,
            limit_train_batches=1,
            limit_val_batches=0,
            callbacks=[_NaNFirstStep()],
        ).fit(module, datamodule=data_for(module))
    # The only batch was skipped: no optimizer step and no EMA update (Lightning's step
    # counter still counts it, so schedules stay a function of the batches seen).
    assert module.trainer.global_step == 1
    _assert_equal(_params(module.student), student)
    _assert_equal(_params(module.teacher), teacher)
    _assert_equal(_params(module.probe), probe)
    if isinstance(module, DINOModule):  # the step's teacher outputs were dropped, not applied
        assert torch.equal(module.center.center, torch.zeros(1, 8))
        assert module.center.pending_rows == 0
