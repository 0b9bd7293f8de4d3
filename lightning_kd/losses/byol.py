"""BYOL regression loss between online predictions and EMA-target projections.

Grill et al., "Bootstrap Your Own Latent" (NeurIPS 2020). Two augmented views of each image
go through an online network (backbone, projector, predictor) and an EMA target network
(backbone, projector). The online prediction of one view regresses the L2-normalised target
projection of the *other* view::

    l(p, z) = || p / ||p|| - z / ||z|| ||^2 = 2 - 2 cos(p, z)

Both functions take rows of shape ``(B, D)`` and compute in float32, also under
``torch.autocast``. Validation only looks at shapes and dtypes (no device sync).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import _float32_math

__all__ = ["byol_loss", "negative_cosine_similarity"]

_NORM_EPS = 1e-12
"""Lower bound on a row norm before dividing: a zero row has cosine 0 with everything."""


def negative_cosine_similarity(p: Tensor, z: Tensor, *, reduction: str = "mean") -> Tensor:
    """``-cos(p_b, z_b)`` for every row ``b``, averaged over the batch or per sample.

    ``cos(p, z) = <p, z> / (max(||p||, eps) * max(||z||, eps))`` with ``eps = 1e-12``, so the
    value is in ``[-1, 1]`` and a zero row gives 0. Nothing is detached: pass ``z.detach()``
    for a stop-gradient target (SimSiam, BYOL). :func:`byol_loss` is ``2 + 2 *`` this
    (per direction).

    Args:
        p: Predictions, shape ``(B, D)``, floating point.
        z: Targets, shape ``(B, D)``, floating point.
        reduction: ``"mean"`` (scalar, mean over the batch) or ``"none"`` (shape ``(B,)``).

    Returns:
        Float32 scalar, or float32 ``(B,)`` with ``reduction="none"``.

    Raises:
        TypeError: If an input is not floating point.
        ValueError: If the inputs are not non-empty ``(B, D)`` of equal shape, or on an
            unknown ``reduction``.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    _check_pair("p", p, "z", z)
    with _float32_math(p):
        negative = -_cosine(p, z)  # (B,)
        return negative.mean() if reduction == "mean" else negative


def byol_loss(online_predictions: Sequence[Tensor], target_projections: Sequence[Tensor]) -> Tensor:
    """Symmetric BYOL loss over two views: mean over the batch, **sum** over the two directions.

    With online predictions ``p1, p2`` and target projections ``z1, z2`` (view 1, view 2),
    each of shape ``(B, D)``::

        loss = (1 / B) * sum_b [ (2 - 2 cos(p1_b, z2_b)) + (2 - 2 cos(p2_b, z1_b)) ]

    i.e. the two directions are summed, as in the paper (``L + L~``), so the value lies in
    ``[0, 8]``: 0 when every prediction points along the other view's target, 4 when all are
    orthogonal, 8 when all are opposite. The loss is invariant to the scale of each row. The
    targets are detached (stop-gradient), so gradient reaches the predictions only.

    Args:
        online_predictions: ``[p1, p2]``, the online predictor outputs of view 1 and view 2,
            each ``(B, D)``.
        target_projections: ``[z1, z2]``, the target projector outputs of view 1 and view 2,
            each ``(B, D)``.

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If an input is not a floating-point tensor.
        ValueError: If either sequence does not hold exactly two views, or the four tensors
            are not non-empty ``(B, D)`` of one shape.
    """
    for name, views in (
        ("online_predictions", online_predictions),
        ("target_projections", target_projections),
    ):
        if not isinstance(views, Sequence | Tensor):
            raise TypeError(
                f"{name} must be a sequence of two (B, D) tensors, got {type(views).__name__}"
            )
        if isinstance(views, Tensor) and views.dim() != 3:
            raise ValueError(
                f"{name} must hold two (B, D) views, got a tensor of shape {tuple(views.shape)}"
            )
        if len(views) != 2:
            raise ValueError(f"{name} must hold exactly 2 views, got {len(views)}")
    p1, p2 = online_predictions
    z1, z2 = target_projections
    _check_pair("online_predictions[0]", p1, "target_projections[1]", z2)
    _check_pair("online_predictions[1]", p2, "target_projections[0]", z1)
    if p1.shape != p2.shape:
        raise ValueError(
            f"the two views must have the same shape, got {tuple(p1.shape)} and {tuple(p2.shape)}"
        )
    with _float32_math(p1):
        forward = 2.0 - 2.0 * _cosine(p1, z2.detach())  # (B,)
        backward = 2.0 - 2.0 * _cosine(p2, z1.detach())  # (B,)
        return (forward + backward).mean()


def _cosine(p: Tensor, z: Tensor) -> Tensor:
    """Row-wise float32 cosine similarity of two ``(B, D)`` tensors, shape ``(B,)``."""
    p_unit = F.normalize(p.float(), dim=1, eps=_NORM_EPS)  # (B, D)
    z_unit = F.normalize(z.float(), dim=1, eps=_NORM_EPS)  # (B, D)
    return (p_unit * z_unit).sum(dim=1)


def _check_pair(p_name: str, p: Tensor, z_name: str, z: Tensor) -> None:
    for name, tensor in ((p_name, p), (z_name, z)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if tensor.dim() != 2 or 0 in tensor.shape:
            raise ValueError(f"{name} must be non-empty and 2-D (B, D), got {tuple(tensor.shape)}")
    if p.shape != z.shape:
        raise ValueError(
            f"{p_name} and {z_name} must have the same shape, got {tuple(p.shape)} and "
            f"{tuple(z.shape)}"
        )
