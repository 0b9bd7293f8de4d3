"""Networks for distillation: CIFAR ResNets and WRNs, a small CPU CNN, torchvision models.

Classes (``CIFARResNet``, ``WideResNet``, ``SmallCNN``, ``TorchvisionModel``) are meant for
YAML configs (``class_path`` / ``init_args``); the lower-case factories build the variants
used in the KD literature. :func:`load_weights` loads Lightning checkpoints, plain state
dicts and torchvision weights files into any of them.
"""

from lightning_kd.models.cifar_resnet import (
    CIFARResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from lightning_kd.models.loading import load_weights
from lightning_kd.models.small_cnn import SmallCNN
from lightning_kd.models.torchvision_model import TorchvisionModel
from lightning_kd.models.wide_resnet import WideResNet, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "CIFARResNet",
    "SmallCNN",
    "TorchvisionModel",
    "WideResNet",
    "load_weights",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
