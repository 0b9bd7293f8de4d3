"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

DIST replaces KD's exact match of the softened class probabilities by a match of their
*relations*: the Pearson correlation between the student's and the teacher's probabilities,
once per sample over the classes (inter-class relation) and once per class over the batch
(intra-class relation). A correlation ignores the scale and the offset of what it compares, so
a student only has to rank and spread its predictions like the teacher, not reproduce them.

Inputs are logits of shape ``(B, C)``. As in :mod:`lightning_kd.losses.logit`, all math runs
in float32 with autocast disabled (the loss is float32 even with bf16 / fp16 logits under
``torch.autocast``), and validation only reads shapes and dtypes (no device sync).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import _check_logits_pair, _check_temperature, _float32_math

__all__ = ["dist_loss", "dist_parts", "pearson_correlation"]

#: Added to the product of the two norms in the correlation (the authors' value).
PEARSON_EPS = 1e-8


def pearson_correlation(a: Tensor, b: Tensor, *, eps: float = PEARSON_EPS) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``.

    Each row is centred on its own mean, then compared by cosine::

        a_c = a - mean(a, dim=1),  b_c = b - mean(b, dim=1)
        r   = sum(a_c * b_c, dim=1) / (||a_c|| * ||b_c|| + eps)        # (N,)

    ``eps`` is added to the product of the norms, as in the DIST authors' code, so a constant
    row (zero after centring) gives ``r = 0`` rather than NaN.

    Args:
        a: ``(N, D)`` floating-point tensor.
        b: ``(N, D)`` floating-point tensor, same shape as ``a``.
        eps: ``>= 0``, added to the denominator.

    Returns:
        ``(N,)`` float32 correlations in ``[-1, 1]``.

    Raises:
        ValueError: If ``a`` and ``b`` are not 2-D tensors of the same shape, or ``eps < 0``.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"a and b must be 2-D tensors of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    with _float32_math(a):
        a_c = a.float() - a.float().mean(dim=1, keepdim=True)  # (N, D)
        b_c = b.float() - b.float().mean(dim=1, keepdim=True)  # (N, D)
        dot = (a_c * b_c).sum(dim=1)  # (N,)
        return dot / (a_c.norm(dim=1) * b_c.norm(dim=1) + eps)


def dist_parts(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The two unweighted DIST terms ``(inter, intra)``, each times ``tau^2``.

    With ``Y_s = softmax(z_s / tau)`` and ``Y_t = softmax(z_t / tau)`` (rows of ``(B, C)``) and
    ``r`` the row-wise :func:`pearson_correlation`::

        inter = tau^2 * (1 - (1 / B) * sum_b r(Y_s[b, :], Y_t[b, :]))     # per sample
        intra = tau^2 * (1 - (1 / C) * sum_c r(Y_s[:, c], Y_t[:, c]))     # per class

    Both are 0 (up to the ``1e-8`` in ``r``) when ``Y_s = Y_t``, and at most ``2 tau^2``;
    ``inter`` is already 0 when each row of ``Y_s`` is a positive affine image of the same row
    of ``Y_t`` (a correlation ignores scale and offset). A class whose probability
    is the same for every sample of the batch (e.g. ``B = 1``) has a zero centred column, so
    its ``r`` is 0 and it adds ``tau^2 / C`` to ``intra`` whatever the student does.

    The ``tau^2`` factor **is included** (as the authors' CIFAR code, ``DIST(tau=4)``). The
    teacher logits are **not** detached (same convention as :func:`~lightning_kd.losses.kd_loss`).

    Args:
        student_logits: Student logits ``z_s``, shape ``(B, C)``, floating point.
        teacher_logits: Teacher logits ``z_t``, shape ``(B, C)``, floating point.
        temperature: Softmax temperature ``tau > 0`` (4 on CIFAR-100, 1 on ImageNet).

    Returns:
        ``(inter, intra)``: two scalar float32 tensors.

    Raises:
        TypeError: If either logits tensor is not floating point.
        ValueError: On a bad ``temperature``, or logits that are not 2-D of the same shape.
    """
    _check_temperature(temperature)
    _check_logits_pair(student_logits, teacher_logits)
    with _float32_math(student_logits):
        y_s = F.softmax(student_logits.float() / temperature, dim=1)  # (B, C)
        y_t = F.softmax(teacher_logits.float() / temperature, dim=1)  # (B, C)
        scale = temperature * temperature
        inter = scale * (1.0 - pearson_correlation(y_s, y_t).mean())
        intra = scale * (1.0 - pearson_correlation(y_s.t(), y_t.t()).mean())
        return inter, intra


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """DIST loss ``beta * inter + gamma * intra`` (Huang et al., 2022).

    The terms are those of :func:`dist_parts` (both include ``tau^2``). The defaults
    ``beta = gamma = 1, tau = 1`` are the authors' ``DIST`` defaults (ImageNet); their CIFAR-100
    runs use ``tau = 4`` and weight the whole loss by 2 (``CE + 2 * (inter + intra)``).

    Args:
        student_logits: Student logits, shape ``(B, C)``, floating point.
        teacher_logits: Teacher logits, shape ``(B, C)``, floating point (not detached).
        beta: Weight ``>= 0`` of the inter-class (per-sample) relation.
        gamma: Weight ``>= 0`` of the intra-class (per-class) relation.
        temperature: Softmax temperature ``tau > 0``.

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If either logits tensor is not floating point.
        ValueError: On a negative or non-finite ``beta`` / ``gamma``, a bad ``temperature``, or
            logits that are not 2-D of the same shape.
    """
    for name, weight in (("beta", beta), ("gamma", gamma)):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {weight}")
    inter, intra = dist_parts(student_logits, teacher_logits, temperature=temperature)
    with _float32_math(student_logits):
        return beta * inter + gamma * intra
