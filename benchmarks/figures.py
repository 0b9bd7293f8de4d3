"""Figures of the benchmark runs, drawn from their TensorBoard logs (``docs/figures/bench_*``).

The notebooks draw similar figures from their own runs (one seed); this script draws them
from all the runs behind the README's tables, so the pictures and the numbers agree:

* ``bench_quickstart.png``: the quickstart teacher's soft targets at T = 1, 2, 4, 8 for the
  first CIFAR-10 test image, and the vanilla vs KD students' validation accuracy (the 5,000
  held-out training images) over training (quickstart, seed 0: ``make quickstart``).
* ``bench_mean_teacher.png``: student vs EMA teacher test accuracy over training for each
  seed, with the supervised-only baseline's final accuracy (``benchmarks/mean_teacher.py``).
* ``bench_self_distillation.png``: kNN accuracy over training of DINO and BYOL against the
  random-init backbone, and DINO's teacher output entropy
  (``benchmarks/self_distillation.py``).

Usage (from the repository root, after those runs)::

    .venv/bin/python benchmarks/figures.py --data-dir ../shared/data --out docs/figures
"""

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from lightning_kd.curves import read_scalars
from lightning_kd.data.cifar_files import (
    CIFAR10_LAYOUT,
    read_cifar_split,
    resolve_cifar_dir,
)
from lightning_kd.losses import softmax_with_temperature
from lightning_kd.models import SmallCNN, load_weights

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _version_dir(run: Path) -> Path:
    """The newest ``version_N`` folder of a TensorBoard run."""
    versions = sorted(run.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"no version_* folder in {run}")
    return versions[-1]


