"""The distributed helpers every lightning-kd component uses (no-ops on one process).

Each is guarded by :func:`is_distributed`, so CPU tests and single-process runs never touch
``torch.distributed``; under DDP (any backend, e.g. gloo on CPU) they are collective calls
that every process must make in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_cat",
    "all_gather_uneven",
    "all_reduce_mean_",
    "all_reduce_sum_",
    "is_distributed",
    "world_size_and_rank",
]


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size_and_rank() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised process group, else ``(1, 0)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes, in place; returns it (unchanged on one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over all processes, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate the equal-shaped ``tensor`` of every process along dim 0, in rank order
    (``tensor`` itself on one process)."""
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def all_gather_uneven(*tensors: Tensor) -> tuple[Tensor, ...]:
    """All-gather tensors whose first dimension ``n_r`` differs by process.

    Every tensor of one call shares ``n_r`` on its process; trailing dimensions must agree
    across processes, except that an empty shard (``n_r = 0``) may have any trailing size
    (e.g. ``(0, 0)`` features). Each process pads to the longest shard, the padded tensors
    are gathered and the padding dropped.

    Returns:
        The concatenations in rank order, identical on every process (the inputs themselves
        on one process).
    """
    if not is_distributed():
        return tensors
    world_size = dist.get_world_size()
    device = tensors[0].device
    local = torch.tensor([tensors[0].shape[0]], dtype=torch.long, device=device)
    sizes_t = [torch.zeros_like(local) for _ in range(world_size)]
    dist.all_gather(sizes_t, local)
    sizes = [int(s) for s in sizes_t]
    longest = max(sizes)
    gathered = []
    for tensor in tensors:
        trailing = torch.tensor(list(tensor.shape[1:]) or [0], dtype=torch.long, device=device)
        shapes = [torch.zeros_like(trailing) for _ in range(world_size)]
        dist.all_gather(shapes, trailing)
        widest = [max(int(s[i]) for s in shapes) for i in range(trailing.numel())]
        shape = (longest, *widest) if tensor.dim() > 1 else (longest,)
        padded = torch.zeros(shape, dtype=tensor.dtype, device=device)
        if tensor.shape[0] > 0:
            padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]))
    return tuple(gathered)
