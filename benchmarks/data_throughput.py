"""Training-input throughput of the CIFAR-10 pipelines on real data, this tree vs a reference.

Measures images/s through the whole training input pipeline as the datamodule runs it:
iterate the train DataLoader and apply what ``on_after_batch_transfer`` applies in training
(here on the CPU, since no accelerator is involved): the batch transform and normalisation.
Pipelines (one row each):

* ``crop_flip``: supervised / KD training, pad-4 crop + flip, one view;
* ``mt_two_views``: the semi-supervised datamodule (31 labeled + 97 unlabeled images a step),
  two crop + flip views of each, as Mean Teacher trains;
* ``dino_multicrop``: DINO's 2 global (32 px) + 4 local (16 px) views;
* ``byol_two_views``: BYOL's two views.

With ``--reference DIR`` (a checkout of another commit, e.g. made with
``git worktree add /tmp/ref <commit>``), every pipeline is also measured with that checkout's
``lightning_kd``, alternating reference and this tree in separate processes, one at a time, so
the two are compared side by side in one run under the same load. The script adapts to the
datamodule API it finds (``transform=`` / ``views=`` and ``training_batch`` /
``transform_batch``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/data_throughput.py [--reference /tmp/ref] [--repeats 3]

Prints a markdown table and writes ``benchmarks/results/data_throughput.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("crop_flip", "mt_two_views", "dino_multicrop", "byol_two_views")


def _datamodule(kind: str, data_dir: str, batch_size: int) -> Any:
    """The datamodule of ``kind``, in whichever API the imported ``lightning_kd`` has."""
    import inspect

    from lightning_kd import data

    new_api = "transform" in inspect.signature(data.CIFAR10DataModule).parameters
    if kind == "mt_two_views":
        dm = data.CIFAR10SSLDataModule(data_dir=data_dir)
    else:
        views = {
            "crop_flip": None,
            "dino_multicrop": lambda: data.MultiCropViews(num_local=4),
            "byol_two_views": lambda: data.TwoViews(),
        }[kind]
        extra = {}
        if views is not None:
            extra = {"transform": views()} if new_api else {"views": views()}
        dm = data.CIFAR10DataModule(data_dir=data_dir, batch_size=batch_size, **extra)
    dm.setup("fit")
    return dm


def _transform(dm: Any, batch: Any) -> Any:
    """Apply the training transform of ``on_after_batch_transfer`` to one loader batch."""
    if isinstance(batch, tuple):  # CombinedLoader: (batch, batch_idx, dataloader_idx)
        batch = batch[0]
    if isinstance(batch, dict):  # semi-supervised: the dict path is always training
        return dm.on_after_batch_transfer(batch, 0)
    if hasattr(dm, "training_batch"):
        return dm.training_batch(batch)
    return dm.transform_batch(batch, train=True)


def measure(kind: str, data_dir: str, batch_size: int, max_batches: int, warmup: int) -> dict:
    """One pipeline: images/s over ``max_batches`` batches after ``warmup`` (one thread)."""
    import torch

    torch.set_num_threads(1)
    dm = _datamodule(kind, data_dir, batch_size)
    loader = dm.train_dataloader()
    stream = iter(loader)

    def next_batch() -> Any:
        nonlocal stream
        try:
            return next(stream)
        except StopIteration:
            stream = iter(loader)
            return next(stream)

    for _ in range(warmup):
        _transform(dm, next_batch())
    images = 0
    start = time.perf_counter()
    for _ in range(max_batches):
        out = _transform(dm, next_batch())
        first = out["unlabeled"][0] if isinstance(out, dict) else out[0]
        if isinstance(out, dict):
            images += out["labeled"][0].shape[0] + first.shape[0]
        else:
            images += (first[0] if isinstance(first, list) else first).shape[0]
    seconds = time.perf_counter() - start
    return {"kind": kind, "images": images, "seconds": seconds, "images_per_s": images / seconds}


def _run_one(tree: Path, kind: str, args: argparse.Namespace) -> dict:
    """Measure ``kind`` in a fresh process importing ``lightning_kd`` from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--data-dir",
        str(args.data_dir),
        "--batch-size",
        str(args.batch_size),
        "--max-batches",
        str(args.max_batches),
        "--warmup",
        str(args.warmup),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data", help="relative to the repo root")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reference", type=Path, default=None, help="checkout to compare with")
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = (REPO_ROOT / args.data_dir).resolve()
    if args.worker is not None:
        result = measure(
            args.worker, str(args.data_dir), args.batch_size, args.max_batches, args.warmup
        )
        print(json.dumps(result))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import busy, load_average, write_result

    trees = {"this tree": REPO_ROOT}
    if args.reference is not None:
        trees = {"reference": args.reference.resolve(), **trees}
    load_before = load_average()
    rates: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for kind in args.pipelines:
            for name, tree in trees.items():
                r = _run_one(tree, kind, args)
                rates.setdefault((kind, name), []).append(r["images_per_s"])
                rate = r["images_per_s"]
                print(f"[{repeat}] {kind:15s} {name:10s} {rate:,.0f} images/s", flush=True)

    lines = [
        f"Data: {args.data_dir / 'cifar-10-batches-py'} (50,000 train images), batch size "
        f"{args.batch_size} (semi-supervised: 31 + 97), {args.max_batches} batches per "
        f"measurement after {args.warmup} warm-up batches, 1 torch thread, no workers, "
        f"{args.repeats} measurements each, each in a fresh process; "
        + (
            f"reference = `lightning_kd` of {args.reference} and this tree measured "
            "alternately, one process at a time."
            if args.reference is not None
            else "this tree only."
        ),
        "",
        "Each measurement iterates the training DataLoader and applies the training transform "
        "of `on_after_batch_transfer` (views + normalisation) on the CPU.",
        "",
    ]
    names = list(trees)
    lines += [
        "Timings on this shared 2-core VM vary by up to 2x between identical runs, so both the "
        "median and the best (highest) of the measurements are given; noise only ever slows a "
        "measurement down, so the best is the steadier comparison.",
        "",
    ]
    header = "| pipeline | " + " | ".join(f"{n}: median / best (images/s)" for n in names)
    header += " | this tree / reference (median, best) |" if len(names) == 2 else " |"
    lines += [header, "| --- |" + " ---: |" * (len(names) + (len(names) == 2))]
    summary = {}
    for kind in args.pipelines:
        medians = {n: statistics.median(rates[(kind, n)]) for n in names}
        bests = {n: max(rates[(kind, n)]) for n in names}
        summary[kind] = {
            n: {"median": medians[n], "best": bests[n], "all": rates[(kind, n)]} for n in names
        }
        row = f"| {kind} | " + " | ".join(f"{medians[n]:,.0f} / {bests[n]:,.0f}" for n in names)
        if len(names) == 2:
            ratio = medians["this tree"] / medians["reference"]
            best_ratio = bests["this tree"] / bests["reference"]
            summary[kind]["ratio_median"] = ratio
            summary[kind]["ratio_best"] = best_ratio
            row += f" | {ratio:.2f}x, {best_ratio:.2f}x |"
        else:
            row += " |"
        lines.append(row)
    if busy():
        lines += ["", f"Note: the 1-minute load average was above the {os.cpu_count()} cores."]
    body = "\n".join(lines)
    print(body)
    path = write_result(
        "data_throughput", "CIFAR-10 training-input throughput", body, load_before=load_before
    )
    (path.with_suffix(".json")).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
