"""Reading and validating the CIFAR "python version" pickle layout.

The layout is the one torchvision's ``CIFAR10(root, download=True)`` extracts:

* CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``, labels under
  ``"labels"``, class names under ``"label_names"``.
* CIFAR-100: ``cifar-100-python/{train, test, meta}``, labels under ``"fine_labels"`` (100
  classes; ``"coarse_labels"`` are ignored), class names under ``"fine_label_names"``.

Each data pickle holds ``data``, a ``uint8`` array of shape ``(N, 3072)`` with the R, G and B
planes of each 32 x 32 image in row-major order. The files are read directly (no md5 check):
copies rebuilt from mirrors have other checksums but the same, documented format.

Note:
    Pickles can execute code when loaded. Only point these readers at files you trust.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIFAR10_LAYOUT",
    "CIFAR100_LAYOUT",
    "CIFARFiles",
    "CifarLayout",
    "find_cifar_dir",
    "load_cifar_pickle",
    "read_cifar_class_names",
    "read_cifar_split",
    "resolve_cifar_dir",
]

IMAGE_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its files and what the pickles are keyed by.

    Attributes:
        name: Human-readable dataset name, used in messages.
        folder: Name of the extracted batches folder.
        train_files: Data pickles that make up the training split, in order.
        test_files: Data pickles that make up the test split, in order.
        meta_file: Pickle holding the class names.
        label_key: Key of the label list in each data pickle.
        names_key: Key of the class-name list in the meta pickle.
        num_classes: Number of classes; every label must lie in ``[0, num_classes)``.
        torchvision_class: Name of the ``torchvision.datasets`` class that can download it.
    """

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    torchvision_class: str

    @property
    def all_files(self) -> tuple[str, ...]:
        """Every file the layout requires."""
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR10_LAYOUT = CifarLayout(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
    torchvision_class="CIFAR10",
)

CIFAR100_LAYOUT = CifarLayout(
    name="CIFAR-100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
    torchvision_class="CIFAR100",
)


def find_cifar_dir(data_dir: str | Path, layout: CifarLayout) -> Path | None:
    """Locate the batches folder of ``layout`` given ``data_dir``.

    ``data_dir`` may be the folder that contains the batches folder (``data_dir/<folder>``)
    or the batches folder itself. A candidate counts only if it holds the first train file.

    Args:
        data_dir: Parent folder or batches folder.
        layout: Which CIFAR variant to look for.

    Returns:
        The batches folder, or ``None`` if neither candidate holds the first train file.
    """
    root = Path(data_dir).expanduser()
    for candidate in (root / layout.folder, root):
        if (candidate / layout.train_files[0]).is_file():
            return candidate
    return None


def _describe_contents(folder: Path, limit: int = 8) -> str:
    """Name a few entries of ``folder`` for an error message."""
    if not folder.is_dir():
        return f"{folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not entries:
        return f"{folder} is empty"
    shown = ", ".join(entries[:limit])
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    hint = ""
    image_suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
    if any(Path(e).suffix.lower() in image_suffixes for e in entries) or {"train/", "val/"} <= set(
        entries
    ):
        hint = (
            " It looks like a folder of image files; for an ImageNet-style tree use "
            "ImageFolderDataModule instead."
        )
    return f"{folder} contains: {shown}{more}.{hint}"


