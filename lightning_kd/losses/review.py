"""ReviewKD's hierarchical context loss (Chen et al., "Distilling Knowledge via Knowledge
Review", CVPR 2021).

The loss compares, stage by stage, the student features after ReviewKD's attention-based
fusion (:class:`~lightning_kd.modules.review_kd.ABF`) with the teacher features of the same
shape, at full resolution and after average pooling to a few coarser grids. As in
:mod:`lightning_kd.losses.feature`, the math runs in float32 with autocast disabled, so the
loss is float32 even for bf16 / fp16 inputs; the teacher features are used as given (capture
them without an autograd graph). Validation reads shapes and dtypes only: no device sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.logit import _check_floating, _float32_math

__all__ = ["hcl_loss"]


def hcl_loss(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    *,
    levels: Sequence[int] = (4, 2, 1),
) -> Tensor:
    """Hierarchical context loss (HCL) of ReviewKD, summed over stages.

    For each stage, with ``s`` and ``t`` of shape ``(B, C, H, W)``, ``P_l`` the
    ``adaptive_avg_pool2d`` to ``(l, l)`` and ``mse`` the mean over all elements::

        used  = [l for l in levels if l < H]            # a level at or above H is skipped
        w_k   = 2 ** -(k + 1)                            # k-th *used* level: 1/2, 1/4, 1/8, ...
        hcl   = (mse(s, t) + sum_k w_k * mse(P_l_k(s), P_l_k(t))) / (1 + sum_k w_k)
        loss  = sum over stages of hcl

    This is the authors' ``hcl`` (dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py``,
    identical in mdistiller's ``mdistiller/distillers/ReviewKD.py``): the weight halves at
    each level that is *used*, so a map of size ``H > 4`` gets
    ``(mse + mse_4 / 2 + mse_2 / 4 + mse_1 / 8) / 1.875``, a 4x4 map
    ``(mse + mse_2 / 2 + mse_1 / 4) / 1.75``, a 2x2 map ``(mse + mse_1 / 2) / 1.5`` and a 1x1
    map (the pooled feature) ``mse``. As in the reference only the height ``H`` decides
    which levels are skipped (the maps are square in practice).

    Args:
        student_features: One fused student map per stage, each ``(B, C_i, H_i, W_i)``,
            floating point.
        teacher_features: The teacher maps, same length and the same shape stage by stage.
        levels: Pooled grid sizes, positive ints, in the order their weights halve
            (``(4, 2, 1)`` in the paper).

    Returns:
        Scalar float32 loss (a sum over stages, so it grows with their number).

    Raises:
        TypeError: If a feature is not floating point.
        ValueError: If the lists are empty or of different lengths, a pair's shapes differ,
            a map is not 4-D and non-empty, or a level is not a positive int.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            "student_features and teacher_features must be non-empty lists of the same "
            f"length, got {len(student_features)} and {len(teacher_features)} maps"
        )
    levels = tuple(levels)
    if any(not isinstance(level, int) or level < 1 for level in levels):
        raise ValueError(f"levels must be positive ints, got {levels!r}")
    for i, (s, t) in enumerate(zip(student_features, teacher_features, strict=True)):
        _check_floating(f"student_features[{i}]", s)
        _check_floating(f"teacher_features[{i}]", t)
        if s.shape != t.shape:
            raise ValueError(
                f"stage {i}: student shape {tuple(s.shape)} does not match teacher shape "
                f"{tuple(t.shape)}"
            )
        if s.dim() != 4 or s.numel() == 0:
            raise ValueError(
                f"stage {i}: features must be non-empty (B, C, H, W) maps, got shape "
                f"{tuple(s.shape)}"
            )

    with _float32_math(student_features[0]):
        total: Tensor | None = None
        for s, t in zip(student_features, teacher_features, strict=True):
            s, t = s.float(), t.float()  # (B, C, H, W)
            loss = F.mse_loss(s, t, reduction="mean")
            weight, normaliser = 1.0, 1.0
            for level in levels:
                if level >= s.shape[2]:
                    continue
                weight /= 2.0
                pooled_s = F.adaptive_avg_pool2d(s, (level, level))  # (B, C, l, l)
                pooled_t = F.adaptive_avg_pool2d(t, (level, level))
                loss = loss + weight * F.mse_loss(pooled_s, pooled_t, reduction="mean")
                normaliser += weight
            loss = loss / normaliser
            total = loss if total is None else total + loss
        assert total is not None
        return total
