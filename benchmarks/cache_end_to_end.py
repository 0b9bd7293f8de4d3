"""One teacher, N students: online KD against ``lightning-kd cache`` once + N cached students.

1. builds the cache of the quickstart KD config (the teacher file given, view_seed 0, fp16,
   every epoch of the run) with ``lightning-kd cache``, timed;
2. runs the ledger grid ``benchmarks/ledger/cifar10_cache.yaml`` (``kd_online`` and
   ``kd_cached``, the same seeds) through the CLI, each run timed by the ledger;
3. writes the wall-time totals and the accuracies (last-epoch and best-by-validation test
   accuracy, mean ± sd) to ``benchmarks/results/teacher_cache_end_to_end.{md,json}``.

Usage (from the repository root, nothing else running)::

    .venv/bin/python benchmarks/cache_end_to_end.py \\
        --teacher $PWD/runs/quickstart/seed0/teacher/version_0/final.ckpt --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from report import RESULTS_DIR, load_average, write_result

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the quickstart teacher checkpoint")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--cache", type=Path, default=Path("runs/caches/quickstart_seed0"))
    parser.add_argument("--out", type=Path, default=Path("runs/ledger"))
    args = parser.parse_args()
    load_before = load_average()
    cache = args.cache.resolve()
    lightning_kd = Path(sys.executable).with_name("lightning-kd")
    build = [
        str(lightning_kd),
        "cache",
        "--config",
        "configs/quickstart/student_kd.yaml",
        f"--model.init_args.teacher_checkpoint={args.teacher}",
        f"--data.init_args.data_dir={Path(args.data_dir).resolve()}",
        "--data.init_args.view_seed=0",
        "--out",
        str(cache),
        "--no-progress",
    ]
    started = time.perf_counter()
    subprocess.run(build, cwd=REPO_ROOT, check=True)
    build_seconds = time.perf_counter() - started
    manifest = json.loads((cache / "manifest.json").read_text())
    ledger = [
        sys.executable,
        str(REPO_ROOT / "benchmarks/ledger.py"),
        str(REPO_ROOT / "benchmarks/ledger/cifar10_cache.yaml"),
        "--seeds",
        *map(str, args.seeds),
        "--out",
        str(args.out),
        "--data-dir",
        args.data_dir,
        "--set",
        f"teacher={args.teacher}",
        "--set",
        f"cache={cache}",
    ]
    subprocess.run(ledger, cwd=REPO_ROOT, check=True)
    runs = json.loads((RESULTS_DIR / "ledger_cifar10_cache.json").read_text())["runs"]

    def arm(method: str) -> dict[str, object]:
        mine = [r for r in runs if r["method"] == method]
        last = [100 * r["last"]["test/acc"] for r in mine]
        best = [100 * r["best"]["test/acc"] for r in mine]
        wall = [r["wall_seconds"] for r in mine]
        return {
            "students": len(mine),
            "fit_seconds_total": sum(wall),
            "last_mean_sd": [statistics.mean(last), statistics.stdev(last) if len(last) > 1 else 0],
            "best_mean_sd": [statistics.mean(best), statistics.stdev(best) if len(best) > 1 else 0],
        }

    online, cached = arm("kd_online"), arm("kd_cached")
    cached_total = build_seconds + float(cached["fit_seconds_total"])  # type: ignore[arg-type]
    online_total = float(online["fit_seconds_total"])  # type: ignore[arg-type]
    summary = {
        "cache_build_seconds": build_seconds,
        "cache_manifest_extra": manifest["extra"],
        "online": online,
        "cached": cached,
        "cached_total_seconds": cached_total,
        "speedup": online_total / cached_total,
        "build_command": " ".join(build),
        "ledger_command": " ".join(ledger),
    }

    def acc(values: object) -> str:
        mean, sd = values  # type: ignore[misc]
        return f"{mean:.2f} ± {sd:.2f}"

    n = len(args.seeds)
    body = "\n".join(
        [
            f"One teacher, {n} students (seeds {args.seeds}), the quickstart KD recipe (15 "
            "epochs, 10,000-image subset, views fixed by view_seed 0). Wall times of the whole "
            "`lightning-kd fit` processes (start-up, validation every epoch and checkpoints "
            "included); test accuracy in %.",
            "",
            "| arm | cache build (s) | fits, total (s) | total (s) | last-epoch test acc | "
            "best-by-val test acc |",
            "|---|---|---|---|---|---|",
            f"| online KD x {n} | - | {online_total:.0f} | {online_total:.0f} | "
            f"{acc(online['last_mean_sd'])} | {acc(online['best_mean_sd'])} |",
            f"| cache + cached KD x {n} | {build_seconds:.0f} | "
            f"{cached['fit_seconds_total']:.0f} | {cached_total:.0f} | "
            f"{acc(cached['last_mean_sd'])} | {acc(cached['best_mean_sd'])} |",
            "",
            f"Cached is {summary['speedup']:.2f}x faster end to end. Cache: "
            f"{manifest['epochs']} epochs x {manifest['dataset']['size']} images, "
            f"{manifest['dtype']}, build {manifest['extra']}.",
            "",
            f"- Build: `{summary['build_command']}`",
            f"- Ledger: `{summary['ledger_command']}`",
        ]
    )
    write_result(
        "teacher_cache_end_to_end",
        "Teacher cache end to end: one teacher, N students",
        body,
        load_before=load_before,
    )
    (RESULTS_DIR / "teacher_cache_end_to_end.json").write_text(json.dumps(summary, indent=2))
    print(body)


if __name__ == "__main__":
    main()
