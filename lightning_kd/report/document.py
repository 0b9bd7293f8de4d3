"""The report as Markdown, from the dict that is also written as JSON.

Three tables: size and speed, quality on the test split, and every student relative to the
teacher (ratios ``student / teacher``, accuracy differences in percentage points).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_markdown"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _ms(timing: Mapping[str, Any] | None) -> str:
    """``"1.23 (1.20-1.31)"``: median and IQR in milliseconds."""
    if not timing:
        return "n/a"
    return f"{1e3 * timing['median_s']:.3g} ({1e3 * timing['q1_s']:.3g}-{1e3 * timing['q3_s']:.3g})"


def _rate(timing: Mapping[str, Any] | None) -> str:
    """``"4,100 (3,900-4,200)"``: median images/s and its IQR."""
    if not timing:
        return "n/a"
    return (
        f"{timing['images_per_s']:,.0f} "
        f"({timing['images_per_s_q1']:,.0f}-{timing['images_per_s_q3']:,.0f})"
    )


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}x"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _runtime(network: Mapping[str, Any]) -> Mapping[str, Any]:
    value = network.get("onnxruntime")
    return value if isinstance(value, Mapping) else {}


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown document of a report (see :func:`lightning_kd.report.command.build_report`)."""
    machine = report["machine"]
    data = report["data"]
    timing = report["timing"]
    networks = report["networks"]
    with_ort = any("latency" in _runtime(n) for n in networks)
    load_before = " / ".join(f"{v:.2f}" for v in machine["load_average_before"])
    load_after = " / ".join(f"{v:.2f}" for v in machine["load_average_after"])
    threads = machine["torch_threads"]
    batch = timing["batch_size"]
    lines = [
        "# Compression report",
        "",
        f"`{report['command']}`",
        "",
        f"- Date: {report['date']}",
        f"- Machine: {machine['description']}; torch {machine['torch']}, "
        f"{threads} torch thread{'s' if threads != 1 else ''}"
        + (f", onnxruntime {machine['onnxruntime']}" if machine.get("onnxruntime") else ""),
        f"- Load average (1 / 5 / 15 min): before {load_before}, after {load_after}"
        + (
            " (the machine is shared: timings are this machine under this load)"
            if max(machine["load_average_before"][0], machine["load_average_after"][0]) > 0.5
            else ""
        ),
        f"- Data: the test split of {data['datamodule']} ({data['images']:,} images, input "
        f"{' x '.join(str(s) for s in data['input_shape'])}"
        + (", channels-last" if data["channels_last"] else "")
        + f"), from {data['source']}. A post-training report of final models: nothing is "
        "selected on the test split, and validation is not used.",
        f"- Timing: median of {timing['repeats']} forward passes at batch 1 and of "
        f"{timing['batch_repeats']} at batch {batch}, each after {timing['warmup']} untimed "
        "ones, with the interquartile range in parentheses (min and max in the JSON); "
        "`torch.inference_mode`, float32.",
        "- MACs: `torch.utils.flop_counter.FlopCounterMode` on one image, MACs = FLOPs / 2 "
        "(convolutions and matrix multiplies). Size: `torch.save(state_dict)` of the network.",
        f"- Calibration: NLL in nats; ECE with {report['calibration']['bins']} equal-width bins, "
        "L1 (torchmetrics `MulticlassCalibrationError`).",
        "",
        "## Size and speed",
        "",
    ]
    header = [
        "network",
        "what",
        "parameters",
        "MACs / image",
        "size (MB)",
        "latency b=1 (ms)",
        f"throughput b={batch} (img/s)",
    ]
    if with_ort:
        header += ["onnxruntime b=1 (ms)", f"onnxruntime b={batch} (img/s)"]
    rows = []
    for n in networks:
        row = [
            f"**{n['name']}**",
            f"{n['network']}, {n['origin']}",
            f"{n['parameters']:,}",
            f"{n['macs'] / 1e6:,.2f}M",
            f"{n['state_dict_bytes'] / 1e6:.2f}",
            _ms(n["latency"]),
            _rate(n["throughput"]),
        ]
        if with_ort:
            row += [_ms(_runtime(n).get("latency")), _rate(_runtime(n).get("throughput"))]
        rows.append(row)
    lines += _table(header, rows, "ll" + "r" * (len(header) - 2))
    lines += ["", "## Quality on the test split", ""]
    k = networks[0]["top5_k"]
    rows = [
        [
            f"**{n['name']}**",
            f"{100 * n['top1']:.2f}",
            f"{100 * n['top5']:.2f}",
            f"{100 * n['agreement']:.2f}",
            f"{n['nll']:.4f}",
            f"{100 * n['ece']:.2f}",
        ]
        for n in networks
    ]
    lines += _table(
        [
            "network",
            "top-1 (%)",
            f"top-{k} (%)",
            "top-1 agreement with the teacher (%)",
            "NLL",
            "ECE (%)",
        ],
        rows,
        "lrrrrr",
    )
    students = [n for n in networks if n.get("relative_to_teacher")]
    if students:
        lines += [
            "",
            "## Relative to the teacher",
            "",
            "Ratios are student / teacher (0.25x parameters: 4 times smaller; 0.25x latency: 4 "
            "times faster; 4x throughput: 4 times more images per second); differences are "
            "student - teacher, in percentage points for accuracy and ECE.",
            "",
        ]
        header = ["student", "parameters", "MACs", "size", "latency b=1", f"throughput b={batch}"]
        if with_ort:
            header += ["onnxruntime latency b=1"]
        header += ["top-1 (points)", f"top-{k} (points)", "NLL", "ECE (points)"]
        rows = []
        for n in students:
            ratios = n["relative_to_teacher"]["ratios"]
            differences = n["relative_to_teacher"]["differences"]
            row = [
                f"**{n['name']}**",
                _ratio(ratios["parameters"]),
                _ratio(ratios["macs"]),
                _ratio(ratios["state_dict_bytes"]),
                _ratio(ratios["latency"]),
                _ratio(ratios["throughput"]),
            ]
            if with_ort:
                row += [_ratio(ratios.get("onnxruntime_latency"))]
            row += [
                _points(differences["top1_points"]),
                _points(differences["top5_points"]),
                f"{differences['nll']:+.4f}",
                _points(differences["ece_points"]),
            ]
            rows.append(row)
        lines += _table(header, rows, "l" + "r" * (len(header) - 1))
    notes = [n for n in networks if _runtime(n).get("error")]
    if notes:
        lines += [""]
        lines += [f"- onnxruntime, {n['name']}: {_runtime(n)['error']}" for n in notes]
    figures = report.get("figures") or []
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name})" for name in figures]
    elif report.get("figures_note"):
        lines += ["", report["figures_note"]]
    return "\n".join(lines) + "\n"
