"""Shards of a labeled training set for a kNN feature bank (see
:class:`~lightning_kd.callbacks.KNNEvaluation`): each process embeds one shard, the callback
gathers them."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, Subset

__all__ = ["bank_shard", "check_shard"]


def check_shard(*, num_replicas: int, rank: int) -> None:
    """Raise ``ValueError`` unless ``num_replicas >= 1`` and ``0 <= rank < num_replicas``."""
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(
            f"need num_replicas >= 1 and 0 <= rank < num_replicas, got "
            f"num_replicas={num_replicas}, rank={rank}"
        )


def bank_shard(dataset: Dataset[Any], *, num_replicas: int, rank: int) -> Subset[Any]:
    """Items ``rank, rank + num_replicas, ...`` of ``dataset``, without padding, so the shards
    of all ranks together hold every item exactly once.

    Raises:
        ValueError: If ``num_replicas < 1`` or ``rank`` is not in ``[0, num_replicas)``.
    """
    check_shard(num_replicas=num_replicas, rank=rank)
    return Subset(dataset, range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
