"""`make quickstart` end to end on tiny generated data: three CLI runs, then the table."""

from pathlib import Path

import pytest

from lightning_kd.quickstart import main

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_tiny(
    cifar10_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # the configs write checkpoints/ relative to the working dir
    results = main(
        [
            "--data-dir",
            str(cifar10_dir),
            "--config-dir",
            str(ROOT / "configs" / "quickstart"),
            "--out-dir",
            str(tmp_path / "runs"),
            "--json",
            str(tmp_path / "results.json"),
            "--",
            "--data.init_args.train_subset",
            "null",
            "--data.init_args.batch_size",
            "16",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert [r.run for r in results] == ["teacher", "student_vanilla", "student_kd"]
    teacher, vanilla, kd = results
    assert teacher.parameters > vanilla.parameters == kd.parameters
    for r in results:
        assert 0.0 <= r.test_acc <= 1.0
        assert Path(r.checkpoint).is_file()
    out = capsys.readouterr().out
    assert "| student_kd | 0 | SmallCNN |" in out
    assert f"tensorboard --logdir {tmp_path / 'runs'}" in out
    assert (tmp_path / "results.json").is_file()
    # Each run logged to its own TensorBoard folder.
    for name in ("teacher", "student_vanilla", "student_kd"):
        assert list((tmp_path / "runs" / "seed0" / name).rglob("events.out.tfevents.*")), name
