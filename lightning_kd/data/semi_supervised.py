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

Training batch, after :meth:`CIFARSSLDataModuleBase.on_after_batch_transfer` (the contract a
semi-supervised LightningModule relies on)::

    {
        "labeled":   [x_student (B_l, 3, 32, 32) float32,
                      x_teacher (B_l, 3, 32, 32) float32,
                      y (B_l,) int64],
        "unlabeled": [u_student (B_u, 3, 32, 32) float32,
                      u_teacher (B_u, 3, 32, 32) float32,
                      u_y (B_u,) int64],
    }

Both views of an image are normalised and independently augmented (pad-4 random crop and
horizontal flip, drawn per sample and per view). ``u_y`` holds the true labels of the unlabeled
images for diagnostics only (e.g. logging accuracy on them); it must never enter a loss.
Validation/test/predict batches are ``[x (B, 3, 32, 32) float32, y (B,) int64]``, normalised
like :class:`~lightning_kd.data.cifar.CIFAR10DataModule`'s.

Epochs and distribution: the unlabeled stream defines the epoch (one pass over it, last
incomplete step dropped); the labeled stream is drawn from reshuffled passes over the labeled
set, as many as the epoch needs. Both streams are sharded over the DDP processes by
:class:`CyclingDistributedSampler`, which the DataModule installs itself (Lightning leaves a
``DistributedSampler`` alone, so ``use_distributed_sampler`` has no effect on training).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from lightning_kd.data.batch_augment import random_crop_flip
from lightning_kd.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFARFiles,
    UInt8ImageDataset,
    collate_uint8_batch,
)
from lightning_kd.data.cifar_files import (
    CIFAR10_LAYOUT,
    CIFAR100_LAYOUT,
    CifarLayout,
    read_cifar_split,
    resolve_cifar_dir,
)
from lightning_kd.data.label_split import read_split_file, write_split_file
from lightning_kd.distributed import world_size_and_rank

__all__ = [
    "CIFAR10SSLDataModule",
    "CIFAR100SSLDataModule",
    "CIFARSSLDataModuleBase",
    "CyclingDistributedSampler",
]

_LABELED_SALT = 1
_UNLABELED_SALT = 2


