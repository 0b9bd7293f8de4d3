"""lightning-kd report: parameters, MACs, timing, calibration, and the command on tiny runs."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_kd.cli import main
from lightning_kd.report.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from lightning_kd.report.command import network_label, write_report
from lightning_kd.report.measure import (
    count_macs,
    count_parameters,
    state_dict_bytes,
    time_calls,
    time_network,
)

RUN = """
seed_everything: 0
model:
{model}
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args:
    data_dir: {data_dir}
    batch_size: 16
    eval_batch_size: 50
    val_split: 20
trainer:
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 1
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args:
      save_dir: {out}
      name: {name}
      version: 0
"""

CLASSIFIER = """
  class_path: lightning_kd.modules.ClassifierModule
  init_args:
    model:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: {width}}}
"""

KD = """
  class_path: lightning_kd.modules.KDModule
  init_args:
    student:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: {width}}}
    teacher:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: {teacher_width}}}
    teacher_checkpoint: {teacher_checkpoint}
    save_teacher_weights: {save_teacher_weights}
"""

# SmallCNN(width=w) with 10 classes: four 3x3 convs without bias (3->w, w->2w, 2w->4w,
# 4w->4w), a BatchNorm (weight and bias) after each, and a linear 4w -> 10 with bias.
# w = 8: 3*8*9 + 2*8 + 8*16*9 + 2*16 + 16*32*9 + 2*32 + 32*32*9 + 2*32 + 32*10 + 10
#      = 216 + 16 + 1152 + 32 + 4608 + 64 + 9216 + 64 + 330 = 15698
# w = 4: 108 + 8 + 288 + 16 + 1152 + 32 + 2304 + 32 + 170 = 4110
SMALL_CNN_PARAMETERS = {8: 15698, 4: 4110}
# MACs per 32x32 image: every output element of a 3x3 conv costs 9 * in_channels MACs; the
# first three blocks max-pool 2x2 after the conv (32 -> 16 -> 8 -> 4), the linear costs 4w*10.
# w = 8: 32*32*8*27 + 16*16*16*72 + 8*8*32*144 + 4*4*32*288 + 32*10
#      = 221184 + 294912 + 294912 + 147456 + 320 = 958784
SMALL_CNN_8_MACS = 958784


def fit_tiny_run(root: Path, name: str, model: str, data_dir: Path) -> Path:
    """``lightning-kd fit`` of a tiny run (1 epoch of 2 batches on the fake CIFAR-10); returns
    its checkpoint, ``root/name/version_0/checkpoints/*.ckpt`` (``config.yaml`` beside
    ``checkpoints/``)."""
    config = root / f"{name}.yaml"
    config.write_text(RUN.format(model=model, data_dir=data_dir, out=root, name=name))
    main(["fit", "--config", str(config)])
    (checkpoint,) = (root / name / "version_0" / "checkpoints").glob("*.ckpt")
    return checkpoint


@pytest.fixture(scope="module")
def tiny_runs(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classifier teacher SmallCNN(width=8) and a KD student SmallCNN(width=4) distilled from
    it with ``save_teacher_weights=False`` (the checkpoint holds the student only)."""
    root = tmp_path_factory.mktemp("report_runs")
    teacher = fit_tiny_run(root, "teacher", CLASSIFIER.format(width=8), cifar10_dir)
    kd = KD.format(
        width=4, teacher_width=8, teacher_checkpoint=teacher, save_teacher_weights="false"
    )
    student = fit_tiny_run(root, "kd", kd, cifar10_dir)
    return {"teacher": teacher, "kd": student}


class ConvLinear(nn.Module):
    """conv 3->4 (3x3, padding 1, bias), ReLU, global average pool, linear 4->2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))  # (B, 2)


# ----------------------------------------------------------------------------- measure
def test_macs_of_a_conv_and_a_linear_against_a_hand_count() -> None:
    # One 8x8 image. The conv's output is (4, 8, 8) = 256 elements, each a 3x3 window over
    # 3 channels: 27 MACs -> 6912. The linear maps 4 pooled features to 2 logits: 8 MACs.
    # Bias additions, ReLU and pooling are not multiply-accumulates: 6912 + 8 = 6920.
    assert count_macs(ConvLinear().eval(), torch.randn(1, 3, 8, 8)) == 6920
    # Per call, not per image: a batch of 2 costs twice as much.
    assert count_macs(ConvLinear().eval(), torch.randn(2, 3, 8, 8)) == 2 * 6920


def test_parameters_and_size_against_a_hand_count() -> None:
    # conv: 4 * 3 * 3 * 3 weights + 4 biases = 112; linear: 4 * 2 + 2 = 10.
    net = ConvLinear()
    assert count_parameters(net) == 122
    # 122 float32 values are 488 bytes; torch.save adds its archive around them.
    assert 488 < state_dict_bytes(net) < 488 + 4096


def test_latency_of_a_tiny_network_is_sane() -> None:
    timing = time_network(ConvLinear().eval(), torch.randn(1, 3, 8, 8), warmup=2, repeats=9)
    assert timing.batch_size == 1 and timing.repeats == 9 and timing.warmup == 2
    assert timing.threads == torch.get_num_threads() >= 1
    assert 0 < timing.min_s <= timing.q1_s <= timing.median_s <= timing.q3_s <= timing.max_s
    assert timing.max_s < 1.0  # a 7k-MAC network: well under a second per call
    values = timing.as_dict()
    assert values["images_per_s"] == pytest.approx(1 / timing.median_s)
    assert values["images_per_s_q1"] <= values["images_per_s"] <= values["images_per_s_q3"]

    big = time_network(ConvLinear().eval(), torch.randn(16, 3, 8, 8), warmup=1, repeats=3)
    assert big.batch_size == 16
    assert big.images_per_s == pytest.approx(16 / big.median_s)


def test_time_calls_counts_the_calls_and_refuses_no_repeats() -> None:
    calls = []
    timing = time_calls(lambda: calls.append(1), batch_size=4, warmup=3, repeats=5)
    assert len(calls) == 8 and timing.repeats == 5 and timing.batch_size == 4
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        time_calls(lambda: None, batch_size=1, repeats=0)


# ----------------------------------------------------------------------------- calibration
def test_ece_of_a_hand_made_prediction_set() -> None:
    # Four samples, 15 bins of width 1/15 = 0.0667:
    #   conf 0.90 (class 0, label 0: right) and 0.90 (class 0, label 1: wrong) -> bin
    #     [0.867, 0.933): accuracy 0.5, confidence 0.9, gap 0.4, weight 2/4
    #   conf 0.70 (class 1, label 1: right) -> bin [0.667, 0.733): gap |1 - 0.7| = 0.3, 1/4
    #   conf 0.62 (class 0, label 0: right) -> bin [0.6, 0.667): gap |1 - 0.62| = 0.38, 1/4
    # ECE = 0.5 * 0.4 + 0.25 * 0.3 + 0.25 * 0.38 = 0.2 + 0.075 + 0.095 = 0.37
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.62, 0.38]])
    targets = torch.tensor([0, 1, 1, 0])
    assert expected_calibration_error(probs, targets, n_bins=15) == pytest.approx(0.37, abs=1e-6)
    bins = reliability_bins(probs, targets, n_bins=15)
    assert len(bins.edges) == 16 and sum(bins.counts) == 4
    assert (bins.counts[13], bins.counts[10], bins.counts[9]) == (2, 1, 1)
    assert bins.accuracy[13] == pytest.approx(0.5) and bins.confidence[13] == pytest.approx(0.9)
    assert bins.ece() == pytest.approx(0.37, abs=1e-6)
    # Calibrated: four samples at confidence 0.75 for class 0, of which 3 are class 0.
    calibrated = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(calibrated, torch.tensor([0, 0, 0, 1])) == pytest.approx(
        0.0, abs=1e-6
    )


def test_nll_against_a_hand_count() -> None:
    # p(true) = 1/2 for the first sample (equal logits) and 3/4 for the second (log 3 vs 0):
    # NLL = -(log(1/2) + log(3/4)) / 2 = log(8/3) / 2.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert negative_log_likelihood(logits, torch.tensor([0, 0])) == pytest.approx(
        math.log(8 / 3) / 2
    )


def test_network_label_from_the_run_layout() -> None:
    assert network_label("runs/quickstart/seed0/student_kd/version_0/final.ckpt") == "student_kd"
    assert network_label("runs/x/kd/version_3/checkpoints/last.ckpt") == "kd"
    assert network_label("exports/student.pt") == "student"


# ----------------------------------------------------------------------------- command
def test_report_of_a_teacher_a_kd_student_and_an_identical_student(
    tiny_runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The identical student: the teacher's network as a weights file, given with its config.
    same = tmp_path / "same.pt"
    main(
        [
            "export",
            "--ckpt",
            str(tiny_runs["teacher"]),
            "--format",
            "state_dict",
            "--out",
            str(same),
        ]
    )
    same.with_suffix(".network.yaml").unlink()  # the config is given on the command line
    out = tmp_path / "report"
    args = ["report", "--teacher", str(tiny_runs["teacher"]), "--student", str(tiny_runs["kd"])]
    args += [
        "--student",
        str(same),
        "{class_path: lightning_kd.models.SmallCNN, init_args: {width: 8}}",
    ]
    args += ["--out", str(out), "--warmup", "1", "--repeats", "3"]
    args += ["--batch-size", "8", "--batch-repeats", "2"]
    capsys.readouterr()
    main(args)
    printed = capsys.readouterr().out
    assert "# Compression report" in printed and f"wrote {out / 'report.json'}" in printed

    report = json.loads((out / "report.json").read_text())
    teacher, kd, identical = report["networks"]
    assert [n["name"] for n in report["networks"]] == ["teacher", "kd", "same"]
    assert report["data"]["split"] == "test" and report["data"]["images"] == 100
    assert report["data"]["datamodule"] == "CIFAR10DataModule"
    assert report["data"]["source"].endswith("config.yaml")  # the teacher run's, by default
    assert len(report["machine"]["load_average_before"]) == 3
    assert report["machine"]["torch_threads"] == torch.get_num_threads()

    assert teacher["parameters"] == SMALL_CNN_PARAMETERS[8]
    assert kd["parameters"] == SMALL_CNN_PARAMETERS[4]  # the student, not the KD teacher
    assert kd["origin"] == "student of KDModule" and kd["network"] == "SmallCNN(width=4)"
    assert teacher["macs"] == SMALL_CNN_8_MACS
    ratios = kd["relative_to_teacher"]["ratios"]
    assert ratios["parameters"] == pytest.approx(4110 / 15698)
    assert ratios["macs"] < 1 and ratios["state_dict_bytes"] < 1

    assert identical["agreement"] == 1.0 and teacher["agreement"] == 1.0
    assert identical["top1"] == teacher["top1"] and identical["nll"] == pytest.approx(
        teacher["nll"]
    )
    assert identical["relative_to_teacher"]["ratios"]["parameters"] == 1.0
    assert identical["relative_to_teacher"]["differences"]["top1_points"] == 0.0
    for network in report["networks"]:
        assert 0 <= network["top1"] <= network["top5"] <= 1 and 0 <= network["ece"] <= 1
        assert network["latency"]["batch_size"] == 1 and network["latency"]["median_s"] > 0
        assert network["throughput"]["batch_size"] == 8
        assert sum(network["reliability"]["counts"]) == 100
        runtime = network["onnxruntime"]
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            assert runtime is None
        else:
            assert runtime["latency"]["median_s"] > 0 and runtime["check"]["max_abs_diff"] < 1e-3

    markdown = (out / "report.md").read_text()
    assert "| **kd** |" in markdown and "0.262x" in markdown  # 4110 / 15698 = 0.2618
    assert "test split" in markdown and "Load average" in markdown
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "figures skipped" in markdown
    else:
        for name in ("accuracy_vs_latency.png", "reliability.png"):
            assert (out / name).stat().st_size > 1000 and f"]({name})" in markdown

    # Without matplotlib: no figures, and one line that says how to get them.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    written = write_report(report, tmp_path / "no_figures")
    assert [p.name for p in written] == ["report.json", "report.md"]
    message = "figures skipped: matplotlib is not installed (pip install matplotlib"
    assert message in capsys.readouterr().out
    assert message in (tmp_path / "no_figures" / "report.md").read_text()


def _error_line(capsys: pytest.CaptureFixture[str], args: list[str], code: int = 1) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_report_errors_are_one_line(
    tiny_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "r")]
    teacher = str(tiny_runs["teacher"])
    line = _error_line(capsys, ["report", "--teacher", "nope.ckpt", "--student", teacher, *out])
    assert line.startswith("lightning-kd report: error: 'nope.ckpt' does not exist")

    weights = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 2).state_dict(), weights)
    line = _error_line(capsys, ["report", "--teacher", teacher, "--student", str(weights), *out])
    assert line.startswith("lightning-kd report: error: ") and "no network config" in line

    args = ["report", "--teacher", teacher, "--student", teacher, "a.yaml", "b.yaml", *out]
    line = _error_line(capsys, args)
    assert "--student takes a file and optionally its network config, got 3 values" in line

    line = _error_line(
        capsys, ["report", "--teacher", teacher, "--student", teacher, "--names", "a", *out]
    )
    assert "--names gives 1 names for 2 networks" in line

    line = _error_line(capsys, ["report", "--teacher", teacher, "--student", teacher], code=2)
    assert line.startswith("lightning-kd report: error: the following arguments are required")


def test_datamodule_from_the_checkpoint_or_from_data(
    tiny_runs: dict[str, Path], tmp_path: Path, cifar10_dir: Path
) -> None:
    quick = ["--no-onnxruntime", "--no-figures", "--warmup", "0", "--repeats", "1"]
    quick += ["--batch-size", "2", "--batch-repeats", "1"]
    # Without a config.yaml beside it, the datamodule recorded in the checkpoint is used.
    alone = tmp_path / "alone.ckpt"
    shutil.copyfile(tiny_runs["teacher"], alone)
    main(
        [
            "report",
            "--teacher",
            str(alone),
            "--student",
            str(alone),
            "--out",
            str(tmp_path / "a"),
            *quick,
        ]
    )
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["data"]["source"] == f"the checkpoint {alone}"
    assert [n["name"] for n in report["networks"]] == ["alone", "alone_2"]
    # --data: a class_path / init_args file; --eval-batch-size replaces its batch size.
    data = tmp_path / "data.yaml"
    data.write_text(
        f"class_path: lightning_kd.data.CIFAR10DataModule\ninit_args: {{data_dir: {cifar10_dir}}}\n"
    )
    args = [
        "report",
        "--teacher",
        str(alone),
        "--student",
        str(tiny_runs["kd"]),
        "--data",
        str(data),
    ]
    main([*args, "--eval-batch-size", "30", "--out", str(tmp_path / "b"), *quick])
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["data"]["source"] == str(data) and report["data"]["images"] == 100


def test_exported_network_is_what_each_module_exports() -> None:
    from lightning_kd.models import SmallCNN
    from lightning_kd.modules import ClassifierModule, KDModule, MeanTeacherModule
    from lightning_kd.report.loading import exported_network

    classifier = ClassifierModule(SmallCNN(width=4))
    assert exported_network(classifier) == (classifier.model, "model.")
    kd = KDModule(SmallCNN(width=4), SmallCNN(width=8))
    assert exported_network(kd) == (kd.student, "student.")
    mean_teacher = MeanTeacherModule(SmallCNN(width=4))  # exports its EMA teacher by default
    assert exported_network(mean_teacher) == (mean_teacher.teacher, "teacher.")
    student = MeanTeacherModule(SmallCNN(width=4), export_network="student")
    assert exported_network(student) == (student.student, "student.")


@pytest.mark.parametrize("command", ["report", "export"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: lightning-kd {command}" in capsys.readouterr().out
