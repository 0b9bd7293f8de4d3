"""Tests for the CIFAR networks, the small CNN and the torchvision wrapper."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from jsonargparse import ArgumentParser
from torch import nn

from lightning_kd.models import (
    CIFARResNet,
    SmallCNN,
    TorchvisionModel,
    WideResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
    wrn_16_2,
    wrn_40_1,
    wrn_40_2,
)

FACTORIES: list[Callable[..., nn.Module]] = [
    resnet8,
    resnet14,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet8x4,
    resnet32x4,
    wrn_16_2,
    wrn_40_1,
    wrn_40_2,
]


def _millions(model: nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


@pytest.mark.parametrize(
    ("factory", "millions"),
    [
        (resnet20, 0.28),
        (resnet56, 0.86),
        (resnet8x4, 1.23),
        (resnet32x4, 7.43),
        (wrn_16_2, 0.70),
        (wrn_40_2, 2.26),
    ],
)
def test_parameter_counts_match_published(
    factory: Callable[..., nn.Module], millions: float
) -> None:
    assert _millions(factory(num_classes=100)) == millions


def test_parameter_count_changes_only_by_the_head() -> None:
    # 90 fewer classes removes 90 rows of fc.weight (64 wide) and 90 biases.
    n100 = sum(p.numel() for p in resnet20(num_classes=100).parameters())
    n10 = sum(p.numel() for p in resnet20(num_classes=10).parameters())
    assert n100 - n10 == 90 * 64 + 90


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_output_shapes(factory: Callable[..., nn.Module], num_classes: int) -> None:
    model = factory(num_classes=num_classes)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.out_features == num_classes
    assert model.num_classes == num_classes
    for stage in ("layer1", "layer2", "layer3"):
        assert isinstance(getattr(model, stage), nn.Sequential)


@pytest.mark.parametrize(
    ("factory", "depth", "channels"),
    [
        (resnet8, 8, (16, 16, 32, 64)),
        (resnet110, 110, (16, 16, 32, 64)),
        (resnet8x4, 8, (32, 64, 128, 256)),
        (resnet32x4, 32, (32, 64, 128, 256)),
    ],
)
def test_resnet_factories_configure_depth_and_width(
    factory: Callable[..., CIFARResNet], depth: int, channels: tuple[int, ...]
) -> None:
    model = factory()
    assert isinstance(model, CIFARResNet)
    assert (model.depth, model.channels, model.num_classes) == (depth, channels, 100)
    blocks = (depth - 2) // 6
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [blocks] * 3
    assert model.fc.in_features == channels[3]


def test_resnet_shortcuts_project_only_when_shape_changes() -> None:
    model = resnet20()
    assert all(block.downsample is None for block in model.layer1)
    projection = model.layer2[0].downsample
    assert isinstance(projection[0], nn.Conv2d)
    assert projection[0].kernel_size == (1, 1) and projection[0].stride == (2, 2)
    assert isinstance(projection[1], nn.BatchNorm2d)
    assert all(block.downsample is None for block in model.layer2[1:])
    # The x4 variants widen the stem (32) to 64 in layer1, so its first block projects.
    assert resnet8x4().layer1[0].downsample is not None


@pytest.mark.parametrize(
    ("factory", "depth", "widen"),
    [(wrn_16_2, 16, 2), (wrn_40_1, 40, 1), (wrn_40_2, 40, 2)],
)
def test_wrn_factories_configure_depth_and_width(
    factory: Callable[..., WideResNet], depth: int, widen: int
) -> None:
    model = factory(num_classes=10)
    assert (model.depth, model.widen_factor) == (depth, widen)
    assert len(model.layer1) == (depth - 4) // 6
    assert model.fc.in_features == 64 * widen


@pytest.mark.parametrize("depth", [7, 9, 21, 2])
def test_resnet_rejects_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"6n \+ 2.*got {depth}$"):
        CIFARResNet(depth=depth)


@pytest.mark.parametrize("depth", [4, 15, 17, 41])
def test_wide_resnet_rejects_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"6n \+ 4.*got {depth}$"):
        WideResNet(depth=depth)


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"channels must be four positive ints, got \(16, 32\)"):
        CIFARResNet(channels=(16, 32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_classes must be >= 0 \(0: no classifier\), got -1"):
        resnet20(num_classes=-1)
    with pytest.raises(ValueError, match="widen_factor must be >= 1, got 0"):
        WideResNet(widen_factor=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        WideResNet(dropout=1.5)
    with pytest.raises(ValueError, match="width must be >= 1, got 0"):
        SmallCNN(width=0)


def test_initialization_is_kaiming_fan_out_and_unit_batch_norm() -> None:
    torch.manual_seed(0)
    model = resnet32x4()
    conv = model.layer3[1].conv1  # 256 -> 256, 3x3: fan_out = 256 * 9
    expected_std = math.sqrt(2.0 / (256 * 9))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_wide_resnet_dropout_is_active_only_in_training() -> None:
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen_factor=1, num_classes=10, dropout=0.3)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_small_cnn_shapes_and_default_widths() -> None:
    model = SmallCNN()
    assert model.num_classes == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert SmallCNN(num_classes=100, width=8)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.fc.in_features == 4 * 32
    # A wider SmallCNN is the natural teacher: more parameters, same interface.
    n32 = sum(p.numel() for p in model.parameters())
    n64 = sum(p.numel() for p in SmallCNN(width=64).parameters())
    assert n64 > 3 * n32


def test_small_cnn_channels_last_bf16_matches_fp32() -> None:
    torch.manual_seed(0)
    model = SmallCNN(width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model_cl(x_cl)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), reference, atol=0.1, rtol=0.05)


def test_small_cnn_can_fit_a_small_batch() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(x).argmax(dim=1) == y).float().mean().item() == 1.0


@pytest.mark.parametrize(
    ("class_path", "init_args", "expected_params"),
    [
        (
            "lightning_kd.models.CIFARResNet",
            {"depth": 8, "num_classes": 100, "channels": [32, 64, 128, 256]},
            1_233_540,
        ),
        ("lightning_kd.models.WideResNet", {"depth": 16, "widen_factor": 2}, 703_284),
        ("lightning_kd.models.SmallCNN", {"num_classes": 10, "width": 32}, 242_474),
    ],
)
def test_classes_build_from_class_path_and_init_args(
    class_path: str, init_args: dict[str, object], expected_params: int
) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=nn.Module)
    config = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    model = parser.instantiate_classes(config).model
    assert type(model).__name__ == class_path.rsplit(".", 1)[1]
    assert sum(p.numel() for p in model.parameters()) == expected_params


def test_torchvision_model_builds_by_name() -> None:
    model = TorchvisionModel("mobilenet_v3_small", num_classes=10)
    assert model.net.classifier[-1].out_features == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_model_unknown_name_lists_close_names() -> None:
    with pytest.raises(ValueError, match=r"'resnet19'.*close matches: \[.*'resnet18'"):
        TorchvisionModel("resnet19")


# --------------------------------------------------------------------------- headless backbones
@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_num_classes_zero_returns_pooled_features(factory: Callable[..., nn.Module]) -> None:
    headless = factory(num_classes=0)
    classifier = factory(num_classes=10)
    assert isinstance(headless.fc, nn.Identity)
    assert headless.num_classes == 0
    assert headless.num_features == classifier.num_features == classifier.fc.in_features
    x = torch.randn(2, 3, 32, 32)
    features = headless.eval()(x)
    assert features.shape == (2, headless.num_features)
    # With the headless backbone's weights, the classifier's logits are fc(features).
    classifier.load_state_dict(headless.state_dict(), strict=False)
    torch.testing.assert_close(classifier.eval()(x), classifier.fc(features))
    # Only the head's parameters are gone.
    n_head = sum(p.numel() for p in classifier.fc.parameters())
    n_headless = sum(p.numel() for p in headless.parameters())
    assert n_headless == sum(p.numel() for p in classifier.parameters()) - n_head


def test_small_cnn_and_classes_without_classifier() -> None:
    cnn = SmallCNN(num_classes=0, width=8)
    assert cnn.num_features == 32 and isinstance(cnn.fc, nn.Identity)
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    assert SmallCNN(width=8).num_features == 32
    assert CIFARResNet(depth=8, num_classes=0).num_features == 64
    assert WideResNet(depth=10, widen_factor=3, num_classes=0).num_features == 192
    for build in (lambda: SmallCNN(num_classes=-1), lambda: WideResNet(num_classes=-2)):
        with pytest.raises(ValueError, match=r"num_classes must be >= 0 \(0: no classifier\)"):
            build()


def test_torchvision_resnet18_cifar_stem_without_classifier() -> None:
    model = TorchvisionModel("resnet18", num_classes=0, cifar_stem=True)
    assert model.num_features == 512 and isinstance(model.net.fc, nn.Identity)
    conv1 = model.net.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert conv1.bias is None and isinstance(model.net.maxpool, nn.Identity)
    shapes: list[tuple[int, ...]] = []
    model.net.layer4.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert shapes == [(2, 512, 4, 4)]
    # Without the CIFAR stem a 32x32 input ends at 1x1.
    plain = TorchvisionModel("resnet18", num_classes=10)
    assert plain.num_features == 512 and isinstance(plain.net.fc, nn.Linear)
    plain.net.layer4.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes[-1] == (2, 512, 1, 1)


def test_torchvision_model_without_classifier_other_families() -> None:
    model = TorchvisionModel("mobilenet_v3_small", num_classes=0).eval()
    assert model.num_features == 1024 and isinstance(model.net.classifier[3], nn.Identity)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1024)
    assert TorchvisionModel("squeezenet1_1", num_classes=10).num_features == 512
    with pytest.raises(ValueError, match=r"'squeezenet1_1' has none; use num_classes >= 1"):
        TorchvisionModel("squeezenet1_1", num_classes=0)
    with pytest.raises(ValueError, match=r"cifar_stem=True needs a ResNet-family.*'mobilenet_v3"):
        TorchvisionModel("mobilenet_v3_small", cifar_stem=True)
    with pytest.raises(ValueError, match=r"num_classes must be >= 0 \(0: no classifier\), got -1"):
        TorchvisionModel("resnet18", num_classes=-1)


def test_torchvision_model_without_classifier_loads_backbone_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_small(num_classes=1000)
    path = tmp_path / "mobilenet.pth"
    torch.save(source.state_dict(), path)  # with its 1000-class classifier
    model = TorchvisionModel("mobilenet_v3_small", num_classes=0, weights_path=str(path))
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.3.")}
    loaded = model.net.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # A headless wrapper's own state dict loads back as well.
    headless_path = tmp_path / "headless.pt"
    torch.save(model.state_dict(), headless_path)
    again = TorchvisionModel("mobilenet_v3_small", num_classes=0, weights_path=str(headless_path))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
