"""MeanTeacherModule: loss values, EMA schedule and placement, logging, resume, DDP, bf16."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from tiny import ConstantNet, RecordingLogger, TinyNet, trainer
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_kd.checkpoint import check_checkpoint_fits
from lightning_kd.modules.mean_teacher import MeanTeacherModule

HERE = Path(__file__).parent
LN3 = math.log(3.0)


class TinySemiSupervisedData(L.LightningDataModule):
    """Random 8x8 images in the semi-supervised batch layout, in a fixed order.

    Training batches are ``{"labeled": [x_s, x_t, y], "unlabeled": [u_s, u_t, u_y]}`` where
    the teacher view is the student view plus fixed noise; validation/test batches are
    ``[x, y]``. ``u_y`` can be replaced after construction (e.g. by garbage).
    """

    def __init__(
        self,
        n_labeled: int = 8,
        n_unlabeled: int = 24,
        labeled_batch: int = 2,
        unlabeled_batch: int = 6,
        num_classes: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n_labeled, 3, 8, 8, generator=g)
        self.x_teacher = self.x + 0.1 * torch.randn(n_labeled, 3, 8, 8, generator=g)
        self.y = torch.randint(0, num_classes, (n_labeled,), generator=g)
        self.u = torch.randn(n_unlabeled, 3, 8, 8, generator=g)
        self.u_teacher = self.u + 0.1 * torch.randn(n_unlabeled, 3, 8, 8, generator=g)
        self.u_y = torch.randint(0, num_classes, (n_unlabeled,), generator=g)
        self.labeled_batch = labeled_batch
        self.unlabeled_batch = unlabeled_batch

    def train_dataloader(self) -> CombinedLoader:
        labeled = TensorDataset(self.x, self.x_teacher, self.y)
        unlabeled = TensorDataset(self.u, self.u_teacher, self.u_y)
        return CombinedLoader(
            {
                "labeled": DataLoader(labeled, batch_size=self.labeled_batch),
                "unlabeled": DataLoader(unlabeled, batch_size=self.unlabeled_batch),
            },
            mode="max_size_cycle",
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4)

    test_dataloader = val_dataloader


def _net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


class CountingMeanTeacher(MeanTeacherModule):
    """Records ``(step, tau)`` of every EMA update the base class makes."""

    def __init__(self, student: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(student, **kwargs)
        self.updates: list[tuple[int, float]] = []

    def update_ema(self, step: int) -> float:
        tau = super().update_ema(step)
        self.updates.append((step, tau))
        return tau


def _warmup(step: int, decay: float) -> float:
    """The warm-up momentum written out: min(1 - 1 / (step + 1), decay)."""
    return min(1.0 - 1.0 / (step + 1), decay)


def _params(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def _hand_batch(u_y: int) -> dict[str, list[Tensor]]:
    """One labeled (label 0) and one unlabeled 2x2 image, identical views."""
    x = torch.zeros(1, 3, 2, 2)
    return {"labeled": [x, x, torch.tensor([0])], "unlabeled": [x, x, torch.tensor([u_y])]}


# ----------------------------------------------------------------------------- construction


def test_teacher_is_a_frozen_copy_outside_the_optimizer() -> None:
    module = MeanTeacherModule(_net(), consistency_rampup_epochs=0.0)
    assert module.teacher is not module.student
    _assert_equal(_state(module.teacher), _state(module.student))
    assert all(not p.requires_grad for p in module.teacher.parameters())

    trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=TinySemiSupervisedData())
    assert all(p.grad is None for p in module.teacher.parameters())
    optimizer = module.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.student.parameters()}
    # The teacher moved (by EMA only) and is not the final student.
    assert not torch.equal(
        module.teacher.get_parameter("fc.weight"), _net().get_parameter("fc.weight")
    )
    assert not torch.equal(
        module.teacher.get_parameter("fc.weight"), module.student.get_parameter("fc.weight")
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ema_decay": 1.5}, r"ema_decay must be in \[0, 1\], got 1.5"),
        ({"consistency": "l1"}, "consistency must be 'mse' or 'kl', got 'l1'"),
        ({"consistency_weight": -1.0}, "consistency_weight must be a finite number >= 0"),
        ({"consistency_rampup_epochs": math.inf}, "consistency_rampup_epochs must be a finite"),
        ({"ce_weight": -0.5}, "ce_weight must be a finite number >= 0, got -0.5"),
        ({"ema_buffers": "keep"}, "ema_buffers must be 'average' or 'copy', got 'keep'"),
        ({"export_network": "both"}, "export_network must be 'teacher' or 'student'"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MeanTeacherModule(TinyNet(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ([torch.zeros(2, 3, 4, 4), torch.zeros(2)], "training batch is .* got <class 'list'>"),
        ({"labeled": [], "unlabeled": []}, r"batch\['labeled'\] must be .* got a list of 0"),
        (
            {
                "labeled": [torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 5, 5), torch.zeros(2)],
                "unlabeled": [torch.zeros(2, 3, 4, 4)] * 2 + [torch.zeros(2)],
            },
            r"labeled student and teacher views differ in shape: \(2, 3, 4, 4\) vs",
        ),
        (
            {
                "labeled": [torch.zeros(2, 3, 4, 4)] * 2 + [torch.zeros(3)],
                "unlabeled": [torch.zeros(2, 3, 4, 4)] * 2 + [torch.zeros(2)],
            },
            r"y must have shape \(2,\) to match its images, got \(3,\)",
        ),
    ],
)
def test_bad_training_batch(batch: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MeanTeacherModule(TinyNet(), consistency_rampup_epochs=0.0).compute_losses(batch)


# ----------------------------------------------------------------------------- loss values


@pytest.mark.parametrize(("consistency", "value"), [("mse", 0.0625), ("kl", 0.130812)])
def test_loss_values_by_hand(consistency: str, value: float) -> None:
    # Student logits [0, 0] on both images; the teacher is made to output [ln 3, 0].
    # CE on the labeled image (label 0) = ln 2. Consistency per image: MSE 0.0625
    # (p = [.5, .5] vs [.75, .25], squared differences summed then / C = 2) or
    # KL 0.75 ln 1.5 + 0.25 ln 0.5; both images are equal so the mean is the same.
    # loss = 1 * ln 2 + 10 * consistency.
    module = MeanTeacherModule(
        ConstantNet([0.0, 0.0]),
        consistency=consistency,  # type: ignore[arg-type]
        consistency_weight=10.0,
        consistency_rampup_epochs=0.0,
    )
    module.teacher.get_buffer("logits").copy_(torch.tensor([LN3, 0.0]))
    out = module.compute_losses(_hand_batch(u_y=0))
    assert out["loss_ce"].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert out["loss_consistency"].item() == pytest.approx(value, abs=1e-6)
    assert out["loss"].item() == pytest.approx(math.log(2.0) + 10 * value, abs=1e-5)
    assert out["consistency_weight"].item() == 10.0
    assert out["ema_decay"].item() == 0.0  # the first update copies the student
    # argmax of [0, 0] and of [ln 3, 0] is class 0, the labels of both images.
    assert out["acc"].item() == out["unlabeled_acc"].item() == 1.0
    assert out["teacher_unlabeled_acc"].item() == 1.0

    # Gradient on the student bias. CE: p_s - onehot(0) = [-.5, .5]. MSE per image:
    # (2 / (B C)) J_s (p_s - p_t) = (1 / 2) [-.125, .125], summed over 2 images = [-.125, .125];
    # KL per image: (p_s - p_t) / B = [-.125, .125], summed = [-.25, .25]. Times w = 10.
    out["loss"].backward()
    per_unit = 0.125 if consistency == "mse" else 0.25
    expected = torch.tensor([-0.5 - 10 * per_unit, 0.5 + 10 * per_unit])
    bias = module.student.get_parameter("bias")
    assert bias.grad is not None
    torch.testing.assert_close(bias.grad, expected, atol=1e-6, rtol=0)
    assert module.teacher.get_parameter("bias").grad is None


def test_one_forward_per_network_on_the_whole_batch() -> None:
    # The student sees the labeled and unlabeled student views as one batch of 2 + 6 rows
    # (one BatchNorm batch), the teacher the teacher views likewise.
    module = MeanTeacherModule(_net(), consistency_rampup_epochs=0.0)
    calls: dict[str, list[int]] = {"student": [], "teacher": []}
    for name in calls:
        net = module.get_submodule(name)
        net.register_forward_hook(lambda m, args, out, name=name: calls[name].append(len(args[0])))
    batch = next(iter(TinySemiSupervisedData().train_dataloader()))[0]
    module.compute_losses(batch)
    assert calls == {"student": [8], "teacher": [8]}


def test_teacher_uses_batch_statistics_in_training_running_ones_in_evaluation() -> None:
    # The teacher follows the module's mode: while training its BatchNorm normalises with the
    # statistics of the teacher batch, so its running statistics do not change the loss; in
    # evaluation they do.
    data = TinySemiSupervisedData()
    batch = next(iter(data.train_dataloader()))[0]
    eval_batch = [data.x, data.y]
    outputs = []
    for shift in (0.0, 5.0):
        module = MeanTeacherModule(_net(), consistency_rampup_epochs=0.0)
        module.teacher.get_buffer("bn.running_mean").fill_(shift)
        module.train()
        train_out = module.compute_losses(batch)
        module.eval()
        with torch.no_grad():
            outputs.append((train_out, module.evaluate(eval_batch)))
    (train_a, eval_a), (train_b, eval_b) = outputs
    assert torch.equal(train_a["loss_consistency"], train_b["loss_consistency"])
    assert not torch.equal(eval_a["teacher_loss"], eval_b["teacher_loss"])
    torch.testing.assert_close(eval_a["loss"], eval_b["loss"], rtol=0, atol=0)


def test_ce_weight_scales_the_cross_entropy_only() -> None:
    module = MeanTeacherModule(
        ConstantNet([0.0, 0.0]),
        ce_weight=0.25,
        consistency_weight=10.0,
        consistency_rampup_epochs=0.0,
    )
    module.teacher.get_buffer("logits").copy_(torch.tensor([LN3, 0.0]))
    out = module.compute_losses(_hand_batch(u_y=0))
    assert out["loss"].item() == pytest.approx(0.25 * math.log(2.0) + 10 * 0.0625, abs=1e-6)


def test_unknown_unlabeled_labels_give_nan_diagnostics() -> None:
    module = MeanTeacherModule(ConstantNet([0.0, 0.0]), consistency_rampup_epochs=0.0)
    out = module.compute_losses(_hand_batch(u_y=-1))
    assert math.isnan(out["unlabeled_acc"].item())
    assert math.isnan(out["teacher_unlabeled_acc"].item())
    assert math.isfinite(out["loss"].item())


def test_unlabeled_labels_never_reach_a_loss() -> None:
    # Two runs from the same start; one sees garbage u_y (out-of-range ints and -1).
    # Every loss value and every weight stays bit-identical.
    runs = []
    for garbage in (False, True):
        data = TinySemiSupervisedData()
        if garbage:
            data.u_y = torch.randint(-5, 100, data.u_y.shape, generator=torch.Generator())
            data.u_y[::3] = -1
        module = MeanTeacherModule(_net(), consistency_rampup_epochs=1.0)
        logger = RecordingLogger()
        t = trainer(max_epochs=2, limit_val_batches=0, logger=logger, log_every_n_steps=1)
        t.fit(module, datamodule=data)
        runs.append((module, t, logger))
    (clean, t_clean, log_clean), (dirty, t_dirty, log_dirty) = runs
    _assert_equal(_state(clean), _state(dirty))
    for name in ("loss", "loss_ce", "loss_consistency"):
        key = f"train/{name}_epoch"
        assert torch.equal(t_clean.logged_metrics[key], t_dirty.logged_metrics[key]), key
    for key in ("train/loss_step", "train/loss_ce_step", "train/loss_consistency_step"):
        clean_values = [m[key] for _, m in log_clean.metrics if key in m]
        dirty_values = [m[key] for _, m in log_dirty.metrics if key in m]
        assert clean_values and clean_values == dirty_values, key


# ----------------------------------------------------------------------------- EMA


def test_ema_momentum_warmup_sequence() -> None:
    # tau(s) = min(1 - 1 / (s + 1), ema_decay) for the update after optimizer step s (s = steps
    # done before it): 0, 1/2, 2/3, then 0.7 from step 3 on. A pure function of the step.
    module = MeanTeacherModule(TinyNet(), ema_decay=0.7)
    assert [module.ema_momentum(s) for s in range(5)] == pytest.approx([0.0, 0.5, 2 / 3, 0.7, 0.7])
    assert module.ema_momentum(2) == module.ema_momentum(2)  # no hidden counter moves
    assert [module.update_ema(s) for s in (0, 1, 4)] == pytest.approx([0.0, 0.5, 0.7])
    # ema_decay = 1: the warm-up never ends (the teacher is the mean of all iterates).
    polyak = MeanTeacherModule(TinyNet(), ema_decay=1.0)
    assert [polyak.ema_momentum(s) for s in range(5)] == pytest.approx(
        [0, 1 / 2, 2 / 3, 3 / 4, 4 / 5]
    )
    assert polyak.ema_momentum(999) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        module.ema_momentum(-1)
    assert "ema_updates" not in module.state_dict()


class _RecordStudent(Callback):
    """The student's parameters after each optimizer step (and the teacher's update)."""

    def __init__(self) -> None:
        self.states: list[dict[str, Tensor]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: object
    ) -> None:
        assert isinstance(pl_module, MeanTeacherModule)
        self.states.append(_params(pl_module.student))


def test_warmup_teacher_is_the_mean_of_the_student_steps() -> None:
    # Updates use tau = 0, 1/2, 2/3: the teacher is the plain mean of the student's weights
    # after steps 1, 2 and 3. With ema_buffers="copy" its BN buffers are the student's.
    module = MeanTeacherModule(_net(), ema_decay=0.999, ema_buffers="copy")
    record = _RecordStudent()
    trainer(max_steps=3, limit_val_batches=0, callbacks=[record]).fit(
        module, datamodule=TinySemiSupervisedData()
    )
    assert len(record.states) == 3
    for name, value in module.teacher.named_parameters():
        mean = torch.stack([state[name] for state in record.states]).mean(dim=0)
        torch.testing.assert_close(value, mean, rtol=0, atol=1e-6, msg=name)
    for name, buffer in module.teacher.named_buffers():
        assert torch.equal(buffer, module.student.get_buffer(name)), name


@pytest.mark.parametrize("ema_buffers", ["average", "copy"])
def test_ema_decay_zero_teacher_is_the_student(ema_buffers: str) -> None:
    module = MeanTeacherModule(_net(), ema_decay=0.0, ema_buffers=ema_buffers)  # type: ignore[arg-type]
    trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=TinySemiSupervisedData())
    _assert_equal(_state(module.teacher), _state(module.student))


def test_one_ema_update_per_optimizer_step_with_accumulation() -> None:
    # 5 batches per epoch, accumulate 2: steps after batches 2, 4 and 5 -> 3 per epoch. Each
    # update gets the step number before it and tau = min(1 - 1 / (s + 1), 0.6):
    # 0, 1/2, 0.6, 0.6, 0.6, 0.6.
    module = CountingMeanTeacher(_net(), ema_decay=0.6)
    data = TinySemiSupervisedData(n_labeled=10, n_unlabeled=30)
    t = trainer(max_epochs=2, accumulate_grad_batches=2, limit_val_batches=0)
    t.fit(module, datamodule=data)
    assert t.global_step == 6
    assert len(module.updates) == t.global_step
    assert [step for step, _ in module.updates] == [0, 1, 2, 3, 4, 5]
    assert [tau for _, tau in module.updates] == pytest.approx([0.0, 0.5, 0.6, 0.6, 0.6, 0.6])


def test_step_checkpoints_include_that_steps_update(tmp_path: Path) -> None:
    # The teacher is updated inside optimizer_step, before ModelCheckpoint's
    # on_train_batch_end saves, so a step checkpoint is consistent with its global_step.
    module = MeanTeacherModule(_net())
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    trainer(
        max_steps=3, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint]
    ).fit(module, datamodule=TinySemiSupervisedData())
    (path,) = tmp_path.glob("*.ckpt")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    assert "ema_updates" not in saved["state_dict"]  # global_step is the only counter
    for name, value in module.teacher.state_dict().items():
        assert torch.equal(saved["state_dict"][f"teacher.{name}"], value), name


def test_checkpoints_with_the_old_ema_counter_still_load(tmp_path: Path) -> None:
    # Checkpoints of the earlier versions hold an int64 ``ema_updates`` buffer (== global_step).
    source = MeanTeacherModule(_net())
    with torch.no_grad():
        source.teacher.get_parameter("fc.weight").add_(1.0)
    old_state = {**source.state_dict(), "ema_updates": torch.tensor(3)}
    target = MeanTeacherModule(TinyNet())
    target.load_state_dict(old_state)  # strict
    _assert_equal(_state(target.teacher), _state(source.teacher))
    assert "ema_updates" in old_state  # the caller's dict is left alone
    # Through a checkpoint file (load_from_checkpoint) and the CLI's pre-check too.
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(source, datamodule=TinySemiSupervisedData())
    ckpt = tmp_path / "old.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved["state_dict"]["ema_updates"] = torch.tensor(1)
    torch.save(saved, ckpt)
    check_checkpoint_fits(saved, MeanTeacherModule(TinyNet()), {})
    loaded = MeanTeacherModule.load_from_checkpoint(ckpt, student=TinyNet())
    _assert_equal(_state(loaded.teacher), _state(source.teacher))
    # Resuming from it continues the momentum at the checkpoint's global_step (1).
    resumed = CountingMeanTeacher(TinyNet(), ema_decay=0.9)
    trainer(max_steps=3, limit_val_batches=0).fit(
        resumed, datamodule=TinySemiSupervisedData(), ckpt_path=ckpt
    )
    assert resumed.updates == [(1, pytest.approx(0.5)), (2, pytest.approx(2 / 3))]


# ----------------------------------------------------------------------------- schedule


def test_consistency_weight_schedule() -> None:
    module = MeanTeacherModule(TinyNet(), consistency_weight=100.0, consistency_rampup_epochs=5)
    # 5 epochs of 10 steps: exp(-5) of the maximum at 0, exp(-1.25) halfway, then the maximum.
    assert module.consistency_weight_at(0, 10) == pytest.approx(100 * math.exp(-5.0))
    assert module.consistency_weight_at(25, 10) == pytest.approx(28.650480)
    assert module.consistency_weight_at(50, 10) == 100.0
    assert module.consistency_weight_at(80, 10) == 100.0
    flat = MeanTeacherModule(TinyNet(), consistency_weight=7.0, consistency_rampup_epochs=0)
    assert flat.consistency_weight_at(0, 10) == flat.current_consistency_weight() == 7.0


def test_rampup_counts_optimizer_steps_per_epoch() -> None:
    # 8 batches, accumulate 2 -> 4 optimizer steps per epoch; a 1-epoch ramp is 4 steps.
    # The last batch of a 3-step run computes its loss at global_step 2: 100 * exp(-1.25).
    # Its EMA update is the third, tau = 1 - 1/3.
    module = MeanTeacherModule(_net(), consistency_rampup_epochs=1.0)
    data = TinySemiSupervisedData(n_labeled=16, n_unlabeled=48)
    logger = RecordingLogger()
    t = trainer(
        max_steps=3,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
    )
    t.fit(module, datamodule=data)
    assert logger.last("train/consistency_weight_step") == pytest.approx(28.650480, rel=1e-6)
    assert logger.last("train/ema_decay_step") == pytest.approx(2 / 3, rel=1e-6)


# ----------------------------------------------------------------------------- logging / export


def test_logs_both_networks_and_exports_the_teacher(tmp_path: Path) -> None:
    module = MeanTeacherModule(_net())
    logger = RecordingLogger()
    t = trainer(max_epochs=1, limit_val_batches=2, logger=logger, log_every_n_steps=1)
    data = TinySemiSupervisedData()
    t.fit(module, datamodule=data)
    logged = set(t.logged_metrics)
    written = logger.keys()
    for name in (
        "loss",
        "loss_ce",
        "loss_consistency",
        "consistency_weight",
        "ema_decay",
        "acc",
        "unlabeled_acc",
        "teacher_unlabeled_acc",
    ):
        assert f"train/{name}_step" in written and f"train/{name}_epoch" in logged, name
    for name in MeanTeacherModule.eval_metric_names:
        assert f"val/{name}" in logged, name
    # hp_metric is the exported network's (the teacher's) validation accuracy.
    assert torch.equal(t.logged_metrics["hp_metric"], t.logged_metrics["val/teacher_acc"])

    assert module.exported_model() is module.teacher
    path = module.export(tmp_path / "teacher.pt")
    state = torch.load(path, weights_only=True)
    _assert_equal(state, _state(module.teacher))
    predictions = t.predict(module, dataloaders=DataLoader(TensorDataset(data.x), batch_size=8))
    assert predictions is not None
    torch.testing.assert_close(predictions[0], module.teacher.eval()(data.x))

    student_export = MeanTeacherModule(_net(), export_network="student")
    assert student_export.exported_model() is student_export.student


def test_evaluation_of_both_networks_by_hand() -> None:
    # Student always predicts class 0; the teacher outputs [0, ln 3] (p = [.25, .75]).
    # Labels [0, 1, 1, 1, 0]: student acc 2/5, teacher acc 3/5.
    # Teacher CE: ln 4 for label 0, -ln 0.75 for label 1 -> (2 ln 4 - 3 ln 0.75) / 5.
    module = MeanTeacherModule(ConstantNet([1.0, 0.0]))
    module.teacher.get_buffer("logits").copy_(torch.tensor([0.0, LN3]))
    x = torch.zeros(5, 3, 2, 2)
    y = torch.tensor([0, 1, 1, 1, 0])
    (result,) = trainer().test(module, DataLoader(TensorDataset(x, y), batch_size=2), verbose=False)
    assert result["test/acc"] == pytest.approx(0.4)
    assert result["test/teacher_acc"] == pytest.approx(0.6)
    assert result["test/teacher_acc_top5"] == pytest.approx(1.0)
    assert result["test/teacher_loss"] == pytest.approx(0.727127, abs=1e-5)


# ----------------------------------------------------------------------------- resume, bf16


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    # Resume from the end-of-epoch checkpoint and compare with a run that never stopped:
    # student, teacher, BN statistics, the EMA counter (and, through the weights, the SGD
    # momentum and the consistency ramp) must all carry over.
    def fresh() -> CountingMeanTeacher:
        return CountingMeanTeacher(_net(), ema_decay=0.9, consistency_rampup_epochs=1.5)

    data = TinySemiSupervisedData()  # 4 batches per epoch, fixed order
    full = fresh()
    trainer(max_epochs=2, limit_val_batches=0).fit(full, datamodule=data)

    first = fresh()
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(first, datamodule=data)
    ckpt = tmp_path / "epoch1.ckpt"
    t.save_checkpoint(ckpt)
    resumed = fresh()
    t2 = trainer(max_epochs=2, limit_val_batches=0)
    t2.fit(resumed, datamodule=data, ckpt_path=ckpt)

    assert t2.global_step == 8
    # The momentum continues from the checkpoint's global_step (4), without a counter:
    # tau(s) = min(1 - 1 / (s + 1), 0.9) = 0.8 at step 4, 0.9 from step 9 on (not reached).
    assert [step for step, _ in full.updates] == list(range(8))
    assert [step for step, _ in resumed.updates] == [4, 5, 6, 7]
    assert [tau for _, tau in resumed.updates] == pytest.approx([0.8, 5 / 6, 6 / 7, 7 / 8])
    assert resumed.updates == full.updates[4:]
    assert not torch.equal(
        first.teacher.get_parameter("conv.weight"), full.teacher.get_parameter("conv.weight")
    )
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)

    loaded = MeanTeacherModule.load_from_checkpoint(ckpt, student=TinyNet())
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4
    _assert_equal(_state(loaded.teacher), _state(first.teacher))


def test_bf16_mixed_runs_finite() -> None:
    module = CountingMeanTeacher(_net(), consistency_rampup_epochs=0.0)
    t = trainer(max_steps=3, precision="bf16-mixed", limit_val_batches=1)
    t.fit(module, datamodule=TinySemiSupervisedData())
    for name in ("loss_step", "loss_ce_epoch", "loss_consistency_epoch"):
        value = t.logged_metrics[f"train/{name}"]
        assert torch.isfinite(value) and value.dtype == torch.float32, name
    assert all(torch.isfinite(v).all() for v in module.teacher.state_dict().values())
    assert [step for step, _ in module.updates] == [0, 1, 2]


# ----------------------------------------------------------------------------- DDP


def test_ddp_two_processes_keep_identical_teachers(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "mt_ddp_script.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank in ranks:
        assert rank["global_step"] == 4
        assert rank["ema_updates"] == 4
        assert rank["update_steps"].tolist() == [0, 1, 2, 3]
    # Parameters agree across ranks: the student's because DDP averages gradients, the
    # teacher's because it is an EMA of identical students. (BatchNorm running statistics
    # are per rank: each rank's forwards update its own copy.)
    for net in ("student", "teacher"):
        for key, value in ranks[0][net].items():
            if "running" not in key:
                assert torch.equal(value, ranks[1][net][key]), (net, key)
    # The teacher moved, lags the student, and each rank saw different images.
    rank0 = ranks[0]
    assert not torch.equal(rank0["teacher"]["fc.weight"], rank0["teacher_initial"]["fc.weight"])
    assert not torch.equal(rank0["teacher"]["fc.weight"], rank0["student"]["fc.weight"])
    seen0, seen1 = set(ranks[0]["seen"].tolist()), set(ranks[1]["seen"].tolist())
    assert len(seen0) == len(seen1) == 8
    assert not seen0 & seen1
