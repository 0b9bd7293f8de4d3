"""Every config in configs/ parses and runs one batch (fast_dev_run) on small generated data.

Two kinds: the standalone YAML files (configs/cifar10, quickstart, imagenet), each one run; and
the composed CIFAR-100 runs of configs/cifar100 (``recipe.yaml`` + a teacher, a vanilla student,
or a method and a pair), taken from the ``lightning-kd fit --config ...`` lines that those
files and configs/cifar100/README.md tell a user to run.
"""

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_kd.cli import build_cli
from lightning_kd.data.splits import write_split_file
from lightning_kd.modules import SelfDistillationModule

ROOT = Path(__file__).resolve().parents[1]
CIFAR100 = ROOT / "configs" / "cifar100"
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if CIFAR100 not in p.parents)

#: A documented CIFAR-100 run: ``lightning-kd fit`` followed only by ``--config`` files.
_RUN = re.compile(r"lightning-kd fit((?: --config configs/cifar100/\S+\.yaml)+)\s*$")
TEACHERS = {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "resnet50"}
STUDENTS = {"resnet20", "resnet32", "resnet8x4", "wrn_16_2", "wrn_40_1", "vgg8"}
STUDENTS_LR_001 = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}  # lr 0.01, not 0.05
PAIRS = {
    "resnet56__resnet20",
    "resnet110__resnet20",
    "resnet110__resnet32",
    "resnet32x4__resnet8x4",
    "wrn_40_2__wrn_16_2",
    "wrn_40_2__wrn_40_1",
    "vgg13__vgg8",
    "vgg13__mobilenetv2",
    "resnet50__mobilenetv2",
    "resnet50__vgg8",
    "resnet32x4__shufflenetv1",
    "resnet32x4__shufflenetv2",
    "wrn_40_2__shufflenetv1",
}
METHODS = {
    "kd",
    "dkd",
    "fitnet",
    "at",
    "rkd",
    "crd",
    "kd_ls",
    "dkd_ls",
    "dist",
    "ctkd",
    "mlkd",
    "mlkd_ls",
    "reviewkd",
    "funmatch",
}


def cifar100_runs() -> list[tuple[str, ...]]:
    """The composed runs the CIFAR-100 files document, as tuples of repo-relative paths."""
    runs: set[tuple[str, ...]] = set()
    for doc in [*CIFAR100.rglob("*.yaml"), CIFAR100 / "README.md"]:
        for line in doc.read_text().splitlines():
            match = _RUN.search(line)
            if match:
                runs.add(tuple(match.group(1).split()[1::2]))
    return sorted(runs)


RUNS = cifar100_runs()


def _kind(run: tuple[str, ...]) -> tuple[str, str]:
    """``("teacher", net)``, ``("vanilla", net)`` or ``(method, pair)`` of a composed run."""
    folder, _, name = run[1].removeprefix("configs/cifar100/").partition("/")
    if folder == "teachers":
        return "teacher", Path(name).stem
    if folder == "students":
        return "vanilla", Path(name).stem
    if folder == "methods":  # methods/kd.yaml, methods/<method>/<taps>.yaml
        return Path(Path(name).parts[0]).stem, Path(run[-1]).stem
    # fitnet2stage/<pair>_stage1.yaml: ("fitnet2stage_stage1", pair)
    return f"{folder}_{Path(name).stem.rpartition('_')[2]}", Path(run[-1]).stem


def _network(spec: dict[str, Any], num_classes: int) -> torch.nn.Module:
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{**spec.get("init_args", {}), "num_classes": num_classes})


def test_configs_found() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    for run in (
        "teacher_resnet56",
        "vanilla_resnet20",
        "kd_resnet56_resnet20",
        "teacher_resnet32x4",
        "vanilla_resnet8x4",
        "kd_resnet32x4_resnet8x4",
        "teacher_wrn_40_2",
        "vanilla_wrn_16_2",
        "kd_wrn_40_2_wrn_16_2",
    ):
        assert f"cifar10/{run}.yaml" in names
    assert {"quickstart/teacher.yaml", "quickstart/student_vanilla.yaml"} <= names
    assert "quickstart/student_kd.yaml" in names


