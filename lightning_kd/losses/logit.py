"""Distillation losses as pure functions on tensors.

Every function here takes logits of shape ``(B, C)`` (batch, classes) and does its
softmax / log-softmax / KL math in float32, even when called under ``torch.autocast``
with half-precision inputs: inputs are upcast with ``.float()`` and the math runs with
autocast disabled, so the returned loss is always a float32 tensor.

Validation on the hot path (:func:`kd_loss`, :func:`distillation_loss`,
:func:`soft_cross_entropy`) only looks at Python scalars, shapes and dtypes, so it never
synchronizes with the device. Only :func:`smooth_labels` and
:func:`uniform_smooth_labels` read tensor values (to check the label range).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "distillation_loss",
    "kd_loss",
    "smooth_labels",
    "soft_cross_entropy",
    "softmax_with_temperature",
    "standardize_logits",
    "uniform_smooth_labels",
]


def standardize_logits(logits: Tensor, *, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): z-score each row of logits.

    ``(z - mean(z)) / (eps + std(z))`` per row, with the unbiased standard deviation (as the
    authors' code, ``torch.std``), not detached. Applied to both the student's and the
    teacher's logits before the temperature softmax of a logit loss ("KD + LS").

    Args:
        logits: ``(B, C)`` logits, ``C >= 2``.
        eps: Added to the standard deviation (``1e-7`` as the authors).

    Returns:
        ``(B, C)`` standardised logits (each row mean 0, unbiased std about 1), float32.

    Raises:
        ValueError: If ``logits`` is not 2-D with at least 2 classes.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C) with C >= 2, got {tuple(logits.shape)}")
    with _float32_math(logits):
        z = logits.float()
        mean = z.mean(dim=1, keepdim=True)
        std = z.std(dim=1, keepdim=True)  # unbiased, as torch.std
        return (z - mean) / (eps + std)


def softmax_with_temperature(logits: Tensor, *, temperature: float) -> Tensor:
    """Softened class probabilities ``softmax(z / T)`` over the last dimension.

    Args:
        logits: Floating-point logits ``z`` of shape ``(..., C)``, usually ``(B, C)``.
        temperature: ``T > 0``. ``T > 1`` flattens the distribution, ``T < 1`` sharpens it.

    Returns:
        Float32 probabilities of the same shape as ``logits``; each row sums to 1.

    Raises:
        TypeError: If ``logits`` is not a floating-point tensor.
        ValueError: If ``temperature`` is not a finite number > 0, or ``logits`` is 0-D.
    """
    _check_temperature(temperature)
    _check_floating("logits", logits)
    if logits.dim() < 1:
        raise ValueError(f"logits must have a class dimension, got shape {tuple(logits.shape)}")
    with _float32_math(logits):
        return F.softmax(logits.float() / temperature, dim=-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 4.0) -> Tensor:
    """Hinton et al. (2015) distillation loss, ``T^2 * KL(p_t || p_s)``.

    With ``p_s = softmax(z_s / T)`` and ``p_t = softmax(z_t / T)`` (rows of ``(B, C)``)::

        loss = T^2 * (1 / B) * sum_b sum_c p_t[b, c] * (log p_t[b, c] - log p_s[b, c])

    The ``T^2`` factor **is included**: it keeps the gradient magnitude with respect to the
    student logits roughly independent of ``T``. That gradient is
    ``T * (p_s - p_t) / B``. Both distributions are computed with ``log_softmax``, so the
    loss is exactly 0 when the logits are identical and stays finite for extreme logits.

    The teacher logits are **not** detached here. Pass teacher outputs produced under
    ``torch.no_grad()`` / ``torch.inference_mode()`` (or ``.detach()`` them); if they
    require grad, gradient flows into the teacher as well.

    Args:
        student_logits: Student logits ``z_s``, shape ``(B, C)``, floating point.
        teacher_logits: Teacher logits ``z_t``, shape ``(B, C)``, floating point.
        temperature: Softmax temperature ``T > 0``.

    Returns:
        Scalar float32 loss (KL summed over classes, averaged over the batch, times ``T^2``).

    Raises:
        TypeError: If either logits tensor is not floating point.
        ValueError: If ``temperature`` is not a finite number > 0, the logits are not 2-D,
            or the two shapes differ.
    """
    _check_temperature(temperature)
    _check_logits_pair(student_logits, teacher_logits)
    with _float32_math(student_logits):
        log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C)
        log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)  # (B, C)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * (temperature * temperature)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 4.0,
    alpha: float = 0.1,
) -> Tensor:
    """Hard-label cross-entropy mixed with the soft distillation loss.

    ::

        loss = alpha * CE(z_s, y) + (1 - alpha) * kd_loss(z_s, z_t, temperature=T)

    The cross-entropy uses ``T = 1`` (plain logits, mean over the batch); the KD term is
    :func:`kd_loss` and therefore **includes** ``T^2``. ``alpha = 1`` is pure supervised
    training, ``alpha = 0`` pure distillation. As in :func:`kd_loss`, the teacher logits
    are used as given (not detached).

    Args:
        student_logits: Student logits, shape ``(B, C)``, floating point.
        teacher_logits: Teacher logits, shape ``(B, C)``, floating point.
        targets: Class indices in ``[0, C)``, shape ``(B,)``, integer dtype.
            Only the shape and dtype are checked (no device sync); an out-of-range label
            fails inside ``F.cross_entropy``.
        temperature: Softmax temperature ``T > 0`` of the KD term.
        alpha: Weight of the cross-entropy term, in ``[0, 1]``.

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If the logits are not floating point or ``targets`` is not integer.
        ValueError: On a bad ``temperature`` / ``alpha``, or mismatched shapes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_temperature(temperature)
    _check_logits_pair(student_logits, teacher_logits)
    _check_targets(targets, batch_size=student_logits.shape[0])
    kd = kd_loss(student_logits, teacher_logits, temperature=temperature)
    with _float32_math(student_logits):
        ce = F.cross_entropy(student_logits.float(), targets.long())
        return alpha * ce + (1.0 - alpha) * kd


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against a target distribution, averaged over the batch.

    ::

        loss = (1 / B) * sum_b ( -sum_c q[b, c] * log softmax(z)[b, c] )

    Rows of ``target_probs`` are expected to sum to 1; this is not checked (it would need
    a device sync). No temperature is applied.

    Args:
        logits: Logits ``z``, shape ``(B, C)``, floating point.
        target_probs: Target probabilities ``q``, shape ``(B, C)``, floating point.

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If either input is not floating point.
        ValueError: If the inputs are not 2-D, are empty, or their shapes differ.
    """
    _check_floating("logits", logits)
    _check_floating("target_probs", target_probs)
    _check_2d("logits", logits)
    if target_probs.shape != logits.shape:
        raise ValueError(
            f"target_probs shape {tuple(target_probs.shape)} does not match "
            f"logits shape {tuple(logits.shape)}"
        )
    with _float32_math(logits):
        log_p = F.log_softmax(logits.float(), dim=1)  # (B, C)
        return -(target_probs.float() * log_p).sum(dim=1).mean()


def smooth_labels(targets: Tensor, num_classes: int, *, epsilon: float) -> Tensor:
    """One-hot targets with ``epsilon`` spread over the *other* classes.

    For each row: ``1 - epsilon`` on the true class and ``epsilon / (C - 1)`` on each of
    the ``C - 1`` other classes.

    This is **not** what ``F.cross_entropy(..., label_smoothing=epsilon)`` uses; torch
    spreads ``epsilon`` uniformly over *all* classes (``1 - epsilon + epsilon / C`` on the
    true class, ``epsilon / C`` elsewhere). Use :func:`uniform_smooth_labels` for that form.

    Args:
        targets: Class indices in ``[0, C)``, shape ``(B,)``, integer dtype.
        num_classes: Number of classes ``C >= 2``.
        epsilon: Probability mass moved off the true class, in ``[0, 1)``.

    Returns:
        Float32 target distribution of shape ``(B, C)`` on ``targets.device``.

    Raises:
        TypeError: If ``targets`` is not an integer tensor.
        ValueError: On ``num_classes < 2``, ``epsilon`` outside ``[0, 1)``, a ``targets``
            tensor that is not 1-D, or a label outside ``[0, C)`` (this check syncs).
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    _check_label_tensor(targets, num_classes)
    off = epsilon / (num_classes - 1)
    return _fill_targets(targets, num_classes, on=1.0 - epsilon, off=off)


