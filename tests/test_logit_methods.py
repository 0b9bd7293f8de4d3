"""Logit standardisation (KD + LS, DKD + LS), DIST and CTKD: hand-worked values, the gradients
the formulas predict, one bf16-mixed training step of each through its module, and CTKD's
learnable temperature under 2-process DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import RecordingLogger, TinyData, TinyNet, trainer
from torch import Tensor

from lightning_kd.losses import kd_loss
from lightning_kd.losses.ctkd import (
    GlobalTemperature,
    ctkd_kd_loss,
    ctkd_lambda,
    gradient_reversal,
)
from lightning_kd.losses.dist import dist_loss, dist_parts, pearson_correlation
from lightning_kd.modules import FeatureKDModule, KDModule
from lightning_kd.modules.terms import CTKDTerm, DistillationTerm, DISTTerm, DKDTerm, TermInputs

HERE = Path(__file__).parent


def _inputs(student: Tensor, teacher: Tensor, targets: Tensor, epoch: int = 0) -> TermInputs:
    return TermInputs(
        student_features={},
        teacher_features={},
        student_logits=student,
        teacher_logits=teacher,
        targets=targets,
        indices=None,
        epoch=epoch,
    )


def _kd_module(**kwargs: object) -> KDModule:
    torch.manual_seed(0)
    return KDModule(TinyNet(), TinyNet(width=8), **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- KD + LS
# Student row [0, 5, 10]: mean 5, unbiased std 5, z-scored [-1, 0, 1].
# Teacher row [3, 2, 1]: mean 2, unbiased std 1, z-scored [1, 0, -1].
# At T = 2: p_s = softmax([-0.5, 0, 0.5]) = [0.186324, 0.307196, 0.506480], p_t = reversed.
# Both rows share the log-sum-exp, so log p_t - log p_s = (z_t - z_s) / T = [1, 0, -1]:
#   KL(p_t || p_s) = 0.506480 * 1 + 0.186324 * (-1) = 0.320157;  T^2 * KL = 1.280627.
LS_STUDENT = [[0.0, 5.0, 10.0]]
LS_TEACHER = [[3.0, 2.0, 1.0]]
LS_KD_T2 = 1.280627


def test_kd_ls_hand_value_ignores_the_logit_scale() -> None:
    module = _kd_module(temperature=2.0, ce_weight=0.1, kd_weight=9.0, logit_standardization=True)
    targets = torch.tensor([2])
    out = module.logit_losses(torch.tensor(LS_STUDENT), torch.tensor(LS_TEACHER), targets)
    assert out["loss_kd"].item() == pytest.approx(LS_KD_T2, abs=1e-5)
    # CE stays on the raw logits: -log softmax([0, 5, 10])[2].
    ce = math.log(1 + math.exp(-5) + math.exp(-10))
    assert out["loss_ce"].item() == pytest.approx(ce, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.1 * ce + 9.0 * LS_KD_T2, abs=1e-4)
    # The same logits without the switch are far apart (KD on the raw scale).
    plain = _kd_module(temperature=2.0, ce_weight=0.1, kd_weight=9.0)
    raw = plain.logit_losses(torch.tensor(LS_STUDENT), torch.tensor(LS_TEACHER), targets)
    assert raw["loss_kd"].item() > 5.0


def test_kd_ls_is_zero_for_a_rescaled_and_shifted_teacher() -> None:
    module = _kd_module(temperature=2.0, logit_standardization=True)
    student = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 0.2, -0.1, 0.4]])
    teacher = 7.0 * student + torch.tensor([[3.0], [-20.0]])  # per-row scale > 0 and shift
    out = module.logit_losses(student, teacher, torch.tensor([0, 1]))
    assert out["loss_kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(student, teacher, temperature=2.0).item() > 1.0


def test_kd_ls_gradient_flows_through_the_standardisation() -> None:
    # Not detached: the student gets a gradient. The loss does not change under z -> a z + b
    # (a > 0) of a row, so per row the gradient sums to 0 and is orthogonal to z.
    module = _kd_module(temperature=2.0, logit_standardization=True)
    student = torch.tensor([[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.5, 0.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.0, 3.0, 1.0, -2.0]])
    module.logit_losses(student, teacher, torch.tensor([0, 1]))["loss_kd"].backward()
    grad = student.grad
    assert grad is not None and grad.abs().max() > 1e-2
    assert torch.allclose(grad.sum(dim=1), torch.zeros(2), atol=1e-6)
    assert torch.allclose((grad * student.detach()).sum(dim=1), torch.zeros(2), atol=1e-6)


# ----------------------------------------------------------------------------- DKD + LS
def test_dkd_ls_standardises_both_logits_before_dkd() -> None:
    # The LS term on the raw rows equals the plain term on the rows z-scored by hand.
    raw = _inputs(torch.tensor(LS_STUDENT), torch.tensor(LS_TEACHER), torch.tensor([1]))
    by_hand = _inputs(
        torch.tensor([[-1.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, -1.0]]), raw.targets
    )
    ls = DKDTerm(alpha=9.0, beta=72.0, temperature=2.0, logit_standardization=True)
    plain = DKDTerm(alpha=9.0, beta=72.0, temperature=2.0)
    assert ls(raw).item() == pytest.approx(plain(by_hand).item(), rel=1e-5)
    assert plain(raw).item() != pytest.approx(ls(raw).item(), rel=0.1)
    # A positively rescaled, shifted teacher gives exactly the student's distribution.
    student = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 3.0]])
    teacher = 4.0 * student - 1.0
    assert ls(_inputs(student, teacher, torch.tensor([2, 0]))).item() == pytest.approx(
        0.0, abs=1e-5
    )


# ----------------------------------------------------------------------------- DIST
# Hand example, B = 2, C = 3, tau = 1, logits = log(p) so softmax(z) = p:
#   student rows [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]; teacher rows reversed.
# Inter-class (per row): centred s = [1/6, -1/30, -2/15], t = [-2/15, -1/30, 1/6];
#   s . t = -39/900, |s|^2 = |t|^2 = 42/900, r = -13/14 for both rows -> inter = 27/14.
# Intra-class (per column over the batch): column 0 is [0.5, 0.2] vs [0.2, 0.5] (r = -1),
#   column 1 is constant [0.3, 0.3] for both (centred 0, r = 0 / 1e-8 = 0), column 2: r = -1;
#   mean r = -2/3 -> intra = 5/3.
DIST_STUDENT_P = [[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]
DIST_TEACHER_P = [[0.2, 0.3, 0.5], [0.5, 0.3, 0.2]]
DIST_INTER = 27 / 14
DIST_INTRA = 5 / 3


def test_dist_hand_worked_2x3() -> None:
    student, teacher = torch.tensor(DIST_STUDENT_P).log(), torch.tensor(DIST_TEACHER_P).log()
    inter, intra = dist_parts(student, teacher, temperature=1.0)
    assert inter.item() == pytest.approx(DIST_INTER, abs=1e-5)
    assert intra.item() == pytest.approx(DIST_INTRA, abs=1e-5)
    total = dist_loss(student, teacher, beta=2.0, gamma=0.5, temperature=1.0)
    assert total.item() == pytest.approx(2.0 * DIST_INTER + 0.5 * DIST_INTRA, abs=1e-5)


def test_dist_includes_tau_squared() -> None:
    # Logits tau * log(p) soften to the same p at tau = 2: both terms are 4 times the above.
    student, teacher = torch.tensor(DIST_STUDENT_P).log(), torch.tensor(DIST_TEACHER_P).log()
    inter, intra = dist_parts(2.0 * student, 2.0 * teacher, temperature=2.0)
    assert inter.item() == pytest.approx(4 * DIST_INTER, abs=1e-4)
    assert intra.item() == pytest.approx(4 * DIST_INTRA, abs=1e-4)


def test_dist_2x2_by_hand() -> None:
    # C = 2: a centred row is (d, -d), so r = +1 when student and teacher favour the same
    # class and -1 otherwise: rows agree, disagree -> inter = 1 - 0 = 1. The teacher's
    # columns are constant over the batch (centred 0), so both r are 0 -> intra = 1.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    inter, intra = dist_parts(student, teacher, temperature=1.0)
    assert inter.item() == pytest.approx(1.0, abs=1e-6)
    assert intra.item() == pytest.approx(1.0, abs=1e-6)


def test_dist_identical_logits_give_zero_and_a_zero_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 5, generator=gen) * 3
    student = teacher.clone().requires_grad_(True)
    inter, intra = dist_parts(student, teacher, temperature=4.0)
    assert inter.item() == pytest.approx(0.0, abs=1e-4)
    assert intra.item() == pytest.approx(0.0, abs=1e-4)
    # Correlation 1 is the maximum: the gradient vanishes there (up to the 1e-8).
    (inter + intra).backward()
    assert student.grad is not None and student.grad.abs().max() < 1e-4
    # ... and not elsewhere.
    other = (teacher + torch.randn(6, 5, generator=gen)).requires_grad_(True)
    dist_loss(other, teacher, temperature=4.0).backward()
    assert other.grad is not None and other.grad.abs().max() > 1e-3


def test_dist_one_sample_intra_is_tau_squared() -> None:
    # B = 1: every column is a single number, centred 0, so every intra r is 0.
    student, teacher = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[1.0, 2.0, 0.0]])
    _, intra = dist_parts(student, teacher, temperature=4.0)
    assert intra.item() == pytest.approx(16.0, abs=1e-6)


def test_pearson_correlation_closed_forms() -> None:
    a = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, 3.0]])
    assert torch.allclose(pearson_correlation(a, 3.0 * a + 1.0), torch.ones(2), atol=1e-6)
    assert torch.allclose(pearson_correlation(a, -a), -torch.ones(2), atol=1e-6)
    assert pearson_correlation(a, torch.ones(2, 3)).tolist() == [0.0, 0.0]


def test_dist_float32_under_autocast_and_errors() -> None:
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dist_loss(student.bfloat16(), teacher.bfloat16(), temperature=4.0)
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0, got -1\.0"):
        dist_loss(student, teacher, beta=-1.0)
    with pytest.raises(ValueError, match="class counts differ"):
        dist_loss(student, teacher[:, :3])
    with pytest.raises(ValueError, match=r"same shape, got \(4, 5\) and \(4, 3\)"):
        pearson_correlation(student, teacher[:, :3])


# ----------------------------------------------------------------------------- CTKD
def test_ctkd_curriculum_values() -> None:
    # (cos(pi * min(e, 10) / 10) + 1) / 2 - 1
    assert ctkd_lambda(0) == 0.0
    assert ctkd_lambda(1) == pytest.approx(-0.0244717, abs=1e-7)
    assert ctkd_lambda(5) == pytest.approx(-0.5, abs=1e-12)
    assert ctkd_lambda(10) == -1.0
    assert ctkd_lambda(20) == -1.0
    assert ctkd_lambda(-3) == 0.0
    # The term counts Lightning's 0-based epochs from 1, as the authors' loop does.
    term = CTKDTerm()
    assert term.lambda_at(0) == ctkd_lambda(1)
    assert term.lambda_at(4) == pytest.approx(-0.5, abs=1e-12)


@pytest.mark.parametrize("lambda_", [-1.0, -0.5, 0.0, 1.0])
def test_gradient_reversal_scales_the_gradient_by_lambda(lambda_: float) -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    w = torch.tensor([0.5, 4.0, -1.0])
    y = gradient_reversal(x, lambda_)
    assert torch.equal(y, x.detach())
    (y * w).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, lambda_ * w)


def test_gradient_reversal_refuses_a_non_finite_weight() -> None:
    with pytest.raises(ValueError, match="lambda_ must be a finite number, got nan"):
        gradient_reversal(torch.ones(1), float("nan"))


def test_global_temperature_parameterisation() -> None:
    # T = 1 + 20 * sigmoid(g), g initialised to 1 (the authors' torch.ones(1)).
    assert GlobalTemperature()(0.0).item() == pytest.approx(15.621172, abs=1e-5)
    assert GlobalTemperature(init=0.0)(0.0).item() == pytest.approx(11.0, abs=1e-6)
    assert (
        GlobalTemperature(min_temperature=2.0, temperature_range=4.0, init=0.0)(0.0).item() == 4.0
    )
    with pytest.raises(ValueError, match="temperature_range must be a finite number > 0, got 0"):
        GlobalTemperature(temperature_range=0.0)


def test_ctkd_kd_loss_matches_kd_loss_at_the_same_temperature() -> None:
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(3, 4, generator=gen, requires_grad=True)
    teacher = torch.randn(3, 4, generator=gen)
    loss = ctkd_kd_loss(student, teacher, torch.tensor(3.0))
    assert loss.item() == pytest.approx(kd_loss(student, teacher, temperature=3.0).item(), rel=1e-6)
    loss.backward()
    # d/dz_s of T^2 KL is T (p_s - p_t) / B.
    expected = 3.0 * (torch.softmax(student / 3.0, 1) - torch.softmax(teacher / 3.0, 1)) / 3
    assert student.grad is not None and torch.allclose(student.grad, expected.detach(), atol=1e-6)
    with pytest.raises(ValueError, match=r"one element, got shape \(2,\)"):
        ctkd_kd_loss(student, teacher, torch.tensor([1.0, 2.0]))


def test_ctkd_temperature_gets_the_reversed_kd_gradient() -> None:
    # At Lightning epoch 4 the reversal weight is lambda(5) = -0.5. The gradient reaching g is
    # lambda * dKD/dT * dT/dg, with dT/dg = 20 sigmoid(g) (1 - sigmoid(g)) and dKD/dT taken by
    # central finite differences of the plain kd_loss (float temperature, no autograd).
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(4, 5, generator=gen) * 3
    teacher = torch.randn(4, 5, generator=gen) * 3
    term = CTKDTerm(init=0.3)
    loss = term(_inputs(student.clone().requires_grad_(True), teacher, torch.zeros(4).long(), 4))
    loss.backward()
    sig = 1 / (1 + math.exp(-0.3))
    t = 1 + 20 * sig
    h = 1e-2
    dkd_dt = (
        kd_loss(student, teacher, temperature=t + h).item()
        - kd_loss(student, teacher, temperature=t - h).item()
    ) / (2 * h)
    g_grad = term.temperature.g.grad
    assert g_grad is not None
    assert abs(dkd_dt) > 1e-3  # a case where the temperature matters
    assert g_grad.item() == pytest.approx(-0.5 * dkd_dt * 20 * sig * (1 - sig), rel=2e-3)
    # Logged values: the temperature the batch used and the weight.
    logged = term.logged_values(_inputs(student, teacher, torch.zeros(4).long(), 4))
    assert logged["ctkd_temperature"].item() == pytest.approx(t, abs=1e-5)
    assert logged["ctkd_lambda"].item() == pytest.approx(-0.5)


def test_ctkd_student_gradient_is_not_reversed() -> None:
    gen = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 3, generator=gen)
    student = torch.randn(2, 3, generator=gen, requires_grad=True)
    term = CTKDTerm(init=0.0)  # T = 11
    term(_inputs(student, teacher, torch.zeros(2).long(), 20)).backward()
    expected = 11.0 * (torch.softmax(student / 11.0, 1) - torch.softmax(teacher / 11.0, 1)) / 2
    assert student.grad is not None and torch.allclose(student.grad, expected.detach(), atol=1e-6)


def test_ctkd_temperature_is_registered_on_the_module() -> None:
    torch.manual_seed(0)
    module = FeatureKDModule(
        TinyNet(), TinyNet(width=8), terms=[CTKDTerm()], ce_weight=0.1, input_size=(3, 8, 8)
    )
    assert "terms.0.temperature.g" in module.state_dict()
    term = module.distillation_terms[0]
    assert isinstance(term, CTKDTerm)
    g = term.temperature.g
    assert any(p is g for p in module.trainable_parameters())


# ----------------------------------------------------------------------------- one step each
def _module(method: str) -> KDModule:
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet(width=8)
    if method == "kd_ls":
        return KDModule(
            student,
            teacher,
            temperature=2.0,
            ce_weight=0.1,
            kd_weight=9.0,
            logit_standardization=True,
        )
    term: DistillationTerm = {
        "dkd_ls": DKDTerm(alpha=9.0, beta=72.0, temperature=2.0, logit_standardization=True),
        "dist": DISTTerm(temperature=4.0, weight=2.0),
        "ctkd": CTKDTerm(weight=0.9),
    }[method]
    ce = {"dkd_ls": 1.0, "dist": 1.0, "ctkd": 0.1}[method]
    return FeatureKDModule(student, teacher, terms=[term], ce_weight=ce, input_size=(3, 8, 8))


@pytest.mark.parametrize("method", ["kd_ls", "dkd_ls", "dist", "ctkd"])
def test_one_bf16_mixed_training_step(method: str) -> None:
    module = _module(method)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    logger = RecordingLogger()
    t = trainer(
        max_steps=1,
        precision="bf16-mixed",
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
    )
    t.fit(module, datamodule=TinyData(n=8, batch_size=8))
    assert t.global_step == 1
    name = {"kd_ls": "kd", "dkd_ls": "dkd", "dist": "dist", "ctkd": "ctkd"}[method]
    value = logger.last(f"train/loss_{name}_step")
    assert math.isfinite(value) and value > 0
    after = module.state_dict()
    assert not torch.equal(after["student.fc.weight"], before["student.fc.weight"])
    for key in (k for k in before if k.startswith("teacher.")):
        assert torch.equal(after[key], before[key]), key
    if method == "ctkd":
        # The step was taken at the initial temperature, and the temperature moved.
        assert logger.last("train/ctkd_temperature_step") == pytest.approx(15.621172, abs=1e-4)
        assert logger.last("train/ctkd_lambda_step") == pytest.approx(ctkd_lambda(1))
        assert not torch.equal(after["terms.0.temperature.g"], before["terms.0.temperature.g"])


# ----------------------------------------------------------------------------- DDP
def test_ctkd_temperature_identical_across_two_ddp_processes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "logit_methods_ddp_script.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4
    g0, g1 = ranks[0]["terms"]["0.temperature.g"], ranks[1]["terms"]["0.temperature.g"]
    assert torch.equal(g0, g1)
    assert not torch.equal(g0, ranks[0]["g_initial"])  # it was trained
    # Both ranks trained every step at the same temperature, though on different images.
    assert torch.equal(ranks[0]["temperatures"], ranks[1]["temperatures"])
    assert len(set(ranks[0]["temperatures"].tolist())) == 4
    assert not set(ranks[0]["seen"].tolist()) & set(ranks[1]["seen"].tolist())
    for key, value in ranks[0]["student"].items():
        if "running" not in key:
            assert torch.equal(value, ranks[1]["student"][key]), key
