"""Tests for lightning_kd.data.semi_supervised: label splits, two-stream batches, DDP sharding.

Most tests use ``indexed_dir``, a fake CIFAR-10 in the real layout (200 train images, 20 per
class, label ``i % 10``) whose pixels encode each image's index: red ``1 + i % 250``, green
``1 + i // 250`` everywhere, and a blue ramp that a horizontal flip changes. The centre pixel of
any crop (offsets of at most 4) is never padding, so a view's index can be read back from it.

The default ``val_split=5000`` cannot be held out of 200 images, so tests whose expectations are
"every training image is in the pool" pass ``val_split=0`` (which validates on the test split and
warns); the DDP test uses a 5,200-image copy on which the default leaves a 200-image pool.

Training loaders yield keyed batches, ``{"labeled": b, "unlabeled": b}`` with each ``b`` =
``[images uint8, targets, sample_indices, positions, epoch]``; the samplers yield draw keys that
:class:`TensorImageDataset` decodes (a labeled image drawn in pass ``p`` of an epoch has sample
index ``file_index + p * 200`` here, the size of the training file). Views are drawn from
:class:`SampleKeys` keyed by the stream's seed, the epoch and those sample indices.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_data import write_fake_cifar10
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from ssl_ddp_script import decode_indices
from torch import Tensor, nn

from lightning_kd.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10DataModule,
    CIFAR10SSLDataModule,
    CIFAR100SSLDataModule,
    CropFlip,
    CyclingDistributedSampler,
    ResumableDataLoader,
    SemiSupervisedDataModule,
    TensorImageDataset,
    normalize,
)
from lightning_kd.data.cifar_files import CIFAR10_LAYOUT, read_cifar_split, resolve_cifar_dir

HERE = Path(__file__).parent
MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- fake data
def _indexed_images(indices: np.ndarray) -> np.ndarray:
    """``uint8`` ``(N, 3, 32, 32)`` images whose pixels encode ``indices`` (see module doc)."""
    n = len(indices)
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    images[:, 0] = (1 + indices % 250)[:, None, None]
    images[:, 1] = (1 + indices // 250)[:, None, None]
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    images[:, 2] = 1 + (7 * w + h) % 250
    return images


def _write_indexed_cifar10(root: Path, n_train_per_batch: int = 40) -> Path:
    """A fake CIFAR-10 under ``root`` with indexed pixels (``5 * n_train_per_batch`` train
    images); test image ``j`` encodes 1000 + j."""
    n = n_train_per_batch
    folder = write_fake_cifar10(root, n_train_per_batch=n, n_test=100, seed=0)
    files = [(f"data_batch_{b + 1}", np.arange(n * b, n * (b + 1))) for b in range(5)]
    for name, indices in [*files, ("test_batch", 1000 + np.arange(100))]:
        with (folder / name).open("rb") as f:
            content = pickle.load(f)
        content["data"] = _indexed_images(indices).reshape(len(indices), 3072)
        with (folder / name).open("wb") as f:
            pickle.dump(content, f)
    return root


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_indexed_cifar10(tmp_path_factory.mktemp("indexed_cifar10"))


@pytest.fixture(scope="module")
def indexed_5200_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,200 indexed train images: the default ``val_split=5000`` leaves a pool of 200."""
    root = tmp_path_factory.mktemp("indexed_cifar10_5200")
    return _write_indexed_cifar10(root, n_train_per_batch=1040)


def _dm(
    data_dir: Path, cls: type[SemiSupervisedDataModule] = CIFAR10SSLDataModule, **kwargs: Any
) -> SemiSupervisedDataModule:
    dm = cls(data_dir=str(data_dir), **kwargs)
    dm.setup("fit")
    return dm


def _labels_of(dm: SemiSupervisedDataModule) -> Tensor:
    """The labeled indices of a set-up DataModule."""
    assert dm.labeled_indices is not None
    return dm.labeled_indices


def _unnormalize(x: Tensor) -> Tensor:
    """Normalised float ``(B, 3, H, W)`` -> integer pixel values (float ``(B, 3, H, W)``)."""
    pixels = (x * STD + MEAN) * 255
    torch.testing.assert_close(pixels, pixels.round(), atol=2e-3, rtol=0)
    return pixels.round()


def _is_crop_flip_of(view: Tensor, image: Tensor, padding: int = 4) -> bool:
    """Whether ``view`` ``(3, H, W)`` is a window of zero-padded ``image``, maybe flipped."""
    h, w = image.shape[1:]
    padded = F.pad(image, (padding,) * 4)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(view, window) or torch.equal(view, window.flip(-1)):
                return True
    return False


def _range_dataset(n: int) -> TensorImageDataset:
    """``n`` blank images whose file index is their position (the samplers use the length,
    the dataset decodes their keys)."""
    return TensorImageDataset(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.zeros(n).long())