def uniform_smooth_labels(targets: Tensor, num_classes: int, *, epsilon: float) -> Tensor:
    """Label smoothing in torch's form: ``epsilon`` spread uniformly over all classes.

    For each row: ``1 - epsilon + epsilon / C`` on the true class and ``epsilon / C`` on
    every other class. ``soft_cross_entropy(z, uniform_smooth_labels(y, C, epsilon=e))``
    equals ``F.cross_entropy(z, y, label_smoothing=e)``. See :func:`smooth_labels` for the
    variant that puts exactly ``1 - epsilon`` on the true class.

    Args:
        targets: Class indices in ``[0, C)``, shape ``(B,)``, integer dtype.
        num_classes: Number of classes ``C >= 2``.
        epsilon: Smoothing amount in ``[0, 1]`` (torch's range; ``1`` gives uniform rows).

    Returns:
        Float32 target distribution of shape ``(B, C)`` on ``targets.device``.

    Raises:
        TypeError: If ``targets`` is not an integer tensor.
        ValueError: On ``num_classes < 2``, ``epsilon`` outside ``[0, 1]``, a ``targets``
            tensor that is not 1-D, or a label outside ``[0, C)`` (this check syncs).
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    _check_label_tensor(targets, num_classes)
    off = epsilon / num_classes
    return _fill_targets(targets, num_classes, on=1.0 - epsilon + off, off=off)


def _float32_math(tensor: Tensor) -> AbstractContextManager[object]:
    """Context that disables autocast on ``tensor``'s device so float32 math stays float32."""
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


