"""Tests for lightning_kd.data: CIFAR readers and DataModules, crop/flip, image folders.

Keyed randomness, views across batch sizes and processes, and exact resume are tested in
``test_reproducible_data.py``; the multi-view transforms in ``test_views.py``.
"""

from __future__ import annotations

import inspect
import pickle
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_data import fake_images, write_fake_cifar10, write_image_folder
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms

from lightning_kd.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CropFlip,
    ImageDataModule,
    ImageFolderDataModule,
    MultiCropViews,
    SampleKeys,
    TensorImageDataset,
    TwoViews,
    collate_batch,
    normalize,
)
from lightning_kd.data.cifar_files import CIFAR10_LAYOUT, read_cifar_split, resolve_cifar_dir
from lightning_kd.data.ops import crop_flip
from lightning_kd.data.splits import class_balanced_subset, write_split_file


def _image_keys(images: Tensor) -> list[bytes]:
    """One hashable key per image ``(N, C, H, W)``."""
    return [img.numpy().tobytes() for img in images]


def _fit_dm(data_dir: Path, **kwargs: object) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data_dir=str(data_dir), **kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def _rewrite(path: Path, **changes: object) -> None:
    """Load a pickle, change some entries, write it back."""
    with path.open("rb") as f:
        content = pickle.load(f)
    content.update(changes)
    with path.open("wb") as f:
        pickle.dump(content, f)


@pytest.fixture
def cifar10_copy(tmp_path: Path) -> Path:
    """A private fake CIFAR-10 (parent folder) that a test may damage."""
    write_fake_cifar10(tmp_path, n_train_per_batch=40, n_test=100, seed=0)
    return tmp_path


# --------------------------------------------------------------------------- reading files
def test_read_cifar10_layout_exact_pixels_and_labels(cifar10_dir: Path) -> None:
    folder = resolve_cifar_dir(cifar10_dir, CIFAR10_LAYOUT)
    images, targets = read_cifar_split(folder, CIFAR10_LAYOUT, train=True)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    assert targets.dtype == torch.int64
    labels = np.arange(200) % 10
    assert torch.equal(targets, torch.from_numpy(labels))
    assert torch.equal(images, torch.from_numpy(fake_images(labels, 10, size=32, seed=0)))

    test_images, test_targets = read_cifar_split(folder, CIFAR10_LAYOUT, train=False)
    assert test_images.shape == (100, 3, 32, 32)
    assert torch.equal(test_targets, torch.arange(100) % 10)


def test_cifar10_datamodule_sizes_and_class_names(cifar10_dir: Path) -> None:
    dm = _fit_dm(cifar10_dir, batch_size=32, val_split=0)
    assert dm.num_classes == 10
    assert dm.class_names[0] == "airplane" and dm.class_names[9] == "truck"
    assert isinstance(dm.train_dataset, TensorImageDataset) and len(dm.train_dataset) == 200
    # val_split=0 validates on the test split.
    assert dm.val_dataset is dm.test_dataset
    assert dm.val_dataset is not None and len(dm.val_dataset) == 100
    assert torch.equal(torch.bincount(dm.train_dataset.targets), torch.full((10,), 20))


def test_cifar100_reads_fine_labels(cifar100_dir: Path) -> None:
    dm = CIFAR100DataModule(data_dir=str(cifar100_dir), batch_size=50, val_split=0)
    dm.setup("fit")
    assert dm.num_classes == 100
    assert dm.mean == CIFAR100_MEAN and dm.std == CIFAR100_STD
    assert dm.class_names[:2] == ["fine_0", "fine_1"] and len(dm.class_names) == 100
    assert isinstance(dm.train_dataset, TensorImageDataset)
    assert torch.equal(dm.train_dataset.targets, torch.arange(300) % 100)
    dm.setup("test")
    assert dm.test_dataset is not None and len(dm.test_dataset) == 100
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (50, 3, 32, 32) and torch.equal(targets, torch.arange(50))


def test_data_dir_parent_or_batches_folder(cifar10_dir: Path) -> None:
    parent = _fit_dm(cifar10_dir)
    direct = _fit_dm(cifar10_dir / "cifar-10-batches-py")
    assert isinstance(parent.train_dataset, TensorImageDataset)
    assert isinstance(direct.train_dataset, TensorImageDataset)
    assert torch.equal(parent.train_dataset.images, direct.train_dataset.images)


def test_num_classes_without_data() -> None:
    assert CIFAR10DataModule().num_classes == 10
    assert CIFAR100DataModule().num_classes == 100
    with pytest.raises(TypeError, match="ImageDataModule is abstract"):
        ImageDataModule()


