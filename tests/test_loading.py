"""Tests for load_weights and TorchvisionModel(weights_path=...)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from torch import Tensor, nn

from lightning_kd.models import TorchvisionModel, load_weights, resnet8, resnet8x4, resnet14


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic a distinctive value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator).abs() + 0.1)
            else:
                tensor.fill_(7)
    return model


def _assert_same_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _prefixed(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


# ----------------------------------------------------------------------------- round trips
def test_plain_state_dict_round_trip(tmp_path: Path) -> None:
    source = _trained_like(resnet8(num_classes=10)).eval()
    path = tmp_path / "resnet8.pt"
    torch.save(source.state_dict(), path)

    target = resnet8(num_classes=10).eval()
    assert load_weights(target, path) is target
    _assert_same_state(target.state_dict(), source.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(target(x), source(x))


def test_ddp_module_prefix_is_stripped(tmp_path: Path) -> None:
    source = _trained_like(resnet8(num_classes=10))
    path = tmp_path / "ddp.pt"
    torch.save(_prefixed(source.state_dict(), "module."), path)
    target = load_weights(resnet8(num_classes=10), str(path))
    _assert_same_state(target.state_dict(), source.state_dict())


def test_lightning_classifier_checkpoint_infers_model_prefix(tmp_path: Path) -> None:
    source = _trained_like(resnet8(num_classes=10))
    path = tmp_path / "classifier.ckpt"
    checkpoint = {
        "state_dict": _prefixed(source.state_dict(), "model."),
        "hyper_parameters": {"lr": 0.1, "num_classes": 10, "milestones": [30, 60]},
        "epoch": 3,
        "global_step": 1200,
    }
    torch.save(checkpoint, path)
    target = load_weights(resnet8(num_classes=10), path)
    _assert_same_state(target.state_dict(), source.state_dict())


def test_lightning_kd_checkpoint_infers_student_prefix(tmp_path: Path) -> None:
    student = _trained_like(resnet8(num_classes=10), seed=1)
    teacher = _trained_like(resnet14(num_classes=10), seed=2)
    path = tmp_path / "kd.ckpt"
    state = {
        **_prefixed(student.state_dict(), "student."),
        **_prefixed(teacher.state_dict(), "teacher."),
    }
    torch.save({"state_dict": state, "hyper_parameters": {"temperature": 4.0}}, path)

    loaded_student = load_weights(resnet8(num_classes=10), path)
    _assert_same_state(loaded_student.state_dict(), student.state_dict())
    # The teacher is taken out with an explicit prefix.
    loaded_teacher = load_weights(resnet14(num_classes=10), path, prefix="teacher.")
    _assert_same_state(loaded_teacher.state_dict(), teacher.state_dict())


def test_lightning_checkpoint_with_non_tensor_hyperparameters_falls_back(tmp_path: Path) -> None:
    source = _trained_like(resnet8(num_classes=10))
    path = tmp_path / "namespace.ckpt"
    checkpoint = {
        "pytorch-lightning_version": L.__version__,
        "state_dict": _prefixed(source.state_dict(), "model."),
        "hyper_parameters": {"data_dir": Path("/data")},  # refused by weights_only=True
    }
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    target = load_weights(resnet8(num_classes=10), path)
    _assert_same_state(target.state_dict(), source.state_dict())


def test_unsafe_file_that_is_not_a_lightning_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": resnet8().state_dict(), "data_dir": Path("/data")}, path)
    with pytest.raises(ValueError, match=r"weights_only=True.*not a Lightning checkpoint"):
        load_weights(resnet8(), path)


class _Classifier(L.LightningModule):
    """Minimal LightningModule with the ``model`` attribute layout and a Path hyperparameter."""

    def __init__(self, model: nn.Module, data_dir: Path) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_checkpoint_written_by_a_lightning_trainer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _Classifier(resnet8(num_classes=4), data_dir=tmp_path)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4))
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    path = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(path)

    target = load_weights(resnet8(num_classes=4), path)
    _assert_same_state(target.state_dict(), module.model.state_dict())


def test_torchvision_weights_file_into_torchvision_model(tmp_path: Path) -> None:
    source = _trained_like(torchvision.models.squeezenet1_1(num_classes=10))
    path = tmp_path / "squeezenet1_1.pth"
    torch.save(source.state_dict(), path)  # keys like "features.0.weight", no "net."

    model = load_weights(TorchvisionModel("squeezenet1_1", num_classes=10), path)
    assert isinstance(model, TorchvisionModel)
    _assert_same_state(model.net.state_dict(), source.state_dict())
    # The wrapper's own state dict ("net." keys) loads as well.
    wrapper_path = tmp_path / "wrapper.pt"
    torch.save(model.state_dict(), wrapper_path)
    again = load_weights(TorchvisionModel("squeezenet1_1", num_classes=10), wrapper_path)
    _assert_same_state(again.state_dict(), model.state_dict())


def test_torchvision_model_weights_path(tmp_path: Path) -> None:
    source = _trained_like(torchvision.models.squeezenet1_1(num_classes=10))
    path = tmp_path / "squeezenet1_1.pth"
    torch.save(source.state_dict(), path)
    model = TorchvisionModel("squeezenet1_1", num_classes=10, weights_path=str(path))
    _assert_same_state(model.net.state_dict(), source.state_dict())


def test_torchvision_model_weights_path_with_other_class_count(tmp_path: Path) -> None:
    # An "ImageNet" file with 1000 classes reused for 10 classes: the backbone loads, the
    # classifier (a 1x1 conv in SqueezeNet) keeps its fresh initialization, with a warning.
    source = _trained_like(torchvision.models.squeezenet1_1(num_classes=1000))
    path = tmp_path / "squeezenet1_1_imagenet.pth"
    torch.save(source.state_dict(), path)
    with pytest.warns(UserWarning, match="checkpoint classifier has 1000 classes, model has 10"):
        model = TorchvisionModel("squeezenet1_1", num_classes=10, weights_path=str(path))

    loaded, expected = model.net.state_dict(), source.state_dict()
    head = {"classifier.1.weight", "classifier.1.bias"}
    for key in loaded.keys() - head:
        assert torch.equal(loaded[key], expected[key]), key
    assert loaded["classifier.1.weight"].shape == (10, 512, 1, 1)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_non_strict_loads_the_overlap_only(tmp_path: Path) -> None:
    source = _trained_like(resnet8(num_classes=10))
    path = tmp_path / "resnet8.pt"
    torch.save(source.state_dict(), path)
    target = resnet14(num_classes=10)
    untouched = target.layer1[1].conv1.weight.clone()

    load_weights(target, path, strict=False)
    assert torch.equal(target.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert torch.equal(target.fc.weight, source.fc.weight)
    assert torch.equal(target.layer1[1].conv1.weight, untouched)


# ----------------------------------------------------------------------------- errors
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_weights(resnet8(), path)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        load_weights(resnet8(), tmp_path)


def test_missing_keys_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "resnet8.pt"
    torch.save(resnet8(num_classes=10).state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_weights(resnet14(num_classes=10), path)
    message = str(info.value)
    assert str(path) in message and "CIFARResNet" in message
    # resnet14 has one more block per stage than resnet8.
    n_missing = len(resnet14().state_dict()) - len(resnet8().state_dict())
    assert f"{n_missing} missing key(s)" in message
    assert "'layer1.1.bn1.bias'" in message
    assert message.count("'layer") == 5  # at most five keys are listed
    assert "unexpected" not in message


def test_unexpected_keys_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "resnet14.pt"
    torch.save(resnet14(num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected key\(s\).*'layer1\.1\.bn1\.bias'"):
        load_weights(resnet8(num_classes=10), path)


def test_class_count_mismatch_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cifar100.pt"
    torch.save(resnet8(num_classes=100).state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_weights(resnet8(num_classes=10), path)
    message = str(info.value)
    assert "checkpoint classifier has 100 classes, model has 10" in message
    assert "'fc.weight'" in message and "'fc.bias'" in message
    assert str(path) in message
    # strict=False does not make incompatible shapes loadable.
    with pytest.raises(ValueError, match="checkpoint classifier has 100 classes, model has 10"):
        load_weights(resnet8(num_classes=10), path, strict=False)


def test_class_count_mismatch_in_lightning_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "cifar100.ckpt"
    state = _prefixed(resnet8(num_classes=100).state_dict(), "model.")
    torch.save({"state_dict": state, "hyper_parameters": {"num_classes": 100}}, path)
    with pytest.raises(ValueError, match=r"\(prefix 'model\.'\).*\n.*100 classes, model has 10"):
        load_weights(resnet8(num_classes=10), path)


def test_other_shape_mismatches_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "resnet8x4.pt"
    torch.save(resnet8x4(num_classes=10).state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_weights(resnet8(num_classes=10), path)
    message = str(info.value)
    assert (
        "shape mismatch for 'conv1.weight': checkpoint (32, 3, 3, 3), model (16, 3, 3, 3)"
        in message
    )
    assert "shape mismatch for 'fc.weight': checkpoint (10, 256), model (10, 64)" in message
    assert "classifier has" not in message


def test_prefix_that_cannot_be_inferred(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    state = _prefixed(resnet8().state_dict(), "backbone.")
    torch.save({"state_dict": state, "hyper_parameters": {}}, path)
    with pytest.raises(ValueError, match=r"'model\.', 'student\.'.*\['backbone'\].*prefix="):
        load_weights(resnet8(), path)
    # ... but naming it works.
    load_weights(resnet8(), path, prefix="backbone.")


def test_explicit_prefix_that_is_absent(tmp_path: Path) -> None:
    path = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": _prefixed(resnet8().state_dict(), "model.")}, path)
    with pytest.raises(ValueError, match=r"prefix 'student\.'.*\['model'\]"):
        load_weights(resnet8(), path, prefix="student.")


def test_file_without_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(TypeError, match=r"type list; expected a Lightning checkpoint"):
        load_weights(resnet8(), path)
    path = tmp_path / "nested.pt"
    torch.save({"weights": resnet8().state_dict(), "epoch": 3}, path)
    with pytest.raises(TypeError, match=r"non-tensor entries \['weights', 'epoch'\]"):
        load_weights(resnet8(), path)
