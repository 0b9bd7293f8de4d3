"""Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

DKD splits the classical KD loss into a *target-class* term (TCKD: how confident the teacher
is about the true class) and a *non-target-class* term (NCKD: how the teacher ranks the wrong
classes), then weights them independently. Per sample the classical KD loss decomposes
exactly as::

    KD = TCKD + (1 - p_t[target]) * NCKD        # p_t = softmax(z_t / T)

so KD ties NCKD to the teacher's confidence; DKD uses ``alpha * TCKD + beta * NCKD``.

As in :mod:`lightning_kd.losses.logit`, inputs are logits of shape ``(B, C)``, all math runs
in float32 with autocast disabled (the loss is float32 even with bf16 / fp16 logits under
``torch.autocast``), and validation never synchronizes with the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import (
    _check_logits_pair,
    _check_targets,
    _check_temperature,
    _float32_math,
)

__all__ = ["dkd_loss", "dkd_parts"]


def dkd_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 4.0,
) -> tuple[Tensor, Tensor]:
    """The two unweighted DKD terms ``(tckd, nckd)``, each batch-averaged and times ``T^2``.

    With ``p = softmax(z / T)`` over the ``C`` classes of a row and ``y`` its target::

        b    = [p[y], 1 - p[y]]                       # binary: target vs all non-target mass
        q[c] = p[c] / (1 - p[y])   for c != y         # = softmax over the non-target logits

        tckd = T^2 * (1 / B) * sum_b KL(b_t || b_s)
        nckd = T^2 * (1 / B) * sum_b sum_{c != y} q_t[c] * (log q_t[c] - log q_s[c])

    ``q`` is the exact renormalisation over the ``C - 1`` non-target classes: the target
    logit is masked to ``-inf`` before a ``log_softmax``. (The reference code instead
    subtracts ``1000`` from the scaled target logit, which is the same up to float32 round-off
    unless the scaled logits span hundreds of units.) ``log(1 - p[y])`` is taken as a
    log-sum-exp of the non-target log-probabilities, so nothing is computed as ``log(0)``
    and the terms stay finite for extreme logits.

    The ``T^2`` factor **is included** in both terms. The teacher logits are **not**
    detached (same convention as :func:`lightning_kd.losses.kd_loss`).

    Args:
        student_logits: Student logits, shape ``(B, C)`` with ``C >= 2``, floating point.
        teacher_logits: Teacher logits, shape ``(B, C)``, floating point.
        targets: Class indices in ``[0, C)``, shape ``(B,)``, integer dtype. Only shape and
            dtype are checked (no device sync); an out-of-range label fails in ``scatter``.
        temperature: Softmax temperature ``T > 0``.

    Returns:
        ``(tckd, nckd)``: two scalar float32 tensors (KL summed over the binary split /
        non-target classes, averaged over the batch, times ``T^2``).

    Raises:
        TypeError: If the logits are not floating point or ``targets`` is not integer.
        ValueError: On a bad ``temperature``, mismatched or non-2-D shapes, or ``C < 2``.
    """
    _check_temperature(temperature)
    _check_logits_pair(student_logits, teacher_logits)
    batch, num_classes = student_logits.shape
    if num_classes < 2:
        raise ValueError(
            f"DKD needs at least 2 classes (a non-target class), got logits of shape "
            f"{tuple(student_logits.shape)}"
        )
    _check_targets(targets, batch_size=batch)
    with _float32_math(student_logits):
        target_mask = torch.zeros(
            batch, num_classes, dtype=torch.bool, device=student_logits.device
        ).scatter_(1, targets.long().unsqueeze(1), True)  # (B, C)
        z_s = student_logits.float() / temperature  # (B, C)
        z_t = teacher_logits.float() / temperature  # (B, C)

        log_b_s = _log_binary_split(z_s, target_mask)  # (B, 2)
        log_b_t = _log_binary_split(z_t, target_mask)  # (B, 2)
        tckd = F.kl_div(log_b_s, log_b_t, reduction="batchmean", log_target=True)

        log_q_s = _log_non_target(z_s, target_mask)  # (B, C), 0 at the target
        log_q_t = _log_non_target(z_t, target_mask)  # (B, C), 0 at the target
        # At the target both entries are 0, so its KL term is exp(0) * (0 - 0) = 0.
        nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)

        scale = temperature * temperature
        return tckd * scale, nckd * scale


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD loss ``alpha * TCKD + beta * NCKD`` (Zhao et al., 2022).

    The terms are those of :func:`dkd_parts` (both include ``T^2``, both are batch means).
    The defaults ``alpha = 1, beta = 8, T = 4`` are the paper's CIFAR-100 setting; ``beta``
    is usually tuned per teacher (the paper uses ``0.5`` on ImageNet).

    The paper's linear warm-up of the DKD weight (over the first 20 epochs) is **not** part
    of this function: it is a schedule of the training step, applied by the distillation
    module (multiply the returned loss by the schedule's value).

    With ``alpha = beta = 1`` this is **not** the classical KD loss: KD weights NCKD per
    sample by ``1 - p_t[target]`` (the teacher's non-target mass).

    Args:
        student_logits: Student logits, shape ``(B, C)`` with ``C >= 2``, floating point.
        teacher_logits: Teacher logits, shape ``(B, C)``, floating point (not detached).
        targets: Class indices in ``[0, C)``, shape ``(B,)``, integer dtype.
        alpha: Weight ``>= 0`` of the target-class term TCKD.
        beta: Weight ``>= 0`` of the non-target-class term NCKD.
        temperature: Softmax temperature ``T > 0``.

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If the logits are not floating point or ``targets`` is not integer.
        ValueError: On a negative or non-finite ``alpha`` / ``beta``, a bad ``temperature``,
            mismatched or non-2-D shapes, or ``C < 2``.
    """
    for name, weight in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {weight}")
    tckd, nckd = dkd_parts(student_logits, teacher_logits, targets, temperature=temperature)
    with _float32_math(student_logits):
        return alpha * tckd + beta * nckd


def _log_binary_split(scaled_logits: Tensor, target_mask: Tensor) -> Tensor:
    """``log [p[y], 1 - p[y]]`` per row, ``(B, C) -> (B, 2)``, without ``log(1 - p)``."""
    log_p = F.log_softmax(scaled_logits, dim=1)  # (B, C)
    log_p_target = log_p.masked_fill(~target_mask, -math.inf).logsumexp(dim=1)  # (B,)
    log_p_other = log_p.masked_fill(target_mask, -math.inf).logsumexp(dim=1)  # (B,)
    return torch.stack([log_p_target, log_p_other], dim=1)


def _log_non_target(scaled_logits: Tensor, target_mask: Tensor) -> Tensor:
    """Log-softmax over the non-target classes, ``(B, C)``; the target entry is set to 0."""
    masked = scaled_logits.masked_fill(target_mask, -math.inf)  # (B, C)
    return F.log_softmax(masked, dim=1).masked_fill(target_mask, 0.0)