class CyclingDistributedSampler(DistributedSampler[int]):
    """Indices of one process for one epoch: reshuffled passes, cut into equal global steps.

    For epoch ``e`` the sampler builds one global stream: pass 0, pass 1, ... over
    ``range(len(dataset))``, each a fresh permutation (seeded by ``seed``, ``salt``, ``e`` and
    the pass number) truncated to a multiple of ``num_replicas * batch_size``. Global step ``t``
    takes the next ``num_replicas * batch_size`` entries of the stream; process ``rank`` gets
    the ``rank``-th block of ``batch_size`` of them. So:

    * within one global step, all processes together draw distinct indices;
    * within one pass, no index is drawn twice by any process;
    * a stream needing one pass or less (``num_batches * num_replicas * batch_size <=
      len(dataset)``) gives every process disjoint indices over the whole epoch;
    * the order depends only on the seeds and the epoch (:meth:`set_epoch`), so every process
      computes the same global stream without communicating.

    It subclasses ``DistributedSampler`` so that Lightning does not wrap it in another one, and
    so that Lightning's fit loop calls :meth:`set_epoch` at every epoch.

    Args:
        dataset: The dataset the indices refer to (only its length is used).
        batch_size: Indices per process per step.
        num_batches: Steps per epoch; the sampler yields ``num_batches * batch_size`` indices.
        num_replicas: Number of processes (DDP world size).
        rank: This process's rank in ``[0, num_replicas)``.
        seed: Base seed of the permutations.
        salt: Separates independent streams that share ``seed`` (e.g. labeled and unlabeled).

    Raises:
        ValueError: If a size is out of range, or the dataset is smaller than one global step
            (``num_replicas * batch_size``).
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        num_batches: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        salt: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas="
                f"{num_replicas}, rank={rank}"
            )
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.num_indices = len(dataset)  # type: ignore[arg-type]
        step = num_replicas * batch_size
        if self.num_indices < step:
            raise ValueError(
                f"the dataset has {self.num_indices} images, fewer than one global step of "
                f"batch_size={batch_size} x num_replicas={num_replicas} = {step}"
            )
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.salt = salt
        self.num_samples = num_batches * batch_size
        self.total_size = self.num_samples * num_replicas

    def _permutation(self, pass_index: int) -> Tensor:
        """Permutation of ``range(num_indices)`` for pass ``pass_index`` of the current epoch."""
        entropy = [self.seed % 2**64, self.salt % 2**64, self.epoch, pass_index]
        state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randperm(self.num_indices, generator=generator)

    def global_stream(self) -> Tensor:
        """The indices of every process for the current epoch.

        Returns:
            int64 tensor ``(num_batches, num_replicas, batch_size)``: entry ``[t, r]`` is the
            batch that process ``r`` draws at step ``t``.
        """
        step = self.num_replicas * self.batch_size
        per_pass = (self.num_indices // step) * step
        needed = self.num_batches * step
        passes = [self._permutation(p)[:per_pass] for p in range(-(-needed // per_pass))]
        stream = torch.cat(passes) if passes else torch.zeros(0, dtype=torch.long)
        return stream[:needed].view(self.num_batches, self.num_replicas, self.batch_size)

    @override
    def __iter__(self) -> Iterator[int]:
        return iter(self.global_stream()[:, self.rank].reshape(-1).tolist())

    @override
    def __len__(self) -> int:
        return self.num_samples


def _choose_labeled(
    targets: Tensor, pool: Tensor, per_class: int, num_classes: int, generator: torch.Generator
) -> Tensor:
    """Pick ``per_class`` indices of every class from ``pool``.

    Args:
        targets: int64 labels of the whole training split ``(N,)``.
        pool: int64 indices into ``targets`` that may be labeled ``(P,)``.
        per_class: Labeled images per class.
        num_classes: Number of classes ``C``.
        generator: Seeded CPU generator.

    Returns:
        Sorted int64 indices into ``targets``, shape ``(C * per_class,)``.

    Raises:
        ValueError: If a class has fewer than ``per_class`` images in the pool.
    """
    pool_targets = targets[pool]
    chosen = []
    for cls in range(num_classes):
        members = pool[pool_targets == cls]
        if members.numel() < per_class:
            raise ValueError(
                f"num_labels={per_class * num_classes} needs {per_class} labeled images per "
                f"class, but class {cls} has only {members.numel()} in the training pool of "
                f"{pool.numel()} images (after the validation split)"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


class CIFARSSLDataModuleBase(CIFARFiles, LightningDataModule):
    """Shared implementation of the semi-supervised CIFAR DataModules; use a subclass.

    See the module docstring for the splits and the batch layout. Subclasses set
    :attr:`layout`, :attr:`mean` and :attr:`std`.

    Default batch sizes follow the Mean Teacher reference CIFAR-10 setup: 128 images per
    process per step, 31 of them labeled. All batch sizes are per process under DDP.

    Args:
        data_dir: Folder that contains the batches folder (``cifar-10-batches-py`` or
            ``cifar-100-python``), or that batches folder itself.
        num_labels: Label budget: the number of labeled training images, split evenly over
            the classes (must be a multiple of the number of classes).
        split_file: JSON file of the labeled training indices. If it exists it is loaded
            (``seed`` then no longer decides the labels) and must match ``num_labels``, the
            dataset and its size; if it does not, the seeded split is written to it (parent
            folders created). ``None`` uses the seeded split without saving it.
        seed: Seed of the validation split and of the label choice. Together with
            ``PL_GLOBAL_SEED`` (set by ``seed_everything``) it also seeds the training order.
        labeled_batch_size: Labeled images per step, ``B_l``.
        unlabeled_batch_size: Unlabeled images per step, ``B_u``.
        eval_batch_size: Batch size of the val/test/predict loaders.
        num_workers: Worker processes per DataLoader (persistent when > 0); training uses two
            loaders, hence twice as many workers.
        download: If the files are missing, download them with torchvision in
            :meth:`prepare_data`.
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

    Raises:
        ValueError: If an argument is out of range, e.g. ``num_labels`` is not a positive
            multiple of the number of classes or a batch size is below 1.
        TypeError: If ``val_split`` is not an int.
    """

    layout: ClassVar[CifarLayout]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]

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
    ) -> None:
        super().__init__()
        if type(self) is CIFARSSLDataModuleBase:
            raise TypeError(
                "CIFARSSLDataModuleBase is abstract; use CIFAR10SSLDataModule or "
                "CIFAR100SSLDataModule"
            )
        num_classes = self.layout.num_classes
        if num_labels < num_classes or num_labels % num_classes != 0:
            raise ValueError(
                f"num_labels must be a positive multiple of the {num_classes} classes of "
                f"{self.layout.name} (the split gives every class num_labels / {num_classes} "
                f"labels), got {num_labels}"
            )
        for name, value in (
            ("labeled_batch_size", labeled_batch_size),
            ("unlabeled_batch_size", unlabeled_batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if isinstance(val_split, bool) or not isinstance(val_split, int):
            raise TypeError(f"val_split must be an int count of images, got {val_split!r}")
        if val_split < 0:
            raise ValueError(f"val_split must be >= 0, got {val_split}")
        self.save_hyperparameters()

        self.data_dir = data_dir
        self.num_labels = num_labels
        self.split_file = split_file
        self.seed = seed
        self.labeled_batch_size = labeled_batch_size
        self.unlabeled_batch_size = unlabeled_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.download = download
        self.channels_last = channels_last
        self.val_split = val_split
        self.include_labeled_in_unlabeled = include_labeled_in_unlabeled

        #: Indices into the training files (file order), set by ``setup``: int64, sorted.
        self.val_indices: Tensor | None = None
        self.labeled_indices: Tensor | None = None
        self.unlabeled_indices: Tensor | None = None
        self.labeled_dataset: UInt8ImageDataset | None = None
        self.unlabeled_dataset: UInt8ImageDataset | None = None
        self.val_dataset: UInt8ImageDataset | None = None
        self.test_dataset: UInt8ImageDataset | None = None
        self._class_names: list[str] | None = None
        self._norm_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ properties
    @override
    def setup(self, stage: str) -> None:
        """Load the splits that ``stage`` needs (idempotent).

        ``"fit"`` builds the labeled and unlabeled sets (and reads or writes ``split_file``);
        ``"validate"`` needs only the validation split; ``"test"``/``"predict"`` the test split.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.

        Raises:
            ValueError: If the data cannot provide the requested split (too few images of a
                class for ``num_labels``, ``val_split`` too large, a mismatching split file).
        """
        self.warn_if_validating_on_test(stage)
        folder = resolve_cifar_dir(self.data_dir, self.layout)
        needs_train = (stage == "fit" and self.labeled_dataset is None) or (
            stage in ("fit", "validate") and self.val_split > 0 and self.val_dataset is None
        )
        if needs_train:
            images, targets = read_cifar_split(folder, self.layout, train=True)
            self._setup_train(images, targets, with_labels=stage == "fit")
        needs_test = stage in ("test", "predict") or (
            stage in ("fit", "validate") and self.val_split == 0
        )
        if needs_test and self.test_dataset is None:
            images, targets = read_cifar_split(folder, self.layout, train=False)
            self.test_dataset = UInt8ImageDataset(images.contiguous(), targets)
        if self.val_split == 0 and self.test_dataset is not None:
            self.val_dataset = self.test_dataset

    def _setup_train(self, images: Tensor, targets: Tensor, *, with_labels: bool) -> None:
        """Hold out the validation split, then choose the labels and the unlabeled set."""
        n = targets.numel()
        if self.val_split >= n:
            raise ValueError(
                f"val_split={self.val_split} must be smaller than the {n} training images; at "
                f"least num_labels={self.num_labels} must stay for training"
            )
        generator = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n, generator=generator)
        val_idx = perm[: self.val_split].sort().values
        pool = perm[self.val_split :].sort().values
        self.val_indices = val_idx
        if self.val_split > 0 and self.val_dataset is None:
            self.val_dataset = UInt8ImageDataset(images[val_idx], targets[val_idx])
        if not with_labels:
            return

        path = Path(self.split_file).expanduser() if self.split_file is not None else None
        if path is not None and path.exists():
            labeled = self._read_split_file(path, targets, val_idx)
        else:
            per_class = self.num_labels // self.num_classes
            labeled = _choose_labeled(targets, pool, per_class, self.num_classes, generator)
            if path is not None:
                self._write_split_file(path, labeled, n)
        keep = torch.ones_like(pool, dtype=torch.bool)
        if not self.include_labeled_in_unlabeled:
            keep = ~torch.isin(pool, labeled)
        unlabeled = pool[keep]
        self.labeled_indices = labeled
        self.unlabeled_indices = unlabeled
        self.labeled_dataset = UInt8ImageDataset(images[labeled], targets[labeled])
        self.unlabeled_dataset = UInt8ImageDataset(images[unlabeled], targets[unlabeled])

    def _write_split_file(self, path: Path, labeled: Tensor, num_train_images: int) -> None:
        write_split_file(
            path,
            labeled,
            dataset=self.layout.name,
            num_train_images=num_train_images,
            num_labels=self.num_labels,
            seed=self.seed,
            val_split=self.val_split,
        )

    def _read_split_file(self, path: Path, targets: Tensor, val_idx: Tensor) -> Tensor:
        """Load ``split_file`` and check it against this DataModule and the data on disk.

        Returns:
            Sorted int64 labeled indices into the training split ``(num_labels,)``.

        Raises:
            ValueError: If the file is unreadable or differs (dataset, size, number of labels,
                bad or repeated indices, class balance, overlap with the validation split).
        """
        where = f"split_file {str(path)!r}"
        labeled, _ = read_split_file(
            path, dataset=self.layout.name, num_train_images=targets.numel()
        )
        if labeled.numel() != self.num_labels:
            raise ValueError(
                f"{where} lists {labeled.numel()} labeled indices, expected "
                f"num_labels={self.num_labels}. Pass the matching num_labels, or another "
                "split_file path to create a new split."
            )
        counts = torch.bincount(targets[labeled], minlength=self.num_classes)
        per_class = self.num_labels // self.num_classes
        if bool((counts != per_class).any()):
            bad = torch.nonzero(counts != per_class).flatten()[:5].tolist()
            detail = ", ".join(f"class {c}: {int(counts[c])}" for c in bad)
            raise ValueError(
                f"{where} is not class-balanced: expected {per_class} labels per class, got "
                f"{detail}"
            )
        overlap = int(torch.isin(labeled, val_idx).sum())
        if overlap:
            raise ValueError(
                f"{where}: {overlap} labeled indices fall in the validation split "
                f"(val_split={self.val_split}, seed={self.seed})"
            )
        return labeled

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` from the trainer, else torch.distributed, else (1, 0)."""
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        return world_size_and_rank()

    def _stream_loader(
        self, dataset: UInt8ImageDataset, sampler: CyclingDistributedSampler
    ) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=sampler.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_uint8_batch,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> CombinedLoader:
        """Paired labeled/unlabeled ``uint8`` batches, sharded over the DDP processes.

        Steps per epoch: ``len(unlabeled) // (world_size * unlabeled_batch_size)``. Both
        inner loaders have this length, so ``max_size_cycle`` never needs to restart one; the
        labeled loader's :class:`CyclingDistributedSampler` reshuffles the labeled set at each
        pass instead.

        Returns:
            ``CombinedLoader`` yielding ``{"labeled": [x, y], "unlabeled": [u, u_y]}``:
            ``uint8`` ``(B_l, 3, 32, 32)``, int64 ``(B_l,)``, ``uint8`` ``(B_u, 3, 32, 32)``,
            int64 ``(B_u,)``.

        Raises:
            RuntimeError: If ``setup("fit")`` has not run.
            ValueError: If a stream is smaller than one global step.
        """
        if self.labeled_dataset is None or self.unlabeled_dataset is None:
            raise RuntimeError("no training data: call setup('fit') before train_dataloader()")
        world_size, rank = self._world()
        for name, dataset, batch_size in (
            ("labeled", self.labeled_dataset, self.labeled_batch_size),
            ("unlabeled", self.unlabeled_dataset, self.unlabeled_batch_size),
        ):
            if len(dataset) < world_size * batch_size:
                raise ValueError(
                    f"the {name} set has {len(dataset)} images, fewer than {name}_batch_size="
                    f"{batch_size} x {world_size} processes; lower {name}_batch_size"
                )
        num_batches = len(self.unlabeled_dataset) // (world_size * self.unlabeled_batch_size)
        seed = [self.seed, int(os.environ.get("PL_GLOBAL_SEED", 0))]
        base_seed = int(np.random.SeedSequence([s % 2**64 for s in seed]).generate_state(1)[0])
        loaders = {
            name: self._stream_loader(
                dataset,
                CyclingDistributedSampler(
                    dataset,
                    batch_size=batch_size,
                    num_batches=num_batches,
                    num_replicas=world_size,
                    rank=rank,
                    seed=base_seed,
                    salt=salt,
                ),
            )
            for name, dataset, batch_size, salt in (
                ("labeled", self.labeled_dataset, self.labeled_batch_size, _LABELED_SALT),
                ("unlabeled", self.unlabeled_dataset, self.unlabeled_batch_size, _UNLABELED_SALT),
            )
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loader(self, dataset: UInt8ImageDataset | None, split: str) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(
                f"no {split} dataset: call setup() with the matching stage before "
                f"{split}_dataloader()"
            )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_uint8_batch,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        """Validation batches: the held-out split, or the test split when ``val_split=0``."""
        return self._eval_loader(self.val_dataset, "val")

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        """Test-split batches."""
        return self._eval_loader(self.test_dataset, "test")

    @override
    def predict_dataloader(self) -> DataLoader[Any]:
        """Test-split batches, for ``trainer.predict``."""
        return self._eval_loader(self.test_dataset, "test")

    # ------------------------------------------------------------------ batch transforms
    def two_views(self, batch: list[Tensor]) -> list[Tensor]:
        """Two independently augmented, normalised views of every image of a batch.

        Each view gets its own :func:`random_crop_flip` (pad 4; offsets and flips drawn per
        sample from torch's global RNG on the batch's device, student view first).

        Args:
            batch: ``[images, targets]``: ``uint8`` ``(B, 3, 32, 32)`` and int64 ``(B,)``.

        Returns:
            ``[x_student, x_teacher, targets]``: float32 ``(B, 3, 32, 32)`` twice, int64
            ``(B,)``.
        """
        images, targets = batch[0], batch[1]
        student = self.normalize_batch(random_crop_flip(images, padding=4))
        teacher = self.normalize_batch(random_crop_flip(images, padding=4))
        return [student, teacher, targets.long()]

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment and normalise on the accelerator; the batch structure decides the path.

        Args:
            batch: A training batch ``{"labeled": [x, y], "unlabeled": [u, u_y]}`` or an
                evaluation batch ``[x, y]``, ``uint8`` images already on the device.
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
            if set(batch) != {"labeled", "unlabeled"}:
                raise ValueError(
                    "training batch should have keys 'labeled' and 'unlabeled', got "
                    f"{sorted(batch)}"
                )
            return {name: self.two_views(batch[name]) for name in ("labeled", "unlabeled")}
        return [self.normalize_batch(batch[0]), batch[1].long(), *batch[2:]]


class CIFAR10SSLDataModule(CIFARSSLDataModuleBase):
    """Semi-supervised CIFAR-10 (default 4,000 labels, 400 per class).

    See :class:`CIFARSSLDataModuleBase` for the arguments and the module docstring for the
    batch layout.
    """

    layout = CIFAR10_LAYOUT
    mean = CIFAR10_MEAN
    std = CIFAR10_STD


class CIFAR100SSLDataModule(CIFARSSLDataModuleBase):
    """Semi-supervised CIFAR-100 with fine labels (``num_labels`` a multiple of 100).

    See :class:`CIFARSSLDataModuleBase` for the arguments and the module docstring for the
    batch layout.
    """

    layout = CIFAR100_LAYOUT
    mean = CIFAR100_MEAN
    std = CIFAR100_STD
