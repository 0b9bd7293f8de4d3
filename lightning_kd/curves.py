"""Training curves from TensorBoard logs: read the scalars of runs into a table, plot them.

A run is a folder of TensorBoard event files, e.g. a Lightning ``TensorBoardLogger`` version
folder ``runs/<name>/version_0``. A resumed run may hold several event files there; they are
read in file-name (i.e. creation) order as one stream::

    from lightning_kd.curves import plot_scalars, read_scalars

    table = read_scalars({"vanilla": "runs/vanilla/version_0", "kd": "runs/kd/version_0"})
    table["kd", "val/acc"].values  # float64 (N,)
    table.last("val/acc")  # {"vanilla": 0.67, "kd": 0.72}
    fig = plot_scalars(table, ["val/acc", ("train/loss_ce_epoch", "train/loss_kd_epoch")])

Nothing here needs pandas; :meth:`ScalarTable.to_pandas` uses it when it is installed.
:func:`plot_scalars` needs matplotlib (``pip install 'lightning-kd[notebooks]'``), imported
only when it is called.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ScalarRow", "ScalarSeries", "ScalarTable", "plot_scalars", "read_scalars"]

#: Run folders: ``{label: folder}``, or folders alone (each labelled by the path as given).
RunDirs = Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]]

#: A tag, a shell-style pattern of tags (``"train/loss_*_epoch"``), or a group of them that
#: share one subplot in :func:`plot_scalars`.
TagSpec = str | Sequence[str]

_PATTERN_CHARS = frozenset("*?[")
_LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class ScalarRow:
    """One logged value: the long-format row of :meth:`ScalarTable.rows`."""

    run: str
    tag: str
    step: int
    value: float
    wall_time: float


@dataclass(frozen=True, eq=False)
class ScalarSeries:
    """The values of one tag in one run, sorted by step, one value per step.

    Attributes:
        steps: int64 ``(N,)``, strictly increasing.
        values: float64 ``(N,)``.
        wall_times: float64 ``(N,)``, seconds since the epoch when each value was written.
    """

    steps: np.ndarray
    values: np.ndarray
    wall_times: np.ndarray

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def last(self) -> float:
        """The value at the largest step."""
        if len(self) == 0:
            raise ValueError("the series is empty")
        return float(self.values[-1])


class ScalarTable(Mapping[tuple[str, str], ScalarSeries]):
    """Scalar series of one or more runs, keyed by ``(run, tag)``.

    A read-only mapping: ``table["kd", "val/acc"]`` is a :class:`ScalarSeries`; iteration
    yields the ``(run, tag)`` keys, runs in the order they were given, tags sorted.

    Args:
        series: ``{run: {tag: series}}``.
    """

    def __init__(self, series: Mapping[str, Mapping[str, ScalarSeries]]) -> None:
        self._series = {run: dict(sorted(tags.items())) for run, tags in series.items()}

    @property
    def runs(self) -> list[str]:
        """Run labels, in the order they were given."""
        return list(self._series)

    def tags(self, run: str | None = None) -> list[str]:
        """Sorted tags of ``run``, or of all runs together when ``run`` is None."""
        if run is not None:
            return list(self._run(run))
        return sorted({tag for tags in self._series.values() for tag in tags})

    def _run(self, run: str) -> dict[str, ScalarSeries]:
        if run not in self._series:
            raise KeyError(f"no run {run!r} in this table; runs: {self.runs}")
        return self._series[run]

    def __getitem__(self, key: tuple[str, str]) -> ScalarSeries:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise KeyError(f"index a ScalarTable with (run, tag), got {key!r}")
        run, tag = key
        tags = self._run(run)
        if tag not in tags:
            raise KeyError(_missing_tag_message(tag, run, list(tags)))
        return tags[tag]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((run, tag) for run, tags in self._series.items() for tag in tags)

    def __len__(self) -> int:
        return sum(len(tags) for tags in self._series.values())

    def __repr__(self) -> str:
        return f"ScalarTable(runs={self.runs}, tags={self.tags()})"

    def last(self, tag: str) -> dict[str, float]:
        """``{run: value at the last step}`` of ``tag``, for the runs that logged it."""
        found = {run: tags[tag].last() for run, tags in self._series.items() if tag in tags}
        if not found:
            raise KeyError(_missing_tag_message(tag, "any run", self.tags()))
        return found

    def rows(self) -> list[ScalarRow]:
        """Every value as a :class:`ScalarRow`, by run, then tag, then step."""
        return [
            ScalarRow(run, tag, int(step), float(value), float(wall_time))
            for (run, tag), series in self.items()
            for step, value, wall_time in zip(
                series.steps, series.values, series.wall_times, strict=True
            )
        ]

    def to_pandas(self) -> Any:
        """A long-format ``pandas.DataFrame`` with columns run, tag, step, value, wall_time.

        Raises:
            ImportError: If pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError(
                "ScalarTable.to_pandas needs pandas (pip install pandas); rows() gives the same "
                "data without it"
            ) from e
        columns = ["run", "tag", "step", "value", "wall_time"]
        return pd.DataFrame([tuple(vars(row).values()) for row in self.rows()], columns=columns)


