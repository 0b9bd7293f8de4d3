"""The small base class every lightning-kd module shares.

A subclass supplies the algorithm through one override point, :meth:`compute_losses`; the
base logs what it returns, builds the optimizer over trainable parameters only, runs the
evaluation loops from :meth:`evaluate`, and keeps the EMA teachers a subclass declares
(:meth:`ema_pairs`, :meth:`ema_momentum`) once per optimizer step.
"""

import math
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_kd.checkpoint import RECORD_KEY
from lightning_kd.ema import EMAPair, ema_update_
from lightning_kd.schedules import check_run_length

#: What a module does when its training loss is not finite (see ``nonfinite_loss``).
NonFiniteLoss = Literal["error", "skip", "warn"]

#: Key of lightning-kd's own record in a checkpoint (module class, teacher files, ...).
CHECKPOINT_RECORD = RECORD_KEY

#: A training or evaluation batch: ``(images, targets[, indices])`` for the classification
#: modules; modules with richer inputs (e.g. labeled + unlabeled streams) use their own layout.
Batch = Any


def sgd(params: Iterable[Any]) -> torch.optim.Optimizer:
    """Default optimizer: SGD, lr 0.05, momentum 0.9, weight decay 5e-4 (the CIFAR KD recipe)."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


class LightningKDModule(L.LightningModule):
    """Base of all lightning-kd modules.

    Subclasses implement :meth:`compute_losses` (training) and :meth:`evaluate` (validation and
    test) and name the network that :meth:`export` writes in :meth:`exported_model`. A module
    with EMA teachers declares them in :meth:`ema_pairs` and their momentum in
    :meth:`ema_momentum`; :meth:`optimizer_step` is the one place they are updated.

    Args:
        optimizer: callable that builds the optimizer from the trainable parameters; in YAML a
            ``class_path``/``init_args`` pair such as ``torch.optim.SGD`` with its arguments.
        scheduler: optional callable that builds an LR scheduler from the optimizer.
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        channels_last: convert the networks to channels-last memory format (faster convolutions
            with ``bf16-mixed`` on CPUs with AMX and on tensor-core GPUs).
        nonfinite_loss: what to do when the training loss of a step is NaN or infinite:
            ``"error"`` (default) stops training with an error that names the step and the
            loss parts that are not finite; ``"skip"`` skips that step with a warning (no
            parameter, optimizer state or EMA teacher moves; Lightning's step counter still
            counts it); ``"warn"`` only warns and trains on. Under DDP the decision is taken
            jointly by all processes (one extra scalar all-reduce per step). In every mode a
            checkpoint whose weights are not finite is refused.

    Training curves: ``train/loss_step`` (every ``log_every_n_steps`` optimizer steps) and
    ``train/loss_epoch``; every other entry ``<name>`` that :meth:`compute_losses` returns is
    written as ``train/<name>_step`` at the same steps and ``train/<name>_epoch``. Evaluation:
    ``val/<name>`` and ``test/<name>`` for :attr:`eval_metric_names`, and ``hp_metric`` (the
    validation accuracy, for TensorBoard's HPARAMS tab). When the datamodule validates on its
    test split (``validates_on_test``), validation metrics are named ``val_on_test/<name>``
    instead and no ``hp_metric`` is written.
    """

    #: Names of the per-sample values :meth:`evaluate` returns; each is averaged over the
    #: evaluation set with a ``torchmetrics.MeanMetric`` and logged as ``val/<name>``.
    eval_metric_names: ClassVar[tuple[str, ...]] = ("loss", "acc", "acc_top5")

    #: State-dict keys that older versions of the module saved and this one no longer has;
    #: loading a state dict drops them (see :meth:`_load_from_state_dict`), and the CLI's
    #: checkpoint check (:func:`lightning_kd.checkpoint.check_checkpoint_fits`) ignores them.
    obsolete_state_keys: ClassVar[tuple[str, ...]] = ()

    #: Entries of :meth:`compute_losses` shown in the progress bar next to ``train/loss``;
    #: ``None`` shows every entry whose name starts with ``loss_``.
    progress_bar_names: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        channels_last: bool = False,
        nonfinite_loss: NonFiniteLoss = "error",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
            )
        if nonfinite_loss not in ("error", "skip", "warn"):
            raise ValueError(
                f"nonfinite_loss must be 'error', 'skip' or 'warn', got {nonfinite_loss!r}"
            )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.channels_last = channels_last
        self.nonfinite_loss = nonfinite_loss
        # Running (sum, count) of each training part this epoch, see training_step.
        self._epoch_sums: dict[str, tuple[Tensor, int]] = {}
        # This step's parts (detached), written to the logger in on_train_batch_end and read
        # by the progress bar (lightning_kd.callbacks.progress).
        self._step_parts: dict[str, Tensor] = {}
        # Set when a batch of the current optimizer step was skipped (nonfinite_loss="skip").
        self._skip_optimizer_step = False
        #: Whether the last :meth:`optimizer_step` skipped the step (EMA updates follow it).
        self.last_step_skipped = False
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

    # ------------------------------------------------------------------ EMA teachers
    def ema_pairs(self) -> list[EMAPair]:
        """The ``(teacher, student)`` pairs kept as EMAs, with each pair's buffer policy.

        :meth:`optimizer_step` moves every teacher toward its student after each optimizer
        step that was not skipped, with the momentum :meth:`ema_momentum` gives for that step.
        Default: none.
        """
        return []

    def ema_momentum(self, step: int) -> float:
        """Momentum ``m`` of the EMA update that follows optimizer step ``step``.

        A pure function of ``step``, the number of optimizer steps done before this one
        (``trainer.global_step`` during the step: 0 for the first update), so a resumed run
        continues the sequence from the checkpoint's ``global_step``, without a counter.
        Must be overridden by a module with :meth:`ema_pairs`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} declares EMA pairs and must implement ema_momentum(step)"
        )

    @torch.no_grad()
    def update_ema(self, step: int) -> float:
        """Move every teacher of :meth:`ema_pairs` toward its student with
        ``ema_momentum(step)`` and return that momentum.

        Called once per optimizer step by :meth:`optimizer_step`; call it yourself only when
        driving the optimizer outside Lightning's automatic optimization.
        """
        momentum = self.ema_momentum(step)
        for pair in self.ema_pairs():
            ema_update_(pair.teacher, pair.student, momentum=momentum, buffers=pair.buffers)
        return momentum

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @override
    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Any = None,
    ) -> None:
        """Step the optimizer, then update the EMA teachers of :meth:`ema_pairs`.

        Lightning calls this hook once per optimizer step, i.e. once every
        ``accumulate_grad_batches`` batches, so the teachers move once per step whatever the
        accumulation, and before any ``on_train_batch_end`` callback (e.g. a step-interval
        ``ModelCheckpoint``) sees the module. The EMA momentum is that of the step number
        ``trainer.global_step`` read before the step (Lightning counts the step after this
        hook returns).

        Under ``nonfinite_loss="skip"`` a step with a non-finite loss in one of its batches is
        skipped: no parameter, momentum, weight decay or EMA teacher moves (Lightning's step
        counter still counts it). The closure (forward and backward) then runs first, so that
        the decision is known before the step; the optimizer then steps with the gradients it
        produced. :attr:`last_step_skipped` tells a subclass what happened. A subclass that
        overrides this must call ``super()``.
        """
        step = self.trainer.global_step  # optimizer steps done before this one
        self.last_step_skipped = False
        if self.nonfinite_loss != "skip" or optimizer_closure is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        else:
            result = optimizer_closure()
            skip, self._skip_optimizer_step = self._skip_optimizer_step, False
            self.last_step_skipped = skip
            if not skip:
                optimizer.step(closure=lambda: result)
        if not self.last_step_skipped and self.ema_pairs():
            self.update_ema(step)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        """Run :meth:`compute_losses`, check the loss is finite, and log what it returns.

        ``train/loss`` goes through ``self.log`` every step (progress bar, callbacks). The other
        entries are logged without ``self.log``'s per-call cost (about a millisecond each on a
        CPU, several percent of a small model's step): their values are written to the logger
        as ``train/<name>_step`` at exactly the steps at which Lightning writes
        ``train/loss_step`` (see :meth:`on_train_batch_end`), and their batch-size-weighted
        epoch means as ``train/<name>_epoch`` at the end of the epoch.

        Returns:
            The loss (a zero-gradient stand-in for a step that ``nonfinite_loss="skip"``
            skips).
        """
        losses = self.compute_losses(batch)
        if "loss" not in losses:
            raise KeyError(f"compute_losses must return a 'loss' entry, got keys {sorted(losses)}")
        if not self._loss_is_finite(losses, batch_idx):
            # nonfinite_loss="skip": a loss with zero gradients for every trainable parameter
            # (so that every DDP process still joins the gradient all-reduce), and no
            # optimizer step (see optimizer_step).
            self._step_parts = {}
            self._skip_optimizer_step = True
            return torch.stack([(p * 0).sum() for p in self.trainable_parameters()]).sum()
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
        self._step_parts = parts
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Write this step's parts as ``train/<name>_step`` where Lightning writes
        ``train/loss_step``: at the same ``log_every_n_steps`` steps, with the same step."""
        trainer = self.trainer
        if not self._step_parts or trainer.logger is None:
            return
        if _lightning_logs_this_step(trainer):
            trainer.logger.log_metrics(
                {f"train/{name}_step": float(value) for name, value in self._step_parts.items()},
                step=trainer.fit_loop.epoch_loop._batches_that_stepped,
            )

    def progress_bar_parts(self) -> dict[str, Tensor]:
        """This step's entries of :attr:`progress_bar_names`, for the progress bar."""
        names = self.progress_bar_names
        if names is None:
            return {k: v for k, v in self._step_parts.items() if k.startswith("loss_")}
        return {k: self._step_parts[k] for k in names if k in self._step_parts}

    def _loss_is_finite(self, losses: Mapping[str, Tensor], batch_idx: int) -> bool:
        """Whether this step's loss is finite (on every process under DDP); raise or warn as
        ``nonfinite_loss`` says when it is not. One host sync per step."""
        bad = ~torch.isfinite(losses["loss"].detach())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce(bad.float(), reduce_op="sum") > 0
        if not bool(bad):
            return True
        parts = {
            name: float(value.detach().float().sum())
            for name, value in losses.items()
            if not bool(torch.isfinite(value.detach()).all())
        }
        step = trainer.global_step if trainer is not None else 0
        epoch = trainer.current_epoch if trainer is not None else 0
        where = f"at optimizer step {step} (epoch {epoch}, batch {batch_idx})"
        what = ", ".join(f"{name}={value}" for name, value in parts.items()) or (
            "the loss on another process"
        )
        if self.nonfinite_loss == "error":
            raise FloatingPointError(
                f"non-finite training loss {where}: {what}. Training stopped "
                "(nonfinite_loss='error'); the usual causes are a learning rate that is too "
                "high or a loss weight that overflows. Lower the learning rate, or set "
                "nonfinite_loss='skip' to skip such steps or 'warn' to train on."
            )
        action = "skipping this step" if self.nonfinite_loss == "skip" else "training on"
        rank_zero_warn(f"non-finite training loss {where}: {what}; {action}")
        return self.nonfinite_loss == "warn"

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
        prefix = stage
        if stage == "val" and self.validates_on_test:
            prefix = "val_on_test"
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
                f"{prefix}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc"
            )

    @property
    def validates_on_test(self) -> bool:
        """Whether the attached datamodule validates on its test split (``val_split=0``)."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return bool(getattr(datamodule, "validates_on_test", False))

    @property
    def hp_metric_name(self) -> str:
        """The entry of :attr:`eval_metric_names` logged as ``hp_metric``: the accuracy of
        the network that :meth:`export` writes."""
        return "acc"

    def on_validation_epoch_end(self) -> None:
        """Log ``hp_metric``, the validation accuracy, for TensorBoard's HPARAMS tab."""
        trainer = self.trainer
        name = self.hp_metric_name
        if trainer.sanity_checking or name not in self.eval_metric_names:
            return
        if self.validates_on_test:
            return
        metric = self.eval_metrics[f"val_{name}"]
        assert isinstance(metric, MeanMetric)
        if metric.update_count == 0:
            return
        self.log("hp_metric", metric.compute(), on_step=False, on_epoch=True)

    def eval_mode_modules(self) -> dict[str, str]:
        """Submodules kept in eval mode during training on purpose, with the reason: name ->
        why. Lightning warns about eval-mode modules at the start of training; for these the
        warning is replaced by one line that explains them."""
        return {}

    def on_fit_start(self) -> None:
        deliberate = self.eval_mode_modules()
        if not deliberate:
            return
        self.train()  # the mode the fit loop will see
        in_eval = [name for name, module in self.named_modules() if not module.training]
        covered = [
            name
            for name in in_eval
            if any(name == top or name.startswith(f"{top}.") for top in deliberate)
        ]
        if covered and len(covered) == len(in_eval):
            # Exactly the count Lightning's fit loop reports; other warnings stay visible.
            warnings.filterwarnings(
                "ignore",
                message=re.escape(f"Found {len(in_eval)} module(s) in eval mode"),
            )
            for top, why in deliberate.items():
                count = sum(1 for name in covered if name == top or name.startswith(f"{top}."))
                rank_zero_info(f"{top} ({count} modules) stays in eval mode: {why}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the module class and refuse to save weights that are not finite.

        A subclass that overrides it must call ``super()``.

        Raises:
            FloatingPointError: If a floating-point tensor of the state dict has NaN or inf.
        """
        floats = {
            name: value
            for name, value in checkpoint["state_dict"].items()
            if isinstance(value, Tensor) and value.is_floating_point() and value.numel()
        }
        # One host sync for the whole state dict, not one per tensor.
        device = next(iter(floats.values())).device if floats else None
        finite = (
            torch.stack([torch.isfinite(v).all().to(device) for v in floats.values()]).tolist()
            if floats
            else []
        )
        bad = [name for name, ok in zip(floats, finite, strict=True) if not ok]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            step = self._trainer.global_step if self._trainer is not None else "?"
            raise FloatingPointError(
                f"refusing to write a checkpoint at step {step}: {len(bad)} weight tensors are "
                f"not finite ({shown}). The run diverged; lower the learning rate and restart "
                "from the last good checkpoint."
            )
        record = checkpoint.setdefault(CHECKPOINT_RECORD, {})
        record["module"] = f"{type(self).__module__}.{type(self).__qualname__}"

    @override
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Drop :attr:`obsolete_state_keys` (``state_dict`` is ``load_state_dict``'s own copy),
        then load as usual."""
        for key in self.obsolete_state_keys:
            state_dict.pop(f"{prefix}{key}", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer sees: every parameter with ``requires_grad``."""
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.build_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Build the LR scheduler, taking the run length from the trainer.

        A schedule that needs the run length (``OneCycleLR`` without ``total_steps``) gets it
        from ``trainer.estimated_stepping_batches`` (``scheduler_interval="step"``) or
        ``trainer.max_epochs`` (``"epoch"``), so changing epochs, batch size, subset or
        accumulation never breaks it; a length given in the config that differs from the run
        fails here, before training (see :func:`lightning_kd.schedules.check_run_length`).
        """
        assert self.scheduler_factory is not None
        return check_run_length(
            self.scheduler_factory, optimizer, self.trainer, interval=self.scheduler_interval
        )

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


def _lightning_logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes ``self.log`` step values to the logger after this batch.

    The rule of Lightning's logger connector (``should_update_logs``, evaluated in the same
    place of the training loop as :meth:`LightningKDModule.on_train_batch_end`), so that the
    parts and ``train/loss_step`` share their steps.
    """
    return bool(
        trainer._logger_connector.should_update_logs or getattr(trainer, "fast_dev_run", False)
    )


def _batch_size(batch: Any) -> int:
    """Rows of the first tensor in a (possibly nested) batch: ``(x, y)`` or a dict of them."""
    first = batch
    while not isinstance(first, Tensor):
        first = next(iter(first.values())) if isinstance(first, Mapping) else first[0]
    return int(first.shape[0])
