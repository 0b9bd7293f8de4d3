"""Per-sample classification scores that evaluation aggregates with torchmetrics."""

import torch
from torch import Tensor


def dominant_class(targets: Tensor) -> Tensor:
    """The class a target stands for: the labels themselves, or the most probable class of
    soft targets (a mixup / CutMix batch, :mod:`lightning_kd.data.mixing`).

    Args:
        targets: ``(B,)`` class indices, or float ``(B, C)`` target distributions.

    Returns:
        ``(B,)`` class indices (for soft targets the argmax; on a tie, the lowest class).

    Raises:
        ValueError: If ``targets`` is neither ``(B,)`` nor a floating-point ``(B, C)``.
    """
    if targets.ndim == 1:
        return targets
    if targets.ndim == 2 and targets.is_floating_point():
        return targets.argmax(dim=1)
    raise ValueError(
        "targets must be (B,) class indices or float (B, C) soft targets, got "
        f"{targets.dtype} of shape {tuple(targets.shape)}"
    )


def topk_correct(logits: Tensor, targets: Tensor, *, k: int = 1) -> Tensor:
    """Whether the true class is among the ``k`` highest logits, per sample.

    Args:
        logits: ``(B, C)`` scores.
        targets: ``(B,)`` class indices, or float ``(B, C)`` soft targets (mixed batches),
            which count their dominant class (:func:`dominant_class`).
        k: how many top classes count as a hit; clipped to ``C``.

    Returns:
        ``(B,)`` float32 tensor of 0/1; its mean is the top-k accuracy.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if targets.ndim == 2 and targets.shape != logits.shape:
        raise ValueError(
            f"soft targets must have the logits' shape {tuple(logits.shape)}, got "
            f"{tuple(targets.shape)}"
        )
    labels = dominant_class(targets)
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (B, k)
    return (top == labels[:, None]).any(dim=1).float()


def top1_agreement(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Whether two networks predict the same class, per sample.

    Args:
        logits_a: ``(B, C)`` scores of the first network.
        logits_b: ``(B, C)`` scores of the second network.

    Returns:
        ``(B,)`` float32 tensor of 0/1.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(
            f"logits must have the same shape, got {tuple(logits_a.shape)} "
            f"and {tuple(logits_b.shape)}"
        )
    return (logits_a.argmax(dim=1) == logits_b.argmax(dim=1)).to(torch.float32)
