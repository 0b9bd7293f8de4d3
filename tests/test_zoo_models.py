"""Tests for the CIFAR zoo of the KD benchmark: VGGs, MobileNetV2, ShuffleNets, ResNet-50.

The reference is RepDistiller (HobbitLong/RepDistiller, ``models/``; mdistiller's
``mdistiller/models/cifar/`` holds the same classes). Its code is not a dependency, so the
tests pin what a checkpoint exchange needs: exact parameter counts, the state-dict keys and
shapes (in order), and eval-mode logits equal to a forward written here from the reference's
published structure, which reads the weights by the reference's key names.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from torch import Tensor, nn

from lightning_kd.features import FeatureTaps
from lightning_kd.models import (
    VGG,
    CIFARBottleneckResNet,
    MobileNetV2,
    ShuffleNetV1,
    ShuffleNetV2,
    mobilenetv2,
    resnet8x4,
    resnet20,
    resnet32,
    resnet32x4,
    resnet50,
    resnet56,
    resnet110,
    shufflenetv1,
    shufflenetv2,
    vgg8,
    vgg11,
    vgg13,
    vgg16,
    vgg19,
    wrn_16_2,
    wrn_40_1,
    wrn_40_2,
)

Factory = Callable[..., Any]  # returns an nn.Module; Any lets tests read its attributes
ZOO: list[Factory] = [
    vgg8,
    vgg11,
    vgg13,
    vgg16,
    vgg19,
    mobilenetv2,
    shufflenetv1,
    shufflenetv2,
    resnet50,
]


def _name(value: object) -> str | None:
    """Test ids: a factory's name; pytest's default for other values."""
    return getattr(value, "__name__", None)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    ("factory", "with_100", "with_10"),
    [
        (vgg8, 3_965_028, 3_918_858),
        (vgg11, 9_277_284, 9_231_114),
        (vgg13, 9_462_180, 9_416_010),
        (vgg16, 14_774_436, 14_728_266),
        (vgg19, 20_086_692, 20_040_522),
        (mobilenetv2, 812_836, 697_546),
        (shufflenetv1, 949_258, 862_768),
        (shufflenetv2, 1_355_528, 1_263_278),
        (resnet50, 23_705_252, 23_520_842),
    ],
    ids=_name,
)
def test_parameter_counts_equal_the_reference(
    factory: Factory, with_100: int, with_10: int
) -> None:
    assert _count(factory(num_classes=100)) == with_100
    assert _count(factory(num_classes=10)) == with_10
    assert _count(factory()) == with_100  # 100 classes by default


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (resnet20, 278_324),
        (resnet32, 472_756),
        (resnet56, 861_620),
        (resnet110, 1_736_564),
        (resnet8x4, 1_233_540),
        (resnet32x4, 7_433_860),
        (wrn_16_2, 703_284),
        # RepDistiller's wrn_40_1 (models/wrn.py, 100 classes) has 569,780 parameters:
        # 432 stem + 28,032 + 107,232 + 427,456 in the stages + 128 final BN + 6,500 fc.
        (wrn_40_1, 569_780),
        (wrn_40_2, 2_255_156),
    ],
    ids=_name,
)
def test_existing_resnets_and_wrns_equal_the_reference_counts(
    factory: Factory, expected: int
) -> None:
    assert _count(factory(num_classes=100)) == expected


# ------------------------------------------------------------------- state-dict keys, shapes
#: RepDistiller's vgg8_bn state dict, in order (100 classes).
VGG8_KEYS = [
    *(
        f"block{i}.{key}"
        for i in range(5)
        for key in (
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
        )
    ),
    "classifier.weight",
    "classifier.bias",
]
MOBILENETV2_FIRST_KEYS = [
    "conv1.0.weight",
    "conv1.1.weight",
    "conv1.1.bias",
    "conv1.1.running_mean",
    "conv1.1.running_var",
    "conv1.1.num_batches_tracked",
    "blocks.0.0.conv.0.weight",
    "blocks.0.0.conv.1.weight",
    "blocks.0.0.conv.1.bias",
]
MOBILENETV2_LAST_KEYS = [
    "blocks.6.0.conv.7.num_batches_tracked",
    "conv2.0.weight",
    "conv2.1.weight",
    "conv2.1.bias",
    "conv2.1.running_mean",
    "conv2.1.running_var",
    "conv2.1.num_batches_tracked",
    "classifier.0.weight",
    "classifier.0.bias",
]

#: Number of state-dict entries and sha256 (first 16 hex digits) of the lines
#: ``f"{key} {tuple(shape)}"`` joined by newlines, in state-dict order, for RepDistiller's
#: networks at 100 classes (``vgg*_bn``, ``mobile_half``, ``ShuffleV1``, ``ShuffleV2``,
#: ``ResNet50`` from ``models/`` at commit eedab9d / b13aecc).
REFERENCE_STATE_DICTS: dict[str, tuple[int, str]] = {
    "vgg8": (37, "fdc773ff39915584"),
    "vgg11": (58, "0b9551ef3480a6ce"),
    "vgg13": (72, "bf74037647da8d81"),
    "vgg16": (93, "a8f839524d333b8f"),
    "vgg19": (114, "d9c51211c54c99e1"),
    "mobilenetv2": (320, "68a2c5f51e5cea07"),
    "shufflenetv1": (296, "a2ef493a832e640c"),
    "shufflenetv2": (338, "577996dd44e66b38"),
    "resnet50": (320, "d22cdf0e7420b1ea"),
}

#: A few entries of the reference state dicts with their shapes (100 classes).
REFERENCE_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "vgg8": {"block0.0.weight": (64, 3, 3, 3), "block4.0.weight": (512, 512, 3, 3)},
    "vgg13": {"block2.3.weight": (256, 256, 3, 3), "block2.4.running_var": (256,)},
    "mobilenetv2": {
        "conv1.0.weight": (16, 3, 3, 3),
        "blocks.0.0.conv.0.weight": (16, 16, 1, 1),  # the expansion-1 group keeps its 1x1
        "blocks.0.0.conv.3.weight": (16, 1, 3, 3),
        "blocks.1.0.conv.0.weight": (48, 8, 1, 1),
        "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "conv2.0.weight": (1280, 160, 1, 1),
        "classifier.0.weight": (100, 1280),
    },
    "shufflenetv1": {
        "conv1.weight": (24, 3, 1, 1),
        "layer1.0.conv1.weight": (54, 24, 1, 1),  # ungrouped right after the stem
        "layer1.0.conv3.weight": (216, 18, 1, 1),
        "layer1.1.conv1.weight": (60, 80, 1, 1),
        "layer3.3.conv3.weight": (960, 80, 1, 1),
        "linear.weight": (100, 960),
    },
    "shufflenetv2": {
        "layer1.0.conv1.weight": (24, 1, 3, 3),
        "layer1.0.conv5.weight": (58, 58, 1, 1),
        "layer1.1.conv2.weight": (58, 1, 3, 3),
        "layer3.3.conv3.weight": (232, 232, 1, 1),
        "conv2.weight": (1024, 464, 1, 1),
        "linear.weight": (100, 1024),
    },
    "resnet50": {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "linear.weight": (100, 2048),
    },
}


def _fingerprint(state: dict[str, Tensor]) -> str:
    text = "\n".join(f"{key} {tuple(value.shape)}" for key, value in state.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_vgg8_and_mobilenetv2_keys_are_the_references() -> None:
    assert list(vgg8().state_dict()) == VGG8_KEYS
    keys = list(mobilenetv2().state_dict())
    assert keys[: len(MOBILENETV2_FIRST_KEYS)] == MOBILENETV2_FIRST_KEYS
    assert keys[-len(MOBILENETV2_LAST_KEYS) :] == MOBILENETV2_LAST_KEYS
    # Only the first block of a stage projects; identity shortcuts have no state.
    resnet_keys = list(resnet50().state_dict())
    assert "layer1.0.shortcut.0.weight" in resnet_keys
    assert not any(".1.shortcut" in key for key in resnet_keys)


@pytest.mark.parametrize("factory", ZOO, ids=_name)
def test_state_dict_keys_and_shapes_equal_the_reference(factory: Factory) -> None:
    state = factory(num_classes=100).state_dict()
    length, digest = REFERENCE_STATE_DICTS[factory.__name__]
    for key, shape in REFERENCE_SHAPES.get(factory.__name__, {}).items():
        assert tuple(state[key].shape) == shape, key
    assert (len(state), _fingerprint(state)) == (length, digest)


# --------------------------------------------------- eval-mode forward against the reference
# Written from the published forward functions, reading weights by the reference's key names;
# strides and pooling come from the reference's structure, groups from the weight shapes.
def _bn(state: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.batch_norm(
        x,
        state[f"{name}.running_mean"],
        state[f"{name}.running_var"],
        state[f"{name}.weight"],
        state[f"{name}.bias"],
        training=False,
        eps=1e-5,
    )


def _conv(state: dict[str, Tensor], name: str, x: Tensor, stride: int = 1) -> Tensor:
    weight = state[f"{name}.weight"]
    groups = x.shape[1] // weight.shape[1]
    padding = weight.shape[-1] // 2
    return F.conv2d(x, weight, state.get(f"{name}.bias"), stride, padding, groups=groups)


def _shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


def _reference_vgg(state: dict[str, Tensor], x: Tensor) -> Tensor:
    height = x.shape[2]
    for stage in range(5):
        if stage == 4 and height == 64:
            x = F.max_pool2d(x, 2)
        convs = sorted(
            int(key.split(".")[1])
            for key in state
            if key.startswith(f"block{stage}.") and state[key].dim() == 4
        )
        for conv in convs:  # [conv, BN, ReLU] * n, the last ReLU applied outside the block
            x = F.relu(
                _bn(state, f"block{stage}.{conv + 1}", _conv(state, f"block{stage}.{conv}", x))
            )
        if stage < 3:
            x = F.max_pool2d(x, 2)
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return F.linear(x, state["classifier.weight"], state["classifier.bias"])


def _reference_mobilenetv2(state: dict[str, Tensor], x: Tensor) -> Tensor:
    x = F.relu(_bn(state, "conv1.1", _conv(state, "conv1.0", x, stride=2)))
    for group, stride in enumerate((1, 1, 2, 2, 1, 2, 1)):
        blocks = len({key.split(".")[2] for key in state if key.startswith(f"blocks.{group}.")})
        for i in range(blocks):
            p = f"blocks.{group}.{i}.conv"
            y = F.relu(_bn(state, f"{p}.1", _conv(state, f"{p}.0", x)))
            y = F.relu(_bn(state, f"{p}.4", _conv(state, f"{p}.3", y, stride if i == 0 else 1)))
            y = _bn(state, f"{p}.7", _conv(state, f"{p}.6", y))
            x = x + y if x.shape == y.shape else y  # stride 1 and unchanged width
    x = F.relu(_bn(state, "conv2.1", _conv(state, "conv2.0", x)))
    x = F.avg_pool2d(x, 2, ceil_mode=True).flatten(1)  # the reference's pool for 32x32 inputs
    return F.linear(x, state["classifier.0.weight"], state["classifier.0.bias"])


def _reference_shufflenetv1(state: dict[str, Tensor], x: Tensor) -> Tensor:
    x = F.relu(_bn(state, "bn1", _conv(state, "conv1", x)))
    for stage, units in ((1, 4), (2, 8), (3, 4)):
        for i in range(units):
            p = f"layer{stage}.{i}"
            stride = 2 if i == 0 else 1
            y = F.relu(_bn(state, f"{p}.bn1", _conv(state, f"{p}.conv1", x)))
            y = _shuffle(y, 1 if x.shape[1] == 24 else 3)
            y = F.relu(_bn(state, f"{p}.bn2", _conv(state, f"{p}.conv2", y, stride)))
            y = _bn(state, f"{p}.bn3", _conv(state, f"{p}.conv3", y))
            x = F.relu(torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1) if stride == 2 else y + x)
    x = F.avg_pool2d(x, 4).flatten(1)
    return F.linear(x, state["linear.weight"], state["linear.bias"])


def _reference_shufflenetv2(state: dict[str, Tensor], x: Tensor) -> Tensor:
    x = F.relu(_bn(state, "bn1", _conv(state, "conv1", x)))
    for stage, units in ((1, 3), (2, 7), (3, 3)):
        p = f"layer{stage}.0"
        left = _bn(state, f"{p}.bn1", _conv(state, f"{p}.conv1", x, stride=2))
        left = F.relu(_bn(state, f"{p}.bn2", _conv(state, f"{p}.conv2", left)))
        right = F.relu(_bn(state, f"{p}.bn3", _conv(state, f"{p}.conv3", x)))
        right = _bn(state, f"{p}.bn4", _conv(state, f"{p}.conv4", right, stride=2))
        right = F.relu(_bn(state, f"{p}.bn5", _conv(state, f"{p}.conv5", right)))
        x = _shuffle(torch.cat([left, right], 1), 2)
        for i in range(1, units + 1):
            p = f"layer{stage}.{i}"
            half = x.shape[1] // 2
            kept, y = x[:, :half], x[:, half:]
            y = F.relu(_bn(state, f"{p}.bn1", _conv(state, f"{p}.conv1", y)))
            y = _bn(state, f"{p}.bn2", _conv(state, f"{p}.conv2", y))
            y = F.relu(_bn(state, f"{p}.bn3", _conv(state, f"{p}.conv3", y)))
            x = _shuffle(torch.cat([kept, y], 1), 2)
    x = F.relu(_bn(state, "bn2", _conv(state, "conv2", x)))
    x = F.avg_pool2d(x, 4).flatten(1)
    return F.linear(x, state["linear.weight"], state["linear.bias"])


def _reference_resnet50(state: dict[str, Tensor], x: Tensor) -> Tensor:
    x = F.relu(_bn(state, "bn1", _conv(state, "conv1", x)))
    for stage, (blocks, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2)), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            s = stride if i == 0 else 1
            y = F.relu(_bn(state, f"{p}.bn1", _conv(state, f"{p}.conv1", x)))
            y = F.relu(_bn(state, f"{p}.bn2", _conv(state, f"{p}.conv2", y, s)))
            y = _bn(state, f"{p}.bn3", _conv(state, f"{p}.conv3", y))
            if f"{p}.shortcut.0.weight" in state:
                x = _bn(state, f"{p}.shortcut.1", _conv(state, f"{p}.shortcut.0", x, s))
            x = F.relu(y + x)
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return F.linear(x, state["linear.weight"], state["linear.bias"])


REFERENCE_FORWARDS: dict[str, Callable[[dict[str, Tensor], Tensor], Tensor]] = {
    "vgg8": _reference_vgg,
    "vgg11": _reference_vgg,
    "vgg13": _reference_vgg,
    "vgg16": _reference_vgg,
    "vgg19": _reference_vgg,
    "mobilenetv2": _reference_mobilenetv2,
    "shufflenetv1": _reference_shufflenetv1,
    "shufflenetv2": _reference_shufflenetv2,
    "resnet50": _reference_resnet50,
}


def _randomize_norms_(model: nn.Module) -> None:
    """Give every BN non-trivial statistics and affine parameters (eval mode then uses them)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.05)
                m.bias.normal_(0.0, 0.1)