# --------------------------------------------------------------------------- file errors
def test_missing_data_says_where_and_how(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / "data_batch_1") in msg
    assert str(tmp_path / "nowhere" / "data_batch_1") in msg
    assert "download=True" in msg and "does not exist" in msg


def test_folder_of_pngs_is_rejected(image_folder_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(image_folder_dir / "train" / "cat"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "cat_0.png" in msg and "ImageFolderDataModule" in msg


def test_incomplete_folder_names_missing_file(cifar10_copy: Path) -> None:
    (cifar10_copy / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch"):
        _fit_dm(cifar10_copy)


def test_bad_label_names_file_and_label(cifar10_copy: Path) -> None:
    path = cifar10_copy / "cifar-10-batches-py" / "data_batch_3"
    _rewrite(path, labels=[0] * 39 + [10])
    with pytest.raises(ValueError) as info:
        _fit_dm(cifar10_copy)
    msg = str(info.value)
    assert str(path) in msg and "label 10 at index 39" in msg and "[0, 10)" in msg


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"data": np.zeros((40, 3000), dtype=np.uint8)}, r"shape \(N, 3072\).*got \(40, 3000\)"),
        ({"data": np.zeros((40, 3072), dtype=np.float32)}, "dtype uint8, got float32"),
        ({"labels": [0] * 39}, "40 images but 'labels' has shape"),
        ({"data": [[0] * 3072] * 40}, "numpy array, got list"),
    ],
)
def test_bad_batch_contents(cifar10_copy: Path, changes: dict[str, object], expected: str) -> None:
    path = cifar10_copy / "cifar-10-batches-py" / "data_batch_2"
    _rewrite(path, **changes)
    with pytest.raises(ValueError, match=expected) as info:
        _fit_dm(cifar10_copy)
    assert "data_batch_2" in str(info.value)


def test_unpicklable_file(cifar10_copy: Path) -> None:
    (cifar10_copy / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x89PNG\r\n\x1a\nxxxx")
    with pytest.raises(ValueError, match="data_batch_1 is not a readable CIFAR pickle"):
        _fit_dm(cifar10_copy)


def test_bad_meta(cifar10_copy: Path) -> None:
    _rewrite(cifar10_copy / "cifar-10-batches-py" / "batches.meta", label_names=["a"] * 9)
    dm = CIFAR10DataModule(data_dir=str(cifar10_copy))
    with pytest.raises(ValueError, match="should list 10 class names, got 9 entries"):
        _ = dm.class_names


@pytest.mark.parametrize(
    ("kwargs", "error", "expected"),
    [
        ({"val_split": 1.5}, ValueError, r"in \[0, 1\), got 1.5"),
        ({"val_split": -1}, ValueError, "must be >= 0, got -1"),
        ({"val_split": "0.1"}, TypeError, "got '0.1'"),
        ({"val_split": True}, TypeError, "got True"),
        ({"transform": "crop"}, TypeError, "must be a lightning_kd.data.transforms.BatchTransform"),
        ({"view_seed": -1}, ValueError, "view_seed must be >= 0 or None, got -1"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"train_subset": 0}, ValueError, "train_subset must be >= 1 or None, got 0"),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], error: type, expected: str) -> None:
    with pytest.raises(error, match=expected):
        CIFAR10DataModule(**kwargs)  # type: ignore[arg-type]


def test_setup_errors_that_need_the_data(cifar10_dir: Path) -> None:
    with pytest.raises(ValueError, match="holds out 200 of 200"):
        _fit_dm(cifar10_dir, val_split=200)
    with pytest.raises(ValueError, match="holds out no image of 200"):
        _fit_dm(cifar10_dir, val_split=0.001)
    with pytest.raises(ValueError, match="train_subset=300 is larger than the 200"):
        _fit_dm(cifar10_dir, train_subset=300, val_split=0)
    with pytest.raises(ValueError, match="train_subset=190 is larger than the 180"):
        _fit_dm(cifar10_dir, train_subset=190)  # the default 10% validation split left 180
    dm = _fit_dm(cifar10_dir, batch_size=256, val_split=0)
    with pytest.raises(ValueError, match=r"200 images \(200 per process\), fewer than batch_size"):
        dm.train_dataloader()
    dm = _fit_dm(cifar10_dir, batch_size=256, val_split=0, drop_last=False)
    assert len(dm.train_dataloader()) == 1


