"""LightningModules: the plain classifier, the distillation methods and self-distillation."""

from lightning_kd.modules.base import LightningKDModule, sgd
from lightning_kd.modules.byol import BYOLModule
from lightning_kd.modules.classifier import ClassifierModule
from lightning_kd.modules.dino import DINOModule
from lightning_kd.modules.feature_kd import FeatureKDModule
from lightning_kd.modules.kd import KDModule
from lightning_kd.modules.mean_teacher import MeanTeacherModule
from lightning_kd.modules.mlkd import MLKDModule
from lightning_kd.modules.review_kd import ABF, ReviewKDTerm
from lightning_kd.modules.self_distillation import BackboneWithHead, SelfDistillationModule
from lightning_kd.modules.teachers import Teacher, TeacherEnsemble
from lightning_kd.modules.terms import (
    AttentionTerm,
    CRDTerm,
    CTKDTerm,
    DistillationTerm,
    DISTTerm,
    DKDTerm,
    HintTerm,
    RKDTerm,
    TermInputs,
)

__all__ = [
    "ABF",
    "AttentionTerm",
    "BYOLModule",
    "BackboneWithHead",
    "CRDTerm",
    "CTKDTerm",
    "ClassifierModule",
    "DINOModule",
    "DISTTerm",
    "DKDTerm",
    "DistillationTerm",
    "FeatureKDModule",
    "HintTerm",
    "KDModule",
    "LightningKDModule",
    "MLKDModule",
    "MeanTeacherModule",
    "RKDTerm",
    "ReviewKDTerm",
    "SelfDistillationModule",
    "Teacher",
    "TeacherEnsemble",
    "TermInputs",
    "sgd",
]
