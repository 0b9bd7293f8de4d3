"""Semi-supervised CIFAR-10/100 DataModules: a small labeled set plus an unlabeled stream.

Built for Mean Teacher (Tarvainen & Valpola, 2017) and similar consistency methods. Each
training step yields ``labeled_batch_size`` labeled images and ``unlabeled_batch_size``
unlabeled ones, each in two independently augmented views (one for the student, one for the
teacher).

Splits (all from the training files, indices in file order):

1. ``val_split`` images are held out for validation (a seeded permutation); ``0`` validates on
   the test split instead.
2. From the rest (the *training pool*), ``num_labels`` images are labeled: ``num_labels /
   num_classes`` per class, chosen by a generator seeded with ``seed``, or read from
   ``split_file``.
3. The unlabeled stream is the whole pool (``include_labeled_in_unlabeled=True``) or the pool
   without the labeled images.

Training batch, after :meth:`SemiSupervisedDataModule.on_after_batch_transfer` (the contract a
semi-supervised LightningModule relies on)::

    {
        "labeled":   [x_student (B_l, 3, 32, 32) float32,
                      x_teacher (B_l, 3, 32, 32) float32,
                      y (B_l,) int64],
        "unlabeled": [u_student (B_u, 3, 32, 32) float32,
                      u_teacher (B_u, 3, 32, 32) float32,
                      u_y (B_u,) int64],
    }

Both views of an image are normalised and independently augmented by the ``transform``
(:class:`~lightning_kd.data.transforms.CropFlip` with two views by default: pad-4 random crop
and horizontal flip, drawn per sample and per view from keyed draws; the labeled and the
unlabeled stream use separate keys, and a labeled image drawn in several passes of one epoch
gets new views in each). ``u_y`` holds the true labels of the unlabeled
images for diagnostics only (e.g. logging accuracy on them); it must never enter a loss.
Validation/test/predict batches are ``[x (B, 3, 32, 32) float32, y (B,) int64]``, normalised
like :class:`~lightning_kd.data.cifar.CIFAR10DataModule`'s.

The datamodule is :class:`~lightning_kd.data.datamodule.ImageDataModule` (files, validation
split, evaluation loaders, normalisation, keyed views) with a two-stream training loader.

Epochs and distribution: the unlabeled stream defines the epoch (one pass over it, last
incomplete step dropped); the labeled stream is drawn from reshuffled passes over the labeled
set, as many as the epoch needs. Both streams are sharded over the DDP processes by
:class:`~lightning_kd.data.samplers.CyclingDistributedSampler`, which the DataModule installs
itself (Lightning leaves a ``DistributedSampler`` alone, so ``use_distributed_sampler`` has no
effect on training), and both resume mid-epoch exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch import Tensor
from typing_extensions import override

from lightning_kd.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from lightning_kd.data.cifar_files import CIFAR10_LAYOUT, CIFAR100_LAYOUT, CIFARFiles
from lightning_kd.data.datamodule import ImageDataModule
from lightning_kd.data.datasets import TensorImageDataset
from lightning_kd.data.keyed_random import SampleKeys, sample_seed
from lightning_kd.data.samplers import CyclingDistributedSampler
from lightning_kd.data.splits import (
    check_labeled_split,
    holdout_split,
    label_budget,
    read_split_file,
    write_split_file,
)
from lightning_kd.data.transforms import BatchTransform, CropFlip

__all__ = ["CIFAR10SSLDataModule", "CIFAR100SSLDataModule", "SemiSupervisedDataModule"]

#: Stream salts: they separate the labeled and unlabeled streams' orders and views.
STREAM_SALTS = {"labeled": 1, "unlabeled": 2}


class SemiSupervisedDataModule(ImageDataModule):
    """A small labeled set plus an unlabeled stream over one training file; subclass it per
    dataset (as :class:`CIFAR10SSLDataModule`).

    See the module docstring for the splits and the batch layout. Default batch sizes follow
    the Mean Teacher reference CIFAR-10 setup: 128 images per process per step, 31 of them
    labeled. All batch sizes are per process under DDP.

    Args:
        data_dir: Where the dataset files are.
        num_labels: Label budget: the number of labeled training images, split evenly over
            the classes (must be a multiple of the number of classes).
        split_file: JSON file of the labeled training indices. If it exists it is loaded
            (``seed`` then no longer decides the labels) and must match ``num_labels``, the
            dataset and its size; if it does not, the seeded split is written to it (parent
            folders created). ``None`` uses the seeded split without saving it.
        seed: Seed of the validation split and of the label choice.
        labeled_batch_size: Labeled images per step, ``B_l``.
        unlabeled_batch_size: Unlabeled images per step, ``B_u``.
        eval_batch_size: Batch size of the val/test/predict loaders.
        num_workers: Worker processes per DataLoader (persistent when > 0); training uses two
            loaders, hence twice as many workers.
        download: If the files are missing, download them in :meth:`prepare_data`.
        channels_last: Return images in ``torch.channels_last`` memory format.
        val_split: Training images held out for validation before the labels are chosen (a
            seeded random subset, never augmented, never labeled or unlabeled training data);
            5,000 by default (the validation size of Oliver et al., 2018). ``0`` validates on
            the test split instead, with a warning, and metrics are named ``val_on_test/...``.
        include_labeled_in_unlabeled: If True, the unlabeled stream is the whole training pool
            with its labels ignored, so labeled images also take part in the unsupervised
            (consistency) loss from this stream. If False it is the pool without the labeled
            images, as in the Mean Teacher reference sampler, where a module would apply the
            consistency loss to the labeled batch as well.
        transform: The views of every training image (student view first); ``None`` is
            :class:`~lightning_kd.data.transforms.CropFlip` with ``num_views=2``.
        view_seed: Seed of the training order and views; ``None`` derives it from ``seed`` and
            the run's seed (``PL_GLOBAL_SEED``).

    Raises:
        ValueError: If an argument is out of range, e.g. ``num_labels`` is not a positive
            multiple of the number of classes or a batch size is below 1.
        TypeError: If ``val_split`` is not an int.
    """

    def __init__(
        self,
        data_dir: str = "data",
        num_labels: int = 4000,
        split_file: str | None = None,
        seed: int = 0,
        labeled_batch_size: int = 31,
        unlabeled_batch_size: int = 97,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        download: bool = False,
        channels_last: bool = False,
        val_split: int = 5000,
        include_labeled_in_unlabeled: bool = True,
        transform: BatchTransform | None = None,
        view_seed: int | None = None,
    ) -> None:
        if isinstance(val_split, bool) or not isinstance(val_split, int):
            raise TypeError(f"val_split must be an int count of images, got {val_split!r}")
        for name, value in (
            ("labeled_batch_size", labeled_batch_size),
            ("unlabeled_batch_size", unlabeled_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        super().__init__(
            data_dir=data_dir,
            batch_size=labeled_batch_size + unlabeled_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_split=val_split,
            seed=seed,
            download=download,
            channels_last=channels_last,
            transform=transform if transform is not None else CropFlip(num_views=2),
            view_seed=view_seed,
        )
        if self.transform.num_views != 2:
            raise ValueError(
                "a semi-supervised batch pairs a student and a teacher view of every image, so "
                f"transform must make 2 views; got {self.transform!r} with "
                f"{self.transform.num_views}. Use e.g. CropFlip(num_views=2) or StrongAugment()"
            )
        num_classes = self.num_classes
        if num_labels < num_classes or num_labels % num_classes != 0:
            raise ValueError(
                f"num_labels must be a positive multiple of the {num_classes} classes of "
                f"{self.dataset_name} (the split gives every class num_labels / {num_classes} "
                f"labels), got {num_labels}"
            )
        self.num_labels = num_labels
        self.split_file = split_file
        self.labeled_batch_size = labeled_batch_size
        self.unlabeled_batch_size = unlabeled_batch_size
        self.include_labeled_in_unlabeled = include_labeled_in_unlabeled
        #: Indices into the training file (file order), set by ``setup``: int64, sorted.
        self.val_indices: Tensor | None = None
        self.labeled_indices: Tensor | None = None
        self.unlabeled_indices: Tensor | None = None
        self.labeled_dataset: TensorImageDataset | None = None
        self.unlabeled_dataset: TensorImageDataset | None = None

    # ------------------------------------------------------------------ splits
    @override
    def _needs_training_split(self, stage: str) -> bool:
        return (stage == "fit" and self.labeled_dataset is None) or (
            not self.validates_on_test and self.val_dataset is None
        )

    @override
    def setup_training(self, images: Tensor, targets: Tensor, *, stage: str) -> None:
        """Hold out the validation split, then choose the labels and the unlabeled set."""
        n = targets.numel()
        if self.val_split >= n:
            raise ValueError(
                f"val_split={self.val_split} must be smaller than the {n} training images; at "
                f"least num_labels={self.num_labels} must stay for training"
            )
        generator = torch.Generator().manual_seed(self.seed)
        pool, val_idx = holdout_split(n, self.val_split, generator)
        self.val_indices = val_idx
        if val_idx.numel() > 0 and self.val_dataset is None:
            self.val_dataset = TensorImageDataset(
                images[val_idx], targets[val_idx], file_indices=val_idx, keyed=False
            )
        if stage != "fit":
            return
        path = Path(self.split_file).expanduser() if self.split_file is not None else None
        if path is not None and path.exists():
            labeled, _ = read_split_file(path, dataset=self.dataset_name, num_train_images=n)
            check_labeled_split(
                labeled,
                targets,
                val_indices=val_idx,
                where=f"split_file {str(path)!r}",
                num_labels=self.num_labels,
                num_classes=self.num_classes,
                hint=f" (val_split={self.val_split}, seed={self.seed})",
            )
        else:
            labeled = label_budget(targets, pool, self.num_labels, self.num_classes, generator)
            if path is not None:
                write_split_file(
                    path,
                    labeled,
                    dataset=self.dataset_name,
                    num_train_images=n,
                    num_labels=self.num_labels,
                    seed=self.seed,
                    val_split=self.val_split,
                )
        unlabeled = pool if self.include_labeled_in_unlabeled else pool[~torch.isin(pool, labeled)]
        self.labeled_indices = labeled
        self.unlabeled_indices = unlabeled
        self.labeled_dataset = TensorImageDataset(
            images[labeled], targets[labeled], file_indices=labeled, key_stride=n
        )
        self.unlabeled_dataset = TensorImageDataset(
            images[unlabeled], targets[unlabeled], file_indices=unlabeled, key_stride=n
        )

    # ------------------------------------------------------------------ loaders
    @override
    def train_dataloader(self) -> CombinedLoader:
        """Paired labeled/unlabeled keyed batches, sharded over the DDP processes.

        Steps per epoch: ``len(unlabeled) // (world_size * unlabeled_batch_size)``. Both
        inner loaders have this length, so ``max_size_cycle`` never needs to restart one; the
        labeled loader's sampler reshuffles the labeled set at each pass instead.

        Returns:
            ``CombinedLoader`` of two resumable loaders, ``{"labeled": ..., "unlabeled": ...}``.

        Raises:
            RuntimeError: If ``setup("fit")`` has not run.
            ValueError: If a stream is smaller than one global step.
        """
        if self.labeled_dataset is None or self.unlabeled_dataset is None:
            raise RuntimeError("no training data: call setup('fit') before train_dataloader()")
        world_size, rank = self.world()
        streams = {
            "labeled": (self.labeled_dataset, self.labeled_batch_size),
            "unlabeled": (self.unlabeled_dataset, self.unlabeled_batch_size),
        }
        for name, (dataset, batch_size) in streams.items():
            if len(dataset) < world_size * batch_size:
                raise ValueError(
                    f"the {name} set has {len(dataset)} images, fewer than {name}_batch_size="
                    f"{batch_size} x {world_size} processes; lower {name}_batch_size"
                )
        num_batches = len(self.unlabeled_dataset) // (world_size * self.unlabeled_batch_size)
        loaders = {
            name: self.keyed_loader(
                dataset,
                CyclingDistributedSampler(
                    dataset,
                    batch_size=batch_size,
                    num_batches=num_batches,
                    num_replicas=world_size,
                    rank=rank,
                    seed=self.view_seed,
                    salt=STREAM_SALTS[name],
                ),
                batch_size,
                drop_last=False,
            )
            for name, (dataset, batch_size) in streams.items()
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    # ------------------------------------------------------------------ views
    def stream_views(self, batch: list[Any], stream: str) -> list[Tensor]:
        """``[*views, targets]`` of one stream's keyed batch (views normalised, keyed by the
        stream's own seed)."""
        images, targets, samples, _, epoch = batch
        keys = SampleKeys(sample_seed(self.view_seed, 0, STREAM_SALTS[stream]), epoch, samples)
        views = [self.normalize_batch(v) for v in self.transform(images, keys)]
        return [*views, targets.long()]

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment and normalise on the accelerator; the batch structure decides the path.

        Args:
            batch: A training batch ``{"labeled": ..., "unlabeled": ...}`` of keyed batches,
                or an evaluation batch, ``uint8`` images already on the device.
            dataloader_idx: Index of the DataLoader (unused).

        Returns:
            Training: ``{"labeled": [x_s, x_t, y], "unlabeled": [u_s, u_t, u_y]}`` (see the
            module docstring). Evaluation: ``[x, y]``, float32 ``(B, 3, 32, 32)`` normalised
            and int64 ``(B,)``.

        Raises:
            ValueError: If a dict batch does not have exactly the keys ``labeled`` and
                ``unlabeled``.
        """
        if isinstance(batch, dict):
            if set(batch) != set(STREAM_SALTS):
                raise ValueError(
                    "training batch should have keys 'labeled' and 'unlabeled', got "
                    f"{sorted(batch)}"
                )
            return {name: self.stream_views(batch[name], name) for name in STREAM_SALTS}
        return [self.normalize_batch(batch[0]), batch[1].long()]


class CIFAR10SSLDataModule(CIFARFiles, SemiSupervisedDataModule):
    """Semi-supervised CIFAR-10 (default 4,000 labels, 400 per class).

    See :class:`SemiSupervisedDataModule` for the arguments and the module docstring for the
    batch layout.
    """

    layout = CIFAR10_LAYOUT
    mean = CIFAR10_MEAN
    std = CIFAR10_STD


class CIFAR100SSLDataModule(CIFARFiles, SemiSupervisedDataModule):
    """Semi-supervised CIFAR-100 with fine labels (``num_labels`` a multiple of 100).

    See :class:`SemiSupervisedDataModule` for the arguments and the module docstring for the
    batch layout.
    """

    layout = CIFAR100_LAYOUT
    mean = CIFAR100_MEAN
    std = CIFAR100_STD
