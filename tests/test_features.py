"""Tests for :class:`lightning_kd.features.FeatureTaps` and :func:`feature_shapes`."""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Iterator

import pytest
import torch
import torchvision
from torch import Tensor, nn

from lightning_kd.features import FeatureTaps, feature_shapes
from lightning_kd.models import CIFARResNet, TorchvisionModel


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, which stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _resnet(seed: int = 0) -> CIFARResNet:
    """A resnet8 in eval mode whose BN statistics are not the identity defaults."""
    torch.manual_seed(seed)
    model = CIFARResNet(depth=8, num_classes=10)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 8, 8))  # move the BN running statistics
    return model.eval()


def _images(batch: int = 2, size: int = 8, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _Branchy(nn.Module):
    """``shared`` is applied twice, ``unused`` never, ``lstm`` returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.lstm = nn.LSTM(4, 3, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, 4)
        h = self.shared(self.shared(x))
        out, _ = self.lstm(h)
        return out


# ---- values --------------------------------------------------------------------------------


def test_features_and_logits_match_manual_forward() -> None:
    model, x = _resnet(), _images()
    names = ["layer3", "layer1", "fc", "layer2", "conv1"]  # not in execution order
    with FeatureTaps(model, names) as taps:
        logits = model(x)
        feats = taps.pop()

    assert list(feats) == names
    with torch.no_grad():
        c1 = model.conv1(x)
        x1 = model.layer1(model.relu(model.bn1(model.conv1(x))))
        x2 = model.layer2(x1)
        x3 = model.layer3(x2)
        manual_logits = model.fc(model.avgpool(x3).flatten(1))
    torch.testing.assert_close(feats["conv1"], c1)
    torch.testing.assert_close(feats["layer1"], x1)
    torch.testing.assert_close(feats["layer2"], x2)
    torch.testing.assert_close(feats["layer3"], x3)
    torch.testing.assert_close(feats["fc"], logits)
    torch.testing.assert_close(logits, manual_logits)
    assert feats["layer3"].shape == (2, 64, 2, 2)


def test_input_capture_equals_previous_output() -> None:
    model, x = _resnet(), _images()
    with (
        FeatureTaps(model, ["layer1", "layer3"]) as outputs,
        FeatureTaps(model, ["layer2", "fc"], capture="input") as inputs,
    ):
        model(x)
        out, inp = outputs.pop(), inputs.pop()
    torch.testing.assert_close(inp["layer2"], out["layer1"], rtol=0, atol=0)
    torch.testing.assert_close(inp["fc"], model.avgpool(out["layer3"]).flatten(1), rtol=0, atol=0)
    assert inp["fc"].shape == (2, 64)


@pytest.fixture(scope="module")
def resnet18() -> TorchvisionModel:
    torch.manual_seed(0)
    return TorchvisionModel("resnet18", num_classes=10).eval()


def test_nested_names_torchvision_resnet(resnet18: TorchvisionModel) -> None:
    model = resnet18
    x = _images(size=32)
    with FeatureTaps(model, ["net.layer2", "net.fc"]) as taps:
        logits = model(x)
        feats = taps.pop()
    net = model.net
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        manual = net.layer2(net.layer1(h))
    assert feats["net.layer2"].shape == (2, 128, 4, 4)
    torch.testing.assert_close(feats["net.layer2"], manual)
    torch.testing.assert_close(feats["net.fc"], logits)


def test_nested_names_mobilenet() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = _images(size=32)
    with FeatureTaps(model, ["features.6"]) as taps:
        model(x)
        feats = taps.pop()
    with torch.no_grad():
        manual = model.features[:7](x)
    assert feats["features.6"].shape == manual.shape == (2, 40, 2, 2)
    torch.testing.assert_close(feats["features.6"], manual)


def test_tuple_output_and_repeated_calls() -> None:
    torch.manual_seed(0)
    model = _Branchy()
    x = torch.randn(2, 5, 4)
    with FeatureTaps(model, ["shared", "lstm"]) as taps:
        out = model(x)
        feats = taps.pop()
    with torch.no_grad():
        once = model.shared(x)
        twice = model.shared(once)
    torch.testing.assert_close(feats["shared"], twice)  # the last of the two calls
    torch.testing.assert_close(feats["lstm"], out)  # first element of (output, (h, c))
    assert feats["lstm"].shape == (2, 5, 3)


def test_root_module_by_empty_name() -> None:
    model, x = _resnet(), _images()
    with FeatureTaps(model, [""]) as taps:
        logits = model(x)
        assert taps.pop()[""] is logits


# ---- errors --------------------------------------------------------------------------------


def test_unknown_name_lists_closest_names() -> None:
    model = _resnet()
    n_modules = len(list(model.named_modules())) - 1
    with pytest.raises(ValueError, match="no submodule named 'layer4'") as info:
        FeatureTaps(model, ["layer1", "layer4"])
    message = str(info.value)
    assert f"({n_modules} named submodules)" in message
    assert "closest names: ['layer3', 'layer2', 'layer1', 'layer3.0', 'layer2.0']" in message
    assert _no_hooks(model)  # nothing was registered for the valid name either


def test_unknown_name_suggests_nested_path(resnet18: TorchvisionModel) -> None:
    with pytest.raises(ValueError, match=r"closest names: \['net.layer3'"):
        FeatureTaps(resnet18, ["layer3"])


def test_unknown_name_without_close_match_lists_top_level() -> None:
    with pytest.raises(ValueError, match=r"top-level names: \['conv1', 'bn1', 'relu', 'layer1'"):
        FeatureTaps(_resnet(), ["zzzzzz"])


def test_bad_arguments() -> None:
    model = _resnet()
    with pytest.raises(ValueError, match=r"more than once.*'layer1'"):
        FeatureTaps(model, ["layer1", "layer2", "layer1"])
    with pytest.raises(TypeError, match=r"got the string 'layer1'"):
        FeatureTaps(model, "layer1")
    with pytest.raises(ValueError, match="capture must be 'output' or 'input', got 'grad'"):
        FeatureTaps(model, ["layer1"], capture="grad")  # type: ignore[arg-type]
    assert _no_hooks(model)


def test_module_not_called_raises_naming_it() -> None:
    model = _Branchy()
    with FeatureTaps(model, ["shared", "unused"]) as taps:
        model(torch.randn(2, 5, 4))
        with pytest.raises(RuntimeError, match=r"\['unused'\].*captured: \['shared'\]"):
            taps.pop()
        assert len(taps._features) == 0  # emptied even though it raised


def test_pop_without_forward_raises() -> None:
    model = _resnet()
    with FeatureTaps(model, ["layer1"]) as taps:
        model(_images())
        assert set(taps.pop()) == {"layer1"}
        with pytest.raises(RuntimeError, match=r"\['layer1'\].*since the last pop"):
            taps.pop()


def test_non_tensor_output_raises_type_error() -> None:
    class Pair(nn.Module):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"x": x}

    model = nn.Sequential(Pair())
    with (
        FeatureTaps(model, ["0"]) as taps,
        pytest.raises(TypeError, match=r"output of '0'.*got dict"),
    ):
        model(torch.zeros(1))
    assert taps.names == ("0",)


# ---- hook lifetime and memory --------------------------------------------------------------


def test_remove_leaves_no_hooks_and_is_idempotent() -> None:
    model = _resnet()
    taps = FeatureTaps(model, ["layer1", "layer2.0.conv1"])
    in_taps = FeatureTaps(model, ["fc"], capture="input")
    assert len(model.layer1._forward_hooks) == 1
    assert len(model.fc._forward_pre_hooks) == 1
    taps.remove()
    taps.remove()
    in_taps.remove()
    assert _no_hooks(model)
    model(_images())
    assert taps._features == {} and in_taps._features == {}


def test_context_manager_removes_hooks_on_error() -> None:
    model = _resnet()
    with pytest.raises(KeyError), FeatureTaps(model, ["layer1", "fc"]):
        assert len(model.fc._forward_hooks) == 1
        raise KeyError("boom")
    assert _no_hooks(model)


def test_empty_names() -> None:
    model = _resnet()
    with FeatureTaps(model, []) as taps:
        assert _no_hooks(model)
        model(_images())
        assert taps.pop() == {}


def test_clear_drops_captured_tensors() -> None:
    model = _resnet()
    with FeatureTaps(model, ["layer1"]) as taps:
        model(_images())
        taps.clear()
        assert taps._features == {}
        with pytest.raises(RuntimeError, match="layer1"):
            taps.pop()


def test_no_tensor_outlives_a_step() -> None:
    torch.manual_seed(0)
    model = CIFARResNet(depth=8, num_classes=10).train()
    x, y = _images(batch=2, size=4), torch.tensor([0, 1])
    refs: list[weakref.ref[Tensor]] = []
    with FeatureTaps(model, ["layer1", "layer2", "layer3"]) as taps:
        for _ in range(50):
            logits = model(x)
            feats = taps.pop()
            assert len(taps._features) == 0 and len(taps._versions) == 0
            loss = nn.functional.cross_entropy(logits, y) + feats["layer2"].square().mean()
            loss.backward()
            refs += [weakref.ref(f) for f in feats.values()]
            del logits, feats, loss
            model.zero_grad(set_to_none=True)
        assert not any(isinstance(v, Tensor) for v in vars(taps).values())
    assert len(refs) == 150
    assert all(ref() is None for ref in refs)  # every captured tensor was freed


# ---- autograd, autocast, inference mode ----------------------------------------------------


def test_gradients_flow_through_captured_features() -> None:
    model, x = _resnet(), _images()
    reference = copy.deepcopy(model)
    with FeatureTaps(model, ["layer1"]) as taps:
        model(x)
        taps.pop()["layer1"].square().mean().backward()
    x1 = reference.layer1(reference.relu(reference.bn1(reference.conv1(x))))
    x1.square().mean().backward()

    assert model.conv1.weight.grad is not None
    assert model.conv1.weight.grad.abs().sum() > 0
    torch.testing.assert_close(model.conv1.weight.grad, reference.conv1.weight.grad)
    name = "layer1.0.conv2.weight"
    torch.testing.assert_close(model.get_parameter(name).grad, reference.get_parameter(name).grad)
    assert model.get_parameter("layer2.0.conv1.weight").grad is None  # downstream of the feature
    assert model.fc.weight.grad is None


def test_bf16_autocast_captures_bf16() -> None:
    model, x = _resnet(), _images()
    with FeatureTaps(model, ["conv1", "layer2", "fc"]) as taps:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        feats = taps.pop()
        with torch.no_grad():
            model(x)
        full = taps.pop()
    assert {f.dtype for f in feats.values()} == {torch.bfloat16}
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(feats["layer2"].float(), full["layer2"], atol=0.1, rtol=0.05)


def test_inference_mode_teacher() -> None:
    model, x = _resnet(), _images()
    with FeatureTaps(model, ["layer2"]) as taps:
        with torch.inference_mode():
            model(x)
        feats = taps.pop()
        with torch.no_grad():
            model(x)
        reference = taps.pop()
    assert feats["layer2"].is_inference()
    torch.testing.assert_close(feats["layer2"], reference["layer2"], rtol=0, atol=0)


def test_in_place_modification_warns() -> None:
    model, x = _resnet(), _images()
    # bn1's output is overwritten by the stem's ReLU(inplace=True).
    with FeatureTaps(model, ["bn1"]) as taps:
        model(x)
        with pytest.warns(UserWarning, match="output of 'bn1' was modified in place"):
            feats = taps.pop()
    assert feats["bn1"].min() == 0  # post-ReLU values
    with FeatureTaps(model, ["relu"], capture="input") as taps:
        model(x)
        with pytest.warns(UserWarning, match="input of 'relu' was modified in place"):
            taps.pop()
    with FeatureTaps(model, ["conv1", "layer1", "layer2"]) as taps:
        model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            taps.pop()


# ---- feature_shapes ------------------------------------------------------------------------


def test_feature_shapes_values() -> None:
    model = CIFARResNet(depth=8, num_classes=10)
    shapes = feature_shapes(model, ["fc", "layer1", "layer2", "layer3"], torch.zeros(2, 3, 32, 32))
    assert shapes == {
        "fc": torch.Size([2, 10]),
        "layer1": torch.Size([2, 16, 32, 32]),
        "layer2": torch.Size([2, 32, 16, 16]),
        "layer3": torch.Size([2, 64, 8, 8]),
    }
    inputs = feature_shapes(model, ["fc"], torch.zeros(3, 3, 32, 32), capture="input")
    assert inputs == {"fc": torch.Size([3, 64])}
    assert _no_hooks(model)


def test_feature_shapes_restores_modes_and_buffers() -> None:
    model = _resnet().train()
    model.layer2.eval()  # a mixed-mode model must come back mixed
    modes = {name: m.training for name, m in model.named_modules()}
    buffers = {k: v.clone() for k, v in model.state_dict().items()}

    feature_shapes(model, ["layer3"], _images(batch=3))

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.training and not model.get_submodule("layer2.0.bn1").training
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key
    assert _no_hooks(model)


def test_feature_shapes_restores_modes_when_forward_fails() -> None:
    model = _resnet().train()
    with pytest.raises(RuntimeError):
        feature_shapes(model, ["layer1"], torch.zeros(2, 5, 8, 8))  # wrong channel count
    assert all(m.training for m in model.modules())
    assert _no_hooks(model)
    with pytest.raises(ValueError, match="layer9"):
        feature_shapes(model, ["layer9"], _images())
    assert all(m.training for m in model.modules())
