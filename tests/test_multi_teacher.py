"""Distillation from several frozen teachers: combined targets by hand, equivalences with one
teacher, frozen teachers, per-teacher metrics, checkpoints and resume, the CLI and DDP."""

from __future__ import annotations

import copy
import glob
import math
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_ddp import _run_ddp_script
from tiny import ConstantNet, RecordingLogger, TinyData, TinyNet, trainer
from torch import Tensor, nn

from lightning_kd.cli import build_cli, main
from lightning_kd.losses import kd_loss
from lightning_kd.losses.ensemble import (
    ensemble_targets,
    ensemble_weights,
    kd_loss_to_distribution,
    multi_teacher_kd_loss,
)
from lightning_kd.modules.kd import KDModule
from lightning_kd.modules.teachers import Teacher, TeacherEnsemble

LN2, LN3 = math.log(2.0), math.log(3.0)
# The hand example: at T = 2, z1 = [0, 2 ln 2, 0] softens to [1, 2, 1] / 4 = [0.25, 0.5, 0.25]
# and z2 = [2 ln 3, 0, 0] to [3, 1, 1] / 5 = [0.6, 0.2, 0.2]; weights (1, 3) -> (0.25, 0.75).
Z1, Z2 = [0.0, 2 * LN2, 0.0], [2 * LN3, 0.0, 0.0]
# "probabilities": 0.25 [0.25, 0.5, 0.25] + 0.75 [0.6, 0.2, 0.2] = [0.5125, 0.275, 0.2125].
Q_PROBABILITIES = [0.5125, 0.275, 0.2125]
# "logits": mean logits 0.25 z1 + 0.75 z2 = [1.5 ln 3, 0.5 ln 2, 0]; over T = 2 and softmax:
# [3^0.75, 2^0.25, 1] / (2.279507 + 1.189207 + 1) = [0.510104, 0.266118, 0.223778].
Q_LOGITS = [0.510104, 0.266118, 0.223778]
# KD of a uniform student against each: 4 * sum q ln(3 q).
#   probabilities: 4 * (0.5125 ln 1.5375 + 0.275 ln 0.825 + 0.2125 ln 0.6375) = 0.287543
#   logits:        4 * (0.510104 ln 1.530311 + 0.266118 ln 0.798355 + 0.223778 ln 0.671334)
#                  = 0.271724
KD_UNIFORM = {"probabilities": 0.287543, "logits": 0.271724}
Q = {"probabilities": Q_PROBABILITIES, "logits": Q_LOGITS}


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _net(seed: int, width: int = 4) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(width=width)


# ---------------------------------------------------------------------- the combined target
@pytest.mark.parametrize("mode", ["probabilities", "logits"])
def test_two_teacher_target_by_hand(mode: str) -> None:
    z1, z2 = torch.tensor([Z1]), torch.tensor([Z2])  # (1, 3) each
    q = ensemble_targets([z1, z2], [1.0, 3.0], temperature=2.0, mode=mode)  # type: ignore[arg-type]
    torch.testing.assert_close(q, torch.tensor([Q[mode]]), atol=1e-6, rtol=0)
    student = torch.zeros(1, 3)
    kd = kd_loss_to_distribution(student, q, temperature=2.0)
    assert kd.item() == pytest.approx(KD_UNIFORM[mode], abs=1e-5)