def _decode(keys: list[int] | Tensor, n: int) -> tuple[Tensor, Tensor, int]:
    """Draw keys over a dataset of ``n`` -> ``(positions, passes, epoch)`` as the dataset reads
    them."""
    _, _, samples, positions, epoch = _range_dataset(n).__getitems__(torch.as_tensor(keys).tolist())
    return positions, samples // n, epoch


def _raw_epoch(dm: SemiSupervisedDataModule) -> list[dict[str, list[Any]]]:
    """One epoch of keyed training batches, as the loader yields them."""
    loader = dm.train_dataloader()
    assert isinstance(loader, CombinedLoader)
    return [batch for batch, _, _ in loader]


def _epoch(dm: SemiSupervisedDataModule) -> list[dict[str, list[Tensor]]]:
    """One epoch of training batches, after the transfer hook."""
    return [dm.on_after_batch_transfer(batch, 0) for batch in _raw_epoch(dm)]


# --------------------------------------------------------------------------- arguments
def test_num_classes_and_defaults_without_data() -> None:
    assert CIFAR10SSLDataModule().num_classes == 10
    assert CIFAR100SSLDataModule(num_labels=10000).num_classes == 100
    dm = CIFAR10SSLDataModule()
    assert (dm.num_labels, dm.labeled_batch_size, dm.unlabeled_batch_size) == (4000, 31, 97)
    assert dm.hparams["num_labels"] == 4000