# --------------------------------------------------------------------------- splits
@pytest.mark.parametrize(("val_split", "n_val"), [(50, 50), (0.25, 50), (0.1, 20)])
def test_val_split_sizes_disjoint_and_seeded(
    cifar10_dir: Path, val_split: float, n_val: int
) -> None:
    dm = _fit_dm(cifar10_dir, val_split=val_split, seed=3)
    train, val = dm.train_dataset, dm.val_dataset
    assert isinstance(train, TensorImageDataset) and isinstance(val, TensorImageDataset)
    assert len(val) == n_val and len(train) == 200 - n_val
    train_keys, val_keys = set(_image_keys(train.images)), set(_image_keys(val.images))
    assert not train_keys & val_keys
    full = resolve_cifar_dir(cifar10_dir, CIFAR10_LAYOUT)
    assert train_keys | val_keys == set(
        _image_keys(read_cifar_split(full, CIFAR10_LAYOUT, train=True)[0])
    )

    again = _fit_dm(cifar10_dir, val_split=val_split, seed=3).val_dataset
    other = _fit_dm(cifar10_dir, val_split=val_split, seed=4).val_dataset
    assert isinstance(again, TensorImageDataset) and isinstance(other, TensorImageDataset)
    assert torch.equal(again.images, val.images)
    assert not torch.equal(other.images, val.images)


def test_default_holds_out_ten_percent_of_the_training_images(cifar10_dir: Path) -> None:
    assert inspect.signature(CIFAR10DataModule).parameters["val_split"].default == 0.1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = _fit_dm(cifar10_dir)
    assert not [w for w in caught if "val_split=0" in str(w.message)]
    assert not dm.validates_on_test
    train, val = dm.train_dataset, dm.val_dataset
    assert isinstance(train, TensorImageDataset) and isinstance(val, TensorImageDataset)
    assert len(val) == 20 and len(train) == 180
    train_keys, val_keys = set(_image_keys(train.images)), set(_image_keys(val.images))
    assert len(val_keys) == 20 and not train_keys & val_keys
    folder = resolve_cifar_dir(cifar10_dir, CIFAR10_LAYOUT)
    all_images, _ = read_cifar_split(folder, CIFAR10_LAYOUT, train=True)
    assert train_keys | val_keys == set(_image_keys(all_images))
    assert dm.test_dataset is None  # fit does not read the test split
    dm.setup("test")
    assert dm.test_dataset is not None and dm.val_dataset is val


@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_val_split_zero_warns_once_and_validates_on_test(
    cifar10_dir: Path, cifar100_dir: Path, cls: type[ImageDataModule]
) -> None:
    data_dir = cifar10_dir if cls is CIFAR10DataModule else cifar100_dir
    dm = cls(data_dir=str(data_dir), val_split=0)
    assert dm.validates_on_test
    with pytest.warns(UserWarning, match="test split") as record:
        dm.setup("fit")
        dm.setup("validate")
        dm.setup("fit")
    messages = [str(w.message) for w in record if "val_split=0" in str(w.message)]
    assert len(messages) == 1
    assert f"{dm.layout.name} test split" in messages[0] and "val_on_test/" in messages[0]
    assert dm.test_dataset is not None and dm.val_dataset is dm.test_dataset
    assert isinstance(dm.train_dataset, TensorImageDataset)
    assert len(dm.train_dataset) == (200 if cls is CIFAR10DataModule else 300)
    # A float 0 means the same; test alone does not warn.
    assert cls(data_dir=str(data_dir), val_split=0.0).validates_on_test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls(data_dir=str(data_dir), val_split=0).setup("test")
    assert not [w for w in caught if "val_split=0" in str(w.message)]


def test_train_subset_is_class_balanced_and_seeded(cifar10_dir: Path) -> None:
    dm = _fit_dm(cifar10_dir, train_subset=50, val_split=40, seed=1)
    train, val = dm.train_dataset, dm.val_dataset
    assert isinstance(train, TensorImageDataset) and isinstance(val, TensorImageDataset)
    assert len(train) == 50 and len(val) == 40  # subset drawn from what val left over
    assert torch.equal(torch.bincount(train.targets, minlength=10), torch.full((10,), 5))
    assert not set(_image_keys(train.images)) & set(_image_keys(val.images))

    uneven = _fit_dm(cifar10_dir, train_subset=55, seed=1).train_dataset
    assert isinstance(uneven, TensorImageDataset)
    counts = torch.bincount(uneven.targets, minlength=10)
    assert sorted(counts.tolist()) == [5] * 5 + [6] * 5

    same = _fit_dm(cifar10_dir, train_subset=50, val_split=40, seed=1).train_dataset
    other = _fit_dm(cifar10_dir, train_subset=50, val_split=40, seed=2).train_dataset
    assert isinstance(same, TensorImageDataset) and isinstance(other, TensorImageDataset)
    assert torch.equal(same.images, train.images)
    assert not torch.equal(other.images, train.images)


