"""Training and inference images/s of the CPU networks in fp32 and bf16, NCHW and channels-last.

One training step is forward under autocast (bf16 rows) or none (fp32), float32
cross-entropy, backward and an SGD step, on a fixed random batch. Rows alternate over
``--repeats`` rounds and report the median.

Usage (from the repository root)::

    .venv/bin/python benchmarks/precision.py

Writes ``benchmarks/results/precision.md``.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from report import load_average, write_result
from torch import nn

from lightning_kd.models import SmallCNN, resnet20

NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "SmallCNN(width=16)": lambda: SmallCNN(10, 16),
    "SmallCNN(width=48)": lambda: SmallCNN(10, 48),
    "resnet20": lambda: resnet20(10),
}
SETTINGS = [("fp32", False), ("fp32", True), ("bf16-mixed", False), ("bf16-mixed", True)]


def _autocast(precision: str) -> AbstractContextManager[object]:
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def measure(
    make: Callable[[], nn.Module], precision: str, channels_last: bool, batch: int, steps: int
) -> tuple[float, float]:
    """(train images/s, eval images/s) after 5 warm-up steps."""
    torch.manual_seed(0)
    model = make()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with _autocast(precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    train = batch * steps / (time.perf_counter() - start)
    model.eval()
    with torch.inference_mode(), _autocast(precision):
        for _ in range(3):
            model(x)
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
    evaluation = batch * steps / (time.perf_counter() - start)
    return train, evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = load_average()
    runs: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for name, make in NETWORKS.items():
            for precision, channels_last in SETTINGS:
                result = measure(make, precision, channels_last, args.batch_size, args.steps)
                runs.setdefault((name, precision, channels_last), []).append(result)
    rows = []
    for (name, precision, channels_last), results in runs.items():
        train = statistics.median(r[0] for r in results)
        evaluation = statistics.median(r[1] for r in results)
        base_train = statistics.median(r[0] for r in runs[(name, "fp32", False)])
        rows.append(
            f"| {name} | {precision} | {'yes' if channels_last else 'no'} | {train:,.0f} | "
            f"{train / base_train:.2f}x | {evaluation:,.0f} |"
        )
    cpu_flags = _cpu_flags()
    body = "\n".join(
        [
            f"Batch {args.batch_size} of 32x32 images, {args.steps} timed steps after 5 warm-up "
            f"steps, median of {args.repeats} rounds. CPU flags: {cpu_flags}.",
            "",
            "| network | precision | channels-last | train img/s | vs fp32 NCHW | eval img/s |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    path = write_result(
        "precision", "Precision and memory format on this machine", body, load_before=load_before
    )
    print(body)
    print(f"written to {path}")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in wanted)


if __name__ == "__main__":
    main()
