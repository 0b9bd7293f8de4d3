"""A LightningDataModule for ImageNet-style folder trees.

Expected layout::

    data_dir/
      train/<class_name>/<image>.{png,jpg,jpeg,...}
      val/<class_name>/<image>...

Class indices follow the sorted class-folder names, which must be the same in ``train`` and
``val``. Images are decoded with PIL and transformed per sample in the DataLoader workers
(files must be decoded one by one anyway). With ``views`` (a
:class:`~lightning_kd.data.transforms.MultiCropViews`), training samples are lists of
normalised views for label-free self-distillation (DINO, BYOL).

Reproducible views: the training order comes from
:class:`~lightning_kd.data.samplers.EpochSampler` (a pure function of ``(view_seed, epoch)``
and the rank) and each training sample's torchvision transforms run under torch's CPU RNG
seeded with :func:`~lightning_kd.data.keyed_random.sample_seed` of ``(view_seed, epoch,
index)``, so a sample's views do not depend on batch, worker or process, and the loader
resumes mid-epoch exactly (:class:`~lightning_kd.data.samplers.ResumableDataLoader`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from typing_extensions import override

from lightning_kd.data.datasets import REPEAT_BITS
from lightning_kd.data.feature_bank import bank_shard, check_shard
from lightning_kd.data.keyed_random import sample_seed
from lightning_kd.data.samplers import EpochSampler, ResumableDataLoader
from lightning_kd.data.transforms import MultiCropViews, NormalizedViews
from lightning_kd.distributed import world_size_and_rank

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "scan_image_folder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")

_LAYOUT_HINT = "expected data_dir/{train,val}/<class_name>/<image files>"


def scan_image_folder(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """List the classes and image files of one split folder.

    Hidden entries (starting with ``.``) are skipped; files are matched by extension,
    case-insensitively (see :data:`IMAGE_EXTENSIONS`).

    Args:
        split_dir: e.g. ``data_dir/train``, holding one sub-folder per class.

    Returns:
        ``(classes, samples)``: sorted class-folder names, and ``(path, class_index)`` pairs
        sorted by class then file name.

    Raises:
        FileNotFoundError: If ``split_dir`` is missing, has no class folders, or a class folder
            holds no image file (the message names it).
    """
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder {split_dir} does not exist; {_LAYOUT_HINT}")
    classes = sorted(
        p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise FileNotFoundError(
            f"{split_dir} has no class sub-folders, so no images were found; {_LAYOUT_HINT}"
        )
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(
            p
            for p in (split_dir / name).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise FileNotFoundError(
                f"class folder {split_dir / name} holds no image files (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        samples.extend((path, index) for path in files)
    return classes, samples


class ImageFileDataset(Dataset[tuple[Any, ...]]):
    """Images read from disk with PIL, converted to RGB and passed through ``transform``.

    Args:
        samples: ``(path, class_index)`` pairs.
        transform: Callable from a PIL image to a float tensor ``(3, H, W)`` (or to a list of
            them, e.g. :class:`~lightning_kd.data.transforms.NormalizedViews`).
        return_indices: also return each sample's index (for per-sample state, e.g. CRD).
        seed: With a seed, items are requested by draw keys
            (:func:`~lightning_kd.data.datasets.draw_key`, from
            :class:`~lightning_kd.data.samplers.EpochSampler`) and ``transform`` runs under
            torch's CPU RNG seeded with ``sample_seed(seed, epoch, index)``; ``None`` takes
            plain indices and leaves the RNG alone (evaluation).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Any,
        *,
        return_indices: bool = False,
        seed: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.return_indices = return_indices
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int) -> tuple[Any, ...]:
        """One sample: transformed image ``(3, H, W)``, its class index (and its index)."""
        n = len(self.samples)
        index, epoch = key % n, (key // n) >> REPEAT_BITS
        path, target = self.samples[index]
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        if self.seed is None:
            x = self.transform(rgb)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                x = self.transform(rgb)
        if self.return_indices:
            return x, target, index
        return x, target


class ImageFolderDataModule(LightningDataModule):
    """ImageNet-style ``train/`` and ``val/`` class-folder trees.

    Train: ``RandomResizedCrop(image_size)``, ``RandomHorizontalFlip()``, ``ToTensor()``,
    ``Normalize(mean, std)``. Val/test/predict (all on ``val/``): ``Resize(resize_size)``,
    ``CenterCrop(image_size)``, ``ToTensor()``, ``Normalize(mean, std)``. Batches are
    ``[images, targets]``: float32 ``(B, 3, image_size, image_size)`` and int64 ``(B,)``.
    :meth:`feature_bank_dataloader` serves the ``train/`` images with the evaluation pipeline.

    Args:
        data_dir: Root holding ``train/`` and ``val/``.
        batch_size: Training batch size (per process under DDP).
        eval_batch_size: Batch size for evaluation; ``None`` uses ``batch_size``.
        num_workers: DataLoader worker processes (persistent when > 0).
        image_size: Side of the square model input.
        resize_size: Shorter side after resizing, before the evaluation center crop.
        mean: Per-channel mean for normalisation (``[0, 1]`` units).
        std: Per-channel standard deviation.
        pin_memory: Passed to the DataLoaders.
        return_indices: Training batches also carry each image's index in the training set,
            ``(images, targets, indices)`` (for per-sample state, e.g. CRD).
        views: Multi-view augmentation for label-free self-distillation (e.g.
            :meth:`~lightning_kd.data.transforms.MultiCropViews.imagenet`). It replaces the
            training pipeline: training batches become ``[views, targets]`` (plus indices),
            ``views`` a list of ``views.num_views`` float32 tensors ``(B, 3, s, s)``
            normalised with ``mean``/``std``. Evaluation batches are unchanged. Not stored in
            ``hparams`` (the CLI records it in its config).
        view_seed: Seed of the training order and augmentations; ``None`` uses the run's
            seed (``PL_GLOBAL_SEED``, set by ``seed_everything``).

    Raises:
        ValueError: If a size or count is out of range, or mean/std do not have 3 entries.
        TypeError: If ``views`` is not a ``MultiCropViews``.
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        image_size: int = 224,
        resize_size: int = 256,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        pin_memory: bool = False,
        return_indices: bool = False,
        views: MultiCropViews | None = None,
        view_seed: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if image_size < 1 or resize_size < image_size:
            raise ValueError(
                f"need 1 <= image_size <= resize_size, got image_size={image_size}, "
                f"resize_size={resize_size}"
            )
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 entries with std > 0, got {mean} and {std}")
        if views is not None and not isinstance(views, MultiCropViews):
            raise TypeError(f"views must be a MultiCropViews or None, got {type(views).__name__}")
        self.save_hyperparameters(ignore=["views"])
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.resize_size = resize_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.pin_memory = pin_memory
        self.return_indices = return_indices
        self.views = views
        self._view_seed = view_seed
        self.train_dataset: ImageFileDataset | None = None
        self.val_dataset: ImageFileDataset | None = None
        self._scan: tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]] | None = None

    def _scan_tree(self) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
        """Scan ``train`` and ``val`` once and check that their classes agree."""
        if self._scan is None:
            root = Path(self.data_dir).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(f"data_dir {root} does not exist; {_LAYOUT_HINT}")
            train_classes, train_samples = scan_image_folder(root / "train")
            val_classes, val_samples = scan_image_folder(root / "val")
            if train_classes != val_classes:
                only_train = sorted(set(train_classes) - set(val_classes))
                only_val = sorted(set(val_classes) - set(train_classes))
                raise ValueError(
                    f"train and val under {root} must have the same class folders; only in "
                    f"train: {only_train or 'none'}, only in val: {only_val or 'none'}"
                )
            self._scan = (train_classes, train_samples, val_samples)
        return self._scan

    @property
    def classes(self) -> list[str]:
        """Sorted class-folder names; index ``i`` is label ``i`` (scans the tree on first use)."""
        return self._scan_tree()[0]

    @property
    def num_classes(self) -> int:
        """Number of class folders."""
        return len(self.classes)

    @property
    def view_seed(self) -> int:
        """Seed of the training order and augmentations (``view_seed``, else the run's seed)."""
        if self._view_seed is not None:
            return self._view_seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) % 2**32

    def train_transform(self) -> transforms.Compose | NormalizedViews:
        """Per-sample training pipeline: PIL image -> float tensor ``(3, S, S)``, or with
        ``views`` -> list of normalised views."""
        if self.views is not None:
            return NormalizedViews(self.views, self.mean, self.std)
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(self.image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def eval_transform(self) -> transforms.Compose:
        """Per-sample evaluation pipeline: PIL image -> float tensor ``(3, S, S)``."""
        return transforms.Compose(
            [
                transforms.Resize(self.resize_size),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    @override
    def setup(self, stage: str) -> None:
        """Scan the tree and build the datasets (idempotent).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """
        _, train_samples, val_samples = self._scan_tree()
        if stage == "fit" and self.train_dataset is None:
            self.train_dataset = ImageFileDataset(
                train_samples,
                self.train_transform(),
                return_indices=self.return_indices,
                seed=self.view_seed,
            )
        if self.val_dataset is None:
            self.val_dataset = ImageFileDataset(val_samples, self.eval_transform())

    def _loader(self, dataset: ImageFileDataset | None, *, train: bool) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(
                "datasets are not built: call setup('fit') (or the matching stage) first"
            )
        if train and len(dataset) < self.batch_size:
            raise ValueError(
                f"the training set has {len(dataset)} images, fewer than batch_size="
                f"{self.batch_size}; the training loader drops the last incomplete batch and "
                "would yield none, so lower batch_size"
            )
        if train:
            trainer = self.trainer
            world_size, rank = (
                (trainer.world_size, trainer.global_rank)
                if trainer is not None
                else world_size_and_rank()
            )
            sampler = EpochSampler(
                dataset,
                seed=self.view_seed,
                num_replicas=world_size,
                rank=rank,
                batch_size=self.batch_size,
            )
            return ResumableDataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        """Training batches in the keyed order (:class:`EpochSampler`), sharded over the DDP
        processes; the last incomplete batch is dropped."""
        return self._loader(self.train_dataset, train=True)

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        """Batches from ``val/``."""
        return self._loader(self.val_dataset, train=False)

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        """Batches from ``val/`` (ImageNet-style trees ship no labelled test split)."""
        return self._loader(self.val_dataset, train=False)

    @override
    def predict_dataloader(self) -> DataLoader[Any]:
        """Batches from ``val/``."""
        return self._loader(self.val_dataset, train=False)

    def feature_bank_dataloader(self, *, num_replicas: int = 1, rank: int = 0) -> DataLoader[Any]:
        """The ``train/`` images with the evaluation pipeline, e.g. as a kNN feature bank.

        Never augmented, in order, batches of ``eval_batch_size``, the last one kept; batches
        are ``[images, targets]`` as the validation loader's (already normalised float32).

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
        if self.train_dataset is None:
            raise RuntimeError(
                "no training dataset: call setup('fit') before feature_bank_dataloader()"
            )
        bank = ImageFileDataset(self.train_dataset.samples, self.eval_transform())
        return DataLoader(
            bank_shard(bank, num_replicas=num_replicas, rank=rank),
            batch_size=self.eval_batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
