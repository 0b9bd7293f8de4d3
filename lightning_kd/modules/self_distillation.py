"""The base of label-free self-distillation: a student and its EMA teacher, no labels.

DINO (:class:`~lightning_kd.modules.dino.DINOModule`) and BYOL
(:class:`~lightning_kd.modules.byol.BYOLModule`) share everything here and differ only in
their heads and :meth:`~SelfDistillationModule.compute_losses`:

* ``student`` is a :class:`BackboneWithHead`; ``teacher`` is a deep copy of it that never
  gets gradients and follows the student by EMA,
  ``theta_t <- tau * theta_t + (1 - tau) * theta_s``, once per optimizer step (in
  :meth:`~SelfDistillationModule.optimizer_step`, so gradient accumulation is safe), with
  ``tau = cosine_schedule(step, total_steps, momentum_start, momentum_end)``: a pure function of
  ``trainer.global_step``, so a resumed run continues the schedule exactly.
* The teacher runs in training mode like the student (batch statistics in its BatchNorm, as in
  both papers) and keeps its own running statistics: the EMA covers parameters only
  (``ema_update_(..., buffers="keep")``). Under DDP, DDP's buffer broadcast keeps those
  statistics identical on every rank.
* An optional weight-decay schedule (DINO's 0.04 -> 0.4): the decayed parameter group (weights
  with 2 or more dimensions; biases and normalisation parameters get no weight decay) follows
  ``cosine_schedule(step, total_steps, <optimizer weight_decay>, weight_decay_end)``.
* Online evaluation by callbacks (:class:`~lightning_kd.callbacks.KNNEvaluation`,
  :class:`~lightning_kd.callbacks.OnlineLinearProbe`): ``training_step`` returns
  ``{"loss", "features", "targets"}`` (the detached backbone features of the first view from
  ``eval_network``, the network the probe is then evaluated on, and the batch labels, which
  never enter the loss) and ``validation_step`` /
  ``test_step`` return ``{"features", "targets"}`` from :meth:`~SelfDistillationModule.embed`.

Training batches are ``[views, targets]``: ``views`` a list of image tensors, as produced by a
datamodule with ``views=`` (:class:`~lightning_kd.data.MultiCropViews`,
:class:`~lightning_kd.data.TwoViews`). Evaluation batches are ``[images, targets]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_kd.ema import ema_update_
from lightning_kd.modules.base import Batch, LightningKDModule, NonFiniteLoss, sgd
from lightning_kd.schedules import cosine_schedule

__all__ = [
    "BackboneWithHead",
    "SelfDistillationModule",
    "backbone_features",
    "training_views",
]


class BackboneWithHead(nn.Module):
    """``head(backbone(x))``, with both parts reachable by name.

    Args:
        backbone: Network mapping images ``(B, 3, H, W)`` to features ``(B, D)`` (e.g. any
            :mod:`lightning_kd.models` network with ``num_classes=0``).
        head: Network mapping features ``(B, D)`` to the outputs the loss compares.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def backbone_features(backbone: nn.Module, feature_dim: int | None) -> int:
    """The width ``D`` of ``backbone``'s output: ``feature_dim`` if given, else the backbone's
    ``num_features`` attribute (every :mod:`lightning_kd.models` network has one).

    Raises:
        ValueError: If ``feature_dim`` is given and < 1.
        TypeError: If neither is available.
    """
    if feature_dim is not None:
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1 or None, got {feature_dim}")
        return feature_dim
    width = getattr(backbone, "num_features", None)
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise TypeError(
            f"cannot tell the feature width of {type(backbone).__name__}: it has no int "
            f"num_features attribute (got {width!r}); pass feature_dim, or use a lightning_kd "
            "network built with num_classes=0"
        )
    return width


def training_views(batch: Batch, *, min_views: int, max_views: int | None = None) -> list[Tensor]:
    """The list of views of a training batch ``[views, targets]``, checked."""
    views = batch[0] if isinstance(batch, Sequence) and len(batch) >= 1 else None
    if not isinstance(views, Sequence) or not all(isinstance(v, Tensor) for v in views):
        raise TypeError(
            "a self-distillation training batch must be [views, targets] with views a list of "
            f"image tensors (a datamodule built with views=...), got {type(views).__name__} "
            "as its first element"
        )
    if len(views) < min_views or (max_views is not None and len(views) > max_views):
        expected = f"{min_views}" if max_views == min_views else f">= {min_views}"
        raise ValueError(f"expected {expected} views per batch, got {len(views)}")
    return list(views)


