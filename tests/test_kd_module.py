"""KDModule: frozen teacher, loss values, logging, checkpoints, export, mixed precision."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import ConstantNet, RecordingLogger, TinyData, TinyNet, trainer
from torch import Tensor

from lightning_kd.models import load_weights
from lightning_kd.modules import KDModule


def _snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _teacher() -> TinyNet:
    torch.manual_seed(1)
    return TinyNet()


def test_teacher_frozen_for_real_through_training() -> None:
    torch.manual_seed(0)
    module = KDModule(TinyNet(), _teacher(), temperature=4.0, alpha=0.1)
    teacher_before = _snapshot(module.teacher)
    student_before = _snapshot(module.student)
    trainer(max_steps=6, limit_val_batches=2).fit(module, datamodule=TinyData())

    # Weights and BatchNorm running statistics (and its step counter) never moved.
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert module.teacher.bn.num_batches_tracked.item() == 0
    # The student did train.
    assert not torch.equal(module.student.conv.weight, student_before["conv.weight"])
    assert module.student.bn.num_batches_tracked.item() == 6
    # Never in train mode, never a gradient, not in the optimizer.
    assert not module.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.parameters())
    optimizer = module.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in module.teacher.parameters()}
    assert in_optimizer == {id(p) for p in module.student.parameters()}


def test_train_mode_never_reaches_teacher() -> None:
    module = KDModule(TinyNet(), TinyNet())
    module.train()
    assert module.student.training and not module.teacher.training
    assert not module.teacher.bn.training


def test_loss_values_by_hand() -> None:
    # Student logits 0 (uniform), teacher probabilities [0.2, 0.6, 0.2], label 1, T = 2.
    # CE = ln 3 = 1.098612. Teacher at T=2: p_i ∝ sqrt(q_i) -> [0.267949, 0.464102, 0.267949];
    # KL(p_t || uniform) = sum p ln(3 p) = 0.036588, times T^2 = 4 -> 0.146353.
    # alpha = 0.5: loss = 0.5 * 1.098612 + 0.5 * 0.146353 = 0.622483.
    student = ConstantNet([0.0, 0.0, 0.0])
    teacher = ConstantNet([math.log(0.2), math.log(0.6), math.log(0.2)])
    module = KDModule(student, teacher, temperature=2.0, alpha=0.5)
    batch = (torch.zeros(2, 3, 4, 4), torch.tensor([1, 1]))
    out = module.compute_losses(batch)
    assert out["loss_ce"].item() == pytest.approx(1.098612, abs=1e-5)
    assert out["loss_kd"].item() == pytest.approx(0.146353, abs=1e-5)
    assert out["loss"].item() == pytest.approx(0.622483, abs=1e-5)
    # argmax of constant zeros is class 0: student wrong, teacher right, they disagree.
    assert out["acc"].item() == 0.0
    assert out["teacher_acc"].item() == 1.0
    assert out["agreement"].item() == 0.0
    # Gradient reaches the student only: d loss / d bias = alpha * (p_s - onehot)
    #   + (1 - alpha) * T * (p_s(T) - p_t(T)), averaged over the identical rows.
    out["loss"].backward()
    expected = [
        0.5 * (1 / 3) + 0.5 * 2 * (1 / 3 - 0.267949),
        0.5 * (1 / 3 - 1) + 0.5 * 2 * (1 / 3 - 0.464102),
        0.5 * (1 / 3) + 0.5 * 2 * (1 / 3 - 0.267949),
    ]
    assert student.bias.grad is not None
    torch.testing.assert_close(student.bias.grad, torch.tensor(expected), atol=1e-5, rtol=0)
    assert teacher.bias.grad is None


# CE and KD of the hand example above (uniform student, teacher [0.2, 0.6, 0.2], T = 2).
HAND_CE, HAND_KD = 1.098612, 0.146353


def _hand_module(**weights: float) -> KDModule:
    student = ConstantNet([0.0, 0.0, 0.0])
    teacher = ConstantNet([math.log(0.2), math.log(0.6), math.log(0.2)])
    return KDModule(student, teacher, temperature=2.0, **weights)


@pytest.mark.parametrize(
    ("weights", "ce_weight", "kd_weight"),
    [
        ({}, 0.1, 0.9),  # the defaults: Hinton's alpha = 0.1
        ({"alpha": 0.3}, 0.3, 0.7),  # the shorthand
        ({"alpha": 1.0}, 1.0, 0.0),
        ({"ce_weight": 1.0, "kd_weight": 2.0}, 1.0, 2.0),  # any two floats
        ({"ce_weight": 1.0}, 1.0, 0.9),  # the other keeps its default
        ({"kd_weight": 0.0}, 0.1, 0.0),
    ],
)
def test_loss_weights_are_the_floats_the_loss_uses(
    weights: dict[str, float], ce_weight: float, kd_weight: float
) -> None:
    module = _hand_module(**weights)
    assert (module.ce_weight, module.kd_weight) == pytest.approx((ce_weight, kd_weight))
    out = module.compute_losses((torch.zeros(2, 3, 4, 4), torch.tensor([1, 1])))
    expected = ce_weight * HAND_CE + kd_weight * HAND_KD
    assert out["loss"].item() == pytest.approx(expected, abs=1e-5)
    # The hyperparameters record what the loss used, in the one convention (no alpha).
    assert module.hparams["ce_weight"] == pytest.approx(ce_weight)
    assert module.hparams["kd_weight"] == pytest.approx(kd_weight)
    assert module.hparams["alpha"] is None
    assert not hasattr(module, "alpha")


def test_saved_weights_rebuild_the_same_loss(tmp_path: Path) -> None:
    # A module built with the shorthand saves ce/kd weights only, so load_from_checkpoint
    # neither refuses (alpha + weights) nor falls back to the defaults.
    torch.manual_seed(0)
    module = KDModule(TinyNet(), _teacher(), alpha=0.3)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(module, datamodule=TinyData())
    ckpt = tmp_path / "kd.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert (saved["ce_weight"], saved["kd_weight"], saved["alpha"]) == (0.3, 0.7, None)
    restored = KDModule.load_from_checkpoint(ckpt, student=TinyNet(), teacher=TinyNet())
    assert (restored.ce_weight, restored.kd_weight) == (0.3, 0.7)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            {"alpha": 0.3, "ce_weight": 0.5},
            r"alpha is a shorthand for ce_weight=alpha, kd_weight=1 - alpha and cannot be "
            r"combined with them; got alpha=0.3, ce_weight=0.5, kd_weight=None",
        ),
        (
            {"alpha": 0.1, "kd_weight": 0.9},
            r"got alpha=0.1, ce_weight=None, kd_weight=0.9\. Pass either alpha or the weights",
        ),
        ({"ce_weight": -0.5}, "ce_weight must be a finite number >= 0, got -0.5"),
        ({"kd_weight": math.inf}, "kd_weight must be a finite number >= 0, got inf"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\], got -0.1"),
    ],
)
def test_weight_arguments_are_refused_with_what_was_given(
    weights: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _hand_module(**weights)


def test_identical_student_and_teacher_give_zero_kd() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    module = KDModule(net, copy.deepcopy(net), alpha=0.0)
    module.eval()  # same BN behaviour on both sides
    out = module.compute_losses((torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])))
    assert out["loss_kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["agreement"].item() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"save_teacher_weights": False}, "needs teacher_checkpoint"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KDModule(TinyNet(), TinyNet(), **kwargs)  # type: ignore[arg-type]


def test_logs_every_part(tmp_path: Path) -> None:
    module = KDModule(TinyNet(), _teacher())
    logger = RecordingLogger()
    t = trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=2, logger=logger, log_every_n_steps=1
    )
    t.fit(module, datamodule=TinyData())
    logged = set(t.logged_metrics)
    written = logger.keys()
    for name in ("loss", "loss_ce", "loss_kd", "acc", "teacher_acc", "agreement"):
        assert f"train/{name}_step" in written and f"train/{name}_epoch" in logged, name
    for name in ("loss", "acc", "acc_top5", "teacher_acc", "agreement"):
        assert f"val/{name}" in logged, name
    (result,) = t.test(module, datamodule=TinyData(), verbose=False)
    assert 0.0 <= result["test/acc"] <= result["test/acc_top5"] <= 1.0


def test_evaluation_accuracy_is_exact_over_uneven_batches() -> None:
    # 10 samples in batches of 4, 4, 2; the student always predicts class 0 and 3 of the
    # labels are 0, so accuracy is exactly 0.3 (a mean of batch means would give 0.25).
    module = KDModule(ConstantNet([1.0, 0.0, 0.0]), ConstantNet([0.0, 1.0, 0.0]))
    data = TinyData(n=10, batch_size=4, num_classes=3)
    data.y = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    (result,) = trainer().test(module, datamodule=data, verbose=False)
    assert result["test/acc"] == pytest.approx(0.3)
    assert result["test/teacher_acc"] == pytest.approx(0.7)
    assert result["test/agreement"] == pytest.approx(0.0)


def test_subclass_adds_a_loss_term() -> None:
    # A research extension in a few lines: add an MSE between logits to the KD objective.
    class KDWithLogitMSE(KDModule):
        def __init__(self, *args: object, mse_weight: float = 1.0, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.mse_weight = mse_weight

        def compute_losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
            x, y = batch
            student_logits, teacher_logits = self.student(x), self.teacher_logits(x)
            losses = self.logit_losses(student_logits, teacher_logits, y)
            losses["loss_mse"] = F.mse_loss(student_logits, teacher_logits)
            losses["loss"] = losses["loss"] + self.mse_weight * losses["loss_mse"]
            return losses

    student = ConstantNet([0.0, 0.0, 0.0])
    teacher = ConstantNet([1.0, 2.0, 3.0])
    module = KDWithLogitMSE(student, teacher, mse_weight=2.0, alpha=1.0)
    out = module.compute_losses((torch.zeros(2, 3, 4, 4), torch.tensor([0, 0])))
    # alpha = 1: loss = CE(uniform) + 2 * mean((0 - [1, 2, 3])^2) = ln 3 + 2 * 14/3.
    assert out["loss_mse"].item() == pytest.approx(14 / 3, abs=1e-5)
    assert out["loss"].item() == pytest.approx(math.log(3) + 28 / 3, abs=1e-5)
    t = trainer(max_steps=2, limit_val_batches=1)
    t.fit(KDWithLogitMSE(TinyNet(), TinyNet()), datamodule=TinyData())
    assert "train/loss_mse_epoch" in t.logged_metrics


def _teacher_file(tmp_path: Path) -> tuple[Path, TinyNet]:
    teacher = _teacher()
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return path, teacher


def test_checkpoint_without_teacher_weights(tmp_path: Path) -> None:
    path, teacher = _teacher_file(tmp_path)
    module = KDModule(
        TinyNet(), TinyNet(), teacher_checkpoint=str(path), save_teacher_weights=False
    )
    for key, value in teacher.state_dict().items():
        assert torch.equal(module.teacher.state_dict()[key], value)
    t = trainer(max_steps=2, limit_val_batches=1)
    t.fit(module, datamodule=TinyData())
    ckpt = tmp_path / "kd.ckpt"
    t.save_checkpoint(ckpt)

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert not [k for k in saved["state_dict"] if k.startswith("teacher.")]
    recorded = saved["lightning_kd"]["teacher"]
    assert recorded["path"] == str(path.resolve()) and Path(recorded["path"]).is_absolute()
    assert len(recorded["sha256"]) == 64 and recorded["weights_saved"] is False
    assert saved["lightning_kd"]["module"] == "lightning_kd.modules.kd.KDModule"

    restored = KDModule.load_from_checkpoint(ckpt, student=TinyNet(), teacher=TinyNet())
    for key, value in module.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key

    # Resuming training from it works too (strict loading with the teacher re-inserted).
    resumed = KDModule(
        TinyNet(), TinyNet(), teacher_checkpoint=str(path), save_teacher_weights=False
    )
    trainer(max_steps=4, limit_val_batches=1).fit(resumed, datamodule=TinyData(), ckpt_path=ckpt)
    assert resumed.trainer.global_step == 4


def test_checkpoint_without_teacher_needs_source(tmp_path: Path) -> None:
    path, _ = _teacher_file(tmp_path)
    module = KDModule(
        TinyNet(), TinyNet(), teacher_checkpoint=str(path), save_teacher_weights=False
    )
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(module, datamodule=TinyData())
    ckpt = tmp_path / "kd.ckpt"
    t.save_checkpoint(ckpt)
    with pytest.raises(ValueError, match="has no teacher weights"):
        KDModule.load_from_checkpoint(
            ckpt,
            student=TinyNet(),
            teacher=TinyNet(),
            teacher_checkpoint=None,
            save_teacher_weights=True,
        )


def test_export_student_alone(tmp_path: Path) -> None:
    module = KDModule(TinyNet(), _teacher())
    trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=TinyData())
    path = module.export(tmp_path / "student.pt")
    state = torch.load(path, weights_only=True)
    assert set(state) == set(TinyNet().state_dict())
    fresh = load_weights(TinyNet(), path)
    for key, value in module.student.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    # A KD Lightning checkpoint also loads into a bare student ("student." prefix).
    ckpt = tmp_path / "kd.ckpt"
    module.trainer.save_checkpoint(ckpt)
    from_ckpt = load_weights(TinyNet(), ckpt)
    assert torch.equal(from_ckpt.fc.weight, module.student.fc.weight)


def test_bf16_mixed_and_gradient_accumulation() -> None:
    module = KDModule(TinyNet(), _teacher())
    teacher_before = _snapshot(module.teacher)
    t = trainer(
        max_epochs=1, precision="bf16-mixed", accumulate_grad_batches=2, limit_val_batches=1
    )
    t.fit(module, datamodule=TinyData(n=32, batch_size=4))  # 8 batches -> 4 optimizer steps
    assert t.global_step == 4
    for name in ("loss", "loss_kd", "loss_ce"):
        value = t.logged_metrics[f"train/{name}_epoch"]
        assert torch.isfinite(value) and value.dtype == torch.float32
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    # Loss math is float32 under autocast even though the logits are bf16.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module.compute_losses((torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])))
    assert out["loss"].dtype == torch.float32


def test_channels_last_option() -> None:
    module = KDModule(TinyNet(), _teacher(), channels_last=True)
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=TinyData())
    assert module.student.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert module.teacher.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    # Resume from the end-of-epoch checkpoint and compare with a run that never stopped:
    # student weights, BN statistics and SGD momentum buffers must all carry over.
    def fresh() -> KDModule:
        torch.manual_seed(0)
        return KDModule(TinyNet(), _teacher())

    data = TinyData(n=32, batch_size=8)  # 4 batches per epoch, fixed order
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
    assert not torch.equal(first.student.conv.weight, full.student.conv.weight)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)


class _RecordingNet(TinyNet):
    """TinyNet that keeps the last input it saw."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return super().forward(x)


