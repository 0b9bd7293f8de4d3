"""The online linear probe of SelfDistillationModule (DINO, BYOL): a LinearProbe submodule.

It learns, by hand on a first step, without touching the self-distillation training (same
weights with and without it, also under gradient clipping), in its own parameter group, and
resumes exactly. Its 2-process DDP check (identical probes on both ranks) is part of
``test_self_distillation.py::test_ddp_two_processes_keep_identical_centers_and_teachers``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_self_distillation import TinyBackbone, ViewsDataset, data_for, make_dino
from tiny import RecordingLogger, trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_kd.models.heads import LinearProbe
from lightning_kd.modules.byol import BYOLModule
from lightning_kd.modules.dino import DINOModule


class VectorBackbone(nn.Module):
    """The features are the input vectors ``(B, D)`` themselves (no parameters), so the probe
    is trained on known, fixed features while BYOL trains its projector and predictor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


class VectorViews(L.LightningDataModule):
    """Training batches ``[[x, -x], y]`` (the second view differs, so it is clear which one
    the probe saw), validation batches ``[x, y]``, in a fixed order."""

    def __init__(
        self,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        batch_size: int = 4,
        validates_on_test: bool = False,
    ) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_size = batch_size
        self.validates_on_test = validates_on_test

    def train_dataloader(self) -> DataLoader:
        x, y = self.train
        return DataLoader(ViewsDataset([x, -x], y), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.val), batch_size=self.batch_size)

    test_dataloader = val_dataloader