class SelfDistillationModule(LightningKDModule):
    """Student + EMA teacher without labels; subclasses build the heads and the loss.

    Subclasses call ``super().__init__`` and then :meth:`set_student` with the student
    network, and implement :meth:`compute_losses`, which must call :meth:`set_probe_outputs`.

    Args:
        momentum_start: EMA momentum ``tau`` at step 0.
        momentum_end: ``tau`` at the last step (cosine in between).
        weight_decay_end: Final weight decay of the decayed parameter group (cosine from the
            optimizer's ``weight_decay``); ``None`` keeps the optimizer's value throughout.
        eval_network: Which backbone :meth:`embed`, :meth:`exported_model` and the kNN
            evaluation use: the EMA ``"teacher"`` or the ``"student"``.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.

    Raises:
        ValueError: On a momentum outside ``[0, 1]``, ``momentum_end < momentum_start``, a
            negative ``weight_decay_end`` or an unknown ``eval_network``.
    """

    eval_metric_names = ()

    student: BackboneWithHead
    teacher: BackboneWithHead

    def __init__(
        self,
        *,
        momentum_start: float,
        momentum_end: float = 1.0,
        weight_decay_end: float | None = None,
        eval_network: Literal["teacher", "student"] = "teacher",
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "step",
        channels_last: bool = False,
        nonfinite_loss: NonFiniteLoss = "error",
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss)
        for label, value in (("momentum_start", momentum_start), ("momentum_end", momentum_end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {value}")
        if momentum_end < momentum_start:
            raise ValueError(
                f"momentum_end must be >= momentum_start, got {momentum_end} < {momentum_start}"
            )
        if weight_decay_end is not None and not (
            math.isfinite(weight_decay_end) and weight_decay_end >= 0
        ):
            raise ValueError(
                f"weight_decay_end must be a finite number >= 0 or None, got {weight_decay_end}"
            )
        if eval_network not in ("teacher", "student"):
            raise ValueError(f"eval_network must be 'teacher' or 'student', got {eval_network!r}")
        self.momentum_start = momentum_start
        self.momentum_end = momentum_end
        self.weight_decay_end = weight_decay_end
        self.eval_network = eval_network
        self._probe_outputs: tuple[Tensor, Tensor] | None = None

    def set_student(self, student: BackboneWithHead) -> None:
        """Install the student and make the teacher an exact, gradient-free copy of it."""
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)

    # ------------------------------------------------------------------ schedules
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (``trainer.estimated_stepping_batches``)."""
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                "the momentum and weight-decay schedules need a finite run length, got "
                f"estimated_stepping_batches={total}; set max_steps or max_epochs with a sized "
                "dataloader"
            )
        return int(total)

    def momentum_at(self, step: int) -> float:
        """EMA momentum of the update that follows optimizer step ``step`` (0-based)."""
        return cosine_schedule(step, self.total_steps(), self.momentum_start, self.momentum_end)

    def weight_decay_at(self, step: int, start: float) -> float:
        """Weight decay of the decayed group at ``step``, from the optimizer's ``start``."""
        if self.weight_decay_end is None:
            return start
        return cosine_schedule(step, self.total_steps(), start, self.weight_decay_end)

    # ------------------------------------------------------------------ EMA
    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """One EMA update of the teacher's parameters with ``momentum_at(step)``; returns it.

        Called once per optimizer step by :meth:`optimizer_step`; call it yourself only when
        driving the optimizer outside Lightning's automatic optimization.
        """
        tau = self.momentum_at(step)
        ema_update_(self.teacher, self.student, momentum=tau, buffers="keep")
        return tau

    @override
    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step the optimizer, then update the teacher (once per optimizer step).

        A subclass that overrides it must call ``super()``.
        """
        step = self.trainer.global_step  # steps done before this one
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not self.last_step_skipped:
            self.update_teacher(step)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set the decayed group's weight decay for this step (``weight_decay_end``)."""
        if self.weight_decay_end is None:
            return
        step = self.trainer.global_step
        for optimizer in self.trainer.optimizers:
            start = float(optimizer.defaults.get("weight_decay", 0.0))
            for group in optimizer.param_groups:
                if group.get("weight_decay_scheduled", False):
                    group["weight_decay"] = self.weight_decay_at(step, start)

    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Two parameter groups: weights (decayed, scheduled) and biases/norms (no decay)."""
        decayed: list[nn.Parameter] = []
        plain: list[nn.Parameter] = []
        for p in self.trainable_parameters():
            (decayed if p.ndim >= 2 else plain).append(p)
        groups: list[dict[str, Any]] = [
            {"params": decayed, "weight_decay_scheduled": True},
            {"params": plain, "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.build_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    # ------------------------------------------------------------------ steps
    def set_probe_outputs(self, features: Tensor, targets: Tensor) -> None:
        """Hand this step's backbone features ``(B, D)`` of :attr:`eval_network` and the labels
        ``(B,)`` to the callbacks (returned by :meth:`training_step`; the labels never enter a
        loss)."""
        self._probe_outputs = (features.detach(), targets)

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any] | None:  # type: ignore[override]
        """:meth:`LightningKDModule.training_step`, plus the features for online evaluation
        (``{"loss": <zero-gradient stand-in>, "skipped": True}`` for a step that
        ``nonfinite_loss="skip"`` skips)."""
        self._probe_outputs = None
        loss = super().training_step(batch, batch_idx)
        if loss is None or self._skip_optimizer_step:
            self._probe_outputs = None
            return None if loss is None else {"loss": loss, "skipped": True}
        if self._probe_outputs is None:
            raise RuntimeError(
                f"{type(self).__name__}.compute_losses must call set_probe_outputs(features, "
                "targets)"
            )
        features, targets = self._probe_outputs
        self._probe_outputs = None
        return {"loss": loss, "features": features, "targets": targets}

    def embed(self, images: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of :attr:`eval_network` for images ``(B, 3, H, W)``."""
        return self.exported_model()(images)

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:  # type: ignore[override]
        """Embeddings of the evaluation images for the kNN / probe callbacks."""
        return {"features": self.embed(batch[0]), "targets": batch[1]}

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:  # type: ignore[override]
        return {"features": self.embed(batch[0]), "targets": batch[1]}

    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of :attr:`eval_network`."""
        return self.embed(x)

    @override
    def exported_model(self) -> nn.Module:
        """The backbone of :attr:`eval_network` (without the self-distillation head)."""
        network = self.teacher if self.eval_network == "teacher" else self.student
        return network.backbone