def test_cifar100_runs_found() -> None:
    kinds = [_kind(run) for run in RUNS]
    assert len(kinds) == len(set(kinds)), "two documented runs for the same teacher/method/pair"
    assert {n for k, n in kinds if k == "teacher"} == TEACHERS
    assert {n for k, n in kinds if k == "vanilla"} == STUDENTS | STUDENTS_LR_001
    for pair in PAIRS:
        assert {k for k, n in kinds if n == pair} >= METHODS, pair
    assert {n for k, n in kinds if k in METHODS} == PAIRS
    assert {(k, n) for k, n in kinds if k.startswith("fitnet2stage")} == {
        ("fitnet2stage_stage1", "resnet32x4__resnet8x4"),
        ("fitnet2stage_stage2", "resnet32x4__resnet8x4"),
    }
    used = set()
    for run in RUNS:
        assert run[0] == "configs/cifar100/recipe.yaml", run  # the recipe always comes first
        for path in run:
            assert (ROOT / path).is_file(), path
            used.add(path)
        if run[-1].startswith("configs/cifar100/pairs/"):
            # Each pair's teacher has its own teacher run; its file names that run's checkpoint.
            teacher, _, _ = Path(run[-1]).stem.partition("__")
            assert ("teacher", teacher) in kinds
            pair = yaml.safe_load((ROOT / run[-1]).read_text())["model"]["init_args"]
            assert pair["teacher_checkpoint"] == f"checkpoints/cifar100/teacher_{teacher}/last.ckpt"
            assert pair["save_teacher_weights"] is False
        if run[1].startswith("configs/cifar100/teachers/"):
            # ... which the teacher run writes: a fixed folder with last.ckpt.
            net = Path(run[1]).stem
            callbacks = yaml.safe_load((ROOT / run[1]).read_text())["trainer"]["callbacks"]
            savers = [c["init_args"] for c in callbacks if c["class_path"].endswith("Checkpoint")]
            assert {s["dirpath"] for s in savers} == {f"checkpoints/cifar100/teacher_{net}"}
            # best.ckpt by val/acc, and last.ckpt = the final weights from a monitor-less
            # checkpoint (a monitored one's save_last writes only in improving epochs).
            assert sorted((s["filename"], s.get("monitor")) for s in savers) == [
                ("best", "val/acc"),
                ("last", None),
            ]
            assert not any(s.get("save_last") for s in savers)
    # No file is left out of every documented run.
    files = {p.relative_to(ROOT).as_posix() for p in CIFAR100.rglob("*.yaml")}
    assert files == used, sorted(files - used)


def _one_batch_args(data_dir: Path, tmp_path: Path) -> list[str]:
    return [
        "--data.init_args.data_dir",
        str(data_dir),
        "--trainer.fast_dev_run",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
    ]


def _shrink_crd(raw: dict[str, Any]) -> bool:
    """Give CRD terms a small memory bank; whether ``raw`` had one."""
    found = False
    for term in raw.get("model", {}).get("init_args", {}).get("terms") or []:
        if term["class_path"].endswith("CRDTerm"):
            # The memory bank has one row per training image (45,000 / 1.28M); the small
            # generated datasets need far fewer, and so does this test's RAM.
            term["init_args"]["num_samples"] = 1000
            found = True
    return found


