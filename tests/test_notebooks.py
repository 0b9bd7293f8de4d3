"""Every notebook in notebooks/ runs top to bottom at small scale, and is committed stripped.

The contract a notebook keeps (see notebooks/README.md): its first code cell reads the
small-scale switch ``LKD_NOTEBOOK_SMALL``; it logs under ``LKD_RUNS_DIR`` and saves its main
figure as ``$LKD_FIGURE_DIR/<notebook name>.png``. Each is executed in its own kernel, in a
temporary working directory, with a time limit.
"""

import asyncio
import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Seconds one notebook may take at small scale, kernel start included (they take 15-40 s on
#: a shared 2-core CPU).
NOTEBOOK_TIMEOUT = 240


def test_there_are_notebooks() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert {"01_classical_kd.ipynb", "02_mean_teacher.ipynb", "04_custom_method.ipynb"} <= set(
        names
    ), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    first_code = next(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "LKD_NOTEBOOK_SMALL" in first_code, f"{path.name}: first code cell has no switch"


def _python_kernel(root: Path) -> Path:
    """A kernel spec named python3 that runs this interpreter (so the kernel sees this venv,
    whatever other kernels the machine has); returns the folder to put on JUPYTER_PATH."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
        "--log-level=ERROR",
    ]
    kernel = {"argv": argv, "display_name": "Python 3 (test)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_at_small_scale(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work, runs, figures = tmp_path / "work", tmp_path / "runs", tmp_path / "figures"
    work.mkdir()
    # The kernel process inherits this environment.
    monkeypatch.setenv("LKD_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("LKD_RUNS_DIR", str(runs))
    monkeypatch.setenv("LKD_FIGURE_DIR", str(figures))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PATH", str(_python_kernel(tmp_path / "jupyter")))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=NOTEBOOK_TIMEOUT,
        startup_timeout=60,
        resources={"metadata": {"path": str(work)}},
    )
    start = time.perf_counter()
    try:
        asyncio.run(asyncio.wait_for(client.async_execute(), NOTEBOOK_TIMEOUT))
    except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
        pytest.fail(f"{path.name} did not finish within {NOTEBOOK_TIMEOUT} s at small scale")
    except CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}")
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{path.name}: {elapsed:.1f} s at small scale", end="")

    figure = figures / f"{path.stem}.png"
    assert figure.is_file(), f"{path.name} saved no main figure {figure.name}"
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert list(runs.rglob("events.out.tfevents.*")), f"{path.name} logged nothing to {runs}"
    assert not list(work.rglob("events.out.tfevents.*")), "logs written outside LKD_RUNS_DIR"
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
