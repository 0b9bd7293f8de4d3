"""lightning_kd.curves: scalars read back exactly from real event files, and plotted."""

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from numpy.testing import assert_array_equal
from tiny import TinyData, TinyNet, trainer
from torch.utils.tensorboard import SummaryWriter

from lightning_kd.curves import ScalarRow, ScalarSeries, ScalarTable, plot_scalars, read_scalars
from lightning_kd.modules import ClassifierModule

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_run(folder: Path, scalars: dict[str, list[tuple[int, float]]], **kwargs: bool) -> Path:
    """One event file in ``folder`` holding ``scalars``: ``{tag: [(step, value), ...]}``."""
    writer = SummaryWriter(log_dir=str(folder))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step, **kwargs)
    writer.close()
    return folder


def f32(values: list[float]) -> np.ndarray:
    """What an event file stores: float32, read back as float64."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


ACC = [(0, 0.1), (10, 0.35), (20, 0.6125), (30, 0.7)]
LOSS = [(0, 2.3), (5, 1.9), (10, 1.25)]


@pytest.fixture
def two_runs(tmp_path: Path) -> dict[str, Path]:
    vanilla = write_run(tmp_path / "vanilla" / "version_0", {"val/acc": ACC, "train/loss": LOSS})
    kd = write_run(
        tmp_path / "kd" / "version_0",
        {"val/acc": [(0, 0.2), (10, 0.5)], "train/loss": LOSS, "train/loss_kd": [(0, 4.0)]},
    )
    return {"vanilla": vanilla, "kd": kd}


def test_read_back_exactly(two_runs: dict[str, Path]) -> None:
    table = read_scalars(two_runs)
    assert table.runs == ["vanilla", "kd"]
    assert table.tags("vanilla") == ["train/loss", "val/acc"]
    assert table.tags() == ["train/loss", "train/loss_kd", "val/acc"]
    acc = table["vanilla", "val/acc"]
    assert acc.steps.dtype == np.int64
    assert_array_equal(acc.steps, [s for s, _ in ACC])
    assert_array_equal(acc.values, f32([v for _, v in ACC]))
    assert np.all(np.diff(acc.wall_times) >= 0)
    assert_array_equal(table["kd", "val/acc"].values, f32([0.2, 0.5]))
    assert_array_equal(table["kd", "train/loss_kd"].steps, [0])
    assert len(table) == 5
    assert ("kd", "train/loss_kd") in table
    assert ("vanilla", "train/loss_kd") not in table


def test_sequence_of_paths_is_labelled_by_path(two_runs: dict[str, Path]) -> None:
    paths = [two_runs["kd"], str(two_runs["vanilla"])]
    table = read_scalars(paths)
    assert table.runs == [str(two_runs["kd"]), str(two_runs["vanilla"])]
    single = read_scalars(two_runs["kd"])
    assert single.runs == [str(two_runs["kd"])]


def test_tags_filter_and_patterns(two_runs: dict[str, Path]) -> None:
    table = read_scalars(two_runs, ["val/acc"])
    assert list(table) == [("vanilla", "val/acc"), ("kd", "val/acc")]
    table = read_scalars({"kd": two_runs["kd"]}, ["train/loss*"])
    assert table.tags() == ["train/loss", "train/loss_kd"]


def test_several_event_files_in_one_folder_after_resume(tmp_path: Path) -> None:
    """Two logger sessions in one version folder (a resumed run): one stream, and the steps the
    second session logged again keep its values."""
    first = TensorBoardLogger(tmp_path, name="run", version=0)
    for step in range(5):
        first.log_metrics({"loss": 10.0 + step}, step=step)
    first.finalize("success")
    second = TensorBoardLogger(tmp_path, name="run", version=0)
    for step in range(3, 7):
        second.log_metrics({"loss": 20.0 + step}, step=step)
    second.finalize("success")
    folder = tmp_path / "run" / "version_0"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2

    series = read_scalars([folder])[str(folder), "loss"]
    assert_array_equal(series.steps, np.arange(7))
    assert_array_equal(series.values, [10, 11, 12, 23, 24, 25, 26])


def test_new_style_tensor_scalars(tmp_path: Path) -> None:
    write_run(tmp_path, {"lr": [(0, 0.1), (1, 0.05)]}, new_style=True)
    series = read_scalars([tmp_path])[str(tmp_path), "lr"]
    assert_array_equal(series.steps, [0, 1])
    assert_array_equal(series.values, f32([0.1, 0.05]))


def test_more_points_than_tensorboards_default_reservoir(tmp_path: Path) -> None:
    """TensorBoard keeps 10,000 scalars per tag by default; every point must come back."""
    n = 10_050
    write_run(tmp_path, {"x": [(i, float(i)) for i in range(n)]})
    series = read_scalars([tmp_path])[str(tmp_path), "x"]
    assert_array_equal(series.steps, np.arange(n))
    assert_array_equal(series.values, np.arange(n))


def test_lightning_run_read_back(tmp_path: Path) -> None:
    """The real case: a Lightning TensorBoardLogger version folder after fit."""
    logger = TensorBoardLogger(tmp_path, name="clf")
    fit = trainer(max_epochs=2, logger=logger, log_every_n_steps=1)
    fit.fit(ClassifierModule(TinyNet()), TinyData(n=32, batch_size=8))
    table = read_scalars({"clf": logger.log_dir})
    acc = table["clf", "val/acc"]
    assert_array_equal(acc.steps, [3, 7])  # end of each 4-batch epoch
    assert acc.last() == pytest.approx(float(fit.callback_metrics["val/acc"]), abs=0)
    assert len(table["clf", "train/loss_step"]) == 8
    assert table.last("val/acc") == {"clf": acc.last()}


def test_rows_are_the_long_table(two_runs: dict[str, Path]) -> None:
    table = read_scalars({"kd": two_runs["kd"]}, ["val/acc"])
    rows = table.rows()
    assert [(r.run, r.tag, r.step) for r in rows] == [("kd", "val/acc", 0), ("kd", "val/acc", 10)]
    assert isinstance(rows[0], ScalarRow)
    assert rows[1].value == float(np.float32(0.5))
    assert rows[0].wall_time == table["kd", "val/acc"].wall_times[0]


def test_to_pandas(two_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    table = read_scalars(two_runs, ["val/acc"])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="rows"):
        table.to_pandas()
    monkeypatch.undo()
    pytest.importorskip("pandas")
    frame = table.to_pandas()
    assert list(frame.columns) == ["run", "tag", "step", "value", "wall_time"]
    assert len(frame) == 6


def test_last(two_runs: dict[str, Path]) -> None:
    table = read_scalars(two_runs)
    assert table.last("val/acc") == {"vanilla": float(np.float32(0.7)), "kd": 0.5}
    assert table.last("train/loss_kd") == {"kd": 4.0}
    with pytest.raises(KeyError, match="val/accuracy"):
        table.last("val/accuracy")


# ---------------------------------------------------------------------------- errors
def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_scalars([tmp_path / "nope"])


def test_folder_without_event_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an event file")
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars([tmp_path])


def test_parent_of_version_folder_names_it(two_runs: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="version_0"):
        read_scalars([two_runs["kd"].parent])


def test_missing_tag_names_the_tags_there(two_runs: dict[str, Path]) -> None:
    with pytest.raises(KeyError, match=r"'val/acc_top5' is not in run 'vanilla'.*val/acc"):
        read_scalars(two_runs, ["val/acc_top5"])
    # In one run only: an error when strict, kept for that run when not.
    with pytest.raises(KeyError, match=r"'train/loss_kd' is not in run 'vanilla'"):
        read_scalars(two_runs, ["train/loss_kd"])
    table = read_scalars(two_runs, ["train/loss_kd"], strict=False)
    assert list(table) == [("kd", "train/loss_kd")]
    with pytest.raises(KeyError, match="pattern 'val/x\\*' is not in any run"):
        read_scalars(two_runs, ["val/x*"], strict=False)


def test_bad_run_arguments(two_runs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="no run folder"):
        read_scalars([])
    with pytest.raises(ValueError, match="given twice"):
        read_scalars([two_runs["kd"], two_runs["kd"]])


def test_table_lookup_errors(two_runs: dict[str, Path]) -> None:
    table = read_scalars(two_runs)
    with pytest.raises(KeyError, match=r"no run 'teacher'.*\['vanilla', 'kd'\]"):
        table["teacher", "val/acc"]
    with pytest.raises(KeyError, match="did you mean 'val/acc'"):
        table["kd", "val/ac"]
    with pytest.raises(KeyError, match=r"\(run, tag\)"):
        table["kd"]  # type: ignore[index]


# ---------------------------------------------------------------------------- plots
def _lines(ax: plt.Axes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        str(line.get_label()): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
        for line in ax.get_lines()
    }


def test_plot_one_subplot_per_tag_one_line_per_run(two_runs: dict[str, Path]) -> None:
    table = read_scalars(two_runs)
    fig = plot_scalars(table, ["val/acc", "train/loss_kd"])
    try:
        assert [ax.get_title() for ax in fig.axes] == ["val/acc", "train/loss_kd"]
        acc_ax, kd_ax = fig.axes
        assert acc_ax.get_xlabel() == "step"
        assert acc_ax.get_ylabel() == "val/acc"
        lines = _lines(acc_ax)
        assert list(lines) == ["vanilla", "kd"]
        for run in ("vanilla", "kd"):
            assert_array_equal(lines[run][0], table[run, "val/acc"].steps)
            assert_array_equal(lines[run][1], table[run, "val/acc"].values)
        assert list(_lines(kd_ax)) == ["kd"]  # vanilla did not log it
        # A run keeps its colour on every subplot.
        kd_colors = {line.get_color() for ax in fig.axes for line in ax.get_lines()
                     if line.get_label() == "kd"}  # fmt: skip
        assert len(kd_colors) == 1
    finally:
        plt.close(fig)


def test_plot_groups_and_patterns(two_runs: dict[str, Path]) -> None:
    table = read_scalars(two_runs)
    fig = plot_scalars(table, [("val/acc", "train/loss"), "train/loss*"], ncols=2)
    try:
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in visible] == [
            "val/acc, train/loss",
            "train/loss",
            "train/loss_kd",
        ]
        assert len(fig.axes) == 4  # a 2 x 2 grid, the unused subplot hidden
        group = _lines(visible[0])
        assert list(group) == [
            "vanilla: val/acc",
            "kd: val/acc",
            "vanilla: train/loss",
            "kd: train/loss",
        ]
        assert_array_equal(group["kd: train/loss"][1], table["kd", "train/loss"].values)
    finally:
        plt.close(fig)

    one_run = read_scalars({"kd": two_runs["kd"]})
    fig = plot_scalars(one_run, [("val/acc", "train/loss")])
    try:
        assert list(_lines(fig.axes[0])) == ["val/acc", "train/loss"]
    finally:
        plt.close(fig)


def test_plot_from_run_folders_onto_given_axes(two_runs: dict[str, Path]) -> None:
    fig, axes = plt.subplots(1, 2)
    try:
        out = plot_scalars(two_runs, ["val/acc", "train/loss_kd"], axes=list(axes))
        assert out is fig
        assert_array_equal(_lines(axes[1])["kd"][1], [4.0])
        with pytest.raises(ValueError, match="got 1 axes for 2 subplots"):
            plot_scalars(two_runs, ["val/acc", "train/loss_kd"], axes=[axes[0]])
    finally:
        plt.close(fig)


def test_plot_errors(two_runs: dict[str, Path]) -> None:
    table = read_scalars(two_runs)
    with pytest.raises(ValueError, match="tags is empty"):
        plot_scalars(table, [])
    with pytest.raises(KeyError, match="'val/acc5' is not in any run"):
        plot_scalars(table, ["val/acc5"])
    assert plt.get_fignums() == []


def test_table_from_mapping() -> None:
    steps = np.array([0, 1])
    values = np.array([1.0, 2.0])

    table = ScalarTable({"a": {"x": ScalarSeries(steps, values, np.zeros(2))}})
    fig = plot_scalars(table, "x")
    try:
        assert_array_equal(_lines(fig.axes[0])["a"][1], values)
    finally:
        plt.close(fig)
