"""load_weights on the files of RepDistiller, mdistiller and torchdistill: identical outputs.

RepDistiller and mdistiller are not installable, so their files are built here with their key
names and shapes, written out below from their public model code, and their WRN function is
written out as a functional reference forward. torchdistill is a test dependency: its real
CIFAR networks and its real ``save_ckpt`` write the files.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchdistill.common.main_util import save_ckpt
from torchdistill.models.classification import resnet as td_resnet
from torchdistill.models.classification import wide_resnet as td_wrn

from lightning_kd.models import (
    CIFARResNet,
    WideResNet,
    load_weights,
    resnet8,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    wrn_16_2,
    wrn_40_2,
)

Shape = tuple[int, ...]


def _bn(name: str, channels: int) -> list[tuple[str, Shape]]:
    """The five state-dict entries of ``nn.BatchNorm2d(channels)`` registered as ``name``."""
    c = (channels,)
    return [
        (f"{name}.weight", c),
        (f"{name}.bias", c),
        (f"{name}.running_mean", c),
        (f"{name}.running_var", c),
        (f"{name}.num_batches_tracked", ()),
    ]


# RepDistiller models/wrn.py (identical in mdistiller models/cifar/wrn.py): the state dict of
# wrn_16_2(num_classes=10), in order. Stages are NetworkBlock "block{i}" holding a Sequential
# "layer"; a block whose width changes has "convShortcut"; the final norm is "bn1".
REPDISTILLER_WRN_16_2: list[tuple[str, Shape]] = [
    ("conv1.weight", (16, 3, 3, 3)),
    *_bn("block1.layer.0.bn1", 16),
    ("block1.layer.0.conv1.weight", (32, 16, 3, 3)),
    *_bn("block1.layer.0.bn2", 32),
    ("block1.layer.0.conv2.weight", (32, 32, 3, 3)),
    ("block1.layer.0.convShortcut.weight", (32, 16, 1, 1)),
    *_bn("block1.layer.1.bn1", 32),
    ("block1.layer.1.conv1.weight", (32, 32, 3, 3)),
    *_bn("block1.layer.1.bn2", 32),
    ("block1.layer.1.conv2.weight", (32, 32, 3, 3)),
    *_bn("block2.layer.0.bn1", 32),
    ("block2.layer.0.conv1.weight", (64, 32, 3, 3)),
    *_bn("block2.layer.0.bn2", 64),
    ("block2.layer.0.conv2.weight", (64, 64, 3, 3)),
    ("block2.layer.0.convShortcut.weight", (64, 32, 1, 1)),
    *_bn("block2.layer.1.bn1", 64),
    ("block2.layer.1.conv1.weight", (64, 64, 3, 3)),
    *_bn("block2.layer.1.bn2", 64),
    ("block2.layer.1.conv2.weight", (64, 64, 3, 3)),
    *_bn("block3.layer.0.bn1", 64),
    ("block3.layer.0.conv1.weight", (128, 64, 3, 3)),
    *_bn("block3.layer.0.bn2", 128),
    ("block3.layer.0.conv2.weight", (128, 128, 3, 3)),
    ("block3.layer.0.convShortcut.weight", (128, 64, 1, 1)),
    *_bn("block3.layer.1.bn1", 128),
    ("block3.layer.1.conv1.weight", (128, 128, 3, 3)),
    *_bn("block3.layer.1.bn2", 128),
    ("block3.layer.1.conv2.weight", (128, 128, 3, 3)),
    *_bn("bn1", 128),
    ("fc.weight", (10, 128)),
    ("fc.bias", (10,)),
]

# RepDistiller models/resnet.py (identical in mdistiller): the state dict of
# resnet8(num_classes=10), one BasicBlock per stage, "downsample" = Sequential(conv, BN).
REPDISTILLER_RESNET8: list[tuple[str, Shape]] = [
    ("conv1.weight", (16, 3, 3, 3)),
    *_bn("bn1", 16),
    ("layer1.0.conv1.weight", (16, 16, 3, 3)),
    *_bn("layer1.0.bn1", 16),
    ("layer1.0.conv2.weight", (16, 16, 3, 3)),
    *_bn("layer1.0.bn2", 16),
    ("layer2.0.conv1.weight", (32, 16, 3, 3)),
    *_bn("layer2.0.bn1", 32),
    ("layer2.0.conv2.weight", (32, 32, 3, 3)),
    *_bn("layer2.0.bn2", 32),
    ("layer2.0.downsample.0.weight", (32, 16, 1, 1)),
    *_bn("layer2.0.downsample.1", 32),
    ("layer3.0.conv1.weight", (64, 32, 3, 3)),
    *_bn("layer3.0.bn1", 64),
    ("layer3.0.conv2.weight", (64, 64, 3, 3)),
    *_bn("layer3.0.bn2", 64),
    ("layer3.0.downsample.0.weight", (64, 32, 1, 1)),
    *_bn("layer3.0.downsample.1", 64),
    ("fc.weight", (10, 64)),
    ("fc.bias", (10,)),
]


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch norms distinctive affine values and data-driven running statistics.

    The affine parameters and classifier biases are drawn at random; the running statistics
    are those of one batch of random images (momentum 1), so in eval mode activations stay of
    order one, as in a trained network, and outputs compare at a tight ``torch.allclose``
    tolerance. Convolutions keep their random initialisation.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))
            elif isinstance(module, nn.Linear):
                module.bias.copy_(0.1 * torch.randn(module.out_features, generator=generator))
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 1.0
        model.train()(torch.randn(8, 3, 32, 32, generator=generator))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.fill_(7)
    return model.eval()


def _images(n: int = 4) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def _renamed(ours: nn.Module, reference: list[tuple[str, Shape]]) -> dict[str, Tensor]:
    """``ours``'s tensors under the reference names, paired by position and checked by shape."""
    state = ours.state_dict()
    assert len(state) == len(reference)
    renamed = {}
    for (name, shape), (our_name, tensor) in zip(reference, state.items(), strict=True):
        assert tuple(tensor.shape) == shape, (name, our_name)
        renamed[name] = tensor.clone()
    return renamed