class _NormalizedTinyData(TinyData):
    """TinyData whose batches count as normalised with these statistics."""

    mean = (0.5, 0.4, 0.3)
    std = (0.25, 0.2, 0.1)


def test_renormalize_matches_the_closed_form() -> None:
    from lightning_kd.normalization import Renormalize

    raw = torch.rand(2, 3, 4, 4)
    m_in, s_in = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.25, 0.2, 0.1])
    m_out, s_out = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (raw - m_in.view(1, 3, 1, 1)) / s_in.view(1, 3, 1, 1)
    expected = (raw - m_out.view(1, 3, 1, 1)) / s_out.view(1, 3, 1, 1)
    renorm = Renormalize(m_in.tolist(), s_in.tolist(), m_out.tolist(), s_out.tolist())
    assert torch.allclose(renorm(x), expected, atol=1e-6)
    # Same statistics in and out: the identity.
    same = Renormalize(m_in.tolist(), s_in.tolist(), m_in.tolist(), s_in.tolist())
    assert torch.allclose(same(x), x, atol=1e-6)
    assert not renorm.state_dict()  # constants never enter a checkpoint
    with pytest.raises(ValueError, match="output_std must be > 0"):
        Renormalize([0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="same number of channels"):
        Renormalize([0.0] * 3, [1.0] * 3, [0.0], [1.0])


def test_teacher_input_normalization_for_the_teacher_only() -> None:
    imagenet_mean, imagenet_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    student, teacher = _RecordingNet(), _RecordingNet()
    module = KDModule(student, teacher, teacher_mean=imagenet_mean, teacher_std=imagenet_std)
    data = _NormalizedTinyData()
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(module, datamodule=data)
    x = data.x[:8]  # the first training batch (no shuffling)
    assert torch.equal(student.seen, x)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    raw = x * std + mean
    expected = (raw - torch.tensor(imagenet_mean).view(1, 3, 1, 1)) / torch.tensor(
        imagenet_std
    ).view(1, 3, 1, 1)
    assert torch.allclose(teacher.seen, expected, atol=1e-5)
    # Evaluation sees the same re-normalisation.
    module.evaluate((x, data.y[:8]))
    assert torch.allclose(teacher.seen, expected, atol=1e-5)


def test_teacher_input_normalization_needs_the_input_statistics() -> None:
    module = KDModule(TinyNet(), TinyNet(), teacher_mean=[0.5] * 3, teacher_std=[0.2] * 3)
    with pytest.raises(ValueError, match="has no mean / std: pass input_mean and input_std"):
        trainer(max_steps=1).fit(module, datamodule=TinyData())
    with pytest.raises(ValueError, match="teacher_mean and teacher_std go together"):
        KDModule(TinyNet(), TinyNet(), teacher_mean=[0.5] * 3)
    # Given explicitly, no datamodule statistics are needed.
    explicit = KDModule(
        TinyNet(),
        TinyNet(),
        teacher_mean=[0.5] * 3,
        teacher_std=[0.2] * 3,
        input_mean=[0.5] * 3,
        input_std=[0.2] * 3,
    )
    trainer(max_steps=1, limit_val_batches=0).fit(explicit, datamodule=TinyData())
    assert explicit.trainer.global_step == 1
