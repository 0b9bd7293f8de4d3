"""FeatureKDModule and its terms: adapters registered for real, each term trains, hooks clean."""

import copy
from pathlib import Path

import pytest
import torch
from tiny import TinyData, trainer
from torch import nn

from lightning_kd.models import CIFARResNet, TorchvisionModel
from lightning_kd.modules import (
    AttentionTerm,
    CRDTerm,
    DKDTerm,
    FeatureKDModule,
    HintTerm,
    RKDTerm,
)
from lightning_kd.modules.projectors import ConvProjector, LinearEmbedding


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = CIFARResNet(depth=8, num_classes=4)  # widths 16/16/32/64
    teacher = CIFARResNet(depth=8, num_classes=4, channels=(16, 32, 64, 128))
    return student, teacher


def _all_terms(num_samples: int = 32) -> list[nn.Module]:
    return [
        HintTerm("layer2", "layer2"),
        AttentionTerm(["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
        RKDTerm(),
        CRDTerm(num_samples=num_samples, num_negatives=16, embed_dim=8),
        DKDTerm(warmup_epochs=2),
    ]


class IndexedTinyData(TinyData):
    """TinyData at 32x32 whose batches carry sample ids, like return_indices=True."""

    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        super().__init__(n=n, batch_size=batch_size)
        self.x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = torch.utils.data.TensorDataset(self.x, self.y, torch.arange(len(self.y)))
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size)


def test_adapters_are_sized_from_the_dry_run_and_in_the_optimizer() -> None:
    student, teacher = _pair()
    module = FeatureKDModule(student, teacher, terms=_all_terms())  # type: ignore[arg-type]
    hint, _, _, crd, _ = module.distillation_terms
    assert isinstance(hint, HintTerm) and isinstance(hint.projector, ConvProjector)
    assert (hint.projector.in_channels, hint.projector.out_channels) == (32, 64)
    assert isinstance(crd, CRDTerm)
    assert isinstance(crd.student_embed, LinearEmbedding)
    assert (crd.student_embed.in_features, crd.teacher_embed.in_features) == (64, 128)

    t = trainer(max_steps=2, limit_val_batches=1)
    t.fit(module, datamodule=IndexedTinyData())
    optimized = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    for adapter in (hint.projector, crd.student_embed, crd.teacher_embed):
        for p in adapter.parameters():
            assert id(p) in optimized
    assert not optimized & {id(p) for p in module.teacher.parameters()}
    # Adapters and the CRD memory are in the checkpoint's state dict.
    keys = module.state_dict().keys()
    assert "terms.0.projector.conv.weight" in keys
    assert "terms.3.memory.student_bank" in keys


def test_every_term_trains_and_is_logged() -> None:
    student, teacher = _pair()
    teacher_before = copy.deepcopy(teacher.state_dict())
    module = FeatureKDModule(student, teacher, terms=_all_terms())  # type: ignore[arg-type]
    projector_before = module.distillation_terms[0].projector.conv.weight.clone()  # type: ignore[union-attr]
    t = trainer(max_epochs=2, limit_val_batches=1)
    t.fit(module, datamodule=IndexedTinyData())
    for name in ("hint", "at", "rkd", "crd", "dkd"):
        value = t.logged_metrics[f"train/loss_{name}_epoch"]
        assert torch.isfinite(value), name
    assert not torch.equal(module.distillation_terms[0].projector.conv.weight, projector_before)  # type: ignore[union-attr]
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    # No feature is held between steps: every tap's store is empty after training.
    for taps in (*module._student_taps, *module._teacher_taps):
        with pytest.raises(RuntimeError):
            taps.pop()


def test_total_loss_is_the_weighted_sum() -> None:
    student, teacher = _pair()
    module = FeatureKDModule(
        student,
        teacher,
        terms=[HintTerm("layer2", "layer2", weight=3.0), DKDTerm(warmup_epochs=4, weight=2.0)],
        ce_weight=0.5,
        kd_weight=0.25,
    )
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    out = module.compute_losses(batch)
    # Epoch 0 of a 4-epoch warm-up: DKD weight 2.0 * 1/4.
    expected = (
        0.5 * out["loss_ce"]
        + 0.25 * out["loss_kd"]
        + 3.0 * out["loss_hint"]
        + 0.5 * out["loss_dkd"]
    )
    torch.testing.assert_close(out["loss"], expected)


def test_identical_networks_give_zero_feature_losses() -> None:
    torch.manual_seed(0)
    net = CIFARResNet(depth=8, num_classes=4)
    module = FeatureKDModule(
        net,
        copy.deepcopy(net),
        terms=[HintTerm("layer2", "layer2"), AttentionTerm(["layer3"], ["layer3"]), RKDTerm()],
    )
    module.eval()  # same BatchNorm behaviour on both sides
    assert isinstance(module.distillation_terms[0].projector, nn.Identity)  # type: ignore[union-attr]
    out = module.compute_losses((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])))
    for name in ("loss_hint", "loss_at", "loss_rkd", "loss_kd"):
        assert out[name].item() == pytest.approx(0.0, abs=1e-6), name


