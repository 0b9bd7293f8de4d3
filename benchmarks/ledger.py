"""The results ledger: a grid of methods x seeds through the CLI, reported honestly.

Every run of the grid is a real ``lightning-kd fit`` (a subprocess, exactly the command a user
would type, recorded), followed by ``lightning-kd test`` of two checkpoints of that run:

* ``last``: the final weights (**last-epoch** test accuracy);
* ``best``: the checkpoint with the best accuracy on the **held-out validation split** (a
  ``ModelCheckpoint(monitor=<the module's validation accuracy>)`` the ledger adds; the
  datamodule must hold a validation split out of the training set, and the ledger refuses a
  config whose datamodule validates on the test split).

The test split is read only by those two ``test`` runs; best-on-test is never computed. Per run
the ledger records the fit command, wall time, both test accuracies (top-1, top-5 where
logged), the teacher-student top-1 agreement on the test split (distillation runs) and the
validation accuracy of the selected checkpoint; per method it aggregates mean ± sd over seeds.

The grid is a YAML file::

    name: cifar10_cpu
    description: ...
    overrides: ["--data.init_args.data_dir=${data_dir}"]       # every run
    methods:
      vanilla: {configs: [configs/quickstart/student_vanilla.yaml]}
      kd:
        configs: [configs/quickstart/student_kd.yaml]
        overrides: ["--model.init_args.teacher_checkpoint=${teacher}"]

``${data_dir}``, ``${root}`` (the repository) and any ``--set key=value`` are substituted in
the overrides and in the config files (a file with placeholders is copied, filled, into the
run's folder).

Usage (from the repository root)::

    .venv/bin/python benchmarks/ledger.py benchmarks/ledger/cifar10_cpu.yaml --seeds 0 1 \\
        --set teacher=$PWD/runs/quickstart/seed0/teacher/version_0/final.ckpt \\
        [--out runs/ledger] [--methods kd dkd] [--extra --trainer.max_epochs=1]

Writes ``benchmarks/results/ledger_<name>.{md,json}`` (``--results-dir`` to change) and keeps
every run's folder under ``--out/<method>/seed<S>``. A run whose ``summary.json`` exists is not
run again (delete it to redo), so an interrupted ledger continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The callbacks every ledger run trains with: the best checkpoint by validation accuracy and
#: the last one. The monitored key is filled in per module (``val/acc`` or, for Mean Teacher,
#: ``val/teacher_acc``).
CALLBACKS = """\
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        dirpath: checkpoints
        filename: best
        monitor: {monitor}
        mode: max
    # The final weights: a monitored ModelCheckpoint's save_last writes last.ckpt only in
    # epochs that improve the monitored value (Lightning 2.6), so a monitor-less one does.
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        dirpath: checkpoints
        filename: last
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
      init_args:
        logging_interval: step
"""


def _substitute(values: list[str], mapping: dict[str, str]) -> list[str]:
    return [string.Template(value).substitute(mapping) for value in values]


def _config_file(path: Path, mapping: dict[str, str], folder: Path) -> str:
    """``path``, or a copy in ``folder`` with its ``${name}`` placeholders filled in."""
    text = path.read_text()
    if "${" not in text:
        return str(path)
    filled = folder / f"filled_{path.name}"
    filled.write_text(string.Template(text).substitute(mapping))
    return str(filled)


def _cli(args: list[str]) -> list[str]:
    """The ``lightning-kd`` console script of this interpreter's environment, with ``args``."""
    return [str(Path(sys.executable).parent / "lightning-kd"), *args]


def _test_metrics(args: list[str]) -> dict[str, float]:
    """Run ``lightning-kd test`` in-process and return its logged metrics."""
    from lightning_kd.cli import build_cli

    cli = build_cli(["test", *args])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}


def run_one(
    method: str,
    seed: int,
    configs: list[str],
    overrides: list[str],
    *,
    out: Path,
    monitor: str,
    mapping: dict[str, str],
) -> dict[str, Any]:
    """Fit one (method, seed) through the CLI, then test its last and best checkpoints."""
    folder = (out / method / f"seed{seed}").resolve()
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    callbacks = folder / "ledger_callbacks.yaml"
    callbacks.write_text(CALLBACKS.format(monitor=monitor))
    config_args = [
        arg for path in configs for arg in ("--config", _config_file(Path(path), mapping, folder))
    ]
    config_args += ["--config", str(callbacks)]
    common = [*config_args, f"--seed_everything={seed}", *overrides]
    root = [f"--trainer.default_root_dir={folder}"]
    fit = _cli(["fit", *common, *root])
    start = time.perf_counter()
    proc = subprocess.run(fit, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (folder / "fit.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{method} seed {seed}: fit failed: {tail[0]} (log {folder}/fit.log)")
    checkpoints = folder / "checkpoints"
    results: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "command": shlex.join(["lightning-kd", *fit[1:]]),
        "wall_seconds": wall,
    }
    best_val = _best_score(checkpoints / "best.ckpt", monitor)
    for name in ("last", "best"):
        test_args = [*common, f"--trainer.default_root_dir={folder / ('test_' + name)}"]
        test_args += ["--trainer.logger=false", f"--ckpt_path={checkpoints / (name + '.ckpt')}"]
        metrics = _run_test(test_args)
        results[name] = metrics
    results["best_val"] = best_val
    summary_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _run_test(args: list[str]) -> dict[str, float]:
    """``lightning-kd test`` in a subprocess (no state shared with other runs)."""
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import ledger; "
        f"print('LEDGER' + json.dumps(ledger._test_metrics({args!r})))"
    )
    command = [sys.executable, "-c", code]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"test failed: {(proc.stderr or proc.stdout)[-2000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("LEDGER")][-1]
    return json.loads(line[len("LEDGER") :])


