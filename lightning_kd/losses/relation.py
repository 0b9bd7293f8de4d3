"""Relational knowledge distillation (Park et al., "Relational Knowledge Distillation", CVPR 2019).

RKD transfers the *structure* of a batch of embeddings rather than the embeddings themselves:
pairwise distances (:func:`rkd_distance_loss`) and the angles of all triplets
(:func:`rkd_angle_loss`). Both are invariant to a translation and to a positive scaling of
either embedding, so the student and teacher dimensions ``D_s`` and ``D_t`` may differ and no
projector is needed.

Inputs are ``(B, D)`` embeddings. Higher-rank inputs such as ``(B, C, H, W)`` feature maps are
flattened to ``(B, C * H * W)`` first. The teacher is **detached inside** these functions
(the teacher relations are constants, as in the reference implementation), unlike the logit
and feature losses, which use the teacher tensors as given.

All math runs in float32 with autocast disabled, so the returned loss is float32 even under
``torch.autocast`` with bf16 / fp16 inputs. Validation only reads shapes, dtypes and Python
scalars: no device synchronization.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import _check_floating, _float32_math

__all__ = ["rkd_angle_loss", "rkd_distance_loss"]


def rkd_distance_loss(student: Tensor, teacher: Tensor, *, eps: float = 1e-12) -> Tensor:
    """RKD distance-wise loss: Huber loss between mean-normalised pairwise distances.

    For each of student and teacher (rows ``e_1 .. e_B``)::

        d[i, j] = sqrt(max(||e_i - e_j||^2, eps))  for i != j,   d[i, i] = 0     # (B, B)
        mu      = (1 / (B (B - 1))) * sum_{i != j} d[i, j]     # mean off-diagonal distance
        psi     = d / mu

        loss = (1 / B^2) * sum_{i, j} huber(psi_s[i, j] - psi_t[i, j])
        huber(x) = 0.5 x^2 if |x| < 1 else |x| - 0.5              # smooth L1, beta = 1

    **What is averaged.** The Huber loss is averaged over the full ``(B, B)`` matrix,
    diagonal included (``F.smooth_l1_loss(psi_s, psi_t, reduction="mean")``), as in the
    reference code; the ``B`` diagonal entries are 0 for both and add nothing, so the value is
    ``(B - 1) / B`` times the mean over the ``B (B - 1)`` off-diagonal pairs. Published loss
    weights refer to this form (weight 25 in the CRD benchmark).

    The normaliser ``mu`` is the mean over the off-diagonal entries, computed as a sum divided
    by ``B (B - 1)`` (no boolean indexing, hence no device sync). The reference code averages
    ``d[d > 0]``, which is the same set, because the ``eps`` clamp keeps every off-diagonal
    distance positive. Squared distances come from the Gram matrix of the batch-centred
    embeddings (distances do not change under translation; centring reduces cancellation).

    The teacher is detached: ``psi_t`` is a constant and no gradient reaches the teacher.

    Args:
        student: Student embeddings, shape ``(B, D_s)`` (or higher rank, flattened to
            ``(B, -1)``), floating point, ``B >= 2``.
        teacher: Teacher embeddings, shape ``(B, D_t)`` (or higher rank, flattened),
            floating point. ``D_t`` may differ from ``D_s``.
        eps: Lower clamp ``> 0`` on squared distances; keeps ``sqrt`` differentiable and the
            normaliser non-zero when embeddings coincide.

    Returns:
        Scalar float32 loss. 0 when the teacher embeddings are a translated, positively
        scaled (or rotated) copy of the student's.

    Raises:
        TypeError: If either input is not floating point.
        ValueError: If ``eps`` is not a finite number > 0, an input has rank < 2 or is empty,
            the batch sizes differ, or ``B < 2``.
    """
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    _check_embedding_pair(student, teacher, min_batch=2, what="distances")
    with _float32_math(student):
        psi_t = _normalized_distances(teacher.detach().flatten(start_dim=1).float(), eps)
        psi_s = _normalized_distances(student.flatten(start_dim=1).float(), eps)
        return F.smooth_l1_loss(psi_s, psi_t, reduction="mean", beta=1.0)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle-wise loss: Huber loss between the cosines of all triplet angles.

    For each of student and teacher (rows ``e_1 .. e_B``)::

        u[j, i]      = (e_i - e_j) / max(||e_i - e_j||, 1e-12)           # (B, B, D)
        psi[j, i, k] = <u[j, i], u[j, k]>                               # (B, B, B), via bmm

        loss = (1 / B^3) * sum_{j, i, k} huber(psi_s[j, i, k] - psi_t[j, i, k])

    ``psi[j, i, k]`` is the cosine of the angle at vertex ``e_j`` between ``e_i - e_j`` and
    ``e_k - e_j``; ``huber`` is smooth L1 with ``beta = 1`` (``0.5 x^2`` for ``|x| < 1``).

    **What is averaged.** All ``B^3`` entries, as in the reference code
    (``F.smooth_l1_loss(..., reduction="mean")``). The degenerate entries add nothing:
    ``i == j`` or ``k == j`` gives a zero vector, so ``psi = 0`` for both networks, and
    ``i == k != j`` gives ``psi = 1`` for both (for distinct embeddings). Only the
    ``B (B - 1) (B - 2)`` proper triplets contribute, each divided by ``B^3``.

    The teacher is detached: ``psi_t`` is a constant and no gradient reaches the teacher.
    Memory is ``O(B^2 (D_s + D_t) + B^3)``. Published loss weights refer to this form
    (weight 50 in the CRD benchmark).

    Args:
        student: Student embeddings, shape ``(B, D_s)`` (or higher rank, flattened to
            ``(B, -1)``), floating point, ``B >= 3``.
        teacher: Teacher embeddings, shape ``(B, D_t)`` (or higher rank, flattened),
            floating point. ``D_t`` may differ from ``D_s``.

    Returns:
        Scalar float32 loss. 0 when the teacher embeddings are a translated, positively
        scaled (or rotated) copy of the student's.

    Raises:
        TypeError: If either input is not floating point.
        ValueError: If an input has rank < 2 or is empty, the batch sizes differ, or
            ``B < 3``.
    """
    _check_embedding_pair(student, teacher, min_batch=3, what="angles")
    with _float32_math(student):
        psi_t = _triplet_cosines(teacher.detach().flatten(start_dim=1).float())
        psi_s = _triplet_cosines(student.flatten(start_dim=1).float())
        return F.smooth_l1_loss(psi_s, psi_t, reduction="mean", beta=1.0)


