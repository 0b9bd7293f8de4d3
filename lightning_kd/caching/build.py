"""Build a teacher cache: the config's teacher(s) over the exact training views of each epoch.

:func:`run_description` says what a run's cache must match (data, transform, seed, classes,
teachers); :func:`build_cache` writes one. The teacher runs in inference mode on chunks of
``chunk_rows`` training images, each chunk's views recomputed with the datamodule's own
:meth:`~lightning_kd.data.ImageDataModule.make_views` (so they are the views the student will
see, whatever its batch size or process count), and every finished chunk is marked in the
epoch's ``done`` array: an interrupted build continues where it stopped. Under several
processes, process ``r`` of ``W`` computes chunks ``r, r + W, ...`` of every epoch and writes
them into the same memory-mapped files.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from lightning_kd.caching.store import (
    CACHE_FORMAT,
    MANIFEST,
    CacheDtype,
    CacheManifest,
    array_specs,
    dataset_fingerprint,
    done_file,
    epoch_files,
    split_logits,
)
from lightning_kd.data.datamodule import ImageDataModule

__all__ = ["CacheableModule", "build_cache", "run_description"]


class CacheableModule(Protocol):
    """What a module offers to have its teachers cached (the logit-based frozen-teacher
    modules: :class:`~lightning_kd.modules.KDModule` and its subclasses)."""

    def cache_teachers(self) -> list[dict[str, Any]]:
        """One entry per teacher: ``path``, ``sha256``, ``weights_sha256``, ``weight``."""
        ...

    @property
    def cache_num_views(self) -> int:
        """The views of each image the module's loss reads the teacher on."""
        ...

    def cache_outputs(self, views: list[Tensor]) -> Tensor:
        """Every teacher's logits on every view, ``(B, V, K, C)`` (inference mode)."""
        ...

    def check_cacheable(self) -> None:
        """Raise ``ValueError`` if the module needs its teacher online (features)."""
        ...


def run_description(module: Any, datamodule: ImageDataModule) -> dict[str, Any]:
    """The manifest fields a run's cache must match, from its module and set-up datamodule:
    ``module``, ``num_classes``, ``num_views``, ``dataset``, ``transform``, ``view_seed``.

    Raises:
        TypeError: If the datamodule is not an
            :class:`~lightning_kd.data.ImageDataModule` (the keyed views a cache needs).
        RuntimeError: If its training set is not set up.
    """
    if not isinstance(datamodule, ImageDataModule):
        raise TypeError(
            "a teacher cache needs an ImageDataModule (keyed training views, e.g. "
            f"CIFAR10DataModule), got {type(datamodule).__name__}"
        )
    train = datamodule.train_dataset
    if train is None:
        raise RuntimeError("the datamodule's training set is not set up: call setup('fit')")
    return {
        "num_classes": int(datamodule.num_classes),
        "num_views": int(module.cache_num_views),
        "dataset": {
            "name": datamodule.dataset_name,
            "size": len(train),
            "fingerprint": dataset_fingerprint(train.images, train.targets, train.file_indices),
        },
        "transform": repr(datamodule.transform),
        "view_seed": int(datamodule.view_seed),
    }


