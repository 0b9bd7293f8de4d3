"""Feature- and relation-based KD on CIFAR-10 at a CPU budget: accuracy and step cost.

One teacher-student pair, the quickstart's: a trained ``SmallCNN(width=48)`` teacher (pass its
checkpoint, e.g. from ``make quickstart``) and a ``SmallCNN(width=16)`` student trained from
scratch on a class-balanced subset of the training set. Every row gets the same student
budget (epochs, subset, batch 128, SGD + Nesterov, one-cycle LR peaking at 0.1, weight decay
5e-4) and the standard weights of the CRD benchmark, unchanged:

* vanilla: CE;  KD: 0.1 CE + 0.9 KD at T=4;
* FitNets: CE + 100 hint (student layer2 -> teacher layer2 through a 1x1 conv + BN);
* AT: CE + 1000 attention transfer on layer1..3;  RKD: CE + (25 distance + 50 angle) on the
  pooled features;  CRD: CE + 0.8 CRD (128-d embeddings, 16,384 negatives, NCE T=0.07);
* DKD: CE + DKD (alpha 1, beta 8, T 4), its 20-of-240-epoch warm-up scaled to the budget
  (``max(1, round(epochs / 12))`` epochs).

Part 2 times one training step of each method side by side on the same in-memory batches
(alternating rounds, median) and reports the extra time over plain logit KD.

Usage (from the repository root, after ``make quickstart``)::

    .venv/bin/python benchmarks/feature_kd.py --data-dir ../shared/data \\
        --teacher runs/quickstart/seed0/teacher/version_0/final.ckpt

Writes ``benchmarks/results/feature_kd.md``.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from report import load_average, write_result
from torch import nn

from lightning_kd.data import CIFAR10DataModule
from lightning_kd.models import SmallCNN, load_weights
from lightning_kd.modules import (
    AttentionTerm,
    ClassifierModule,
    CRDTerm,
    DKDTerm,
    FeatureKDModule,
    HintTerm,
    KDModule,
    LightningKDModule,
    RKDTerm,
)

METHODS = ("vanilla", "kd", "fitnet", "at", "rkd", "crd", "dkd")


def build(
    method: str, teacher_path: str, *, subset: int, epochs: int, steps_per_epoch: int
) -> LightningKDModule:
    """The module of one row, with a freshly initialised student (seed set by the caller)."""
    student = SmallCNN(num_classes=10, width=16)
    optimizer = partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = partial(
        torch.optim.lr_scheduler.OneCycleLR,
        max_lr=0.1,
        total_steps=epochs * steps_per_epoch,
        pct_start=0.25,
    )
    common = {
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scheduler_interval": "step",
        "channels_last": True,
    }
    if method == "vanilla":
        return ClassifierModule(student, **common)  # type: ignore[arg-type]
    teacher = load_weights(SmallCNN(num_classes=10, width=48), teacher_path)
    if method == "kd":
        return KDModule(student, teacher, temperature=4.0, alpha=0.1, **common)  # type: ignore[arg-type]
    terms: dict[str, Callable[[], nn.Module]] = {
        "fitnet": lambda: HintTerm("layer2", "layer2", weight=100.0),
        "at": lambda: AttentionTerm(
            ["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"], weight=1000.0
        ),
        "rkd": lambda: RKDTerm("fc", "fc", capture="input", weight=1.0),
        "crd": lambda: CRDTerm(num_samples=subset, weight=0.8),
        "dkd": lambda: DKDTerm(warmup_epochs=max(1, round(epochs / 12))),
    }
    return FeatureKDModule(
        student,
        teacher,
        terms=[terms[method]()],  # type: ignore[list-item]
        ce_weight=1.0,
        kd_weight=0.0,
        **common,  # type: ignore[arg-type]
    )


def train_row(method: str, seed: int, args: argparse.Namespace) -> tuple[float, float]:
    """(test accuracy, seconds per epoch) of one method and seed."""
    L.seed_everything(seed, verbose=False)
    datamodule = CIFAR10DataModule(
        data_dir=args.data_dir,
        batch_size=128,
        eval_batch_size=500,
        train_subset=args.subset,
        seed=seed,
        channels_last=True,
        return_indices=method == "crd",
    )
    module = build(
        method,
        args.teacher,
        subset=args.subset,
        epochs=args.epochs,
        steps_per_epoch=args.subset // 128,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    (metrics,) = trainer.test(module, datamodule=datamodule, verbose=False)
    return float(metrics["test/acc"]), seconds / args.epochs


def step_cost(args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds per training step of each method on the same fixed batches."""
    datamodule = CIFAR10DataModule(
        data_dir=args.data_dir, batch_size=128, channels_last=True, return_indices=True
    )
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(datamodule.training_batch(batch))
        if len(batches) == args.cost_steps:
            break
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.cost_rounds):
        for method in METHODS:
            torch.manual_seed(0)
            module = build(method, args.teacher, subset=50000, epochs=1, steps_per_epoch=1)
            module.setup("fit")
            module.train()
            optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.01, momentum=0.9)
            for i, batch in enumerate(batches):
                if i == 3:
                    start = time.perf_counter()
                loss = module.compute_losses(batch)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            times[method].append(1000 * (time.perf_counter() - start) / (len(batches) - 3))
    return {m: statistics.median(v) for m, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--teacher", required=True, help="checkpoint of the SmallCNN(48) teacher")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cost-steps", type=int, default=15)
    parser.add_argument("--cost-rounds", type=int, default=3)
    args = parser.parse_args()
    load_before = load_average()

    rows = []
    vanilla_mean = None
    for method in args.methods:
        accs, epoch_times = [], []
        for seed in args.seeds:
            acc, per_epoch = train_row(method, seed, args)
            accs.append(100 * acc)
            epoch_times.append(per_epoch)
            print(f"{method} seed {seed}: {100 * acc:.2f}% ({per_epoch:.1f} s/epoch)", flush=True)
        mean = statistics.mean(accs)
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        if method == "vanilla":
            vanilla_mean = mean
        delta = "" if vanilla_mean is None else f"{mean - vanilla_mean:+.2f}"
        rows.append(
            f"| {method} | {mean:.2f} ± {spread:.2f} | {delta} | "
            f"{', '.join(f'{a:.2f}' for a in accs)} | {statistics.mean(epoch_times):.1f} |"
        )
    costs = step_cost(args)
    cost_rows = [
        f"| {m} | {costs[m]:.1f} | {costs[m] - costs['kd']:+.1f} | {costs[m] / costs['kd']:.2f}x |"
        for m in METHODS
    ]
    body = "\n".join(
        [
            f"CIFAR-10 (`{args.data_dir}`), teacher `{args.teacher}` (SmallCNN width 48), "
            f"student SmallCNN width 16 on a class-balanced {args.subset:,}-image subset, "
            f"{args.epochs} epochs, batch 128, seeds {args.seeds}; test accuracy on the 10,000 "
            "test images, mean ± sample standard deviation over seeds. Every row has the same "
            "budget and the CRD benchmark's weights (see the script's docstring).",
            "",
            "| method | test acc (%) | vs vanilla | per seed | s / epoch |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Step cost: median ms per training step (batch 128, {args.cost_steps - 3} timed "
            f"steps, {args.cost_rounds} alternating rounds), the extra over logit KD.",
            "",
            "| method | ms / step | vs KD | ratio |",
            "|---|---|---|---|",
            *cost_rows,
        ]
    )
    path = write_result(
        "feature_kd",
        "Feature and relation KD on CIFAR-10 (CPU budget)",
        body,
        load_before=load_before,
    )
    print(body)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