def classical_kd(data_dir: str, runs: Path, out: Path) -> None:
    teacher = SmallCNN(num_classes=10, width=48)
    load_weights(teacher, str(_version_dir(runs / "seed0/teacher") / "final.ckpt"))
    teacher.eval()
    folder = resolve_cifar_dir(data_dir, CIFAR10_LAYOUT)
    images, targets = read_cifar_split(folder, CIFAR10_LAYOUT, train=False)
    image = images[:1].float() / 255.0
    x = (image - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = teacher(x)
    table = read_scalars(
        {
            "vanilla student": _version_dir(runs / "seed0/student_vanilla"),
            "KD student": _version_dir(runs / "seed0/student_kd"),
        },
        ["val/acc"],
    )
    teacher_acc = read_scalars({"t": _version_dir(runs / "seed0/teacher")}, ["val/acc"])
    fig, axes = plt.subplots(1, 6, figsize=(22, 3.6), layout="constrained")
    axes[0].imshow(image[0].permute(1, 2, 0).numpy())
    axes[0].set_title(f"test image 0 ({CLASSES[int(targets[0])]})")
    axes[0].axis("off")
    for ax, temperature in zip(axes[1:5], (1.0, 2.0, 4.0, 8.0), strict=True):
        probs = softmax_with_temperature(logits, temperature=temperature)[0]
        ax.bar(range(10), probs.numpy(), color="C0")
        ax.set_xticks(range(10), CLASSES, rotation=60, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"teacher soft targets, T = {temperature:g}")
    ax = axes[5]
    for run, color in (("vanilla student", "C1"), ("KD student", "C2")):
        series = table[run, "val/acc"]
        epochs = range(1, len(series) + 1)
        ax.plot(epochs, 100 * series.values, marker="o", color=color, label=run)
    ax.axhline(100 * teacher_acc["t", "val/acc"].last(), color="gray", ls="--", label="teacher")
    ax.set(
        title="val acc, 5,000 held out (seed 0)",
        xlabel="epoch",
        ylabel="%",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    fig.savefig(out / "bench_quickstart.png", dpi=110)
    plt.close(fig)


def mean_teacher(runs: Path, rows_file: Path | None, out: Path) -> None:
    seeds = sorted(int(p.name[4:]) for p in runs.glob("seed*"))
    baseline = {}
    if rows_file is not None:
        for row in json.loads(rows_file.read_text()):
            if row["run"] == "supervised":
                baseline[row["seed"]] = row["student_acc"]
    fig, axes = plt.subplots(1, len(seeds), figsize=(6 * len(seeds), 3.8), layout="constrained")
    for ax, seed in zip(list(axes) if len(seeds) > 1 else [axes], seeds, strict=True):
        table = read_scalars(
            {"mt": _version_dir(runs / f"seed{seed}/mean_teacher")},
            ["val_on_test/acc", "val_on_test/teacher_acc"],  # the recipe has val_split=0
        )
        for tag, label, color in (
            ("val_on_test/acc", "student", "C0"),
            ("val_on_test/teacher_acc", "EMA teacher", "C3"),
        ):
            series = table["mt", tag]
            ax.plot(
                range(1, len(series) + 1), 100 * series.values, marker="o", color=color, label=label
            )
        if seed in baseline:
            ax.axhline(100 * baseline[seed], color="gray", ls="--", label="supervised only (final)")
        ax.set(
            title=f"Mean Teacher, 4,000 labels, seed {seed}",
            xlabel="epoch",
            ylabel="test accuracy (%)",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    fig.savefig(out / "bench_mean_teacher.png", dpi=110)
    plt.close(fig)


def self_distillation(runs: Path, rows_file: Path | None, out: Path) -> None:
    random = []
    if rows_file is not None:
        rows = json.loads(rows_file.read_text())
        random = [r["knn_acc"] for r in rows if r["method"] == "random"]
    fig, (ax_knn, ax_h) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
    for method, color in (("dino", "C0"), ("byol", "C1")):
        for seed_dir in sorted(runs.glob("seed*")):
            if not (seed_dir / method).is_dir():
                continue
            table = read_scalars({"r": _version_dir(seed_dir / method)}, ["val/knn_acc"])
            series = table["r", "val/knn_acc"]
            ax_knn.plot(
                range(1, len(series) + 1),
                100 * series.values,
                marker="o",
                color=color,
                alpha=0.9,
                label=f"{method.upper()} {seed_dir.name}",
            )
            if method == "dino":
                h = read_scalars(
                    {"r": _version_dir(seed_dir / method)}, ["train/teacher_entropy_step"]
                )["r", "train/teacher_entropy_step"]
                ax_h.plot(h.steps, h.values, label=f"DINO {seed_dir.name}")
    if random:
        ax_knn.axhline(
            100 * sum(random) / len(random), color="gray", ls="--", label="random init (mean)"
        )
    ax_knn.set(title="kNN accuracy (k=200), CIFAR-10 test", xlabel="epoch", ylabel="%")
    ax_knn.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_knn.legend(fontsize="small")
    ax_h.axhline(math.log(2048), color="gray", ls=":", label="log K (uniform collapse)")
    ax_h.axhline(0.0, color="black", ls=":", label="0 (one-hot collapse)")
    ax_h.set(title="DINO teacher output entropy", xlabel="optimizer step", ylabel="nats")
    ax_h.legend(fontsize="small")
    fig.savefig(out / "bench_self_distillation.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--quickstart-runs", type=Path, default=Path("runs/quickstart"))
    parser.add_argument(
        "--mean-teacher-runs", type=Path, default=Path("runs/benchmarks/mean_teacher")
    )
    parser.add_argument("--mean-teacher-json", type=Path, default=None)
    parser.add_argument(
        "--self-distillation-runs", type=Path, default=Path("runs/benchmarks/self_distillation")
    )
    parser.add_argument("--self-distillation-json", type=Path, default=None)
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    classical_kd(ns.data_dir, ns.quickstart_runs, ns.out)
    mean_teacher(ns.mean_teacher_runs, ns.mean_teacher_json, ns.out)
    self_distillation(ns.self_distillation_runs, ns.self_distillation_json, ns.out)
    print(f"wrote {sorted(p.name for p in ns.out.glob('*.png'))}")


if __name__ == "__main__":
    main()