def _normalized_distances(embeddings: Tensor, eps: float) -> Tensor:
    """Pairwise Euclidean distances over their off-diagonal mean, ``(B, D) -> (B, B)``."""
    batch = embeddings.shape[0]
    centred = embeddings - embeddings.mean(dim=0, keepdim=True)  # (B, D)
    sq_norms = centred.pow(2).sum(dim=1)  # (B,)
    sq_dist = sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2.0 * (centred @ centred.T)
    diagonal = torch.eye(batch, dtype=torch.bool, device=embeddings.device)  # (B, B)
    dist = sq_dist.clamp(min=eps).sqrt().masked_fill(diagonal, 0.0)  # (B, B)
    mean_dist = dist.sum() / (batch * (batch - 1))
    return dist / mean_dist


def _triplet_cosines(embeddings: Tensor) -> Tensor:
    """``psi[j, i, k] = cos`` of the angle at ``e_j`` of ``(e_i, e_j, e_k)``, ``(B, B, B)``."""
    diff = embeddings.unsqueeze(0) - embeddings.unsqueeze(1)  # (B, B, D): [j, i] = e_i - e_j
    unit = F.normalize(diff, p=2.0, dim=2)  # (B, B, D)
    return torch.bmm(unit, unit.transpose(1, 2))  # (B, B, B)


def _check_embedding_pair(student: Tensor, teacher: Tensor, *, min_batch: int, what: str) -> None:
    _check_floating("student", student)
    _check_floating("teacher", teacher)
    for name, tensor in (("student", student), ("teacher", teacher)):
        if tensor.dim() < 2 or tensor.numel() == 0:
            raise ValueError(
                f"{name} must be a non-empty (B, D) tensor (higher ranks are flattened), "
                f"got shape {tuple(tensor.shape)}"
            )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"batch sizes differ: student has shape {tuple(student.shape)}, "
            f"teacher has shape {tuple(teacher.shape)}"
        )
    if student.shape[0] < min_batch:
        raise ValueError(
            f"RKD {what} need a batch of at least {min_batch} embeddings, "
            f"got batch size {student.shape[0]}"
        )