def _best_score(path: Path, monitor: str) -> float | None:
    """The monitored validation value recorded in a ModelCheckpoint's checkpoint."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and state.get("monitor") == monitor:
            score = state.get("best_model_score")
            return float(score) if score is not None else None
    return None


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, sd


def _fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "n/a"
    mean, sd = _mean_sd([v * scale for v in values])
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def aggregate(runs: list[dict[str, Any]], methods: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Markdown table rows and JSON summary: mean ± sd per method over seeds."""
    rows = [
        "| method | seeds | last-epoch test acc (%) | best-by-val test acc (%) | val acc of "
        "best (%) | agreement with teacher, last (%) | wall time (min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        last = [r["last"]["test/acc"] for r in mine if "test/acc" in r["last"]]
        best = [r["best"]["test/acc"] for r in mine if "test/acc" in r["best"]]
        val = [r["best_val"] for r in mine if r.get("best_val") is not None]
        agree = [r["last"]["test/agreement"] for r in mine if "test/agreement" in r["last"]]
        wall = [r["wall_seconds"] / 60 for r in mine]
        rows.append(
            f"| {method} | {len(mine)} | {_fmt(last)} | {_fmt(best)} | {_fmt(val)} | "
            f"{_fmt(agree)} | {_fmt(wall, scale=1.0, digits=1)} |"
        )
        summary[method] = {
            "seeds": [r["seed"] for r in mine],
            "last_test_acc": last,
            "best_by_val_test_acc": best,
            "best_val_acc": val,
            "agreement_last": agree,
            "wall_minutes": wall,
            "commands": [r["command"] for r in mine],
        }
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="the grid YAML")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of the grid")
    parser.add_argument("--out", type=Path, default=Path("runs/ledger"))
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--set", action="append", default=[], help="key=value placeholders")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="CLI overrides")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "benchmarks/results")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: aggregate the runs that have finished (summary.json) so far",
    )
    args = parser.parse_args()

    grid = yaml.safe_load(args.grid.read_text())
    mapping = {"data_dir": str(Path(args.data_dir).resolve()), "root": str(REPO_ROOT)}
    mapping.update(dict(item.split("=", 1) for item in args.set))
    methods = list(grid["methods"]) if args.methods is None else args.methods
    unknown = [m for m in methods if m not in grid["methods"]]
    if unknown:
        raise SystemExit(
            f"ledger: methods {unknown} are not in {args.grid}: {list(grid['methods'])}"
        )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import load_average, write_result

    load_before = load_average()
    runs = []
    for seed in args.seeds:
        for method in methods:
            spec = grid["methods"][method]
            done = args.out / method / f"seed{seed}" / "summary.json"
            if args.report_only and not done.is_file():
                continue
            overrides = _substitute(grid.get("overrides", []) + spec.get("overrides", []), mapping)
            result = run_one(
                method,
                seed,
                [str(REPO_ROOT / c) for c in spec["configs"]],
                [*overrides, *args.extra],
                out=args.out,
                monitor=spec.get("monitor", "val/acc"),
                mapping=mapping,
            )
            runs.append(result)
            last = result["last"].get("test/acc", float("nan"))
            best = result["best"].get("test/acc", float("nan"))
            print(
                f"{method} seed {seed}: last {last:.4f}, best-by-val {best:.4f}, "
                f"{result['wall_seconds'] / 60:.1f} min",
                flush=True,
            )
    rows, summary = aggregate(runs, methods)
    body = "\n".join(
        [
            grid.get("description", "").strip(),
            "",
            f"Seeds {args.seeds}; mean ± sd over seeds. `last-epoch` is the test accuracy of the "
            "final weights; `best-by-val` the test accuracy of the checkpoint with the best "
            "accuracy on the held-out validation split (never selected on test). Every run's "
            "command is in the JSON.",
            "",
            *rows,
        ]
    )
    name = grid.get("name", args.grid.stem)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = write_result(f"ledger_{name}", f"Results ledger: {name}", body, load_before=load_before)
    if args.results_dir.resolve() != path.parent.resolve():
        target = args.results_dir / path.name
        target.write_text(path.read_text())
        path.unlink()
        path = target
    path.with_suffix(".json").write_text(json.dumps({"runs": runs, "methods": summary}, indent=2))
    print(body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
