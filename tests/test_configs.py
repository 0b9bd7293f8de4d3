"""Every YAML in configs/ parses and runs one batch (fast_dev_run) on small generated data."""

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_kd.cli import build_cli
from lightning_kd.data.label_split import write_split_file
from lightning_kd.modules import SelfDistillationModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def _network(spec: dict[str, Any], num_classes: int) -> torch.nn.Module:
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{**spec.get("init_args", {}), "num_classes": num_classes})


def test_configs_found() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    for dataset in ("cifar10", "cifar100"):
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
            assert f"{dataset}/{run}.yaml" in names
    assert {"quickstart/teacher.yaml", "quickstart/student_vanilla.yaml"} <= names
    assert "quickstart/student_kd.yaml" in names


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
    for term in raw["model"]["init_args"].get("terms", []):
        if term["class_path"].endswith("CRDTerm"):
            # The memory bank has one row per training image (50,000 / 1.28M); the small
            # generated datasets need far fewer, and so does this test's RAM.
            term["init_args"]["num_samples"] = 1000
            config = tmp_path / config.name
            config.write_text(yaml.safe_dump(raw))
    args = [
        "--config",
        str(config),
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
    if data_class.endswith("SSLDataModule"):
        # 2 labels per class of the small generated set, small labeled + unlabeled batches.
        args += ["--data.init_args.num_labels", str(2 * num_classes)]
        args += ["--data.init_args.labeled_batch_size", "4"]
        args += ["--data.init_args.unlabeled_batch_size", "12"]
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
    images = torch.zeros(2, 3, size, size)
    if isinstance(cli.model, SelfDistillationModule):
        # Label-free: the networks end in features, and the kNN callback scored them.
        cli.model.eval()
        features = cli.model.embed(images)
        assert features.shape == (2, cli.model.exported_model().num_features)
        assert 0.0 <= float(cli.trainer.callback_metrics["val/knn_acc"]) <= 1.0
        return
    # The datamodule's class count reached every network.
    networks = [
        getattr(cli.model, n) for n in ("model", "student", "teacher") if hasattr(cli.model, n)
    ]
    assert networks
    for network in networks:
        network.eval()
        assert network(images).shape == (2, num_classes)
