"""The report's figures: accuracy against latency, and reliability diagrams (matplotlib).

Drawn with matplotlib's object-oriented API on an Agg canvas (no pyplot, no global backend
change). matplotlib is optional (``pip install matplotlib``; it is in the ``notebooks`` and
``dev`` extras): :func:`matplotlib_missing` says how to get it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ACCURACY_VS_LATENCY",
    "RELIABILITY",
    "matplotlib_missing",
    "plot_accuracy_vs_latency",
    "plot_reliability",
    "write_figures",
]

#: File names of the figures in the report folder.
ACCURACY_VS_LATENCY = "accuracy_vs_latency.png"
RELIABILITY = "reliability.png"


def matplotlib_missing() -> str | None:
    """``None`` when matplotlib can be imported, else a one-line message saying how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "figures skipped: matplotlib is not installed (pip install matplotlib, or pip "
            "install 'lightning-kd[notebooks]')"
        )
    return None


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_accuracy_vs_latency(networks: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Test top-1 accuracy against batch-1 latency, one point per network.

    Each network is a point at its median latency (PyTorch, filled) with the interquartile
    range as a horizontal bar, its area proportional to the parameter count; when the report
    has onnxruntime timings, a hollow marker of the same colour shows those.

    Args:
        networks: The report's ``networks`` entries (``name``, ``top1``, ``parameters``,
            ``latency`` and optionally ``onnxruntime.latency``, :class:`Timing` dicts).
        path: The PNG to write.
    """
    from matplotlib.lines import Line2D

    figure = _figure(6.0, 4.2)
    axes = figure.add_subplot()
    largest = max(float(n["parameters"]) for n in networks)
    with_ort = False
    for k, network in enumerate(networks):
        color = f"C{k % 10}"
        latency = network["latency"]
        y = 100 * float(network["top1"])
        x = float(latency["median_ms"])
        low, high = 1e3 * float(latency["q1_s"]), 1e3 * float(latency["q3_s"])
        size = 60 + 400 * math.sqrt(float(network["parameters"]) / largest)
        axes.errorbar([x], [y], xerr=[[x - low], [high - x]], fmt="none", ecolor=color, capsize=3)
        axes.scatter([x], [y], s=size, color=color, alpha=0.8)
        axes.annotate(network["name"], (x, y), textcoords="offset points", xytext=(9, 7))
        runtime = network.get("onnxruntime") or {}
        if "latency" in runtime:
            with_ort = True
            ort = float(runtime["latency"]["median_ms"])
            axes.scatter([ort], [y], s=size, facecolors="none", edgecolors=color, linewidths=1.5)
            axes.plot([ort, x], [y, y], color=color, linewidth=0.8, linestyle=":")
    threads = int(networks[0]["latency"]["threads"])
    axes.set_xscale("log")
    axes.set_xlabel(
        f"latency at batch 1 (ms, median and IQR; {threads} thread{'s' if threads != 1 else ''})"
    )
    axes.set_ylabel("test top-1 accuracy (%)")
    axes.set_title("Accuracy vs latency (marker area ~ parameters)")
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(x=0.25, y=0.12)
    if with_ort:
        handles = [
            Line2D([], [], marker="o", linestyle="", color="grey", label="PyTorch"),
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markerfacecolor="none",
                color="grey",
                label="onnxruntime",
            ),
        ]
        axes.legend(handles=handles, fontsize=8, loc="best")
    file = Path(path)
    figure.savefig(file)
    return file


def plot_reliability(networks: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Reliability diagrams, one panel per network: accuracy of each confidence bin (bars)
    against the diagonal of perfect calibration, the gap to each bin's mean confidence in
    red, the ECE in the title.

    Args:
        networks: The report's ``networks`` entries (``name``, ``ece``, ``reliability``).
        path: The PNG to write.
    """
    count = len(networks)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure = _figure(3.2 * columns, 3.3 * rows)
    for k, network in enumerate(networks):
        axes = figure.add_subplot(rows, columns, k + 1)
        bins = network["reliability"]
        edges = bins["edges"]
        width = edges[1] - edges[0]
        lefts = edges[:-1]
        filled = [n > 0 for n in bins["counts"]]
        accuracy = [a if f else 0.0 for a, f in zip(bins["accuracy"], filled, strict=True)]
        confidence = [c if f else 0.0 for c, f in zip(bins["confidence"], filled, strict=True)]
        axes.bar(
            lefts,
            accuracy,
            width=width,
            align="edge",
            color="C0",
            alpha=0.75,
            edgecolor="black",
            linewidth=0.5,
            label="accuracy of the bin",
        )
        gap = [abs(c - a) for a, c in zip(accuracy, confidence, strict=True)]
        bottom = [min(a, c) for a, c in zip(accuracy, confidence, strict=True)]
        axes.bar(
            lefts,
            gap,
            bottom=bottom,
            width=width,
            align="edge",
            color="C3",
            alpha=0.35,
            edgecolor="C3",
            linewidth=0.5,
            label="gap to mean confidence",
        )
        axes.plot([0, 1], [0, 1], "k--", linewidth=1)
        total = max(sum(bins["counts"]), 1)
        share = [n / total for n in bins["counts"]]
        axes.step(
            edges,
            [*share, share[-1]],
            where="post",
            color="0.35",
            linewidth=1,
            label="share of images",
        )
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_aspect("equal")
        axes.set_title(f"{network['name']}: ECE {100 * float(network['ece']):.2f}%", fontsize=9)
        axes.set_xlabel("confidence (top-1 probability)", fontsize=8)
        if k % columns == 0:
            axes.set_ylabel("accuracy", fontsize=8)
        if k == 0:
            axes.legend(fontsize=7, loc="upper left")
    file = Path(path)
    figure.savefig(file)
    return file


def write_figures(networks: Sequence[Mapping[str, Any]], folder: str | Path) -> list[Path]:
    """Both figures into ``folder`` (:data:`ACCURACY_VS_LATENCY`, :data:`RELIABILITY`)."""
    out = Path(folder)
    return [
        plot_accuracy_vs_latency(networks, out / ACCURACY_VS_LATENCY),
        plot_reliability(networks, out / RELIABILITY),
    ]
