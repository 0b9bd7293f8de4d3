"""The distributed helpers: no-ops on one process, exact collectives on 2 gloo processes."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_kd.distributed import (
    all_gather_cat,
    all_gather_uneven,
    all_reduce_mean_,
    all_reduce_sum_,
    is_distributed,
    world_size_and_rank,
)


def test_single_process_helpers_are_no_ops() -> None:
    assert not is_distributed() and world_size_and_rank() == (1, 0)
    x = torch.tensor([1.0, 2.0])
    assert all_reduce_sum_(x) is x and x.tolist() == [1.0, 2.0]
    assert all_reduce_mean_(x).tolist() == [1.0, 2.0]
    assert all_gather_cat(x) is x
    features, labels = all_gather_uneven(torch.ones(3, 2), torch.arange(3))
    assert features.shape == (3, 2) and labels.tolist() == [0, 1, 2]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        total = all_reduce_sum_(torch.tensor([float(rank + 1)]))
        mean = all_reduce_mean_(torch.tensor([float(rank + 1)]))
        cat = all_gather_cat(torch.full((2,), rank))
        # Rank 0 has 3 rows of 4 features, rank 1 an empty shard shaped (0, 0).
        n = 3 if rank == 0 else 0
        feats = torch.arange(12.0).view(3, 4) if rank == 0 else torch.zeros(0, 0)
        uneven = all_gather_uneven(feats, torch.arange(n) + 10 * rank)
        torch.save(
            {
                "world": world_size_and_rank(),
                "total": total,
                "mean": mean,
                "cat": cat,
                "feats": uneven[0],
                "labels": uneven[1],
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["world"] == (2, rank)
        assert result["total"].tolist() == [3.0] and result["mean"].tolist() == [1.5]
        assert result["cat"].tolist() == [0, 0, 1, 1]
        assert torch.equal(result["feats"], torch.arange(12.0).view(3, 4))
        assert result["labels"].tolist() == [0, 1, 2]
