"""MLKD (multi-level logit distillation): loss values by hand, masks, both variants, module.

Most hand values use temperature 1 and logits whose softmax is exact: a row ``[ln 2, 0, 0]``
gives ``p = [1/2, 1/4, 1/4]``, a zero row the uniform ``[1/3, 1/3, 1/3]``.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import ConstantNet, TinyNet, trainer
from torch import Tensor

from lightning_kd.data import CIFAR100DataModule, StrongAugment
from lightning_kd.losses.mlkd import (
    MLKD_TEMPERATURES,
    batch_correlation_loss,
    class_correlation_loss,
    confidence_masks,
    instance_kd_loss,
    mlkd_loss,
    mlkd_parts,
)
from lightning_kd.modules.mlkd import MLKDModule

HERE = Path(__file__).parent
LN2 = math.log(2.0)
#: KL([1/2, 1/4, 1/4] || uniform) = 1/2 ln(3/2) + 2 * 1/4 ln(3/4) = 1/2 ln(9/8).
KL_HALF = 0.5 * math.log(9 / 8)

#: Student: uniform rows. Teacher: [1/2, 1/4, 1/4] and [1/4, 1/2, 1/4].
STUDENT = torch.zeros(2, 3)
TEACHER = torch.tensor([[LN2, 0.0, 0.0], [0.0, LN2, 0.0]])
#: Teacher with one confident row ([1/2, 1/4, 1/4], confidence 1/2) and one uniform row
#: (confidence 1/3): the median 5/12 keeps only the uniform row, where student = teacher.
TEACHER_ONE_CONFIDENT = torch.tensor([[LN2, 0.0, 0.0], [0.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- single terms
def test_batch_correlation_by_hand() -> None:
    # G_t = P_t P_t^T: diagonal 1/4 + 1/16 + 1/16 = 3/8, off-diagonal 1/8 + 1/8 + 1/16 = 5/16.
    # G_s: every entry 3 * 1/9 = 1/3. Differences 1/24 (twice) and -1/48 (twice):
    # sum of squares 2/576 + 2/2304 = 5/1152, divided by B = 2 -> 5/2304.
    loss = batch_correlation_loss(STUDENT, TEACHER, temperature=1.0)
    assert loss.item() == pytest.approx(5 / 2304, rel=1e-5)


def test_class_correlation_by_hand() -> None:
    # M_t = P_t^T P_t (3 x 3): [[5/16, 1/4, 3/16], [1/4, 5/16, 3/16], [3/16, 3/16, 1/8]];
    # M_s: every entry 2 * 1/9 = 2/9. Differences in units of 1/144: 13, 13, -14 on the
    # diagonal, 4, -5, -5 off it (twice each): sum of squares 666 / 144^2, divided by C = 3
    # -> 666 / 62208 = 37 / 3456.
    loss = class_correlation_loss(STUDENT, TEACHER, temperature=1.0)
    assert loss.item() == pytest.approx(37 / 3456, rel=1e-5)


def test_correlation_terms_soften_without_a_temperature_factor() -> None:
    # Doubled logits at T = 2 are the same probabilities as above at T = 1, and no T^2 scales
    # the Gram terms: the same hand values.
    assert batch_correlation_loss(STUDENT, 2 * TEACHER, temperature=2.0).item() == pytest.approx(
        5 / 2304, rel=1e-5
    )
    assert class_correlation_loss(STUDENT, 2 * TEACHER, temperature=2.0).item() == pytest.approx(
        37 / 3456, rel=1e-5
    )


def test_correlation_masks_weight_columns() -> None:
    # Batch: G_t = [[3/8, 1/3], [1/3, 1/3]] against 1/3 everywhere: the only difference is
    # 1/24 at (0, 0). Column 0 kept: (1/576) / B = 1/1152; column 1 kept: 0.
    s, t = STUDENT, TEACHER_ONE_CONFIDENT
    batch = batch_correlation_loss
    assert batch(s, t, temperature=1.0, mask=torch.tensor([True, False])).item() == pytest.approx(
        1 / 1152, rel=1e-5
    )
    assert batch(s, t, temperature=1.0, mask=torch.tensor([0.0, 1.0])).item() == pytest.approx(
        0.0, abs=1e-12
    )
    # Class: M_t[i, j] = p_i p_j + 1/9 with p = [1/2, 1/4, 1/4], M_s = 2/9, so the differences
    # are p_i p_j - 1/9: column 0 (5/36, 1/72, 1/72), columns 1 and 2 (1/72, -7/144, -7/144).
    # Column sums of squares: 102/5184 and 102/20736 (twice); total 612/20736.
    full = class_correlation_loss(s, t, temperature=1.0)
    assert full.item() == pytest.approx(612 / 20736 / 3, rel=1e-5)  # 17/1728
    kept = class_correlation_loss(s, t, temperature=1.0, mask=torch.tensor([False, True, True]))
    assert kept.item() == pytest.approx(204 / 20736 / 3, rel=1e-5)  # 17/5184


def test_instance_kd_by_hand_with_a_mask() -> None:
    # Teacher [2 ln 2, 0, 0] at T = 2 is [1/2, 1/4, 1/4]; KL to uniform 1/2 ln(9/8), times
    # T^2 = 4 -> 2 ln(9/8) per row. Unmasked: the mean of two equal rows; row 1 masked out:
    # (2 ln(9/8) + 0) / 2 = ln(9/8): the mean stays over all B rows.
    teacher = torch.tensor([[2 * LN2, 0.0, 0.0], [2 * LN2, 0.0, 0.0]])
    full = instance_kd_loss(STUDENT, teacher, temperature=2.0)
    masked = instance_kd_loss(STUDENT, teacher, temperature=2.0, mask=torch.tensor([True, False]))
    assert full.item() == pytest.approx(2 * math.log(9 / 8), rel=1e-5)
    assert masked.item() == pytest.approx(math.log(9 / 8), rel=1e-5)


def test_instance_kd_gradient_is_masked_temperature_scaled_difference() -> None:
    # d loss / d z_s[b] = m_b * T * (p_s - p_t)[b] / B: row 0 (kept) 2 * ([1/3] * 3 -
    # [1/2, 1/4, 1/4]) / 2 = [-1/6, 1/12, 1/12]; row 1 (masked out) 0.
    student = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.tensor([[2 * LN2, 0.0, 0.0], [2 * LN2, 0.0, 0.0]])
    instance_kd_loss(student, teacher, temperature=2.0, mask=torch.tensor([1.0, 0.0])).backward()
    assert student.grad is not None
    expected = torch.tensor([[-1 / 6, 1 / 12, 1 / 12], [0.0, 0.0, 0.0]])
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_confidence_masks_by_hand() -> None:
    # Confidences (max probability) 1/2, 1/3 and 6/8 = 3/4; median 1/2 -> keep <= 1/2.
    # Class confidences (column sums): 1/2 + 1/3 + 3/4 = 19/12, and 1/4 + 1/3 + 1/8 = 17/24
    # twice; median 17/24 -> the two less confident classes.
    logits = torch.tensor([[LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [math.log(6.0), 0.0, 0.0]])
    samples, classes = confidence_masks(logits)
    assert samples.tolist() == [True, True, False]
    assert classes.tolist() == [False, True, True]
    # B = 2: the median is the midpoint 5/12, so only the less confident row is kept.
    samples, _ = confidence_masks(TEACHER_ONE_CONFIDENT)
    assert samples.tolist() == [False, True]
    # Ties at the threshold are kept: equal rows keep every sample.
    samples, _ = confidence_masks(torch.tensor([[LN2, 0.0, 0.0]] * 4))
    assert samples.tolist() == [True] * 4


# --------------------------------------------------------------------------- the two variants
def test_paper_filters_the_confident_sample_authors_only_scale() -> None:
    # Both views the same pair: student uniform, teacher TEACHER_ONE_CONFIDENT, five
    # temperatures 1. The sample mask keeps only row 1 (student = teacher there), the class
    # mask classes 1 and 2 (class confidences 5/6, 7/12, 7/12).
    # Paper, per temperature: instance 0 (weak, masked) + KL_HALF / 2 (strong, unmasked);
    # class 17/5184 (weak, masked) + 17/1728 (strong); batch 0 + 0 (both masked).
    # Authors, per temperature: instance (1/2) * KL_HALF / 2 (weak) + KL_HALF / 2 (strong);
    # class (2/3) * 17/1728 (weak only); batch (1/2) * 1/1152 (weak only).
    s, t = STUDENT, TEACHER_ONE_CONFIDENT
    temps = (1.0,) * 5
    paper = mlkd_parts(s, s, t, t, temperatures=temps, variant="paper")
    authors = mlkd_parts(s, s, t, t, temperatures=temps, variant="authors")
    assert paper.instance.item() == pytest.approx(5 * KL_HALF / 2, rel=1e-5)
    assert paper.class_correlation.item() == pytest.approx(5 * (17 / 5184 + 17 / 1728), rel=1e-5)
    assert paper.batch_correlation.item() == pytest.approx(0.0, abs=1e-9)
    assert authors.instance.item() == pytest.approx(5 * 1.5 * KL_HALF / 2, rel=1e-5)
    assert authors.class_correlation.item() == pytest.approx(5 * (2 / 3) * 17 / 1728, rel=1e-5)
    assert authors.batch_correlation.item() == pytest.approx(5 * 0.5 / 1152, rel=1e-5)


def test_authors_strong_terms_read_weak_logits_and_skip_correlations() -> None:
    # The strong pair agrees exactly (strong terms 0 in the paper), the weak pair as above.
    # Authors' instance: 5 * (1/2) * KL_HALF / 2 (weak, scaled) + 3 * 0 (strong at T_1..T_3)
    # + 2 * KL_HALF / 2 (their "strong" terms at T_4, T_5 on the weak logits) = 9/4 KL_HALF.
    s, t = STUDENT, TEACHER_ONE_CONFIDENT
    same = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, -0.5]])
    temps = (1.0,) * 5
    authors = mlkd_parts(s, same, t, same, temperatures=temps, variant="authors")
    paper = mlkd_parts(s, same, t, same, temperatures=temps, variant="paper")
    assert authors.instance.item() == pytest.approx(9 / 4 * KL_HALF, rel=1e-5)
    assert paper.instance.item() == pytest.approx(0.0, abs=1e-9)
    # Other strong logits: the authors' class and batch terms do not move (never added), the
    # paper's do.
    g = torch.Generator().manual_seed(0)
    other_s, other_t = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    authors2 = mlkd_parts(s, other_s, t, other_t, temperatures=temps, variant="authors")
    paper2 = mlkd_parts(s, other_s, t, other_t, temperatures=temps, variant="paper")
    assert authors2.class_correlation.item() == authors.class_correlation.item()
    assert authors2.batch_correlation.item() == authors.batch_correlation.item()
    assert paper2.class_correlation.item() != paper.class_correlation.item()
    assert paper2.batch_correlation.item() != paper.batch_correlation.item()


@pytest.mark.parametrize("variant", ["paper", "authors"])
@pytest.mark.parametrize("standardize", [False, True])
def test_identical_student_and_teacher_give_zero_for_every_term(
    variant: str, standardize: bool
) -> None:
    g = torch.Generator().manual_seed(1)
    weak, strong = 3 * torch.randn(8, 10, generator=g), 3 * torch.randn(8, 10, generator=g)
    parts = mlkd_parts(weak, strong, weak, strong, variant=variant, standardize=standardize)  # type: ignore[arg-type]
    assert [p.item() for p in parts] == [0.0, 0.0, 0.0]
    for t in MLKD_TEMPERATURES:
        assert instance_kd_loss(weak, weak, temperature=t, standardize=standardize).item() == 0.0
        assert class_correlation_loss(weak, weak, temperature=t).item() == 0.0
        assert batch_correlation_loss(weak, weak, temperature=t).item() == 0.0


def test_standardization_reaches_the_instance_terms_only() -> None:
    # A positive scale and a shift of the student's logits vanish under the z-score, so the
    # instance terms are 0 with standardize; the Gram terms use the raw logits either way.
    g = torch.Generator().manual_seed(2)
    teacher_weak, teacher_strong = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    student_weak, student_strong = 3 * teacher_weak + 1, 0.5 * teacher_strong - 2
    args = (student_weak, student_strong, teacher_weak, teacher_strong)
    raw = mlkd_parts(*args)
    standardized = mlkd_parts(*args, standardize=True)
    assert raw.instance.item() > 0.1
    assert standardized.instance.item() == pytest.approx(0.0, abs=1e-5)
    assert standardized.class_correlation.item() == raw.class_correlation.item()
    assert standardized.batch_correlation.item() == raw.batch_correlation.item()
    assert mlkd_loss(*args).item() == pytest.approx(raw.total().item(), rel=1e-6)


def test_float32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(4, 6, generator=g).bfloat16() for _ in range(4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = mlkd_parts(*logits, variant="authors", standardize=True)
        single = batch_correlation_loss(logits[0], logits[2], temperature=4.0)
    assert all(p.dtype == torch.float32 for p in parts)
    assert single.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperatures": ()}, "at least one temperature, got none"),
        ({"temperatures": (4.0, 0.0)}, r"finite number > 0, got \[4.0, 0.0\]"),
        ({"variant": "code"}, "variant must be 'paper' or 'authors', got 'code'"),
        ({"variant": "authors", "temperatures": (4.0, 2.0)}, r"exactly 5 temperatures, got"),
        ({"quantile": 1.5}, r"quantile must be in \[0, 1\], got 1.5"),
    ],
)
def test_mlkd_parts_refuses_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        mlkd_parts(x, x, x, x, **kwargs)  # type: ignore[arg-type]


def test_shape_errors_say_what_they_got() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"mask must be \(B,\) .* = \(2,\), got \(3,\)"):
        instance_kd_loss(x, x, temperature=1.0, mask=torch.ones(3))
    with pytest.raises(ValueError, match=r"mask must be \(C,\) .* = \(3,\), got \(2,\)"):
        class_correlation_loss(x, x, temperature=1.0, mask=torch.ones(2))
    with pytest.raises(ValueError, match=r"got teacher_strong of shape \(2, 4\)"):
        mlkd_parts(x, x, x, torch.zeros(2, 4))


# --------------------------------------------------------------------------- the module
def _snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_module_loss_by_hand_and_one_teacher_forward() -> None:
    # Constant networks: the student's logits are 0 (uniform), the teacher's [ln 2, 0, 0] for
    # every image of both views; temperature 1, paper variant, B = 2, C = 3.
    # CE: ln 3 per view -> loss_ce = 2 ln 3. Equal rows: every sample kept; class confidences
    # [1, 1/2, 1/2] keep classes 1 and 2.
    # instance: KL_HALF per view -> 2 KL_HALF = ln(9/8).
    # batch: G_t = 3/8 everywhere against 1/3: (4 / 576) / 2 = 1/288 per view -> 1/144.
    # class: differences 2 (p_i p_j - 1/9): strong (unmasked) 4 * 612/20736 / 3 = 17/432,
    # weak (classes 1, 2) 4 * 204/20736 / 3 = 17/1296 -> 17/324.
    module = MLKDModule(
        ConstantNet([0.0, 0.0, 0.0]),
        ConstantNet([LN2, 0.0, 0.0]),
        temperatures=(1.0,),
        ce_weight=0.1,
        kd_weight=0.9,
    )
    teacher_rows: list[int] = []
    student_rows: list[int] = []
    module.teacher.register_forward_hook(lambda m, i, o: teacher_rows.append(i[0].shape[0]))
    module.student.register_forward_hook(lambda m, i, o: student_rows.append(i[0].shape[0]))
    weak, strong = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    out = module.compute_losses([[weak, strong], torch.tensor([0, 1])])
    assert out["loss_ce"].item() == pytest.approx(2 * math.log(3), rel=1e-6)
    assert out["loss_instance"].item() == pytest.approx(math.log(9 / 8), rel=1e-5)
    assert out["loss_batch"].item() == pytest.approx(1 / 144, rel=1e-5)
    assert out["loss_class"].item() == pytest.approx(17 / 324, rel=1e-5)
    kd = math.log(9 / 8) + 1 / 144 + 17 / 324
    assert out["loss_kd"].item() == pytest.approx(kd, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.1 * 2 * math.log(3) + 0.9 * kd, rel=1e-5)
    # One teacher forward on both views together, one student forward per view.
    assert teacher_rows == [4]
    assert student_rows == [2, 2]


@pytest.mark.parametrize(
    "images",
    [torch.zeros(4, 3, 8, 8), [torch.zeros(4, 3, 8, 8)], [torch.zeros(4, 3, 8, 8)] * 3],
    ids=["tensor", "one-view", "three-views"],
)
def test_single_view_batches_are_refused(images: object) -> None:
    module = MLKDModule(TinyNet(), TinyNet())
    with pytest.raises(ValueError, match=r"MLKD needs a datamodule with transform=StrongAugment"):
        module.compute_losses([images, torch.zeros(4, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"got training batches whose images are (one|a list)"):
        module.compute_losses([images, torch.zeros(4, dtype=torch.long)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "authors", "temperatures": (4.0,)}, "exactly 5 temperatures"),
        ({"temperatures": (-1.0,)}, "finite number > 0"),
        ({"confidence_quantile": -0.1}, r"confidence_quantile must be in \[0, 1\], got -0.1"),
        ({"kd_weight": -1.0}, "kd_weight must be a finite number >= 0, got -1.0"),
    ],
)
def test_invalid_module_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MLKDModule(TinyNet(), TinyNet(), **kwargs)  # type: ignore[arg-type]


def test_hyperparameters_are_the_modules_own() -> None:
    module = MLKDModule(TinyNet(), TinyNet(), variant="authors", logit_standardization=True)
    assert module.hparams["temperatures"] == MLKD_TEMPERATURES
    assert module.hparams["variant"] == "authors"
    assert module.hparams["logit_standardization"] is True
    assert (module.hparams["ce_weight"], module.hparams["kd_weight"]) == (0.1, 0.9)
    assert "temperature" not in module.hparams and "alpha" not in module.hparams


@pytest.mark.parametrize(
    "kwargs", [{}, {"variant": "authors", "logit_standardization": True}], ids=["paper", "authors"]
)
def test_trains_on_strong_augment_views_in_bf16(
    kwargs: dict[str, object], cifar100_dir: Path
) -> None:
    torch.manual_seed(0)
    module = MLKDModule(TinyNet(num_classes=100), TinyNet(num_classes=100, width=8), **kwargs)  # type: ignore[arg-type]
    teacher_before, student_before = _snapshot(module.teacher), _snapshot(module.student)
    seen: list[Tensor] = []
    module.student.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    datamodule = CIFAR100DataModule(str(cifar100_dir), batch_size=8, transform=StrongAugment())
    t = trainer(max_steps=2, limit_val_batches=1, precision="bf16-mixed")
    t.fit(module, datamodule=datamodule)
    assert t.global_step == 2
    for name in ("loss", "loss_ce", "loss_kd", "loss_instance", "loss_class", "loss_batch"):
        value = t.logged_metrics[f"train/{name}_epoch"]
        assert torch.isfinite(value) and value.dtype == torch.float32, name
    # The student saw a weak and a different strong view of each batch (then validation).
    assert seen[0].shape == seen[1].shape == (8, 3, 32, 32)
    assert not torch.equal(seen[0], seen[1])
    # The frozen teacher: weights and BatchNorm statistics unchanged, no gradient.
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert module.teacher.bn.num_batches_tracked.item() == 0
    assert all(p.grad is None for p in module.teacher.parameters())
    assert not torch.equal(module.student.conv.weight, student_before["conv.weight"])
    assert module.student.bn.num_batches_tracked.item() == 4  # two views per step
    # Evaluation batches are single-view and go through KDModule's evaluation.
    (metrics,) = t.validate(module, datamodule=datamodule, verbose=False)
    assert 0.0 <= metrics["val/acc"] <= 1.0 and 0.0 <= metrics["val/teacher_acc"] <= 1.0


def test_ddp_two_processes_end_identical(cifar100_dir: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "mlkd_ddp_script.py"), str(tmp_path), str(cifar100_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 3
    # Student weights identical on both ranks (BatchNorm running statistics are per rank).
    for key, value in ranks[0]["student"].items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, ranks[1]["student"][key]), key
    for rank in ranks:
        for key, value in rank["teacher_initial"].items():
            assert torch.equal(rank["teacher"][key], value), key
    # Each rank trained on its own samples.
    seen0, seen1 = set(ranks[0]["seen"].tolist()), set(ranks[1]["seen"].tolist())
    assert len(seen0) == len(seen1) == 24
    assert not seen0 & seen1