def separable_data(
    num_classes: int = 5, per_class: int = 4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``per_class`` points close to each unit axis of ``R^C``: ``x (N, C)``, ``y (N,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat(per_class)
    x = torch.eye(num_classes)[y] + 0.05 * torch.randn(len(y), num_classes, generator=g)
    return x, y


def make_byol_probe(dim: int, num_classes: int, **kwargs: Any) -> BYOLModule:
    torch.manual_seed(0)
    return BYOLModule(
        VectorBackbone(dim),
        projection_dim=4,
        hidden_dim=8,
        momentum_start=0.9,
        probe_num_classes=num_classes,
        **kwargs,
    )


def _logged(logger: RecordingLogger, key: str) -> list[float]:
    return [m[key] for _, m in logger.metrics if key in m]


# ----------------------------------------------------------------------------- the module


def test_linear_probe_starts_at_zero_without_drawing_random_numbers() -> None:
    state = torch.random.get_rng_state()
    probe = LinearProbe(4, 3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert probe.linear.weight.shape == (3, 4) and probe.linear.bias.shape == (3,)
    assert torch.count_nonzero(probe.linear.weight) == torch.count_nonzero(probe.linear.bias) == 0
    assert [n for n, _ in probe.named_parameters()] == ["linear.weight", "linear.bias"]


def test_linear_probe_detaches_and_classifies_in_float32() -> None:
    probe = LinearProbe(2, 2)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        probe.linear.bias.copy_(torch.tensor([0.5, 0.0]))
    features = torch.tensor([[1.0, 3.0]], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = probe(features.bfloat16())
    assert logits.dtype == torch.float32
    assert torch.equal(logits, torch.tensor([[1.5, 6.0]]))
    logits.sum().backward()
    assert features.grad is None  # a constant for the network that produced it
    assert torch.equal(probe.linear.weight.grad, torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    with pytest.raises(ValueError, match=r"LinearProbe expects \(B, 2\), got shape \(3,\)"):
        probe(torch.zeros(3))
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        LinearProbe(2, 0)


# ----------------------------------------------------------------------------- training


def test_learns_a_linearly_separable_problem() -> None:
    module = make_byol_probe(5, 5, probe_lr=0.5)
    data = VectorViews(separable_data(per_class=8, seed=0), separable_data(per_class=4, seed=1))
    logger = RecordingLogger()
    fit = trainer(max_epochs=6, logger=logger, num_sanity_val_steps=2)
    fit.fit(module, datamodule=data)
    assert fit.callback_metrics["val/probe_acc"].item() == 1.0
    losses = _logged(logger, "train/probe_loss_epoch")
    accs = _logged(logger, "train/probe_acc_epoch")
    assert len(losses) == len(accs) == 6  # once per epoch
    assert losses[-1] < losses[0] < math.log(5.0)
    assert accs[-1] == 1.0
    assert module.probe is not None and module.probe.linear.weight.shape == (5, 5)


def test_first_probe_step_by_hand() -> None:
    # Zero probe: logits 0, so the loss is ln C and d loss / dW = (1/C - onehot(y))^T x / B.
    # The probe's group is SGD with lr 0.5, momentum 0.9 (first step: buffer = gradient) and no
    # weight decay: W_1 = -0.5 * grad. x is the first view (the second one is -x).
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0], [-1.0, 1.0, 2.0]])
    y = torch.tensor([0, 2, 2, 1])
    module = make_byol_probe(3, 3, probe_lr=0.5)
    logger = RecordingLogger()
    trainer(max_steps=1, limit_val_batches=0, logger=logger, log_every_n_steps=1).fit(
        module, datamodule=VectorViews((x, y), (x, y))
    )
    residual = torch.full((4, 3), 1.0 / 3.0) - torch.eye(3)[y]  # (B, C) = p - onehot
    assert module.probe is not None
    torch.testing.assert_close(
        module.probe.linear.weight, -0.5 * residual.T @ x / 4, rtol=0, atol=1e-7
    )
    torch.testing.assert_close(
        module.probe.linear.bias, -0.5 * residual.mean(dim=0), rtol=0, atol=1e-7
    )
    (probe_loss,) = _logged(logger, "train/probe_loss_step")
    assert probe_loss == pytest.approx(math.log(3.0), abs=1e-6)
    # The logged loss is the sum; ssl_loss is the self-distillation objective alone.
    (loss,) = _logged(logger, "train/loss_step")
    (ssl_loss,) = _logged(logger, "train/ssl_loss_step")
    assert loss == pytest.approx(ssl_loss + math.log(3.0), abs=1e-6)
    assert 0.0 < ssl_loss <= 8.0


@pytest.mark.parametrize("gradient_clip_val", [None, 0.01])
@pytest.mark.parametrize("kind", ["dino", "byol"])
def test_probe_leaves_the_self_distillation_training_unchanged(
    kind: str, gradient_clip_val: float | None
) -> None:
    # Same seed, same batches, with and without a probe: the features are detached and the
    # probe is left out of the gradient clipping, so the student, the teacher (and DINO's
    # center) are bit-for-bit the same after 3 steps, and the logged self-distillation loss
    # is the plain run's loss.
    runs = {}
    for probe in (None, 4):
        if kind == "dino":
            module: DINOModule | BYOLModule = make_dino(probe_num_classes=probe)
        else:
            torch.manual_seed(0)
            module = BYOLModule(
                TinyBackbone(), projection_dim=4, hidden_dim=8, probe_num_classes=probe
            )
        logger = RecordingLogger()
        trainer(
            max_steps=3,
            limit_val_batches=0,
            logger=logger,
            log_every_n_steps=1,
            gradient_clip_val=gradient_clip_val,
        ).fit(module, datamodule=data_for(module))
        runs[probe] = (module, logger)
    (plain, plain_log), (probed, probed_log) = runs[None], runs[4]
    assert plain.probe is None and probed.probe is not None
    assert probed.probe.linear.weight.abs().sum() > 0  # the probe did learn
    for net in ("student", "teacher"):
        a, b = plain.get_submodule(net).state_dict(), probed.get_submodule(net).state_dict()
        for key, value in a.items():
            assert torch.equal(value, b[key]), (net, key)
    if isinstance(plain, DINOModule) and isinstance(probed, DINOModule):
        assert torch.equal(plain.center.center, probed.center.center)
    assert _logged(probed_log, "train/ssl_loss_step") == _logged(plain_log, "train/loss_step")
    assert _logged(plain_log, "train/probe_loss_step") == []


def test_probe_has_its_own_parameter_group_outside_the_weight_decay_schedule() -> None:
    def sgd_wd(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.04)

    module = make_dino(
        weight_decay_end=0.4,
        optimizer=sgd_wd,
        probe_num_classes=4,
        probe_lr=0.3,
        probe_weight_decay=1e-4,
    )
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(module, datamodule=data_for(module))  # 4 steps
    decayed, plain, probe_group = t.optimizers[0].param_groups
    assert module.probe is not None
    assert [id(p) for p in probe_group["params"]] == [id(p) for p in module.probe.parameters()]
    assert probe_group["linear_probe"] is True and "weight_decay_scheduled" not in probe_group
    assert probe_group["lr"] == 0.3 and probe_group["weight_decay"] == 1e-4
    # The schedule moved the decayed group (cosine 0.04 -> 0.4, at step 3 of 4), not the probe's.
    wd = 0.4 - 0.18 * (1 - math.sqrt(2.0) / 2.0)
    assert decayed["weight_decay"] == pytest.approx(wd, abs=1e-12)
    assert plain["weight_decay"] == 0.0
    probe_ids = {id(p) for p in module.probe.parameters()}
    assert not probe_ids & {id(p) for p in [*decayed["params"], *plain["params"]]}
    # Without probe_lr the group takes the optimizer's learning rate.
    default = make_dino(probe_num_classes=4)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(default, datamodule=data_for(default))
    assert t.optimizers[0].param_groups[-1]["lr"] == 0.05


def test_gradient_clipping_leaves_the_probe_out() -> None:
    module = make_dino(probe_num_classes=4)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert module.probe is not None
    probe_ids = {id(p) for p in module.probe.parameters()}
    trained = [p for p in module.trainable_parameters() if id(p) not in probe_ids]
    for p in module.trainable_parameters():
        p.grad = torch.full_like(p, 5.0)
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trained]))  # type: ignore[union-attr]
    assert norm.item() == pytest.approx(1.0, rel=1e-5)
    for p in module.probe.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 5.0))  # type: ignore[arg-type]
    module.configure_gradient_clipping(optimizer, 1e-4, "value")
    assert all(p.grad.abs().max().item() <= 1e-4 for p in trained)  # type: ignore[union-attr]
    for p in module.probe.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 5.0))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("validates_on_test", [False, True])
