"""Multi-level logit distillation (MLKD; Jin, Wang and Lin, CVPR 2023) on a weak and a strong
view of every image."""

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from lightning_kd.losses.mlkd import (
    MLKD_TEMPERATURES,
    MLKDVariant,
    check_temperatures,
    mlkd_parts,
)
from lightning_kd.metrics import top1_agreement, topk_correct
from lightning_kd.modules.base import Batch, NonFiniteLoss, sgd
from lightning_kd.modules.kd import KDModule


class MLKDModule(KDModule):
    """Distil a student from a frozen teacher with MLKD's multi-level logit alignment.

    Each training batch holds a weak and a strong view of every image, ``[[weak, strong],
    targets, ...]``, as :class:`~lightning_kd.data.CIFAR100DataModule` (or any
    :class:`~lightning_kd.data.datamodule.ImageDataModule`) yields with
    ``transform=StrongAugment()``. Then::

        loss = ce_weight * (CE(z_s_weak, y) + CE(z_s_strong, y))
             + kd_weight * (instance + class_correlation + batch_correlation)

    with the three terms of :func:`~lightning_kd.losses.mlkd.mlkd_parts` (instance-level
    ``T^2 KL``, ``C x C`` class- and ``B x B`` batch-correlation Gram terms, at every
    temperature, on both views, with the teacher's weak-view confidence masks). The
    cross-entropy is taken on both views, as the authors (``KD_ours.forward_train``); their
    weights are mdistiller's KD defaults ``ce_weight = 0.1``, ``kd_weight = 0.9`` and they use
    no warm-up (``forward_train`` ignores its epoch). ``variant="paper"`` (default) is the
    published method, ``variant="authors"`` what the authors' code computes (masks that only
    scale reduced terms, two strong terms on weak logits, strong class / batch terms left out;
    see :mod:`lightning_kd.losses.mlkd`).

    The teacher sees both views in one forward on the concatenated ``(2B, 3, H, W)`` batch (it
    is in eval mode, so this equals two forwards); the student runs once per view, as the
    authors, so that its BatchNorm batch statistics are per view. Evaluation batches are
    single-view and evaluated as :class:`~lightning_kd.modules.KDModule` does.

    Logged parts: ``loss_ce`` (the sum over both views), ``loss_kd`` (the three terms
    together), ``loss_instance``, ``loss_class``, ``loss_batch`` (unweighted), and ``acc``,
    ``teacher_acc``, ``agreement`` on the weak view.

    Args:
        student, teacher, teacher_cache, teacher_checkpoint, student_checkpoint,
        save_teacher_weights, evaluate_teacher, teacher_mean, teacher_std, input_mean, input_std,
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: as for
        :class:`~lightning_kd.modules.KDModule`.
        temperatures: MLKD's temperatures, each ``> 0``; the authors' ``(4, 3, 5, 2, 6)`` by
            default (MLKD + LS uses ``(2, 3, 5, 2, 6)``).
        variant: ``"paper"`` or ``"authors"``; ``"authors"`` needs five temperatures.
        logit_standardization: Z-score both networks' logits before the instance terms'
            softmax ("MLKD + LS", as the logit-standardisation authors' ``MLKD.py``: the Gram
            terms and the masks use the raw logits).
        confidence_quantile: Quantile of the confidence-mask thresholds (0.5, the median).
        ce_weight: Weight of the two-view cross-entropy, a finite float ``>= 0`` (0.1).
        kd_weight: Weight of the MLKD terms, a finite float ``>= 0`` (0.9).

    Raises:
        ValueError: On a bad temperature, ``variant`` or quantile, ``variant="authors"``
            without five temperatures, a negative or non-finite weight, or (at the first
            training step) a batch without exactly two views.
    """

    progress_bar_names = ("loss_ce", "loss_kd")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        temperatures: tuple[float, ...] = MLKD_TEMPERATURES,
        variant: MLKDVariant = "paper",
        logit_standardization: bool = False,
        confidence_quantile: float = 0.5,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        teacher_cache: str | None = None,
        teacher_checkpoint: str | None = None,
        student_checkpoint: str | None = None,
        save_teacher_weights: bool = True,
        evaluate_teacher: bool = True,
        teacher_mean: list[float] | None = None,
        teacher_std: list[float] | None = None,
        input_mean: list[float] | None = None,
        input_std: list[float] | None = None,
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        channels_last: bool = False,
        nonfinite_loss: NonFiniteLoss = "error",
    ) -> None:
        temps = check_temperatures(temperatures, variant)
        if not 0.0 <= confidence_quantile <= 1.0:
            raise ValueError(f"confidence_quantile must be in [0, 1], got {confidence_quantile}")
        super().__init__(
            student,
            teacher,
            teacher_cache=teacher_cache,
            teacher_checkpoint=teacher_checkpoint,
            student_checkpoint=student_checkpoint,
            save_teacher_weights=save_teacher_weights,
            temperature=temps[0],
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            evaluate_teacher=evaluate_teacher,
            teacher_mean=teacher_mean,
            teacher_std=teacher_std,
            input_mean=input_mean,
            input_std=input_std,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            channels_last=channels_last,
            nonfinite_loss=nonfinite_loss,
        )
        # KDModule's hyperparameters that this module does not take (its single temperature,
        # alpha, teachers, ...) would only mislead: keep this constructor's own.
        own = inspect.signature(type(self).__init__).parameters
        for name in [k for k in self.hparams if k not in own]:
            self.hparams.pop(name)
        self.temperatures = temps
        self.variant: MLKDVariant = variant
        self.logit_standardization = logit_standardization
        self.confidence_quantile = confidence_quantile

    @override
    @property
    @override
    def cache_num_views(self) -> int:
        """MLKD reads the teacher on both views: ``[weak, strong]``."""
        return 2

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        weak, strong = two_views(batch)
        targets = batch[1]
        b = weak.shape[0]
        if self.teacher_is_cached:
            cached = self.cached_teacher_outputs(batch)  # (B, 2, 1, C)
            teacher_weak, teacher_strong = cached[:, 0, 0], cached[:, 1, 0]
        else:
            teacher_logits = self.teacher_logits(torch.cat([weak, strong]))  # (2B, C)
            teacher_weak, teacher_strong = teacher_logits[:b], teacher_logits[b:]
        student_weak = self.student(weak)  # (B, C)
        student_strong = self.student(strong)  # (B, C)
        parts = mlkd_parts(
            student_weak,
            student_strong,
            teacher_weak,
            teacher_strong,
            temperatures=self.temperatures,
            variant=self.variant,
            standardize=self.logit_standardization,
            quantile=self.confidence_quantile,
        )
        ce = F.cross_entropy(student_weak.float(), targets) + F.cross_entropy(
            student_strong.float(), targets
        )
        kd = parts.total()
        student_detached = student_weak.detach()
        return {
            "loss": self.ce_weight * ce + self.kd_weight * kd,
            "loss_ce": ce,
            "loss_kd": kd,
            "loss_instance": parts.instance,
            "loss_class": parts.class_correlation,
            "loss_batch": parts.batch_correlation,
            "acc": topk_correct(student_detached, targets).mean(),
            "teacher_acc": topk_correct(teacher_weak, targets).mean(),
            "agreement": top1_agreement(student_detached, teacher_weak).mean(),
        }


def two_views(batch: Batch) -> tuple[Tensor, Tensor]:
    """The ``(weak, strong)`` views of a training batch ``[[weak, strong], targets, ...]``.

    Raises:
        ValueError: If the batch's first entry is not two tensors of the same shape.
    """
    views = batch[0]
    if (
        isinstance(views, Sequence)
        and len(views) == 2
        and all(isinstance(v, Tensor) for v in views)
        and views[0].shape == views[1].shape
    ):
        return views[0], views[1]
    raise ValueError(
        "MLKD needs a datamodule with transform=StrongAugment(), got training batches whose "
        f"images are {_describe(views)}; expected [weak, strong], two (B, 3, H, W) tensors"
    )


def _describe(views: Any) -> str:
    if isinstance(views, Tensor):
        return f"one tensor of shape {tuple(views.shape)} (a single view)"
    if isinstance(views, Sequence):
        shapes = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in views]
        return f"a list of {len(views)} views {shapes}"
    return type(views).__name__