def _check_networks(cli: Any, num_classes: int, size: int) -> None:
    """The datamodule's class count reached every network."""
    images = torch.zeros(2, 3, size, size)
    networks = [
        getattr(cli.model, n) for n in ("model", "student", "teacher") if hasattr(cli.model, n)
    ]
    assert networks
    for network in networks:
        network.eval()
        assert network(images).shape == (2, num_classes)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_runs_one_batch(
    config: Path,
    cifar10_dir: Path,
    cifar100_dir: Path,
    image_folder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the configs (runs/, checkpoints/) land here
    raw = yaml.safe_load(config.read_text())
    data_class = raw["data"]["class_path"].rpartition(".")[2]
    data_dir, num_classes, size = {
        "CIFAR10DataModule": (cifar10_dir, 10, 32),
        "CIFAR100DataModule": (cifar100_dir, 100, 32),
        "ImageFolderDataModule": (image_folder_dir, 3, 64),
        "CIFAR10SSLDataModule": (cifar10_dir, 10, 32),
    }[data_class]
    if _shrink_crd(raw):
        config = tmp_path / config.name
        config.write_text(yaml.safe_dump(raw))
    args = ["--config", str(config), *_one_batch_args(data_dir, tmp_path)]
    if data_class.endswith("SSLDataModule"):
        # 2 labels per class of the small generated set, small labeled + unlabeled batches.
        args += ["--data.init_args.num_labels", str(2 * num_classes)]
        args += ["--data.init_args.labeled_batch_size", "4"]
        args += ["--data.init_args.unlabeled_batch_size", "12"]
        if raw["data"]["init_args"].get("val_split", 5000) > 0:
            # The default 5,000 held-out images are more than the generated set has.
            args += ["--data.init_args.val_split", "20"]
    else:
        args += ["--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4"]
    if data_class == "ImageFolderDataModule":
        # Small images and no worker processes keep the one-batch run fast.
        args += ["--data.init_args.image_size", str(size), "--data.init_args.resize_size", "72"]
        args += ["--data.init_args.num_workers", "0"]
    init_args = raw["model"]["init_args"]
    if "teacher" in init_args:
        # The KD configs read the teacher from the checkpoint of a previous run; stand in a
        # plain state_dict of the same architecture.
        teacher_file = tmp_path / "teacher.pt"
        torch.save(_network(init_args["teacher"], num_classes).state_dict(), teacher_file)
        args += ["--model.init_args.teacher_checkpoint", str(teacher_file)]
    if init_args.get("student_checkpoint"):
        # Stage 2 of two-stage FitNets starts from the stage-1 student.
        student_file = tmp_path / "student.pt"
        torch.save(_network(init_args["student"], num_classes).state_dict(), student_file)
        args += ["--model.init_args.student_checkpoint", str(student_file)]
    if "train_subset" in raw["data"].get("init_args", {}):
        args += ["--data.init_args.train_subset", "null"]
    if raw["data"].get("init_args", {}).get("labeled_split_file"):
        # The committed split indexes the real 50,000 images; label 20 of the generated ones.
        split = write_split_file(
            tmp_path / "split.json", torch.arange(20), dataset="CIFAR-10", num_train_images=200
        )
        args += ["--data.init_args.labeled_split_file", str(split)]
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    if isinstance(cli.model, SelfDistillationModule):
        # Label-free: the networks end in features, and the kNN callback scored them.
        images = torch.zeros(2, 3, size, size)
        cli.model.eval()
        features = cli.model.embed(images)
        assert features.shape == (2, cli.model.exported_model().num_features)
        assert 0.0 <= float(cli.trainer.callback_metrics["val/knn_acc"]) <= 1.0
        return
    _check_networks(cli, num_classes, size)


@pytest.mark.parametrize("run", RUNS, ids=lambda r: "-".join(_kind(r)))
def test_cifar100_run_one_batch(
    run: tuple[str, ...], cifar100_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the configs (runs/, checkpoints/) land here
    raws = [yaml.safe_load((ROOT / path).read_text()) for path in run]
    args: list[str] = []
    for path, raw in zip(run, raws, strict=True):
        config = ROOT / path
        if _shrink_crd(raw):
            config = tmp_path / Path(path).name
            config.write_text(yaml.safe_dump(raw))
        args += ["--config", str(config)]
    args += _one_batch_args(cifar100_dir, tmp_path)
    args += ["--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4"]
    merged = {k: v for raw in raws for k, v in raw["model"].get("init_args", {}).items()}
    if "teacher" in merged:
        # The pair names the teacher run's last.ckpt; stand in a plain state_dict.
        teacher_file = tmp_path / "teacher.pt"
        torch.save(_network(merged["teacher"], 100).state_dict(), teacher_file)
        args += ["--model.init_args.teacher_checkpoint", str(teacher_file)]
    if merged.get("student_checkpoint"):
        # Stage 2 of two-stage FitNets starts from the stage-1 student.
        student_file = tmp_path / "student.pt"
        torch.save(_network(merged["student"], 100).state_dict(), student_file)
        args += ["--model.init_args.student_checkpoint", str(student_file)]
    cli = build_cli(args, run=False)

    # The composition kept every file's part: the module class and terms of the method file
    # (a later file sets init_args only), the recipe's optimizer with the student's lr.
    kind, name = _kind(run)
    method = raws[1]["model"]
    assert type(cli.model).__name__ == method["class_path"].rpartition(".")[2]
    terms = [t["class_path"].rpartition(".")[2] for t in method["init_args"].get("terms") or []]
    assert [type(t).__name__ for t in getattr(cli.model, "terms", [])] == terms
    student = name if kind in ("teacher", "vanilla") else name.partition("__")[2]
    lr = cli.config.model.init_args.optimizer.init_args.lr
    assert lr == (0.01 if student in STUDENTS_LR_001 else 0.05)
    logger = cli.config.trainer.logger.init_args
    log_dir = Path(logger.save_dir, logger.name).relative_to(tmp_path / "runs").as_posix()
    # runs/cifar100/teacher_<net>, vanilla_<net>, or <pair>/<method>: a folder per run kind.
    own = f"cifar100/{kind}_{name}" if kind in ("teacher", "vanilla") else f"cifar100/{name}/{kind}"
    assert log_dir == own, log_dir

    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    _check_networks(cli, 100, 32)
