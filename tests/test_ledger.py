"""The results ledger (benchmarks/ledger.py) end to end on tiny generated CIFAR-10 files.

Two methods x two seeds through the real CLI: every run's fit command is recorded, the
last-epoch and best-by-validation checkpoints are tested, and the table aggregates mean ± sd
per method. The numbers themselves are meaningless at this size; what is checked is that
they are the ones the runs produced (read back from the runs' own checkpoints).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

MODEL = """
seed_everything: 0
model:
  class_path: {module}
  init_args:
{networks}
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args: {{data_dir: {data_dir}, batch_size: 32, val_split: 40}}
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  enable_model_summary: false
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: runs, name: {name}}}
"""

VANILLA = """    model:
      class_path: lightning_kd.models.SmallCNN
      init_args: {width: 4}"""

KD = """    student:
      class_path: lightning_kd.models.SmallCNN
      init_args: {width: 4}
    teacher:
      class_path: lightning_kd.models.SmallCNN
      init_args: {width: 8}"""


def test_ledger_runs_a_grid_and_reports_last_and_best_by_validation(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "vanilla.yaml").write_text(
        MODEL.format(
            module="lightning_kd.modules.ClassifierModule",
            networks=VANILLA,
            data_dir=cifar10_dir,
            name="vanilla",
        )
    )
    (tmp_path / "kd.yaml").write_text(
        MODEL.format(
            module="lightning_kd.modules.KDModule", networks=KD, data_dir=cifar10_dir, name="kd"
        )
    )
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "name: tiny\n"
        "description: Two methods on 160 generated images.\n"
        "methods:\n"
        f"  vanilla: {{configs: [{tmp_path / 'vanilla.yaml'}]}}\n"
        f"  kd: {{configs: [{tmp_path / 'kd.yaml'}]}}\n"
    )
    command = [
        sys.executable,
        str(ROOT / "benchmarks/ledger.py"),
        str(grid),
        "--seeds",
        "0",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--results-dir",
        str(tmp_path / "results"),
    ]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results/ledger_tiny.json").read_text())
    runs = report["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == [
        ("kd", 0),
        ("kd", 1),
        ("vanilla", 0),
        ("vanilla", 1),
    ]
    for run in runs:
        folder = tmp_path / "runs" / run["method"] / f"seed{run['seed']}"
        assert run["command"].startswith("lightning-kd fit --config ")
        assert f"--seed_everything={run['seed']}" in run["command"]
        assert run["wall_seconds"] > 0
        for name in ("last", "best"):
            assert 0.0 <= run[name]["test/acc"] <= 1.0
        # The selected checkpoint is the one with the best validation accuracy of the run,
        # and the reported value is the one its ModelCheckpoint recorded.
        best = torch.load(folder / "checkpoints/best.ckpt", weights_only=False)
        state = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
        assert state["monitor"] == "val/acc"
        assert run["best_val"] == pytest.approx(float(state["best_model_score"]))
        last = torch.load(folder / "checkpoints/last.ckpt", weights_only=False)
        assert last["global_step"] == 2 * 5  # 2 epochs of 160 images in batches of 32
    kd_runs = [r for r in runs if r["method"] == "kd"]
    assert all(0.0 <= r["last"]["test/agreement"] <= 1.0 for r in kd_runs)
    # The table: mean ± sd over the 2 seeds of exactly these numbers.
    table = (tmp_path / "results/ledger_tiny.md").read_text()
    kd_last = [100 * r["last"]["test/acc"] for r in kd_runs]
    mean = sum(kd_last) / 2
    sd = (sum((v - mean) ** 2 for v in kd_last)) ** 0.5  # sample sd of 2 values: |a - b| / sqrt 2
    row = next(line for line in table.splitlines() if line.startswith("| kd |"))
    assert f"{mean:.2f} ± {sd:.2f}" in row
    assert "best-on-test" not in table.replace("never selected on test", "")


def test_ledger_refuses_a_grid_that_validates_on_test(cifar10_dir: Path, tmp_path: Path) -> None:
    config = MODEL.format(
        module="lightning_kd.modules.ClassifierModule",
        networks=VANILLA,
        data_dir=cifar10_dir,
        name="vanilla",
    ).replace("val_split: 40", "val_split: 0")
    (tmp_path / "vanilla.yaml").write_text(config)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"name: bad\nmethods:\n  vanilla: {{configs: [{tmp_path / 'vanilla.yaml'}]}}\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/ledger.py"),
            str(grid),
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "runs"),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    log = (tmp_path / "runs/vanilla/seed0/fit.log").read_text()
    assert "would select on the test split" in log
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())


def _grid_methods() -> list[str]:
    import yaml

    return list(
        yaml.safe_load((ROOT / "benchmarks/ledger/cifar10_cpu.yaml").read_text())["methods"]
    )


@pytest.mark.parametrize("method", _grid_methods())
def test_every_method_of_the_cpu_ledger_runs_one_batch(
    method: str, cifar10_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU grid's configs, overlays and overrides, as the ledger composes them, for one
    batch on generated data (random teachers saved as plain state dicts)."""
    import string

    import yaml

    from lightning_kd.cli import build_cli
    from lightning_kd.models import SmallCNN

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ledger

    monkeypatch.chdir(tmp_path)
    mapping = {"data_dir": str(cifar10_dir), "root": str(ROOT)}
    for key in ("teacher", "teacher2"):
        torch.manual_seed(len(key))
        path = tmp_path / f"{key}.pt"
        torch.save(SmallCNN(num_classes=10, width=48).state_dict(), path)
        mapping[key] = str(path)
    grid = yaml.safe_load((ROOT / "benchmarks/ledger/cifar10_cpu.yaml").read_text())
    spec = grid["methods"][method]
    args = ["fit"]
    for config in spec["configs"]:
        args += ["--config", ledger._config_file(ROOT / config, mapping, tmp_path)]
    overrides = grid.get("overrides", []) + spec.get("overrides", [])
    args += [string.Template(o).substitute(mapping) for o in overrides]
    args += [
        "--data.init_args.train_subset=null",
        "--data.init_args.batch_size=16",
        "--trainer.fast_dev_run=1",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    cli = build_cli(args)
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_both_arms_of_the_cache_ledger_run_one_batch(
    cifar10_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/ledger/cifar10_cache.yaml as benchmarks/cache_end_to_end.py runs it: the
    cache built by `lightning-kd cache` from the online arm's config, then each arm for one
    batch."""
    import string

    import yaml

    from lightning_kd.cli import build_cli, main
    from lightning_kd.models import SmallCNN

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ledger

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(SmallCNN(num_classes=10, width=48).state_dict(), tmp_path / "teacher.pt")
    mapping = {
        "data_dir": str(cifar10_dir),
        "root": str(ROOT),
        "teacher": str(tmp_path / "teacher.pt"),
        "cache": str(tmp_path / "cache"),
    }
    grid = yaml.safe_load((ROOT / "benchmarks/ledger/cifar10_cache.yaml").read_text())
    small = ["--data.init_args.train_subset=null", "--data.init_args.batch_size=16"]

    def arm(method: str) -> list[str]:
        spec = grid["methods"][method]
        args: list[str] = []
        for config in spec["configs"]:
            args += ["--config", ledger._config_file(ROOT / config, mapping, tmp_path)]
        overrides = grid.get("overrides", []) + spec.get("overrides", [])
        return args + [string.Template(o).substitute(mapping) for o in overrides] + small

    main(["cache", *arm("kd_online"), "--epochs", "1", "--out", mapping["cache"], "--no-progress"])
    for method in grid["methods"]:
        cli = build_cli(
            [
                "fit",
                *arm(method),
                "--trainer.fast_dev_run=1",
                f"--trainer.default_root_dir={tmp_path / method}",
                "--trainer.enable_progress_bar=false",
            ]
        )
        assert cli.trainer.global_step == 1
        assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
        assert cli.model.teacher_is_online == (method == "kd_online")
