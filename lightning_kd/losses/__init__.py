"""Distillation losses: pure, typed functions on tensors, grouped by family.

* :mod:`~lightning_kd.losses.logit`: Hinton KD, label smoothing, soft cross-entropy.
* :mod:`~lightning_kd.losses.dkd`: decoupled KD (target / non-target class terms).
* :mod:`~lightning_kd.losses.feature`: FitNets hints, attention transfer.
* :mod:`~lightning_kd.losses.relation`: relational KD (distances, angles).
* :mod:`~lightning_kd.losses.crd`: contrastive representation distillation and its memory.
* :mod:`~lightning_kd.losses.consistency`: Mean Teacher consistency (softmax MSE, KL).
* :mod:`~lightning_kd.losses.dino`: DINO self-distillation loss, its teacher center, and the
  teacher-entropy collapse monitor.
* :mod:`~lightning_kd.losses.byol`: BYOL regression loss (negative cosine similarity).
"""

from lightning_kd.losses.byol import byol_loss, negative_cosine_similarity
from lightning_kd.losses.consistency import softmax_kl_loss, softmax_mse_loss
from lightning_kd.losses.crd import CRDMemory, crd_loss, crd_objective
from lightning_kd.losses.dino import DINOCenter, dino_loss, teacher_entropy
from lightning_kd.losses.dkd import dkd_loss, dkd_parts
from lightning_kd.losses.feature import attention_map, attention_transfer_loss, hint_loss
from lightning_kd.losses.logit import (
    distillation_loss,
    kd_loss,
    smooth_labels,
    soft_cross_entropy,
    softmax_with_temperature,
    standardize_logits,
    uniform_smooth_labels,
)
from lightning_kd.losses.relation import rkd_angle_loss, rkd_distance_loss

__all__ = [
    "CRDMemory",
    "DINOCenter",
    "attention_map",
    "attention_transfer_loss",
    "byol_loss",
    "crd_loss",
    "crd_objective",
    "dino_loss",
    "distillation_loss",
    "dkd_loss",
    "dkd_parts",
    "hint_loss",
    "kd_loss",
    "negative_cosine_similarity",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "smooth_labels",
    "soft_cross_entropy",
    "softmax_kl_loss",
    "softmax_mse_loss",
    "softmax_with_temperature",
    "standardize_logits",
    "teacher_entropy",
    "uniform_smooth_labels",
]
