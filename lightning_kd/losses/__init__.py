"""Distillation losses: pure, typed functions on tensors, grouped by family.

* :mod:`~lightning_kd.losses.logit`: Hinton KD, label smoothing, soft cross-entropy.
* :mod:`~lightning_kd.losses.dkd`: decoupled KD (target / non-target class terms).
* :mod:`~lightning_kd.losses.dist`: DIST (inter- and intra-class Pearson relations).
* :mod:`~lightning_kd.losses.ctkd`: CTKD (gradient reversal, learnable temperature, curriculum).
* :mod:`~lightning_kd.losses.mlkd`: multi-level logit distillation (instance, class and batch
  correlation terms over several temperatures, confidence masks).
* :mod:`~lightning_kd.losses.review`: ReviewKD's hierarchical context loss.
* :mod:`~lightning_kd.losses.ensemble`: several teachers' combined target and KD against it.
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
from lightning_kd.losses.ctkd import (
    GlobalTemperature,
    GradientReversal,
    ctkd_kd_loss,
    ctkd_lambda,
    gradient_reversal,
)
from lightning_kd.losses.dino import DINOCenter, dino_loss, teacher_entropy
from lightning_kd.losses.dist import dist_loss, dist_parts, pearson_correlation
from lightning_kd.losses.dkd import dkd_loss, dkd_parts
from lightning_kd.losses.ensemble import (
    ensemble_targets,
    ensemble_weights,
    kd_loss_to_distribution,
    multi_teacher_kd_loss,
)
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
from lightning_kd.losses.mlkd import (
    MLKD_TEMPERATURES,
    MLKDParts,
    batch_correlation_loss,
    class_correlation_loss,
    confidence_masks,
    instance_kd_loss,
    mlkd_loss,
    mlkd_parts,
)
from lightning_kd.losses.relation import rkd_angle_loss, rkd_distance_loss
from lightning_kd.losses.review import hcl_loss

__all__ = [
    "MLKD_TEMPERATURES",
    "CRDMemory",
    "DINOCenter",
    "GlobalTemperature",
    "GradientReversal",
    "MLKDParts",
    "attention_map",
    "attention_transfer_loss",
    "batch_correlation_loss",
    "byol_loss",
    "class_correlation_loss",
    "confidence_masks",
    "crd_loss",
    "crd_objective",
    "ctkd_kd_loss",
    "ctkd_lambda",
    "dino_loss",
    "dist_loss",
    "dist_parts",
    "distillation_loss",
    "dkd_loss",
    "dkd_parts",
    "ensemble_targets",
    "ensemble_weights",
    "gradient_reversal",
    "hcl_loss",
    "hint_loss",
    "instance_kd_loss",
    "kd_loss",
    "kd_loss_to_distribution",
    "mlkd_loss",
    "mlkd_parts",
    "multi_teacher_kd_loss",
    "negative_cosine_similarity",
    "pearson_correlation",
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
