"""DINO: self-distillation with no labels (Caron et al., 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_kd.losses.dino import DINOCenter, dino_loss, teacher_entropy
from lightning_kd.models.heads import DINOHead
from lightning_kd.modules.base import (
    Batch,
    NonFiniteLoss,
    object_arguments,
    scalar,
    sgd,
    steps_per_epoch,
)
from lightning_kd.modules.self_distillation import (
    BackboneWithHead,
    SelfDistillationModule,
    backbone_features,
    training_views,
)
from lightning_kd.schedules import linear_warmup

__all__ = ["DINOModule"]


class DINOModule(SelfDistillationModule):
    """DINO: a student matches its EMA teacher's centred, sharpened outputs across views.

    Each training batch carries ``2 + K`` views of every image (``[global1, global2,
    local1, ...]``, e.g. from :class:`~lightning_kd.data.MultiCropViews`): the teacher sees the
    two global views, the student all of them, and :func:`~lightning_kd.losses.dino_loss`
    compares every teacher view with every *other* student view. The
    :class:`~lightning_kd.losses.DINOCenter` accumulates the teacher outputs of every batch of
    an optimizer step and, after the step (in :meth:`optimizer_step`, next to the EMA update),
    moves toward their mean, all-reduced once over DDP processes: once per optimizer step,
    whatever ``accumulate_grad_batches`` is, so ``A`` accumulated batches of ``B`` images move
    it exactly as one batch of ``A * B`` images would. A skipped step
    (``nonfinite_loss="skip"``) leaves it where it was. Everything of
    :class:`SelfDistillationModule` applies: EMA teacher with ``tau`` from ``momentum_start``
    to ``momentum_end`` (cosine), optional weight-decay schedule, online linear probe, kNN
    callback.

    Logged each step (``train/<name>_step`` / ``_epoch``): ``teacher_entropy`` (nats of the
    centred, sharpened teacher distribution: ``log(out_dim)`` = uniform collapse, ``0`` =
    one-hot collapse), ``teacher_temperature``, ``momentum`` and ``weight_decay``.

    Args:
        backbone: Student backbone, images ``(B, 3, H, W)`` -> features ``(B, D)``, e.g.
            ``TorchvisionModel("resnet18", num_classes=0, cifar_stem=True)``. It must accept
            the local crops' smaller size too (global average pooling does).
        feature_dim: ``D``; ``None`` reads ``backbone.num_features``.
        out_dim, hidden_dim, bottleneck_dim, head_layers, head_batch_norm, norm_last_layer:
            The :class:`~lightning_kd.models.heads.DINOHead` (``K = out_dim`` prototypes).
        student_temperature: ``tau_s`` (0.1 in the paper).
        teacher_temperature: ``tau_t`` after its warm-up (0.04 - 0.07 in the paper).
        teacher_temperature_start: ``tau_t`` at step 0, linear to ``teacher_temperature``
            over ``teacher_temperature_warmup_epochs``.
        teacher_temperature_warmup_epochs: Length of that warm-up (0 = none).
        center_momentum: Momentum of the center update (0.9), once per optimizer step.
        momentum_start, momentum_end: EMA momentum, cosine from start to end (0.996 -> 1).
        weight_decay_end: Weight decay at the end, cosine from the optimizer's (0.04 -> 0.4 in
            the paper); ``None`` keeps it constant.
        freeze_last_layer_epochs: Epochs during which the head's last layer gets no update (its
            gradients are dropped after backward); stabilises the start of training.
        eval_network: Backbone used by :meth:`embed` / probe / kNN / export (the teacher by
            default, as in the paper's evaluations).
        probe_num_classes, probe_lr, probe_weight_decay: The online linear probe (none by
            default), see :class:`SelfDistillationModule`.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.

    Raises:
        ValueError: On a temperature that is not > 0, a negative warm-up or freeze length, or
            the errors of :class:`SelfDistillationModule`, :class:`DINOHead` and
            :class:`DINOCenter`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int | None = None,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        head_batch_norm: bool = False,
        norm_last_layer: bool = True,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        teacher_temperature_start: float = 0.04,
        teacher_temperature_warmup_epochs: float = 0.0,
        center_momentum: float = 0.9,
        momentum_start: float = 0.996,
        momentum_end: float = 1.0,
        weight_decay_end: float | None = 0.4,
        freeze_last_layer_epochs: int = 1,
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
        super().__init__(
            momentum_start=momentum_start,
            momentum_end=momentum_end,
            weight_decay_end=weight_decay_end,
            eval_network=eval_network,
            probe_num_classes=probe_num_classes,
            probe_lr=probe_lr,
            probe_weight_decay=probe_weight_decay,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            channels_last=channels_last,
            nonfinite_loss=nonfinite_loss,
        )
        for label, value in (
            ("student_temperature", student_temperature),
            ("teacher_temperature", teacher_temperature),
            ("teacher_temperature_start", teacher_temperature_start),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a finite number > 0, got {value}")
        if not (
            math.isfinite(teacher_temperature_warmup_epochs)
            and teacher_temperature_warmup_epochs >= 0
        ):
            raise ValueError(
                "teacher_temperature_warmup_epochs must be a finite number >= 0, got "
                f"{teacher_temperature_warmup_epochs}"
            )
        if freeze_last_layer_epochs < 0:
            raise ValueError(
                f"freeze_last_layer_epochs must be >= 0, got {freeze_last_layer_epochs}"
            )
        self.save_hyperparameters(ignore=object_arguments("backbone", "optimizer", "scheduler"))
        width = backbone_features(backbone, feature_dim)
        head = DINOHead(
            width,
            out_dim=out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            num_layers=head_layers,
            use_bn=head_batch_norm,
            norm_last_layer=norm_last_layer,
        )
        self.set_student(BackboneWithHead(backbone, head), feature_dim=width)
        self.center = DINOCenter(out_dim, momentum=center_momentum)
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.teacher_temperature_start = teacher_temperature_start
        self.teacher_temperature_warmup_epochs = teacher_temperature_warmup_epochs
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

    def teacher_temperature_at(self, step: int, steps_per_epoch: int) -> float:
        """``tau_t`` at optimizer step ``step`` for epochs of ``steps_per_epoch`` steps."""
        warmup = round(self.teacher_temperature_warmup_epochs * steps_per_epoch)
        return linear_warmup(step, warmup, self.teacher_temperature_start, self.teacher_temperature)

    def current_teacher_temperature(self) -> float:
        """``tau_t`` at the trainer's ``global_step``."""
        if self.teacher_temperature_warmup_epochs == 0:
            return self.teacher_temperature
        per_epoch = steps_per_epoch(self.trainer, "teacher_temperature_warmup_epochs")
        return self.teacher_temperature_at(self.trainer.global_step, per_epoch)

    @override
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        views = training_views(batch, min_views=2)
        global_views, local_views = views[:2], views[2:]
        batch_size = global_views[0].shape[0]

        with torch.no_grad():
            teacher_features = self.teacher.backbone(torch.cat(global_views))  # (2B, D)
            teacher_out = self.teacher.head(teacher_features).chunk(2)  # 2 x (B, K)
        student_features = self.student.backbone(torch.cat(global_views))  # (2B, D)
        if local_views:
            local_features = self.student.backbone(torch.cat(local_views))  # (K_l B, D)
            student_out = self.student.head(torch.cat([student_features, local_features]))
        else:
            student_out = self.student.head(student_features)
        student_chunks = student_out.chunk(len(views))  # V x (B, K)

        tau_t = self.current_teacher_temperature()
        center = self.center.center  # (1, K); moves only after the optimizer step
        loss = dino_loss(
            list(student_chunks),
            list(teacher_out),
            center,
            student_temperature=self.student_temperature,
            teacher_temperature=tau_t,
        )
        self.center.accumulate(list(teacher_out))  # applied in optimizer_step
        probe = teacher_features if self.eval_network == "teacher" else student_features

        step = self.trainer.global_step
        weight_decay = self.trainer.optimizers[0].param_groups[0].get("weight_decay", 0.0)
        losses = {
            "loss": loss,
            "teacher_entropy": teacher_entropy(
                list(teacher_out), center, teacher_temperature=tau_t
            ),
            "teacher_temperature": scalar(tau_t, loss),
            "momentum": scalar(self.ema_momentum(step), loss),
            "weight_decay": scalar(float(weight_decay), loss),
        }
        return self.add_probe_losses(losses, probe[:batch_size], batch[1])

    @override
    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step the optimizer and update the EMA teacher (the base class), then move the
        center once with the teacher outputs of all the step's batches (dropped when the step
        was skipped). A subclass that overrides it must call ``super()``."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.last_step_skipped:
            self.center.reset()
        else:
            self.center.update()

    @override
    def on_train_start(self) -> None:
        """Start with an empty center accumulation (e.g. after an interrupted fit)."""
        self.center.reset()

    @override
    def on_after_backward(self) -> None:
        """Drop the last layer's gradients during the first ``freeze_last_layer_epochs``."""
        if self.current_epoch < self.freeze_last_layer_epochs:
            head = self.student.head
            assert isinstance(head, DINOHead)
            for p in head.last_layer_parameters():
                p.grad = None
