"""Feature-map distillation losses: FitNets hints and attention transfer.

Inputs are intermediate activations, usually captured with forward hooks: ``(B, C, H, W)``
maps from convolutional stages or ``(B, D)`` vectors. As in :mod:`lightning_kd.losses.logit`,
all math runs in float32 with autocast disabled (inputs are upcast with ``.float()``), so the
returned loss is a float32 tensor even under ``torch.autocast`` with bf16 / fp16 activations.
Validation only reads shapes, dtypes and Python scalars: no device synchronization.

The teacher features are used as given, **not** detached (the convention of
:func:`lightning_kd.losses.kd_loss`): capture them under ``torch.no_grad()`` /
``torch.inference_mode()`` or ``.detach()`` them.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import _check_floating, _float32_math

__all__ = ["attention_map", "attention_transfer_loss", "hint_loss"]


def hint_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al., 2015): mean squared error between features.

    ::

        loss = (1 / N) * sum_i (s_i - t_i)^2        N = number of elements

    The student features must already be *adapted* to the teacher's shape (FitNets uses a
    trainable regressor, e.g. a 1x1 convolution registered on the distillation module); no
    projection happens here. The gradient with respect to the student is ``2 (s - t) / N``.

    Args:
        student_features: Adapted student features ``s``, shape ``(B, C, H, W)`` or ``(B, D)``
            (any shape of rank >= 2), floating point.
        teacher_features: Teacher features ``t``, exactly the same shape, floating point.

    Returns:
        Scalar float32 loss, the mean over all ``B * C * H * W`` (or ``B * D``) elements.

    Raises:
        TypeError: If either input is not floating point.
        ValueError: If the shapes differ, or the inputs are empty or of rank < 2.
    """
    _check_floating("student_features", student_features)
    _check_floating("teacher_features", teacher_features)
    if student_features.shape != teacher_features.shape:
        raise ValueError(
            f"student_features shape {tuple(student_features.shape)} does not match "
            f"teacher_features shape {tuple(teacher_features.shape)} "
            "(adapt the student features with a projector first)"
        )
    if student_features.dim() < 2 or student_features.numel() == 0:
        raise ValueError(
            "features must be non-empty and at least 2-D (B, D) or (B, C, H, W), "
            f"got shape {tuple(student_features.shape)}"
        )
    with _float32_math(student_features):
        return F.mse_loss(student_features.float(), teacher_features.float(), reduction="mean")


def attention_map(features: Tensor, *, p: float = 2.0) -> Tensor:
    """Spatial attention map of Zagoruyko & Komodakis (2017), L2-normalised per sample.

    For features ``f`` of shape ``(B, C, H, W)``::

        a[b, h*W + w] = (1 / C) * sum_c |f[b, c, h, w]|^p       # (B, H*W)
        a[b] = a[b] / max(||a[b]||_2, 1e-12)                    # unit rows

    The channel mean (rather than sum) and the normalisation make the map independent of the
    channel count, so student and teacher maps can be compared without a projector. An
    all-zero feature map gives an all-zero row.

    Args:
        features: Floating-point activations, shape ``(B, C, H, W)``.
        p: Exponent ``p > 0`` applied to the absolute activations (2 in the paper).

    Returns:
        Float32 attention maps of shape ``(B, H * W)``, each non-zero row of unit L2 norm.

    Raises:
        TypeError: If ``features`` is not floating point.
        ValueError: If ``p`` is not a finite number > 0, or ``features`` is not a non-empty
            4-D tensor.
    """
    _check_p(p)
    _check_floating("features", features)
    _check_4d("features", features)
    with _float32_math(features):
        pooled = features.float().abs().pow(p).mean(dim=1)  # (B, H, W)
        return F.normalize(pooled.flatten(start_dim=1), p=2.0, dim=1)  # (B, H*W)


def attention_transfer_loss(
    student_features: Tensor, teacher_features: Tensor, *, p: float = 2.0
) -> Tensor:
    """Attention transfer loss (Zagoruyko & Komodakis, 2017) for one pair of feature maps.

    With ``a_s = attention_map(f_s, p=p)`` and ``a_t = attention_map(f_t, p=p)``, both
    ``(B, H*W)``::

        loss = (a_s - a_t).pow(2).mean()
             = (1 / (B * H * W)) * sum_b sum_i (a_s[b, i] - a_t[b, i])^2

    This is the reference implementation's form: a mean of squared differences over batch
    and positions, not the paper's (unsquared) L2 norm of the difference per sample. The
    values are therefore small and the usual loss weight is large (weight 1000 in the CRD
    benchmark). Sum or average this loss over layer pairs outside this function.

    The channel counts of student and teacher may differ (the maps average over channels),
    but batch size and spatial size must match; resize or pool one of the maps first if they
    do not.

    Args:
        student_features: Student activations ``f_s``, shape ``(B, C_s, H, W)``.
        teacher_features: Teacher activations ``f_t``, shape ``(B, C_t, H, W)``.
        p: Exponent of :func:`attention_map`, ``p > 0``.

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If either input is not floating point.
        ValueError: If ``p`` is not a finite number > 0, an input is not a non-empty 4-D
            tensor, or the batch or spatial sizes differ.
    """
    _check_p(p)
    _check_floating("student_features", student_features)
    _check_floating("teacher_features", teacher_features)
    _check_4d("student_features", student_features)
    _check_4d("teacher_features", teacher_features)
    b_s, _, h_s, w_s = student_features.shape
    b_t, _, h_t, w_t = teacher_features.shape
    if (b_s, h_s, w_s) != (b_t, h_t, w_t):
        raise ValueError(
            "batch and spatial sizes (B, H, W) must match: student_features has shape "
            f"{tuple(student_features.shape)}, teacher_features has shape "
            f"{tuple(teacher_features.shape)}"
        )
    a_s = attention_map(student_features, p=p)  # (B, H*W)
    a_t = attention_map(teacher_features, p=p)  # (B, H*W)
    with _float32_math(student_features):
        return (a_s - a_t).pow(2).mean()


def _check_p(p: float) -> None:
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"p must be a finite number > 0, got {p}")


def _check_4d(name: str, features: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(features.shape)}")
    if features.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(features.shape)}")
