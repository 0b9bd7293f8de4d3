"""The on-disk teacher cache: a manifest and one memory-mappable array per epoch.

A cache folder holds::

    manifest.json                  what the cache is of (:class:`CacheManifest`)
    logits_e0000.npy ...           full logits, (N, V, K, C) per epoch     (top_k = None)
    topk_values_e0000.npy ...      the k largest logits, (N, V, K, k)      (top_k = k)
    topk_indices_e0000.npy ...     their classes, (N, V, K, k) int16/int32
    rest_mean_e0000.npy ...        mean of the other C - k logits, (N, V, K) float32
    done_e0000.npy ...             one uint8 per chunk of rows: 1 once written (resume)

``N`` is the training set size (row = position in the training set), ``V`` the views of each
image (1 for KD; MLKD's weak and strong view), ``K`` the teachers and ``C`` the classes. Every
row is the teacher's output for the exact view a student sees of that image in that epoch (the
views are a pure function of ``(view_seed, epoch, sample index)``).

With ``top_k`` the logits are rebuilt as: the ``k`` stored values at their classes and the
stored mean of the others everywhere else (:func:`rebuild_logits`), so that every logit-based
loss (KD at any temperature, DKD, DIST, logit standardisation) still gets ``(B, C)`` logits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CACHE_FORMAT",
    "CacheDtype",
    "CacheManifest",
    "TeacherCache",
    "rebuild_logits",
    "state_dict_sha256",
    "tensor_sha256",
]

#: Version of the folder layout; a reader refuses other versions.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
CacheDtype = Literal["float32", "float16"]
_NUMPY_DTYPES: dict[str, Any] = {"float32": np.float32, "float16": np.float16}


def tensor_sha256(tensors: Iterable[Tensor]) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def state_dict_sha256(network: nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes, values), whatever file it came
    from: what a cache compares to know it was built by the same teacher weights."""
    state = network.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(tensor_sha256([state[name]]).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheManifest:
    """What a teacher cache holds and what it was built from.

    Attributes:
        format: :data:`CACHE_FORMAT` of the writer.
        module: The module class of the config it was built with (for the record).
        teachers: One entry per teacher: ``path`` and ``sha256`` of its checkpoint file (or
            ``None``), ``weights_sha256`` (:func:`state_dict_sha256` of its network) and its
            normalised ``weight`` in the ensemble.
        num_classes: ``C``.
        num_views: ``V``, the views of each image per epoch.
        dataset: ``name``, ``size`` (``N``) and ``fingerprint`` (SHA-256 of the training
            images, labels and file indices, in training-set order).
        transform: ``repr`` of the datamodule's training transform.
        view_seed: The seed of every view.
        epochs: Epochs ``0 .. epochs - 1`` are cached.
        dtype: Storage type of the logits (``float32`` or ``float16``).
        top_k: ``None`` (full logits) or the number of logits kept per row.
        precision: The Lightning precision the teacher ran under (``32-true``, ``bf16-mixed``).
        chunk_rows: Rows per chunk (the unit of resume and of the ``done`` arrays).
    """

    format: int
    module: str
    teachers: list[dict[str, Any]]
    num_classes: int
    num_views: int
    dataset: dict[str, Any]
    transform: str
    view_seed: int
    epochs: int
    dtype: CacheDtype
    top_k: int | None
    precision: str
    chunk_rows: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_teachers(self) -> int:
        """``K``."""
        return len(self.teachers)

    @property
    def size(self) -> int:
        """``N``, rows per epoch."""
        return int(self.dataset["size"])

    @property
    def num_chunks(self) -> int:
        """Chunks of :attr:`chunk_rows` rows per epoch."""
        return -(-self.size // self.chunk_rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "manifest") -> CacheManifest:
        """Parse a manifest.

        Raises:
            ValueError: If it is not a manifest of this library's format.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source} is not JSON ({error}); is this a teacher cache?") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {n for n in names if n != "extra"} <= set(data):
            raise ValueError(
                f"{source} is not a lightning-kd teacher cache manifest: expected the fields "
                f"{sorted(names)}, got {sorted(data) if isinstance(data, dict) else type(data)}"
            )
        if data["format"] != CACHE_FORMAT:
            raise ValueError(
                f"{source} has cache format {data['format']}, this lightning-kd reads format "
                f"{CACHE_FORMAT}: rebuild the cache with this version (lightning-kd cache)"
            )
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: CacheManifest) -> list[str]:
        """The fields (everything but ``extra``) in which ``other`` differs, as
        ``"name: this -> other"``."""
        out = []
        for f in fields(self):
            if f.name == "extra":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: {a!r} -> {b!r}")
        return out


def epoch_files(folder: Path, epoch: int, top_k: int | None) -> dict[str, Path]:
    """The array files of ``epoch``: name -> path (``logits`` or the three top-k arrays)."""
    names = ["logits"] if top_k is None else ["topk_values", "topk_indices", "rest_mean"]
    return {name: folder / f"{name}_e{epoch:04d}.npy" for name in names}


def done_file(folder: Path, epoch: int) -> Path:
    return folder / f"done_e{epoch:04d}.npy"


def array_specs(manifest: CacheManifest) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and numpy dtype of each array of an epoch."""
    n, v, k, c = manifest.size, manifest.num_views, manifest.num_teachers, manifest.num_classes
    dtype = _NUMPY_DTYPES[manifest.dtype]
    if manifest.top_k is None:
        return {"logits": ((n, v, k, c), dtype)}
    top = manifest.top_k
    index_dtype = np.int16 if c <= np.iinfo(np.int16).max else np.int32
    return {
        "topk_values": ((n, v, k, top), dtype),
        "topk_indices": ((n, v, k, top), index_dtype),
        "rest_mean": ((n, v, k), np.float32),
    }


def split_logits(logits: Tensor, top_k: int | None) -> dict[str, Tensor]:
    """What a cache stores of ``(R, V, K, C)`` float logits: ``{"logits": ...}`` or, with
    ``top_k``, the ``k`` largest values, their classes and the mean of the rest."""
    if top_k is None:
        return {"logits": logits}
    values, indices = logits.topk(top_k, dim=-1)
    c = logits.shape[-1]
    rest = (logits.sum(-1) - values.sum(-1)) / max(c - top_k, 1)
    return {"topk_values": values, "topk_indices": indices, "rest_mean": rest}


def rebuild_logits(values: Tensor, indices: Tensor, rest_mean: Tensor, num_classes: int) -> Tensor:
    """``(..., C)`` logits from top-k entries: the stored values at their classes and the mean
    of the other logits everywhere else.

    Args:
        values: ``(..., k)`` float.
        indices: ``(..., k)`` integer classes.
        rest_mean: ``(...)`` float.
        num_classes: ``C``.
    """
    out = rest_mean.unsqueeze(-1).expand(*rest_mean.shape, num_classes).clone()
    return out.scatter_(-1, indices.long(), values)


class TeacherCache:
    """Read a teacher cache: the teachers' logits for a batch's views, by epoch and position.

    Arrays are memory-mapped (the OS page cache keeps the hot epoch in memory) and opened
    lazily, one epoch at a time.

    Args:
        folder: The cache folder (``lightning-kd cache --out``).

    Raises:
        ValueError: If the folder has no manifest, or the cache is not complete.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser().resolve()
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ValueError(
                f"teacher_cache {self.folder} has no {MANIFEST}: build it with "
                "`lightning-kd cache --config <the run's config> --out "
                f"{self.folder}`"
            )
        self.manifest = CacheManifest.from_json(path.read_text(), source=str(path))
        missing = self.missing_epochs()
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise ValueError(
                f"teacher_cache {self.folder} is incomplete: epochs {shown} are not fully "
                f"written ({self.manifest.epochs - len(missing)} of {self.manifest.epochs} "
                "done); run the same `lightning-kd cache` command again to finish it"
            )
        self._epoch = -1
        self._arrays: dict[str, np.ndarray] = {}

    def missing_epochs(self) -> list[int]:
        """Epochs whose chunks are not all written."""
        out = []
        for epoch in range(self.manifest.epochs):
            done = done_file(self.folder, epoch)
            files = epoch_files(self.folder, epoch, self.manifest.top_k).values()
            written = done.is_file() and all(f.is_file() for f in files)
            if not written or not bool(np.load(done).all()):
                out.append(epoch)
        return out

    def _open(self, epoch: int) -> dict[str, np.ndarray]:
        if epoch != self._epoch:
            files = epoch_files(self.folder, epoch, self.manifest.top_k)
            self._arrays = {name: np.load(path, mmap_mode="r") for name, path in files.items()}
            self._epoch = epoch
        return self._arrays

    def lookup(
        self, epoch: int, positions: Tensor, *, device: torch.device | None = None
    ) -> Tensor:
        """The cached teacher logits of a batch, float32 ``(B, V, K, C)``.

        Args:
            epoch: The epoch the batch's views were drawn for (``ViewKeys.epoch``).
            positions: int64 ``(B,)`` positions in the training set (``ViewKeys.positions``).
            device: Where to put the result (default: ``positions``' device).

        Raises:
            ValueError: If the epoch is not cached or a position is out of range.
        """
        if not 0 <= epoch < self.manifest.epochs:
            raise ValueError(
                f"teacher_cache {self.folder} covers epochs 0..{self.manifest.epochs - 1}, the "
                f"run asked for epoch {epoch}: build it with --epochs {epoch + 1} or more, or "
                f"repeat its views with --data.init_args.view_epochs {self.manifest.epochs}"
            )
        device = positions.device if device is None else device
        rows = positions.detach().cpu().numpy()
        if rows.size and (rows.min() < 0 or rows.max() >= self.manifest.size):
            raise ValueError(
                f"positions must be in [0, {self.manifest.size}) (the cached training set), got "
                f"[{rows.min()}, {rows.max()}]"
            )
        arrays = self._open(epoch)
        if self.manifest.top_k is None:
            logits = torch.from_numpy(np.ascontiguousarray(arrays["logits"][rows]))
            return logits.to(device=device, dtype=torch.float32, non_blocking=True)
        values = torch.from_numpy(np.ascontiguousarray(arrays["topk_values"][rows]))
        indices = torch.from_numpy(np.ascontiguousarray(arrays["topk_indices"][rows]))
        rest = torch.from_numpy(np.ascontiguousarray(arrays["rest_mean"][rows]))
        return rebuild_logits(
            values.to(device=device, dtype=torch.float32),
            indices.to(device=device),
            rest.to(device=device, dtype=torch.float32),
            self.manifest.num_classes,
        )

    def disk_bytes(self) -> int:
        """Bytes of the cache's arrays on disk (apparent size)."""
        return sum(p.stat().st_size for p in self.folder.glob("*.npy"))


def dataset_fingerprint(images: Tensor, targets: Tensor, file_indices: Tensor) -> str:
    """SHA-256 of a training set in training-set order (images, labels, file indices)."""
    return tensor_sha256([images, targets, file_indices])


def normalised_precision(precision: Any) -> str:
    """Lightning's precision names with their aliases folded: ``32`` -> ``32-true``, ``16``
    -> ``16-mixed``, ``bf16`` -> ``bf16-mixed``."""
    text = str(precision)
    return {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}.get(
        text, text
    )


def check_manifest_matches(
    manifest: CacheManifest, expected: dict[str, Any], *, folder: Path, fix: Sequence[str] = ()
) -> None:
    """Refuse a cache whose manifest differs from what the run computes.

    Args:
        manifest: The cache's manifest.
        expected: field name -> the run's value, for the fields to compare.
        folder: The cache folder (for the message).
        fix: Extra hints appended to the message.

    Raises:
        ValueError: Naming every field that differs, with both values.
    """
    bad = [
        f"{name}: the cache has {getattr(manifest, name)!r}, this run {value!r}"
        for name, value in expected.items()
        if getattr(manifest, name) != value
    ]
    if bad:
        hint = " ".join(fix) or (
            "Rebuild it for this run with `lightning-kd cache --config <this run's config> --out "
            "<folder>`, or point teacher_cache at the cache built for this data and teacher."
        )
        raise ValueError(
            f"teacher_cache {folder} was not built for this run: {'; '.join(bad)}. {hint}"
        )
