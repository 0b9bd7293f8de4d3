"""Plain supervised training: teachers and vanilla-student baselines."""

from typing import Literal

import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_kd.losses import smooth_labels, soft_cross_entropy
from lightning_kd.metrics import topk_correct
from lightning_kd.modules.base import Batch, LightningKDModule, NonFiniteLoss, object_arguments, sgd


class ClassifierModule(LightningKDModule):
    """Train one network with cross-entropy (optionally label-smoothed).

    Two label-smoothing forms exist and they differ:

    * ``"uniform"`` (torch's ``label_smoothing``): the target is ``1 - eps + eps / C`` on the
      true class and ``eps / C`` on every class.
    * ``"others"``: the target is ``1 - eps`` on the true class and ``eps / (C - 1)`` on each of
      the other classes (:func:`lightning_kd.losses.smooth_labels`).

    Args:
        model: the network, ``(B, 3, H, W) -> (B, C)`` logits.
        label_smoothing: ``eps`` in ``[0, 1)``; 0 trains on hard labels.
        label_smoothing_mode: ``"uniform"`` or ``"others"``, see above.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_top5`` (and the
    same under ``test/``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        label_smoothing: float = 0.0,
        label_smoothing_mode: Literal["uniform", "others"] = "uniform",
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        channels_last: bool = False,
        nonfinite_loss: NonFiniteLoss = "error",
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if label_smoothing_mode not in ("uniform", "others"):
            raise ValueError(
                f"label_smoothing_mode must be 'uniform' or 'others', got {label_smoothing_mode!r}"
            )
        self.save_hyperparameters(ignore=object_arguments("model", "optimizer", "scheduler"))
        self.model = model
        self.label_smoothing = label_smoothing
        self.label_smoothing_mode = label_smoothing_mode

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images to ``(B, C)`` logits."""
        return self.model(x)

    def classification_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of ``(B, C)`` logits against ``(B,)`` labels or ``(B, C)`` soft
        targets (a mixing transform's), smoothed as configured."""
        if self.label_smoothing > 0 and self.label_smoothing_mode == "others":
            if targets.dim() == 2:
                # Smoothing is linear in the one-hot target, so smoothing the mixed target
                # equals mixing the smoothed ones: t (1 - eps) + (1 - t) eps / (C - 1).
                off = self.label_smoothing / (logits.shape[1] - 1)
                soft = targets.float() * (1 - self.label_smoothing - off) + off
            else:
                soft = smooth_labels(targets, logits.shape[1], epsilon=self.label_smoothing)
            return soft_cross_entropy(logits, soft)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        return {
            "loss": self.classification_loss(logits, y),
            "acc": topk_correct(logits.detach(), y).mean(),
        }

    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        return {
            "loss": F.cross_entropy(logits.float(), y, reduction="none"),
            "acc": topk_correct(logits, y, k=1),
            "acc_top5": topk_correct(logits, y, k=5),
        }

    def exported_model(self) -> nn.Module:
        return self.model
