"""CIFAR-10 and CIFAR-100 LightningDataModules.

Two input pipelines share one DataModule:

* ``augment="batch"`` (default, fast): each split lives in memory as one ``uint8`` tensor
  ``(N, 3, 32, 32)``. The DataLoader gathers a whole batch with one indexing op
  (:class:`UInt8ImageDataset` implements ``__getitems__``) and yields ``uint8`` images.
  Cropping, flipping, float conversion and normalisation run on the whole batch in
  :meth:`CIFARDataModuleBase.on_after_batch_transfer`, i.e. on the accelerator after transfer.
* ``augment="pil"`` (classic): a per-sample torchvision pipeline on PIL images; batches come
  out of the DataLoader already float and normalised.

Both yield ``[images, targets]`` to the model: float32 ``(B, 3, 32, 32)`` normalised images and
int64 ``(B,)`` labels. With ``views`` (a :class:`~lightning_kd.data.views.MultiCropViews`, for
label-free self-distillation such as DINO or BYOL) training batches are
``[views, targets]`` instead, ``views`` a list of normalised float32 ``(B, 3, s, s)`` tensors
(global views first), made on the whole batch by ``views.batch`` with ``augment="batch"`` and
per sample by ``views(image)`` with ``augment="pil"``; evaluation batches do not change.
:meth:`CIFARDataModuleBase.feature_bank_dataloader` serves the training images with evaluation
transforms, e.g. as the feature bank of a kNN evaluation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from typing_extensions import override

from lightning_kd.data.batch_augment import normalize_constants, random_crop_flip
from lightning_kd.data.cifar_files import (
    CIFAR10_LAYOUT,
    CIFAR100_LAYOUT,
    CifarLayout,
    find_cifar_dir,
    read_cifar_class_names,
    read_cifar_split,
    resolve_cifar_dir,
)
from lightning_kd.data.feature_bank import bank_shard, check_shard
from lightning_kd.data.label_split import read_split_file
from lightning_kd.data.views import MultiCropViews, NormalizedViews

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataModuleBase",
    "CIFARFiles",
    "PILImageDataset",
    "UInt8ImageDataset",
    "collate_uint8_batch",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class UInt8ImageDataset(Dataset[tuple[Tensor, ...]]):
    """In-memory images with batched indexing.

    The DataLoader calls :meth:`__getitems__` with the list of indices of one batch, so a
    batch costs one ``index_select`` instead of ``B`` ``__getitem__`` calls. Use it with
    :func:`collate_uint8_batch`. Any sampler works, including ``DistributedSampler``.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        targets: ``int64`` tensor ``(N,)``.
        return_indices: also return each sample's index in this dataset (for methods that
            keep per-sample state, e.g. CRD's memory bank).
    """

    def __init__(self, images: Tensor, targets: Tensor, *, return_indices: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if targets.shape != (images.shape[0],):
            raise ValueError(
                f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}"
            )
        self.images = images
        self.targets = targets.long()
        self.return_indices = return_indices

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        """One sample: ``uint8`` image ``(C, H, W)``, an int64 scalar label (and its index)."""
        if self.return_indices:
            return self.images[index], self.targets[index], torch.tensor(index)
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        """One batch: ``uint8`` images ``(B, C, H, W)``, int64 labels ``(B,)`` (and the int64
        sample indices ``(B,)`` with ``return_indices``)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        images, targets = self.images.index_select(0, idx), self.targets.index_select(0, idx)
        if self.return_indices:
            return images, targets, idx
        return images, targets


def collate_uint8_batch(batch: Any) -> list[Tensor]:
    """Collate function for :class:`UInt8ImageDataset` (module level, so it pickles).

    Args:
        batch: Either the ``(images, targets[, indices])`` tuple returned by ``__getitems__``,
            or a list of ``(image, target[, index])`` samples (when a loader bypasses
            ``__getitems__``).

    Returns:
        ``[images, targets]`` (plus ``indices``): ``uint8`` ``(B, C, H, W)``, int64 ``(B,)``.
    """
    if (
        isinstance(batch, tuple)
        and len(batch) in (2, 3)
        and isinstance(batch[0], Tensor)
        and batch[0].dim() == 4
    ):
        return list(batch)
    columns = list(zip(*batch, strict=True))
    images = torch.stack(list(columns[0]))
    rest = [torch.stack([torch.as_tensor(v) for v in column]).long() for column in columns[1:]]
    return [images, *rest]


