"""LightningModules: the plain classifier and the distillation methods."""

from lightning_kd.modules.base import LightningKDModule, sgd
from lightning_kd.modules.classifier import ClassifierModule
from lightning_kd.modules.kd import KDModule

__all__ = ["ClassifierModule", "KDModule", "LightningKDModule", "sgd"]
