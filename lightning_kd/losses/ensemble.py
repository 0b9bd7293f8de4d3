"""Distillation from an ensemble of teachers: the combined target and the KD loss against it.

Two ways to combine ``K`` teachers with weights ``w_k`` (normalised to sum 1) at temperature
``T``, for logits ``z_k`` of shape ``(B, C)``:

* ``"probabilities"`` (the default): the weighted mean of the softened distributions,
  ``q = sum_k w_k softmax(z_k / T)``. Every teacher's belief counts in proportion to its
  weight; a confident teacher does not drown out the others.
* ``"logits"``: the softened weighted mean of the logits, ``q = softmax((sum_k w_k z_k) / T)``
  (a geometric mean of the distributions, renormalised). Teachers whose logits have a larger
  scale dominate it.

The KD term is then ``T^2 KL(q || p_s)`` with ``p_s = softmax(z_s / T)``
(:func:`kd_loss_to_distribution`). Note on the alternative of averaging the per-teacher KD
losses, ``sum_k w_k T^2 KL(p_k || p_s)``: it has **the same gradient** with respect to the
student logits as KD against the mean distribution (both are ``T (p_s - q) / B``, ``q`` the
mean distribution), but **a larger value**: the two differ by
``T^2 (H(q) - sum_k w_k H(p_k))``, the generalised Jensen-Shannon divergence of the
teachers, which does not depend on the student (0 when the teachers agree).

All math runs in float32, also under autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import _check_2d, _check_floating, _check_temperature, _float32_math

__all__ = [
    "EnsembleMode",
    "ensemble_targets",
    "ensemble_weights",
    "kd_loss_to_distribution",
    "multi_teacher_kd_loss",
]

#: How the teachers' outputs are combined (see the module docstring).
EnsembleMode = Literal["probabilities", "logits"]


def ensemble_weights(weights: Sequence[float]) -> list[float]:
    """The teachers' weights normalised to sum 1.

    Args:
        weights: One finite weight ``>= 0`` per teacher, not all 0.

    Returns:
        ``[w_k / sum(w)]`` as Python floats.

    Raises:
        ValueError: If ``weights`` is empty, a weight is negative or not finite, or all are 0.
    """
    values = [float(w) for w in weights]
    if not values:
        raise ValueError("an ensemble needs at least one teacher weight, got []")
    for k, value in enumerate(values):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"teacher {k}: weight must be a finite number >= 0, got {value}")
    total = sum(values)
    if total == 0:
        raise ValueError(f"the teacher weights must not all be 0, got {values}")
    return [value / total for value in values]


def ensemble_targets(
    teacher_logits: Sequence[Tensor],
    weights: Sequence[float],
    *,
    temperature: float,
    mode: EnsembleMode = "probabilities",
) -> Tensor:
    """The combined soft target of ``K`` teachers, a ``(B, C)`` distribution.

    ``mode="probabilities"``: ``q = sum_k w_k softmax(z_k / T)``;
    ``mode="logits"``: ``q = softmax((sum_k w_k z_k) / T)``; with ``w`` the weights
    normalised to sum 1 (:func:`ensemble_weights`).

    Args:
        teacher_logits: ``K`` tensors of logits ``z_k``, each ``(B, C)``, floating point, no
            autograd needed (they are used as given, not detached).
        weights: ``K`` finite weights ``>= 0``, not all 0.
        temperature: Softmax temperature ``T > 0``.
        mode: ``"probabilities"`` or ``"logits"``.

    Returns:
        Float32 ``(B, C)`` probabilities; each row sums to 1.

    Raises:
        TypeError: If a logits tensor is not floating point.
        ValueError: On a bad ``temperature``, ``mode`` or weight, a count of weights other
            than of teachers, or a teacher whose logits are not 2-D or differ in shape from
            teacher 0's (naming the teacher).
    """
    _check_temperature(temperature)
    if mode not in ("probabilities", "logits"):
        raise ValueError(f"mode must be 'probabilities' or 'logits', got {mode!r}")
    if len(teacher_logits) != len(weights):
        raise ValueError(
            f"one weight per teacher: got {len(teacher_logits)} teacher outputs and "
            f"{len(weights)} weights"
        )
    normalised = ensemble_weights(weights)
    first = teacher_logits[0]
    for k, logits in enumerate(teacher_logits):
        _check_floating(f"teacher {k} logits", logits)
        _check_2d(f"teacher {k} logits", logits)
        if logits.shape != first.shape:
            raise ValueError(
                f"teacher {k} gives logits of shape {tuple(logits.shape)}, teacher 0 of shape "
                f"{tuple(first.shape)}: every teacher must see the same batch and predict the "
                "same classes"
            )
    with _float32_math(first):
        if mode == "logits":
            mean = sum(w * z.float() for w, z in zip(normalised, teacher_logits, strict=True))
            assert isinstance(mean, Tensor)
            return F.softmax(mean / temperature, dim=1)
        mixture = sum(
            w * F.softmax(z.float() / temperature, dim=1)
            for w, z in zip(normalised, teacher_logits, strict=True)
        )
        assert isinstance(mixture, Tensor)
        return mixture  # (B, C)


def kd_loss_to_distribution(
    student_logits: Tensor, target_probs: Tensor, *, temperature: float
) -> Tensor:
    """Hinton's KD against a given target distribution, ``T^2 * KL(q || p_s)``.

    With ``p_s = softmax(z_s / T)`` and the target ``q`` (rows of ``(B, C)``)::

        loss = T^2 * (1 / B) * sum_b sum_c q[b, c] * (log q[b, c] - log p_s[b, c])

    (``0 log 0 = 0``). The ``T^2`` factor **is included**, as in
    :func:`~lightning_kd.losses.kd_loss`, which this equals for ``q = softmax(z_t / T)``. The
    gradient with respect to the student logits is ``T * (p_s - q) / B``. ``q`` is used as
    given (rows are expected to sum to 1; not checked, that would sync the device).

    Args:
        student_logits: Student logits ``z_s``, ``(B, C)``, floating point.
        target_probs: Target distribution ``q``, ``(B, C)``, e.g. from
            :func:`ensemble_targets` at the same temperature.
        temperature: Softmax temperature ``T > 0`` of the student.

    Returns:
        Scalar float32 loss (KL summed over classes, averaged over the batch, times ``T^2``).

    Raises:
        TypeError: If either input is not floating point.
        ValueError: On a bad ``temperature``, inputs that are not 2-D, or shapes that differ.
    """
    _check_temperature(temperature)
    _check_floating("student_logits", student_logits)
    _check_floating("target_probs", target_probs)
    _check_2d("student_logits", student_logits)
    if target_probs.shape != student_logits.shape:
        raise ValueError(
            f"target_probs shape {tuple(target_probs.shape)} does not match student_logits "
            f"shape {tuple(student_logits.shape)}"
        )
    with _float32_math(student_logits):
        log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C)
        q = target_probs.float()
        kl = (torch.xlogy(q, q) - q * log_p_s).sum(dim=1).mean()
        return kl * (temperature * temperature)


def multi_teacher_kd_loss(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    weights: Sequence[float],
    *,
    temperature: float,
    mode: EnsembleMode = "probabilities",
) -> Tensor:
    """KD from an ensemble: :func:`kd_loss_to_distribution` against :func:`ensemble_targets`.

    ``T^2 KL(q || p_s)`` with ``q`` the teachers' combined distribution at ``T``. With one
    teacher (or weights that put everything on one) this is that teacher's
    :func:`~lightning_kd.losses.kd_loss`.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits, weights, temperature, mode: as for :func:`ensemble_targets`.

    Returns:
        Scalar float32 loss, ``T^2`` included.
    """
    target = ensemble_targets(teacher_logits, weights, temperature=temperature, mode=mode)
    return kd_loss_to_distribution(student_logits, target, temperature=temperature)