class PILImageDataset(Dataset[tuple[Any, ...]]):
    """Per-sample dataset: each image becomes a PIL image and goes through ``transform``.

    Args:
        images: ``uint8`` tensor ``(N, 3, H, W)``; stored as a contiguous ``(N, H, W, 3)``
            array so that building a PIL image needs no copy.
        targets: int64 tensor ``(N,)``.
        transform: Callable from a PIL image to a float tensor ``(3, H', W')`` (or to a list
            of such tensors, e.g. :class:`~lightning_kd.data.views.NormalizedViews`).
        return_indices: also return each sample's index in this dataset.
    """

    def __init__(
        self, images: Tensor, targets: Tensor, transform: Any, *, return_indices: bool = False
    ) -> None:
        if targets.shape != (images.shape[0],):
            raise ValueError(
                f"targets must have shape ({images.shape[0]},), got {tuple(targets.shape)}"
            )
        self.images_hwc: np.ndarray = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets: list[int] = targets.tolist()
        self.transform = transform
        self.return_indices = return_indices

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        """One sample: transformed image (float ``(3, H', W')`` or a list of views), its label
        (and its index)."""
        image = Image.fromarray(self.images_hwc[index])
        if self.return_indices:
            return self.transform(image), self.targets[index], index
        return self.transform(image), self.targets[index]


CifarDataset = UInt8ImageDataset | PILImageDataset


def _num_val(val_split: int | float, n: int) -> int:
    """Number of validation images for ``val_split`` out of ``n`` training images."""
    count = round(val_split * n) if isinstance(val_split, float) else val_split
    if count == 0 and val_split != 0:
        raise ValueError(
            f"val_split={val_split!r} holds out no image of {n}; use val_split=0 to validate "
            "on the test split"
        )
    if count >= n:
        raise ValueError(
            f"val_split={val_split!r} holds out {count} of {n} training images; "
            "at least one must stay for training"
        )
    return count


def _class_balanced_subset(
    targets: Tensor, size: int, num_classes: int, generator: torch.Generator
) -> Tensor:
    """Pick ``size`` indices with per-class counts as equal as possible.

    Each class gets ``size // num_classes`` images, and ``size % num_classes`` classes chosen
    by ``generator`` get one more. Within a class, images are chosen by ``generator``.

    Args:
        targets: int64 labels ``(N,)``.
        size: Number of indices to return.
        num_classes: Number of classes ``C``.
        generator: Seeded CPU generator.

    Returns:
        Sorted int64 indices into ``targets``, shape ``(size,)``.

    Raises:
        ValueError: If ``size`` exceeds ``N`` or a class has too few images.
    """
    if size > targets.numel():
        raise ValueError(
            f"train_subset={size} is larger than the {targets.numel()} available training images"
        )
    per_class = torch.full((num_classes,), size // num_classes, dtype=torch.long)
    per_class[torch.randperm(num_classes, generator=generator)[: size % num_classes]] += 1
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(targets == cls).flatten()
        want = int(per_class[cls])
        if members.numel() < want:
            raise ValueError(
                f"train_subset={size} needs {want} images of class {cls}, but only "
                f"{members.numel()} are available"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:want]])
    return torch.cat(chosen).sort().values


