"""The base of label-free self-distillation: a student and its EMA teacher, no labels.

DINO (:class:`~lightning_kd.modules.dino.DINOModule`) and BYOL
(:class:`~lightning_kd.modules.byol.BYOLModule`) share everything here and differ only in
their heads and :meth:`~SelfDistillationModule.compute_losses`:

* ``student`` is a :class:`BackboneWithHead`; ``teacher`` is a deep copy of it that never
  gets gradients and follows the student by EMA,
  ``theta_t <- tau * theta_t + (1 - tau) * theta_s``: the module's one EMA pair
  (:meth:`~SelfDistillationModule.ema_pairs`), which the base class updates once per
  optimizer step (gradient accumulation is safe), with
  ``tau = cosine_schedule(step, total_steps, momentum_start, momentum_end)``
  (:meth:`~SelfDistillationModule.ema_momentum`): a pure function of ``trainer.global_step``,
  so a resumed run continues the schedule exactly.
* The teacher runs in training mode like the student (batch statistics in its BatchNorm, as in
  both papers) and keeps its own running statistics: the EMA covers parameters only
  (``buffers="keep"``). Under DDP, DDP's buffer broadcast keeps those statistics identical on
  every rank.
* An optional weight-decay schedule (DINO's 0.04 -> 0.4): the decayed parameter group (weights
  with 2 or more dimensions; biases and normalisation parameters get no weight decay) follows
  ``cosine_schedule(step, total_steps, <optimizer weight_decay>, weight_decay_end)``.
* An optional online linear probe (``probe_num_classes``): a
  :class:`~lightning_kd.models.heads.LinearProbe` on the *detached* backbone features of the
  first view from ``eval_network``, trained with cross-entropy on the batch labels by the
  module's own optimizer (its own parameter group). The labels never reach the
  self-distillation loss, and no gradient of the probe reaches the backbone.
* Online evaluation by callbacks (:class:`~lightning_kd.callbacks.KNNEvaluation`):
  ``training_step`` returns ``{"loss", "features", "targets"}`` (the detached probe features
  and the batch labels) and ``validation_step`` / ``test_step`` return
  ``{"features", "targets"}`` from :meth:`~SelfDistillationModule.embed`.

Training batches are ``[views, targets]``: ``views`` a list of image tensors, as produced by a
datamodule with ``transform=`` (:class:`~lightning_kd.data.MultiCropViews`,
:class:`~lightning_kd.data.TwoViews`). Evaluation batches are ``[images, targets]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import GradClipAlgorithmType
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_kd.ema import EMAPair
from lightning_kd.metrics import topk_correct
from lightning_kd.models.heads import LinearProbe
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
            "image tensors (a datamodule built with transform=MultiCropViews(...)), got "
            f"{type(views).__name__} as its first element"
        )
    if len(views) < min_views or (max_views is not None and len(views) > max_views):
        expected = f"{min_views}" if max_views == min_views else f">= {min_views}"
        raise ValueError(f"expected {expected} views per batch, got {len(views)}")
    return list(views)


class SelfDistillationModule(LightningKDModule):
    """Student + EMA teacher without labels; subclasses build the heads and the loss.

    Subclasses call ``super().__init__`` and then :meth:`set_student` with the student network
    and its feature width, and implement :meth:`compute_losses`, which must end with
    :meth:`add_probe_losses` (it hands the probe features over, and adds the probe's loss
    when there is a probe).

    Online linear probe (``probe_num_classes`` set): the probe's cross-entropy on the batch
    labels is added to the training loss; its features are detached, so the backbone's
    gradients are exactly those of the self-distillation loss. Its parameters form their own
    optimizer group with ``lr=probe_lr`` (the optimizer's when ``None``) and
    ``weight_decay=probe_weight_decay``, never touched by the weight-decay schedule; the LR
    scheduler moves it like every group (a scheduler that sets absolute rates, e.g.
    ``OneCycleLR`` with one ``max_lr``, overrides ``probe_lr``). Gradient clipping
    (``Trainer(gradient_clip_val=...)``) covers the self-distillation networks only. Under DDP
    the probe's gradients are averaged with the others'; its weights and optimizer state are
    in the checkpoint. Logged: ``train/probe_loss`` and ``train/probe_acc`` (``_step`` /
    ``_epoch``, computed before the step's update), ``train/ssl_loss`` (the objective without
    the probe term), and ``val/probe_acc`` / ``test/probe_acc`` on the :meth:`embed` features
    (named so also when the datamodule validates on its test split, like the kNN callback's
    ``val/knn_acc``).

    Args:
        momentum_start: EMA momentum ``tau`` at step 0.
        momentum_end: ``tau`` at the last step (cosine in between).
        weight_decay_end: Final weight decay of the decayed parameter group (cosine from the
            optimizer's ``weight_decay``); ``None`` keeps the optimizer's value throughout.
        eval_network: Which backbone :meth:`embed`, :meth:`exported_model`, the probe and the
            kNN evaluation use: the EMA ``"teacher"`` or the ``"student"``.
        probe_num_classes: Number of classes ``C`` of the online linear probe; ``None`` (no
            probe) or ``>= 1``.
        probe_lr: Learning rate of the probe's parameter group, ``> 0``; ``None`` uses the
            optimizer's.
        probe_weight_decay: Weight decay of the probe's parameter group, ``>= 0``.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.

    Raises:
        ValueError: On a momentum outside ``[0, 1]``, ``momentum_end < momentum_start``, a
            negative ``weight_decay_end``, an unknown ``eval_network``, or a probe setting
            outside the ranges above.
    """

    eval_metric_names = ()

    student: BackboneWithHead
    teacher: BackboneWithHead
    #: The online linear probe (``None`` without ``probe_num_classes``).
    probe: LinearProbe | None

    def __init__(
        self,
        *,
        momentum_start: float,
        momentum_end: float = 1.0,
        weight_decay_end: float | None = None,
        eval_network: Literal["teacher", "student"] = "teacher",
        probe_num_classes: int | None = None,
        probe_lr: float | None = None,
        probe_weight_decay: float = 0.0,
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
        if probe_num_classes is not None and (
            isinstance(probe_num_classes, bool)
            or not isinstance(probe_num_classes, int)
            or probe_num_classes < 1
        ):
            raise ValueError(
                f"probe_num_classes must be None or an int >= 1, got {probe_num_classes!r}"
            )
        if probe_lr is not None and not (math.isfinite(probe_lr) and probe_lr > 0):
            raise ValueError(f"probe_lr must be None or a finite number > 0, got {probe_lr}")
        if not (math.isfinite(probe_weight_decay) and probe_weight_decay >= 0):
            raise ValueError(
                f"probe_weight_decay must be a finite number >= 0, got {probe_weight_decay}"
            )
        self.momentum_start = momentum_start
        self.momentum_end = momentum_end
        self.weight_decay_end = weight_decay_end
        self.eval_network = eval_network
        self.probe_num_classes = probe_num_classes
        self.probe_lr = probe_lr
        self.probe_weight_decay = probe_weight_decay
        self.probe = None
        # Per-sample probe accuracy of the evaluation stages (states not in the checkpoint).
        self.probe_metrics = nn.ModuleDict(
            {stage: MeanMetric() for stage in ("val", "test")} if probe_num_classes else {}
        )
        self._probe_outputs: tuple[Tensor, Tensor] | None = None

    def set_student(self, student: BackboneWithHead, *, feature_dim: int) -> None:
        """Install the student, make the teacher an exact, gradient-free copy of it, and build
        the linear probe on the backbone's ``feature_dim`` features (with
        ``probe_num_classes``)."""
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        if self.probe_num_classes is not None:
            self.probe = LinearProbe(feature_dim, self.probe_num_classes)

    @override
    def setup(self, stage: str) -> None:
        """Check the probe's class count against the datamodule's ``num_classes`` (when it has
        one), then set up as the base class does.

        Raises:
            ValueError: If ``probe_num_classes`` differs from ``trainer.datamodule.num_classes``.
        """
        if self.probe is not None:
            datamodule = getattr(self._trainer, "datamodule", None)
            num_classes = getattr(datamodule, "num_classes", None)
            if isinstance(num_classes, int) and num_classes != self.probe.num_classes:
                raise ValueError(
                    f"probe_num_classes={self.probe.num_classes}, but the datamodule "
                    f"{type(datamodule).__name__} has num_classes={num_classes}; set "
                    f"probe_num_classes to {num_classes}"
                )
        super().setup(stage)

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

    def weight_decay_at(self, step: int, start: float) -> float:
        """Weight decay of the decayed group at ``step``, from the optimizer's ``start``."""
        if self.weight_decay_end is None:
            return start
        return cosine_schedule(step, self.total_steps(), start, self.weight_decay_end)

    # ------------------------------------------------------------------ EMA
    @override
    def ema_pairs(self) -> list[EMAPair]:
        """The teacher follows the student, parameters only (its buffers are its own)."""
        return [EMAPair(self.teacher, self.student, buffers="keep")]

    @override
    def ema_momentum(self, step: int) -> float:
        """EMA momentum of the update that follows optimizer step ``step`` (0-based):
        ``cosine_schedule(step, total_steps, momentum_start, momentum_end)``."""
        return cosine_schedule(step, self.total_steps(), self.momentum_start, self.momentum_end)

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
        """Parameter groups: weights (decayed, scheduled), biases/norms (no decay), and the
        probe's (``probe_lr``, ``probe_weight_decay``; marked ``linear_probe``)."""
        probe_params = list(self.probe.parameters()) if self.probe is not None else []
        probe_ids = {id(p) for p in probe_params}
        decayed: list[nn.Parameter] = []
        plain: list[nn.Parameter] = []
        for p in self.trainable_parameters():
            if id(p) not in probe_ids:
                (decayed if p.ndim >= 2 else plain).append(p)
        groups: list[dict[str, Any]] = [
            {"params": decayed, "weight_decay_scheduled": True},
            {"params": plain, "weight_decay": 0.0},
        ]
        if probe_params:
            probe_group: dict[str, Any] = {
                "params": probe_params,
                "weight_decay": self.probe_weight_decay,
                "linear_probe": True,
            }
            if self.probe_lr is not None:
                probe_group["lr"] = self.probe_lr
            groups.append(probe_group)
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.build_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    @override
    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the gradients of every group but the probe's: the probe's cross-entropy is a
        separate objective, and its gradients must not shrink the backbone's update."""
        if self.probe is None:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        if not gradient_clip_val or gradient_clip_val <= 0:
            return
        params = [
            p
            for group in optimizer.param_groups
            if not group.get("linear_probe", False)
            for p in group["params"]
        ]
        algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
        if algorithm == GradClipAlgorithmType.VALUE:
            torch.nn.utils.clip_grad_value_(params, clip_value=gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    # ------------------------------------------------------------------ steps
    def add_probe_losses(
        self, losses: dict[str, Tensor], features: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """Hand this step's probe features over and add the probe's loss to ``losses``.

        Every :meth:`compute_losses` ends with ``return self.add_probe_losses(losses, ...)``.
        The features and labels are returned by :meth:`training_step` for the callbacks (the
        labels never enter the self-distillation loss). With a probe, the result has
        ``loss = ssl_loss + probe_loss`` and the parts ``ssl_loss`` (the ``loss`` given),
        ``probe_loss`` (mean cross-entropy) and ``probe_acc`` (top-1 accuracy, a fraction);
        without one, ``losses`` unchanged.

        Args:
            losses: The self-distillation objective and its parts (``"loss"`` required).
            features: Backbone features ``(B, D)`` of :attr:`eval_network` for the first view
                (detached here).
            targets: Labels ``(B,)`` of the batch's images.
        """
        features = features.detach()
        self._probe_outputs = (features, targets)
        if self.probe is None:
            return losses
        logits = self.probe(features)  # (B, C), float32
        probe_loss = F.cross_entropy(logits, targets)
        ssl_loss = losses["loss"]
        return {
            **losses,
            "loss": ssl_loss + probe_loss,
            "ssl_loss": ssl_loss.detach(),
            "probe_loss": probe_loss.detach(),
            "probe_acc": topk_correct(logits.detach(), targets).mean(),
        }

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
                f"{type(self).__name__}.compute_losses must end with add_probe_losses(losses, "
                "features, targets)"
            )
        features, targets = self._probe_outputs
        self._probe_outputs = None
        return {"loss": loss, "features": features, "targets": targets}

    def embed(self, images: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of :attr:`eval_network` for images ``(B, 3, H, W)``."""
        return self.exported_model()(images)

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:  # type: ignore[override]
        """Embeddings of the evaluation images for the kNN callback; the probe's accuracy."""
        return self._evaluation_outputs(batch, "val")

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:  # type: ignore[override]
        return self._evaluation_outputs(batch, "test")

    def _evaluation_outputs(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        features = self.embed(batch[0])  # (B, D)
        targets = batch[1]
        if self.probe is not None:
            metric = self.probe_metrics[stage]
            assert isinstance(metric, MeanMetric)
            metric.update(topk_correct(self.probe(features), targets))  # (B,)
            self.log(f"{stage}/probe_acc", metric, on_step=False, on_epoch=True)
        return {"features": features, "targets": targets}

    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of :attr:`eval_network`."""
        return self.embed(x)

    @override
    def exported_model(self) -> nn.Module:
        """The backbone of :attr:`eval_network` (without the self-distillation head)."""
        network = self.teacher if self.eval_network == "teacher" else self.student
        return network.backbone
