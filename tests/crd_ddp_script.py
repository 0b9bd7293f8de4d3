"""Two gloo CPU processes update a CRDMemory with different batches; each saves its state.

Usage: ``python crd_ddp_script.py OUT_DIR``. Writes ``OUT_DIR/rank{0,1}.pt`` with the
memory's state dict after one update. The batches are built by :func:`rank_batch`, which the
test imports to compute the expected single-process result.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses.crd import CRDMemory

WORLD_SIZE = 2
NUM_SAMPLES = 10
EMBED_DIM = 4
# Rank 0 updates ids 0, 1, 2; rank 1 updates ids 5, 6, 2 (id 2 on both ranks: rank 1 wins).
RANK_INDICES = ([0, 1, 2], [5, 6, 2])


def make_memory() -> CRDMemory:
    """The memory every rank starts from (same seed, so identical banks)."""
    torch.manual_seed(0)
    return CRDMemory(NUM_SAMPLES, EMBED_DIM, num_negatives=3, temperature=0.5, momentum=0.5)


def rank_batch(rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(student_embed, teacher_embed, indices)`` of ``rank``: unit rows of shape (3, 4)."""
    gen = torch.Generator().manual_seed(100 + rank)
    student = F.normalize(torch.randn(3, EMBED_DIM, generator=gen), dim=1)
    teacher = F.normalize(torch.randn(3, EMBED_DIM, generator=gen), dim=1)
    return student, teacher, torch.tensor(RANK_INDICES[rank])


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        memory = make_memory()
        student, teacher, indices = rank_batch(rank)
        gen = torch.Generator().manual_seed(rank)  # different negatives per rank
        memory.update(student, teacher, indices, generator=gen)
        torch.save(memory.state_dict(), Path(out_dir) / f"rank{rank}.pt")
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