@pytest.mark.parametrize(
    ("kwargs", "error", "expected"),
    [
        ({"num_labels": 45}, ValueError, "multiple of the 10 classes of CIFAR-10.*got 45"),
        ({"num_labels": 0}, ValueError, "got 0"),
        ({"labeled_batch_size": 0}, ValueError, "labeled_batch_size must be >= 1, got 0"),
        ({"unlabeled_batch_size": -1}, ValueError, "unlabeled_batch_size must be >= 1, got -1"),
        ({"eval_batch_size": 0}, ValueError, "eval_batch_size must be >= 1.*got 0"),
        ({"num_workers": -1}, ValueError, "num_workers must be >= 0, got -1"),
        ({"val_split": -5}, ValueError, "val_split.* must be >= 0, got -5"),
        ({"val_split": 0.1}, TypeError, "val_split must be an int count of images, got 0.1"),
        ({"view_seed": -1}, ValueError, "view_seed must be >= 0 or None, got -1"),
        ({"transform": "crop"}, TypeError, "transform must be a .*BatchTransform.*got str"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], error: type, expected: str) -> None:
    with pytest.raises(error, match=expected):
        CIFAR10SSLDataModule(**kwargs)


def test_base_and_cifar100_errors() -> None:
    with pytest.raises(TypeError, match="SemiSupervisedDataModule is abstract"):
        SemiSupervisedDataModule()
    with pytest.raises(ValueError, match=r"multiple of the 100 classes of CIFAR-100.*got 4050"):
        CIFAR100SSLDataModule(num_labels=4050)


def test_errors_that_need_the_data(indexed_dir: Path) -> None:
    with pytest.raises(
        ValueError, match="val_split=5000 must be smaller than the 200 training images"
    ):
        _dm(indexed_dir, num_labels=10)  # the default validation split
    with pytest.raises(ValueError, match="needs 21 labeled images per class, but class 0 has "):
        _dm(indexed_dir, num_labels=210, val_split=0)
    with pytest.raises(
        ValueError, match="val_split=200 must be smaller than the 200 training images"
    ):
        _dm(indexed_dir, num_labels=10, val_split=200)
    # 150 of 200 held out leaves about 5 per class, fewer than 10.
    with pytest.raises(ValueError, match=r"needs 10 labeled images per class.*pool of 50"):
        _dm(indexed_dir, num_labels=100, val_split=150)
    with pytest.raises(RuntimeError, match=r"call setup\('fit'\) before train_dataloader"):
        CIFAR10SSLDataModule(data_dir=str(indexed_dir)).train_dataloader()
    dm = _dm(indexed_dir, num_labels=10, labeled_batch_size=11, val_split=0)
    with pytest.raises(ValueError, match="labeled set has 10 images, fewer than labeled_batch"):
        dm.train_dataloader()
    dm = _dm(
        indexed_dir, num_labels=10, labeled_batch_size=5, unlabeled_batch_size=201, val_split=0
    )
    with pytest.raises(ValueError, match="unlabeled set has 200 images"):
        dm.train_dataloader()


# --------------------------------------------------------------------------- splits
def test_split_is_balanced_exact_and_seeded(indexed_dir: Path, cifar100_dir: Path) -> None:
    _, targets = read_cifar_split(
        resolve_cifar_dir(indexed_dir, CIFAR10_LAYOUT), CIFAR10_LAYOUT, train=True
    )
    dm = _dm(indexed_dir, num_labels=40, seed=0, val_split=0)
    labeled = dm.labeled_indices
    assert labeled is not None and labeled.dtype == torch.int64
    assert labeled.numel() == 40 == labeled.unique().numel()
    assert torch.equal(torch.bincount(targets[labeled], minlength=10), torch.full((10,), 4))
    # The labeled dataset holds exactly those images, with their labels.
    assert dm.labeled_dataset is not None
    assert torch.equal(dm.labeled_dataset.targets, targets[labeled])
    assert torch.equal(
        decode_indices(
            dm.on_after_batch_transfer([dm.labeled_dataset.images, dm.labeled_dataset.targets], 0)[
                0
            ]
        ),
        labeled,
    )
    # The unlabeled stream is the whole training set by default.
    assert dm.unlabeled_indices is not None
    assert torch.equal(dm.unlabeled_indices, torch.arange(200))

    again = _dm(indexed_dir, num_labels=40, seed=0, val_split=0)
    other = _dm(indexed_dir, num_labels=40, seed=1, val_split=0)
    assert torch.equal(_labels_of(again), labeled)
    assert not torch.equal(_labels_of(other), labeled)

    c100 = _dm(cifar100_dir, CIFAR100SSLDataModule, num_labels=200, val_split=0)
    assert c100.labeled_indices is not None and c100.labeled_indices.numel() == 200
    fine = torch.arange(300) % 100  # the fake CIFAR-100 labels
    assert torch.equal(torch.bincount(fine[c100.labeled_indices]), torch.full((100,), 2))


@pytest.mark.parametrize(
    ("seed", "val_split", "expected"),
    [
        (
            0,
            50,
            [
                3,
                9,
                51,
                67,
                82,
                86,
                133,
                135,
                142,
                160,
                164,
                167,
                171,
                179,
                184,
                188,
                190,
                195,
                196,
                198,
            ],
        ),
        (
            3,
            0,
            [
                3,
                16,
                38,
                42,
                52,
                54,
                81,
                83,
                107,
                119,
                120,
                121,
                130,
                135,
                136,
                158,
                184,
                185,
                187,
                199,
            ],
        ),
    ],
)
def test_seeded_split_is_the_one_earlier_versions_wrote(
    indexed_dir: Path, seed: int, val_split: int, expected: list[int]
) -> None:
    # Labels chosen by the datamodule before the data package was rewritten (label_split.py,
    # same fake labels i % 10): split files written then must still match a seeded run.
    dm = _dm(indexed_dir, num_labels=20, seed=seed, val_split=val_split)
    assert _labels_of(dm).tolist() == expected


def test_exclude_labeled_from_unlabeled(indexed_dir: Path) -> None:
    dm = _dm(indexed_dir, num_labels=40, include_labeled_in_unlabeled=False, val_split=0)
    assert dm.labeled_indices is not None and dm.unlabeled_indices is not None
    assert dm.unlabeled_indices.numel() == 160
    assert not set(dm.unlabeled_indices.tolist()) & set(dm.labeled_indices.tolist())
    dm = _dm(
        indexed_dir,
        num_labels=40,
        include_labeled_in_unlabeled=False,
        labeled_batch_size=8,
        unlabeled_batch_size=32,
        val_split=0,
    )
    batches = _epoch(dm)
    assert len(batches) == 160 // 32
    seen = torch.cat([decode_indices(b["unlabeled"][0]) for b in batches])
    assert not set(seen.tolist()) & set(_labels_of(dm).tolist())


def test_val_split_is_held_out_before_labels(indexed_dir: Path) -> None:
    dm = _dm(indexed_dir, num_labels=40, val_split=50, eval_batch_size=50)
    val, labeled, unlabeled = dm.val_indices, dm.labeled_indices, dm.unlabeled_indices
    assert val is not None and labeled is not None and unlabeled is not None
    assert val.numel() == 50 and unlabeled.numel() == 150
    assert not set(val.tolist()) & set(unlabeled.tolist())
    assert set(labeled.tolist()) <= set(unlabeled.tolist())
    x, y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert torch.equal(decode_indices(x), val)  # unshuffled, unaugmented
    assert torch.equal(y, val % 10)
    torch.testing.assert_close(
        x, normalize(torch.from_numpy(_indexed_images(val.numpy())), CIFAR10_MEAN, CIFAR10_STD)
    )
    # "validate" alone builds the same validation split without choosing labels.
    only_val = CIFAR10SSLDataModule(data_dir=str(indexed_dir), num_labels=40, val_split=50)
    only_val.setup("validate")
    assert only_val.val_indices is not None and only_val.labeled_indices is None
    assert torch.equal(only_val.val_indices, val)


def test_default_val_split_is_5000_and_held_out(indexed_dir: Path) -> None:
    assert inspect.signature(CIFAR10SSLDataModule).parameters["val_split"].default == 5000
    default = CIFAR10SSLDataModule(data_dir=str(indexed_dir))
    assert default.val_split == 5000 and default.hparams["val_split"] == 5000
    assert not default.validates_on_test
    # On the 200 fake images, an explicit small count shows what the default does.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = _dm(indexed_dir, num_labels=40, val_split=30, include_labeled_in_unlabeled=False)
    assert not [w for w in caught if "val_split=0" in str(w.message)]
    assert not dm.validates_on_test
    val, labeled, unlabeled = dm.val_indices, dm.labeled_indices, dm.unlabeled_indices
    assert val is not None and labeled is not None and unlabeled is not None
    assert val.numel() == val.unique().numel() == 30
    assert not set(val.tolist()) & (set(labeled.tolist()) | set(unlabeled.tolist()))
    assert sorted([*val.tolist(), *labeled.tolist(), *unlabeled.tolist()]) == list(range(200))
    assert dm.val_dataset is not None and len(dm.val_dataset) == 30
    assert dm.test_dataset is None  # fit does not read the test split


def test_val_split_zero_warns_once_and_validates_on_test(indexed_dir: Path) -> None:
    dm = CIFAR10SSLDataModule(data_dir=str(indexed_dir), num_labels=40, val_split=0)
    assert dm.validates_on_test
    with pytest.warns(UserWarning, match="test split") as record:
        dm.setup("fit")
        dm.setup("validate")
        dm.setup("fit")
    messages = [str(w.message) for w in record if "val_split=0" in str(w.message)]
    assert len(messages) == 1
    assert "CIFAR-10 test split" in messages[0] and "val_on_test/" in messages[0]
    assert dm.test_dataset is not None and dm.val_dataset is dm.test_dataset
    assert dm.val_indices is not None and dm.val_indices.numel() == 0
    x, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert torch.equal(decode_indices(x), 1000 + torch.arange(100))  # the test images
    # "validate" alone also validates on the test split.
    only_val = CIFAR10SSLDataModule(data_dir=str(indexed_dir), num_labels=40, val_split=0)
    with pytest.warns(UserWarning, match="test split"):
        only_val.setup("validate")
    assert only_val.val_dataset is not None and only_val.val_dataset is only_val.test_dataset


# --------------------------------------------------------------------------- split file
def test_split_file_written_then_reloaded(indexed_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "splits" / "cifar10_40.json"
    first = _dm(indexed_dir, num_labels=40, seed=3, split_file=str(path), val_split=0)
    content = json.loads(path.read_text())
    assert content["dataset"] == "CIFAR-10" and content["num_train_images"] == 200
    assert content["num_labels"] == 40 and content["seed"] == 3 and content["val_split"] == 0
    assert first.labeled_indices is not None
    assert content["labeled_indices"] == first.labeled_indices.tolist()
    assert not list(path.parent.glob(".*.tmp"))

    # An existing file wins over the seed.
    reloaded = _dm(indexed_dir, num_labels=40, seed=7, split_file=str(path), val_split=0)
    assert torch.equal(_labels_of(reloaded), first.labeled_indices)
    other_seed = _dm(indexed_dir, num_labels=40, seed=7, val_split=0)
    assert not torch.equal(_labels_of(other_seed), first.labeled_indices)
    # None: seeded split, nothing written.
    _dm(indexed_dir, num_labels=40, split_file=None, val_split=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cifar10_40.json"]


def _edit(content: dict[str, Any], case: str) -> dict[str, Any]:
    idx = list(content["labeled_indices"])
    if case == "dataset":
        content["dataset"] = "CIFAR-100"
    elif case == "size":
        content["num_train_images"] = 50000
    elif case == "range":
        idx[0] = 200
    elif case == "repeat":
        idx[1] = idx[0]
    elif case == "balance":  # swap a class-0 image for an unused class-1 image
        cls0 = next(i for i in idx if i % 10 == 0)
        idx[idx.index(cls0)] = next(i for i in range(1, 200, 10) if i not in idx)
    elif case == "type":
        idx[0] = "12"
    return {**content, "labeled_indices": idx}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("dataset", "does not match.*dataset is 'CIFAR-100', expected 'CIFAR-10'"),
        ("size", "num_train_images is 50000, but the training split on disk has 200 images"),
        ("range", r"must lie in \[0, 200\), got values from \d+ to 200"),
        ("repeat", "1 labeled indices are repeated"),
        ("balance", "not class-balanced: expected 4 labels per class, got class 0: 3, class 1: 5"),
        ("type", "'labeled_indices' must be integers"),
    ],
)
def test_split_file_mismatch(indexed_dir: Path, tmp_path: Path, case: str, expected: str) -> None:
    path = tmp_path / "split.json"
    _dm(indexed_dir, num_labels=40, split_file=str(path), val_split=0)
    path.write_text(json.dumps(_edit(json.loads(path.read_text()), case)))
    with pytest.raises(ValueError, match=expected):
        _dm(indexed_dir, num_labels=40, split_file=str(path), val_split=0)


def test_split_file_other_mismatches(indexed_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    _dm(indexed_dir, num_labels=40, split_file=str(path), val_split=0)
    with pytest.raises(ValueError, match="lists 40 labeled indices, expected num_labels=50"):
        _dm(indexed_dir, num_labels=50, split_file=str(path), val_split=0)
    # Labels from a split made without validation can fall into a later validation split.
    with pytest.raises(
        ValueError, match=r"\d+ of its labeled images fall in the validation split \(val_split=100"
    ):
        _dm(indexed_dir, num_labels=40, split_file=str(path), val_split=100)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        _dm(indexed_dir, num_labels=40, split_file=str(path), val_split=0)
    path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="JSON object with a 'labeled_indices' list, got list"):
        _dm(indexed_dir, num_labels=40, split_file=str(path), val_split=0)


# --------------------------------------------------------------------------- training batches
def test_training_batches_follow_the_contract(indexed_dir: Path) -> None:
    dm = _dm(indexed_dir, num_labels=40, labeled_batch_size=8, unlabeled_batch_size=32, val_split=0)
    assert dm.labeled_indices is not None and dm.unlabeled_indices is not None
    assert isinstance(dm.transform, CropFlip) and dm.transform.num_views == 2  # the default
    raw_batches = _raw_epoch(dm)
    assert len(raw_batches) == 200 // 32  # the unlabeled stream defines the epoch, drop_last

    # Keyed batches: [images uint8, targets, sample indices, positions, epoch] per stream.
    labeled_samples: list[Tensor] = []
    for raw in raw_batches:
        assert set(raw) == {"labeled", "unlabeled"}
        for name, size, indices in (
            ("labeled", 8, dm.labeled_indices),
            ("unlabeled", 32, dm.unlabeled_indices),
        ):
            images, targets, samples, positions, epoch = raw[name]
            assert images.dtype == torch.uint8 and images.shape == (size, 3, 32, 32)
            assert targets.dtype == samples.dtype == positions.dtype == torch.int64
            assert epoch == 0
            # Positions index the stream's dataset, sample indices the training file (plus
            # 200 per earlier pass of the epoch).
            assert torch.equal(samples % 200, indices[positions])
            assert torch.equal(targets, indices[positions] % 10)
            images_of = torch.from_numpy(_indexed_images(indices[positions].numpy()))
            assert torch.equal(images, images_of)
            if name == "labeled":
                labeled_samples.append(samples)
            else:
                assert bool((samples < 200).all())  # one pass
    # 6 steps of 8 over 40 labeled images: steps 0-4 are pass 0, step 5 starts pass 1.
    passes = torch.stack(labeled_samples) // 200  # (6, 8)
    assert torch.equal(passes, torch.tensor([0] * 5 + [1]).view(6, 1).expand(6, 8))

    labeled_seen: list[Tensor] = []
    unlabeled_seen: list[Tensor] = []
    same: list[Tensor] = []
    for batch in (dm.on_after_batch_transfer(raw, 0) for raw in raw_batches):
        assert set(batch) == {"labeled", "unlabeled"}
        for name, size in (("labeled", 8), ("unlabeled", 32)):
            student, teacher, y = batch[name]
            assert student.shape == teacher.shape == (size, 3, 32, 32)
            assert student.dtype == teacher.dtype == torch.float32
            assert y.shape == (size,) and y.dtype == torch.int64
            idx = decode_indices(student)
            assert torch.equal(decode_indices(teacher), idx)  # both views of one image
            assert torch.equal(y, idx % 10)  # true labels (u_y for diagnostics only)
            assert idx.unique().numel() == size
            images = torch.from_numpy(_indexed_images(idx.numpy())).float()
            for view in (student, teacher):
                pixels = _unnormalize(view)
                assert all(
                    _is_crop_flip_of(p, im) for p, im in zip(pixels[:4], images[:4], strict=True)
                )
            same.append((student == teacher).flatten(1).all(1))
            (labeled_seen if name == "labeled" else unlabeled_seen).append(idx)
    # Labeled images only come from the labeled indices; each pass of 5 steps is a permutation.
    labeled = torch.stack(labeled_seen)  # (6, 8)
    assert set(labeled.flatten().tolist()) <= set(dm.labeled_indices.tolist())
    assert torch.equal(labeled[:5].flatten().sort().values, dm.labeled_indices)
    # The unlabeled images of an epoch are all distinct.
    assert torch.cat(unlabeled_seen).unique().numel() == 6 * 32
    # The two views differ for almost every sample (identical with probability 1/162).
    assert torch.cat(same).float().mean() < 0.05


def test_the_transform_makes_the_views(indexed_dir: Path) -> None:
    # Padding 0 and a sure flip: both views of every image are exactly its mirror image.
    mirror = CropFlip(padding=0, flip_prob=1.0, num_views=2)
    dm = _dm(
        indexed_dir,
        num_labels=40,
        labeled_batch_size=8,
        unlabeled_batch_size=32,
        val_split=0,
        transform=mirror,
    )
    assert dm.transform is mirror
    batch = dm.on_after_batch_transfer(_raw_epoch(dm)[0], 0)
    for name in ("labeled", "unlabeled"):
        student, teacher, _ = batch[name]
        images = torch.from_numpy(_indexed_images(decode_indices(student).numpy())).float()
        assert torch.equal(_unnormalize(student), images.flip(-1))
        assert torch.equal(_unnormalize(teacher), images.flip(-1))


def test_views_are_keyed_by_stream_epoch_and_sample(indexed_dir: Path) -> None:
    dm = _dm(
        indexed_dir,
        num_labels=40,
        labeled_batch_size=8,
        unlabeled_batch_size=32,
        val_split=0,
        view_seed=4,
    )
    raw = _raw_epoch(dm)[0]["unlabeled"]
    views = dm.stream_views(raw, "unlabeled")
    assert len(views) == 3 and torch.equal(views[2], raw[1])
    # The same keyed batch gives the same views: they are recomputable.
    again = dm.stream_views([t.clone() if isinstance(t, Tensor) else t for t in raw], "unlabeled")
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    # The labeled stream has its own keys: the same images and sample indices get other views
    # there (a labeled image is also in the unlabeled stream by default).
    as_labeled = dm.stream_views(raw, "labeled")
    assert not torch.equal(as_labeled[0], views[0]) and not torch.equal(as_labeled[1], views[1])
    # Another epoch or another view_seed: other views.
    next_epoch = dm.stream_views([*raw[:4], 1], "unlabeled")
    assert not torch.equal(next_epoch[0], views[0])
    other_seed = _dm(
        indexed_dir,
        num_labels=40,
        labeled_batch_size=8,
        unlabeled_batch_size=32,
        val_split=0,
        view_seed=5,
    )
    assert not torch.equal(other_seed.stream_views(raw, "unlabeled")[0], views[0])


def test_order_seed_is_view_seed_from_seed_and_run_seed(
    indexed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs: dict[str, Any] = {
        "num_labels": 40,
        "labeled_batch_size": 8,
        "unlabeled_batch_size": 32,
        "val_split": 0,
    }

    def order(dm: SemiSupervisedDataModule) -> Tensor:
        return torch.cat([raw["unlabeled"][2] for raw in _raw_epoch(dm)])

    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    dm = _dm(indexed_dir, **kwargs)
    loader = dm.train_dataloader()
    assert all(dl.sampler.seed == dm.view_seed for dl in loader.iterables.values())
    assert all(isinstance(dl, ResumableDataLoader) for dl in loader.iterables.values())
    first = order(dm)
    assert torch.equal(order(_dm(indexed_dir, **kwargs)), first)  # the same run seed
    # Every process of a run shares PL_GLOBAL_SEED (seed_everything), hence the order; another
    # run seed or split seed gives another order.
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")
    assert not torch.equal(order(_dm(indexed_dir, **kwargs)), first)
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    assert not torch.equal(order(_dm(indexed_dir, seed=1, **kwargs)), first)
    # An explicit view_seed decides alone.
    fixed = _dm(indexed_dir, view_seed=9, **kwargs)
    fixed_order = order(fixed)
    assert not torch.equal(fixed_order, first)
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    assert fixed.view_seed == 9 and torch.equal(order(fixed), fixed_order)


def test_streams_reshuffle_per_pass_and_per_epoch(indexed_dir: Path) -> None:
    dm = _dm(indexed_dir, num_labels=40, labeled_batch_size=8, unlabeled_batch_size=32, val_split=0)
    loader = dm.train_dataloader()
    samplers = {name: dl.sampler for name, dl in loader.iterables.items()}
    assert all(isinstance(s, CyclingDistributedSampler) for s in samplers.values())
    epoch0 = [torch.stack([b[0][n][0] for b in loader]) for n in ("labeled", "unlabeled")]
    again = [torch.stack([b[0][n][0] for b in loader]) for n in ("labeled", "unlabeled")]
    assert all(torch.equal(a, b) for a, b in zip(epoch0, again, strict=True))  # deterministic
    for sampler in samplers.values():
        sampler.set_epoch(1)
    epoch1_batches = [b[0] for b in loader]
    assert {b[n][4] for b in epoch1_batches for n in ("labeled", "unlabeled")} == {1}
    epoch1 = [torch.stack([b[n][0] for b in epoch1_batches]) for n in ("labeled", "unlabeled")]
    assert not any(torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))

    # Labeled passes are fresh permutations: 2.4 passes of 40 in 96 draws.
    stream = CyclingDistributedSampler(_range_dataset(40), batch_size=8, num_batches=12, salt=1)
    positions, passes, epoch = _decode(list(stream), 40)
    assert len(stream) == 96 == positions.numel() and epoch == 0
    assert torch.equal(passes, torch.tensor([0] * 40 + [1] * 40 + [2] * 16))
    first, second = positions[:40], positions[40:80]
    assert torch.equal(first.sort().values, torch.arange(40))
    assert torch.equal(second.sort().values, torch.arange(40))
    assert not torch.equal(first, second)
    assert positions[80:].unique().numel() == 16  # the partial third pass repeats nothing
    # Another salt (the other stream) orders the same set differently.
    other = CyclingDistributedSampler(_range_dataset(40), batch_size=8, num_batches=12, salt=2)
    assert not torch.equal(_decode(list(other), 40)[0], positions)
    # set_epoch: a new order, and keys that say their epoch.
    stream.set_epoch(3)
    positions3, _, epoch3 = _decode(list(stream), 40)
    assert epoch3 == 3 and not torch.equal(positions3, positions)


def test_sampler_shards_two_ranks() -> None:
    def ranks(n: int, batch_size: int, num_batches: int) -> list[Tensor]:
        """Each rank's positions for epoch 0, shaped (num_batches, batch_size)."""
        out = []
        for rank in (0, 1):
            sampler = CyclingDistributedSampler(
                _range_dataset(n),
                batch_size=batch_size,
                num_batches=num_batches,
                num_replicas=2,
                rank=rank,
                seed=5,
            )
            assert len(sampler) == num_batches * batch_size
            positions, _, _ = _decode(list(sampler), n)
            out.append(positions.view(num_batches, batch_size))
        return out

    # One pass (unlabeled stream): the ranks' epochs are disjoint.
    r0, r1 = ranks(200, 16, 200 // 32)
    assert r0.shape == r1.shape == (6, 16)
    assert torch.cat([r0, r1]).unique().numel() == 192
    # Several passes (labeled stream): every step's draws are distinct images over both
    # ranks, and the first 5 steps (one pass of 40) cover the set once.
    r0, r1 = ranks(40, 4, 12)
    steps = torch.cat([r0, r1], dim=1)  # (12, 8)
    assert all(step.unique().numel() == 8 for step in steps)
    assert torch.equal(steps[:5].flatten().sort().values, torch.arange(40))
    # The ranks' shards are blocks of one global stream that both compute alone.
    sampler = CyclingDistributedSampler(
        _range_dataset(40), batch_size=4, num_batches=12, num_replicas=2, seed=5
    )
    stream = sampler.global_stream()  # (12, 2, 4) keys
    assert stream.shape == (12, 2, 4)
    assert torch.equal(_decode(stream.flatten(), 40)[0].view(12, 8), steps)

    with pytest.raises(ValueError, match="has 7 images, fewer than one global step of batch_size"):
        CyclingDistributedSampler(_range_dataset(7), batch_size=4, num_batches=1, num_replicas=2)
    with pytest.raises(ValueError, match="got num_replicas=2, rank=2"):
        CyclingDistributedSampler(
            _range_dataset(8), batch_size=4, num_batches=1, num_replicas=2, rank=2
        )


# --------------------------------------------------------------------------- evaluation batches
def test_eval_batches_match_cifar10_datamodule(cifar10_dir: Path) -> None:
    # The same count and seed hold out the same images in both DataModules (what a supervised
    # baseline on an SSL split file, ``labeled_split_file``, relies on).
    dm = _dm(cifar10_dir, num_labels=40, eval_batch_size=25, channels_last=True, val_split=50)
    ref = CIFAR10DataModule(data_dir=str(cifar10_dir), batch_size=25, val_split=50)
    ref.setup("fit")
    for loader, ref_loader in ((dm.val_dataloader(), ref.val_dataloader()),):
        x, y = dm.on_after_batch_transfer(next(iter(loader)), 0)
        rx, ry = ref.on_after_batch_transfer(next(iter(ref_loader)), 0)
        assert x.shape == (25, 3, 32, 32) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x, rx)
        assert torch.equal(y, ry)
    test_dm = CIFAR10SSLDataModule(data_dir=str(cifar10_dir), eval_batch_size=100)
    test_dm.setup("test")  # the default val_split=5000 does not matter to "test"
    ref.setup("test")  # "fit" read only the training files
    assert test_dm.labeled_dataset is None  # test/predict do not build the training split
    for loader in (test_dm.test_dataloader(), test_dm.predict_dataloader()):
        batches = list(loader)
        assert len(batches) == 1
        x, y = test_dm.on_after_batch_transfer(batches[0], 0)
        rx, ry = ref.on_after_batch_transfer(next(iter(ref.test_dataloader())), 0)
        torch.testing.assert_close(x[:25], rx)
        assert torch.equal(y, torch.arange(100) % 10)
    with pytest.raises(ValueError, match="keys 'labeled' and 'unlabeled', got \\['x'\\]"):
        dm.on_after_batch_transfer({"x": [torch.zeros(1)]}, 0)


# --------------------------------------------------------------------------- with a Trainer
class _Recorder(pl.LightningModule):
    """Records the decoded indices of every training step and the shapes of val batches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.unlabeled: dict[int, list[Tensor]] = {}
        self.val_shapes: list[tuple[int, ...]] = []

    def training_step(self, batch: dict[str, list[Tensor]], batch_idx: int) -> Tensor:
        assert [len(batch["labeled"]), len(batch["unlabeled"])] == [3, 3]
        idx = decode_indices(batch["unlabeled"][0])
        self.unlabeled.setdefault(self.current_epoch, []).append(idx)
        return (self.weight**2).sum()

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        assert batch[0].dtype == torch.float32
        self.val_shapes.append(tuple(batch[0].shape))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_runs_the_hook_and_sets_the_epoch(indexed_dir: Path) -> None:
    dm = CIFAR10SSLDataModule(
        data_dir=str(indexed_dir),
        num_labels=40,
        labeled_batch_size=8,
        unlabeled_batch_size=32,
        eval_batch_size=50,
        val_split=0,  # all 200 images in the pool; validation = the 100 test images
    )
    module = _Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 * (200 // 32)
    assert [len(module.unlabeled[e]) for e in (0, 1)] == [6, 6]
    epochs = [torch.cat(module.unlabeled[e]) for e in (0, 1)]
    assert all(e.unique().numel() == 192 for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])  # Lightning called set_epoch
    assert module.val_shapes == [(50, 3, 32, 32)] * 2


def test_ddp_two_processes_shard_both_streams(indexed_5200_dir: Path, tmp_path: Path) -> None:
    # ssl_ddp_script.py builds the DataModule with the default val_split=5000, so both ranks
    # must hold out the same 5,000 images; the pool left for training has 200.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "ssl_ddp_script.py"), str(indexed_5200_dir), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    labeled_set = ranks[0]["labeled_indices"]
    assert torch.equal(ranks[1]["labeled_indices"], labeled_set)  # same split on both ranks
    reference = _dm(indexed_5200_dir, num_labels=40)  # the script's split, in this process
    assert reference.val_indices is not None and reference.val_indices.numel() == 5000
    assert torch.equal(labeled_set, _labels_of(reference))
    pool = set(range(5200)) - set(reference.val_indices.tolist())
    for rank in ranks:
        # 2 epochs x 200 // (2 ranks x 16) = 6 steps; labeled 4 per step.
        assert rank["unlabeled_student"].shape == (2, 6, 16)
        assert rank["labeled_student"].shape == (2, 6, 4)
        for name in ("labeled", "unlabeled"):
            assert torch.equal(rank[f"{name}_teacher"], rank[f"{name}_student"])
            assert torch.equal(rank[f"{name}_labels"], rank[f"{name}_student"] % 10)
        assert set(rank["labeled_student"].flatten().tolist()) <= set(labeled_set.tolist())
        assert set(rank["unlabeled_student"].flatten().tolist()) <= pool
    for epoch in (0, 1):
        # Unlabeled: the two ranks' epochs are disjoint (192 distinct of the 200-image pool).
        u = torch.cat([r["unlabeled_student"][epoch].flatten() for r in ranks])
        assert u.unique().numel() == 192
        # Labeled: every step's 2 x 4 draws are distinct; the first 5 steps are one pass.
        steps = torch.cat([r["labeled_student"][epoch] for r in ranks], dim=1)  # (6, 8)
        assert all(step.unique().numel() == 8 for step in steps)
        assert torch.equal(steps[:5].flatten().sort().values, labeled_set)
    # New epoch, new order on each rank.
    for rank in ranks:
        assert not torch.equal(rank["unlabeled_student"][0], rank["unlabeled_student"][1])


def test_worker_processes_give_the_same_batches(indexed_dir: Path) -> None:
    kwargs: dict[str, Any] = {
        "num_labels": 40,
        "labeled_batch_size": 8,
        "unlabeled_batch_size": 32,
        "val_split": 0,
    }
    in_process = _dm(indexed_dir, **kwargs).train_dataloader()
    workers = _dm(indexed_dir, num_workers=1, **kwargs).train_dataloader()
    for (a, _, _), (b, _, _) in zip(in_process, workers, strict=True):
        for name in ("labeled", "unlabeled"):
            images, targets, samples, positions, epoch = b[name]
            assert torch.equal(a[name][0], images) and torch.equal(a[name][1], targets)
            assert torch.equal(a[name][2], samples) and torch.equal(a[name][3], positions)
            assert a[name][4] == epoch == 0


def test_jsonargparse_builds_the_datamodule(indexed_dir: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(CIFAR100SSLDataModule, "data")
    cfg = parser.parse_args(
        [
            f"--data.data_dir={indexed_dir}",
            "--data.num_labels=10000",
            "--data.split_file=s.json",
            "--data.view_seed=5",
            '--data.transform={"class_path": "lightning_kd.data.CropFlip", '
            '"init_args": {"padding": 2, "num_views": 2}}',
        ]
    )
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, CIFAR100SSLDataModule) and dm.num_classes == 100
    assert dm.split_file == "s.json" and dm.hparams["num_labels"] == 10000
    assert dm.view_seed == 5 and dm.hparams["view_seed"] == 5
    assert isinstance(dm.transform, CropFlip) and dm.transform.padding == 2
    assert "transform" not in dm.hparams  # recorded by the CLI config, not the hparams
