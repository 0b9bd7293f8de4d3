"""Two gloo CPU processes update a DINOCenter with different, unevenly sized batches.

Usage: ``python dino_center_ddp_script.py OUT_DIR``. Each rank makes ``NUM_STEPS`` updates with
its own teacher outputs (rank 0 has 3 images per view, rank 1 has 5), accumulated one view at a
time (as micro-batches of an optimizer step would be) and then applied by one ``update``; it
writes ``OUT_DIR/rank{0,1}.pt`` with the center after every step, shape
``(NUM_STEPS, 1, DIM)``. The batches come from :func:`rank_views`, which the test imports to
compute the expected single-process result.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from lightning_kd.losses.dino import DINOCenter

WORLD_SIZE = 2
DIM = 4
MOMENTUM = 0.75
NUM_STEPS = 2
NUM_VIEWS = 2
BATCH_SIZES = (3, 5)  # per view; rank 1 has more images than rank 0


def rank_views(rank: int, step: int) -> list[Tensor]:
    """Teacher outputs of ``rank`` at ``step``: ``NUM_VIEWS`` tensors of shape ``(B_rank, DIM)``.

    Rank 1's values are shifted by +3 so the two ranks' means differ clearly.
    """
    gen = torch.Generator().manual_seed(1000 * step + rank)
    shift = 3.0 * rank
    return [torch.randn(BATCH_SIZES[rank], DIM, generator=gen) + shift for _ in range(NUM_VIEWS)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        center = DINOCenter(DIM, momentum=MOMENTUM)
        history = []
        for step in range(NUM_STEPS):
            for view in rank_views(rank, step):
                center.accumulate(view)  # local: no collective
            center.update()  # one all-reduce of the pending sum and count
            history.append(center.center.clone())
        torch.save(torch.stack(history), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(_free_port(), sys.argv[1]), nprocs=WORLD_SIZE, join=True)


if __name__ == "__main__":
    main()
