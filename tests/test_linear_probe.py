"""OnlineLinearProbe: learns in a real Trainer, never touches the module, resumes exactly.

The 2-process DDP check (identical probes on both ranks, equal to one process) is
``test_knn.py::test_ddp_two_processes_match_one``, which shares ``knn_ddp_script.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from knn_ddp_script import EmbedModule, VectorData, noisy_data, separable_data
from lightning.pytorch.callbacks import Callback
from tiny import RecordingLogger, trainer
from torch import Tensor

from lightning_kd.callbacks import OnlineLinearProbe


def test_learns_a_linearly_separable_problem() -> None:
    data = VectorData(separable_data(per_class=8, seed=0), separable_data(per_class=4, seed=1), 5)
    probe = OnlineLinearProbe(lr=0.5)
    logger = RecordingLogger()
    fit = trainer(max_epochs=6, callbacks=[probe], logger=logger, num_sanity_val_steps=2)
    fit.fit(EmbedModule("identity"), datamodule=data)
    assert fit.callback_metrics["val/probe_acc"].item() == 1.0
    losses = [m["train/probe_loss"] for _, m in logger.metrics if "train/probe_loss" in m]
    accs = [m["train/probe_acc"] for _, m in logger.metrics if "train/probe_acc" in m]
    assert len(losses) == len(accs) == 6  # once per epoch
    assert losses[-1] < losses[0] < torch.log(torch.tensor(5.0)).item() + 1e-6
    assert accs[-1] == 1.0
    assert probe.probe is not None and probe.probe.weight.shape == (5, 5)  # C from datamodule


class GradRecorder(Callback):
    """After each training batch (and the probe's step), whether ``proj`` has a gradient."""

    def __init__(self) -> None:
        self.proj_has_grad: list[bool] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        assert isinstance(pl_module, EmbedModule)
        self.proj_has_grad.append(
            pl_module.proj.weight.grad is not None or pl_module.proj.bias.grad is not None
        )


def test_features_are_constants_for_the_module() -> None:
    # The module hands over features that still require grad (and in bf16); the probe must
    # detach them: the module's projection never gets a gradient, the probe still learns.
    # (Lightning clears gradients at the end of fit, so they are checked after every batch.)
    module = EmbedModule("linear", feature_dtype=torch.bfloat16, detach=False)
    initial = module.proj.weight.detach().clone()
    probe = OnlineLinearProbe(num_classes=5)
    recorder = GradRecorder()  # after the probe in the list, so it runs after its step
    data = VectorData(separable_data(), separable_data(seed=1), 5)
    trainer(max_epochs=2, callbacks=[probe, recorder]).fit(module, datamodule=data)
    assert module.proj.weight.requires_grad
    assert recorder.proj_has_grad == [False] * 10  # 20 images, batch 4, 2 epochs
    assert torch.equal(module.proj.weight, initial)
    assert probe.probe is not None and probe.probe.weight.dtype == torch.float32
    assert probe.probe.weight.abs().sum() > 0


def _fit(
    max_epochs: int, ckpt_path: Path | None = None, save_to: Path | None = None
) -> OnlineLinearProbe:
    probe = OnlineLinearProbe(lr=0.2, momentum=0.9, weight_decay=1e-3)
    data = VectorData(noisy_data(24, seed=3), noisy_data(8, seed=4), 5)
    fit = trainer(max_epochs=max_epochs, callbacks=[probe])
    fit.fit(EmbedModule("identity"), datamodule=data, ckpt_path=ckpt_path)
    if save_to is not None:
        fit.save_checkpoint(save_to)
    return probe


def test_resume_equals_uninterrupted_training(tmp_path: Path) -> None:
    ckpt = tmp_path / "epoch2.ckpt"
    _fit(2, save_to=ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    assert set(state) == {"OnlineLinearProbe{'log_prefix': 'probe'}"}
    resumed = _fit(4, ckpt_path=ckpt)
    straight = _fit(4)
    assert resumed.probe is not None and straight.probe is not None
    torch.testing.assert_close(resumed.probe.state_dict(), straight.probe.state_dict())
    assert resumed.optimizer is not None and straight.optimizer is not None
    torch.testing.assert_close(
        resumed.optimizer.state_dict()["state"], straight.optimizer.state_dict()["state"]
    )
    # A run of 2 epochs differs, so the comparison is not trivial.
    two = _fit(2)
    assert two.probe is not None
    assert not torch.allclose(two.probe.weight, straight.probe.weight)
    # trainer.validate(ckpt_path=...) restores the probe before it exists and evaluates it.
    fresh = OnlineLinearProbe()
    data = VectorData(noisy_data(24, seed=3), noisy_data(8, seed=4), 5)
    (result,) = trainer(callbacks=[fresh]).validate(
        EmbedModule("identity"), datamodule=data, ckpt_path=ckpt, verbose=False
    )
    assert fresh.probe is not None and torch.equal(fresh.probe.weight, two.probe.weight)
    assert 0.0 <= result["val/probe_acc"] <= 1.0


def test_state_loaded_before_the_probe_exists_is_kept_and_checked() -> None:
    source = OnlineLinearProbe(num_classes=3)
    source._create(4, 3, torch.device("cpu"))
    assert source.probe is not None
    with torch.no_grad():
        source.probe.weight.fill_(0.5)
    state = source.state_dict()

    target = OnlineLinearProbe(num_classes=3)
    assert target.state_dict() == {}
    target.load_state_dict(state)
    assert target.probe is None
    assert target.state_dict() is not state and torch.equal(
        target.state_dict()["probe"]["weight"], torch.full((3, 4), 0.5)
    )
    with pytest.raises(ValueError, match=r"maps 4 features to 3 classes, but this run has D=6"):
        target._create(6, 3, torch.device("cpu"))
    target._create(4, 3, torch.device("cpu"))
    assert target.probe is not None and torch.equal(target.probe.weight, torch.full((3, 4), 0.5))
    with pytest.raises(KeyError, match=r"'probe' and 'optimizer', got \['probe'\]"):
        target.load_state_dict({"probe": state["probe"]})


class LossOnly(EmbedModule):
    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:  # type: ignore[override]
        return (self.weight**2).sum()


def test_missing_protocol_is_reported() -> None:
    data = VectorData(separable_data(), separable_data(seed=1), 5)
    with pytest.raises(KeyError, match=r"'features'.*'targets'.*protocol.*got \['loss'\]"):
        trainer(max_steps=1, callbacks=[OnlineLinearProbe()]).fit(LossOnly(), datamodule=data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes must be >= 1 or None, got 0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0, got -1.0"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnlineLinearProbe(**kwargs)
