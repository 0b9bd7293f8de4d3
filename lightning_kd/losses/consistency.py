"""Consistency losses between two networks' class distributions (Mean Teacher, Pi-model).

Both functions compare ``p_s = softmax(z_s)`` with ``p_t = softmax(z_t)`` row by row for
logits of shape ``(B, C)`` and return a float32 scalar, doing the softmax math in float32
even under ``torch.autocast`` (see :mod:`lightning_kd.losses.logit`).

The teacher logits are used **as given**: nothing is detached here. In Mean Teacher the
teacher's outputs come from a forward under ``torch.no_grad()``, so gradient reaches the
student only; pass teacher logits that require grad (as the Pi-model's second student pass
does) and gradient flows into both sides.

Validation only looks at shapes and dtypes, so it never synchronizes with the device.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import _check_logits_pair, _float32_math

__all__ = ["softmax_kl_loss", "softmax_mse_loss"]


def softmax_mse_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared difference of the two softmax distributions, averaged over batch and classes.

    With ``p_s = softmax(z_s)`` and ``p_t = softmax(z_t)`` (rows of ``(B, C)``)::

        loss = (1 / B) * sum_b (1 / C) * sum_c (p_s[b, c] - p_t[b, c])^2

    This is the reduction of both official Mean Teacher implementations (Tarvainen & Valpola,
    2017), which divide the squared distance by the number of classes ``C``; their published
    consistency weights (e.g. 100 for the CIFAR-10 ResNet runs) are for this form. The
    paper's ``||p_s - p_t||^2`` (summed over classes) is ``C`` times this value.

    The gradient with respect to the student logits is
    ``(2 / (B * C)) * (diag(p_s) - p_s p_s^T) (p_s - p_t)`` per row: unlike the KL's
    ``(p_s - p_t) / B`` it is damped where the student's softmax saturates.

    Args:
        student_logits: Student logits ``z_s``, shape ``(B, C)``, floating point.
        teacher_logits: Teacher logits ``z_t``, shape ``(B, C)``, floating point; used as
            given (not detached).

    Returns:
        Scalar float32 loss, 0 when the two distributions are equal.

    Raises:
        TypeError: If either logits tensor is not floating point.
        ValueError: If the logits are not 2-D and non-empty, or the two shapes differ.
    """
    _check_logits_pair(student_logits, teacher_logits)
    with _float32_math(student_logits):
        p_s = F.softmax(student_logits.float(), dim=1)  # (B, C)
        p_t = F.softmax(teacher_logits.float(), dim=1)  # (B, C)
        return F.mse_loss(p_s, p_t, reduction="mean")


def softmax_kl_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(p_t || p_s)`` summed over classes and averaged over the batch.

    With ``p_s = softmax(z_s)`` and ``p_t = softmax(z_t)`` (rows of ``(B, C)``)::

        loss = (1 / B) * sum_b sum_c p_t[b, c] * (log p_t[b, c] - log p_s[b, c])

    No temperature and no ``1 / C``; this equals
    :func:`~lightning_kd.losses.kd_loss` at ``temperature=1``. The gradient with respect to
    the student logits is ``(p_s - p_t) / B``, at least ``C`` times the size of
    :func:`softmax_mse_loss`'s (whose softmax Jacobian has norm <= 1/2), so a weight tuned for
    one does not transfer to the other. Both
    distributions come from ``log_softmax``, so the loss is exactly 0 for identical logits
    and finite for extreme ones.

    Args:
        student_logits: Student logits ``z_s``, shape ``(B, C)``, floating point.
        teacher_logits: Teacher logits ``z_t``, shape ``(B, C)``, floating point; used as
            given (not detached).

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If either logits tensor is not floating point.
        ValueError: If the logits are not 2-D and non-empty, or the two shapes differ.
    """
    _check_logits_pair(student_logits, teacher_logits)
    with _float32_math(student_logits):
        log_p_s = F.log_softmax(student_logits.float(), dim=1)  # (B, C)
        log_p_t = F.log_softmax(teacher_logits.float(), dim=1)  # (B, C)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
