"""The datamodule family: load, split, batch, apply a batch transform, normalise.

:class:`ImageDataModule` holds one image dataset in memory as ``uint8`` tensors (subclasses
say how to read the files: :class:`~lightning_kd.data.cifar.CIFAR10DataModule`, ...). It

1. **loads** the training and test files (``setup``; the test file only for ``test`` /
   ``predict``, or when ``val_split=0``);
2. **splits** them with the pure functions of :mod:`lightning_kd.data.splits` (validation
   hold-out, class-balanced subset, label files);
3. **batches** them: training order from :class:`~lightning_kd.data.samplers.EpochSampler`, a
   pure function of ``(view_seed, epoch)`` and the rank, in a
   :class:`~lightning_kd.data.samplers.ResumableDataLoader` that resumes mid-epoch exactly;
4. **transforms** each training batch on the device with its ``transform``
   (:mod:`lightning_kd.data.transforms`; crop + flip by default), every random draw keyed by
   ``(view_seed, epoch, sample index)``;
5. **normalises** every view (and every evaluation batch) with the dataset's mean and std.

Batches the model receives (after :meth:`ImageDataModule.on_after_batch_transfer`):

* training, one-view transform: ``[images (B, 3, H, W) float32, targets (B,) int64]``;
* training, multi-view transform: ``[views, targets]``, ``views`` a list of float32
  ``(B, 3, s, s)`` tensors in the transform's order;
* training, mixing transform (:class:`~lightning_kd.data.mixing.MixUp`,
  :class:`~lightning_kd.data.mixing.CutMix`): the (mixed) views as above, and ``targets``
  float32 ``(B, C)`` soft targets ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)`` (see
  :meth:`ImageDataModule.training_views`);
* with ``return_indices``, each training batch also carries int64 ``(B,)`` positions in the
  training set (for per-sample state such as CRD's memory bank);
* with ``return_keys``, each training batch ends with its :class:`ViewKeys` (the epoch its
  views are drawn for, and each image's sample index and position), what a teacher cache
  (:mod:`lightning_kd.caching`) looks its outputs up by;
* validation / test / predict: ``[images float32, targets int64]``, never augmented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_kd.data.datasets import TensorImageDataset, collate_batch
from lightning_kd.data.feature_bank import bank_shard, check_shard
from lightning_kd.data.keyed_random import SampleKeys, sample_seed
from lightning_kd.data.mixing import MixedViews, MixingTransform, mixed_targets
from lightning_kd.data.ops import normalize_constants
from lightning_kd.data.samplers import EpochSampler, ResumableDataLoader
from lightning_kd.data.splits import (
    check_labeled_split,
    class_balanced_subset,
    holdout_split,
    read_split_file,
    validation_count,
)
from lightning_kd.data.transforms import BatchTransform, CropFlip
from lightning_kd.distributed import world_size_and_rank

__all__ = ["ImageDataModule", "ViewKeys"]


@dataclass(frozen=True)
class ViewKeys:
    """What the views of one training batch are a function of (with ``return_keys``).

    Attributes:
        epoch: The epoch the views were drawn for (``epoch % view_epochs`` with
            ``view_epochs``).
        samples: int64 ``(B,)`` sample indices (index in the dataset file) the draws are keyed by.
        positions: int64 ``(B,)`` positions in the training set ``[0, len(train_dataset))``, on
            the batch's device.
        host_positions: the same positions on the CPU, as the loader made them (so that a
            lookup on the host needs no copy back from an accelerator, which would wait for the
            work queued on it); ``None`` when not known.
    """

    epoch: int
    samples: Tensor
    positions: Tensor
    host_positions: Tensor | None = None


class _OnHost:
    """A tensor that stays on the CPU when Lightning moves a batch to the device: neither a
    tensor, a collection nor a dataclass, and without ``.to``, it is a leaf that
    ``apply_to_collection`` leaves alone."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class ImageDataModule(LightningDataModule):
    """In-memory ``uint8`` image data with keyed batch transforms; subclass it per dataset.

    A subclass sets :attr:`mean`, :attr:`std` (class attributes) and implements
    :meth:`read_split`, :attr:`num_classes` and :attr:`dataset_name` (the CIFAR ones get them
    from :class:`~lightning_kd.data.cifar_files.CIFARFiles`).

    Args:
        data_dir: Where the dataset files are.
        batch_size: Training batch size (per process under DDP).
        eval_batch_size: Batch size of the val/test/predict loaders; ``None`` uses
            ``batch_size``.
        num_workers: DataLoader worker processes (persistent when > 0).
        val_split: Training images held out for validation, as a count (int) or a fraction in
            ``[0, 1)`` (float), chosen by a generator seeded with ``seed``; 10% by default. The
            test split is read only by ``test`` (and ``predict``). ``0`` validates on the test
            split instead, with a warning, and the metrics are then named ``val_on_test/...``.
        seed: Seed of the splits (validation, ``train_subset``). Fixed across the seeds of an
            experiment so that all of them train and validate on the same images.
        download: If the files are missing, download them in :meth:`prepare_data` (where the
            subclass supports it).
        train_subset: Train on only this many images, class-balanced, chosen by the seeded
            generator from the images left after the validation split. ``None`` uses all.
        labeled_split_file: Train on exactly the labeled images of a semi-supervised split
            file (see :mod:`~lightning_kd.data.splits`; e.g. the one a
            :class:`~lightning_kd.data.semi_supervised.CIFAR10SSLDataModule` run wrote), for a
            supervised-only baseline with the same labels. Cannot be combined with
            ``train_subset``; its images must not fall in the validation split.
        channels_last: Return images in ``torch.channels_last`` memory format.
        pin_memory: Passed to the DataLoaders.
        drop_last: Drop the last incomplete training batch (training loader only).
        return_indices: Training batches also carry each image's position in the training set
            ``[0, len(train_dataset))``, for methods with per-sample state (CRD).
        transform: The training batch transform (:mod:`lightning_kd.data.transforms`), e.g.
            :class:`~lightning_kd.data.transforms.MultiCropViews` for DINO; ``None`` is
            :class:`~lightning_kd.data.transforms.CropFlip` (pad 4, flip). A mixing transform
            (:class:`~lightning_kd.data.mixing.MixUp`, :class:`~lightning_kd.data.mixing.CutMix`)
            mixes each training view with the keyed view of a partner image of the training set
            and makes the training targets soft ``(B, C)``. Not stored in ``hparams`` (the CLI
            records it in its config).
        view_seed: Seed of the training order and of every augmentation draw. ``None`` (the
            default) uses the run's seed (``seed_everything``, i.e. ``PL_GLOBAL_SEED``), so
            runs with different seeds see different orders and views.
        view_epochs: Repeat the views of the first ``view_epochs`` epochs: epoch ``e`` draws
            the views of epoch ``e % view_epochs`` (its order still changes every epoch).
            ``None`` (default): every epoch has its own views. A teacher cache built for
            ``E`` epochs serves a longer run exactly with ``view_epochs <= E``.
        return_keys: Training batches end with their :class:`ViewKeys`. Set by modules that
            look per-view values up (a ``teacher_cache``); ``False`` by default.

    Raises:
        ValueError: If an argument is out of range.
        TypeError: If ``val_split`` is neither int nor float, or ``transform`` is not a
            :class:`~lightning_kd.data.transforms.BatchTransform`.
    """

    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]

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
        channels_last: bool = False,
        pin_memory: bool = False,
        drop_last: bool = True,
        return_indices: bool = False,
        transform: BatchTransform | None = None,
        view_seed: int | None = None,
        view_epochs: int | None = None,
        return_keys: bool = False,
    ) -> None:
        super().__init__()
        if not hasattr(type(self), "mean") or not hasattr(type(self), "std"):
            raise TypeError(
                f"{type(self).__name__} is abstract; use a dataset's datamodule (e.g. "
                "CIFAR10DataModule) or subclass it with mean, std, num_classes, dataset_name "
                "and read_split"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 or None, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        validation_count(val_split, 2**62)  # type and range checks only
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be >= 1 or None, got {train_subset}")
        if train_subset is not None and labeled_split_file is not None:
            raise ValueError(
                "train_subset and labeled_split_file both choose the training images; pass one, "
                f"got train_subset={train_subset} and labeled_split_file={labeled_split_file!r}"
            )
        if transform is not None and not isinstance(transform, BatchTransform):
            raise TypeError(
                "transform must be a lightning_kd.data.transforms.BatchTransform (e.g. CropFlip, "
                f"MultiCropViews) or None, got {type(transform).__name__}"
            )
        if view_seed is not None and view_seed < 0:
            raise ValueError(f"view_seed must be >= 0 or None, got {view_seed}")
        if view_epochs is not None and view_epochs < 1:
            raise ValueError(f"view_epochs must be >= 1 or None, got {view_epochs}")
        self.save_hyperparameters(ignore=["transform"])

        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.download = download
        self.train_subset = train_subset
        self.labeled_split_file = labeled_split_file
        self.channels_last = channels_last
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.return_indices = return_indices
        self.transform: BatchTransform = transform if transform is not None else CropFlip()
        self._view_seed = view_seed
        self.view_epochs = view_epochs
        self.return_keys = return_keys

        self.train_dataset: TensorImageDataset | None = None
        self.val_dataset: TensorImageDataset | None = None
        self.test_dataset: TensorImageDataset | None = None
        self._norm_cache: dict[tuple[torch.device, bool], tuple[Tensor, Tensor]] = {}
        self._warned_val_on_test = False

    # ------------------------------------------------------------------ what subclasses give
    @property
    def num_classes(self) -> int:
        """Number of classes."""
        raise NotImplementedError

    @property
    def dataset_name(self) -> str:
        """Dataset name for messages, e.g. ``"CIFAR-10"``."""
        raise NotImplementedError

    def read_split(self, *, train: bool) -> tuple[Tensor, Tensor]:
        """The whole training (or test) file: ``uint8 (N, 3, H, W)`` images, int64 ``(N,)``
        labels."""
        raise NotImplementedError

    # ------------------------------------------------------------------ seeds
    @property
    def view_seed(self) -> int:
        """Seed of the training order and augmentations: ``view_seed`` if given, else derived
        from the split ``seed`` and the run's seed (``PL_GLOBAL_SEED``)."""
        if self._view_seed is not None:
            return self._view_seed
        return sample_seed(self.seed % 2**32, int(os.environ.get("PL_GLOBAL_SEED", 0)) % 2**32, 0)

    # ------------------------------------------------------------------ validation on test
    @property
    def validates_on_test(self) -> bool:
        """Whether validation runs on the test split (``val_split=0``): then nothing that is
        chosen by validation metrics is held out, and the modules name those metrics
        ``val_on_test/...``."""
        return self.val_split == 0

    def warn_if_validating_on_test(self, stage: str) -> None:
        """Warn (once per datamodule) that ``val_split=0`` makes validation read the test
        split."""
        if stage not in ("fit", "validate") or not self.validates_on_test:
            return
        if self._warned_val_on_test:
            return
        self._warned_val_on_test = True
        rank_zero_warn(
            f"val_split=0: validation runs on the {self.dataset_name} test split, so its metrics "
            "are logged as val_on_test/... and must not select checkpoints or hyperparameters; "
            "set val_split (e.g. 5000) to hold out a validation split of the training set"
        )

    # ------------------------------------------------------------------ data
    @override
    def setup(self, stage: str) -> None:
        """Load and split what ``stage`` needs (idempotent).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """
        self.warn_if_validating_on_test(stage)
        needs_train = stage in ("fit", "validate") and self._needs_training_split(stage)
        needs_test = stage in ("test", "predict") or (
            stage in ("fit", "validate") and self.validates_on_test
        )
        if needs_train:
            images, targets = self.read_split(train=True)
            self.setup_training(images, targets, stage=stage)
        if needs_test and self.test_dataset is None:
            images, targets = self.read_split(train=False)
            self.test_dataset = TensorImageDataset(images, targets, keyed=False)
        if self.validates_on_test and self.test_dataset is not None:
            self.val_dataset = self.test_dataset

    def _needs_training_split(self, stage: str) -> bool:
        return self.train_dataset is None or (
            not self.validates_on_test and self.val_dataset is None
        )

    def setup_training(self, images: Tensor, targets: Tensor, *, stage: str) -> None:
        """Split the training file into the training and validation sets.

        Args:
            images: ``uint8 (N, 3, H, W)``, the whole training file.
            targets: int64 ``(N,)``.
            stage: The stage being set up.
        """
        n = targets.numel()
        generator = torch.Generator().manual_seed(self.seed)
        train_idx, val_idx = holdout_split(n, self.val_split, generator)
        if self.train_subset is not None:
            train_idx = train_idx[
                class_balanced_subset(
                    targets[train_idx], self.train_subset, self.num_classes, generator
                )
            ]
        if self.labeled_split_file is not None:
            labeled, _ = read_split_file(
                self.labeled_split_file, dataset=self.dataset_name, num_train_images=n
            )
            check_labeled_split(
                labeled,
                targets,
                val_indices=val_idx,
                where=f"labeled_split_file {self.labeled_split_file!r}",
                hint=(
                    f" (val_split={self.val_split}, seed={self.seed}); use val_split=0 or the "
                    "split's own val_split and seed"
                ),
            )
            train_idx = labeled
        if val_idx.numel() > 0:
            self.val_dataset = TensorImageDataset(
                images[val_idx], targets[val_idx], file_indices=val_idx, keyed=False
            )
        self.train_dataset = TensorImageDataset(
            images[train_idx], targets[train_idx], file_indices=train_idx, key_stride=n
        )

    # ------------------------------------------------------------------ loaders
    def world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` from the trainer, else torch.distributed, else (1, 0)."""
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        return world_size_and_rank()

    def keyed_loader(
        self, dataset: TensorImageDataset, sampler: Any, batch_size: int, *, drop_last: bool
    ) -> ResumableDataLoader:
        """A resumable training loader over ``sampler``'s draw keys."""
        return ResumableDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> Any:
        """Training batches in the keyed order of :class:`EpochSampler`, sharded over the DDP
        processes, resumable mid-epoch.

        Raises:
            RuntimeError: If ``setup("fit")`` has not run.
            ValueError: If ``drop_last`` would leave no batch.
        """
        dataset = self.train_dataset
        if dataset is None:
            raise RuntimeError("no train dataset: call setup('fit') before train_dataloader()")
        world_size, rank = self.world()
        sampler = EpochSampler(
            dataset,
            seed=self.view_seed,
            num_replicas=world_size,
            rank=rank,
            batch_size=self.batch_size,
        )
        if self.drop_last and len(sampler) < self.batch_size:
            raise ValueError(
                f"the training set has {len(dataset)} images ({len(sampler)} per process), fewer "
                f"than batch_size={self.batch_size}, and drop_last=True would yield no batch; "
                "lower batch_size or set drop_last=False"
            )
        return self.keyed_loader(dataset, sampler, self.batch_size, drop_last=self.drop_last)

    def _eval_loader(self, dataset: TensorImageDataset | None, split: str) -> DataLoader[Any]:
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
            collate_fn=collate_batch,
            pin_memory=self.pin_memory,
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

    def feature_bank_dataloader(self, *, num_replicas: int = 1, rank: int = 0) -> DataLoader[Any]:
        """The training images with evaluation transforms, e.g. as a kNN feature bank.

        The same images as :meth:`train_dataloader`, never augmented, in order, batches of
        ``eval_batch_size``, the last one kept; batches are ``uint8`` as the validation
        loader's, normalised by :meth:`on_after_batch_transfer` outside training.

        Args:
            num_replicas: Number of shards (processes).
            rank: This shard: images ``rank, rank + num_replicas, ...``, without padding, so
                the shards together hold every training image exactly once.

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
        bank = TensorImageDataset(train.images, train.targets, keyed=False)
        return DataLoader(
            bank_shard(bank, num_replicas=num_replicas, rank=rank),
            batch_size=self.eval_batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            pin_memory=self.pin_memory,
        )

    # ------------------------------------------------------------------ views
    def normalize_batch(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> float32 normalised with the dataset's mean and std,
        ``channels_last`` if requested, on the images' device.

        ``uint8`` images are read as ``0..255``; floating-point images as ``[0, 1]``.

        Raises:
            TypeError: If the images are neither ``uint8`` nor floating point.
        """
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(
                f"expected uint8 images in [0, 255] or float images in [0, 1], got {images.dtype}"
            )
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        is_uint8 = images.dtype == torch.uint8
        key = (images.device, is_uint8)
        if key not in self._norm_cache:
            self._norm_cache[key] = normalize_constants(
                self.mean, self.std, device=images.device, max_value=255.0 if is_uint8 else 1.0
            )
        scale, shift = self._norm_cache[key]
        return torch.addcmul(shift, images.float(), scale)  # (B, 3, H, W), float32

    def make_views(self, images: Tensor, sample_indices: Tensor, epoch: int) -> list[Tensor]:
        """The normalised training views of a batch: ``transform`` keyed by
        ``(view_seed, epoch, sample_indices)``, then :meth:`normalize_batch`.

        Any view of a run can be recomputed with this from the sample's index and epoch. With a
        mixing transform (:class:`~lightning_kd.data.mixing.MixUp`, ...) the views are the mixed
        ones: each image's partner is drawn from its keys among the images of
        :attr:`train_dataset` and fetched from there (so ``setup("fit")`` must have run).

        Args:
            images: ``uint8 (B, 3, H, W)`` on any device.
            sample_indices: int64 ``(B,)`` sample indices (index in the training file), on the
                images' device.
            epoch: The epoch.

        Returns:
            ``transform.num_views`` float32 views.
        """
        keys = SampleKeys(self.view_seed, epoch, sample_indices)
        if isinstance(self.transform, MixingTransform):
            views = self._mix(self.transform, images, keys)[0].views
            return [self.normalize_batch(v) for v in views]
        return [self.normalize_batch(v) for v in self.transform(images, keys)]

    def training_views(
        self, images: Tensor, targets: Tensor, sample_indices: Tensor, epoch: int
    ) -> tuple[list[Tensor], Tensor]:
        """The normalised training views of a batch and the targets the model trains on.

        Args:
            images: ``uint8 (B, 3, H, W)`` on any device.
            targets: int64 ``(B,)`` labels of the images, on their device.
            sample_indices: int64 ``(B,)`` sample indices (index in the training file).
            epoch: The epoch the views are drawn for.

        Returns:
            ``(views, targets)``: the views of :meth:`make_views`; ``targets`` as given for a
            plain transform, and for a mixing transform float32 ``(B, C)`` soft targets
            ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)``
            (:func:`~lightning_kd.data.mixing.mixed_targets`), rows summing to 1, ``lam`` the
            weight of image ``i`` in its view and ``j`` its partner.
        """
        transform = self.transform
        if not isinstance(transform, MixingTransform):
            return self.make_views(images, sample_indices, epoch), targets
        keys = SampleKeys(self.view_seed, epoch, sample_indices)
        mixed, partner_targets = self._mix(transform, images, keys)
        soft = mixed_targets(targets, partner_targets, mixed.lam, self.num_classes)  # (B, C)
        return [self.normalize_batch(v) for v in mixed.views], soft

    def _mix(
        self, transform: MixingTransform, images: Tensor, keys: SampleKeys
    ) -> tuple[MixedViews, Tensor]:
        """Draw each image's partner in :attr:`train_dataset`, fetch it (image, label, sample
        index for its keys) to the images' device and mix: ``(mixed views, partner labels
        (B,))``.

        Raises:
            RuntimeError: If there is no training dataset yet.
        """
        dataset = self.train_dataset
        if dataset is None:
            raise RuntimeError(
                f"{transform!r} draws each image's partner from the training set: call "
                "setup('fit') before making training views"
            )
        device = images.device
        positions = transform.partners(keys, len(dataset)).cpu()  # (B,) positions in the set
        partner_images = dataset.images.index_select(0, positions).to(device)
        partner_samples = dataset.file_indices.index_select(0, positions).to(device)
        partner_targets = dataset.targets.index_select(0, positions).to(device)
        partner_keys = SampleKeys(keys.seed, keys.epoch, partner_samples)
        return transform.mix_batch(images, keys, partner_images, partner_keys), partner_targets

    def view_epoch(self, epoch: int) -> int:
        """The epoch whose views epoch ``epoch`` draws: ``epoch % view_epochs``, or ``epoch``."""
        return epoch % self.view_epochs if self.view_epochs is not None else epoch

    def training_batch(self, batch: list[Any]) -> list[Any]:
        """A keyed ``uint8`` training batch -> the model's training batch (module docstring)."""
        images, targets, samples, positions, epoch = batch[:5]
        host = batch[5].tensor if len(batch) > 5 and isinstance(batch[5], _OnHost) else None
        epoch = self.view_epoch(epoch)
        views, targets = self.training_views(images, targets, samples, epoch)
        first: Any = views[0] if self.transform.num_views == 1 else views
        out = [first, targets]
        if self.return_indices:
            out.append(positions)
        if self.return_keys:
            out.append(ViewKeys(epoch, samples, positions, host))
        return out

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``return_keys``, keep a CPU copy of a training batch's positions
        (:attr:`ViewKeys.host_positions`) before the batch moves to the device."""
        trainer = self.trainer
        if self.return_keys and trainer is not None and bool(trainer.training):
            return [*batch, _OnHost(batch[3])]
        return batch

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Transform and normalise on the accelerator: training batches (``trainer.training``)
        get :meth:`training_batch`, all others are only normalised (``[images, targets]``)."""
        trainer = self.trainer
        if trainer is not None and bool(trainer.training):
            return self.training_batch(batch)
        return [self.normalize_batch(batch[0]), batch[1].long()]
