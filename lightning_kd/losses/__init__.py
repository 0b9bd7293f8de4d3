"""Distillation losses: pure, typed functions on tensors, grouped by family.

* :mod:`~lightning_kd.losses.logit`: Hinton KD, label smoothing, soft cross-entropy.
* :mod:`~lightning_kd.losses.dkd`: decoupled KD (target / non-target class terms).
* :mod:`~lightning_kd.losses.feature`: FitNets hints, attention transfer.
* :mod:`~lightning_kd.losses.relation`: relational KD (distances, angles).
* :mod:`~lightning_kd.losses.crd`: contrastive representation distillation and its memory.
* :mod:`~lightning_kd.losses.consistency`: Mean Teacher consistency (softmax MSE, KL).
"""

from lightning_kd.losses.consistency import softmax_kl_loss, softmax_mse_loss
from lightning_kd.losses.crd import CRDMemory, crd_loss, crd_objective
from lightning_kd.losses.dkd import dkd_loss, dkd_parts
from lightning_kd.losses.feature import attention_map, attention_transfer_loss, hint_loss
from lightning_kd.losses.logit import (
    distillation_loss,
    kd_loss,
    smooth_labels,
    soft_cross_entropy,
    softmax_with_temperature,
    uniform_smooth_labels,
)
from lightning_kd.losses.relation import rkd_angle_loss, rkd_distance_loss

__all__ = [
    "CRDMemory",
    "attention_map",
    "attention_transfer_loss",
    "crd_loss",
    "crd_objective",
    "distillation_loss",
    "dkd_loss",
    "dkd_parts",
    "hint_loss",
    "kd_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "smooth_labels",
    "soft_cross_entropy",
    "softmax_kl_loss",
    "softmax_mse_loss",
    "softmax_with_temperature",
    "uniform_smooth_labels",
]