@pytest.mark.parametrize("mode", ["probabilities", "logits"])
def test_module_loss_and_gradient_by_hand(mode: str) -> None:
    # Student logits 0 (uniform), the two teachers above, label 1, alpha = 0.5, T = 2.
    # loss = 0.5 * ln 3 + 0.5 * KD; d loss / d bias = 0.5 * (1/3 - onehot) + 0.5 * 2 * (1/3 - q)
    student = ConstantNet([0.0, 0.0, 0.0])
    teachers = [Teacher(ConstantNet(Z1), weight=1.0), Teacher(ConstantNet(Z2), weight=3.0)]
    module = KDModule(student, teachers=teachers, ensemble=mode, temperature=2.0, alpha=0.5)  # type: ignore[arg-type]
    out = module.compute_losses((torch.zeros(2, 3, 4, 4), torch.tensor([1, 1])))
    assert out["loss_kd"].item() == pytest.approx(KD_UNIFORM[mode], abs=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * LN3 + 0.5 * KD_UNIFORM[mode], abs=1e-5)
    # Teacher 0 predicts class 1 (right), teacher 1 class 0 (wrong), the target class 0.
    assert out["teacher0_acc"].item() == 1.0 and out["teacher1_acc"].item() == 0.0
    assert out["teacher_acc"].item() == 0.0 and out["teacher_agreement"].item() == 0.0
    out["loss"].backward()
    q = Q[mode]
    expected = [0.5 * (1 / 3 - (c == 1)) + 0.5 * 2 * (1 / 3 - q[c]) for c in range(3)]
    assert student.bias.grad is not None
    torch.testing.assert_close(student.bias.grad, torch.tensor(expected), atol=1e-5, rtol=0)
    assert all(t.network.bias.grad is None for t in module.teacher.members)  # type: ignore[union-attr]


def test_mean_of_kd_losses_same_gradient_larger_value() -> None:
    # The documented property (lightning_kd.losses.ensemble): sum_k w_k KD(p_k) has the
    # gradient of KD against q = sum_k w_k p_k, but exceeds it by
    # T^2 (H(q) - sum_k w_k H(p_k)), whatever the student. With the hand example:
    #   mean of losses = 4 * (0.25 (ln 3 - H(p1)) + 0.75 (ln 3 - H(p2))) = 0.503917
    #   H(q) = 1.026726, H(p1) = 1.5 ln 2 = 1.039721, H(p2) = 0.950271
    #   difference = 4 * (1.026726 - 0.25 * 1.039721 - 0.75 * 0.950271) = 0.216373
    #   the gradient at the uniform student: T (p_s - q) = 2 (1/3 - q)
    z1, z2 = torch.tensor([Z1]), torch.tensor([Z2])
    for logits, mean_loss in (([0.0, 0.0, 0.0], 0.503917), ([1.0, -1.0, 0.5], None)):
        s1 = torch.tensor([logits], requires_grad=True)
        s2 = torch.tensor([logits], requires_grad=True)
        averaged = 0.25 * kd_loss(s1, z1, temperature=2.0) + 0.75 * kd_loss(s1, z2, temperature=2.0)
        combined = multi_teacher_kd_loss(s2, [z1, z2], [1.0, 3.0], temperature=2.0)
        averaged.backward()
        combined.backward()
        assert s1.grad is not None and s2.grad is not None
        torch.testing.assert_close(s1.grad, s2.grad, atol=1e-6, rtol=0)
        assert (averaged - combined).item() == pytest.approx(0.216373, abs=1e-5)
        if mean_loss is not None:
            assert averaged.item() == pytest.approx(mean_loss, abs=1e-5)
            expected = [2 * (1 / 3 - q) for q in Q_PROBABILITIES]
            torch.testing.assert_close(s2.grad, torch.tensor([expected]), atol=1e-5, rtol=0)


def test_float32_math_under_autocast() -> None:
    z1, z2 = torch.tensor([Z1]).bfloat16(), torch.tensor([Z2]).bfloat16()
    student = torch.zeros(1, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for mode in ("probabilities", "logits"):
            loss = multi_teacher_kd_loss(student, [z1, z2], [1.0, 3.0], temperature=2.0, mode=mode)  # type: ignore[arg-type]
            assert loss.dtype == torch.float32
            # Only the bf16 rounding of the logits (2 ln 2, 2 ln 3) moves it off the hand value.
            assert loss.item() == pytest.approx(KD_UNIFORM[mode], abs=5e-3)


def test_weights_are_normalised_and_refused_with_what_was_given() -> None:
    assert ensemble_weights([1.0, 3.0]) == [0.25, 0.75]
    assert ensemble_weights([2.0, 0.0]) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"teacher 1: weight must be a finite number >= 0, got -1"):
        ensemble_weights([1.0, -1.0])
    with pytest.raises(ValueError, match=r"must not all be 0, got \[0.0, 0.0\]"):
        ensemble_weights([0.0, 0.0])
    with pytest.raises(ValueError, match=r"one weight per teacher: got 2 teacher outputs and 1"):
        ensemble_targets([torch.zeros(1, 3)] * 2, [1.0], temperature=1.0)
    with pytest.raises(ValueError, match=r"teacher 1 gives logits of shape \(1, 4\), teacher 0"):
        ensemble_targets([torch.zeros(1, 3), torch.zeros(1, 4)], [1.0, 1.0], temperature=1.0)