def read_scalars(
    run_dirs: RunDirs, tags: Sequence[str] | None = None, *, strict: bool = True
) -> ScalarTable:
    """Read the scalars of TensorBoard runs.

    Each run folder is read with TensorBoard's ``EventAccumulator``, keeping every value (no
    reservoir sampling). All event files directly in the folder are read, in file-name order,
    which is creation order; a single event file may be given instead of a folder. Scalars
    written as tensors (``add_scalar(..., new_style=True)``) are read too. When a step was
    logged more than once (a resumed run re-logging the steps after its checkpoint), the value
    written last is kept.

    Args:
        run_dirs: ``{label: folder}``, or a sequence of folders labelled by their paths as
            given, e.g. ``{"kd": "runs/student_kd/version_0"}``.
        tags: Tags to read, or shell-style patterns of tags (``"train/loss_*"``); None reads
            every scalar tag.
        strict: If True, every tag and pattern in ``tags`` must be in every run. If False, a
            run may lack some of them, but each must be in at least one run.

    Returns:
        The table of series, keyed by ``(label, tag)``.

    Raises:
        FileNotFoundError: If a folder does not exist or holds no event files (the message
            names sub-folders that do, such as ``version_0``).
        ValueError: If no run is given, or two runs share a label.
        KeyError: If a requested tag is missing (the message lists the tags that exist).
    """
    runs = _labelled_paths(run_dirs)
    found: dict[str, dict[str, ScalarSeries]] = {}
    for label, path in runs.items():
        found[label] = _read_run(path)
    if tags is None:
        return ScalarTable(found)

    selected: dict[str, dict[str, ScalarSeries]] = {label: {} for label in found}
    for wanted in tags:
        hits = 0
        for label, series in found.items():
            matched = _match(wanted, list(series))
            if not matched and strict:
                raise KeyError(_missing_tag_message(wanted, f"run {label!r}", list(series)))
            for tag in matched:
                selected[label][tag] = series[tag]
            hits += len(matched)
        if hits == 0:
            every = sorted({tag for series in found.values() for tag in series})
            raise KeyError(_missing_tag_message(wanted, "any run", every))
    return ScalarTable(selected)


