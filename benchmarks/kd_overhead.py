"""Steps/s of KDModule under the Lightning Trainer vs a hand-written PyTorch loop.

Both sides do identical work on the same networks, batches and optimizer: teacher forward
under inference mode, student forward, ``0.1 * CE + 0.9 * T^2 KL`` at T=4, backward, SGD
step. The Lightning side additionally logs the loss parts and accuracies every step (as
KDModule always does), with the progress bar, checkpointing and the logger switched off.
Runs alternate (Lightning, loop, Lightning, loop, ...) and the median per side is reported;
timing starts after ``--warmup`` steps.

Usage (from the repository root)::

    .venv/bin/python benchmarks/kd_overhead.py --data-dir ../shared/data

Writes ``benchmarks/results/kd_overhead.md``.
"""

import argparse
import statistics
import time
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from report import load_average, write_result
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_kd.data import CIFAR10DataModule
from lightning_kd.models import SmallCNN
from lightning_kd.modules import KDModule

TEMPERATURE, ALPHA, LR = 4.0, 0.1, 0.05


def make_batches(data_dir: str, batch_size: int, steps: int) -> TensorDataset:
    """``steps`` normalised, augmented CIFAR-10 training batches, held in memory."""
    datamodule = CIFAR10DataModule(data_dir=data_dir, batch_size=batch_size)
    datamodule.setup("fit")
    xs, ys = [], []
    for batch in datamodule.train_dataloader():
        images, labels = datamodule.training_batch(batch)
        xs.append(images)
        ys.append(labels)
        if len(xs) == steps:
            break
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def make_networks(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=10, width=16), SmallCNN(num_classes=10, width=48)


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()


def run_lightning(data: TensorDataset, precision: str, batch_size: int, warmup: int) -> float:
    student, teacher = make_networks(0)
    module = KDModule(
        student,
        teacher,
        temperature=TEMPERATURE,
        alpha=ALPHA,
        optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, weight_decay=5e-4),
    )
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    steps = trainer.global_step - warmup
    return steps / (timer.end - timer.start)


def run_loop(data: TensorDataset, precision: str, batch_size: int, warmup: int) -> float:
    student, teacher = make_networks(0)
    teacher.requires_grad_(False)
    teacher.eval()
    student.train()
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    start = 0.0
    steps = 0
    for step, (x, y) in enumerate(loader):
        if step == warmup:
            start = time.perf_counter()
        with autocast:
            with torch.inference_mode():
                teacher_logits = teacher(x)
            teacher_logits = teacher_logits.clone()
            student_logits = student(x)
        s, t = student_logits.float(), teacher_logits.float()
        ce = F.cross_entropy(s, y)
        kd = F.kl_div(
            F.log_softmax(s / TEMPERATURE, dim=1),
            F.log_softmax(t / TEMPERATURE, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (TEMPERATURE**2)
        loss = ALPHA * ce + (1 - ALPHA) * kd
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return (steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    load_before = load_average()

    data = make_batches(args.data_dir, args.batch_size, args.steps)
    rows = []
    for precision in args.precisions:
        lightning_rates: list[float] = []
        loop_rates: list[float] = []
        for _ in range(args.repeats):
            lightning_rates.append(run_lightning(data, precision, args.batch_size, args.warmup))
            loop_rates.append(run_loop(data, precision, args.batch_size, args.warmup))
            print(f"{precision}: lightning {lightning_rates[-1]:.2f} loop {loop_rates[-1]:.2f}")
        ours, theirs = statistics.median(lightning_rates), statistics.median(loop_rates)
        paired = statistics.median(a / b for a, b in zip(lightning_rates, loop_rates, strict=True))
        rows.append(
            f"| {precision} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.3f} | {paired:.3f} | "
            f"{', '.join(f'{r:.2f}' for r in lightning_rates)} | "
            f"{', '.join(f'{r:.2f}' for r in loop_rates)} |"
        )
    body = "\n".join(
        [
            f"Teacher SmallCNN(width=48), student SmallCNN(width=16), CIFAR-10 batches of "
            f"{args.batch_size}, {args.steps - args.warmup} timed steps after {args.warmup} "
            f"warm-up steps, {args.repeats} alternating runs (Trainer, loop, Trainer, ...); "
            "this VM's speed drifts by several percent between runs, so the median of the "
            "per-round ratios is the figure to read. Target: ratio >= 0.95.",
            "",
            "| precision | KDModule + Trainer (steps/s) | hand-written loop (steps/s) | ratio "
            "of medians | median of paired ratios | Trainer runs | loop runs |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    path = write_result(
        "kd_overhead",
        "KD step overhead: Lightning vs hand-written loop",
        body,
        load_before=load_before,
    )
    print(body)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