def test_class_balanced_subset_rejects_short_class() -> None:
    targets = torch.tensor([0] * 10 + [1] * 2)
    with pytest.raises(ValueError, match="needs 4 images of class 1, but only 2"):
        class_balanced_subset(targets, 8, 2, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- batch augmentation
def _find_windows(out: Tensor, image: Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """All (dy, dx, flipped) whose window of the zero-padded image equals ``out``."""
    padded = F.pad(image, (padding,) * 4)
    size = image.shape[-1]
    found = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy : dy + size, dx : dx + size]
            for flipped in (False, True):
                if torch.equal(out, window.flip(-1) if flipped else window):
                    found.append((dy, dx, flipped))
    return found


def test_crop_flip_is_a_window_of_the_padded_input() -> None:
    images = torch.randint(
        0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    keys = SampleKeys(1, 0, torch.arange(64))
    (out,) = CropFlip()(images, keys)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
    params = []
    for i in range(64):
        matches = _find_windows(out[i], images[i], padding=4)
        assert len(matches) == 1, f"sample {i}: {matches}"
        params.append(matches[0])
    flips = [p[2] for p in params]
    assert 10 < sum(flips) < 54  # about half flipped
    offsets = {(p[0], p[1]) for p in params}
    assert len(offsets) > 20  # per-sample offsets, not one per batch
    assert {p[0] for p in params} >= {0, 8} or {p[1] for p in params} >= {0, 8}
    # The window is the keyed draw: crop_flip with the same parameters gives the same output.
    u = keys.uniform(0, 3)  # view 0's stream: dy, dx, flip
    offsets_t = (u[:, :2] * 9).long()
    flip_t = u[:, 2] < 0.5
    assert torch.equal(crop_flip(images, offsets_t, flip_t, padding=4), out)
    drawn = [(int(o[0]), int(o[1]), bool(f)) for o, f in zip(offsets_t, flip_t, strict=True)]
    assert drawn == params


def test_crop_flip_views_padding_zero_and_errors() -> None:
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    keys = SampleKeys(5, 0, torch.arange(32))
    first, second = CropFlip(num_views=2)(images, keys)
    assert not torch.equal(first, second)  # the two views draw on their own streams
    assert torch.equal(CropFlip(num_views=2)(images, keys)[1], second)

    (flipped_only,) = CropFlip(padding=0)(images, keys)
    is_same = (flipped_only == images).flatten(1).all(1)
    is_flip = (flipped_only == images.flip(-1)).flatten(1).all(1)
    assert bool((is_same | is_flip).all()) and is_same.any() and is_flip.any()
    (never,) = CropFlip(padding=0, flip_prob=0.0)(images, keys)
    assert torch.equal(never, images)
    with pytest.raises(ValueError, match="padding must be an int >= 0, got -1"):
        CropFlip(padding=-1)
    with pytest.raises(ValueError, match="num_views must be an int >= 1"):
        CropFlip(num_views=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(3, 8, 8\)"):
        CropFlip()(images[0], keys)
    with pytest.raises(ValueError, match="32 images but 4 sample keys"):
        CropFlip()(images, SampleKeys(0, 0, torch.arange(4)))
    with pytest.raises(TypeError, match="expects uint8 images"):
        CropFlip()(images.float(), keys)
    with pytest.raises(ValueError, match=r"offsets must be \(32, 2\)"):
        crop_flip(images, torch.zeros(3, 2, dtype=torch.long), torch.zeros(32).bool(), padding=1)


def test_normalize_known_values() -> None:
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    zeros = normalize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    assert zeros.dtype == torch.float32
    torch.testing.assert_close(zeros[1, :, 2, 3], -mean / std)
    full = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(full[0, :, 0, 0], (1 - mean) / std)

    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    pil = transforms.ToPILImage()(image[0])
    reference = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)(transforms.ToTensor()(pil))
    torch.testing.assert_close(normalize(image, CIFAR10_MEAN, CIFAR10_STD)[0], reference)

    cl = normalize(image.contiguous(memory_format=torch.channels_last), CIFAR10_MEAN, CIFAR10_STD)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="4 channels but mean/std have 3"):
        normalize(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ValueError, match="std must be > 0"):
        normalize(image, CIFAR10_MEAN, (0.2, 0.0, 0.2))


# --------------------------------------------------------------------------- batch hook
def test_on_after_batch_transfer_eval_and_train(cifar10_dir: Path) -> None:
    dm = _fit_dm(cifar10_dir, batch_size=32, channels_last=True, val_split=0)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))  # keyed: images, targets, samples, positions, epoch
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (32, 3, 32, 32) and raw[4] == 0

    # No trainer attached: evaluation, deterministic.
    eval_a = dm.on_after_batch_transfer(list(raw), 0)
    eval_b = dm.on_after_batch_transfer(list(raw), 0)
    assert len(eval_a) == 2
    assert torch.equal(eval_a[0], eval_b[0])
    torch.testing.assert_close(eval_a[0], normalize(raw[0], CIFAR10_MEAN, CIFAR10_STD))
    assert eval_a[0].is_contiguous(memory_format=torch.channels_last)
    assert eval_a[1].dtype == torch.int64 and torch.equal(eval_a[1], raw[1])

    dm.trainer = SimpleNamespace(training=True)  # type: ignore[assignment]
    train = dm.on_after_batch_transfer(list(raw), 0)
    assert len(train) == 2
    assert train[0].dtype == torch.float32 and train[0].shape == (32, 3, 32, 32)
    assert train[0].is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(train[0], eval_a[0])
    assert torch.equal(train[1], raw[1])
    # Undoing the normalisation gives integer pixels: crop/flip ran on uint8, then normalise.
    pixels = (
        train[0] * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        + torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    ) * 255
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-3, rtol=0)
    assert len(_find_windows(pixels[0].round().to(torch.uint8), raw[0][0], padding=4)) == 1
    # The augmentation is a function of the batch's keys, not of any global state.
    torch.manual_seed(123)
    assert torch.equal(dm.on_after_batch_transfer(list(raw), 0)[0], train[0])
    later = [*raw[:4], 1]  # the same images in epoch 1
    assert not torch.equal(dm.on_after_batch_transfer(later, 0)[0], train[0])