def build_cache(
    module: Any,
    datamodule: ImageDataModule,
    out: str | Path,
    *,
    epochs: int,
    precision: str,
    top_k: int | None = None,
    dtype: CacheDtype = "float16",
    chunk_rows: int = 1024,
    device: torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    overwrite: bool = False,
    progress: bool = True,
) -> CacheManifest:
    """Run ``module``'s teacher(s) over the training views of epochs ``0 .. epochs - 1`` and
    write the cache to ``out``; continue a partly written cache of the same run.

    Args:
        module: A :class:`CacheableModule` (its teachers loaded).
        datamodule: The run's datamodule, ``setup("fit")`` done.
        out: The cache folder.
        epochs: Epochs to cover.
        precision: The precision the teacher runs under (recorded; ``autocast`` applies it).
        top_k: Keep only the ``k`` largest logits per row (and the mean of the rest).
        dtype: Storage type of the logits.
        chunk_rows: Images per teacher forward (and per resume unit).
        device: Where the teacher runs (default: CPU).
        rank, world_size: This process and the number of processes sharing the work.
        barrier: Waits for all processes (a no-op for one).
        autocast: Context manager of the teacher's forward (mixed precision).
        overwrite: Replace a cache of another run in ``out`` instead of refusing.
        progress: Show a progress bar (rank 0).

    Returns:
        The manifest.

    Raises:
        ValueError: On invalid arguments, a module that needs its teacher online, or ``out``
            holding a cache of another run (without ``overwrite``).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if chunk_rows < 1:
        raise ValueError(f"the cache batch size must be >= 1, got {chunk_rows}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    module.check_cacheable()
    description = run_description(module, datamodule)
    if top_k is not None and not 1 <= top_k < description["num_classes"]:
        raise ValueError(
            f"top_k must be in [1, {description['num_classes']}) (the class count), got {top_k}; "
            "leave it out to keep all logits"
        )
    manifest = CacheManifest(
        format=CACHE_FORMAT,
        module=f"{type(module).__module__}.{type(module).__qualname__}",
        teachers=module.cache_teachers(),
        epochs=epochs,
        dtype=dtype,
        top_k=top_k,
        precision=precision,
        chunk_rows=chunk_rows,
        **description,
    )
    folder = Path(out).expanduser().resolve()
    if rank == 0:
        _prepare_folder(folder, manifest, overwrite=overwrite)
    barrier()

    device = torch.device("cpu") if device is None else device
    module.to(device)
    if getattr(module, "channels_last", False):
        # The memory format the run's online teacher has (LightningKDModule.setup), so that
        # the cached logits are those it computes, up to the batch size's rounding.
        teacher: nn.Module = module.teacher
        teacher.to(memory_format=torch.channels_last)
    train = datamodule.train_dataset
    assert train is not None
    mine = list(range(rank, manifest.num_chunks, world_size))
    started = time.perf_counter()
    computed = 0
    bar = _Progress(enabled=progress and rank == 0, total=epochs * len(mine))
    try:
        for epoch in range(epochs):
            if rank == 0:
                _create_epoch(folder, manifest, epoch)
            barrier()
            files = epoch_files(folder, epoch, top_k)
            arrays = {name: np.load(path, mmap_mode="r+") for name, path in files.items()}
            done = np.load(done_file(folder, epoch), mmap_mode="r+")
            for chunk in mine:
                if done[chunk]:
                    bar.advance(epoch)
                    continue
                start = chunk * chunk_rows
                stop = min(start + chunk_rows, manifest.size)
                positions = torch.arange(start, stop)
                images = train.images.index_select(0, positions).to(device)
                samples = train.file_indices.index_select(0, positions).to(device)
                views = datamodule.make_views(images, samples, epoch)
                with torch.inference_mode(), autocast():
                    logits = module.cache_outputs(views)  # (R, V, K, C)
                parts = split_logits(logits.float(), top_k)
                for name, array in arrays.items():
                    array[start:stop] = parts[name].cpu().numpy().astype(array.dtype)
                    array.flush()
                done[chunk] = 1
                done.flush()
                computed += stop - start
                bar.advance(epoch)
            barrier()
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if rank == 0:
        extra = {
            "processes": world_size,
            "seconds": round(seconds, 3),
            "images_per_second_rank0": round(computed * manifest.num_views / seconds, 1)
            if computed and seconds > 0
            else None,
        }
        final = CacheManifest(**{**manifest.__dict__, "extra": extra})
        (folder / MANIFEST).write_text(final.to_json())
        return final
    return manifest


def _prepare_folder(folder: Path, manifest: CacheManifest, *, overwrite: bool) -> None:
    """Create ``folder`` with ``manifest``, keep a partial cache of the same run, and refuse
    (or with ``overwrite`` clear) a cache of another."""
    path = folder / MANIFEST
    if path.is_file():
        old = CacheManifest.from_json(path.read_text(), source=str(path))
        differences = old.differences(manifest)
        if not differences:
            return  # the same run: continue where it stopped
        if not overwrite:
            raise ValueError(
                f"{folder} holds a teacher cache of another run ({'; '.join(differences)}): "
                "choose another --out, or pass --overwrite to replace it"
            )
        for npy in folder.glob("*.npy"):
            npy.unlink()
        path.unlink()
    elif folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise ValueError(
                f"--out {folder} exists and is not a teacher cache (no {MANIFEST}): choose an "
                "empty or new folder, or pass --overwrite to clear it"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.to_json())


def _create_epoch(folder: Path, manifest: CacheManifest, epoch: int) -> None:
    """Create the (sparse) arrays and the ``done`` array of ``epoch`` unless they exist."""
    done = done_file(folder, epoch)
    if done.is_file():
        return
    for name, path in epoch_files(folder, epoch, manifest.top_k).items():
        shape, dtype = array_specs(manifest)[name]
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
    # Written last: its existence says the arrays exist.
    np.save(done, np.zeros(manifest.num_chunks, dtype=np.uint8))


class _Progress:
    """A rich progress bar over chunks (nothing when disabled)."""

    def __init__(self, *, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self._bar: Any = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("teacher cache, epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task("cache", total=total, epoch=0)
            self._bar.start()

    def advance(self, epoch: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, epoch=epoch)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
