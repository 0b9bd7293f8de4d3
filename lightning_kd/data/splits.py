"""Label split files: which training images of a dataset carry labels, saved as JSON.

A semi-supervised run writes its split once (see
:class:`~lightning_kd.data.semi_supervised.CIFAR10SSLDataModule`'s ``split_file``) and every
later run that names the file reads the same labels: the same Mean Teacher run on another
machine, or a supervised-only baseline trained on the labeled images alone
(:class:`~lightning_kd.data.cifar.CIFAR10DataModule`'s ``labeled_split_file``).

The file is one JSON object::

    {"dataset": "CIFAR-10", "num_train_images": 50000, "num_labels": 4000, "seed": 0,
     "val_split": 0, "labeled_indices": [3, 6, 19, ...]}

``labeled_indices`` index the dataset's training files in file order. The other keys record
how the split was made; ``dataset`` and ``num_train_images`` are checked on reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["read_split_file", "write_split_file"]


def write_split_file(
    path: str | Path,
    labeled: Tensor,
    *,
    dataset: str,
    num_train_images: int,
    **details: Any,
) -> Path:
    """Write a split atomically (every DDP process may write the same content).

    Args:
        path: Destination; parent folders are created.
        labeled: int64 indices of the labeled training images ``(L,)``.
        dataset: Dataset name, e.g. ``"CIFAR-10"``.
        num_train_images: Size of the training split the indices refer to.
        **details: Further JSON-serialisable keys recording how the split was made.

    Returns:
        The path written.
    """
    path = Path(path).expanduser()
    content = {
        "dataset": dataset,
        "num_train_images": num_train_images,
        **details,
        "labeled_indices": [int(i) for i in labeled.tolist()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content) + "\n")
    os.replace(tmp, path)
    return path


def read_split_file(
    path: str | Path, *, dataset: str, num_train_images: int
) -> tuple[Tensor, dict[str, Any]]:
    """Read a split file and check it against the dataset it will index.

    Args:
        path: The JSON file.
        dataset: Expected ``"dataset"`` entry, e.g. ``"CIFAR-10"``.
        num_train_images: Expected ``"num_train_images"``: the size of the training split
            on disk.

    Returns:
        ``(labeled, content)``: the sorted int64 labeled indices ``(L,)`` and the whole JSON
        object (for callers that check more keys).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a JSON object with a ``labeled_indices`` list, names
            another dataset or size, or holds indices that are not integers, out of
            ``[0, num_train_images)`` or repeated.
    """
    path = Path(path).expanduser()
    where = f"split_file {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not valid JSON ({e})") from e
    if not isinstance(content, dict) or not isinstance(content.get("labeled_indices"), list):
        got = f"keys {sorted(content)}" if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{where} should hold a JSON object with a 'labeled_indices' list, got {got}"
        )
    problems = []
    if content.get("dataset") != dataset:
        problems.append(f"dataset is {content.get('dataset')!r}, expected {dataset!r}")
    if content.get("num_train_images") != num_train_images:
        problems.append(
            f"num_train_images is {content.get('num_train_images')!r}, but the training split "
            f"on disk has {num_train_images} images"
        )
    if problems:
        raise ValueError(f"{where} does not match the data: {'; '.join(problems)}")
    indices = content["labeled_indices"]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"{where}: 'labeled_indices' must be integers")
    labeled = torch.tensor(indices, dtype=torch.long)
    if labeled.numel() and (int(labeled.min()) < 0 or int(labeled.max()) >= num_train_images):
        raise ValueError(
            f"{where}: labeled indices must lie in [0, {num_train_images}), got values from "
            f"{int(labeled.min())} to {int(labeled.max())}"
        )
    labeled = labeled.sort().values
    repeated = labeled.numel() - labeled.unique().numel()
    if repeated:
        raise ValueError(f"{where}: {repeated} labeled indices are repeated")
    return labeled, content