@pytest.mark.parametrize("factory", ZOO, ids=_name)
def test_eval_logits_equal_the_reference_forward(factory: Factory) -> None:
    torch.manual_seed(0)
    model = factory(num_classes=10)
    _randomize_norms_(model)
    model = model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
        expected = REFERENCE_FORWARDS[factory.__name__](model.state_dict(), x)
    assert logits.shape == (2, 10)
    assert expected.abs().max() > 0.1  # a forward that died out would compare trivially
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)


def test_vgg_pools_once_more_for_64x64_inputs_as_the_reference() -> None:
    torch.manual_seed(0)
    model = vgg8(num_classes=10)
    _randomize_norms_(model)
    model = model.double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with FeatureTaps(model, ["block3", "block4"]) as taps, torch.no_grad():
        logits = model(x)
        shapes = {name: tuple(f.shape) for name, f in taps.pop().items()}
    assert shapes == {"block3": (2, 512, 8, 8), "block4": (2, 512, 4, 4)}
    torch.testing.assert_close(logits, _reference_vgg(model.state_dict(), x))


# ----------------------------------------------------------- shapes and headless backbones
@pytest.mark.parametrize("factory", ZOO, ids=_name)
def test_output_shapes_and_headless_features(factory: Factory) -> None:
    torch.manual_seed(0)
    headless = factory(num_classes=0).eval()
    classifier = factory(num_classes=10).eval()
    assert (headless.num_classes, classifier.num_classes) == (0, 10)
    assert headless.num_features == classifier.num_features
    head_keys = set(classifier.state_dict()) - set(headless.state_dict())
    assert len(head_keys) == 2  # only the classifier's weight and bias are gone
    assert _count(classifier) - _count(headless) == 10 * classifier.num_features + 10
    classifier.load_state_dict(headless.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = headless(x)
        logits = classifier(x)
    assert features.shape == (2, headless.num_features)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    head = "linear" if hasattr(classifier, "linear") else "classifier"  # the reference's names
    assert isinstance(getattr(headless, head), nn.Identity)
    torch.testing.assert_close(logits, getattr(classifier, head)(features))


# --------------------------------------------------------------------------- feature taps
#: The tap names each class docstring documents, with their shapes at a 32x32 input.
TAPS: dict[str, dict[str, tuple[int, ...]]] = {
    "vgg8": {
        "block0": (64, 32, 32),
        "block1": (128, 16, 16),
        "block2": (256, 8, 8),
        "block3": (512, 4, 4),
        "block4": (512, 4, 4),
        "block1.1": (128, 16, 16),  # pre-activations
        "block4.1": (512, 4, 4),
        "pool4": (512, 1, 1),
    },
    "vgg13": {
        "block1": (128, 16, 16),
        "block2": (256, 8, 8),
        "block3": (512, 4, 4),
        "block4": (512, 4, 4),
        "block2.4": (256, 8, 8),
        "block3.4": (512, 4, 4),
        "block4.4": (512, 4, 4),
    },
    "mobilenetv2": {
        "conv1": (16, 16, 16),
        "blocks.1": (12, 16, 16),
        "blocks.2": (16, 8, 8),
        "blocks.4": (48, 4, 4),
        "blocks.6": (160, 2, 2),
        "conv2": (1280, 2, 2),
    },
    "shufflenetv1": {
        "relu": (24, 32, 32),
        "bn1": (24, 32, 32),
        "layer1": (240, 16, 16),
        "layer2": (480, 8, 8),
        "layer3": (960, 4, 4),
    },
    "shufflenetv2": {
        "relu": (24, 32, 32),
        "bn1": (24, 32, 32),
        "layer1": (116, 16, 16),
        "layer2": (232, 8, 8),
        "layer3": (464, 4, 4),
        "bn2": (1024, 4, 4),
    },
    "resnet50": {
        "relu": (64, 32, 32),
        "bn1": (64, 32, 32),
        "layer1": (256, 32, 32),
        "layer2": (512, 16, 16),
        "layer3": (1024, 8, 8),
        "layer4": (2048, 4, 4),
    },
}
#: The classifier whose input is the pooled feature (CRD, RKD: ``capture="input"``).
POOLED = {
    "vgg8": ("classifier", 512),
    "vgg13": ("classifier", 512),
    "mobilenetv2": ("classifier", 1280),
    "shufflenetv1": ("linear", 960),
    "shufflenetv2": ("linear", 1024),
    "resnet50": ("linear", 2048),
}
#: Tapped outputs that are the ReLU of another tapped output (a documented pre-activation).
PRE_ACTIVATIONS = {
    "vgg8": {"block1": "block1.1", "block4": "block4.1"},
    "vgg13": {"block2": "block2.4", "block3": "block3.4", "block4": "block4.4"},
    "shufflenetv1": {"relu": "bn1"},
    "shufflenetv2": {"relu": "bn1"},
    "resnet50": {"relu": "bn1"},
}
TAPPED = [vgg8, vgg13, mobilenetv2, shufflenetv1, shufflenetv2, resnet50]


@pytest.mark.parametrize("factory", TAPPED, ids=_name)
@pytest.mark.parametrize("num_classes", [100, 0])
def test_documented_feature_taps_capture_their_shapes(factory: Factory, num_classes: int) -> None:
    torch.manual_seed(0)
    model = factory(num_classes=num_classes).eval()
    names = TAPS[factory.__name__]
    head, width = POOLED[factory.__name__]
    doc = type(model).__doc__ or ""
    for name in [*names, head]:
        assert f"``{name}``" in doc, f"{name!r} is not documented in {type(model).__name__}"
    x = torch.randn(2, 3, 32, 32)
    with (
        FeatureTaps(model, list(names)) as taps,
        FeatureTaps(model, [head], capture="input") as pooled,
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error")  # no tapped tensor may be modified in place later
        out = model(x)
        features = taps.pop()
        vector = pooled.pop()[head]
    assert {name: tuple(f.shape[1:]) for name, f in features.items()} == names
    assert vector.shape == (2, width) == (2, model.num_features)
    if num_classes == 0:
        torch.testing.assert_close(out, vector)
    else:
        assert out.shape == (2, num_classes)
    for post, pre in PRE_ACTIVATIONS.get(factory.__name__, {}).items():
        torch.testing.assert_close(features[post], features[pre].relu())


# ---------------------------------------------------------------- YAML classes and errors
@pytest.mark.parametrize(
    ("class_path", "init_args", "expected_params"),
    [
        ("lightning_kd.models.VGG", {"depth": 8}, 3_965_028),
        ("lightning_kd.models.VGG", {"depth": 13, "num_classes": 10}, 9_416_010),
        ("lightning_kd.models.MobileNetV2", {}, 812_836),
        ("lightning_kd.models.ShuffleNetV1", {"num_classes": 10}, 862_768),
        ("lightning_kd.models.ShuffleNetV2", {"net_size": 1}, 1_355_528),
        ("lightning_kd.models.CIFARBottleneckResNet", {"blocks": [3, 4, 6, 3]}, 23_705_252),
    ],
)
def test_classes_build_from_class_path_and_init_args(
    class_path: str, init_args: dict[str, object], expected_params: int
) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=nn.Module)
    config = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    model = parser.instantiate(config).model
    assert type(model).__name__ == class_path.rsplit(".", 1)[1]
    assert _count(model) == expected_params


def test_factories_build_the_benchmark_configurations() -> None:
    vggs = [vgg8(), vgg11(), vgg13(), vgg16(), vgg19()]
    assert [vgg.depth for vgg in vggs] == [8, 11, 13, 16, 19]
    # [conv, BN, ReLU] per conv: vgg8 has one conv per stage, vgg19 four in block2 ... block4.
    assert [len(vgg.block2) for vgg in vggs] == [3, 6, 6, 9, 12]
    assert isinstance(vggs[0].pool3, nn.MaxPool2d)  # present (for 64x64 inputs), no state
    mobile = mobilenetv2()
    assert (mobile.width_mult, mobile.expansion) == (0.5, 6)
    assert [len(list(group.children())) for group in mobile.blocks] == [1, 2, 3, 4, 3, 3, 1]
    v1, v2 = shufflenetv1(), shufflenetv2()
    assert [len(v1.layer1), len(v1.layer2), len(v1.layer3)] == [4, 8, 4]
    # A down-sampling unit, then 3, 7, 3 basic units.
    assert [len(v2.layer1), len(v2.layer2), len(v2.layer3)] == [4, 8, 4]
    resnet = resnet50()
    assert resnet.blocks == (3, 4, 6, 3)
    assert [len(resnet.layer1), len(resnet.layer2), len(resnet.layer3)] == [3, 4, 6]


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"VGG depth must be one of \[8, 11, 13, 16, 19\], got 12"):
        VGG(depth=12)
    for build in (
        lambda: VGG(num_classes=-1),
        lambda: MobileNetV2(num_classes=-1),
        lambda: ShuffleNetV1(num_classes=-1),
        lambda: ShuffleNetV2(num_classes=-1),
        lambda: CIFARBottleneckResNet(num_classes=-1),
    ):
        with pytest.raises(
            ValueError, match=r"num_classes must be >= 0 \(0: no classifier\), got -1"
        ):
            build()
    with pytest.raises(ValueError, match=r"width_mult must be >= 1/16.*got 0.0"):
        MobileNetV2(width_mult=0.0)
    with pytest.raises(ValueError, match="expansion must be >= 1, got 0"):
        MobileNetV2(expansion=0)
    with pytest.raises(ValueError, match=r"net_size must be one of \[0.2, .*2.0\], got 0.7"):
        ShuffleNetV2(net_size=0.7)
    with pytest.raises(ValueError, match=r"blocks must be four positive ints, got \(3, 4\)"):
        CIFARBottleneckResNet(blocks=(3, 4))  # type: ignore[arg-type]


