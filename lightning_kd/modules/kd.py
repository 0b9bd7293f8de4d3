"""Classical knowledge distillation from a frozen, pretrained teacher (Hinton et al., 2015)."""

import hashlib
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import Self, override

from lightning_kd.losses import kd_loss
from lightning_kd.metrics import top1_agreement, topk_correct
from lightning_kd.models.loading import load_weights
from lightning_kd.modules.base import (
    CHECKPOINT_RECORD,
    Batch,
    LightningKDModule,
    NonFiniteLoss,
    object_arguments,
    sgd,
)
from lightning_kd.normalization import Renormalize

TEACHER_PREFIX = "teacher."


class KDModule(LightningKDModule):
    """Distil a student from a frozen teacher with Hinton's soft-target loss.

    ``loss = ce_weight * CE(student, labels) + kd_weight * T^2 * KL(p_t(T) || p_s(T))``.

    ``ce_weight`` and ``kd_weight`` are the weights the loss uses (the attributes of the same
    names, and the values the checkpoint's hyperparameters record). ``alpha`` is Hinton's
    shorthand for the two: ``alpha=a`` means ``ce_weight=a, kd_weight=1 - a``; it cannot be
    combined with either weight. With none of the three: ``ce_weight=0.1, kd_weight=0.9``.

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
        ce_weight: weight of the hard-label cross-entropy, a finite float ``>= 0``; 0.1 when
            not given (``None``) and ``alpha`` is not given either.
        kd_weight: weight of the ``T^2 KL`` soft-target term, a finite float ``>= 0``; 0.9
            when not given (``None``) and ``alpha`` is not given either.
        alpha: shorthand for ``ce_weight=alpha, kd_weight=1 - alpha``, in ``[0, 1]``; only
            without ``ce_weight`` and ``kd_weight``.
        evaluate_teacher: also run the teacher on validation/test batches to log its accuracy
            and the teacher-student top-1 agreement.
        teacher_mean, teacher_std: the per-channel input normalisation the teacher expects
            (e.g. ImageNet's ``[0.485, 0.456, 0.406]`` / ``[0.229, 0.224, 0.225]`` for a timm or
            torchvision teacher) when it differs from the student's; the teacher then sees
            the batch re-normalised (:class:`~lightning_kd.normalization.Renormalize`), the
            student the batch as it is. ``None`` (default): both see the same batch.
        input_mean, input_std: the normalisation the batches arrive with; by default the
            datamodule's ``mean`` / ``std`` (read at setup). Needed only with
            ``teacher_mean``.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.

    Raises:
        ValueError: On a temperature that is not > 0, a weight that is negative or not finite,
            ``alpha`` outside ``[0, 1]`` or given together with ``ce_weight`` / ``kd_weight``,
            or ``save_teacher_weights=False`` without ``teacher_checkpoint``.
    """

    #: The weights when neither they nor ``alpha`` are given (Hinton's alpha = 0.1).
    DEFAULT_CE_WEIGHT: ClassVar[float] = 0.1
    DEFAULT_KD_WEIGHT: ClassVar[float] = 0.9

    eval_metric_names = ("loss", "acc", "acc_top5", "teacher_acc", "agreement")
    progress_bar_names: ClassVar[tuple[str, ...] | None] = ("loss_ce", "loss_kd")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        teacher_checkpoint: str | None = None,
        student_checkpoint: str | None = None,
        save_teacher_weights: bool = True,
        temperature: float = 4.0,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
        alpha: float | None = None,
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
        super().__init__(optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        ce_weight, kd_weight = loss_weights(ce_weight, kd_weight, alpha)
        if not save_teacher_weights and teacher_checkpoint is None:
            raise ValueError(
                "save_teacher_weights=False needs teacher_checkpoint (the file the teacher is "
                "reloaded from), got teacher_checkpoint=None"
            )
        self.save_hyperparameters(
            ignore=object_arguments("student", "teacher", "optimizer", "scheduler")
        )
        # The hyperparameters record the weights the loss uses, in the one convention.
        self.hparams.update(ce_weight=ce_weight, kd_weight=kd_weight, alpha=None)
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        #: Weights of the cross-entropy and of the KD term in :meth:`logit_losses`.
        self.ce_weight: float = ce_weight
        self.kd_weight: float = kd_weight
        self.evaluate_teacher = evaluate_teacher
        self.save_teacher_weights = save_teacher_weights
        self.teacher_checkpoint = teacher_checkpoint
        self.student_checkpoint = student_checkpoint
        #: Where the teacher / student weights came from: absolute path and SHA-256 of each
        #: file (``None`` when not loaded from a file), recorded in every checkpoint.
        self.teacher_source = _load_recorded(self.teacher, teacher_checkpoint)
        self.student_source = _load_recorded(self.student, student_checkpoint)
        self.teacher_sha256: str | None = self.teacher_source["sha256"]
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if (teacher_mean is None) != (teacher_std is None):
            raise ValueError(
                "teacher_mean and teacher_std go together, got teacher_mean="
                f"{teacher_mean} and teacher_std={teacher_std}"
            )
        if (input_mean is None) != (input_std is None):
            raise ValueError(
                f"input_mean and input_std go together, got input_mean={input_mean} and "
                f"input_std={input_std}"
            )
        self.teacher_mean, self.teacher_std = teacher_mean, teacher_std
        #: Maps the batch to the teacher's input normalisation (identity when not needed).
        self.teacher_input: nn.Module = nn.Identity()
        if teacher_mean is not None and teacher_std is not None and input_mean is not None:
            assert input_std is not None
            self.teacher_input = Renormalize(input_mean, input_std, teacher_mean, teacher_std)

    @override
    def setup(self, stage: str) -> None:
        """Build the teacher's input re-normalisation from the datamodule's ``mean`` / ``std``
        when ``teacher_mean`` is set and ``input_mean`` is not."""
        if self.teacher_mean is not None and isinstance(self.teacher_input, nn.Identity):
            datamodule = getattr(self.trainer, "datamodule", None)
            mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            if mean is None or std is None:
                raise ValueError(
                    "teacher_mean / teacher_std need the normalisation the batches arrive "
                    f"with; the datamodule ({type(datamodule).__name__}) has no mean / std: "
                    "pass input_mean and input_std"
                )
            assert self.teacher_std is not None
            self.teacher_input = Renormalize(mean, std, self.teacher_mean, self.teacher_std)
        super().setup(stage)

    @override
    def train(self, mode: bool = True) -> Self:
        """Set train/eval mode on everything but the teacher, which always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Student logits ``(B, C)`` for images ``(B, 3, H, W)``."""
        return self.student(x)

    def teacher_forward(self, x: Tensor) -> Tensor:
        """The teacher on the batch ``x``, re-normalised to its own input statistics
        (``teacher_mean`` / ``teacher_std``) if those differ from the student's."""
        return self.teacher(self.teacher_input(x))

    def teacher_logits(self, x: Tensor) -> Tensor:
        """Teacher logits ``(B, C)``, computed without autograd, as a normal (non-inference)
        tensor that losses may save for the backward pass."""
        with torch.inference_mode():
            logits = self.teacher_forward(x)
        return logits.clone()

    def logit_losses(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """The Hinton objective and its parts for ``(B, C)`` logits and ``(B,)`` labels.

        ``loss = ce_weight * CE + kd_weight * KD``.
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
            teacher_logits = self.teacher_forward(x)
            values["teacher_acc"] = topk_correct(teacher_logits, y, k=1)
            values["agreement"] = top1_agreement(student_logits, teacher_logits)
        return values

    @override
    def exported_model(self) -> nn.Module:
        return self.student

    @override
    def eval_mode_modules(self) -> dict[str, str]:
        return {"teacher": "the frozen teacher's weights and BatchNorm statistics never change"}

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        source = self.teacher_source
        if source["path"] is not None:
            rank_zero_info(f"teacher: {source['path']} (sha256 {source['sha256']})")
        else:
            rank_zero_info("teacher: weights as constructed (no teacher_checkpoint file)")

    def run_facts(self) -> dict[str, Any]:
        """Facts of this run for the hyperparameter record: the teacher and student files."""
        return {
            "teacher_file": self.teacher_source["path"],
            "teacher_sha256": self.teacher_source["sha256"],
            "student_init_file": self.student_source["path"],
            "student_init_sha256": self.student_source["sha256"],
        }

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        record = checkpoint[CHECKPOINT_RECORD]
        record["teacher"] = {**self.teacher_source, "weights_saved": self.save_teacher_weights}
        record["student_init"] = dict(self.student_source)
        if not self.save_teacher_weights:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the teacher: from the checkpoint's own weights, or (when they were left out)
        from ``teacher_checkpoint``, which must be the very file the run was trained with.

        Raises:
            ValueError: If the teacher weights were left out and ``teacher_checkpoint`` is
                missing or is not the file the checkpoint records (by SHA-256).
        """
        source = recorded_teacher(checkpoint)
        state = checkpoint["state_dict"]
        saved_sha = source.get("sha256")
        if any(k.startswith(TEACHER_PREFIX) for k in state):
            if saved_sha is not None and self.teacher_sha256 not in (None, saved_sha):
                rank_zero_warn(
                    f"the teacher file {self.teacher_source['path']} (sha256 "
                    f"{self.teacher_sha256}) is not the one this checkpoint was trained with "
                    f"({source.get('path')}, sha256 {saved_sha}); the checkpoint's own copy of "
                    "the original teacher is used"
                )
            return
        # The teacher's weights were left out: they are the ones this module loaded from
        # ``teacher_checkpoint`` at construction. Put them back so loading stays strict.
        if self.teacher_checkpoint is None:
            raise ValueError(
                "this checkpoint has no teacher weights (it was saved with "
                f"save_teacher_weights=False from {source.get('path')!r}); set "
                "teacher_checkpoint to that file"
            )
        if saved_sha is not None and saved_sha != self.teacher_sha256:
            raise ValueError(
                f"teacher_checkpoint {self.teacher_source['path']} has sha256 "
                f"{self.teacher_sha256}, but this checkpoint was trained with the teacher "
                f"{source.get('path')} of sha256 {saved_sha}, and it holds no copy of its "
                "weights. Point teacher_checkpoint at the original file, or start a new run "
                "without ckpt_path."
            )
        for key, value in self.teacher.state_dict().items():
            state[TEACHER_PREFIX + key] = value


def loss_weights(
    ce_weight: float | None, kd_weight: float | None, alpha: float | None
) -> tuple[float, float]:
    """``(ce_weight, kd_weight)`` from :class:`KDModule`'s arguments: the weights given,
    ``(alpha, 1 - alpha)`` from the shorthand, else the defaults ``(0.1, 0.9)`` for those
    not given.

    Raises:
        ValueError: If ``alpha`` comes with a weight, is outside ``[0, 1]``, or a weight is
            negative or not finite.
    """
    if alpha is not None:
        if ce_weight is not None or kd_weight is not None:
            raise ValueError(
                "alpha is a shorthand for ce_weight=alpha, kd_weight=1 - alpha and cannot be "
                f"combined with them; got alpha={alpha}, ce_weight={ce_weight}, "
                f"kd_weight={kd_weight}. Pass either alpha or the weights"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        return float(alpha), 1.0 - alpha
    weights = (
        KDModule.DEFAULT_CE_WEIGHT if ce_weight is None else ce_weight,
        KDModule.DEFAULT_KD_WEIGHT if kd_weight is None else kd_weight,
    )
    for label, value in zip(("ce_weight", "kd_weight"), weights, strict=True):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{label} must be a finite number >= 0, got {value}")
    return float(weights[0]), float(weights[1])


def recorded_teacher(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The teacher file a KD checkpoint records: ``path`` (absolute), ``sha256`` and
    ``weights_saved`` (empty for a checkpoint of another module)."""
    record = checkpoint.get(CHECKPOINT_RECORD, {})
    if "teacher" in record:
        return dict(record["teacher"])
    return dict(checkpoint.get("teacher_source", {}))  # written before the record existed


def _load_recorded(network: nn.Module, path: str | None) -> dict[str, str | None]:
    """Load ``path`` into ``network`` (if given) and return its absolute path and SHA-256."""
    if path is None:
        return {"path": None, "sha256": None}
    load_weights(network, path)
    return {"path": str(Path(path).expanduser().resolve()), "sha256": _sha256(path)}


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
