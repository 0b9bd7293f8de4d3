"""Shared fixtures: small fake datasets in the real on-disk layouts.

The fixtures are session-scoped and read-only: a test that needs to damage files writes its own
copy with the writers in ``tests/fake_data.py`` (importable as ``fake_data``).

* ``cifar10_dir``: parent folder of ``cifar-10-batches-py`` (pass it as ``data_dir``).
  200 train images (40 in each of ``data_batch_1..5``, 20 per class, image ``i`` has label
  ``i % 10``) and 100 test images (10 per class, label ``i % 10``).
* ``cifar100_dir``: parent folder of ``cifar-100-python``. 300 train images (3 per fine
  class, label ``i % 100``), 100 test images (1 per class).
* ``image_folder_dir``: ``train/`` and ``val/`` with classes ``cat``, ``dog``, ``ship``
  (labels 0, 1, 2), 4 train and 2 val 40 x 40 RGB PNGs per class.

All images carry a class signal (a class colour plus noise), so a model can learn them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_data import write_fake_cifar10, write_fake_cifar100, write_image_folder


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parent folder of a fake ``cifar-10-batches-py`` (200 train, 100 test images)."""
    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar10(root, n_train_per_batch=40, n_test=100, seed=0)
    return root


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parent folder of a fake ``cifar-100-python`` (300 train, 100 test images)."""
    root = tmp_path_factory.mktemp("cifar100")
    write_fake_cifar100(root, n_train=300, n_test=100, seed=0)
    return root


@pytest.fixture(scope="session")
def image_folder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a fake ImageNet-style tree: 3 classes, 4 train and 2 val 40x40 PNGs each."""
    root = tmp_path_factory.mktemp("image_folder")
    write_image_folder(root, classes=("cat", "dog", "ship"), n_train_per_class=4, n_val_per_class=2)
    return root