# ---------------------------------------------------------------------- equivalences
def _batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)


def _loss_and_grads(module: KDModule) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    module.train()
    out = module.compute_losses(_batch())
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("mode", ["probabilities", "logits"])
def test_two_identical_teachers_equal_one(mode: str) -> None:
    student, teacher = _net(0), _net(1)
    one = KDModule(copy.deepcopy(student), copy.deepcopy(teacher), temperature=4.0, alpha=0.3)
    two = KDModule(
        copy.deepcopy(student),
        teachers=[Teacher(copy.deepcopy(teacher)), Teacher(copy.deepcopy(teacher))],
        ensemble=mode,  # type: ignore[arg-type]
        temperature=4.0,
        alpha=0.3,
    )
    out_one, grads_one = _loss_and_grads(one)
    out_two, grads_two = _loss_and_grads(two)
    for name in ("loss", "loss_ce", "loss_kd", "teacher_acc", "agreement"):
        torch.testing.assert_close(out_two[name], out_one[name], atol=1e-6, rtol=0, msg=name)
    assert out_two["teacher_agreement"].item() == 1.0
    assert set(grads_two) == set(grads_one) == {n for n, _ in student.named_parameters()}
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_two[name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("mode", ["probabilities", "logits"])
def test_weights_one_and_zero_equal_the_first_teacher(mode: str) -> None:
    student, first, second = _net(0), _net(1), _net(2, width=6)
    one = KDModule(copy.deepcopy(student), copy.deepcopy(first), temperature=4.0, alpha=0.3)
    two = KDModule(
        copy.deepcopy(student),
        teachers=[
            Teacher(copy.deepcopy(first), weight=1.0),
            Teacher(copy.deepcopy(second), weight=0.0),
        ],
        ensemble=mode,  # type: ignore[arg-type]
        temperature=4.0,
        alpha=0.3,
    )
    out_one, grads_one = _loss_and_grads(one)
    out_two, grads_two = _loss_and_grads(two)
    for name in ("loss", "loss_kd", "teacher_acc", "agreement"):
        torch.testing.assert_close(out_two[name], out_one[name], atol=1e-6, rtol=0, msg=name)
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_two[name], grad, atol=1e-6, rtol=0, msg=name)
    # The second teacher is still evaluated (its own metrics), it just adds nothing.
    assert torch.equal(out_two["teacher0_acc"], out_one["teacher_acc"])
    assert "teacher1_acc" in out_two


# ---------------------------------------------------------------------- frozen for real
def test_teachers_frozen_for_real_through_training() -> None:
    networks = [_net(1), _net(2, width=6)]
    module = KDModule(_net(0), teachers=[Teacher(n) for n in networks])
    before = [_snapshot(n) for n in networks]
    trainer(max_steps=6, limit_val_batches=2).fit(module, datamodule=TinyData())
    for network, snapshot in zip(networks, before, strict=True):
        for key, value in network.state_dict().items():
            assert torch.equal(value, snapshot[key]), key
        assert network.bn.num_batches_tracked.item() == 0
        assert not network.training and not network.bn.training
        assert all(not p.requires_grad and p.grad is None for p in network.parameters())
    assert module.student.bn.num_batches_tracked.item() == 6
    optimizer = module.trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.student.parameters()}
    module.train()  # what Lightning calls: the teachers stay in eval mode
    assert module.student.training
    assert not any(m.training for m in module.teacher.modules())


