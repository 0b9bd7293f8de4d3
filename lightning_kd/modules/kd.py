"""Classical knowledge distillation from a frozen, pretrained teacher (Hinton et al., 2015)."""

import hashlib
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import Self, override

from lightning_kd.losses import kd_loss
from lightning_kd.metrics import top1_agreement, topk_correct
from lightning_kd.models.loading import load_weights
from lightning_kd.modules.base import Batch, LightningKDModule, object_arguments, sgd

TEACHER_PREFIX = "teacher."


class KDModule(LightningKDModule):
    """Distil a student from a frozen teacher with Hinton's soft-target loss.

    ``loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(p_t(T) || p_s(T))``.

    The teacher is frozen for real: its parameters have ``requires_grad=False`` and are not in
    the optimizer, it stays in eval mode when Lightning calls ``.train()`` (so its BatchNorm
    statistics never move), and it runs under ``torch.inference_mode``.

    To add a loss term, subclass and override :meth:`compute_losses`, reusing
    :meth:`teacher_logits` and :meth:`logit_losses`.

    Args:
        student: the network being trained, ``(B, 3, H, W) -> (B, C)``.
        teacher: the pretrained network, same input and class count as the student.
        teacher_checkpoint: optional path loaded into ``teacher`` at construction (a Lightning
            checkpoint of a ``ClassifierModule``, a plain ``state_dict``, or a torchvision
            weights file; see :func:`lightning_kd.models.load_weights`).
        student_checkpoint: optional path loaded into ``student`` at construction (a warm
            start, e.g. stage 2 of FitNets from the stage-1 checkpoint).
        save_teacher_weights: store the teacher's weights in this module's checkpoints. When
            ``False`` (requires ``teacher_checkpoint``) checkpoints hold only the teacher's source
            path and its SHA-256, and the teacher is reloaded from that file, which keeps
            checkpoints student-sized.
        temperature: softmax temperature ``T > 0`` of the soft targets.
        alpha: weight of the hard-label cross-entropy in ``[0, 1]``; the KD term gets
            ``1 - alpha``.
        evaluate_teacher: also run the teacher on validation/test batches to log its accuracy
            and the teacher-student top-1 agreement.
        optimizer, scheduler, scheduler_interval, channels_last: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.
    """

    eval_metric_names = ("loss", "acc", "acc_top5", "teacher_acc", "agreement")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        teacher_checkpoint: str | None = None,
        student_checkpoint: str | None = None,
        save_teacher_weights: bool = True,
        temperature: float = 4.0,
        alpha: float = 0.1,
        evaluate_teacher: bool = True,
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        channels_last: bool = False,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, channels_last)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not save_teacher_weights and teacher_checkpoint is None:
            raise ValueError(
                "save_teacher_weights=False needs teacher_checkpoint (the file the teacher is "
                "reloaded from), got teacher_checkpoint=None"
            )
        self.save_hyperparameters(
            ignore=object_arguments("student", "teacher", "optimizer", "scheduler")
        )
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        #: Weights of the two logit terms; subclasses may set them independently.
        self.ce_weight = alpha
        self.kd_weight = 1.0 - alpha
        self.evaluate_teacher = evaluate_teacher
        self.save_teacher_weights = save_teacher_weights
        self.teacher_checkpoint = teacher_checkpoint
        self.teacher_sha256: str | None = None
        if teacher_checkpoint is not None:
            load_weights(self.teacher, teacher_checkpoint)
            self.teacher_sha256 = _sha256(teacher_checkpoint)
        if student_checkpoint is not None:
            load_weights(self.student, student_checkpoint)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    @override
    def train(self, mode: bool = True) -> Self:
        """Set train/eval mode on everything but the teacher, which always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Student logits ``(B, C)`` for images ``(B, 3, H, W)``."""
        return self.student(x)

    def teacher_logits(self, x: Tensor) -> Tensor:
        """Teacher logits ``(B, C)``, computed without autograd, as a normal (non-inference)
        tensor that losses may save for the backward pass."""
        with torch.inference_mode():
            logits = self.teacher(x)
        return logits.clone()

    def logit_losses(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """The Hinton objective and its parts for ``(B, C)`` logits and ``(B,)`` labels.

        ``loss = ce_weight * CE + kd_weight * KD`` (``alpha`` and ``1 - alpha`` by default).
        Returns ``loss``, ``loss_ce``, ``loss_kd``, student ``acc``, ``teacher_acc`` and
        ``agreement`` (teacher-student top-1), each a scalar.
        """
        ce = F.cross_entropy(student_logits.float(), targets)
        kd = kd_loss(student_logits, teacher_logits, temperature=self.temperature)
        student_detached = student_logits.detach()
        return {
            "loss": self.ce_weight * ce + self.kd_weight * kd,
            "loss_ce": ce,
            "loss_kd": kd,
            "acc": topk_correct(student_detached, targets).mean(),
            "teacher_acc": topk_correct(teacher_logits, targets).mean(),
            "agreement": top1_agreement(student_detached, teacher_logits).mean(),
        }

    @override
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        teacher_logits = self.teacher_logits(x)
        student_logits = self.student(x)
        return self.logit_losses(student_logits, teacher_logits, y)

    @override
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        student_logits = self.student(x)
        values = {
            "loss": F.cross_entropy(student_logits.float(), y, reduction="none"),
            "acc": topk_correct(student_logits, y, k=1),
            "acc_top5": topk_correct(student_logits, y, k=5),
        }
        if self.evaluate_teacher:
            teacher_logits = self.teacher(x)
            values["teacher_acc"] = topk_correct(teacher_logits, y, k=1)
            values["agreement"] = top1_agreement(student_logits, teacher_logits)
        return values

    @override
    def exported_model(self) -> nn.Module:
        return self.student

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["teacher_source"] = {
            "path": self.teacher_checkpoint,
            "sha256": self.teacher_sha256,
            "weights_saved": self.save_teacher_weights,
        }
        if not self.save_teacher_weights:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = checkpoint.get("teacher_source", {})
        state = checkpoint["state_dict"]
        if any(k.startswith(TEACHER_PREFIX) for k in state):
            return
        # The teacher's weights were left out: they are the ones this module loaded from
        # ``teacher_checkpoint`` at construction. Put them back so loading stays strict.
        if self.teacher_checkpoint is None:
            raise ValueError(
                "this checkpoint has no teacher weights (it was saved with "
                f"save_teacher_weights=False from {source.get('path')!r}); construct the module "
                "with teacher_checkpoint pointing at that file"
            )
        saved_sha = source.get("sha256")
        if saved_sha is not None and saved_sha != self.teacher_sha256:
            rank_zero_warn(
                f"teacher file {self.teacher_checkpoint!r} differs from the one this checkpoint "
                f"was trained with (sha256 {self.teacher_sha256} != {saved_sha})"
            )
        for key, value in self.teacher.state_dict().items():
            state[TEACHER_PREFIX + key] = value


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
