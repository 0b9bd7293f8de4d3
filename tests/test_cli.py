"""The lightning-kd command: fit, validate, test and predict from YAML, hparams in TensorBoard."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_kd.cli import build_cli, main

CONFIG = """
seed_everything: 3
model:
  class_path: lightning_kd.modules.KDModule
  init_args:
    student:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 4}}
    teacher:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 8}}
    temperature: 3.0
    alpha: 0.25
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args:
    data_dir: {data_dir}
    batch_size: 16
trainer:
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 1
  limit_test_batches: 1
  limit_predict_batches: 1
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args:
      save_dir: {out}
      name: cli
      version: run
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        dirpath: {out}/ckpt
        save_last: true
"""


@pytest.fixture
def config(cifar10_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "kd.yaml"
    path.write_text(CONFIG.format(data_dir=cifar10_dir, out=tmp_path))
    return path


def test_fit_then_validate_test_predict(config: Path, tmp_path: Path) -> None:
    main(["fit", "--config", str(config)])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    run_dir = tmp_path / "cli" / "run"
    assert list(run_dir.glob("events.out.tfevents.*"))
    # The whole resolved config is recorded, flat, with the module's settings.
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["model.temperature"] == 3.0 and hparams["model.alpha"] == 0.25
    assert hparams["model.student"] == "lightning_kd.models.SmallCNN"
    assert hparams["model.student.width"] == 4 and hparams["model.teacher.width"] == 8
    assert (run_dir / "config.yaml").is_file()

    for command in ("validate", "test"):
        main([command, "--config", str(config), "--ckpt_path", str(ckpt)])
    predictions = tmp_path / "predictions.pt"
    main(
        [
            "predict",
            "--config",
            str(config),
            "--ckpt_path",
            str(ckpt),
            "--predictions_file",
            str(predictions),
        ]
    )
    assert torch.load(predictions, weights_only=True)["logits"].shape[1] == 10


def test_num_classes_linked_from_the_datamodule(config: Path, cifar100_dir: Path) -> None:
    cli = build_cli(
        [
            "--config",
            str(config),
            "--data",
            "lightning_kd.data.CIFAR100DataModule",
            "--data.init_args.data_dir",
            str(cifar100_dir),
        ],
        run=False,
    )
    for network in (cli.model.student, cli.model.teacher):
        assert network.fc.out_features == 100


def test_console_script_help() -> None:
    exe = Path(sys.executable).with_name("lightning-kd")
    proc = subprocess.run([str(exe), "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--config" in proc.stdout and "--model" in proc.stdout


def test_cli_model_from_checkpoint_without_passing_networks(config: Path, tmp_path: Path) -> None:
    # Under the CLI the networks' class_path/init_args are stored with the checkpoint, so
    # load_from_checkpoint rebuilds the module without being handed the networks.
    main(["fit", "--config", str(config)])
    from lightning_kd.modules import KDModule

    module = KDModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert module.student(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
