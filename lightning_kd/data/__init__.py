"""Data: one datamodule family (CIFAR, semi-supervised CIFAR, image folders), keyed batch
transforms, splits and resumable samplers."""

from lightning_kd.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR10DataModule,
    CIFAR100DataModule,
)
from lightning_kd.data.datamodule import ImageDataModule, ViewKeys
from lightning_kd.data.datasets import TensorImageDataset, collate_batch
from lightning_kd.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataModule
from lightning_kd.data.keyed_random import SampleKeys, epoch_permutation
from lightning_kd.data.mixing import CutMix, MixingTransform, MixUp
from lightning_kd.data.ops import normalize, normalize_constants
from lightning_kd.data.samplers import CyclingDistributedSampler, EpochSampler, ResumableDataLoader
from lightning_kd.data.semi_supervised import (
    CIFAR10SSLDataModule,
    CIFAR100SSLDataModule,
    SemiSupervisedDataModule,
)
from lightning_kd.data.strong_augment import RandAugmentView, StrongAugment
from lightning_kd.data.transforms import (
    BatchTransform,
    CropFlip,
    MultiCropViews,
    NormalizedViews,
    TwoViews,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchTransform",
    "CIFAR10DataModule",
    "CIFAR10SSLDataModule",
    "CIFAR100DataModule",
    "CIFAR100SSLDataModule",
    "CropFlip",
    "CutMix",
    "CyclingDistributedSampler",
    "EpochSampler",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MixUp",
    "MixingTransform",
    "MultiCropViews",
    "NormalizedViews",
    "RandAugmentView",
    "ResumableDataLoader",
    "SampleKeys",
    "SemiSupervisedDataModule",
    "StrongAugment",
    "TensorImageDataset",
    "TwoViews",
    "ViewKeys",
    "collate_batch",
    "epoch_permutation",
    "normalize",
    "normalize_constants",
]