def test_initialization_follows_the_reference() -> None:
    torch.manual_seed(0)
    vgg, mobile = vgg8(), mobilenetv2()
    for model, head in ((vgg, "classifier"), (mobile, "classifier.0")):
        assert model.get_parameter(f"{head}.weight").std().item() == pytest.approx(0.01, rel=0.05)
        assert not model.get_parameter(f"{head}.bias").any()
    # Kaiming-normal convolutions with fan_out: 512 * 9 for VGG's 3x3, 2048 for a 1x1 to 2048.
    weight = vgg.get_parameter("block4.0.weight")
    assert weight.std().item() == pytest.approx((2.0 / (512 * 9)) ** 0.5, rel=0.02)
    assert not vgg.get_parameter("block4.0.bias").any()
    weight = resnet50().get_parameter("layer4.0.conv3.weight")
    assert weight.std().item() == pytest.approx((2.0 / 2048) ** 0.5, rel=0.02)
    # The ShuffleNets keep PyTorch's default (Kaiming-uniform, a = sqrt(5)) convolutions:
    # uniform in +-1 / sqrt(fan_in), fan_in = 232 for this 1x1 conv.
    weight = shufflenetv2().get_parameter("layer3.1.conv1.weight")
    assert weight.abs().max().item() <= 232**-0.5
    assert weight.std().item() == pytest.approx(232**-0.5 / 3**0.5, rel=0.05)


@pytest.mark.parametrize("factory", [shufflenetv1, shufflenetv2, mobilenetv2], ids=_name)
def test_channels_last_and_a_training_step(factory: Factory) -> None:
    torch.manual_seed(0)
    model = factory(num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model.eval()(x)
        model_cl = model.to(memory_format=torch.channels_last)
        last = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(last, reference, rtol=1e-4, atol=1e-5)
    model.train()
    loss = F.cross_entropy(model(x), torch.arange(4))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
