"""BYOL: bootstrap your own latent (Grill et al., 2020)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from lightning_kd.losses.byol import byol_loss
from lightning_kd.models.heads import ProjectionMLP
from lightning_kd.modules.base import Batch, NonFiniteLoss, object_arguments, scalar, sgd
from lightning_kd.modules.self_distillation import (
    BackboneWithHead,
    SelfDistillationModule,
    backbone_features,
    training_views,
)

__all__ = ["BYOLModule"]


class BYOLModule(SelfDistillationModule):
    """BYOL: the student predicts its EMA teacher's projection of the other view.

    The student (online network) is backbone -> projector -> ``predictor``; the teacher
    (target network) is the EMA of backbone -> projector. For two views ``v1, v2`` (e.g. from
    :class:`~lightning_kd.data.TwoViews`) the loss is
    :func:`~lightning_kd.losses.byol_loss` of the student's predictions against the teacher's
    projections of the *other* view, both directions summed (range ``[0, 8]``). Everything of
    :class:`SelfDistillationModule` applies (EMA ``tau`` cosine from ``momentum_start`` to
    ``momentum_end``, optional weight-decay schedule, online linear probe, kNN callback).

    Logged each step: ``momentum`` and ``target_std``: the standard deviation over the batch
    of the L2-normalised teacher projections, averaged over dimensions. It falls to 0 when the
    representation collapses to a constant; spread-out projections give about
    ``1 / sqrt(projection_dim)``.

    Args:
        backbone: Student backbone, images ``(B, 3, H, W)`` -> features ``(B, D)``.
        feature_dim: ``D``; ``None`` reads ``backbone.num_features``.
        projection_dim: Output width of projector and predictor (256 in the paper).
        hidden_dim: Hidden width of both MLPs (4096 in the paper).
        momentum_start, momentum_end: EMA momentum, cosine (0.99 -> 1 in the paper).
        weight_decay_end: Final weight decay (cosine from the optimizer's); ``None`` keeps it.
        eval_network: Backbone used by :meth:`embed` / probe / kNN / export; the paper
            evaluates the online network (``"student"``, the default).
        probe_num_classes, probe_lr, probe_weight_decay: The online linear probe (none by
            default), see :class:`SelfDistillationModule`.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int | None = None,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        momentum_start: float = 0.99,
        momentum_end: float = 1.0,
        weight_decay_end: float | None = None,
        eval_network: Literal["teacher", "student"] = "student",
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
        self.save_hyperparameters(ignore=object_arguments("backbone", "optimizer", "scheduler"))
        width = backbone_features(backbone, feature_dim)
        projector = ProjectionMLP(width, hidden_dim=hidden_dim, out_dim=projection_dim)
        self.set_student(BackboneWithHead(backbone, projector), feature_dim=width)
        self.predictor = ProjectionMLP(
            projection_dim, hidden_dim=hidden_dim, out_dim=projection_dim
        )

    @override
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        views = training_views(batch, min_views=2, max_views=2)
        batch_size = views[0].shape[0]
        both = torch.cat(views)  # (2B, 3, H, W)
        features = self.student.backbone(both)  # (2B, D)
        predictions = self.predictor(self.student.head(features)).chunk(2)  # 2 x (B, P)
        with torch.no_grad():
            teacher_features = self.teacher.backbone(both)  # (2B, D)
            targets = self.teacher.head(teacher_features)  # (2B, P)
        loss = byol_loss(list(predictions), list(targets.chunk(2)))
        probe = teacher_features if self.eval_network == "teacher" else features
        with torch.no_grad():
            spread = F.normalize(targets.float(), dim=1).std(dim=0).mean()
        losses = {
            "loss": loss,
            "target_std": spread,
            "momentum": scalar(self.ema_momentum(self.trainer.global_step), loss),
        }
        return self.add_probe_losses(losses, probe[:batch_size], batch[1])