def test_evaluation_accuracy_by_hand(validates_on_test: bool) -> None:
    # Probe W = I, b = 0 on the identity features: the prediction is the largest coordinate.
    # Rows predict 0, 1, 2, 0, 2 against labels 0, 1, 1, 0, 1: accuracy 3/5. The name is
    # val/probe_acc also when the datamodule validates on its test split (as the kNN's is).
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [2.0, 1.0, 0], [0, 0.5, 0.7]])
    y = torch.tensor([0, 1, 1, 0, 1])
    module = make_byol_probe(3, 3)
    assert module.probe is not None
    with torch.no_grad():
        module.probe.linear.weight.copy_(torch.eye(3))
    data = VectorViews((x, y), (x, y), batch_size=2, validates_on_test=validates_on_test)
    (val,) = trainer().validate(module, datamodule=data, verbose=False)
    assert val["val/probe_acc"] == pytest.approx(0.6)
    (test,) = trainer().test(module, datamodule=data, verbose=False)
    assert test["test/probe_acc"] == pytest.approx(0.6)


def test_no_probe_by_default() -> None:
    module = make_dino()
    assert module.probe is None and not any(k.startswith("probe") for k in module.state_dict())
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    out = module.validation_step([x, y], 0)
    assert set(out) == {"features", "targets"}


# ----------------------------------------------------------------------------- resume


def test_resume_equals_uninterrupted_training(tmp_path: Path) -> None:
    # The probe is part of the module (weights in the state dict, momentum in the module's
    # optimizer state): resuming from the end of epoch 1 gives the run that never stopped.
    def fresh() -> DINOModule:
        return make_dino(probe_num_classes=4, probe_lr=0.2, probe_weight_decay=1e-3)

    data = data_for(fresh())
    full = fresh()
    every_epoch = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    t_full = trainer(
        max_epochs=2, limit_val_batches=0, enable_checkpointing=True, callbacks=[every_epoch]
    )
    t_full.fit(full, datamodule=data)
    (ckpt,) = tmp_path.glob("epoch=0-*.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert {"probe.linear.weight", "probe.linear.bias"} <= set(saved["state_dict"])
    resumed = fresh()
    t2 = trainer(max_epochs=2, limit_val_batches=0)
    t2.fit(resumed, datamodule=data, ckpt_path=ckpt)
    assert full.probe is not None and resumed.probe is not None
    torch.testing.assert_close(resumed.probe.state_dict(), full.probe.state_dict(), rtol=0, atol=0)
    assert not torch.equal(saved["state_dict"]["probe.linear.weight"], full.probe.linear.weight)
    full_sgd, resumed_sgd = t_full.optimizers[0].state_dict(), t2.optimizers[0].state_dict()
    probe_indices = full_sgd["param_groups"][-1]["params"]  # the probe's group, last
    assert full_sgd["param_groups"][-1]["linear_probe"] is True and len(probe_indices) == 2
    for index in probe_indices:
        full_buffer = full_sgd["state"][index]["momentum_buffer"]
        assert torch.equal(resumed_sgd["state"][index]["momentum_buffer"], full_buffer)
        assert full_buffer.abs().sum() > 0


# ----------------------------------------------------------------------------- errors


def test_class_count_must_match_the_datamodule() -> None:
    module = make_dino(probe_num_classes=10)
    data = data_for(module)  # num_classes = 4
    with pytest.raises(
        ValueError, match="probe_num_classes=10, but the datamodule ViewsData has num_classes=4"
    ):
        trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probe_num_classes": 0}, "probe_num_classes must be None or an int >= 1, got 0"),
        ({"probe_num_classes": True}, "probe_num_classes must be None or an int >= 1, got True"),
        ({"probe_lr": 0.0}, "probe_lr must be None or a finite number > 0, got 0.0"),
        ({"probe_lr": math.inf}, "probe_lr must be None or a finite number > 0, got inf"),
        ({"probe_weight_decay": -1.0}, "probe_weight_decay must be a finite number >= 0, got -1.0"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_dino(**kwargs)