def resolve_cifar_dir(data_dir: str | Path, layout: CifarLayout) -> Path:
    """Like :func:`find_cifar_dir`, but check every required file and explain failures.

    Args:
        data_dir: Parent folder or batches folder.
        layout: Which CIFAR variant to look for.

    Returns:
        The batches folder, holding every file of ``layout.all_files``.

    Raises:
        FileNotFoundError: If no batches folder is found (the message names the places
            searched, what they contain, and how to get the data) or a required file is missing.
    """
    root = Path(data_dir).expanduser()
    found = find_cifar_dir(root, layout)
    if found is None:
        looked = [root / layout.folder / layout.train_files[0], root / layout.train_files[0]]
        raise FileNotFoundError(
            f"{layout.name} not found for data_dir={str(data_dir)!r}: looked for "
            f"{looked[0]} and {looked[1]}. {_describe_contents(root)} Expected the python-version "
            f"layout {layout.folder}/{{{', '.join(layout.all_files)}}}. To get it, pass "
            f"download=True, or copy the extracted '{layout.folder}' folder into {root}."
        )
    missing = [name for name in layout.all_files if not (found / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{layout.name} folder {found} is incomplete: missing {', '.join(missing)} "
            f"(expected {', '.join(layout.all_files)}). Copy the complete '{layout.folder}' "
            "folder, or delete it and pass download=True."
        )
    return found


def load_cifar_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle into a dict with ``str`` keys.

    Args:
        path: A data or meta pickle.

    Returns:
        The unpickled dict. Files written with ``bytes`` keys (Python 2 pickles read with
        ``encoding="bytes"``) are normalised to ``str`` keys.

    Raises:
        ValueError: If the file cannot be unpickled or does not hold a dict.
    """
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise ValueError(
            f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); expected the "
            "python-version files, not the binary or matlab versions."
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} should hold a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_data_file(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one data pickle.

    Returns:
        ``(data, labels)``: ``uint8`` array ``(N, 3072)`` and ``int64`` array ``(N,)``.
    """
    content = load_cifar_pickle(path)
    for key in ("data", layout.label_key):
        if key not in content:
            raise ValueError(
                f"{path} has no {key!r} entry (keys: {sorted(content)}); expected a "
                f"{layout.name} data pickle with 'data' and {layout.label_key!r}."
            )
    data = content["data"]
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{path}: 'data' should be a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' should have dtype uint8, got {data.dtype}")
    if data.ndim != 2 or data.shape[1] != _PIXELS:
        raise ValueError(
            f"{path}: 'data' should have shape (N, {_PIXELS}) (3 x 32 x 32 pixels per row), "
            f"got {tuple(data.shape)}"
        )
    try:
        labels = np.asarray(content[layout.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {layout.label_key!r} should be a list of ints ({e})") from e
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{path}: {data.shape[0]} images but {layout.label_key!r} has shape "
            f"{tuple(labels.shape)}; expected one label per image"
        )
    bad = (labels < 0) | (labels >= layout.num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: label {int(labels[i])} at index {i} is outside [0, {layout.num_classes}) "
            f"({int(bad.sum())} bad labels in {layout.label_key!r})"
        )
    return data, labels


def read_cifar_split(
    batches_dir: Path, layout: CifarLayout, *, train: bool
) -> tuple[Tensor, Tensor]:
    """Read one split into memory.

    Args:
        batches_dir: The batches folder, as returned by :func:`resolve_cifar_dir`.
        layout: Which CIFAR variant it is.
        train: Read the training files if True, the test files otherwise.

    Returns:
        ``(images, targets)``: ``uint8`` tensor ``(N, 3, 32, 32)`` and ``int64`` tensor
        ``(N,)``, concatenated in file order.

    Raises:
        FileNotFoundError: If a data file is missing.
        ValueError: If a file fails validation (shape, dtype, label range, counts).
    """
    names = layout.train_files if train else layout.test_files
    datas, labels = [], []
    for name in names:
        path = batches_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{layout.name} data file {path} does not exist")
        data, lab = _read_data_file(path, layout)
        datas.append(data)
        labels.append(lab)
    images = torch.from_numpy(np.concatenate(datas)).view(-1, *IMAGE_SHAPE)  # (N, 3, 32, 32)
    targets = torch.from_numpy(np.concatenate(labels))  # (N,)
    return images, targets


def read_cifar_class_names(batches_dir: Path, layout: CifarLayout) -> list[str]:
    """Read the class names from the meta pickle.

    Args:
        batches_dir: The batches folder.
        layout: Which CIFAR variant it is.

    Returns:
        ``layout.num_classes`` class names, indexed by label.

    Raises:
        ValueError: If the meta file lacks the names or has the wrong number of them.
    """
    path = batches_dir / layout.meta_file
    content = load_cifar_pickle(path)
    names = content.get(layout.names_key)
    if not isinstance(names, list | tuple) or len(names) != layout.num_classes:
        got = f"{len(names)} entries" if isinstance(names, list | tuple) else repr(names)[:80]
        raise ValueError(
            f"{path}: {layout.names_key!r} should list {layout.num_classes} class names, got {got}"
        )
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class CIFARFiles:
    """The CIFAR files of a datamodule: a mixin that reads them and names their classes.

    For :class:`~lightning_kd.data.datamodule.ImageDataModule` subclasses that set
    :attr:`layout` (a class attribute) and have ``data_dir`` and ``download``. It provides
    ``num_classes``, ``class_names``, ``dataset_name``, ``read_split`` and the download in
    ``prepare_data``.
    """

    layout: ClassVar[CifarLayout]
    data_dir: str
    download: bool
    _class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (10 or 100)."""
        return self.layout.num_classes

    @property
    def dataset_name(self) -> str:
        """``"CIFAR-10"`` or ``"CIFAR-100"``."""
        return self.layout.name

    @property
    def class_names(self) -> list[str]:
        """Class names from the meta file, indexed by label (reads the file on first use)."""
        if self._class_names is None:
            folder = resolve_cifar_dir(self.data_dir, self.layout)
            self._class_names = read_cifar_class_names(folder, self.layout)
        return self._class_names

    def read_split(self, *, train: bool) -> tuple[Tensor, Tensor]:
        """The training or test file: ``uint8 (N, 3, 32, 32)`` images, int64 ``(N,)`` labels."""
        folder = resolve_cifar_dir(self.data_dir, self.layout)
        return read_cifar_split(folder, self.layout, train=train)

    def prepare_data(self) -> None:
        """Download through torchvision when ``download=True`` and the files are missing.

        Lightning calls this on one process per node. The downloaded folder is afterwards
        read like any other copy (see ``setup``).
        """
        if not self.download or find_cifar_dir(self.data_dir, self.layout) is not None:
            return
        from torchvision import datasets

        root = Path(self.data_dir).expanduser()
        if root.name == self.layout.folder:
            root = root.parent
        dataset_cls = getattr(datasets, self.layout.torchvision_class)
        for train in (True, False):
            dataset_cls(root=str(root), train=train, download=True)