def _sgd_state(model: nn.Module) -> dict[str, object]:
    """An optimizer state dict with momentum buffers, as the training scripts save it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    model(_images(2)).sum().backward()
    optimizer.step()
    model.eval()
    return optimizer.state_dict()


def _batch_norm(state: Mapping[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.batch_norm(
        x,
        state[f"{name}.running_mean"],
        state[f"{name}.running_var"],
        state[f"{name}.weight"],
        state[f"{name}.bias"],
        training=False,
    )


def _repdistiller_wrn_forward(state: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """RepDistiller's WRN in eval mode, computed from its state dict with functional ops.

    Each block: ``a = relu(bn1(x))``; ``out = conv2(relu(bn2(conv1(a))))``; the block returns
    ``out + x`` when in and out widths agree, else ``out + convShortcut(a)``. The first block
    of stages 2 and 3 has stride 2. Then ``relu(bn1(.))``, an 8x8 average pool and ``fc``.
    """
    h = F.conv2d(x, state["conv1.weight"], padding=1)
    for stage in (1, 2, 3):
        index = 0
        while f"block{stage}.layer.{index}.conv1.weight" in state:
            p = f"block{stage}.layer.{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            a = F.relu(_batch_norm(state, f"{p}.bn1", h))
            out = F.conv2d(a, state[f"{p}.conv1.weight"], stride=stride, padding=1)
            out = F.relu(_batch_norm(state, f"{p}.bn2", out))
            out = F.conv2d(out, state[f"{p}.conv2.weight"], padding=1)
            shortcut = state.get(f"{p}.convShortcut.weight")
            h = out + (h if shortcut is None else F.conv2d(a, shortcut, stride=stride))
            index += 1
    h = F.relu(_batch_norm(state, "bn1", h))
    h = F.avg_pool2d(h, 8).flatten(1)
    return F.linear(h, state["fc.weight"], state["fc.bias"])


@pytest.fixture
def repdistiller_wrn() -> dict[str, Tensor]:
    """A RepDistiller-layout wrn_16_2 (10 classes) state dict with distinctive values."""
    torch.manual_seed(0)
    return _renamed(_trained_like(wrn_16_2(num_classes=10)), REPDISTILLER_WRN_16_2)


# ----------------------------------------------------------------------------- RepDistiller
def test_repdistiller_released_teacher_file_gives_identical_outputs(
    repdistiller_wrn: dict[str, Tensor], tmp_path: Path
) -> None:
    # ckpt_epoch_240.pth of train_teacher.py; "accuracy" is the top-1 meter, a tensor.
    path = tmp_path / "wrn_16_2_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    checkpoint = {
        "epoch": 240,
        "model": repdistiller_wrn,
        "accuracy": torch.tensor([73.26]),
        "optimizer": _sgd_state(_trained_like(wrn_16_2(num_classes=10))),
    }
    torch.save(checkpoint, path)

    model = load_weights(wrn_16_2(num_classes=10), path).eval()
    x = _images()
    with torch.no_grad():
        expected = _repdistiller_wrn_forward(repdistiller_wrn, x)
        assert torch.allclose(model(x), expected, atol=1e-5)
    # Every tensor arrived under its translated name.
    assert torch.equal(model.bn.running_var, repdistiller_wrn["bn1.running_var"])
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut, nn.Conv2d)
    assert torch.equal(shortcut.weight, repdistiller_wrn["block2.layer.0.convShortcut.weight"])
    assert torch.equal(model.layer3[1].bn2.bias, repdistiller_wrn["block3.layer.1.bn2.bias"])


def test_repdistiller_last_file_with_an_argparse_namespace(
    repdistiller_wrn: dict[str, Tensor], tmp_path: Path
) -> None:
    # wrn_16_2_last.pth: {"opt": the parsed options, "model", "optimizer"}.
    path = tmp_path / "wrn_16_2_last.pth"
    opt = argparse.Namespace(model="wrn_16_2", learning_rate=0.05, lr_decay_epochs=[150, 180])
    torch.save({"opt": opt, "model": repdistiller_wrn, "optimizer": {}}, path)
    model = load_weights(wrn_16_2(num_classes=10), path).eval()
    with torch.no_grad():
        x = _images()
        assert torch.allclose(model(x), _repdistiller_wrn_forward(repdistiller_wrn, x), atol=1e-5)


def test_repdistiller_resnet_keys_are_ours(tmp_path: Path) -> None:
    source = _trained_like(resnet8(num_classes=10))
    assert [(k, tuple(v.shape)) for k, v in source.state_dict().items()] == REPDISTILLER_RESNET8
    path = tmp_path / "ckpt_epoch_240.pth"
    state = {"epoch": 240, "model": source.state_dict(), "accuracy": torch.tensor([60.0])}
    torch.save({**state, "optimizer": _sgd_state(resnet8(num_classes=10))}, path)
    model = load_weights(resnet8(num_classes=10), path).eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_dataparallel_module_prefix_inside_the_model_entry(
    repdistiller_wrn: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "dp.pth"
    state = {"module." + k: v for k, v in repdistiller_wrn.items()}
    torch.save({"epoch": 1, "model": state, "accuracy": 1.0}, path)
    model = load_weights(wrn_16_2(num_classes=10), path).eval()
    with torch.no_grad():
        x = _images()
        assert torch.allclose(model(x), _repdistiller_wrn_forward(repdistiller_wrn, x), atol=1e-5)


# ----------------------------------------------------------------------------- mdistiller
def test_mdistiller_student_file(repdistiller_wrn: dict[str, Tensor], tmp_path: Path) -> None:
    # student_best of mdistiller's trainer: {"model": distiller.module.student.state_dict()}.
    path = tmp_path / "student_best"
    torch.save({"model": repdistiller_wrn}, path)
    model = load_weights(wrn_16_2(num_classes=10), path).eval()
    with torch.no_grad():
        x = _images()
        assert torch.allclose(model(x), _repdistiller_wrn_forward(repdistiller_wrn, x), atol=1e-5)


def test_mdistiller_full_checkpoint_student_by_default_teacher_by_prefix(
    repdistiller_wrn: dict[str, Tensor], tmp_path: Path
) -> None:
    # "best" / "latest": {"epoch", "model": DataParallel(distiller).state_dict(), "optimizer",
    # "best_acc"}; the distiller holds student, teacher and its own modules (here a regressor).
    teacher = _trained_like(resnet20(num_classes=10), seed=1)
    distiller = {
        **{f"module.student.{k}": v for k, v in repdistiller_wrn.items()},
        **{f"module.teacher.{k}": v for k, v in teacher.state_dict().items()},
        "module.conv_reg.weight": torch.randn(64, 32, 1, 1),
    }
    path = tmp_path / "best"
    checkpoint = {"epoch": 240, "model": distiller, "optimizer": {}, "best_acc": torch.tensor(75.0)}
    torch.save(checkpoint, path)

    x = _images()
    student = load_weights(wrn_16_2(num_classes=10), path).eval()
    loaded_teacher = load_weights(resnet20(num_classes=10), path, prefix="module.teacher.").eval()
    with torch.no_grad():
        expected = _repdistiller_wrn_forward(repdistiller_wrn, x)
        assert torch.allclose(student(x), expected, atol=1e-5)
        assert torch.equal(loaded_teacher(x), teacher(x))


# ----------------------------------------------------------------------------- refusals
def test_repdistiller_wrn_into_the_raw_variant_is_refused(
    repdistiller_wrn: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": repdistiller_wrn}, path)
    with pytest.raises(ValueError) as info:
        load_weights(WideResNet(16, 2, num_classes=10, shortcut_input="raw"), path)
    message = str(info.value)
    assert str(path) in message
    assert "RepDistiller / mdistiller WideResNet" in message
    assert "'block1.layer.0.conv1.weight'" in message
    assert "pre-activated block input" in message and "shortcut_input='raw'" in message
    assert (
        "Build WideResNet(depth=16, widen_factor=2, num_classes=10, shortcut_input='preact')"
        in message
    )


def test_repdistiller_wrn_into_another_network_is_refused(
    repdistiller_wrn: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "wrn.pth"
    torch.save({"model": repdistiller_wrn}, path)
    expected = (
        "loads into lightning_kd.models.WideResNet(depth=16, widen_factor=2, num_classes=10, "
        "shortcut_input='preact'), not into CIFARResNet"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_weights(resnet20(num_classes=10), path)


def test_translated_keys_must_all_fit(repdistiller_wrn: dict[str, Tensor], tmp_path: Path) -> None:
    # Another depth: the key checks run on the translated names and say so.
    path = tmp_path / "wrn_16_2.pth"
    torch.save({"model": repdistiller_wrn}, path)
    with pytest.raises(ValueError) as info:
        load_weights(wrn_40_2(num_classes=10), path)
    message = str(info.value)
    assert "RepDistiller / mdistiller WideResNet key names translated" in message
    assert "missing key(s)" in message and "'layer1.2.bn1.bias'" in message
    assert "block1" not in message.split("\n", 1)[1]

    # A file missing one tensor: reported under this library's name.
    incomplete = dict(repdistiller_wrn)
    del incomplete["block2.layer.0.convShortcut.weight"]
    torch.save({"model": incomplete}, path)
    with pytest.raises(ValueError, match=r"1 missing key\(s\).*\['layer2\.0\.shortcut\.weight'\]"):
        load_weights(wrn_16_2(num_classes=10), path)


def test_translated_file_with_another_class_count(
    repdistiller_wrn: dict[str, Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "wrn.pth"
    torch.save({"model": repdistiller_wrn}, path)
    with pytest.raises(ValueError, match="checkpoint classifier has 10 classes, model has 100"):
        load_weights(wrn_16_2(num_classes=100), path)
    with pytest.warns(UserWarning, match="checkpoint classifier has 10 classes, model has 100"):
        model = load_weights(wrn_16_2(num_classes=100), path, skip_mismatched_classifier=True)
    assert torch.equal(model.bn.weight, repdistiller_wrn["bn1.weight"])
    assert model.fc.weight.shape == (100, 128)


# ----------------------------------------------------------------------------- torchdistill
@pytest.mark.parametrize(("depth", "k"), [(16, 2), (10, 1)])
def test_torchdistill_wrn_gives_identical_outputs(depth: int, k: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = _trained_like(td_wrn.wide_resnet(depth, k, 0.3, 10, False, False))
    path = tmp_path / f"cifar10-wide_resnet{depth}_{k}.pt"
    torch.save(theirs.state_dict(), path)  # released weights are plain state dicts

    ours = load_weights(WideResNet(depth, k, num_classes=10, shortcut_input="raw"), path).eval()
    x = _images()
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_torchdistill_wrn_is_another_function_than_the_preact_variant(tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = _trained_like(td_wrn.wide_resnet(16, 2, 0.0, 10, False, False))
    path = tmp_path / "wrn.pt"
    torch.save(theirs.state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_weights(WideResNet(16, 2, num_classes=10), path)
    message = str(info.value)
    assert "torchdistill WideResNet" in message and "raw block input x" in message
    assert "the model is WideResNet(shortcut_input='preact')" in message
    assert "Build WideResNet(depth=16, widen_factor=2, num_classes=10, shortcut_input='raw')" in (
        message
    )
    # Why: the same tensors in the other variant give other outputs.
    raw = load_weights(WideResNet(16, 2, num_classes=10, shortcut_input="raw"), path).eval()
    preact = WideResNet(16, 2, num_classes=10, shortcut_input="preact").eval()
    preact.load_state_dict(raw.state_dict())
    x = _images()
    with torch.no_grad():
        assert not torch.allclose(preact(x), theirs(x), atol=1e-3)


def test_torchdistill_save_ckpt_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    theirs = _trained_like(td_wrn.wide_resnet(10, 1, 0.0, 10, False, False))
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[60, 120])
    args = argparse.Namespace(config="wrn.yaml", device="cpu", seed=None, world_size=1)
    path = tmp_path / "ckpt" / "wrn.pt"
    save_ckpt(theirs, optimizer, scheduler, 0.95, args, str(path))
    with pytest.raises(Exception, match="Weights only load failed"):  # the Namespace
        torch.load(path, weights_only=True)

    ours = load_weights(WideResNet(10, 1, num_classes=10, shortcut_input="raw"), path).eval()
    x = _images()
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs.eval()(x), atol=1e-5)


def test_only_argparse_namespace_is_allowed_besides_tensors(tmp_path: Path) -> None:
    # A training checkpoint holding any other class is refused, never unpickled fully.
    path = tmp_path / "ckpt.pt"
    args = argparse.Namespace(output_dir=Path("/runs"))  # a Path inside the Namespace
    torch.save({"model": resnet8(num_classes=10).state_dict(), "args": args}, path)
    with pytest.raises(ValueError, match=r"weights_only=True.*not a Lightning checkpoint"):
        load_weights(resnet8(num_classes=10), path)


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("resnet20", resnet20),
        ("resnet32", resnet32),
        ("resnet44", resnet44),
        ("resnet56", resnet56),
        ("resnet110", resnet110),
    ],
)
def test_torchdistill_resnets_have_our_keys_and_outputs(
    name: str, ours: Callable[..., CIFARResNet], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    theirs = _trained_like(getattr(td_resnet, name)(num_classes=10))
    target = ours(num_classes=10)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in target.state_dict().items()}
    path = tmp_path / f"cifar10-{name}.pt"
    torch.save(theirs.state_dict(), path)

    load_weights(target, path).eval()
    x = _images()
    with torch.no_grad():
        assert torch.allclose(target(x), theirs(x), atol=1e-5)


# ----------------------------------------------------------------------------- WideResNet
def test_wide_resnet_shortcut_input_choices() -> None:
    assert WideResNet().shortcut_input == "preact"
    raw = WideResNet(10, 1, num_classes=10, shortcut_input="raw")
    assert raw.shortcut_input == "raw" and raw.layer2[0].shortcut_input == "raw"
    n_params = sum(p.numel() for p in raw.parameters())
    assert n_params == sum(p.numel() for p in WideResNet(10, 1, num_classes=10).parameters())
    with pytest.raises(ValueError, match=r"shortcut_input must be one of \['preact', 'raw'\], got"):
        WideResNet(shortcut_input="input")  # type: ignore[arg-type]
