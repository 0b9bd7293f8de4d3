"""In-memory image datasets whose batches say which sample and epoch each image is.

A training sampler (:mod:`lightning_kd.data.samplers`) does not yield positions but *draw
keys*: ``key = ((epoch << 16) + repeat) * len(dataset) + position``, where ``repeat`` counts
the passes over the dataset within one epoch (for streams that cycle, as the labeled stream of a
semi-supervised epoch). :class:`TensorImageDataset` decodes them, so a training batch carries
what its views are a function of: the epoch and each image's sample index (its index in the
dataset file, offset by ``repeat * key_stride`` for later passes of an epoch), whatever worker,
process or batch it went through.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["REPEAT_BITS", "TensorImageDataset", "collate_batch", "draw_key"]

#: Bits of a draw key's ``repeat`` field: up to 65,536 passes over a dataset per epoch.
REPEAT_BITS = 16


def draw_key(epoch: int, repeat: int, position: int | Tensor, size: int) -> int | Tensor:
    """The draw key of ``position`` in pass ``repeat`` of ``epoch`` over a dataset of ``size``."""
    if not 0 <= repeat < 2**REPEAT_BITS:
        raise ValueError(f"repeat must be in [0, {2**REPEAT_BITS}), got {repeat}")
    return ((epoch << REPEAT_BITS) + repeat) * size + position


class TensorImageDataset(Dataset[tuple[Tensor, ...]]):
    """``uint8`` images in memory with batched indexing.

    The DataLoader calls :meth:`__getitems__` with the keys of one batch, so a batch costs
    one ``index_select``. Keys are plain positions ``0 .. N-1`` (evaluation loaders) or draw
    keys (training samplers; see the module docstring).

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        targets: ``int64`` tensor ``(N,)``.
        file_indices: int64 ``(N,)`` index of each image in its dataset file; ``None`` means
            ``0 .. N-1``.
        key_stride: Added to the sample index per extra pass of an epoch (the size of the
            dataset file), so that repeated draws of an image within an epoch get their own
            views.
        keyed: Batches carry ``(sample_indices, positions, epoch)`` after the images and
            labels (training sets); ``False`` gives plain ``(images, targets)`` batches
            (evaluation sets).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        file_indices: Tensor | None = None,
        key_stride: int | None = None,
        keyed: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        n = images.shape[0]
        if targets.shape != (n,):
            raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
        if file_indices is None:
            file_indices = torch.arange(n)
        if file_indices.shape != (n,):
            raise ValueError(
                f"file_indices must have shape ({n},), got {tuple(file_indices.shape)}"
            )
        self.images = images.contiguous()
        self.targets = targets.long()
        self.file_indices = file_indices.long()
        self.key_stride = int(key_stride) if key_stride is not None else n
        self.keyed = keyed

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key: int) -> tuple[Tensor, ...]:
        """One sample (a batch of one): see :meth:`__getitems__`."""
        images, targets, *rest = self.__getitems__([key])
        return (images[0], targets[0], *rest)

    def __getitems__(self, keys: list[int]) -> tuple[Any, ...]:
        """One batch.

        Returns:
            ``(images, targets, sample_indices, positions, epoch)``: ``uint8`` ``(B, C, H,
            W)``, int64 ``(B,)`` three times (labels, sample indices, positions in this
            dataset), and the epoch as a Python int (0 for plain positions); without
            ``keyed``, ``(images, targets)``.

        Raises:
            ValueError: If the keys of one batch come from different epochs.
        """
        k = torch.as_tensor(keys, dtype=torch.long)
        n = len(self)
        if not self.keyed:
            return self.images.index_select(0, k), self.targets.index_select(0, k)
        if not keys:
            empty = torch.zeros(0, dtype=torch.long)
            return self.images[:0], self.targets[:0], empty, empty, 0
        low, high = min(keys), max(keys)
        block = int(low) // n  # (epoch << REPEAT_BITS) + repeat of the first key
        if int(high) // n == block:  # one epoch and pass (the usual case): few tensor ops
            epoch, repeat = block >> REPEAT_BITS, block & (2**REPEAT_BITS - 1)
            positions = k - block * n if block else k
            samples = self.file_indices.index_select(0, positions)
            if repeat:
                samples = samples + repeat * self.key_stride
        else:
            rest = k // n
            positions = k - rest * n
            epochs = rest >> REPEAT_BITS
            epoch = int(epochs[0])
            if bool((epochs != epoch).any()):
                raise ValueError(f"one batch mixes epochs {sorted(set(epochs.tolist()))}")
            repeats = rest & (2**REPEAT_BITS - 1)
            samples = self.file_indices.index_select(0, positions) + repeats * self.key_stride
        images = self.images.index_select(0, positions)
        return images, self.targets.index_select(0, positions), samples, positions, epoch


def collate_batch(batch: Any) -> list[Any]:
    """Collate function for :class:`TensorImageDataset` (module level, so it pickles).

    Args:
        batch: The tuple returned by ``__getitems__``, or a list of per-sample tuples (when a
            loader bypasses ``__getitems__``).

    Returns:
        ``[images, targets, sample_indices, positions, epoch]`` (or ``[images, targets]``) as
        in :meth:`TensorImageDataset.__getitems__`.
    """
    if isinstance(batch, tuple) and len(batch) in (2, 5) and isinstance(batch[0], Tensor):
        return list(batch)
    columns = list(zip(*batch, strict=True))
    images = torch.stack(list(columns[0]))
    if len(columns) == 2:
        return [images, torch.stack([torch.as_tensor(v) for v in columns[1]]).long()]
    tensors = [torch.cat([torch.as_tensor(v).view(-1) for v in column]) for column in columns[1:4]]
    return [images, *tensors, int(columns[4][0])]