def plot_scalars(
    data: ScalarTable | RunDirs,
    tags: Sequence[TagSpec],
    *,
    axes: Sequence[Axes] | None = None,
    ncols: int | None = None,
    subplot_size: tuple[float, float] = (4.5, 3.2),
    marker: str | None = "auto",
) -> Figure:
    """Plot scalar series side by side: one subplot per tag, one line per run.

    Each entry of ``tags`` is a tag, a pattern (one subplot per tag it matches), or a tuple of
    tags/patterns drawn together on one subplot (e.g. ``("val/acc", "val/teacher_acc")``).
    With several runs, each run has one colour on every subplot and its lines are labelled by
    run (``"run: tag"``, with one line style per tag, on a subplot of several tags); with one
    run, lines are labelled by tag. Runs that did not log a tag have no line for it.

    Args:
        data: A :class:`ScalarTable`, or run folders as for :func:`read_scalars` (read here,
            with ``strict=False``).
        tags: What to plot, see above.
        axes: Axes to draw on, one per subplot (after patterns are expanded); a new figure
            is made when None.
        ncols: Subplots per row of a new figure; all in one row when None.
        subplot_size: ``(width, height)`` in inches of each subplot of a new figure.
        marker: Matplotlib marker of every line; ``"auto"`` marks the points of series with
            at most 30 points (e.g. per-epoch values) and none of longer ones.

    Returns:
        The figure (made with ``pyplot.subplots``, so notebooks show it; close it with
        ``plt.close(fig)`` in scripts).

    Raises:
        ImportError: If matplotlib is not installed.
        KeyError: If a tag or pattern matches no series.
        ValueError: If ``tags`` is empty or ``axes`` has the wrong length.
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError(
            "plot_scalars needs matplotlib: pip install 'lightning-kd[notebooks]' "
            "(or pip install matplotlib)"
        ) from e

    if isinstance(tags, str):
        tags = [tags]
    if not tags:
        raise ValueError("tags is empty: name at least one tag to plot")
    if not isinstance(data, ScalarTable):
        patterns = [t for spec in tags for t in ([spec] if isinstance(spec, str) else spec)]
        data = read_scalars(data, patterns, strict=False)
    panels = _panels(data, tags)

    if axes is None:
        cols = len(panels) if ncols is None else max(1, min(ncols, len(panels)))
        nrows = -(-len(panels) // cols)
        width, height = subplot_size
        _, grid = plt.subplots(
            nrows, cols, figsize=(width * cols, height * nrows), squeeze=False, layout="tight"
        )
        flat = list(grid.flat)
        for extra in flat[len(panels) :]:
            extra.set_visible(False)
        axes = flat[: len(panels)]
    elif len(axes) != len(panels):
        raise ValueError(
            f"got {len(axes)} axes for {len(panels)} subplots ({[', '.join(p) for p in panels]})"
        )
    figure = cast("Figure", axes[0].figure)

    run_index = {run: i for i, run in enumerate(data.runs)}
    several_runs = len(data.runs) > 1
    for ax, panel in zip(axes, panels, strict=True):
        lines = [(run, tag) for tag in panel for run in data.runs if (run, tag) in data]
        for run, tag in lines:
            series = data[run, tag]
            k = panel.index(tag)
            if several_runs:
                # A run keeps its colour on every subplot; tags sharing a subplot differ in style.
                label = f"{run}: {tag}" if len(panel) > 1 else run
                color, style = f"C{run_index[run] % 10}", _LINE_STYLES[k % len(_LINE_STYLES)]
            else:
                label = tag if len(panel) > 1 else run
                color, style = f"C{k % 10}", "-"
            point_marker = ("o" if len(series) <= 30 else None) if marker == "auto" else marker
            ax.plot(
                series.steps,
                series.values,
                color=color,
                linestyle=style,
                marker=point_marker,
                markersize=3,
                label=label,
            )
        ax.set_title(", ".join(panel))
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(panel[0] if len(panel) == 1 else "value")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


# ---------------------------------------------------------------------------- helpers
def _labelled_paths(run_dirs: RunDirs) -> dict[str, Path]:
    if isinstance(run_dirs, str | os.PathLike):
        run_dirs = [run_dirs]
    if isinstance(run_dirs, Mapping):
        runs = {str(label): Path(path) for label, path in run_dirs.items()}
    else:
        runs = {}
        for path in run_dirs:
            label = os.fspath(path)
            if label in runs:
                raise ValueError(f"run folder {label!r} is given twice")
            runs[label] = Path(path)
    if not runs:
        raise ValueError("no run folder given")
    return runs


def _event_files(path: Path) -> list[Path]:
    from tensorboard.backend.event_processing.io_wrapper import IsSummaryEventsFile

    return sorted(p for p in path.iterdir() if p.is_file() and IsSummaryEventsFile(str(p)))


def _check_run_path(path: Path) -> None:
    """Raise a helpful ``FileNotFoundError`` unless ``path`` is an event file or a folder with
    event files directly in it."""
    if not path.exists():
        raise FileNotFoundError(f"run folder {str(path)!r} does not exist")
    if path.is_file() or _event_files(path):
        return
    nested = sorted({str(p.parent.relative_to(path)) for p in path.rglob("events.out.tfevents.*")})
    hint = (
        f"; event files are in its sub-folders {nested[:5]}, pass one of those (e.g. "
        f"{str(path / nested[0])!r})"
        if nested
        else ""
    )
    raise FileNotFoundError(f"no TensorBoard event files in {str(path)!r}{hint}")


def _read_run(path: Path) -> dict[str, ScalarSeries]:
    """All scalar series of one run folder (or event file)."""
    _check_run_path(path)
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    guidance = {ea.SCALARS: 0, ea.TENSORS: 0, ea.IMAGES: 1, ea.AUDIO: 1, ea.HISTOGRAMS: 1}
    guidance[ea.COMPRESSED_HISTOGRAMS] = 1
    acc = ea.EventAccumulator(str(path), size_guidance=guidance, purge_orphaned_data=False)
    acc.Reload()
    available = acc.Tags()
    result: dict[str, ScalarSeries] = {}
    for tag in available.get(ea.SCALARS, []):
        events = acc.Scalars(tag)
        result[tag] = _series(
            [e.step for e in events], [e.value for e in events], [e.wall_time for e in events]
        )
    for tag in available.get(ea.TENSORS, []):
        if tag in result or acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        events = acc.Tensors(tag)
        values = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events]
        result[tag] = _series([e.step for e in events], values, [e.wall_time for e in events])
    return result


def _series(steps: list[int], values: list[float], wall_times: list[float]) -> ScalarSeries:
    """Sort by step; of repeated steps keep the value written last (the latest in read order)."""
    step_arr = np.asarray(steps, dtype=np.int64)
    # np.unique on the reversed array returns each step's first index there, i.e. its last
    # occurrence in write order; the unique steps come out sorted.
    unique, first_in_reversed = np.unique(step_arr[::-1], return_index=True)
    keep = len(step_arr) - 1 - first_in_reversed
    return ScalarSeries(
        steps=unique,
        values=np.asarray(values, dtype=np.float64)[keep],
        wall_times=np.asarray(wall_times, dtype=np.float64)[keep],
    )


def _is_pattern(tag: str) -> bool:
    return any(c in _PATTERN_CHARS for c in tag)


def _match(wanted: str, tags: Sequence[str]) -> list[str]:
    """The tags equal to ``wanted``, or matching it when it is a pattern (sorted)."""
    if wanted in tags:
        return [wanted]
    if _is_pattern(wanted):
        return sorted(fnmatch.filter(tags, wanted))
    return []


def _panels(table: ScalarTable, tags: Sequence[TagSpec]) -> list[list[str]]:
    """Expand patterns into one list of tags per subplot; every entry must match something."""
    every = table.tags()
    panels: list[list[str]] = []
    for spec in tags:
        if isinstance(spec, str):
            matched = _match(spec, every)
            if not matched:
                raise KeyError(_missing_tag_message(spec, "any run", every))
            panels += [[tag] for tag in matched]
            continue
        group: list[str] = []
        for wanted in spec:
            matched = _match(wanted, every)
            if not matched:
                raise KeyError(_missing_tag_message(wanted, "any run", every))
            group += [tag for tag in matched if tag not in group]
        if not group:
            raise ValueError(f"empty tag group {spec!r}")
        panels.append(group)
    return panels


def _missing_tag_message(tag: str, where: str, available: list[str]) -> str:
    kind = "pattern" if _is_pattern(tag) else "tag"
    close = difflib.get_close_matches(tag, available, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return f"{kind} {tag!r} is not in {where}{hint}; tags there: {available}"
