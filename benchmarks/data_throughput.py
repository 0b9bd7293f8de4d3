"""Training-input throughput of the CIFAR-10 pipelines on real data.

Measures images/s through the whole training input pipeline as the DataModule runs it:
iterate the train DataLoader and, for the fast path, apply the batch augmentation and
normalisation that ``on_after_batch_transfer`` applies in training (here on the CPU, since no
accelerator is involved). Compared:

* ``batch``: in-memory uint8 tensor, one gather per batch, crop/flip/normalise on the batch;
* ``pil``: per-sample PIL images through torchvision's RandomCrop/RandomHorizontalFlip/
  ToTensor/Normalize in the DataLoader.

Usage (from the repository root)::

    .venv/bin/python benchmarks/data_throughput.py [--data-dir ../shared/data]

Prints a markdown table and writes it to ``benchmarks/results/data_throughput.md``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from report import busy, load_average, write_result
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_kd.data import CIFAR10DataModule

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """One measured configuration."""

    augment: str
    threads: int
    num_workers: int
    setup_s: float
    batches: int
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def _forever(loader: DataLoader[Any]) -> Iterator[list[Tensor]]:
    """Yield batches from ``loader`` epoch after epoch (its workers are persistent)."""
    while True:
        yield from loader


def measure(
    data_dir: Path,
    *,
    augment: str,
    num_workers: int,
    batch_size: int,
    max_batches: int,
    max_seconds: float,
    warmup: int,
) -> Result:
    """Run the training input pipeline for ``max_batches`` batches or ``max_seconds``."""
    start = time.perf_counter()
    dm = CIFAR10DataModule(
        data_dir=str(data_dir),
        batch_size=batch_size,
        num_workers=num_workers,
        augment=augment,  # type: ignore[arg-type]
    )
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    stream = _forever(loader)
    for _ in range(warmup):  # includes worker start-up
        batch = next(stream)
        if augment == "batch":
            dm.transform_batch(batch, train=True)

    n_batches = n_images = 0
    start = time.perf_counter()
    while n_batches < max_batches and time.perf_counter() - start < max_seconds:
        batch = next(stream)
        if augment == "batch":
            batch = dm.transform_batch(batch, train=True)
        images = batch[0]
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
        n_batches += 1
        n_images += images.shape[0]
    seconds = time.perf_counter() - start
    del stream, loader  # shut persistent workers down before the next configuration
    return Result(
        augment, torch.get_num_threads(), num_workers, setup_s, n_batches, n_images, seconds
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="relative to the repo root")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads(), 1],
        help="torch.set_num_threads values to try in the main process",
    )
    args = parser.parse_args()
    data_dir = (REPO_ROOT / args.data_dir).resolve()

    busy_before = busy()
    load_before = load_average()
    results = []
    for threads, augment, workers in itertools.product(
        dict.fromkeys(args.threads), ("batch", "pil"), args.workers
    ):
        torch.set_num_threads(threads)
        r = measure(
            data_dir,
            augment=augment,
            num_workers=workers,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
            max_seconds=args.max_seconds,
            warmup=args.warmup,
        )
        print(
            f"threads={threads} {augment:5s} workers={workers}: {r.images_per_s:,.0f} images/s",
            flush=True,
        )
        results.append(r)

    fast = {(r.threads, r.num_workers): r.images_per_s for r in results if r.augment == "batch"}
    lines = [
        f"Data: {data_dir / 'cifar-10-batches-py'} (50,000 train images), "
        f"batch size {args.batch_size}, up to {args.max_batches} batches or "
        f"{args.max_seconds:g} s per row after {args.warmup} warm-up batches.",
        "",
        "Each row iterates the training DataLoader and, for `batch`, applies the training "
        "transform of `on_after_batch_transfer` (pad-4 random crop, flip, float, normalise) on "
        "the CPU; `pil` batches come out of the DataLoader already transformed. With a GPU the "
        "`batch` transform runs on the device after transfer instead. `vs batch` is the "
        "throughput relative to the `batch` row with the same threads and workers. The machine "
        "is shared, so the load average says how busy it was.",
        "",
        "| torch threads | pipeline | num_workers | setup (s) | batches | images | seconds "
        "| images/s | vs batch |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        key = (r.threads, r.num_workers)
        ratio = r.images_per_s / fast[key] if key in fast else float("nan")
        lines.append(
            f"| {r.threads} | {r.augment} | {r.num_workers} | {r.setup_s:.2f} | {r.batches} | "
            f"{r.images} | {r.seconds:.2f} | {r.images_per_s:,.0f} | {ratio:.2f}x |"
        )
    if busy_before or busy():
        lines += [
            "",
            f"Note: the 1-minute load average was above the {os.cpu_count()} cores at the start "
            "or the end of this run (it also counts jobs that ended within the last minute). "
            "Multi-threaded torch ops wait on busy cores, which hits the `batch` rows with more "
            "than one torch thread hardest (many short parallel kernels per batch); the 1-thread "
            "rows are the better comparison on a busy machine.",
        ]
    body = "\n".join(lines)
    print(body)
    path = write_result(
        "data_throughput", "CIFAR-10 training-input throughput", body, load_before=load_before
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
