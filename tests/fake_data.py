"""Writers of small fake datasets in the real on-disk layouts, for tests.

Every image carries a class signal: pixels are a class-dependent colour plus uniform noise of
+-40, so a small model can learn the labels. Labels are known in closed form:

* CIFAR-10 train: image ``i`` (counting across ``data_batch_1..5`` in order) has label
  ``i % 10``; test image ``i`` has label ``i % 10``.
* CIFAR-100 train/test: image ``i`` has fine label ``i % 100`` and coarse label
  ``(i % 100) // 5``.
* Image folder: ``n_<split>_per_class`` PNGs per class, named ``<class>_<k>.png``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "class_colors",
    "fake_images",
    "write_fake_cifar10",
    "write_fake_cifar100",
    "write_image_folder",
]

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def class_colors(num_classes: int, seed: int = 1234) -> np.ndarray:
    """Distinct-ish RGB colours, one per class: ``int64`` array ``(num_classes, 3)`` in 50..205."""
    rng = np.random.default_rng(seed)
    return rng.integers(50, 206, size=(num_classes, 3))


def fake_images(labels: np.ndarray, num_classes: int, *, size: int, seed: int) -> np.ndarray:
    """Images for ``labels``: class colour plus uniform noise in [-40, 40].

    Returns:
        ``uint8`` array ``(N, 3, size, size)``.
    """
    rng = np.random.default_rng(seed)
    colors = class_colors(num_classes)[labels]  # (N, 3)
    noise = rng.integers(-40, 41, size=(len(labels), 3, size, size))
    return np.clip(colors[:, :, None, None] + noise, 0, 255).astype(np.uint8)


def _dump(path: Path, obj: dict[str, object]) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_fake_cifar10(
    root: str | Path, *, n_train_per_batch: int = 40, n_test: int = 100, seed: int = 0
) -> Path:
    """Write ``root/cifar-10-batches-py`` in the python-version layout.

    Args:
        root: Parent folder (created if needed).
        n_train_per_batch: Images in each of ``data_batch_1..5``.
        n_test: Images in ``test_batch``.
        seed: Seed of the pixel noise.

    Returns:
        The batches folder ``root/cifar-10-batches-py``.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    n_train = 5 * n_train_per_batch
    train_labels = np.arange(n_train) % 10
    train_images = fake_images(train_labels, 10, size=32, seed=seed).reshape(n_train, 3072)
    for b in range(5):
        part = slice(b * n_train_per_batch, (b + 1) * n_train_per_batch)
        _dump(
            folder / f"data_batch_{b + 1}",
            {
                "batch_label": f"training batch {b + 1} of 5",
                "labels": train_labels[part].tolist(),
                "data": train_images[part],
                "filenames": [f"train_{i}.png" for i in range(n_train)[part]],
            },
        )
    test_labels = np.arange(n_test) % 10
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels.tolist(),
            "data": fake_images(test_labels, 10, size=32, seed=seed + 1).reshape(n_test, 3072),
            "filenames": [f"test_{i}.png" for i in range(n_test)],
        },
    )
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": n_train_per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072},
    )
    return folder


def write_fake_cifar100(
    root: str | Path, *, n_train: int = 300, n_test: int = 100, seed: int = 0
) -> Path:
    """Write ``root/cifar-100-python`` (``train``, ``test``, ``meta``).

    Args:
        root: Parent folder (created if needed).
        n_train: Images in ``train`` (fine label ``i % 100``).
        n_test: Images in ``test``.
        seed: Seed of the pixel noise.

    Returns:
        The batches folder ``root/cifar-100-python``.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        fine = np.arange(n) % 100
        _dump(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": f"{name}ing batch 1 of 1",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": fake_images(fine, 100, size=32, seed=split_seed).reshape(n, 3072),
            },
        )
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{k}" for k in range(100)],
            "coarse_label_names": [f"coarse_{k}" for k in range(20)],
        },
    )
    return folder


def write_image_folder(
    root: str | Path,
    *,
    classes: Sequence[str] = ("cat", "dog", "ship"),
    n_train_per_class: int = 4,
    n_val_per_class: int = 2,
    size: int = 40,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/<class>/<class>_<k>.png`` with tiny class-coloured PNGs.

    Args:
        root: Folder to create the tree in.
        classes: Class-folder names; label ``i`` is ``sorted(classes)[i]``.
        n_train_per_class: PNGs per class under ``train``.
        n_val_per_class: PNGs per class under ``val``.
        size: Side of the square images.
        seed: Seed of the pixel noise.

    Returns:
        ``root``.
    """
    root = Path(root)
    names = sorted(classes)
    for split, per_class, split_seed in (
        ("train", n_train_per_class, seed),
        ("val", n_val_per_class, seed + 1),
    ):
        labels = np.repeat(np.arange(len(names)), per_class)
        images = fake_images(labels, len(names), size=size, seed=split_seed)
        for k, (label, image) in enumerate(zip(labels, images, strict=True)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{names[label]}_{k}.png")
    return root
