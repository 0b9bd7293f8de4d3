"""The ``lightning-kd`` command never silently does the wrong thing.

Each test reproduces, through the real CLI on small generated CIFAR files, a case in which the
command used to exit 0 while doing something other than the config said (or buried the reason
in parser noise), and checks the behaviour or the one-line error a user now gets.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_kd.callbacks import PartsRichProgressBar, PredictionWriter
from lightning_kd.cli import VERBOSE_ENV, build_cli, main

ROOT = Path(__file__).resolve().parents[1]

TEACHER = """
seed_everything: 0
model:
  class_path: lightning_kd.modules.ClassifierModule
  init_args:
    model:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 8}}
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args: {{data_dir: {data_dir}, batch_size: 16}}
trainer:
  max_epochs: 1
  limit_train_batches: 3
  accelerator: cpu
  devices: 1
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: runs, name: teacher}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: checkpoints/teacher, save_last: true}}
"""

KD = """
seed_everything: 0
model:
  class_path: lightning_kd.modules.KDModule
  init_args:
    student:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 4}}
    teacher:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 8}}
    teacher_checkpoint: checkpoints/teacher/last.ckpt
    save_teacher_weights: false
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args: {{data_dir: {data_dir}, batch_size: 16}}
trainer:
  max_epochs: 1
  limit_train_batches: 3
  accelerator: cpu
  devices: 1
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: runs, name: kd}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: checkpoints/kd, save_last: true}}
"""


@pytest.fixture
def workdir(tmp_path: Path, cifar10_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with teacher.yaml and kd.yaml; the tests run from it."""
    (tmp_path / "teacher.yaml").write_text(TEACHER.format(data_dir=cifar10_dir))
    (tmp_path / "kd.yaml").write_text(KD.format(data_dir=cifar10_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _fail(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command, expect it to fail, return the last line of stderr (checked to be
    the only ``lightning-kd: error`` line)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (1, 2)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing printed"
    assert lines[-1].startswith("lightning-kd: error: "), lines[-1]
    assert sum("lightning-kd: error" in line for line in lines) == 1
    assert "Given value" not in err and "Traceback" not in err
    return lines[-1]


def _fit_teacher(extra: tuple[str, ...] = ()) -> Path:
    main(["fit", "--config", "teacher.yaml", *extra])
    return Path("checkpoints/teacher/last.ckpt")


def _fit_kd(extra: tuple[str, ...] = ()) -> Path:
    main(["fit", "--config", "kd.yaml", *extra])
    return Path("checkpoints/kd/last.ckpt")


def _scalars(run_dir: Path) -> EventAccumulator:
    (events,) = glob.glob(str(run_dir / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    return accumulator


# ---------------------------------------------------------------------- --ckpt_path
def test_kd_config_refuses_a_teacher_checkpoint(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = _fit_teacher()
    # Before: exit 0, the teacher's accuracy printed as the KD student's test/acc.
    line = _fail(["test", "--config", "kd.yaml", "--ckpt_path", str(teacher)], capsys)
    assert "holds a ClassifierModule (model=SmallCNN(width=8))" in line
    assert "config builds a KDModule (student=SmallCNN(width=4), teacher=SmallCNN(width=8))" in line
    assert not Path("runs/kd").exists() or not any(Path("runs/kd").iterdir())


def test_mean_teacher_config_refuses_a_kd_checkpoint(
    workdir: Path, capsys: pytest.CaptureFixture[str], cifar10_dir: Path
) -> None:
    _fit_teacher()
    kd = _fit_kd()
    config = yaml.safe_load((ROOT / "configs/cifar10/mean_teacher_cpu_4000.yaml").read_text())
    config["data"]["init_args"].update(
        data_dir=str(cifar10_dir), num_labels=20, split_file=None, labeled_batch_size=4
    )
    config["data"]["init_args"]["unlabeled_batch_size"] = 4
    Path("mt.yaml").write_text(yaml.safe_dump(config))
    # Before: LightningCLI replaced the config's module by the checkpoint's KDModule, which
    # then crashed on the semi-supervised batch.
    line = _fail(["fit", "--config", "mt.yaml", "--ckpt_path", str(kd)], capsys)
    assert "holds a KDModule" in line and "config builds a MeanTeacherModule" in line


def test_checkpoint_of_other_networks_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit_teacher()
    kd = _fit_kd()
    line = _fail(
        [
            "test",
            "--config",
            "kd.yaml",
            "--ckpt_path",
            str(kd),
            "--model.init_args.student.init_args.width",
            "6",
        ],
        capsys,
    )
    assert "do not fit the config's" in line and "student=SmallCNN(width=6)" in line
    assert "checkpoint (4," in line and "config (6," in line


def test_command_line_values_win_over_the_checkpoint(workdir: Path) -> None:
    _fit_teacher()
    kd = _fit_kd()
    # Before: --ckpt_path re-applied the checkpoint's hyperparameters over these.
    cli = build_cli(
        [
            "test",
            "--config",
            "kd.yaml",
            "--ckpt_path",
            str(kd),
            "--model.init_args.evaluate_teacher",
            "false",
            "--model.init_args.temperature",
            "2.0",
        ]
    )
    assert cli.model.evaluate_teacher is False and cli.model.temperature == 2.0
    metrics = cli.trainer.callback_metrics
    assert "test/acc" in metrics and "test/teacher_acc" not in metrics


def test_non_checkpoint_file_is_named(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("notes.ckpt").write_text("not a checkpoint")
    line = _fail(["test", "--config", "kd.yaml", "--ckpt_path", "notes.ckpt"], capsys)
    assert "ckpt_path 'notes.ckpt' is not a checkpoint" in line
    torch.save({"weights": torch.zeros(2)}, "weights.pt")
    line = _fail(["test", "--config", "kd.yaml", "--ckpt_path", "weights.pt"], capsys)
    assert "'weights.pt' is not a Lightning checkpoint" in line and "teacher_checkpoint" in line
    line = _fail(["test", "--config", "kd.yaml", "--ckpt_path", "missing.ckpt"], capsys)
    assert "ckpt_path 'missing.ckpt' does not exist" in line


# ---------------------------------------------------------------------- teacher files
def test_teacher_recorded_absolute_and_found_from_another_directory(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = _fit_teacher().resolve()
    kd = _fit_kd().resolve()
    saved = torch.load(kd, map_location="cpu", weights_only=True)
    assert saved["lightning_kd"]["teacher"]["path"] == str(teacher)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    config = str(workdir / "kd.yaml")
    # Before: "weights file not found" (the relative path of the training directory), even
    # with the teacher's absolute path on the command line.
    cli = build_cli(["test", "--config", config, "--ckpt_path", str(kd)])
    assert cli.model.teacher_source["path"] == str(teacher)
    assert float(cli.trainer.callback_metrics["test/teacher_acc"]) >= 0
    # A moved teacher file is found by the path given on the command line.
    moved = elsewhere / "moved_teacher.ckpt"
    teacher.rename(moved)
    cli = build_cli(
        [
            "test",
            "--config",
            config,
            "--ckpt_path",
            str(kd),
            "--model.init_args.teacher_checkpoint",
            str(moved),
        ]
    )
    assert cli.model.teacher_source["path"] == str(moved)


def test_changed_teacher_file_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = _fit_teacher()
    kd = _fit_kd()
    state = torch.load(teacher, map_location="cpu", weights_only=True)
    state["state_dict"] = {
        k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()
    }
    torch.save(state, teacher)  # e.g. the teacher was retrained in place
    line = _fail(["test", "--config", "kd.yaml", "--ckpt_path", str(kd)], capsys)
    assert "this checkpoint was trained with the teacher" in line and "sha256" in line


def test_kd_run_logs_its_teacher_and_explains_eval_mode(
    workdir: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    teacher = _fit_teacher().resolve()
    with caplog.at_level(logging.INFO):
        _fit_kd()
    text = caplog.text
    assert f"teacher: {teacher} (sha256 " in text
    assert "teacher (22 modules) stays in eval mode" in text
    assert not [w for w in recwarn if "module(s) in eval mode" in str(w.message)]


def test_rerunning_a_teacher_refuses_or_replaces(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit_teacher()
    first = Path("checkpoints/teacher/last.ckpt").read_bytes()
    # Before: a last-v1.ckpt that no KD config reads, the stale last.ckpt kept.
    line = _fail(["fit", "--config", "teacher.yaml"], capsys)
    assert "already holds" in line and "last.ckpt" in line and "--overwrite true" in line
    _fit_teacher(("--overwrite", "true", "--seed_everything", "1"))
    names = sorted(p.name for p in Path("checkpoints/teacher").iterdir())
    assert not [n for n in names if "-v1" in n] and "last.ckpt" in names
    assert Path("checkpoints/teacher/last.ckpt").read_bytes() != first


# ---------------------------------------------------------------------- divergence
def test_diverging_run_stops_with_the_step_and_part(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit_teacher()
    huge = ["--model.init_args.optimizer", "torch.optim.SGD"]
    huge += ["--model.init_args.optimizer.lr", "1e12", "--trainer.max_epochs", "3"]
    # Before: loss -> 1e35 -> NaN, trained to the end, NaN checkpoints, exit 0. Now it stops
    # at the first non-finite loss, or (when BatchNorm statistics overflow while the loss is
    # still finite) at the first checkpoint, which refuses non-finite weights.
    line = _fail(["fit", "--config", "kd.yaml", *huge], capsys)
    assert "non-finite training loss at optimizer step" in line or (
        "refusing to write a checkpoint at step" in line and "not finite" in line
    )
    last = Path("checkpoints/kd/last.ckpt")
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _nan_teacher() -> None:
    """Make the trained teacher output NaN: every KD loss is then NaN from step 0."""
    teacher = Path("checkpoints/teacher/last.ckpt")
    state = torch.load(teacher, map_location="cpu", weights_only=True)
    state["state_dict"]["model.fc.bias"].fill_(float("nan"))
    torch.save(state, teacher)


def test_nonfinite_loss_names_step_and_parts(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit_teacher()
    _nan_teacher()
    line = _fail(["fit", "--config", "kd.yaml"], capsys)
    assert "non-finite training loss at optimizer step 0 (epoch 0, batch 0): loss=nan" in line
    assert "loss_kd=nan" in line and "loss_ce" not in line  # CE does not see the teacher
    assert "nonfinite_loss='skip'" in line
    assert not Path("checkpoints/kd/last.ckpt").exists()


def test_skip_mode_skips_nonfinite_steps(workdir: Path, recwarn: pytest.WarningsRecorder) -> None:
    _fit_teacher()
    _nan_teacher()
    cli = build_cli(
        [
            "--config",
            "kd.yaml",
            "--model.init_args.nonfinite_loss",
            "skip",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_checkpointing",
            "false",
        ],
        run=False,
    )
    before = {k: v.clone() for k, v in cli.model.student.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # Every step was skipped: no backward, so the optimizer left the student unchanged.
    for key, value in cli.model.student.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, before[key]), key
    assert sum("skipping this step" in str(w.message) for w in recwarn) == 3


# ---------------------------------------------------------------------- selection
def test_validation_is_held_out_by_default(workdir: Path) -> None:
    cli = build_cli(["fit", "--config", "teacher.yaml"])
    dm = cli.datamodule
    assert dm.validates_on_test is False and dm.test_dataset is None
    assert len(dm.val_dataset) == 20 and len(dm.train_dataset) == 180
    assert "val/acc" in cli.trainer.callback_metrics


def test_val_split_zero_warns_renames_and_refuses_selection(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monitor = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.monitor=val/acc",
        "--trainer.callbacks.dirpath=checkpoints/best",
    ]
    line = _fail(
        ["fit", "--config", "teacher.yaml", "--data.init_args.val_split", "0", *monitor], capsys
    )
    assert "would select on the test split" in line and "val_split" in line
    with pytest.warns(UserWarning, match="validation runs on the CIFAR-10 test split"):
        cli = build_cli(
            [
                "fit",
                "--config",
                "teacher.yaml",
                "--data.init_args.val_split",
                "0",
                "--overwrite",
                "true",
            ]
        )
    metrics = cli.trainer.callback_metrics
    assert "val_on_test/acc" in metrics and "val/acc" not in metrics and "hp_metric" not in metrics


def test_no_shipped_config_downloads() -> None:
    for config in (ROOT / "configs").rglob("*.yaml"):
        assert "download: true" not in config.read_text(), config


def test_missing_dataset_is_the_library_error_and_creates_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fail(
        ["fit", "--config", "teacher.yaml", "--data.init_args.data_dir", "nowhere"], capsys
    )
    assert "CIFAR-10 not found for data_dir='nowhere'" in line
    assert not Path("nowhere").exists()
    assert not list(Path("runs").glob("*/version_*"))


# ---------------------------------------------------------------------- error output
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.temperature", "-1"], "KDModule: temperature must be > 0, got -1.0"),
        (
            ["--data.init_args.batch_size", "-1"],
            "CIFAR10DataModule: batch_size must be >= 1, got -1",
        ),
        (["--trainer.max_epochs", "abc"], "trainer.max_epochs"),
    ],
)
def test_errors_are_one_clean_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    line = _fail(["fit", "--config", "kd.yaml", *args], capsys)
    assert expected in line
    assert "Union" not in line and "Namespace(" not in line and "compute_fn" not in line


def test_verbose_shows_the_traceback(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception, match="temperature must be > 0"):
        main(["fit", "--config", "kd.yaml", "--model.init_args.temperature", "-1", "--verbose"])
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with pytest.raises(Exception, match="temperature must be > 0"):
        main(["fit", "--config", "kd.yaml", "--model.init_args.temperature", "-1"])


# ---------------------------------------------------------------------- predict
def test_predict_writes_predictions(workdir: Path) -> None:
    _fit_teacher()
    kd = _fit_kd()
    # Before: predict printed nothing and wrote nothing.
    main(["predict", "--config", "kd.yaml", "--ckpt_path", str(kd)])
    result = torch.load("predictions.pt", weights_only=True)
    assert result["index"].tolist() == list(range(100))
    assert result["target"].tolist() == [i % 10 for i in range(100)]
    assert result["logits"].shape == (100, 10)
    assert torch.allclose(result["probs"].sum(dim=1), torch.ones(100))
    assert torch.equal(result["prediction"], result["logits"].argmax(dim=1))
    main(["predict", "--config", "kd.yaml", "--ckpt_path", str(kd), "--predictions_file", "p.csv"])
    rows = Path("p.csv").read_text().splitlines()
    assert rows[0].startswith("index,target,prediction,prob_0") and len(rows) == 101
    assert not Path("runs/kd/version_2").exists()  # predict made no log folder


def test_prediction_writer_rejects_other_suffixes() -> None:
    with pytest.raises(ValueError, match=r"must end in \.pt or \.csv"):
        PredictionWriter("out.json")


# ---------------------------------------------------------------------- run length
def test_schedule_takes_the_run_length_from_the_trainer(workdir: Path) -> None:
    one_cycle = ["--model.init_args.scheduler", "torch.optim.lr_scheduler.OneCycleLR"]
    one_cycle += ["--model.init_args.scheduler.max_lr", "0.1"]
    one_cycle += ["--model.init_args.scheduler_interval", "step"]
    # Before: total_steps hard-coded in the configs crashed once epochs or subset changed.
    cli = build_cli(["fit", "--config", "teacher.yaml", *one_cycle, "--trainer.max_epochs", "2"])
    assert cli.trainer.global_step == 6
    assert cli.trainer.lr_scheduler_configs[0].scheduler.total_steps == 6


def test_inconsistent_schedule_fails_before_training(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one_cycle = ["--model.init_args.scheduler", "torch.optim.lr_scheduler.OneCycleLR"]
    one_cycle += ["--model.init_args.scheduler.max_lr", "0.1"]
    one_cycle += ["--model.init_args.scheduler.total_steps", "100"]
    one_cycle += ["--model.init_args.scheduler_interval", "step"]
    line = _fail(["fit", "--config", "teacher.yaml", *one_cycle], capsys)
    assert "OneCycleLR is set to 100 optimizer steps, but this run makes 3" in line
    assert not Path("checkpoints/teacher").exists() or not any(
        Path("checkpoints/teacher").iterdir()
    )


# ---------------------------------------------------------------------- logging
def test_logging_steps_progress_bar_and_one_hparams_record(workdir: Path) -> None:
    _fit_teacher()
    cli = build_cli(
        [
            "fit",
            "--config",
            "kd.yaml",
            "--trainer.log_every_n_steps",
            "2",
            "--trainer.max_epochs",
            "2",
            "--trainer.limit_train_batches",
            "5",
            "--model.init_args.scheduler",
            "torch.optim.lr_scheduler.MultiStepLR",
            "--model.init_args.scheduler.milestones",
            "[1, 2]",
        ]
    )
    assert isinstance(cli.trainer.progress_bar_callback, PartsRichProgressBar)
    cli.trainer.training = True
    bar = cli.trainer.progress_bar_callback.get_metrics(cli.trainer, cli.model)
    assert {"loss_ce", "loss_kd"} <= set(bar)
    run = Path("runs/kd/version_0")
    events = _scalars(run)
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # Parts follow global_step exactly as train/loss_step does (before: batch_idx % n).
    assert steps["train/loss_step"] == [1, 3, 5, 7, 9]
    for part in ("loss_ce", "loss_kd", "acc", "teacher_acc", "agreement"):
        assert steps[f"train/{part}_step"] == steps["train/loss_step"], part
    # hp_metric is the validation accuracy, no -1 placeholder.
    hp = [e.value for e in events.Scalars("hp_metric")]
    val = [e.value for e in events.Scalars("val/acc")]
    assert hp == val and len(hp) == 2
    # One flat, filterable hparams record.
    from tensorboard.compat.proto import event_pb2

    records = 0
    (events_file,) = glob.glob(str(run / "events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for event in EventFileLoader(events_file).Load():
        assert isinstance(event, event_pb2.Event)
        for value in event.summary.value:
            if value.tag == "_hparams_/experiment":
                records += 1
    assert records == 1
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["model.temperature"] == 4.0 and hparams["model.student.width"] == 4
    assert hparams["data.batch_size"] == 16 and len(hparams["teacher_sha256"]) == 64
    assert all(not isinstance(v, dict | list) for v in hparams.values())
    # Lists (and None) are recorded as text, which TensorBoard's HPARAMS accepts.
    assert hparams["model.scheduler.milestones"] == "[1, 2]"
    assert hparams["model.student_checkpoint"] == "None"


# ---------------------------------------------------------------------- output folders
def test_default_root_dir_decides_where_runs_write(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("out")
    before = sorted(os.listdir(workdir))
    main(["fit", "--config", "teacher.yaml", "--trainer.default_root_dir", str(root)])
    main(["fit", "--config", "kd.yaml", "--trainer.default_root_dir", str(root)])
    assert sorted(os.listdir(workdir)) == before  # nothing written to the cwd
    assert (root / "checkpoints/teacher/last.ckpt").is_file()
    assert (root / "checkpoints/kd/last.ckpt").is_file()
    assert list((root / "runs/kd").glob("version_0/events.out.tfevents.*"))


def test_failed_run_leaves_no_empty_version_folder(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit_teacher()
    _fail(
        ["fit", "--config", "kd.yaml", "--model.init_args.teacher_checkpoint", "none.ckpt"], capsys
    )
    _fail(["test", "--config", "kd.yaml", "--ckpt_path", "checkpoints/teacher/last.ckpt"], capsys)
    _fail(["fit", "--config", "kd.yaml", "--data.init_args.data_dir", "nowhere"], capsys)
    assert not list(Path("runs").glob("kd/version_*"))


def test_checkpoint_rebuilds_the_linked_class_count(workdir: Path, cifar100_dir: Path) -> None:
    from lightning_kd.modules import ClassifierModule

    main(
        [
            "fit",
            "--config",
            "teacher.yaml",
            "--data",
            "lightning_kd.data.CIFAR100DataModule",
            "--data.init_args.data_dir",
            str(cifar100_dir),
            "--data.init_args.batch_size",
            "16",
        ]
    )
    # Before: num_classes (linked from the datamodule) was not saved, so the network came
    # back with its default 10 classes and the 100-class weights did not load.
    module = ClassifierModule.load_from_checkpoint("checkpoints/teacher/last.ckpt")
    assert module.model.fc.out_features == 100
