"""TimmModel: timm networks by name, offline weights, feature taps, KD steps and the CLI."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from tiny import TinyData, trainer
from torch import Tensor, nn

from lightning_kd.cli import build_cli
from lightning_kd.features import FeatureTaps, feature_shapes
from lightning_kd.models import TimmModel
from lightning_kd.modules import FeatureKDModule, HintTerm, KDModule, RKDTerm

# A ViT small enough for CPU tests: 32x32 images in 4x4 patches (64 tokens), 2 blocks.
VIT = {"img_size": 32, "patch_size": 4, "depth": 2}


def _vit(num_classes: int = 4) -> TimmModel:
    return TimmModel("vit_tiny_patch16_224", num_classes=num_classes, **VIT)


class TinyData32(TinyData):
    """TinyData at 32x32, the input size the ViT is built for: one batch of 4 per epoch."""

    def __init__(self) -> None:
        super().__init__(n=4, batch_size=4)
        self.x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt (a weights or config download) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a network look-up or connection was attempted: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# ----------------------------------------------------------------------------- building
def test_cnn_logits_and_pooled_features() -> None:
    torch.manual_seed(0)
    model = TimmModel("resnet10t", num_classes=10).eval()
    assert isinstance(model.net, timm.models.ResNet)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    headless = TimmModel("resnet10t", num_classes=0).eval()
    assert headless.num_features == model.num_features == model.net.fc.in_features == 512
    assert isinstance(headless.net.fc, nn.Identity)
    assert headless(x).shape == (2, 512)
    # MobileNetV3 pools before a 1x1 head conv: its classifier sees 1024 features, not 288.
    mobile = TimmModel("mobilenetv3_small_050", num_classes=0).eval()
    assert mobile.num_features == 1024 and mobile.net.num_features == 288
    assert mobile(x).shape == (2, 1024)


def test_vit_small_config() -> None:
    torch.manual_seed(0)
    model = _vit(num_classes=10).eval()
    assert len(model.net.blocks) == 2 and model.net.patch_embed.num_patches == 64
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    features = TimmModel("vit_tiny_patch16_224", num_classes=0, **VIT).eval()(x)
    assert features.shape == (2, model.num_features) == (2, 192)


def test_unknown_names_list_close_matches() -> None:
    expected = r"unknown timm model 'resnet19'; close matches: \[.*'resnet18'"
    with pytest.raises(ValueError, match=expected):
        TimmModel("resnet19", num_classes=10)
    with pytest.raises(ValueError, match=r"'vit_tiny_patch16_225'.*'vit_tiny_patch16_224'"):
        TimmModel("vit_tiny_patch16_225", num_classes=10)
    # A pretrained tag is accepted (building it downloads nothing) ...
    assert TimmModel("resnet10t.c3_in1k", num_classes=3).num_classes == 3
    # ... but a Hub name would fetch its configuration.
    with pytest.raises(ValueError, match=r"Hugging Face Hub name.*pretrained=True"):
        TimmModel("hf-hub:timm/resnet10t.c3_in1k", num_classes=3)


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"num_classes must be >= 0 \(0: no classifier\), got -1"):
        TimmModel("resnet10t", num_classes=-1)
    with pytest.raises(ValueError, match=r"either pretrained=True .* or checkpoint_path"):
        TimmModel("resnet10t", num_classes=3, pretrained=True, checkpoint_path="w.pth")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        TimmModel("resnet10t", num_classes=3, checkpoint_path=str(tmp_path / "nowhere.pth"))


# ----------------------------------------------------------------------------- local weights
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_path_loads_a_timm_state_dict(suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    path = tmp_path / f"model{suffix}"
    state = source.state_dict()  # timm's own keys, no "net." prefix
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)

    model = TimmModel("mobilenetv3_small_050", num_classes=10, checkpoint_path=str(path)).eval()
    for key, value in state.items():
        assert torch.equal(model.net.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), source(x))


def test_checkpoint_path_with_another_class_count_or_no_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("mobilenetv3_small_050", num_classes=1000).eval()
    path = tmp_path / "imagenet.pth"
    torch.save(source.state_dict(), path)

    with pytest.warns(UserWarning, match="checkpoint classifier has 1000 classes, model has 10"):
        model = TimmModel("mobilenetv3_small_050", num_classes=10, checkpoint_path=str(path))
    assert model.net.classifier.weight.shape == (10, 1024)
    assert torch.equal(model.net.conv_head.weight, source.conv_head.weight)

    headless = TimmModel("mobilenetv3_small_050", num_classes=0, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = source.forward_head(source.forward_features(x), pre_logits=True)
    torch.testing.assert_close(headless(x), expected)


# ----------------------------------------------------------------------------- feature taps
def test_taps_use_timm_module_names_under_net() -> None:
    torch.manual_seed(0)
    model = TimmModel("resnet10t", num_classes=4)
    names = ["net." + info["module"] for info in model.net.feature_info]
    assert names == ["net.act1", "net.layer1", "net.layer2", "net.layer3", "net.layer4"]
    shapes = feature_shapes(model, names, torch.randn(2, 3, 32, 32))
    assert shapes["net.layer3"] == (2, 256, 2, 2)
    vit = _vit()
    with FeatureTaps(vit, ["net.blocks.1", "net.fc_norm"]) as taps:
        vit(torch.randn(2, 3, 32, 32))
        features = taps.pop()
    assert features["net.blocks.1"].shape == (2, 65, 192)  # class token + 64 patches
    assert features["net.fc_norm"].shape == (2, 192)  # the pooled class token


# ----------------------------------------------------------------------------- training steps
def test_kd_step_vit_student_cnn_teacher() -> None:
    torch.manual_seed(0)
    student, teacher = _vit(), TimmModel("resnet10t", num_classes=4)
    module = KDModule(student, teacher, temperature=4.0, alpha=0.5)
    student_before, teacher_before = _snapshot(student), _snapshot(teacher)
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=TinyData32())
    assert module.trainer.global_step == 1
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert "net.head.weight" in changed and "net.patch_embed.proj.weight" in changed
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


def test_feature_kd_step_on_timm_module_names() -> None:
    torch.manual_seed(0)
    student = TimmModel("resnet10t", num_classes=4)
    teacher = TimmModel("mobilenetv3_small_050", num_classes=4)
    module = FeatureKDModule(
        student,
        teacher,
        terms=[
            HintTerm("net.layer3", "net.blocks.3"),  # (B, 256, 2, 2) -> (B, 24, 2, 2)
            RKDTerm("net.fc", "net.classifier"),  # the classifiers' inputs (B, 512), (B, 1024)
        ],
    )
    hint = module.distillation_terms[0]
    projector = copy.deepcopy(hint.projector)
    teacher_before = _snapshot(teacher)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(module, datamodule=TinyData32())
    for name in ("loss_hint", "loss_rkd"):
        assert torch.isfinite(t.logged_metrics[f"train/{name}_epoch"]), name
    assert any(
        not torch.equal(a, b)
        for a, b in zip(projector.parameters(), hint.projector.parameters(), strict=True)
    )
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


# ----------------------------------------------------------------------------- command line
CONFIG = """
model:
  class_path: lightning_kd.modules.KDModule
  init_args:
    student:
      class_path: lightning_kd.models.TimmModel
      init_args:
        name: vit_tiny_patch16_224
      dict_kwargs:  # timm.create_model keywords that TimmModel passes on (**kwargs)
        img_size: 32
        patch_size: 4
        depth: 2
    teacher:
      class_path: lightning_kd.models.TimmModel
      init_args:
        name: resnet10t
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args:
    data_dir: {data_dir}
trainer:
  accelerator: cpu
  logger: false
"""


def test_timm_networks_from_yaml(cifar10_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "timm.yaml"
    path.write_text(CONFIG.format(data_dir=cifar10_dir))
    cli = build_cli(["--config", str(path)], run=False)
    student, teacher = cli.model.student, cli.model.teacher
    assert isinstance(student, TimmModel) and isinstance(teacher, TimmModel)
    assert student.num_classes == teacher.num_classes == 10  # linked from the datamodule
    assert len(student.net.blocks) == 2 and student.net.patch_embed.num_patches == 64
    assert student(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