def _fill_targets(targets: Tensor, num_classes: int, *, on: float, off: float) -> Tensor:
    out = torch.full(
        (targets.shape[0], num_classes), off, dtype=torch.float32, device=targets.device
    )  # (B, C)
    return out.scatter_(1, targets.long().unsqueeze(1), on)


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def _check_floating(name: str, tensor: Tensor) -> None:
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def _check_2d(name: str, logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, C), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(logits.shape)}")


def _check_logits_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    _check_floating("student_logits", student_logits)
    _check_floating("teacher_logits", teacher_logits)
    _check_2d("student_logits", student_logits)
    _check_2d("teacher_logits", teacher_logits)
    b_s, c_s = student_logits.shape
    b_t, c_t = teacher_logits.shape
    if b_s != b_t:
        raise ValueError(f"batch sizes differ: student has {b_s} rows, teacher has {b_t}")
    if c_s != c_t:
        raise ValueError(
            f"class counts differ: student has {c_s} classes, teacher has {c_t} "
            "(a projection head is needed to distill across label spaces)"
        )


def _check_targets(targets: Tensor, *, batch_size: int) -> None:
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.shape != (batch_size,):
        raise ValueError(
            f"targets must have shape ({batch_size},) to match the logits, "
            f"got {tuple(targets.shape)}"
        )


def _check_label_tensor(targets: Tensor, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if targets.dim() != 1:
        raise ValueError(f"targets must be 1-D (B,), got shape {tuple(targets.shape)}")
    _check_targets(targets, batch_size=targets.shape[0])
    if targets.numel() > 0:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"targets must be in [0, {num_classes}), got label {bad}")
