"""The small base class every lightning-kd module shares.

A subclass supplies the algorithm through one override point, :meth:`compute_losses`; the
base logs what it returns, builds the optimizer over trainable parameters only, and runs the
evaluation loops from :meth:`evaluate`.
"""

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchmetrics import MeanMetric

#: A training or evaluation batch: ``(images, targets[, indices])`` for the classification
#: modules; modules with richer inputs (e.g. labeled + unlabeled streams) use their own layout.
Batch = Any


def sgd(params: Iterable[Any]) -> torch.optim.Optimizer:
    """Default optimizer: SGD, lr 0.05, momentum 0.9, weight decay 5e-4 (the CIFAR KD recipe)."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


class LightningKDModule(L.LightningModule):
    """Base of all lightning-kd modules.

    Subclasses implement :meth:`compute_losses` (training) and :meth:`evaluate` (validation and
    test) and name the network that :meth:`export` writes in :meth:`exported_model`.

    Args:
        optimizer: callable that builds the optimizer from the trainable parameters; in YAML a
            ``class_path``/``init_args`` pair such as ``torch.optim.SGD`` with its arguments.
        scheduler: optional callable that builds an LR scheduler from the optimizer.
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        channels_last: convert the networks to channels-last memory format (faster convolutions
            with ``bf16-mixed`` on CPUs with AMX and on tensor-core GPUs).
    """

    #: Names of the per-sample values :meth:`evaluate` returns; each is averaged over the
    #: evaluation set with a ``torchmetrics.MeanMetric`` and logged as ``val/<name>``.
    eval_metric_names: ClassVar[tuple[str, ...]] = ("loss", "acc", "acc_top5")

    def __init__(
        self,
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
            )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.channels_last = channels_last
        # Running (sum, count) of each training part this epoch, see training_step.
        self._epoch_sums: dict[str, tuple[Tensor, int]] = {}
        self.eval_metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": MeanMetric()
                for stage in ("val", "test")
                for name in self.eval_metric_names
            }
        )

    # ------------------------------------------------------------------ override points
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Compute the training objective for one batch.

        Returns:
            A dict with ``"loss"`` (the scalar that is minimised) plus any named scalars (loss
            parts, accuracies); every entry is logged as ``train/<name>``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement compute_losses(batch)")

    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        """Per-sample evaluation values, ``(B,)`` each, keyed by :attr:`eval_metric_names`."""
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(batch)")

    def exported_model(self) -> nn.Module:
        """The network a user deploys after training (e.g. the student)."""
        raise NotImplementedError(f"{type(self).__name__} must implement exported_model()")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Run :meth:`compute_losses` and log what it returns.

        ``train/loss`` goes through ``self.log`` every step (progress bar, callbacks). The other
        entries are logged without ``self.log``'s per-call cost (about a millisecond each on a
        CPU, several percent of a small model's step): their values are written to the logger
        as ``train/<name>_step`` every ``trainer.log_every_n_steps`` batches, and their
        batch-size-weighted epoch means as ``train/<name>_epoch`` at the end of the epoch.
        """
        losses = self.compute_losses(batch)
        if "loss" not in losses:
            raise KeyError(f"compute_losses must return a 'loss' entry, got keys {sorted(losses)}")
        batch_size = _batch_size(batch)
        self.log(
            "train/loss",
            losses["loss"].detach(),
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
        )
        parts = {name: value.detach() for name, value in losses.items() if name != "loss"}
        for name, value in parts.items():
            weighted = value.float() * batch_size
            if name in self._epoch_sums:
                total, count = self._epoch_sums[name]
                self._epoch_sums[name] = (total + weighted, count + batch_size)
            else:
                self._epoch_sums[name] = (weighted, batch_size)
        trainer = self.trainer
        every = int(getattr(trainer, "log_every_n_steps", 0))  # set by the Trainer at init
        if parts and trainer.logger is not None and every > 0 and batch_idx % every == 0:
            trainer.logger.log_metrics(
                {f"train/{name}_step": float(value) for name, value in parts.items()},
                step=trainer.global_step,
            )
        return losses["loss"]

    def on_train_epoch_start(self) -> None:
        self._epoch_sums = {}

    def on_train_epoch_end(self) -> None:
        for name, (total, count) in self._epoch_sums.items():
            mean = total / count
            self.log(f"train/{name}_epoch", mean, on_step=False, on_epoch=True, sync_dist=True)
        self._epoch_sums = {}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Logits of :meth:`exported_model` for the batch's inputs, ``(B, C)``."""
        return self.exported_model()(batch[0])

    def _evaluation_step(self, batch: Batch, stage: str) -> None:
        values = self.evaluate(batch)
        unknown = set(values) - set(self.eval_metric_names)
        if unknown:
            raise KeyError(
                f"evaluate returned {sorted(unknown)}, which are not in eval_metric_names "
                f"{self.eval_metric_names}"
            )
        for name, value in values.items():
            metric = self.eval_metrics[f"{stage}_{name}"]
            assert isinstance(metric, MeanMetric)
            metric.update(value.detach().float())
            self.log(
                f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc"
            )

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer sees: every parameter with ``requires_grad``."""
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def export(self, path: str | Path) -> Path:
        """Save :meth:`exported_model`'s ``state_dict`` alone to ``path`` and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.exported_model().state_dict(), path)
        return path


def object_arguments(*names: str) -> list[str]:
    """Which of ``names`` (networks, optimizer and scheduler callables) to leave out of
    ``save_hyperparameters``.

    Built from Python they are objects, not hyperparameters (and the networks are in the
    checkpoint's weights anyway), so they are left out. Built by the ``lightning-kd`` CLI they
    are ``class_path``/``init_args`` config, which Lightning records instead, so that
    ``load_from_checkpoint`` can rebuild the module without being handed the networks.
    """
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return [] if _given_hyperparameters.get() is not None else list(names)


def scalar(value: float, like: Tensor) -> Tensor:
    """A float32 0-d tensor on ``like``'s device, filled without a host-to-device copy (to
    return a Python number, e.g. a schedule value, as a logged part of ``compute_losses``)."""
    return torch.full((), value, dtype=torch.float32, device=like.device)


def steps_per_epoch(trainer: L.Trainer, setting: str) -> int:
    """Optimizer steps in one training epoch, to turn a ``setting`` given in epochs into steps.

    Args:
        trainer: The running trainer (its training dataloader must have a length).
        setting: Name of the epoch-valued argument being converted, for the error message.

    Raises:
        ValueError: If the training dataloader has no length.
    """
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError(
            f"{setting} > 0 needs a training dataloader with a length to turn epochs into "
            f"steps, got num_training_batches={batches}; use a sized dataloader or {setting}=0"
        )
    return max(1, math.ceil(int(batches) / trainer.accumulate_grad_batches))


def _batch_size(batch: Any) -> int:
    """Rows of the first tensor in a (possibly nested) batch: ``(x, y)`` or a dict of them."""
    first = batch
    while not isinstance(first, Tensor):
        first = next(iter(first.values())) if isinstance(first, Mapping) else first[0]
    return int(first.shape[0])