# ---------------------------------------------------------------------- metrics
def test_per_teacher_metrics_logged_with_their_values() -> None:
    # Teachers predict class 0, 1 and 1 for every image, the student class 2; of the ten
    # labels three are 0, five are 1 and two are 2. The combined target (1/3 each) is class 1.
    def constant(c: int) -> ConstantNet:
        return ConstantNet([1.0 if i == c else 0.0 for i in range(4)])

    teachers = [Teacher(constant(0)), Teacher(constant(1)), Teacher(constant(1))]
    module = KDModule(constant(2), teachers=teachers)
    data = TinyData(n=10, batch_size=4, num_classes=4)
    data.y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    logger = RecordingLogger()
    t = trainer(max_epochs=1, limit_val_batches=3, logger=logger, log_every_n_steps=1)
    t.fit(module, datamodule=data)
    expected = {
        "acc": 0.2,
        "teacher_acc": 0.5,
        "agreement": 0.0,
        "teacher0_acc": 0.3,
        "teacher1_acc": 0.5,
        "teacher2_acc": 0.5,
        "teacher0_agreement": 0.0,
        "teacher1_agreement": 0.0,
        "teacher_agreement": 1 / 3,  # pairs (0, 1), (0, 2) disagree; (1, 2) agree
    }
    written = logger.keys()
    for name, value in expected.items():
        assert f"train/{name}_step" in written, name
        assert logger.last(f"train/{name}_epoch") == pytest.approx(value, abs=1e-6), name
        assert logger.last(f"val/{name}") == pytest.approx(value, abs=1e-6), name
    (result,) = t.test(module, datamodule=data, verbose=False)
    assert result["test/teacher_agreement"] == pytest.approx(1 / 3, abs=1e-6)
    assert result["test/teacher1_acc"] == pytest.approx(0.5)


# ---------------------------------------------------------------------- input normalisation
class _RecordingNet(TinyNet):
    def forward(self, x: Tensor) -> Tensor:
        self.seen = x.detach().clone()
        return super().forward(x)


class _NormalizedTinyData(TinyData):
    mean = (0.5, 0.4, 0.3)
    std = (0.25, 0.2, 0.1)


