"""An online linear probe: a linear classifier trained on the detached backbone features.

The probe follows the online-evaluation protocol of :mod:`lightning_kd.callbacks.knn`:
``training_step`` returns ``{"loss", "features": (B, D), "targets": (B,)}`` and
``validation_step`` returns ``{"features": (B, D), "targets": (B,)}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_kd.callbacks.knn import PROTOCOL, split_outputs, trainer_datamodule
from lightning_kd.distributed import all_reduce_mean_, all_reduce_sum_, is_distributed


class OnlineLinearProbe(Callback):
    """Train a linear classifier ``(D -> C)`` on the module's features while it trains.

    After every training batch the probe takes one SGD step on the cross-entropy of
    ``outputs["features"]`` (detached and cast to float32, with autocast disabled), so the
    features are constants: no gradient reaches the module. Under DDP the probe's gradients are
    averaged over ranks with ``all_reduce`` before the step, so every rank holds the same probe.
    The layer is zero-initialised (no random numbers are drawn, so the run's RNG stream is not
    disturbed and every rank starts identical) and created on the first batch, on the device of
    the features, with ``D`` from the features and ``C`` from ``num_classes`` or else
    ``trainer.datamodule.num_classes``.

    Logged, as fractions for the accuracies:

    * ``train/<log_prefix>_loss`` and ``train/<log_prefix>_acc``: the epoch means over all
      ranks, computed before each step's update, logged at the end of the training epoch;
    * ``val/<log_prefix>_acc``: the accuracy on the ``validation_step`` features of dataloader 0
      over all ranks, at the end of each validation epoch (once the probe exists).

    The probe's weights and its optimizer's state are part of the callback's ``state_dict``, so
    a run resumed from a checkpoint continues exactly.

    Args:
        num_classes: Number of classes ``C``; ``None`` reads ``trainer.datamodule.num_classes``.
        lr: SGD learning rate of the probe.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        log_prefix: Name of the probe in the logged keys (and in the checkpoint's state key).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        log_prefix: str = "probe",
    ) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.num_classes = num_classes
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.log_prefix = log_prefix
        #: The probe and its optimizer, created on the first training batch.
        self.probe: nn.Linear | None = None
        self.optimizer: torch.optim.SGD | None = None
        # State from load_state_dict, applied when the probe is created.
        self._pending_state: dict[str, Any] | None = None
        # Running sums of the epoch: train [loss * B, correct, B]; val [correct, B].
        self._train_sums: Tensor | None = None
        self._val_sums: Tensor | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    # ------------------------------------------------------------------ probe
    def _create(self, in_features: int, num_classes: int, device: torch.device) -> None:
        """Build the zero-initialised probe and its optimizer; apply any pending state."""
        pending = self._pending_state
        if pending is not None:
            saved = tuple(pending["probe"]["weight"].shape)
            if saved != (num_classes, in_features):
                raise ValueError(
                    f"OnlineLinearProbe: the restored probe maps {saved[1]} features to "
                    f"{saved[0]} classes, but this run has D={in_features}, C={num_classes}"
                )
        # Normal (not inference-mode) tensors even when first built during validation.
        with torch.inference_mode(False):
            probe = nn.Linear(in_features, num_classes, device=device)
            with torch.no_grad():
                probe.weight.zero_()
                probe.bias.zero_()
            optimizer = torch.optim.SGD(
                probe.parameters(),
                lr=self.lr,
                momentum=self.momentum,
                weight_decay=self.weight_decay,
            )
            if pending is not None:
                probe.load_state_dict(pending["probe"])
                optimizer.load_state_dict(pending["optimizer"])
        self.probe, self.optimizer, self._pending_state = probe, optimizer, None

    def _resolve_num_classes(self, trainer: L.Trainer) -> int:
        if self.num_classes is not None:
            return self.num_classes
        datamodule = trainer_datamodule(trainer)
        num_classes = getattr(datamodule, "num_classes", None)
        if not isinstance(num_classes, int):
            raise AttributeError(
                "OnlineLinearProbe needs num_classes, or trainer.datamodule.num_classes as in "
                f"{PROTOCOL}; got datamodule {type(datamodule).__name__} with "
                f"num_classes={num_classes!r}"
            )
        return num_classes

    # ------------------------------------------------------------------ training
    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_sums = None

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.training:
            return
        if outputs is None or (
            isinstance(outputs, Mapping) and (not outputs or outputs.get("skipped") is True)
        ):
            return  # a skipped batch (nonfinite_loss="skip"): no features to train on
        features, targets = split_outputs(outputs, "OnlineLinearProbe.on_train_batch_end")
        if self.probe is None:
            self._create(features.shape[1], self._resolve_num_classes(trainer), features.device)
        probe, optimizer = self.probe, self.optimizer
        assert probe is not None and optimizer is not None
        if features.shape[1] != probe.in_features:
            raise ValueError(
                f"OnlineLinearProbe: features have D={features.shape[1]}, the probe was built "
                f"for D={probe.in_features}"
            )
        device = probe.weight.device
        x = features.detach().to(device=device, dtype=torch.float32)  # (B, D)
        y = targets.to(device).long()  # (B,)
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            logits = probe(x)  # (B, C)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if is_distributed():
            grads = [p.grad for p in probe.parameters() if p.grad is not None]
            flat = all_reduce_mean_(torch.cat([g.reshape(-1) for g in grads]))
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        optimizer.step()
        with torch.no_grad():
            batch_sums = torch.stack(
                [
                    loss.detach() * len(y),
                    (logits.argmax(dim=1) == y).sum().float(),
                    torch.full((), float(len(y)), device=device),
                ]
            )
        self._train_sums = batch_sums if self._train_sums is None else self._train_sums + batch_sums

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sums, self._train_sums = self._train_sums, None
        if sums is None:
            return
        all_reduce_sum_(sums)
        count = sums[2].clamp(min=1)
        # Already reduced over ranks, so no sync_dist; every rank logs the same value.
        pl_module.log(f"train/{self.log_prefix}_loss", sums[0] / count, sync_dist=False)
        pl_module.log(f"train/{self.log_prefix}_acc", sums[1] / count, sync_dist=False)

    # ------------------------------------------------------------------ validation
    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_sums = None

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0:
            return
        features, targets = split_outputs(outputs, "OnlineLinearProbe.on_validation_batch_end")
        if self.probe is None:
            if self._pending_state is None:
                return  # nothing trained yet (e.g. the sanity check): no accuracy to report
            self._create(features.shape[1], self._resolve_num_classes(trainer), features.device)
        probe = self.probe
        assert probe is not None
        device = probe.weight.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            logits = probe(features.detach().to(device=device, dtype=torch.float32))  # (B, C)
            correct = (logits.argmax(dim=1) == targets.to(device)).sum().float()
            batch_sums = torch.stack([correct, torch.full((), float(len(targets)), device=device)])
        self._val_sums = batch_sums if self._val_sums is None else self._val_sums + batch_sums

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sums, self._val_sums = self._val_sums, None
        if sums is None:
            return
        all_reduce_sum_(sums)
        pl_module.log(f"val/{self.log_prefix}_acc", sums[0] / sums[1].clamp(min=1), sync_dist=False)

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        """The probe's and its optimizer's state (``{}`` before the first batch)."""
        if self.probe is None or self.optimizer is None:
            return dict(self._pending_state) if self._pending_state is not None else {}
        return {"probe": self.probe.state_dict(), "optimizer": self.optimizer.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe now if it exists, else when it is created on the first batch."""
        if not state_dict:
            return
        missing = {"probe", "optimizer"} - set(state_dict)
        if missing:
            raise KeyError(
                "OnlineLinearProbe state must have 'probe' and 'optimizer', got "
                f"{sorted(state_dict)}"
            )
        if self.probe is None or self.optimizer is None:
            self._pending_state = dict(state_dict)
            return
        probe = self.probe
        self.probe = None
        self._pending_state = dict(state_dict)
        self._create(probe.in_features, probe.out_features, probe.weight.device)
