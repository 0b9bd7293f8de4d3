"""Mean Teacher (Tarvainen & Valpola, 2017): semi-supervised learning with an EMA teacher."""

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from lightning_kd.ema import EMAPair
from lightning_kd.losses.consistency import softmax_kl_loss, softmax_mse_loss
from lightning_kd.metrics import topk_correct
from lightning_kd.modules.base import (
    Batch,
    LightningKDModule,
    NonFiniteLoss,
    object_arguments,
    scalar,
    sgd,
    steps_per_epoch,
)
from lightning_kd.schedules import sigmoid_rampup

__all__ = ["MeanTeacherModule"]

_CONSISTENCY_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": softmax_mse_loss,
    "kl": softmax_kl_loss,
}

#: ``(x_student, x_teacher, y, u_student, u_teacher, u_y)`` of one training batch.
_TrainViews = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


class MeanTeacherModule(LightningKDModule):
    """Semi-supervised training of a student against an EMA of its own weights.

    The teacher is ``copy.deepcopy(student)``, registered as the submodule ``teacher`` (so it
    is in the checkpoint), with ``requires_grad=False`` and outside the optimizer. It is the
    module's one EMA pair (:meth:`ema_pairs`): after every optimizer step the base class
    (:meth:`~lightning_kd.modules.base.LightningKDModule.optimizer_step`) moves its weights
    toward the student's::

        theta_t <- tau * theta_t + (1 - tau) * theta_s,   tau = min(1 - 1 / (n + 1), ema_decay)

    where ``n`` is ``trainer.global_step`` before that step, i.e. the number of optimizer steps
    done so far (:meth:`ema_momentum`), a pure function of the step: no counter is kept, and a
    run resumed from a checkpoint continues the sequence from the checkpoint's
    ``global_step``. The first update therefore copies the student (``tau = 0``), the second
    averages (``tau = 1/2``), and while ``1 - 1 / (n + 1) < ema_decay`` the teacher is the
    plain mean of the student's weights after each step. (The PyTorch reference
    implementation counts from 1, so its first update uses ``tau = 1/2`` and its mean includes
    the teacher's initialisation.) The update happens once per optimizer step whatever
    ``accumulate_grad_batches`` is, and before any ``on_train_batch_end`` callback (e.g. a
    step-interval ``ModelCheckpoint``) sees the module. A step skipped by
    ``nonfinite_loss="skip"`` makes no update but still counts as a step.

    Training objective, for a batch of ``B_l`` labeled and ``B_u`` unlabeled images::

        loss = ce_weight * CE(student(x_s), y)
               + w(t) * consistency(student([x_s; u_s]), teacher([x_t; u_t]))
        w(t) = consistency_weight * sigmoid_rampup(global_step, rampup_steps)

    The student runs once on the concatenated student views and the teacher once, under
    ``torch.no_grad()``, on the concatenated teacher views, so each BatchNorm sees the whole
    ``B_l + B_u`` batch. The consistency term covers labeled and unlabeled images (the papers'
    setting). The CE is the mean over the labeled images only.

    ``rampup_steps = round(consistency_rampup_epochs * steps_per_epoch)`` with
    ``steps_per_epoch = ceil(trainer.num_training_batches / accumulate_grad_batches)`` (what
    ``trainer.estimated_stepping_batches / max_epochs`` is when ``max_epochs`` bounds the run),
    so the ramp is smooth per optimizer step (the PyTorch reference steps it once per epoch) and
    respects gradient accumulation and ``limit_train_batches``. ``sigmoid_rampup`` starts at
    ``exp(-5) ~ 0.0067`` of the maximum.

    Teacher mode: the teacher follows the module's train/eval mode, as in the paper, whose
    teacher is evaluated with its own noise ``eta'`` (dropout), and both official
    implementations, which run the teacher in training mode. During ``fit`` its BatchNorm layers
    normalise with the statistics of the teacher batch, which suit its averaged weights even
    when the running statistics do not. In validation, test and predict it is in eval mode and
    uses its running statistics, which ``ema_buffers`` decides:

    * ``"average"`` (default): the buffers are EMA'd like the weights. Since the teacher's own
      training-mode forward also updates them (with BatchNorm's momentum) the result is mostly
      the teacher's own statistics, pulled slightly toward the student's; closest to the
      PyTorch reference implementation, which averages parameters only.
    * ``"copy"``: the buffers are the student's as of the last EMA update.

    Integer buffers (``num_batches_tracked``) are always copied from the student.

    Hyperparameters of the paper's CIFAR-10 runs. ``softmax_mse_loss`` divides by the number of
    classes as both official implementations do, so their weights apply unchanged. The PyTorch
    ResNet-26 runs use MSE, ``consistency_weight=100``, a 5-epoch ramp-up, ``ema_decay`` 0.99
    (4000 labels) or 0.97 (1000 labels), and batches of 128 images of which 31 are labeled;
    the TensorFlow ConvNet runs use ``ema_decay=0.999`` and a weight of
    ``100 * n_labeled / 50000``. Both references average the CE over the *whole* batch
    (labeled + unlabeled), i.e. ``ce_weight = B_l / (B_l + B_u)`` (31/128 for the ResNet runs);
    the defaults here use the plain labeled mean (``ce_weight=1``).

    Batches. Training: ``{"labeled": [x_s, x_t, y], "unlabeled": [u_s, u_t, u_y]}`` with float
    images ``(B, 3, H, W)``, two augmented views of each image (student's and teacher's), and
    ``(B,)`` int64 labels. ``u_y`` (the unlabeled images' true labels) only feeds the
    diagnostics ``train/unlabeled_acc`` and ``train/teacher_unlabeled_acc`` (labels outside
    ``[0, C)`` are left out; NaN when none is left), never a loss. Validation/test: ``[x, y]``.

    Logs ``train/`` ``loss``, ``loss_ce``, ``loss_consistency``, ``consistency_weight``
    (``w(t)``), ``ema_decay`` (the ``tau`` of the EMA update that follows this batch's optimizer
    step), ``acc`` (student, labeled), ``unlabeled_acc``, ``teacher_unlabeled_acc``; and for
    both networks ``val/`` and ``test/`` ``loss``, ``acc``, ``acc_top5``, ``teacher_loss``,
    ``teacher_acc``, ``teacher_acc_top5``.

    Args:
        student: the network being trained, ``(B, 3, H, W) -> (B, C)``; the teacher is a deep
            copy of it made here.
        ema_decay: the EMA momentum ``tau`` after the warm-up, in ``[0, 1]`` (0: the teacher is
            the student; 1: the warm-up never ends, the teacher is the mean of all the
            student's iterates).
        consistency: ``"mse"`` (:func:`~lightning_kd.losses.softmax_mse_loss`, the paper's
            default) or ``"kl"`` (:func:`~lightning_kd.losses.softmax_kl_loss`,
            ``KL(p_t || p_s)``, whose gradients are at least ``C`` times larger for the same
            weight).
        consistency_weight: the weight ``w`` reached at the end of the ramp-up, >= 0.
        consistency_rampup_epochs: length of the sigmoid ramp-up in epochs (fractions allowed),
            >= 0; 0 uses ``consistency_weight`` from the first step.
        ce_weight: weight of the labeled cross-entropy, >= 0 (see above for the references).
        ema_buffers: ``"average"`` or ``"copy"``, the teacher's floating buffers (see above).
        export_network: the network :meth:`exported_model`, :meth:`forward` and
            ``predict_step`` use, ``"teacher"`` (the paper reports the teacher) or
            ``"student"``.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.

    Raises:
        ValueError: On an argument outside the ranges above.
    """

    eval_metric_names = (
        "loss",
        "acc",
        "acc_top5",
        "teacher_loss",
        "teacher_acc",
        "teacher_acc_top5",
    )

    # Checkpoints written before the EMA momentum became a function of ``global_step`` hold
    # the ``ema_updates`` counter buffer; it equalled ``global_step``, which Lightning
    # restores itself, so loading drops it.
    obsolete_state_keys = ("ema_updates",)

    def __init__(
        self,
        student: nn.Module,
        *,
        ema_decay: float = 0.999,
        consistency: Literal["mse", "kl"] = "mse",
        consistency_weight: float = 100.0,
        consistency_rampup_epochs: float = 5.0,
        ce_weight: float = 1.0,
        ema_buffers: Literal["average", "copy"] = "average",
        export_network: Literal["teacher", "student"] = "teacher",
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        channels_last: bool = False,
        nonfinite_loss: NonFiniteLoss = "error",
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss)
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        if consistency not in _CONSISTENCY_LOSSES:
            raise ValueError(f"consistency must be 'mse' or 'kl', got {consistency!r}")
        for label, value in (
            ("consistency_weight", consistency_weight),
            ("consistency_rampup_epochs", consistency_rampup_epochs),
            ("ce_weight", ce_weight),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value}")
        if ema_buffers not in ("average", "copy"):
            raise ValueError(f"ema_buffers must be 'average' or 'copy', got {ema_buffers!r}")
        if export_network not in ("teacher", "student"):
            raise ValueError(
                f"export_network must be 'teacher' or 'student', got {export_network!r}"
            )
        self.save_hyperparameters(ignore=object_arguments("student", "optimizer", "scheduler"))
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        self.ema_decay = ema_decay
        self.consistency = consistency
        self.consistency_loss = _CONSISTENCY_LOSSES[consistency]
        self.consistency_weight = consistency_weight
        self.consistency_rampup_epochs = consistency_rampup_epochs
        self.ce_weight = ce_weight
        self.ema_buffers: Literal["average", "copy"] = ema_buffers
        self.export_network = export_network

    @property
    @override
    def hp_metric_name(self) -> str:
        """``teacher_acc`` when the teacher is the exported network, else ``acc``."""
        return "teacher_acc" if self.export_network == "teacher" else "acc"

    # ------------------------------------------------------------------ EMA
    @override
    def ema_pairs(self) -> list[EMAPair]:
        """The teacher follows the student; floating buffers as ``ema_buffers`` says."""
        return [EMAPair(self.teacher, self.student, buffers=self.ema_buffers)]

    @override
    def ema_momentum(self, step: int) -> float:
        """``tau = min(1 - 1 / (step + 1), ema_decay)`` of the update after optimizer step
        ``step`` (0-based: the number of steps done before it)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return min(1.0 - 1.0 / (step + 1), self.ema_decay)

    # ------------------------------------------------------------------ schedule
    def consistency_weight_at(self, step: int, steps_per_epoch: int) -> float:
        """``w(t)`` at optimizer step ``step`` for an epoch of ``steps_per_epoch`` steps."""
        if self.consistency_rampup_epochs == 0:
            return self.consistency_weight
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        rampup_steps = max(1, round(self.consistency_rampup_epochs * steps_per_epoch))
        return sigmoid_rampup(step, rampup_steps, self.consistency_weight)

    def current_consistency_weight(self) -> float:
        """``w(t)`` at the trainer's current ``global_step`` (needs a trainer unless the
        ramp-up is 0)."""
        if self.consistency_rampup_epochs == 0:
            return self.consistency_weight
        return self.consistency_weight_at(
            self.trainer.global_step, steps_per_epoch(self.trainer, "consistency_rampup_epochs")
        )

    # ------------------------------------------------------------------ training / evaluation
    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` of :meth:`exported_model` for images ``(B, 3, H, W)``."""
        return self.exported_model()(x)

    @override
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        x_s, x_t, y, u_s, u_t, u_y = _unpack_train_batch(batch)
        n_labeled = x_s.shape[0]
        student_logits = self.student(torch.cat([x_s, u_s]))  # (B_l + B_u, C)
        with torch.no_grad():
            teacher_logits = self.teacher(torch.cat([x_t, u_t]))  # (B_l + B_u, C)
        labeled_logits = student_logits[:n_labeled]  # (B_l, C)
        ce = F.cross_entropy(labeled_logits.float(), y)
        consistency = self.consistency_loss(student_logits, teacher_logits)
        weight = self.current_consistency_weight()
        tau = self.ema_momentum(self.global_step)  # 0 without a trainer

        # Diagnostics only: ``u_y`` never reaches the loss above.
        detached = student_logits.detach()
        num_classes = detached.shape[1]
        return {
            "loss": self.ce_weight * ce + weight * consistency,
            "loss_ce": ce,
            "loss_consistency": consistency,
            "consistency_weight": scalar(weight, ce),
            "ema_decay": scalar(tau, ce),
            "acc": topk_correct(detached[:n_labeled], y).mean(),
            "unlabeled_acc": _known_label_accuracy(detached[n_labeled:], u_y, num_classes),
            "teacher_unlabeled_acc": _known_label_accuracy(
                teacher_logits[n_labeled:], u_y, num_classes
            ),
        }

    @override
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        student_logits = self.student(x)  # (B, C)
        teacher_logits = self.teacher(x)  # (B, C)
        return {
            "loss": F.cross_entropy(student_logits.float(), y, reduction="none"),
            "acc": topk_correct(student_logits, y, k=1),
            "acc_top5": topk_correct(student_logits, y, k=5),
            "teacher_loss": F.cross_entropy(teacher_logits.float(), y, reduction="none"),
            "teacher_acc": topk_correct(teacher_logits, y, k=1),
            "teacher_acc_top5": topk_correct(teacher_logits, y, k=5),
        }

    @override
    def exported_model(self) -> nn.Module:
        return self.teacher if self.export_network == "teacher" else self.student