def test_each_teacher_sees_its_own_normalisation() -> None:
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    student, plain, renormed = _RecordingNet(), _RecordingNet(), _RecordingNet()
    teachers = [Teacher(plain), Teacher(renormed, mean=imagenet[0], std=imagenet[1])]
    module = KDModule(student, teachers=teachers)
    data = _NormalizedTinyData()
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=data)
    x = data.x[:8]
    assert torch.equal(student.seen, x) and torch.equal(plain.seen, x)
    raw = x * torch.tensor(data.std).view(1, 3, 1, 1) + torch.tensor(data.mean).view(1, 3, 1, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in imagenet)
    assert torch.allclose(renormed.seen, (raw - mean) / std, atol=1e-5)
    # Without the batches' statistics the run stops, naming what is missing.
    bare = KDModule(TinyNet(), teachers=[Teacher(TinyNet(), mean=[0.5] * 3, std=[0.2] * 3)])
    with pytest.raises(ValueError, match="a Teacher's mean / std need the normalisation"):
        trainer(max_steps=1).fit(bare, datamodule=TinyData())


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"teacher": "net", "teachers": "two"}, "exactly one of teacher .* got both"),
        ({}, "exactly one of teacher .* got neither"),
        ({"teachers": [Teacher(TinyNet(), weight=0.0)] * 2}, "must not all be 0"),
        ({"teachers": []}, r"teachers must hold at least one Teacher, got \[\]"),
        ({"teachers": [TinyNet()]}, r"teachers\[0\] must be a lightning_kd.modules.Teacher"),
        ({"teachers": "two", "ensemble": "median"}, "ensemble must be 'probabilities' or 'logits'"),
        ({"teacher": "net", "ensemble": "logits"}, "with one teacher leave it out"),
        (
            {"teachers": "two", "teacher_checkpoint": "t.pt", "teacher_mean": [0.5] * 3},
            r"got \['teacher_checkpoint', 'teacher_mean'\] for the module as well",
        ),
        (
            {"teachers": "two", "save_teacher_weights": False},
            r"needs every teacher's checkpoint .* teachers \[0, 1\] have checkpoint=None",
        ),
    ],
)
def test_invalid_arguments_say_what_they_got(kwargs: dict[str, object], match: str) -> None:
    def resolve(value: object) -> object:  # "net": one network, "two": two Teachers
        if value == "net":
            return TinyNet()
        return [Teacher(TinyNet()), Teacher(TinyNet())] if value == "two" else value

    resolved = {key: resolve(value) for key, value in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        KDModule(TinyNet(), **resolved)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Teacher weight must be a finite number >= 0, got -1"):
        Teacher(TinyNet(), weight=-1.0)


def test_one_teacher_methods_refuse_an_ensemble() -> None:
    module = KDModule(TinyNet(), teachers=[Teacher(TinyNet()), Teacher(TinyNet())])
    assert isinstance(module.teacher, TeacherEnsemble)
    with pytest.raises(ValueError, match=r"uses one teacher.s logits .* given 2 teachers"):
        module.teacher_logits(torch.zeros(2, 3, 8, 8))
    outputs = module.teacher_outputs(torch.zeros(2, 3, 8, 8))
    assert [tuple(o.shape) for o in outputs] == [(2, 4), (2, 4)]


def test_teachers_of_another_class_count_are_named() -> None:
    teachers = [Teacher(TinyNet()), Teacher(TinyNet(num_classes=5))]
    module = KDModule(TinyNet(), teachers=teachers)
    with pytest.raises(ValueError, match=r"teacher 1 gives logits of shape \(8, 5\), teacher 0"):
        module.compute_losses(_batch())


# ---------------------------------------------------------------------- checkpoints
def _teacher_files(tmp_path: Path) -> list[Path]:
    paths = []
    for k, network in enumerate((_net(1), _net(2, width=6))):
        path = tmp_path / f"teacher{k}.pt"
        torch.save(network.state_dict(), path)
        paths.append(path)
    return paths


def _from_files(paths: list[Path]) -> KDModule:
    """Teachers of widths 4 and 6 from ``paths``, weights 1 and 2, their weights not saved."""
    teachers = [
        Teacher(TinyNet(width=width), checkpoint=str(path), weight=float(k + 1))
        for k, (path, width) in enumerate(zip(paths, (4, 6), strict=True))
    ]
    return KDModule(_net(0), teachers=teachers, save_teacher_weights=False)


def test_checkpoint_without_teacher_weights_and_resume(tmp_path: Path) -> None:
    paths = _teacher_files(tmp_path)
    module = _from_files(paths)
    for k, path in enumerate(paths):  # each loaded from its own file
        saved = torch.load(path, weights_only=True)
        assert torch.equal(
            module.teacher.state_dict()[f"{k}.network.fc.weight"], saved["fc.weight"]
        )
    t = trainer(max_steps=2, limit_val_batches=1)
    t.fit(module, datamodule=TinyData())
    ckpt = tmp_path / "kd.ckpt"
    t.save_checkpoint(ckpt)

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not [k for k in saved["state_dict"] if k.startswith("teacher.")]
    record = saved["lightning_kd"]["teacher"]
    assert record["weights_saved"] is False and record["path"] is None
    assert [m["path"] for m in record["teachers"]] == [str(p.resolve()) for p in paths]
    assert all(len(m["sha256"]) == 64 for m in record["teachers"])
    assert [m["weight"] for m in record["teachers"]] == pytest.approx([1 / 3, 2 / 3])

    # Saved, member k's weights are the keys teacher.<k>.network.*; here all were left out.
    assert "teacher.1.network.fc.weight" in module.state_dict()

    resumed = _from_files(paths)
    trainer(max_steps=4, limit_val_batches=1).fit(resumed, datamodule=TinyData(), ckpt_path=ckpt)
    assert resumed.trainer.global_step == 4
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(resumed.teacher.state_dict()[key], value), key


def test_changed_or_missing_teacher_file_is_refused_on_resume(tmp_path: Path) -> None:
    paths = _teacher_files(tmp_path)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(_from_files(paths), datamodule=TinyData())
    ckpt = tmp_path / "kd.ckpt"
    t.save_checkpoint(ckpt)

    changed = {k: v + 1 if v.is_floating_point() else v for k, v in torch.load(paths[1]).items()}
    torch.save(changed, paths[1])  # e.g. teacher 1 was retrained in place
    with pytest.raises(
        ValueError,
        match=r"teacher 1: checkpoint .* has sha256 .* this checkpoint "
        r"was trained with the teacher .* no copy of its weights",
    ):
        trainer(max_steps=2).fit(_from_files(paths), datamodule=TinyData(), ckpt_path=ckpt)

    no_files = KDModule(_net(0), teachers=[Teacher(TinyNet()), Teacher(TinyNet(width=6))])
    with pytest.raises(ValueError, match=r"teacher 0: this checkpoint has no teacher weights"):
        trainer(max_steps=2).fit(no_files, datamodule=TinyData(), ckpt_path=ckpt)

    one = KDModule(_net(0), TinyNet(), teacher_checkpoint=str(paths[0]))
    with pytest.raises(
        ValueError,
        match=r"trained with an ensemble of 2 teachers \(teachers=.*\), "
        r"but this module has one teacher",
    ):
        trainer(max_steps=2).fit(one, datamodule=TinyData(), ckpt_path=ckpt)
    three = KDModule(_net(0), teachers=[Teacher(TinyNet(), checkpoint=str(paths[0]))] * 3)
    with pytest.raises(ValueError, match=r"ensemble of 2 teachers .* has an ensemble of 3"):
        trainer(max_steps=2).fit(three, datamodule=TinyData(), ckpt_path=ckpt)


# ---------------------------------------------------------------------- the command line
TEACHER = """
seed_everything: {seed}
model:
  class_path: lightning_kd.modules.ClassifierModule
  init_args:
    model:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: {width}}}
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args: {{data_dir: {data_dir}, batch_size: 16}}
trainer:
  max_epochs: 1
  limit_train_batches: 3
  accelerator: cpu
  devices: 1
  enable_model_summary: false
  logger: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: checkpoints/{name}, save_last: true}}
"""

KD_TWO_TEACHERS = """
seed_everything: 0
model:
  class_path: lightning_kd.modules.KDModule
  init_args:
    student:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 4}}
    teachers:
      - class_path: lightning_kd.modules.teachers.Teacher
        init_args:
          network: {{class_path: lightning_kd.models.SmallCNN, init_args: {{width: 8}}}}
          checkpoint: {checkpoint_a}
          weight: 2.0
      - class_path: lightning_kd.modules.teachers.Teacher
        init_args:
          network: {{class_path: lightning_kd.models.SmallCNN, init_args: {{width: 6}}}}
          checkpoint: {checkpoint_b}
    ensemble: probabilities
    save_teacher_weights: false
data:
  class_path: {datamodule}
  init_args: {{data_dir: {data_dir}, batch_size: 16}}
trainer:
  max_epochs: 1
  limit_train_batches: 3
  accelerator: cpu
  devices: 1
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: runs, name: kd2}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: checkpoints/kd2, save_last: true}}
"""


def _last_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("lightning-kd: error: "), lines[-1:]
    return lines[-1]


def test_cli_two_teachers_end_to_end(
    tmp_path: Path,
    cifar10_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project, out = tmp_path / "project", tmp_path / "out"
    project.mkdir()
    monkeypatch.chdir(project)
    for name, width, seed in (("teacher_a", 8, 0), ("teacher_b", 6, 1)):
        Path(f"{name}.yaml").write_text(
            TEACHER.format(seed=seed, width=width, data_dir=cifar10_dir, name=name)
        )
        main(["fit", "--config", f"{name}.yaml", "--trainer.default_root_dir", str(out)])
    Path("kd2.yaml").write_text(
        KD_TWO_TEACHERS.format(
            checkpoint_a="checkpoints/teacher_a/last.ckpt",
            checkpoint_b="checkpoints/teacher_b/last.ckpt",
            datamodule="lightning_kd.data.CIFAR10DataModule",
            data_dir=cifar10_dir,
        )
    )
    # Relative teacher paths are taken relative to default_root_dir, as teacher_checkpoint's.
    main(["fit", "--config", "kd2.yaml", "--trainer.default_root_dir", str(out)])
    teachers = [out / "checkpoints/teacher_a/last.ckpt", out / "checkpoints/teacher_b/last.ckpt"]
    kd = out / "checkpoints/kd2/last.ckpt"
    saved = torch.load(kd, map_location="cpu", weights_only=True)
    assert not [k for k in saved["state_dict"] if k.startswith("teacher.")]
    members = saved["lightning_kd"]["teacher"]["teachers"]
    assert [m["path"] for m in members] == [str(p.resolve()) for p in teachers]
    assert [m["weight"] for m in members] == pytest.approx([2 / 3, 1 / 3])
    # The linked class count reached both teachers and is saved, so the checkpoint rebuilds.
    hparams = saved["hyper_parameters"]["teachers"]
    assert [h["init_args"]["network"]["init_args"]["num_classes"] for h in hparams] == [10, 10]
    run = out / "runs/kd2/version_0"
    record = yaml.safe_load((run / "hparams.yaml").read_text())
    assert record["model.teachers.1.network.width"] == 6
    assert record["model.ensemble"] == "probabilities"
    assert len(record["teacher0_sha256"]) == 64 and len(record["teacher1_sha256"]) == 64
    (events,) = glob.glob(str(run / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for name in ("teacher0_acc", "teacher1_acc", "teacher0_agreement", "teacher_agreement"):
        assert f"val/{name}" in tags and f"train/{name}_epoch" in tags, name

    # A checkpoint of another module names the ensemble the config builds.
    root = ["--trainer.default_root_dir", str(out)]
    with pytest.raises(SystemExit):
        main(["test", "--config", "kd2.yaml", "--ckpt_path", str(teachers[0]), *root])
    line = _last_error_line(capsys)
    wanted = "teachers=[SmallCNN(width=8), SmallCNN(width=6)]"
    assert f"config builds a KDModule (student=SmallCNN(width=4), {wanted})" in line

    # From another directory the relative paths do not exist: the recorded ones are used.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = str(project / "kd2.yaml")
    cli = build_cli(["test", "--config", config, "--ckpt_path", str(kd)])
    assert [s["path"] for s in cli.model.teacher_sources] == [str(p.resolve()) for p in teachers]
    assert 0.0 <= float(cli.trainer.callback_metrics["test/teacher1_acc"]) <= 1.0

    # A teacher file changed in place is refused, naming the teacher.
    state = torch.load(teachers[1], map_location="cpu", weights_only=True)
    state["state_dict"] = {
        k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()
    }
    torch.save(state, teachers[1])
    with pytest.raises(SystemExit):
        main(["test", "--config", config, "--ckpt_path", str(kd)])
    line = _last_error_line(capsys)
    assert (
        "teacher 1: checkpoint" in line and "this checkpoint was trained with the teacher" in line
    )


def test_cli_links_the_class_count_into_every_teacher(
    tmp_path: Path, cifar100_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = KD_TWO_TEACHERS.format(
        checkpoint_a="null",
        checkpoint_b="null",
        datamodule="lightning_kd.data.CIFAR100DataModule",
        data_dir=cifar100_dir,
    ).replace("save_teacher_weights: false", "save_teacher_weights: true")
    Path("kd2.yaml").write_text(text)
    cli = build_cli(["--config", "kd2.yaml"], run=False)
    ensemble = cli.model.teacher
    assert isinstance(ensemble, TeacherEnsemble)
    assert [t.network.fc.out_features for t in ensemble.members] == [100, 100]
    assert cli.model.student.fc.out_features == 100


# ---------------------------------------------------------------------- DDP
def test_two_teachers_on_two_processes(tmp_path: Path) -> None:
    ranks = _run_ddp_script("multi_teacher_ddp_script.py", tmp_path)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4
    for key, value in ranks[0]["student"].items():
        if "running" not in key:
            assert torch.equal(value, ranks[1]["student"][key]), key
    for rank in ranks:  # every teacher untouched, on every rank
        for now, initial in zip(rank["teachers"], rank["teachers_initial"], strict=True):
            for key, value in initial.items():
                assert torch.equal(now[key], value), key
    for key, value in ranks[0]["teachers"][1].items():
        assert torch.equal(ranks[1]["teachers"][1][key], value), key
    # Each rank saw other images; the evaluation metric is reduced over both.
    seen0, seen1 = set(ranks[0]["seen"].tolist()), set(ranks[1]["seen"].tolist())
    assert len(seen0) == len(seen1) == 16 and not seen0 & seen1
    assert ranks[0]["val_teacher0_acc"] == ranks[1]["val_teacher0_acc"]
