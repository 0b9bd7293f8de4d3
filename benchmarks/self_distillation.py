"""DINO and BYOL on CIFAR-10 at a CPU budget: kNN accuracy of the learned backbone features.

Every row evaluates the same backbone, ``SmallCNN(width=32)`` with its classifier removed
(128-d pooled features), with the same weighted kNN classifier
(:class:`~lightning_kd.callbacks.KNNEvaluation`: cosine similarity, k=200, T=0.1, the 50,000
training images as the labeled bank, accuracy on the 10,000 test images):

* random init: the backbone as initialised (seeded), never trained;
* DINO: ``configs/cifar10/dino_cpu.yaml`` (4 epochs, 2 global + 4 local crops, no labels),
  the teacher's backbone;
* BYOL: ``configs/cifar10/byol_cpu.yaml`` (4 epochs, two views, no labels), the online
  backbone;
* supervised (context): the same backbone trained with labels for the same 4 epochs (CE, SGD +
  Nesterov, one-cycle LR peaking at 0.1, weight decay 5e-4, crop + flip), its classifier then
  dropped.

DINO and BYOL go through the ``lightning-kd`` CLI with the committed configs, so a row can be
rerun by hand::

    lightning-kd fit --config configs/cifar10/dino_cpu.yaml --data.init_args.data_dir ../shared/data

Usage (from the repository root)::

    .venv/bin/python benchmarks/self_distillation.py --data-dir ../shared/data --seeds 0 1

Rows can also be trained in separate invocations (``--seeds 1 --methods dino byol --json
a.json``, ...) and reported together with ``--seeds --previous a.json b.json``.

Writes ``benchmarks/results/self_distillation.md`` (and a JSON file with ``--json``).
"""

import argparse
import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from report import load_average, write_result
from torch import Tensor, nn

from lightning_kd.callbacks import KNNEvaluation
from lightning_kd.cli import build_cli
from lightning_kd.data import CIFAR10DataModule
from lightning_kd.models import SmallCNN
from lightning_kd.modules import ClassifierModule

METHODS = ("random", "dino", "byol", "supervised")
CONFIGS = {
    "dino": Path("configs/cifar10/dino_cpu.yaml"),
    "byol": Path("configs/cifar10/byol_cpu.yaml"),
}
EPOCHS = 4
WIDTH = 32


@dataclass
class Row:
    """kNN accuracy of one backbone."""

    method: str
    seed: int
    knn_acc: float
    knn_acc5: float
    fit_seconds: float


class FeatureEvaluation(L.LightningModule):
    """Just enough of the self-distillation protocol for :class:`KNNEvaluation`: ``embed``
    and a ``validation_step`` returning the features."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def embed(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return {"features": self.embed(batch[0]), "targets": batch[1]}


def knn_accuracy(backbone: nn.Module, data_dir: str) -> tuple[float, float]:
    """Top-1 / top-5 kNN accuracy of ``backbone`` (eval mode) on the CIFAR-10 test split."""
    # val_split=0: this final evaluation "validates" on the test split (the bank is all 50,000
    # training images); nothing is selected on it.
    data = CIFAR10DataModule(data_dir, batch_size=500, channels_last=True, val_split=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[KNNEvaluation(k=200, temperature=0.1)],
    )
    (metrics,) = trainer.validate(FeatureEvaluation(backbone), datamodule=data, verbose=False)
    return float(metrics["val/knn_acc"]), float(metrics["val/knn_acc5"])


def run_cli(method: str, seed: int, data_dir: str, out_dir: Path) -> Row:
    """Fit DINO or BYOL from its config, then evaluate its kNN accuracy on the test split."""
    args = [
        "--config",
        str(CONFIGS[method]),
        "--seed_everything",
        str(seed),
        "--data.init_args.data_dir",
        data_dir,
        "--trainer.logger.init_args.save_dir",
        str(out_dir),
        "--trainer.logger.init_args.name",
        f"seed{seed}/{method}",
        "--trainer.enable_progress_bar",
        "false",
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run")
        cli = build_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    acc, acc5 = knn_accuracy(cli.model.exported_model(), data_dir)
    return Row(method, seed, acc, acc5, fit_seconds)


def run_supervised(seed: int, data_dir: str, out_dir: Path) -> Row:
    """Train the backbone with labels for the same epochs, drop its classifier, evaluate."""
    L.seed_everything(seed, workers=True)
    data = CIFAR10DataModule(data_dir, batch_size=128, eval_batch_size=500, channels_last=True)
    steps = EPOCHS * (50_000 // 128)
    module = ClassifierModule(
        SmallCNN(num_classes=10, width=WIDTH),
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        scheduler=partial(
            torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=steps, pct_start=0.25
        ),
        scheduler_interval="step",
        channels_last=True,
    )
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(out_dir), name=f"seed{seed}/supervised"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_seconds = time.perf_counter() - start
    backbone = module.model
    backbone.fc = nn.Identity()
    acc, acc5 = knn_accuracy(backbone, data_dir)
    return Row("supervised", seed, acc, acc5, fit_seconds)


def run_random(seed: int, data_dir: str) -> Row:
    """The untrained backbone, initialised with ``seed``."""
    L.seed_everything(seed, workers=True)
    acc, acc5 = knn_accuracy(SmallCNN(num_classes=0, width=WIDTH), data_dir)
    return Row("random", seed, acc, acc5, 0.0)


def report(rows: list[Row]) -> str:
    """Per-seed table, then mean ± sd per method."""
    seeds = sorted({r.seed for r in rows})
    methods = [m for m in METHODS if any(r.method == m for r in rows)]
    lines = [
        "| method | " + " | ".join(f"seed {s}: kNN top-1 / top-5 (%)" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for m in methods:
        cells = []
        for s in seeds:
            r = next((r for r in rows if r.method == m and r.seed == s), None)
            cells.append("" if r is None else f"{100 * r.knn_acc:.2f} / {100 * r.knn_acc5:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "| method | kNN top-1 (%), mean ± sd | fit time per run (s) |", "|---|---|---|"]
    for m in methods:
        accs = [100 * r.knn_acc for r in rows if r.method == m]
        secs = [r.fit_seconds for r in rows if r.method == m]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(
            f"| {m} | {statistics.mean(accs):.2f} ± {sd:.2f} | {statistics.mean(secs):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[0, 1], help="none: only report --previous"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out-dir", type=Path, default=Path("runs/benchmarks/self_distillation"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--previous", type=Path, nargs="*", default=[], help="JSON rows of earlier runs to join"
    )
    ns = parser.parse_args()
    load_before = load_average()
    rows = [Row(**row) for path in ns.previous for row in json.loads(path.read_text())]
    for seed in ns.seeds:
        for method in ns.methods:
            if method == "random":
                row = run_random(seed, ns.data_dir)
            elif method == "supervised":
                row = run_supervised(seed, ns.data_dir, ns.out_dir)
            else:
                row = run_cli(method, seed, ns.data_dir, ns.out_dir)
            rows.append(row)
            print(asdict(row), flush=True)
            if ns.json is not None:
                ns.json.parent.mkdir(parents=True, exist_ok=True)
                ns.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    body = report(rows)
    print(body)
    doc = __doc__.split("Usage")[0].split("\n\n", 1)[1]
    write_result(
        "self_distillation",
        "DINO and BYOL vs random and supervised backbones, CIFAR-10 kNN",
        doc + "\n" + body,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