def test_dkd_warmup_weight() -> None:
    term = DKDTerm(warmup_epochs=4, weight=2.0)
    assert [term.weight_at(e) for e in (0, 1, 3, 10)] == [0.5, 1.0, 2.0, 2.0]
    assert DKDTerm(warmup_epochs=0, weight=2.0).weight_at(0) == 2.0


def test_term_errors() -> None:
    student, teacher = _pair()
    with pytest.raises(ValueError, match="'layer9'"):
        FeatureKDModule(student, teacher, terms=[HintTerm("layer9", "layer2")])
    with pytest.raises(ValueError, match=r"weight must be >= 0, got -1\.0"):
        HintTerm("layer1", "layer1", weight=-1.0)
    with pytest.raises(ValueError, match="pair up"):
        AttentionTerm(["layer1"], ["layer1", "layer2"])
    with pytest.raises(ValueError, match="distinct names"):
        FeatureKDModule(student, teacher, terms=[RKDTerm(), RKDTerm()])
    module = FeatureKDModule(student, teacher, terms=[CRDTerm(num_samples=8, num_negatives=4)])
    with pytest.raises(ValueError, match="return_indices=True"):
        module.compute_losses((torch.randn(2, 3, 32, 32), torch.tensor([0, 1])))


def test_torchvision_networks_by_module_path() -> None:
    torch.manual_seed(0)
    student = TorchvisionModel("resnet18", num_classes=4)
    teacher = TorchvisionModel("resnet34", num_classes=4)
    module = FeatureKDModule(
        student,
        teacher,
        terms=[
            HintTerm("net.layer3", "net.layer3"),
            AttentionTerm(["net.layer2"], ["net.layer2"]),
            RKDTerm("net.fc", "net.fc"),
        ],
        input_size=(3, 64, 64),
    )
    out = module.compute_losses((torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])))
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert student.net.layer1[0].conv1.weight.grad is not None


def test_checkpoint_round_trip_keeps_adapters_and_memory(tmp_path: Path) -> None:
    def build() -> FeatureKDModule:
        student, teacher = _pair()
        return FeatureKDModule(student, teacher, terms=_all_terms())  # type: ignore[arg-type]

    module = build()
    t = trainer(max_steps=2, limit_val_batches=0)
    t.fit(module, datamodule=IndexedTinyData())
    ckpt = tmp_path / "f.ckpt"
    t.save_checkpoint(ckpt)
    student, teacher = _pair()
    restored = FeatureKDModule.load_from_checkpoint(
        ckpt, student=student, teacher=teacher, terms=_all_terms()
    )
    for key, value in module.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_bf16_mixed_with_every_term() -> None:
    # Taps capture bf16 activations under autocast; every loss still comes out float32 and
    # finite, and the CRD memory update (after backward, outside autocast) works on them.
    student, teacher = _pair()
    module = FeatureKDModule(student, teacher, terms=_all_terms())  # type: ignore[arg-type]
    t = trainer(max_steps=3, limit_val_batches=1, precision="bf16-mixed")
    t.fit(module, datamodule=IndexedTinyData())
    for name in ("loss", "loss_hint", "loss_at", "loss_rkd", "loss_crd", "loss_dkd"):
        value = t.logged_metrics["train/loss_step" if name == "loss" else f"train/{name}_epoch"]
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    crd = module.distillation_terms[3]
    assert isinstance(crd, CRDTerm)
    assert crd.memory.student_bank.dtype == torch.float32
    assert float(crd.memory.z_student) > 0  # normalisation constant set by the first update
