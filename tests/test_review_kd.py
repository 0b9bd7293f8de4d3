"""ReviewKD: the hierarchical context loss on hand-made maps, the ABF fusion, the term's
warm-up, its ABFs registered on the module, bf16 training and 2-process DDP."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from review_kd_ddp_script import TwoStageNet
from test_ddp import _run_ddp_script
from tiny import TinyData, trainer
from torch import Tensor, nn

from lightning_kd.losses.review import hcl_loss
from lightning_kd.models import VGG, CIFARResNet, MobileNetV2, ShuffleNetV1
from lightning_kd.modules import FeatureKDModule
from lightning_kd.modules.review_kd import ABF, ReviewKDTerm
from lightning_kd.modules.terms import Tap

# Maps with known pooled contents. ``S`` is a 2x2 checkerboard of +-1; repeated per pixel it
# averages to 0 over every 2x2 cell, blown up into k x k blocks it averages to 0 over every
# 2k x 2k cell. Sums of such checkerboards at different scales and a constant are orthogonal,
# so the mean square of a sum is the sum of the squared amplitudes, before and after pooling.
S = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])


def _checker(size: int, block: int) -> Tensor:
    """``(size, size)`` checkerboard of +-1 in ``block x block`` squares."""
    return torch.kron(S.repeat(size // (2 * block), size // (2 * block)), torch.ones(block, block))


# 8x8: amplitudes 1 (per pixel), 2 (2x2 blocks), 3 (4x4 blocks), constant 4, teacher 0.
#   mse            = 1 + 4 + 9 + 16 = 30
#   mse at 4x4     =     4 + 9 + 16 = 29   (the per-pixel checkerboard pools away)
#   mse at 2x2     =         9 + 16 = 25
#   mse at 1x1     =             16 = 16
#   hcl = (30 + 29 / 2 + 25 / 4 + 16 / 8) / (1 + 1/2 + 1/4 + 1/8) = 52.75 / 1.875 = 28.1333
MAP_8 = _checker(8, 1) + 2 * _checker(8, 2) + 3 * _checker(8, 4) + 4
HCL_8 = 52.75 / 1.875
# 4x4: amplitudes 1 (per pixel), 2 (2x2 blocks), constant 3. The 4x4 level is skipped (4 >= H),
# so the 2x2 level gets weight 1/2 and the 1x1 level 1/4 (the authors' rule: the weight
# halves per level used):
#   mse = 1 + 4 + 9 = 14, at 2x2: 4 + 9 = 13, at 1x1: 9
#   hcl = (14 + 13 / 2 + 9 / 4) / 1.75 = 22.75 / 1.75 = 13.0
MAP_4 = _checker(4, 1) + 2 * _checker(4, 2) + 3
HCL_4 = 13.0
# 2x2: amplitude 1 (per pixel), constant 2; the 4x4 and 2x2 levels are skipped:
#   mse = 1 + 4 = 5, at 1x1: 4; hcl = (5 + 4 / 2) / 1.5 = 14 / 3
MAP_2 = S + 2
HCL_2 = 14.0 / 3.0


def _batch(pattern: Tensor, batch: int = 2, channels: int = 3) -> Tensor:
    return pattern.expand(batch, channels, *pattern.shape).clone()  # (B, C, H, W)


# ------------------------------------------------------------------------------ hcl_loss


def test_hcl_8x8_map_uses_every_level_and_the_1875_normalisation() -> None:
    student = _batch(MAP_8)
    loss = hcl_loss([student], [torch.zeros_like(student)])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(HCL_8, abs=1e-5)
    # Only the difference counts (pooling is linear): the same on top of a random teacher.
    teacher = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert hcl_loss([teacher + student], [teacher]).item() == pytest.approx(HCL_8, abs=1e-4)


def test_hcl_small_maps_skip_the_levels_at_or_above_their_size() -> None:
    for pattern, expected in ((MAP_4, HCL_4), (MAP_2, HCL_2)):
        student = _batch(pattern)
        loss = hcl_loss([student], [torch.zeros_like(student)])
        assert loss.item() == pytest.approx(expected, abs=1e-5), tuple(pattern.shape)
    # A 1x1 map (the pooled feature) is a plain MSE: (3 - 1)^2 = 4.
    one = hcl_loss([torch.full((2, 5, 1, 1), 3.0)], [torch.ones(2, 5, 1, 1)])
    assert one.item() == pytest.approx(4.0, abs=1e-6)


def test_hcl_sums_the_stages() -> None:
    students = [_batch(MAP_8), _batch(MAP_4, channels=5), torch.full((2, 7, 1, 1), 3.0)]
    teachers = [torch.zeros(2, 3, 8, 8), torch.zeros(2, 5, 4, 4), torch.ones(2, 7, 1, 1)]
    loss = hcl_loss(students, teachers)
    assert loss.item() == pytest.approx(HCL_8 + HCL_4 + 4.0, abs=1e-4)


def test_hcl_levels_argument() -> None:
    # Only the 1x1 level on the 8x8 map: (30 + 16 / 2) / 1.5.
    student = _batch(MAP_8)
    loss = hcl_loss([student], [torch.zeros_like(student)], levels=(1,))
    assert loss.item() == pytest.approx(38.0 / 1.5, abs=1e-5)


def test_hcl_identical_features_give_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 6, 1, 1, generator=gen)]
    assert hcl_loss(features, [f.clone() for f in features]).item() == 0.0


def test_hcl_is_float32_under_bf16_autocast() -> None:
    student = _batch(MAP_4).bfloat16()  # small integers: exact in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = hcl_loss([student], [torch.zeros_like(student)])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(HCL_4, abs=1e-5)


def test_hcl_errors_say_what_they_got() -> None:
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="got 1 and 2 maps"):
        hcl_loss([x], [x, x])
    with pytest.raises(ValueError, match="got 0 and 0 maps"):
        hcl_loss([], [])
    with pytest.raises(ValueError, match=re.escape("stage 0: student shape (2, 3, 4, 4)")):
        hcl_loss([x], [torch.zeros(2, 3, 2, 2)])
    with pytest.raises(ValueError, match=re.escape("got shape (2, 3)")):
        hcl_loss([torch.zeros(2, 3)], [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match=re.escape("levels must be positive ints, got (4, 0)")):
        hcl_loss([x], [x], levels=(4, 0))
    with pytest.raises(TypeError, match="student_features\\[0\\] must be a floating-point"):
        hcl_loss([x.long()], [x])


# ----------------------------------------------------------------------------------- ABF


def test_abf_fusion_on_paper() -> None:
    # conv1 = identity (2 -> 2 channels), attention conv with zero weights and biases
    # (0, ln 3), so the attention is sigmoid(0) = 1/2 on the student map and sigmoid(ln 3) =
    # 3/4 on the residual; BatchNorm in eval mode with fresh statistics is the identity (up to
    # 1 / sqrt(1 + 1e-5)).
    abf = ABF(2, 2, 3, fuse=True).eval()
    assert isinstance(abf.att_conv, nn.Sequential)
    reduce, attention = abf.conv1[0], abf.att_conv[0]
    assert isinstance(reduce, nn.Conv2d) and isinstance(attention, nn.Conv2d)
    assert attention.bias is not None
    with torch.no_grad():
        reduce.weight.copy_(torch.eye(2)[:, :, None, None])
        attention.weight.zero_()
        attention.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    features = torch.stack([x, -x])[None]  # (1, 2, 2, 2)
    residual = torch.tensor([10.0, 20.0])[None, :, None, None]  # (1, 2, 1, 1): upsampled to 2x2
    out, fused = abf(features, residual, out_size=(4, 4))
    # Channel 0: x / 2 + 3/4 * 10; channel 1: -x / 2 + 3/4 * 20; then nearest to 4x4.
    at_2x2 = torch.tensor([[[8.0, 8.5], [9.0, 9.5]], [[14.5, 14.0], [13.5, 13.0]]])
    expected = at_2x2.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[None]
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=0)
    assert out.shape == (1, 3, 4, 4)


def test_abf_without_fusion_and_its_errors() -> None:
    deepest = ABF(8, 4, 6, fuse=False)
    assert deepest.att_conv is None
    out, fused = deepest(torch.randn(2, 8, 1, 1), out_size=(1, 1))
    assert (out.shape, fused.shape) == ((2, 6, 1, 1), (2, 4, 1, 1))
    with pytest.raises(
        ValueError, match=re.escape("takes no residual, got one of shape (2, 4, 1, 1)")
    ):
        deepest(torch.randn(2, 8, 1, 1), fused, out_size=(1, 1))
    with pytest.raises(ValueError, match=re.escape("ABF expects (B, 8, H, W), got (2, 3, 1, 1)")):
        deepest(torch.randn(2, 3, 1, 1), out_size=(1, 1))
    with pytest.raises(ValueError, match="residual, got None"):
        ABF(8, 4, 6, fuse=True)(torch.randn(2, 8, 2, 2), out_size=(2, 2))


def test_term_builds_abfs_from_the_shapes_and_fuses_deep_to_shallow() -> None:
    # Two stages plus the pooled feature; the student maps are half the teacher's size.
    term = ReviewKDTerm(["s1", "s2"], ["t1", "t2"], student_pooled="fc", teacher_pooled="head")
    assert term.student_taps() == [("s1", "output"), ("s2", "output"), ("fc", "input")]
    assert term.teacher_taps() == [("t1", "output"), ("t2", "output"), ("head", "input")]
    student: dict[Tap, torch.Size] = {
        ("s1", "output"): torch.Size((2, 4, 4, 4)),
        ("s2", "output"): torch.Size((2, 8, 2, 2)),
        ("fc", "input"): torch.Size((2, 8)),
    }
    teacher: dict[Tap, torch.Size] = {
        ("t1", "output"): torch.Size((2, 6, 8, 8)),
        ("t2", "output"): torch.Size((2, 12, 4, 4)),
        ("head", "input"): torch.Size((2, 12)),
    }
    term.build(student, teacher)
    abfs = [a for a in term.abfs if isinstance(a, ABF)]
    # mid = min(512, 8 channels of the deepest student level); only the deepest does not fuse.
    assert [(a.in_channels, a.mid_channels, a.out_channels, a.fuse) for a in abfs] == [
        (4, 8, 6, True),
        (8, 8, 12, True),
        (8, 8, 12, False),
    ]
    maps = [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2), torch.randn(2, 8, 1, 1)]
    outputs = term.fuse(maps, [(8, 8), (4, 4), (1, 1)])
    assert [tuple(o.shape) for o in outputs] == [(2, 6, 8, 8), (2, 12, 4, 4), (2, 12, 1, 1)]
    # The shallowest output depends on the deepest student level (the "review").
    changed = term.fuse([maps[0], maps[1], maps[2] + 1.0], [(8, 8), (4, 4), (1, 1)])
    assert not torch.allclose(changed[0], outputs[0])
    # An explicit mid_channel wins over the authors' rule.
    wide = ReviewKDTerm(["s1", "s2"], ["t1", "t2"], "fc", "head", mid_channel=16)
    wide.build(student, teacher)
    assert {a.mid_channels for a in wide.abfs if isinstance(a, ABF)} == {16}


def test_warmup_weights() -> None:
    term = ReviewKDTerm(["a"], ["a"], weight=5.0)  # warm-up 20 epochs, epochs from 0
    assert [term.weight_at(e) for e in (0, 10, 20, 30)] == [0.0, 2.5, 5.0, 5.0]
    assert ReviewKDTerm(["a"], ["a"], warmup_epochs=0, weight=5.0).weight_at(0) == 5.0


def test_term_errors_say_what_they_got() -> None:
    with pytest.raises(ValueError, match="pair up"):
        ReviewKDTerm(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="pair up"):
        ReviewKDTerm([], [], student_pooled=None, teacher_pooled=None)
    with pytest.raises(ValueError, match=r"mid_channel must be >= 1 .*got 0"):
        ReviewKDTerm(["a"], ["a"], mid_channel=0)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0, got -1"):
        ReviewKDTerm(["a"], ["a"], warmup_epochs=-1)
    with pytest.raises(ValueError, match=r"weight must be >= 0, got -1\.0"):
        ReviewKDTerm(["a"], ["a"], weight=-1.0)
    term = ReviewKDTerm(["a"], ["a"], student_pooled=None, teacher_pooled=None)
    with pytest.raises(ValueError, match=re.escape("student output of 'a' with shape (2, 3, 4)")):
        term.build({("a", "output"): torch.Size((2, 3, 4))}, {("a", "output"): torch.Size((2, 3))})
    with pytest.raises(ValueError, match="call build"):
        term.fuse([torch.zeros(2, 3, 1, 1)], [(1, 1)])


# ------------------------------------------------------------------- in FeatureKDModule


def _module(**term_args: object) -> FeatureKDModule:
    torch.manual_seed(0)
    term = ReviewKDTerm(["stage1", "stage2"], ["stage1", "stage2"], **term_args)  # type: ignore[arg-type]
    return FeatureKDModule(
        TwoStageNet((4, 8)), TwoStageNet((6, 12)), terms=[term], input_size=(3, 8, 8)
    )


def test_abfs_are_registered_on_the_module() -> None:
    module = _module()
    term = module.distillation_terms[0]
    assert isinstance(term, ReviewKDTerm) and len(term.abfs) == 3
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    abf_params = list(term.abfs.parameters())
    assert abf_params and all(id(p) in optimized for p in abf_params)
    assert not optimized & {id(p) for p in module.teacher.parameters()}
    keys = module.state_dict().keys()
    for key in (
        "terms.0.abfs.0.conv1.0.weight",
        "terms.0.abfs.0.att_conv.0.bias",
        "terms.0.abfs.1.conv2.1.running_mean",
        "terms.0.abfs.2.conv2.0.weight",
    ):
        assert key in keys, key
    assert not any(k.startswith("terms.0.abfs.2.att_conv") for k in keys)  # deepest: no fusion


def test_first_epoch_of_the_warmup_adds_nothing() -> None:
    module = _module(weight=5.0)  # epoch 0 of a 20-epoch warm-up: weight 0
    out = module.compute_losses((torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])))
    assert out["loss_reviewkd"].item() > 0
    torch.testing.assert_close(out["loss"], out["loss_ce"])


def test_bf16_mixed_training_moves_the_abfs_and_not_the_teacher() -> None:
    module = _module(warmup_epochs=0)
    teacher_before = copy.deepcopy(module.teacher.state_dict())
    abfs_before = copy.deepcopy(module.terms.state_dict())
    t = trainer(max_steps=3, limit_val_batches=1, precision="bf16-mixed")
    t.fit(module, datamodule=TinyData(n=32, batch_size=8))
    value = t.logged_metrics["train/loss_reviewkd_epoch"]
    assert value.dtype == torch.float32 and torch.isfinite(value)
    after = module.terms.state_dict()
    assert not torch.equal(after["0.abfs.0.conv1.0.weight"], abfs_before["0.abfs.0.conv1.0.weight"])
    assert not torch.equal(
        after["0.abfs.0.att_conv.0.weight"], abfs_before["0.abfs.0.att_conv.0.weight"]
    )
    assert all(p.dtype == torch.float32 for p in module.terms.parameters())
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert all(p.grad is None for p in module.teacher.parameters())


def test_ddp_two_processes_keep_the_abfs_identical(tmp_path: Path) -> None:
    ranks = _run_ddp_script("review_kd_ddp_script.py", tmp_path)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4
    terms = [rank["terms"] for rank in ranks]
    assert "0.abfs.0.att_conv.0.weight" in terms[0]
    for key, value in terms[0].items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, terms[1][key]), key
    # They trained (so the agreement is DDP's gradient sync, not an untouched copy) ...
    assert not torch.equal(
        terms[0]["0.abfs.0.conv1.0.weight"], ranks[0]["terms_initial"]["0.abfs.0.conv1.0.weight"]
    )
    # ... and the teacher did not.
    for rank in ranks:
        for key, value in rank["teacher_initial"].items():
            assert torch.equal(rank["teacher"][key], value), key


# ------------------------------------------------------------- the authors' CIFAR shapes


@pytest.mark.parametrize(
    ("teacher", "student", "taps", "in_channels", "out_channels", "mid"),
    [
        # build_review_kd in dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py, shallow to
        # deep ('shufflev1' with a resnet32x4 teacher; 'mobile' with a vgg teacher).
        (
            lambda: CIFARResNet(32, channels=(32, 64, 128, 256)),
            ShuffleNetV1,
            (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"], "linear", "fc"),
            [240, 480, 960, 960],
            [64, 128, 256, 256],
            512,
        ),
        (
            lambda: VGG(13),
            MobileNetV2,
            (
                ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
                ["block1.4", "block2.4", "block3.4", "block4.4"],
                "classifier",
                "classifier",
            ),
            [12, 16, 48, 160, 1280],
            [128, 256, 512, 512, 512],
            512,
        ),
    ],
    ids=["resnet32x4-shufflenetv1", "vgg13-mobilenetv2"],
)
def test_cifar_pairs_get_the_authors_abf_channels(
    teacher: object, student: object, taps: tuple, in_channels: list, out_channels: list, mid: int
) -> None:
    torch.manual_seed(0)
    s_layers, t_layers, s_pooled, t_pooled = taps
    term = ReviewKDTerm(s_layers, t_layers, student_pooled=s_pooled, teacher_pooled=t_pooled)
    module = FeatureKDModule(student(num_classes=100), teacher(), terms=[term])  # type: ignore[operator]
    abfs = [a for a in term.abfs if isinstance(a, ABF)]
    assert [a.in_channels for a in abfs] == in_channels
    assert [a.out_channels for a in abfs] == out_channels
    assert {a.mid_channels for a in abfs} == {mid}
    module.eval()
    out = module.compute_losses((torch.randn(2, 3, 32, 32), torch.tensor([0, 1])))
    assert torch.isfinite(out["loss_reviewkd"])