class _RecordingModel(pl.LightningModule):
    """Tiny classifier that records what its steps receive."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        self.seen: dict[str, list[Tensor]] = {"train": [], "val": []}

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        self.seen["train"].append(batch[0].detach().clone())
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.seen["val"].append(batch[0].detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_uses_the_datamodule_hook(cifar10_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar10_dir), batch_size=50, eval_batch_size=20)
    model = _RecordingModel()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.seen["train"]) == 2 and len(model.seen["val"]) == 1
    assert all(x.dtype == torch.float32 and x.shape == (50, 3, 32, 32) for x in model.seen["train"])
    # The fake pixels are never 0, so 0 after un-normalising can only be crop padding: training
    # batches were augmented (offsets off-centre for 80 of 81 draws), validation ones were not.
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    train_pixels = ((torch.cat(model.seen["train"]) * std + mean) * 255).round()
    val_pixels = ((model.seen["val"][0] * std + mean) * 255).round()
    assert (train_pixels == 0).flatten(1).any(1).float().mean() > 0.8
    assert not (val_pixels == 0).any()
    # Validation = the 20 held-out training images (default val_split=0.1), in order, only
    # normalised; fit never read the test split.
    assert isinstance(dm.val_dataset, TensorImageDataset) and len(dm.val_dataset) == 20
    expected = normalize(dm.val_dataset.images, CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(model.seen["val"][0], expected)
    assert dm.test_dataset is None


# --------------------------------------------------------------------------- loaders
def test_fast_path_with_worker_processes(cifar10_dir: Path) -> None:
    pickle.dumps(collate_batch)
    dm = _fit_dm(cifar10_dir, batch_size=64, num_workers=2, drop_last=False, val_split=0)
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [64, 64, 64, 8]
    assert all(b[0].dtype == torch.uint8 for b in batches)
    targets = torch.cat([b[1] for b in batches])
    assert torch.equal(torch.bincount(targets), torch.full((10,), 20))
    # Workers do not change the keyed order: the same sample indices as in-process loading.
    single = _fit_dm(cifar10_dir, batch_size=64, drop_last=False, val_split=0)
    assert [b[2].tolist() for b in single.train_dataloader()] == [b[2].tolist() for b in batches]


def test_training_loader_shards_over_the_trainer_world(cifar10_dir: Path) -> None:
    dm = _fit_dm(cifar10_dir, batch_size=20, val_split=0)  # 100 images, 5 full batches a rank
    shards = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # type: ignore[assignment]
        loader = dm.train_dataloader()
        assert loader.collate_fn is collate_batch
        images = torch.cat([b[0] for b in loader])
        assert images.shape == (100, 3, 32, 32)
        shards.append(set(_image_keys(images)))
    assert not shards[0] & shards[1]
    assert dm.train_dataset is not None
    assert shards[0] | shards[1] == set(_image_keys(dm.train_dataset.images))


def test_collate_accepts_samples_list() -> None:
    dataset = TensorImageDataset(
        torch.zeros(3, 3, 4, 4, dtype=torch.uint8),
        torch.arange(3),
        file_indices=torch.tensor([7, 8, 9]),
    )
    images, targets, samples, positions, epoch = collate_batch([dataset[k] for k in range(3)])
    assert images.shape == (3, 3, 4, 4) and torch.equal(targets, torch.arange(3))
    assert torch.equal(samples, torch.tensor([7, 8, 9])) and torch.equal(positions, torch.arange(3))
    assert epoch == 0


# --------------------------------------------------------------------------- download
def test_download_uses_torchvision_only_when_missing(
    tmp_path: Path, cifar10_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download
            calls.append((root, train))
            write_fake_cifar10(root, n_train_per_batch=4, n_test=10)

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    present = CIFAR10DataModule(data_dir=str(cifar10_dir), download=True)
    present.prepare_data()
    assert calls == []

    target = tmp_path / "cifar-10-batches-py"  # the batches folder itself, not there yet
    dm = CIFAR10DataModule(data_dir=str(target), download=True, batch_size=4)
    dm.prepare_data()
    assert calls == [(str(tmp_path), True), (str(tmp_path), False)]
    dm.setup("fit")  # 20 downloaded training images, 10% of them held out
    assert dm.train_dataset is not None and len(dm.train_dataset) == 18
    assert dm.val_dataset is not None and len(dm.val_dataset) == 2
    dm.setup("test")
    assert dm.test_dataset is not None and len(dm.test_dataset) == 10


# --------------------------------------------------------------------------- CLI construction
def test_jsonargparse_builds_the_datamodule(cifar10_dir: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(CIFAR10DataModule, "data")
    cfg = parser.parse_args(
        [f"--data.data_dir={cifar10_dir}", "--data.val_split=0.1", "--data.view_seed=3"]
    )
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, CIFAR10DataModule) and isinstance(dm.transform, CropFlip)
    assert dm.val_split == 0.1 and dm.view_seed == 3 and dm.hparams["val_split"] == 0.1


# --------------------------------------------------------------------------- image folders
def test_image_folder_datamodule(image_folder_dir: Path) -> None:
    dm = ImageFolderDataModule(
        str(image_folder_dir), batch_size=4, num_workers=0, image_size=32, resize_size=36
    )
    assert dm.num_classes == 3 and dm.classes == ["cat", "dog", "ship"]
    dm.setup("fit")
    assert dm.train_dataset is not None and len(dm.train_dataset) == 12
    assert dm.val_dataset is not None and len(dm.val_dataset) == 6
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert targets.dtype == torch.int64
    val = list(dm.val_dataloader())
    assert [b[0].shape for b in val] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.equal(torch.cat([b[1] for b in val]), torch.tensor([0, 0, 1, 1, 2, 2]))
    # Evaluation is deterministic and normalised with the ImageNet constants.
    again = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(again, val[0][0])
    assert abs(float(val[0][0].mean())) < 3


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*\{train,val\}"):
        _ = ImageFolderDataModule(str(tmp_path / "missing")).num_classes

    write_image_folder(tmp_path / "a", n_train_per_class=1, n_val_per_class=1)
    shutil.rmtree(tmp_path / "a" / "val")
    with pytest.raises(FileNotFoundError, match=r"a/val does not exist"):
        ImageFolderDataModule(str(tmp_path / "a")).setup("fit")

    write_image_folder(tmp_path / "b", n_train_per_class=1, n_val_per_class=1)
    for png in (tmp_path / "b" / "train" / "dog").iterdir():
        png.unlink()
    (tmp_path / "b" / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"class folder .*train/dog holds no image"):
        _ = ImageFolderDataModule(str(tmp_path / "b")).num_classes

    (tmp_path / "c" / "train").mkdir(parents=True)
    (tmp_path / "c" / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        _ = ImageFolderDataModule(str(tmp_path / "c")).num_classes

    write_image_folder(tmp_path / "d", classes=("cat", "dog"), n_train_per_class=1)
    write_image_folder(tmp_path / "e", classes=("cat", "eel"), n_train_per_class=1)
    shutil.rmtree(tmp_path / "d" / "val")
    shutil.copytree(tmp_path / "e" / "val", tmp_path / "d" / "val")
    with pytest.raises(ValueError, match=r"only in train: \['dog'\], only in val: \['eel'\]"):
        _ = ImageFolderDataModule(str(tmp_path / "d")).num_classes

    with pytest.raises(ValueError, match="image_size=64, resize_size=32"):
        ImageFolderDataModule(str(tmp_path), image_size=64, resize_size=32)


# --------------------------------------------------------------------------- multi-view batches
def _unnormalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    return images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def test_cifar_views_batches(cifar10_dir: Path) -> None:
    views = MultiCropViews(num_local=2)
    dm = _fit_dm(
        cifar10_dir,
        batch_size=16,
        transform=views,
        channels_last=True,
        return_indices=True,
        val_split=0,  # validation batches are the test images, known in closed form
    )
    assert "transform" not in dm.hparams and dm.transform is views
    raw = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=True)  # type: ignore[assignment]
    crops, targets, indices = dm.on_after_batch_transfer(raw, 0)
    assert isinstance(crops, list) and len(crops) == views.num_views == 4
    assert [tuple(v.shape) for v in crops] == [(16, 3, 32, 32)] * 2 + [(16, 3, 16, 16)] * 2
    for view in crops:
        assert view.dtype == torch.float32
        assert view.is_contiguous(memory_format=torch.channels_last)
        pixels = _unnormalize(view, CIFAR10_MEAN, CIFAR10_STD)
        assert float(pixels.min()) > -1e-4 and float(pixels.max()) < 1 + 1e-4
    assert not torch.equal(crops[0], crops[1])
    assert targets.dtype == torch.int64 and targets.shape == (16,)
    assert indices.shape == (16,)
    train = dm.train_dataset
    assert train is not None and bool((indices < len(train)).all())
    # The label of each sample is the label of its index.
    assert torch.equal(targets, train.targets[indices])

    # Evaluation batches are unchanged: normalised images, no views.
    dm.trainer = SimpleNamespace(training=False)  # type: ignore[assignment]
    val = next(iter(dm.val_dataloader()))
    images, val_targets = dm.on_after_batch_transfer(val, 0)
    assert isinstance(images, Tensor) and images.shape == (16, 3, 32, 32)
    expected = normalize(
        torch.from_numpy(fake_images(np.arange(16) % 10, 10, size=32, seed=1)),
        CIFAR10_MEAN,
        CIFAR10_STD,
    )
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    assert torch.equal(val_targets, torch.arange(16) % 10)


def test_cifar_views_trainer_fit_and_feature_bank_hook(cifar10_dir: Path) -> None:
    """A real fit: training steps get view lists; a bank batch moved with the strategy's
    batch_to_device at validation start is normalised like the validation batches."""

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))
            self.train_shapes: list[list[tuple[int, ...]]] = []
            self.bank: list[Tensor] = []

        def training_step(self, batch: list[object], batch_idx: int) -> Tensor:
            crops = batch[0]
            assert isinstance(crops, list)
            self.train_shapes.append([tuple(v.shape) for v in crops])
            return sum(self.net(v[:, :, :16, :16]).mean() for v in crops)  # type: ignore[return-value]

        def on_validation_epoch_start(self) -> None:
            loader = self.trainer.datamodule.feature_bank_dataloader()  # type: ignore[attr-defined]
            for batch in loader:
                images, _ = self.trainer.strategy.batch_to_device(batch, dataloader_idx=0)
                self.bank.append(images)

        def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = CIFAR10DataModule(
        data_dir=str(cifar10_dir), batch_size=20, eval_batch_size=64, transform=TwoViews()
    )
    model = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert model.train_shapes == [[(20, 3, 32, 32)] * 2] * 2
    bank = torch.cat(model.bank)
    # The bank is the 180 training images, without the 20 held out for validation.
    assert bank.shape == (180, 3, 32, 32) and bank.dtype == torch.float32
    assert dm.train_dataset is not None and isinstance(dm.train_dataset, TensorImageDataset)
    expected = normalize(dm.train_dataset.images, CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(bank, expected)


def test_cifar_feature_bank_covers_the_train_split_once(cifar10_dir: Path) -> None:
    dm = _fit_dm(
        cifar10_dir,
        batch_size=8,
        eval_batch_size=16,
        val_split=40,
        train_subset=100,
        transform=MultiCropViews(),
        return_indices=True,
    )
    reference = _fit_dm(cifar10_dir, val_split=40, train_subset=100).train_dataset
    assert isinstance(reference, TensorImageDataset)
    shards = []
    for rank in range(2):
        loader = dm.feature_bank_dataloader(num_replicas=2, rank=rank)
        batches = [dm.on_after_batch_transfer(b, 0) for b in loader]  # no trainer: evaluation
        assert all(len(b) == 2 and b[0].dtype == torch.float32 for b in batches)
        assert [len(b[1]) for b in batches] == [16, 16, 16, 2]  # 50 images, last batch kept
        images = torch.cat([b[0] for b in batches])
        targets = torch.cat([b[1] for b in batches])
        order = torch.arange(rank, 100, 2)
        expected = normalize(reference.images[order], CIFAR10_MEAN, CIFAR10_STD)
        torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
        assert torch.equal(targets, reference.targets[order])
        shards.append(order)
    assert sorted(torch.cat(shards).tolist()) == list(range(100))


def test_feature_bank_errors(cifar10_dir: Path, image_folder_dir: Path) -> None:
    for dm in (
        CIFAR10DataModule(data_dir=str(cifar10_dir)),
        ImageFolderDataModule(str(image_folder_dir)),
    ):
        with pytest.raises(RuntimeError, match=r"call setup\('fit'\) before feature_bank"):
            dm.feature_bank_dataloader()
        with pytest.raises(ValueError, match="got num_replicas=2, rank=2"):
            dm.feature_bank_dataloader(num_replicas=2, rank=2)
    with pytest.raises(TypeError, match=r"BatchTransform .* or None, got str"):
        CIFAR10DataModule(transform="dino")  # type: ignore[arg-type]


def test_image_folder_views_and_feature_bank(image_folder_dir: Path) -> None:
    views = MultiCropViews(global_size=24, local_size=12, num_local=1)
    dm = ImageFolderDataModule(
        str(image_folder_dir),
        batch_size=4,
        eval_batch_size=5,
        num_workers=0,
        image_size=32,
        resize_size=36,
        views=views,
    )
    assert "views" not in dm.hparams
    dm.setup("fit")
    crops, targets = next(iter(dm.train_dataloader()))
    assert [tuple(v.shape) for v in crops] == [(4, 3, 24, 24)] * 2 + [(4, 3, 12, 12)]
    assert targets.shape == (4,)
    pixels = _unnormalize(crops[0], dm.mean, dm.std)
    assert float(pixels.min()) > -1e-4 and float(pixels.max()) < 1 + 1e-4
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images.shape == (5, 3, 32, 32)

    plain = ImageFolderDataModule(
        str(image_folder_dir), batch_size=4, num_workers=0, image_size=32, resize_size=36
    )
    plain.setup("fit")
    assert plain.train_dataset is not None
    everything = [
        plain.eval_transform()(_load_rgb(path)) for path, _ in plain.train_dataset.samples
    ]
    labels = [label for _, label in plain.train_dataset.samples]
    seen = []
    for rank in range(2):
        for images, batch_targets in dm.feature_bank_dataloader(num_replicas=2, rank=rank):
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
            assert images.shape[0] <= 5
            seen += list(zip(images, batch_targets.tolist(), strict=True))
    assert len(seen) == 12
    order = list(range(0, 12, 2)) + list(range(1, 12, 2))
    for (image, label), k in zip(seen, order, strict=True):
        torch.testing.assert_close(image, everything[k])
        assert label == labels[k]


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def test_jsonargparse_builds_views_into_the_datamodule(cifar10_dir: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CIFAR10DataModule, "data")
    cfg = parser.parse_object(
        {
            "data": {
                "data_dir": str(cifar10_dir),
                "transform": {
                    "class_path": "lightning_kd.data.MultiCropViews",
                    "init_args": {"num_local": 4, "global_scale": [0.3, 1.0]},
                },
            }
        }
    )
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm.transform, MultiCropViews) and dm.transform.num_views == 6
    assert dm.transform.global_scale == (0.3, 1.0)


# --------------------------------------------------------------------- labeled split files
def test_labeled_split_file_trains_on_exactly_those_images(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    images, targets = read_cifar_split(
        resolve_cifar_dir(str(cifar10_dir), CIFAR10_LAYOUT), CIFAR10_LAYOUT, train=True
    )
    chosen = torch.tensor([5, 17, 3, 199, 0, 64])
    path = write_split_file(
        tmp_path / "split.json", chosen, dataset="CIFAR-10", num_train_images=200, seed=0
    )
    dm = CIFAR10DataModule(
        str(cifar10_dir), batch_size=2, labeled_split_file=str(path), val_split=0
    )
    dm.setup("fit")
    assert dm.train_dataset is not None
    order = chosen.sort().values
    got_images, got_targets = dm.train_dataset.__getitems__(list(range(6)))[:2]
    assert torch.equal(got_targets, targets[order])
    assert torch.equal(got_images, images[order])


def test_labeled_split_file_errors(cifar10_dir: Path, tmp_path: Path) -> None:
    path = write_split_file(
        tmp_path / "split.json", torch.arange(40), dataset="CIFAR-10", num_train_images=200
    )
    with pytest.raises(ValueError, match="train_subset and labeled_split_file both choose"):
        CIFAR10DataModule(str(cifar10_dir), train_subset=10, labeled_split_file=str(path))
    # 40 of the first 40 indices cannot all avoid a 150-image validation split.
    dm = CIFAR10DataModule(str(cifar10_dir), val_split=150, labeled_split_file=str(path))
    with pytest.raises(ValueError, match=r"of its labeled images fall in the validation split"):
        dm.setup("fit")
    other = write_split_file(
        tmp_path / "other.json", torch.arange(4), dataset="CIFAR-100", num_train_images=200
    )
    dm = CIFAR10DataModule(str(cifar10_dir), labeled_split_file=str(other))
    with pytest.raises(ValueError, match="dataset is 'CIFAR-100', expected 'CIFAR-10'"):
        dm.setup("fit")
    dm = CIFAR10DataModule(str(cifar10_dir), labeled_split_file=str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match=r"missing\.json' does not exist"):
        dm.setup("fit")
