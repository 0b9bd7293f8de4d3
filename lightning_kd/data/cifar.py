"""CIFAR-10 and CIFAR-100 LightningDataModules.

Each is :class:`~lightning_kd.data.datamodule.ImageDataModule` (load, split, keyed batches,
batch transform, normalisation; see its docstring for the batches) over the CIFAR files
(:class:`~lightning_kd.data.cifar_files.CIFARFiles`). ``data_dir`` is the folder that holds
``cifar-10-batches-py`` / ``cifar-100-python``, or that folder itself.
"""

from __future__ import annotations

from lightning_kd.data.cifar_files import CIFAR10_LAYOUT, CIFAR100_LAYOUT, CIFARFiles
from lightning_kd.data.datamodule import ImageDataModule

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class CIFAR10DataModule(CIFARFiles, ImageDataModule):
    """CIFAR-10: 50,000 train / 10,000 test images, 10 classes.

    See :class:`~lightning_kd.data.datamodule.ImageDataModule` for the arguments.
    """

    layout = CIFAR10_LAYOUT
    mean = CIFAR10_MEAN
    std = CIFAR10_STD


class CIFAR100DataModule(CIFARFiles, ImageDataModule):
    """CIFAR-100 with fine labels: 50,000 train / 10,000 test images, 100 classes.

    See :class:`~lightning_kd.data.datamodule.ImageDataModule` for the arguments.
    """

    layout = CIFAR100_LAYOUT
    mean = CIFAR100_MEAN
    std = CIFAR100_STD