class CIFARFiles:
    """What every CIFAR datamodule shares: the on-disk files and their normalisation.

    A mixin for ``LightningDataModule`` subclasses that set :attr:`layout`, :attr:`mean` and
    :attr:`std` (class attributes) and ``data_dir``, ``download`` and ``channels_last``
    (instance attributes). It provides ``num_classes``, ``class_names``, the download in
    ``prepare_data`` and :meth:`normalize_batch`.
    """

    layout: ClassVar[CifarLayout]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    data_dir: str
    download: bool
    channels_last: bool
    _class_names: list[str] | None = None
    _norm_cache: dict[torch.device, tuple[Tensor, Tensor]]
    _float_norm_cache: dict[torch.device, tuple[Tensor, Tensor]]

    @property
    def num_classes(self) -> int:
        """Number of classes (10 or 100)."""
        return self.layout.num_classes

    @property
    def class_names(self) -> list[str]:
        """Class names from the meta file, indexed by label (reads the file on first use)."""
        if self._class_names is None:
            folder = resolve_cifar_dir(self.data_dir, self.layout)
            self._class_names = read_cifar_class_names(folder, self.layout)
        return self._class_names

    def prepare_data(self) -> None:
        """Download through torchvision when ``download=True`` and the files are missing.

        Lightning calls this on one process per node. The downloaded folder is afterwards
        read like any other copy (see ``setup``).
        """
        if not self.download or find_cifar_dir(self.data_dir, self.layout) is not None:
            return
        from torchvision import datasets

        root = Path(self.data_dir).expanduser()
        if root.name == self.layout.folder:
            root = root.parent
        dataset_cls = getattr(datasets, self.layout.torchvision_class)
        for train in (True, False):
            dataset_cls(root=str(root), train=train, download=True)

    @property
    def validates_on_test(self) -> bool:
        """Whether validation runs on the test split (``val_split=0``): then nothing that is
        chosen by validation metrics is held out, and the modules name those metrics
        ``val_on_test/...``."""
        return getattr(self, "val_split", 0) == 0

    def warn_if_validating_on_test(self, stage: str) -> None:
        """Warn (once per datamodule) that ``val_split=0`` makes validation read the test
        split."""
        if stage not in ("fit", "validate") or not self.validates_on_test:
            return
        if getattr(self, "_warned_val_on_test", False):
            return
        self._warned_val_on_test = True
        rank_zero_warn(
            f"val_split=0: validation runs on the {self.layout.name} test split, so its metrics "
            "are logged as val_on_test/... and must not select checkpoints or hyperparameters; "
            "set val_split (e.g. 5000) to hold out a validation split of the training set"
        )

    def normalize_batch(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> float32 normalised with the dataset's mean and std,
        ``channels_last`` if requested, on the images' device.

        ``uint8`` images are read as ``0..255`` (what the DataLoader yields); floating-point
        images as ``[0, 1]`` (what :meth:`MultiCropViews.batch` returns).

        Raises:
            TypeError: If the images are neither ``uint8`` nor floating point.
        """
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(
                f"expected uint8 images in [0, 255] or float images in [0, 1], got {images.dtype}"
            )
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if images.dtype == torch.uint8:
            if not hasattr(self, "_norm_cache"):
                self._norm_cache = {}
            cache, max_value = self._norm_cache, 255.0
        else:
            if not hasattr(self, "_float_norm_cache"):
                self._float_norm_cache = {}
            cache, max_value = self._float_norm_cache, 1.0
        if images.device not in cache:
            cache[images.device] = normalize_constants(
                self.mean, self.std, device=images.device, max_value=max_value
            )
        scale, shift = cache[images.device]
        return torch.addcmul(shift, images.float(), scale)  # (B, 3, H, W), float32


class CIFARDataModuleBase(CIFARFiles, LightningDataModule):
    """Shared implementation of the CIFAR DataModules; use a subclass.

    Subclasses set :attr:`layout`, :attr:`mean` and :attr:`std`.

    Args:
        data_dir: Folder that contains the batches folder (``cifar-10-batches-py`` or
            ``cifar-100-python``), or that batches folder itself.
        batch_size: Training batch size (per process under DDP).
        eval_batch_size: Batch size of the val/test/predict loaders; ``None`` uses
            ``batch_size``.
        num_workers: DataLoader worker processes (persistent when > 0).
        val_split: Training images held out for validation, as a count (int) or a fraction in
            ``[0, 1)`` (float), chosen by a generator seeded with ``seed``; 10% by default. The
            test split is read only by ``test`` (and ``predict``). ``0`` validates on the test
            split instead, with a warning, and the metrics are then named ``val_on_test/...``.
            Validation images are never augmented.
        seed: Seed for the validation split and ``train_subset``.
        download: If the files are missing, download them with torchvision in
            :meth:`prepare_data`.
        train_subset: Train on only this many images, class-balanced, chosen by the seeded
            generator from the images left after the validation split. ``None`` uses all.
        labeled_split_file: Train on exactly the labeled images of a semi-supervised split
            file (see :mod:`~lightning_kd.data.label_split`; e.g. the one a
            :class:`~lightning_kd.data.semi_supervised.CIFAR10SSLDataModule` run wrote), for a
            supervised-only baseline with the same labels. Cannot be combined with
            ``train_subset``; its images must not fall in the validation split.
        augment: ``"batch"`` for the fast in-memory path with augmentation on the whole batch
            in :meth:`on_after_batch_transfer`, ``"pil"`` for per-sample torchvision
            transforms in the DataLoader.
        channels_last: Return images in ``torch.channels_last`` memory format.
        pin_memory: Passed to the DataLoaders.
        drop_last: Drop the last incomplete training batch (training loader only).
        return_indices: Training batches also carry each image's index in the training set,
            ``(images, targets, indices)``, for methods with per-sample state (CRD). The
            indices range over ``[0, len(train_dataset))``, after the validation split and
            ``train_subset``.
        views: Multi-view augmentation for label-free self-distillation (e.g.
            :class:`~lightning_kd.data.views.MultiCropViews` for DINO,
            :class:`~lightning_kd.data.views.TwoViews` for BYOL). Training batches become
            ``[views, targets]`` (plus indices), ``views`` a list of ``views.num_views``
            normalised float32 tensors ``(B, 3, s, s)``, ``channels_last`` if requested; it
            replaces the crop-and-flip augmentation. Evaluation batches are unchanged. Not
            stored in ``hparams`` (the CLI records it in its config).

    Raises:
        ValueError: If an argument is out of range.
        TypeError: If ``val_split`` is neither int nor float, or ``views`` is not a
            ``MultiCropViews``.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_split: int | float = 0.1,
        seed: int = 0,
        download: bool = False,
        train_subset: int | None = None,
        labeled_split_file: str | None = None,
        augment: Literal["batch", "pil"] = "batch",
        channels_last: bool = False,
        pin_memory: bool = False,
        drop_last: bool = True,
        return_indices: bool = False,
        views: MultiCropViews | None = None,
    ) -> None:
        super().__init__()
        if type(self) is CIFARDataModuleBase:
            raise TypeError(
                "CIFARDataModuleBase is abstract; use CIFAR10DataModule or CIFAR100DataModule"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if isinstance(val_split, bool) or not isinstance(val_split, int | float):
            raise TypeError(
                f"val_split must be an int count or a float fraction, got {val_split!r}"
            )
        if isinstance(val_split, float) and not 0.0 <= val_split < 1.0:
            raise ValueError(
                f"val_split as a float is a fraction and must be in [0, 1), got {val_split}"
            )
        if isinstance(val_split, int) and val_split < 0:
            raise ValueError(f"val_split as an int is a count and must be >= 0, got {val_split}")
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 or None, got {train_subset}")
        if train_subset is not None and labeled_split_file is not None:
            raise ValueError(
                "train_subset and labeled_split_file both choose the training images; pass one, "
                f"got train_subset={train_subset} and labeled_split_file={labeled_split_file!r}"
            )
        if augment not in ("batch", "pil"):
            raise ValueError(f"augment must be 'batch' or 'pil', got {augment!r}")
        if views is not None and not isinstance(views, MultiCropViews):
            raise TypeError(f"views must be a MultiCropViews or None, got {type(views).__name__}")
        self.save_hyperparameters(ignore=["views"])

        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.download = download
        self.train_subset = train_subset
        self.labeled_split_file = labeled_split_file
        self.augment = augment
        self.channels_last = channels_last
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.return_indices = return_indices
        self.views = views

        self.train_dataset: CifarDataset | None = None
        self.val_dataset: CifarDataset | None = None
        self.test_dataset: CifarDataset | None = None
        self._class_names: list[str] | None = None
        self._norm_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ data
    @override
    def setup(self, stage: str) -> None:
        """Load the splits that ``stage`` needs (idempotent).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """
        self.warn_if_validating_on_test(stage)
        needs_train = stage in ("fit", "validate")
        needs_test = stage in ("test", "predict") or (needs_train and self._val_on_test)
        folder = resolve_cifar_dir(self.data_dir, self.layout)
        if needs_train and self.train_dataset is None:
            images, targets = read_cifar_split(folder, self.layout, train=True)
            self._setup_train_val(images, targets)
        if needs_test and self.test_dataset is None:
            images, targets = read_cifar_split(folder, self.layout, train=False)
            self.test_dataset = self._make_dataset(images, targets, train=False)
        if self._val_on_test and self.val_dataset is None and self.test_dataset is not None:
            self.val_dataset = self.test_dataset

    @property
    def _val_on_test(self) -> bool:
        return self.validates_on_test

    def _setup_train_val(self, images: Tensor, targets: Tensor) -> None:
        """Split the training images into train/val and apply ``train_subset`` or
        ``labeled_split_file``."""
        n = targets.numel()
        generator = torch.Generator().manual_seed(self.seed)
        n_val = _num_val(self.val_split, n)
        perm = torch.randperm(n, generator=generator)
        val_idx = perm[:n_val].sort().values
        train_idx = perm[n_val:].sort().values
        if self.train_subset is not None:
            pick = _class_balanced_subset(
                targets[train_idx], self.train_subset, self.num_classes, generator
            )
            train_idx = train_idx[pick]
        if self.labeled_split_file is not None:
            labeled, _ = read_split_file(
                self.labeled_split_file, dataset=self.layout.name, num_train_images=n
            )
            overlap = int(torch.isin(labeled, val_idx).sum())
            if overlap:
                raise ValueError(
                    f"labeled_split_file {self.labeled_split_file!r}: {overlap} of its labeled "
                    f"images fall in the validation split (val_split={self.val_split}, "
                    f"seed={self.seed}); use val_split=0 or the split's own val_split and seed"
                )
            train_idx = labeled
        if n_val > 0:
            self.val_dataset = self._make_dataset(images[val_idx], targets[val_idx], train=False)
        self.train_dataset = self._make_dataset(images[train_idx], targets[train_idx], train=True)

    def _make_dataset(self, images: Tensor, targets: Tensor, *, train: bool) -> CifarDataset:
        indices = train and self.return_indices
        if self.augment == "batch":
            return UInt8ImageDataset(images.contiguous(), targets, return_indices=indices)
        return PILImageDataset(
            images, targets, self.pil_transform(train=train), return_indices=indices
        )

    def pil_transform(self, *, train: bool) -> transforms.Compose | NormalizedViews:
        """The per-sample torchvision pipeline used by ``augment="pil"``.

        Args:
            train: Include ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``, or
                with ``views`` make the views instead.

        Returns:
            Transform from a PIL image to a normalised float tensor ``(3, 32, 32)``; for
            training with ``views``, to a list of normalised views.
        """
        if train and self.views is not None:
            return NormalizedViews(self.views, self.mean, self.std)
        steps: list[Any] = []
        if train:
            steps += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        return transforms.Compose(steps)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: CifarDataset | None, split: str, *, train: bool) -> DataLoader[Any]:
        if dataset is None:
            stage = "'fit'" if split == "train" else "the matching stage"
            raise RuntimeError(
                f"no {split} dataset: call setup({stage}) before {split}_dataloader()"
            )
        batch_size = self.batch_size if train else self.eval_batch_size
        if train and self.drop_last and len(dataset) < batch_size:
            raise ValueError(
                f"the training set has {len(dataset)} images, fewer than batch_size="
                f"{batch_size}, and drop_last=True would yield no batch; lower batch_size or "
                "set drop_last=False"
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_uint8_batch if self.augment == "batch" else None,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training batches (Lightning adds a ``DistributedSampler`` under DDP)."""
        return self._loader(self.train_dataset, "train", train=True)

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        """Validation batches: the held-out split, or the test split when ``val_split=0``."""
        return self._loader(self.val_dataset, "val", train=False)

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        """Test-split batches."""
        return self._loader(self.test_dataset, "test", train=False)

    @override
    def predict_dataloader(self) -> DataLoader[Any]:
        """Test-split batches, for ``trainer.predict``."""
        return self._loader(self.test_dataset, "test", train=False)

    def feature_bank_dataloader(self, *, num_replicas: int = 1, rank: int = 0) -> DataLoader[Any]:
        """The training images with evaluation transforms, e.g. as a kNN feature bank.

        The same images as :meth:`train_dataloader` (after ``val_split`` and
        ``train_subset``), never augmented, in order, batches of ``eval_batch_size``, the last
        one kept. Batches are ``[images, targets]`` exactly as the validation loader's: with
        ``augment="batch"``, ``uint8`` images that :meth:`on_after_batch_transfer` normalises
        while the trainer is not training (e.g. at the start of a validation epoch).

        Args:
            num_replicas: Number of shards (processes).
            rank: This shard: images ``rank, rank + num_replicas, ...``, without padding, so
                the shards together hold every training image exactly once.

        Returns:
            An unshuffled DataLoader over this shard.

        Raises:
            RuntimeError: If ``setup("fit")`` has not run.
            ValueError: If ``num_replicas < 1`` or ``rank`` is not in ``[0, num_replicas)``.
        """
        check_shard(num_replicas=num_replicas, rank=rank)
        train = self.train_dataset
        if train is None:
            raise RuntimeError(
                "no training dataset: call setup('fit') before feature_bank_dataloader()"
            )
        bank: CifarDataset
        if isinstance(train, UInt8ImageDataset):
            bank = UInt8ImageDataset(train.images, train.targets)
        else:  # same stored images, evaluation transform
            bank = copy.copy(train)
            bank.transform = self.pil_transform(train=False)
            bank.return_indices = False
        return DataLoader(
            bank_shard(bank, num_replicas=num_replicas, rank=rank),
            batch_size=self.eval_batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=collate_uint8_batch if self.augment == "batch" else None,
            pin_memory=self.pin_memory,
        )

    # ------------------------------------------------------------------ batch transforms
    def transform_batch(self, batch: list[Tensor], *, train: bool) -> list[Any]:
        """Turn a ``uint8`` batch into model input, on the batch's device.

        Args:
            batch: ``[images, targets]``: ``uint8`` ``(B, 3, 32, 32)`` and int64 ``(B,)``
                (plus int64 indices ``(B,)``, passed through).
            train: Apply :func:`random_crop_flip` (pad 4, per-sample offsets and flips, from
                torch's global RNG on the batch's device) before normalising; with ``views``,
                make the views with ``views.batch`` instead.

        Returns:
            ``[images, targets]``: float32 ``(B, 3, 32, 32)`` normalised with the dataset's
            mean/std (``channels_last`` if requested) and int64 ``(B,)``. For training with
            ``views``: ``[views, targets]``, ``views`` a list of ``num_views`` normalised
            float32 ``(B, 3, s, s)`` tensors, global views first.

        Raises:
            TypeError: If the images are not ``uint8``.
        """
        images, targets = batch[0], batch[1]
        if images.dtype != torch.uint8:
            raise TypeError(
                f"transform_batch expects uint8 images (augment='batch'), got {images.dtype}"
            )
        if train and self.views is not None:
            views = [self.normalize_batch(v) for v in self.views.batch(images)]
            return [views, targets.long(), *batch[2:]]
        if train:
            images = random_crop_flip(images, padding=4)
        return [self.normalize_batch(images), targets.long(), *batch[2:]]

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training only) and normalise the batch on the accelerator.

        With ``augment="batch"``: training batches (``trainer.training``) get
        :meth:`transform_batch` with ``train=True``; every other batch, and any batch when no
        trainer is attached, is only normalised. With ``augment="pil"`` the images (or views)
        are already float and are only converted to ``channels_last`` if requested.

        Args:
            batch: ``[images, targets]`` (or ``[views, targets]``, plus indices) from the
                DataLoader, already on the device.
            dataloader_idx: Index of the DataLoader (unused).

        Returns:
            ``[images, targets]``: float32 ``(B, 3, 32, 32)`` and int64 ``(B,)``; for training
            with ``views``, ``[views, targets]`` (see :meth:`transform_batch`).
        """
        if self.augment == "pil":
            if self.channels_last:
                cl = torch.channels_last
                first = batch[0]
                if isinstance(first, Tensor):
                    first = first.contiguous(memory_format=cl)
                else:
                    first = [v.contiguous(memory_format=cl) for v in first]
                batch = [first, *batch[1:]]
            return batch
        trainer = self.trainer
        training = trainer is not None and bool(trainer.training)
        return self.transform_batch(batch, train=training)


class CIFAR10DataModule(CIFARDataModuleBase):
    """CIFAR-10: 50,000 train / 10,000 test images, 10 classes.

    See :class:`CIFARDataModuleBase` for the arguments. ``data_dir`` is the folder that holds
    ``cifar-10-batches-py``, or that folder itself.
    """

    layout = CIFAR10_LAYOUT
    mean = CIFAR10_MEAN
    std = CIFAR10_STD


class CIFAR100DataModule(CIFARDataModuleBase):
    """CIFAR-100 with fine labels: 50,000 train / 10,000 test images, 100 classes.

    See :class:`CIFARDataModuleBase` for the arguments. ``data_dir`` is the folder that holds
    ``cifar-100-python``, or that folder itself.
    """

    layout = CIFAR100_LAYOUT
    mean = CIFAR100_MEAN
    std = CIFAR100_STD
