"""``make quickstart``: teacher, vanilla student and KD student on CIFAR-10, then a table.

Each run goes through the same ``lightning-kd`` CLI and the YAML files in
``configs/quickstart/`` that a user would use by hand::

    lightning-kd fit --config configs/quickstart/teacher.yaml
    lightning-kd fit --config configs/quickstart/student_vanilla.yaml
    lightning-kd fit --config configs/quickstart/student_kd.yaml \\
        --model.init_args.teacher_checkpoint <teacher .ckpt>

The KD student and the vanilla student get the same network, data, epochs and optimizer; only
the loss differs. Run ``python -m lightning_kd.quickstart --help`` for the options.
"""

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_kd.cli import build_cli, claim_checkpoint_folder

RUNS = ("teacher", "student_vanilla", "student_kd")


@dataclass
class RunResult:
    """What the quickstart table shows for one training run."""

    run: str
    seed: int
    network: str
    parameters: int
    test_acc: float
    fit_seconds: float
    checkpoint: str


def _run(
    name: str, config_dir: Path, out_dir: Path, data_dir: str, seed: int, extra: list[str]
) -> RunResult:
    args = [
        "--config",
        str(config_dir / f"{name}.yaml"),
        "--seed_everything",
        str(seed),
        "--data.init_args.data_dir",
        data_dir,
        "--trainer.logger.init_args.save_dir",
        str(out_dir),
        "--trainer.logger.init_args.name",
        f"seed{seed}/{name}",
        *extra,
    ]
    with warnings.catch_warnings():
        # The quickstart's own argv is not meant for LightningCLI; it gets ``args`` only.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run")
        cli = build_cli(args, run=False)
    for callback in cli.trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, ModelCheckpoint):
            # A quickstart re-run replaces its own checkpoints (no last-v1.ckpt beside them).
            claim_checkpoint_folder(callback, overwrite=True)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    checkpoint = Path(cli.trainer.log_dir or out_dir) / "final.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    network = cli.model.exported_model()
    return RunResult(
        run=name,
        seed=seed,
        network=type(network).__name__,
        parameters=sum(p.numel() for p in network.parameters()),
        test_acc=float(metrics["test/acc"]),
        fit_seconds=fit_seconds,
        checkpoint=str(checkpoint),
    )


def run_quickstart(
    data_dir: str, seeds: list[int], config_dir: Path, out_dir: Path, extra: list[str]
) -> list[RunResult]:
    """Train the three runs for every seed; the KD student uses the same seed's teacher."""
    results = []
    for seed in seeds:
        teacher = _run("teacher", config_dir, out_dir, data_dir, seed, extra)
        vanilla = _run("student_vanilla", config_dir, out_dir, data_dir, seed, extra)
        kd_extra = [*extra, "--model.init_args.teacher_checkpoint", teacher.checkpoint]
        kd = _run("student_kd", config_dir, out_dir, data_dir, seed, kd_extra)
        results += [teacher, vanilla, kd]
    return results


def format_table(results: list[RunResult]) -> str:
    """A markdown table of the runs, then mean test accuracy per run over the seeds."""
    lines = [
        "| run | seed | network | parameters | test acc (%) | fit time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.run} | {r.seed} | {r.network} | {r.parameters:,} | "
            f"{100 * r.test_acc:.2f} | {r.fit_seconds:.0f} |"
        )
    lines += ["", "| run | mean test acc (%) | seeds |", "|---|---|---|"]
    for name in RUNS:
        accs = [r.test_acc for r in results if r.run == name]
        if accs:
            lines.append(f"| {name} | {100 * sum(accs) / len(accs):.2f} | {len(accs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[RunResult]:
    """Command-line entry: ``python -m lightning_kd.quickstart``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config-dir", type=Path, default=Path("configs/quickstart"))
    parser.add_argument("--out-dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the results to this JSON file"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra CLI overrides for every run, after --, e.g. -- --trainer.max_epochs 1",
    )
    ns = parser.parse_args(argv)
    start = time.perf_counter()
    results = run_quickstart(ns.data_dir, ns.seeds, ns.config_dir, ns.out_dir, ns.overrides)
    total = time.perf_counter() - start
    print()
    print(format_table(results))
    print(f"\nTotal wall time: {total / 60:.1f} min")
    print(f"View the runs: tensorboard --logdir {ns.out_dir}")
    if ns.json is not None:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(
            json.dumps({"total_seconds": total, "runs": [asdict(r) for r in results]}, indent=2)
        )
    return results


if __name__ == "__main__":
    main()
