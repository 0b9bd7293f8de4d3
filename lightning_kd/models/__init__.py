"""Networks for distillation: the CIFAR zoo of the KD benchmarks, a small CPU CNN, torchvision.

Classes (``CIFARResNet``, ``WideResNet``, ``VGG``, ``MobileNetV2``, ``ShuffleNetV1``,
``ShuffleNetV2``, ``CIFARBottleneckResNet``, ``SmallCNN``, ``TorchvisionModel``) are meant for
YAML configs (``class_path`` / ``init_args``); the lower-case factories build the variants
used in the KD literature. The VGGs, MobileNetV2, the ShuffleNets and ResNet-50 have the
state-dict keys of RepDistiller / mdistiller, so their CIFAR weights load as they are.
:func:`load_weights` loads Lightning checkpoints, plain state dicts and torchvision weights
files into any of them.
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
from lightning_kd.models.mobilenetv2 import MobileNetV2, mobilenetv2
from lightning_kd.models.resnet50 import CIFARBottleneckResNet, resnet50
from lightning_kd.models.shufflenet import ShuffleNetV1, ShuffleNetV2, shufflenetv1, shufflenetv2
from lightning_kd.models.small_cnn import SmallCNN
from lightning_kd.models.timm_model import TimmModel
from lightning_kd.models.torchvision_model import TorchvisionModel
from lightning_kd.models.vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from lightning_kd.models.wide_resnet import WideResNet, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "VGG",  # first: ruff sorts all-caps names before the others
    "CIFARBottleneckResNet",
    "CIFARResNet",
    "MobileNetV2",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "SmallCNN",
    "TimmModel",
    "TorchvisionModel",
    "WideResNet",
    "load_weights",
    "mobilenetv2",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet110",
    "shufflenetv1",
    "shufflenetv2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
