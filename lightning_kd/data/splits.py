"""Splits of a training set, as pure functions of its labels and a seed, and split files.

One place for every way lightning-kd chooses images: the validation hold-out
(:func:`holdout_split`), a class-balanced training subset (:func:`class_balanced_subset`),
a semi-supervised label budget (:func:`label_budget`), and label files read and checked
against the data (:func:`read_split_file`, :func:`check_labeled_split`). All take a seeded
CPU ``torch.Generator`` and consume it in a fixed order, so a datamodule that calls them in
the same order gets the same split on every machine; indices always refer to the training
file in file order.

Label split files: which training images of a dataset carry labels, saved as JSON.

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

__all__ = [
    "check_labeled_split",
    "class_balanced_subset",
    "holdout_split",
    "label_budget",
    "read_split_file",
    "validation_count",
    "write_split_file",
]


def validation_count(val_split: int | float, n: int) -> int:
    """Number of validation images for ``val_split`` (a count, or a fraction if a float) out
    of ``n`` training images.

    Raises:
        TypeError: If ``val_split`` is neither an int nor a float.
        ValueError: If it is negative, a fraction outside ``[0, 1)``, holds out no image
            although non-zero, or leaves no training image.
    """
    if isinstance(val_split, bool) or not isinstance(val_split, int | float):
        raise TypeError(f"val_split must be an int count or a float fraction, got {val_split!r}")
    if isinstance(val_split, float) and not 0.0 <= val_split < 1.0:
        raise ValueError(
            f"val_split as a float is a fraction and must be in [0, 1), got {val_split}"
        )
    if isinstance(val_split, int) and val_split < 0:
        raise ValueError(f"val_split as an int is a count and must be >= 0, got {val_split}")
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


def holdout_split(
    n: int, val_split: int | float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Hold out a random validation split of ``range(n)``.

    Draws one ``randperm(n)`` from ``generator``: its first :func:`validation_count` entries
    are the validation images.

    Returns:
        ``(train, val)``: sorted int64 indices, disjoint, together ``range(n)``.
    """
    n_val = validation_count(val_split, n)
    perm = torch.randperm(n, generator=generator)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def class_balanced_subset(
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


def label_budget(
    targets: Tensor, pool: Tensor, num_labels: int, num_classes: int, generator: torch.Generator
) -> Tensor:
    """Pick ``num_labels / num_classes`` labeled images of every class from ``pool``.

    Args:
        targets: int64 labels of the whole training file ``(N,)``.
        pool: int64 indices into ``targets`` that may be labeled ``(P,)``.
        num_labels: Label budget, a positive multiple of ``num_classes``.
        num_classes: Number of classes ``C``.
        generator: Seeded CPU generator.

    Returns:
        Sorted int64 indices into ``targets``, shape ``(num_labels,)``.

    Raises:
        ValueError: If ``num_labels`` is not a positive multiple of ``C`` or a class has too
            few images in the pool.
    """
    if num_labels < num_classes or num_labels % num_classes != 0:
        raise ValueError(
            f"num_labels must be a positive multiple of the {num_classes} classes, got {num_labels}"
        )
    per_class = num_labels // num_classes
    pool_targets = targets[pool]
    chosen = []
    for cls in range(num_classes):
        members = pool[pool_targets == cls]
        if members.numel() < per_class:
            raise ValueError(
                f"num_labels={num_labels} needs {per_class} labeled images per class, but "
                f"class {cls} has only {members.numel()} in the training pool of "
                f"{pool.numel()} images (after the validation split)"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def check_labeled_split(
    labeled: Tensor,
    targets: Tensor,
    *,
    val_indices: Tensor,
    where: str,
    num_labels: int | None = None,
    num_classes: int | None = None,
    hint: str = "",
) -> None:
    """Check labeled indices read from a file against the budget, class balance and the
    validation split.

    Args:
        labeled: Sorted int64 labeled indices ``(L,)``.
        targets: int64 labels of the training file ``(N,)``.
        val_indices: Validation indices ``(V,)``; none may be labeled.
        where: What the indices came from, for the messages.
        num_labels: Expected ``L`` and class balance (``L / num_classes`` per class), or
            ``None`` to skip both checks.
        num_classes: Number of classes (needed with ``num_labels``).
        hint: Appended to the validation-overlap message (how to fix it).

    Raises:
        ValueError: If a check fails, naming what was found.
    """
    if num_labels is not None:
        if labeled.numel() != num_labels:
            raise ValueError(
                f"{where} lists {labeled.numel()} labeled indices, expected "
                f"num_labels={num_labels}. Pass the matching num_labels, or another "
                "split_file path to create a new split."
            )
        assert num_classes is not None
        counts = torch.bincount(targets[labeled], minlength=num_classes)
        per_class = num_labels // num_classes
        if bool((counts != per_class).any()):
            bad = torch.nonzero(counts != per_class).flatten()[:5].tolist()
            detail = ", ".join(f"class {c}: {int(counts[c])}" for c in bad)
            raise ValueError(
                f"{where} is not class-balanced: expected {per_class} labels per class, got "
                f"{detail}"
            )
    overlap = int(torch.isin(labeled, val_indices).sum())
    if overlap:
        raise ValueError(
            f"{where}: {overlap} of its labeled images fall in the validation split{hint}"
        )


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
