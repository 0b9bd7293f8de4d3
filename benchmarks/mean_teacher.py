"""Mean Teacher against a supervised-only student on CIFAR-10 with 4,000 labels, at a CPU budget.

Both rows go through the ``lightning-kd`` CLI with the committed configs, so each row can be
rerun by hand::

    lightning-kd fit --config configs/cifar10/mean_teacher_cpu_4000.yaml \\
        --data.init_args.data_dir ../shared/data
    lightning-kd fit --config configs/cifar10/supervised_cpu_4000.yaml \\
        --data.init_args.data_dir ../shared/data

Same labels (``splits/cifar10_4000_seed0.json``: 400 images per class), same network
(``SmallCNN(width=32)``), optimizer, one-cycle schedule, number of optimizer steps (3,090) and
labeled stream: 128 labeled images per step with CE weight 1. Mean Teacher adds 128 unlabeled
images per step (the unlabeled stream is all 50,000 training images, labels unused; about 8
passes) and the EMA teacher's MSE consistency on all 256 (weight 100, ramped up over the
first 390 steps, EMA decay 0.99), so a step costs it about 3x the baseline's (fit times
below; both shared the machine with other jobs). The baseline makes about 100 passes over its
4,000 images. Only the training seed (initialisation, augmentation, batch order) changes
between seeds; the label split is the same. Accuracy is on the 10,000-image test split (also
the validation set) at the end of training.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mean_teacher.py --data-dir ../shared/data --seeds 0 1

The rows can also be trained in separate invocations (``--runs mean_teacher --json a.json``,
``--runs supervised --json b.json``) and reported together with
``--seeds --previous a.json b.json``.

Writes ``benchmarks/results/mean_teacher.md`` (and a JSON file with ``--json``).
"""

import argparse
import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from report import load_average, write_result

from lightning_kd.cli import build_cli
from lightning_kd.curves import read_scalars

CONFIGS = {
    "mean_teacher": Path("configs/cifar10/mean_teacher_cpu_4000.yaml"),
    "supervised": Path("configs/cifar10/supervised_cpu_4000.yaml"),
}


@dataclass
class Row:
    """Final test accuracies of one training run."""

    run: str
    seed: int
    student_acc: float
    teacher_acc: float | None
    fit_seconds: float


def train(run: str, seed: int, data_dir: str, out_dir: Path, extra: list[str]) -> Row:
    """Fit one config with ``seed``, then test the final weights on the test split."""
    args = [
        "--config",
        str(CONFIGS[run]),
        "--seed_everything",
        str(seed),
        "--data.init_args.data_dir",
        data_dir,
        "--trainer.logger.init_args.save_dir",
        str(out_dir),
        "--trainer.logger.init_args.name",
        f"seed{seed}/{run}",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run")
        cli = build_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    teacher = metrics.get("test/teacher_acc")
    return Row(
        run=run,
        seed=seed,
        student_acc=float(metrics["test/acc"]),
        teacher_acc=None if teacher is None else float(teacher),
        fit_seconds=fit_seconds,
    )


def _mean_sd(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def report(rows: list[Row]) -> str:
    """Per-seed table, then means and the paired gains."""
    lines = [
        "| seed | supervised only | Mean Teacher: student | Mean Teacher: teacher | "
        "teacher - supervised | teacher - its student |",
        "|---|---|---|---|---|---|",
    ]
    seeds = sorted({r.seed for r in rows})
    sup, stu, tea = [], [], []
    for seed in seeds:
        s = next(r for r in rows if r.seed == seed and r.run == "supervised")
        m = next(r for r in rows if r.seed == seed and r.run == "mean_teacher")
        assert m.teacher_acc is not None
        sup.append(s.student_acc)
        stu.append(m.student_acc)
        tea.append(m.teacher_acc)
        lines.append(
            f"| {seed} | {100 * s.student_acc:.2f} | {100 * m.student_acc:.2f} | "
            f"{100 * m.teacher_acc:.2f} | {100 * (m.teacher_acc - s.student_acc):+.2f} | "
            f"{100 * (m.teacher_acc - m.student_acc):+.2f} |"
        )
    lines.append(
        f"| mean ± sd | {_mean_sd(sup)} | {_mean_sd(stu)} | {_mean_sd(tea)} | "
        f"{100 * statistics.mean(t - s for t, s in zip(tea, sup, strict=True)):+.2f} | "
        f"{100 * statistics.mean(t - s for t, s in zip(tea, stu, strict=True)):+.2f} |"
    )
    lines += ["", "| run | seed | fit time (s) |", "|---|---|---|"]
    lines += [f"| {r.run} | {r.seed} | {r.fit_seconds:.0f} |" for r in rows]
    return "\n".join(lines)


def history(out_dir: Path, seeds: list[int]) -> str:
    """Teacher minus student test accuracy at every end-of-epoch evaluation, from the logs."""
    lines = ["| seed | teacher - student at each end-of-epoch evaluation (points) |", "|---|---|"]
    for seed in seeds:
        versions = sorted((out_dir / f"seed{seed}" / "mean_teacher").glob("version_*"))
        if not versions:
            continue
        # The recipe validates on the test split (val_split=0), so the tags are val_on_test/.
        tags = ["val_on_test/acc", "val_on_test/teacher_acc"]
        table = read_scalars({"mt": versions[-1]}, tags)
        student, teacher = table["mt", tags[0]].values, table["mt", tags[1]].values
        gaps = ", ".join(f"{100 * (t - s):+.2f}" for s, t in zip(student, teacher, strict=True))
        lines.append(f"| {seed} | {gaps} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[0, 1], help="none: only report --previous"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/benchmarks/mean_teacher"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--runs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument(
        "--previous",
        type=Path,
        nargs="*",
        default=[],
        help="JSON files of earlier invocations (--json) whose rows join this report",
    )
    ns = parser.parse_args()
    load_before = load_average()
    rows = [Row(**row) for path in ns.previous for row in json.loads(path.read_text())]
    for seed in ns.seeds:
        for run in ns.runs:
            rows.append(train(run, seed, ns.data_dir, ns.out_dir, []))
            print(asdict(rows[-1]), flush=True)
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if {r.run for r in rows} == set(CONFIGS):
        body = report(rows)
        seeds = sorted({r.seed for r in rows})
        body += "\n\n" + history(ns.out_dir, seeds)
        print(body)
        body = __doc__.split("Usage")[0].split("\n\n", 1)[1] + "\n" + body
        write_result(
            "mean_teacher",
            "Mean Teacher vs supervised only, CIFAR-10, 4,000 labels",
            body,
            load_before=load_before,
        )


if __name__ == "__main__":
    main()
