"""Multi-level logit distillation (MLKD; Jin, Wang and Lin, "Multi-Level Logit Distillation",
CVPR 2023).

MLKD aligns the softened predictions ``P = softmax(z / T)`` of a student and a teacher at three
levels, each at several temperatures ("prediction augmentation", :data:`MLKD_TEMPERATURES`) and
on a weak and a strong view of every image:

* instance level (:func:`instance_kd_loss`): the ``T^2 KL`` of each sample, as Hinton's KD;
* class level (:func:`class_correlation_loss`): the ``C x C`` Gram matrix ``P^T P`` of class
  correlations over the batch;
* batch level (:func:`batch_correlation_loss`): the ``B x B`` Gram matrix ``P P^T`` of sample
  correlations.

Confidence masks from the teacher's weak-view predictions (:func:`confidence_masks`) select the
samples and classes of some of these terms. :func:`mlkd_parts` combines everything for the
weak / strong logits of both networks, in one of two variants:

``"paper"`` (default)
    The method as described: every mask selects samples (classes) inside its term, every
    strong-view term uses the strong-view logits, and all six term families (instance, class
    and batch, on each view) are part of the loss.

``"authors"``
    What the authors' code computes (``mdistiller/distillers/KD_ours.py`` of
    github.com/Jin-Ying/Multi-Level-Logit-Distillation, and ``mdistiller/distillers/MLKD.py`` of
    github.com/sunshangquan/logit-standardization-KD, which copies it), so that its numbers can
    be reproduced. It differs in three ways:

    1. The terms are reduced to scalars first (``reduce=True`` by default; the ``reduce=False``
       arguments are commented out) and then multiplied by their mask and averaged,
       ``(loss * mask).mean()``: no sample or class is filtered, each masked term is only
       scaled by the fraction of the mask that is set (about 1/2 at the median threshold).
       (``KD_ours.py`` lines 115-140, 164-185, 207-248.)
    2. Of the five "strong" instance and class terms, the last two (temperatures 2 and 6, the
       4th and 5th entries) are computed on the weak-view logits (lines 155-160, 199-204).
    3. The strong-view class and batch terms are computed (lines 186-206, 228-248) but never
       added to the loss: the returned dict holds the weak ones only (lines 249-254).

As in :mod:`lightning_kd.losses.logit`, inputs are ``(B, C)`` logits, all math runs in float32
with autocast disabled (the losses are float32 even for bf16 logits under ``torch.autocast``),
and the teacher logits are used as given (pass them detached). Only :func:`confidence_masks`
reads tensor values (a quantile), on the device, without a host sync.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import (
    _check_logits_pair,
    _check_temperature,
    _float32_math,
    standardize_logits,
)

__all__ = [
    "MLKD_TEMPERATURES",
    "MLKDParts",
    "MLKDVariant",
    "batch_correlation_loss",
    "check_temperatures",
    "class_correlation_loss",
    "confidence_masks",
    "instance_kd_loss",
    "mlkd_loss",
    "mlkd_parts",
]

#: The temperatures of MLKD's prediction augmentation, in the authors' order (their base
#: temperature ``cfg.KD.TEMPERATURE = 4`` first, then 3, 5, 2, 6). The order matters only for
#: ``variant="authors"``, whose 4th and 5th strong terms use the weak-view logits.
MLKD_TEMPERATURES: tuple[float, ...] = (4.0, 3.0, 5.0, 2.0, 6.0)

#: ``"paper"``: the method as published; ``"authors"``: what the authors' code computes.
MLKDVariant = Literal["paper", "authors"]


class MLKDParts(NamedTuple):
    """The three unweighted MLKD terms, each summed over temperatures and views (scalars)."""

    #: Instance-level ``T^2 KL`` terms.
    instance: Tensor
    #: Class-correlation (``C x C`` Gram) terms.
    class_correlation: Tensor
    #: Batch-correlation (``B x B`` Gram) terms.
    batch_correlation: Tensor

    def total(self) -> Tensor:
        """``instance + class_correlation + batch_correlation``."""
        return self.instance + self.class_correlation + self.batch_correlation


def instance_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    mask: Tensor | None = None,
    standardize: bool = False,
) -> Tensor:
    """Instance-level MLKD term: Hinton's ``T^2 KL`` per sample, optionally masked.

    With ``p = softmax(z / T)`` per row (``z`` z-scored first when ``standardize``)::

        l_b  = T^2 * sum_c p_t[b, c] * (log p_t[b, c] - log p_s[b, c])
        loss = (1 / B) * sum_b m_b * l_b

    ``m = 1`` without a mask (then this is :func:`~lightning_kd.losses.kd_loss`). The mean is
    over all ``B`` rows, masked or not (as ``(kd_loss(..., reduce=False) * mask).mean()`` in
    the authors' code). The ``T^2`` factor **is included**; the gradient with respect to the
    student logits is ``m_b * T * (p_s - p_t)[b] / B`` (without ``standardize``).

    Args:
        student_logits: ``(B, C)`` student logits, floating point.
        teacher_logits: ``(B, C)`` teacher logits, floating point (not detached here).
        temperature: Softmax temperature ``T > 0``.
        mask: Optional ``(B,)`` per-sample weights (``bool`` or float, e.g. from
            :func:`confidence_masks`).
        standardize: Z-score each row of both logits first
            (:func:`~lightning_kd.losses.standardize_logits`, "MLKD + LS").

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If a logits tensor is not floating point.
        ValueError: On a bad ``temperature``, mismatched or non-2-D logits, or a ``mask`` that
            is not ``(B,)``.
    """
    _check_temperature(temperature)
    _check_logits_pair(student_logits, teacher_logits)
    _check_mask(mask, student_logits.shape[0], "mask", "(B,) with B the batch size")
    with _float32_math(student_logits):
        z_s, z_t = student_logits.float(), teacher_logits.float()
        if standardize:
            z_s, z_t = standardize_logits(z_s), standardize_logits(z_t)
        log_p_s = F.log_softmax(z_s / temperature, dim=1)  # (B, C)
        log_p_t = F.log_softmax(z_t / temperature, dim=1)  # (B, C)
        per_sample = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1)  # (B,)
        per_sample = per_sample * (temperature * temperature)
        if mask is not None:
            per_sample = per_sample * mask.float()
        return per_sample.mean()


def class_correlation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Class-level MLKD term: squared difference of the ``C x C`` class-correlation matrices.

    With ``P = softmax(z / T)`` (rows of ``(B, C)``) and ``M = P^T P`` (``(C, C)``, entry
    ``(i, j)`` the batch's co-activation of classes ``i`` and ``j``)::

        loss = (1 / C) * sum_{i, j} m_j * (M_t[i, j] - M_s[i, j])^2

    ``m = 1`` without a mask: the sum of squares over ``C`` as the authors (``cc_loss``).
    A mask weights the column of each class, i.e. the correlations of class ``j`` with every
    class (the authors' ``(C, C) * (C,)`` broadcast), with the same ``1 / C``. No ``T^2``
    factor.

    Args:
        student_logits: ``(B, C)`` student logits, floating point.
        teacher_logits: ``(B, C)`` teacher logits, floating point (not detached here).
        temperature: Softmax temperature ``T > 0``.
        mask: Optional ``(C,)`` per-class weights (``bool`` or float).

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If a logits tensor is not floating point.
        ValueError: On a bad ``temperature``, mismatched or non-2-D logits, or a ``mask`` that
            is not ``(C,)``.
    """
    _check_temperature(temperature)
    _check_logits_pair(student_logits, teacher_logits)
    num_classes = student_logits.shape[1]
    _check_mask(mask, num_classes, "mask", "(C,) with C the number of classes")
    with _float32_math(student_logits):
        p_s = F.softmax(student_logits.float() / temperature, dim=1)  # (B, C)
        p_t = F.softmax(teacher_logits.float() / temperature, dim=1)  # (B, C)
        diff = (p_t.T @ p_t - p_s.T @ p_s).square()  # (C, C)
        if mask is not None:
            diff = diff * mask.float()  # weights column j
        return diff.sum() / num_classes


def batch_correlation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Batch-level MLKD term: squared difference of the ``B x B`` sample-correlation matrices.

    With ``P = softmax(z / T)`` (rows of ``(B, C)``) and ``G = P P^T`` (``(B, B)``, entry
    ``(a, b)`` the inner product of the predictions of samples ``a`` and ``b``)::

        loss = (1 / B) * sum_{a, b} m_b * (G_t[a, b] - G_s[a, b])^2

    ``m = 1`` without a mask: the sum of squares over ``B`` as the authors (``bc_loss``). A
    mask weights the column of each sample, i.e. its correlations with the whole batch (the
    authors' ``(B, B) * (B,)`` broadcast), with the same ``1 / B``. No ``T^2`` factor.

    Args:
        student_logits: ``(B, C)`` student logits, floating point.
        teacher_logits: ``(B, C)`` teacher logits, floating point (not detached here).
        temperature: Softmax temperature ``T > 0``.
        mask: Optional ``(B,)`` per-sample weights (``bool`` or float).

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If a logits tensor is not floating point.
        ValueError: On a bad ``temperature``, mismatched or non-2-D logits, or a ``mask`` that
            is not ``(B,)``.
    """
    _check_temperature(temperature)
    _check_logits_pair(student_logits, teacher_logits)
    batch = student_logits.shape[0]
    _check_mask(mask, batch, "mask", "(B,) with B the batch size")
    with _float32_math(student_logits):
        p_s = F.softmax(student_logits.float() / temperature, dim=1)  # (B, C)
        p_t = F.softmax(teacher_logits.float() / temperature, dim=1)  # (B, C)
        diff = (p_t @ p_t.T - p_s @ p_s.T).square()  # (B, B)
        if mask is not None:
            diff = diff * mask.float()  # weights column b
        return diff.sum() / batch


def confidence_masks(teacher_logits: Tensor, *, quantile: float = 0.5) -> tuple[Tensor, Tensor]:
    """MLKD's sample and class masks from the teacher's weak-view logits.

    With ``q = softmax(z_t)`` (temperature 1, raw logits)::

        confidence[b]       = max_c q[b, c]                  # (B,)
        class_confidence[c] = sum_b q[b, c]                  # (C,)
        sample_mask = confidence <= quantile(confidence)     # bool (B,)
        class_mask  = class_confidence <= quantile(class_confidence)   # bool (C,)

    The quantile interpolates linearly (``torch.quantile``, as the authors'
    ``np.percentile(..., 50)``); at the default median the masks keep the less confident half
    of the samples and of the classes (``<=``, the authors' ``confidence.le(threshold)``), ties
    included.

    Args:
        teacher_logits: ``(B, C)`` teacher logits of the weak view.
        quantile: The threshold's quantile in ``[0, 1]`` (0.5, the authors' median).

    Returns:
        ``(sample_mask, class_mask)``: ``bool`` tensors of shapes ``(B,)`` and ``(C,)``.

    Raises:
        TypeError: If ``teacher_logits`` is not floating point.
        ValueError: If it is not a non-empty ``(B, C)`` tensor or ``quantile`` is outside
            ``[0, 1]``.
    """
    if not teacher_logits.is_floating_point():
        raise TypeError(
            f"teacher_logits must be a floating-point tensor, got dtype {teacher_logits.dtype}"
        )
    if teacher_logits.dim() != 2 or teacher_logits.numel() == 0:
        raise ValueError(
            f"teacher_logits must be a non-empty (B, C) tensor, got {tuple(teacher_logits.shape)}"
        )
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    with _float32_math(teacher_logits):
        q = F.softmax(teacher_logits.detach().float(), dim=1)  # (B, C)
        confidence = q.amax(dim=1)  # (B,)
        class_confidence = q.sum(dim=0)  # (C,)
        sample_mask = confidence <= torch.quantile(confidence, quantile)
        class_mask = class_confidence <= torch.quantile(class_confidence, quantile)
    return sample_mask, class_mask


def mlkd_parts(
    student_weak: Tensor,
    student_strong: Tensor,
    teacher_weak: Tensor,
    teacher_strong: Tensor,
    *,
    temperatures: Sequence[float] = MLKD_TEMPERATURES,
    variant: MLKDVariant = "paper",
    standardize: bool = False,
    quantile: float = 0.5,
) -> MLKDParts:
    """The three MLKD terms for the weak / strong logits of a student and a teacher.

    Masks: ``m, m_c = confidence_masks(teacher_weak, quantile=quantile)`` (samples, classes).
    With ``I``, ``Cc``, ``Bc`` the functions :func:`instance_kd_loss`,
    :func:`class_correlation_loss` and :func:`batch_correlation_loss`, ``w`` / ``s`` the weak /
    strong pairs of logits, and sums over the temperatures ``T_k``:

    ``variant="paper"``::

        instance          = sum_k I(w, T_k, mask=m) + I(s, T_k)
        class_correlation = sum_k Cc(w, T_k, mask=m_c) + Cc(s, T_k)
        batch_correlation = sum_k Bc(w, T_k, mask=m) + Bc(s, T_k, mask=m)

    ``variant="authors"`` (needs exactly five temperatures; ``mean`` is over the mask)::

        instance          = sum_k mean(m) * I(w, T_k)
                          + sum_{k < 3} I(s, T_k) + sum_{k >= 3} I(w, T_k)
        class_correlation = sum_k mean(m_c) * Cc(w, T_k)
        batch_correlation = sum_k mean(m) * Bc(w, T_k)

    The masks are placed where the authors' code places them (none on the strong instance and
    class terms). ``standardize`` z-scores the logits of the instance terms only, as the logit
    standardisation authors' MLKD + LS (their ``kd_loss(..., logit_stand)``; ``cc_loss``,
    ``bc_loss`` and the masks use the raw logits). Terms are unweighted: the module multiplies
    them by its ``kd_weight`` (the authors' ``kd_loss_weight`` multiplies every term).

    Args:
        student_weak: ``(B, C)`` student logits of the weak view.
        student_strong: ``(B, C)`` student logits of the strong view.
        teacher_weak: ``(B, C)`` teacher logits of the weak view (not detached here).
        teacher_strong: ``(B, C)`` teacher logits of the strong view.
        temperatures: The temperatures ``T_k > 0`` (:data:`MLKD_TEMPERATURES`).
        variant: ``"paper"`` or ``"authors"`` (module docstring).
        standardize: Z-score the instance terms' logits (MLKD + LS).
        quantile: Quantile of the mask thresholds (0.5).

    Returns:
        :class:`MLKDParts` of scalar float32 tensors.

    Raises:
        ValueError: On an unknown ``variant``, no temperatures, a temperature that is not > 0,
            ``variant="authors"`` without exactly five temperatures, or logits whose shapes
            differ.
    """
    temps = check_temperatures(temperatures, variant)
    shape = tuple(student_weak.shape)
    for name, logits in (
        ("student_strong", student_strong),
        ("teacher_weak", teacher_weak),
        ("teacher_strong", teacher_strong),
    ):
        if tuple(logits.shape) != shape:
            raise ValueError(
                f"all four logits must have the shape of student_weak {shape}, got {name} of "
                f"shape {tuple(logits.shape)}"
            )
    sample_mask, class_mask = confidence_masks(teacher_weak, quantile=quantile)
    weak = (student_weak, teacher_weak)
    strong = (student_strong, teacher_strong)
    instance: list[Tensor] = []
    class_terms: list[Tensor] = []
    batch_terms: list[Tensor] = []
    with _float32_math(student_weak):
        if variant == "paper":
            for t in temps:
                instance.append(
                    instance_kd_loss(
                        *weak, temperature=t, mask=sample_mask, standardize=standardize
                    )
                )
                instance.append(instance_kd_loss(*strong, temperature=t, standardize=standardize))
                class_terms.append(class_correlation_loss(*weak, temperature=t, mask=class_mask))
                class_terms.append(class_correlation_loss(*strong, temperature=t))
                batch_terms.append(batch_correlation_loss(*weak, temperature=t, mask=sample_mask))
                batch_terms.append(batch_correlation_loss(*strong, temperature=t, mask=sample_mask))
        else:
            kept = sample_mask.float().mean()
            kept_classes = class_mask.float().mean()
            for k, t in enumerate(temps):
                instance.append(
                    kept * instance_kd_loss(*weak, temperature=t, standardize=standardize)
                )
                # The authors' 4th and 5th "strong" terms read the weak-view logits.
                pair = strong if k < 3 else weak
                instance.append(instance_kd_loss(*pair, temperature=t, standardize=standardize))
                class_terms.append(kept_classes * class_correlation_loss(*weak, temperature=t))
                batch_terms.append(kept * batch_correlation_loss(*weak, temperature=t))
        return MLKDParts(
            torch.stack(instance).sum(),
            torch.stack(class_terms).sum(),
            torch.stack(batch_terms).sum(),
        )


def mlkd_loss(
    student_weak: Tensor,
    student_strong: Tensor,
    teacher_weak: Tensor,
    teacher_strong: Tensor,
    *,
    temperatures: Sequence[float] = MLKD_TEMPERATURES,
    variant: MLKDVariant = "paper",
    standardize: bool = False,
    quantile: float = 0.5,
) -> Tensor:
    """The unweighted MLKD distillation loss, ``instance + class + batch`` of
    :func:`mlkd_parts` (same arguments); no cross-entropy.

    Returns:
        Scalar float32 loss.
    """
    parts = mlkd_parts(
        student_weak,
        student_strong,
        teacher_weak,
        teacher_strong,
        temperatures=temperatures,
        variant=variant,
        standardize=standardize,
        quantile=quantile,
    )
    with _float32_math(student_weak):
        return parts.total()


def check_temperatures(temperatures: Sequence[float], variant: str) -> tuple[float, ...]:
    """``temperatures`` as a tuple of floats, checked for ``variant``.

    Raises:
        ValueError: On an unknown ``variant``, no temperatures, one that is not a finite
            number > 0, or ``variant="authors"`` without exactly five.
    """
    if variant not in ("paper", "authors"):
        raise ValueError(f"variant must be 'paper' or 'authors', got {variant!r}")
    temps = tuple(float(t) for t in temperatures)
    if not temps:
        raise ValueError("temperatures must hold at least one temperature, got none")
    for t in temps:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"every temperature must be a finite number > 0, got {list(temps)}")
    if variant == "authors" and len(temps) != 5:
        raise ValueError(
            "variant='authors' reproduces the authors' five-temperature code (its 4th and 5th "
            f"strong terms use the weak view) and needs exactly 5 temperatures, got {list(temps)}"
        )
    return temps


def _check_mask(mask: Tensor | None, size: int, name: str, expected: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.shape != (size,):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be {expected} = ({size},), got {got}")
