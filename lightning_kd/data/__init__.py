"""Data: CIFAR and image-folder DataModules, batched tensor augmentation, multi-view crops."""

from lightning_kd.data.batch_augment import normalize, normalize_constants, random_crop_flip
from lightning_kd.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CIFARDataModuleBase,
    PILImageDataset,
    UInt8ImageDataset,
    collate_uint8_batch,
)
from lightning_kd.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataModule
from lightning_kd.data.semi_supervised import (
    CIFAR10SSLDataModule,
    CIFAR100SSLDataModule,
    CIFARSSLDataModuleBase,
    CyclingDistributedSampler,
)
from lightning_kd.data.views import MultiCropViews, NormalizedViews, TwoViews

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10DataModule",
    "CIFAR10SSLDataModule",
    "CIFAR100DataModule",
    "CIFAR100SSLDataModule",
    "CIFARDataModuleBase",
    "CIFARSSLDataModuleBase",
    "CyclingDistributedSampler",
    "ImageFolderDataModule",
    "MultiCropViews",
    "NormalizedViews",
    "PILImageDataset",
    "TwoViews",
    "UInt8ImageDataset",
    "collate_uint8_batch",
    "normalize",
    "normalize_constants",
    "random_crop_flip",
]
