"""Training order as a pure function of ``(seed, epoch, rank)``, and loaders that resume exactly.

:class:`EpochSampler` orders each epoch by :func:`~lightning_kd.data.keyed_random.
epoch_permutation` and gives process ``rank`` every ``num_replicas``-th entry;
:class:`CyclingDistributedSampler` does the same for a stream that cycles over a small set
(the labeled images of a semi-supervised epoch). Both yield draw keys
(:func:`~lightning_kd.data.datasets.draw_key`), so every batch knows its epoch, and both can
start an epoch part-way (``skip_batches``).

:class:`ResumableDataLoader` counts the batches it has delivered in the current epoch and
exposes them through ``state_dict`` / ``load_state_dict``, which Lightning saves in every
checkpoint and restores on resume: a run resumed from a mid-epoch checkpoint continues with
the next batch of the same epoch order, none replayed or skipped. (Lightning does not
prefetch from sized loaders, so the count is the number of batches the loop has taken.)

Both samplers subclass ``DistributedSampler``: Lightning then neither replaces them under DDP
nor forgets to call ``set_epoch``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

from lightning_kd.data.datasets import draw_key
from lightning_kd.data.keyed_random import epoch_permutation, mix32

__all__ = ["CyclingDistributedSampler", "EpochSampler", "ResumableDataLoader"]


def _check_world(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(
            f"need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas="
            f"{num_replicas}, rank={rank}"
        )


class EpochSampler(DistributedSampler[int]):
    """One process's share of an epoch, in an order that is a pure function of
    ``(seed, epoch)``.

    The epoch's order is ``epoch_permutation(N, seed, epoch)`` (or ``range(N)`` without
    ``shuffle``), padded by wrapping around to a multiple of ``num_replicas``; process
    ``rank`` takes entries ``rank, rank + num_replicas, ...`` (as ``DistributedSampler``).

    Args:
        dataset: The dataset the keys refer to (only its length is used).
        seed: Seed of the order.
        num_replicas: Number of processes.
        rank: This process's rank.
        shuffle: Permute each epoch; ``False`` keeps dataset order.
        batch_size: Batch size of the loader; ``skip_batches`` counts in these.

    Raises:
        ValueError: If ``num_replicas`` / ``rank`` / ``batch_size`` are out of range.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        batch_size: int = 1,
    ) -> None:
        _check_world(num_replicas, rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.size = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size
        #: Batches of the next epoch to leave out (set by a resume).
        self.skip_batches = 0

    def positions(self) -> Tensor:
        """This process's positions for the current epoch, int64 ``(num_samples,)``."""
        order = (
            epoch_permutation(self.size, self.seed, self.epoch)
            if self.shuffle
            else torch.arange(self.size)
        )
        if self.total_size > self.size:  # pad by wrapping, as DistributedSampler
            reps = -(-self.total_size // self.size)
            order = order.repeat(reps)[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    @override
    def __iter__(self) -> Iterator[int]:
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        keys = draw_key(self.epoch, 0, self.positions()[start:], self.size)
        return iter(keys.tolist())  # type: ignore[union-attr]

    @override
    def __len__(self) -> int:
        return self.num_samples


class CyclingDistributedSampler(DistributedSampler[int]):
    """Keys of one process for one epoch: reshuffled passes, cut into equal global steps.

    For epoch ``e`` the sampler builds one global stream: pass 0, pass 1, ... over
    ``range(len(dataset))``, each a fresh permutation (a pure function of ``seed``, ``salt``,
    ``e`` and the pass) truncated to a multiple of ``num_replicas * batch_size``. Global step
    ``t`` takes the next ``num_replicas * batch_size`` entries of the stream; process ``rank``
    gets the ``rank``-th block of ``batch_size`` of them. So:

    * within one global step, all processes together draw distinct images;
    * within one pass, no image is drawn twice by any process;
    * a stream needing one pass or less gives every process disjoint images over the epoch;
    * the order depends only on the seeds and the epoch (:meth:`set_epoch`), so every process
      computes the same global stream without communicating.

    The keys carry the pass number (``repeat``), so an image drawn in two passes of an epoch
    gets two different views.

    Args:
        dataset: The dataset the keys refer to (only its length is used).
        batch_size: Images per process per step.
        num_batches: Steps per epoch; the sampler yields ``num_batches * batch_size`` keys.
        num_replicas: Number of processes (DDP world size).
        rank: This process's rank in ``[0, num_replicas)``.
        seed: Base seed of the permutations.
        salt: Separates independent streams that share ``seed`` (e.g. labeled and unlabeled).

    Raises:
        ValueError: If a size is out of range, or the dataset is smaller than one global step
            (``num_replicas * batch_size``).
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        num_batches: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        salt: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        _check_world(num_replicas, rank)
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.num_indices = len(dataset)  # type: ignore[arg-type]
        step = num_replicas * batch_size
        if self.num_indices < step:
            raise ValueError(
                f"the dataset has {self.num_indices} images, fewer than one global step of "
                f"batch_size={batch_size} x num_replicas={num_replicas} = {step}"
            )
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.salt = salt
        self.num_samples = num_batches * batch_size
        self.total_size = self.num_samples * num_replicas
        self.skip_batches = 0

    def _permutation(self, pass_index: int) -> Tensor:
        """Permutation of ``range(num_indices)`` for pass ``pass_index`` of the current epoch."""
        stream = mix32((self.salt & 0xFFFFFFFF) ^ mix32(pass_index & 0xFFFFFFFF))
        return epoch_permutation(self.num_indices, self.seed, self.epoch, stream=stream)

    def global_stream(self) -> Tensor:
        """The keys of every process for the current epoch.

        Returns:
            int64 tensor ``(num_batches, num_replicas, batch_size)``: entry ``[t, r]`` is the
            batch of draw keys that process ``r`` takes at step ``t``.
        """
        step = self.num_replicas * self.batch_size
        per_pass = (self.num_indices // step) * step
        needed = self.num_batches * step
        passes = [
            draw_key(self.epoch, p, self._permutation(p)[:per_pass], self.num_indices)
            for p in range(-(-needed // per_pass))
        ]
        stream = torch.cat(passes) if passes else torch.zeros(0, dtype=torch.long)  # type: ignore[arg-type]
        return stream[:needed].view(self.num_batches, self.num_replicas, self.batch_size)

    @override
    def __iter__(self) -> Iterator[int]:
        start, self.skip_batches = self.skip_batches, 0
        return iter(self.global_stream()[start:, self.rank].reshape(-1).tolist())

    @override
    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader[Any]):
    """A ``DataLoader`` over an :class:`EpochSampler` or :class:`CyclingDistributedSampler`
    that can be saved and restored mid-epoch.

    ``state_dict()`` is ``{"epoch", "batches_done", "num_batches"}`` for the epoch being
    iterated; ``load_state_dict`` makes the next iteration continue that epoch after its
    ``batches_done`` batches (or start the next epoch if it was complete). Lightning calls
    both (it saves the state of every training loader that has them).
    """

    def _keyed_sampler(self) -> EpochSampler | CyclingDistributedSampler:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler | CyclingDistributedSampler):
            raise TypeError(
                "ResumableDataLoader needs an EpochSampler or CyclingDistributedSampler, got "
                f"{type(sampler).__name__}"
            )
        return sampler

    @override
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self._keyed_sampler()
        self._epoch = sampler.epoch
        self._batches_done = sampler.skip_batches
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the current epoch stands: ``{"epoch", "batches_done", "num_batches"}``."""
        sampler = self._keyed_sampler()
        return {
            "epoch": getattr(self, "_epoch", sampler.epoch),
            "batches_done": getattr(self, "_batches_done", 0),
            "num_batches": len(self),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch after its ``batches_done`` batches on the next iteration.

        Raises:
            ValueError: If the saved epoch had another number of batches (a changed batch
                size, dataset or world size), since its order can then not be continued.
        """
        sampler = self._keyed_sampler()
        if int(state["num_batches"]) != len(self):
            raise ValueError(
                f"the checkpoint's training epoch has {state['num_batches']} batches per process, "
                f"this loader {len(self)}: batch size, training set or number of processes "
                "changed, so the epoch cannot be continued exactly. Resume with the settings that "
                "wrote the checkpoint"
            )
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):
            sampler.set_epoch(epoch + 1)
            sampler.skip_batches = 0
        else:
            sampler.set_epoch(epoch)
            sampler.skip_batches = done
        self._epoch, self._batches_done = sampler.epoch, sampler.skip_batches
