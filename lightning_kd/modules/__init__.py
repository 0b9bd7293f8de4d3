"""LightningModules: the plain classifier and the distillation methods."""

from lightning_kd.modules.base import LightningKDModule, sgd
from lightning_kd.modules.classifier import ClassifierModule
from lightning_kd.modules.feature_kd import FeatureKDModule
from lightning_kd.modules.kd import KDModule
from lightning_kd.modules.mean_teacher import MeanTeacherModule
from lightning_kd.modules.terms import (
    AttentionTerm,
    CRDTerm,
    DistillationTerm,
    DKDTerm,
    HintTerm,
    RKDTerm,
    TermInputs,
)

__all__ = [
    "AttentionTerm",
    "CRDTerm",
    "ClassifierModule",
    "DKDTerm",
    "DistillationTerm",
    "FeatureKDModule",
    "HintTerm",
    "KDModule",
    "LightningKDModule",
    "MeanTeacherModule",
    "RKDTerm",
    "TermInputs",
    "sgd",
]