def _known_label_accuracy(logits: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Top-1 accuracy over the rows whose label is in ``[0, C)``; NaN when there are none."""
    known = (targets >= 0) & (targets < num_classes)  # (B,)
    correct = topk_correct(logits, targets) * known  # (B,)
    return correct.sum() / known.sum()


def _unpack_train_batch(batch: Any) -> _TrainViews:
    """Check the semi-supervised batch layout and return its six tensors."""
    if not (isinstance(batch, Mapping) and "labeled" in batch and "unlabeled" in batch):
        got = f"a dict with keys {list(batch)}" if isinstance(batch, Mapping) else type(batch)
        raise ValueError(
            "a Mean Teacher training batch is {'labeled': [x_student, x_teacher, y], "
            f"'unlabeled': [u_student, u_teacher, u_y]}}, got {got}"
        )
    x_s, x_t, y = _three_tensors("labeled", batch["labeled"])
    u_s, u_t, u_y = _three_tensors("unlabeled", batch["unlabeled"])
    if x_s.shape[0] == 0:
        raise ValueError("the labeled part of a training batch is empty (0 images)")
    for name, student_view, teacher_view in (("labeled", x_s, x_t), ("unlabeled", u_s, u_t)):
        if student_view.shape != teacher_view.shape:
            raise ValueError(
                f"{name} student and teacher views differ in shape: "
                f"{tuple(student_view.shape)} vs {tuple(teacher_view.shape)}"
            )
    if x_s.shape[1:] != u_s.shape[1:]:
        raise ValueError(
            f"labeled and unlabeled images differ in shape: {tuple(x_s.shape[1:])} vs "
            f"{tuple(u_s.shape[1:])}"
        )
    for name, labels, images in (("y", y, x_s), ("u_y", u_y, u_s)):
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{name} must have shape ({images.shape[0]},) to match its images, "
                f"got {tuple(labels.shape)}"
            )
    return x_s, x_t, y, u_s, u_t, u_y


def _three_tensors(name: str, part: Any) -> tuple[Tensor, Tensor, Tensor]:
    if not (
        isinstance(part, Sequence) and len(part) == 3 and all(isinstance(t, Tensor) for t in part)
    ):
        got = (
            f"a {type(part).__name__} of {len(part)}"
            if isinstance(part, Sequence)
            else type(part).__name__
        )
        raise ValueError(
            f"batch[{name!r}] must be [student_view, teacher_view, labels] (3 tensors), got {got}"
        )
    return part[0], part[1], part[2]
