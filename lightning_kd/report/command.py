"""``lightning-kd report``: what the student buys you, measured on this machine.

::

    lightning-kd report \\
        --teacher runs/quickstart/seed0/teacher/version_0/final.ckpt \\
        --student runs/quickstart/seed0/student_kd/version_0/final.ckpt \\
        --data configs/quickstart/teacher.yaml --data-dir ../shared/data \\
        --out benchmarks/results/report_quickstart

For the teacher and each student (checkpoints of any lightning-kd module, or weights files
with their network config, see :mod:`lightning_kd.report.loading`): parameters, MACs per
image, size of the weights, latency at batch 1 and throughput at a large batch on this
machine (median of repeated timings after a warm-up, interquartile range and min / max,
torch's thread count; onnxruntime too when it is installed), test top-1 / top-5 accuracy,
top-1 agreement with the teacher, NLL and ECE, and every student's ratios to the teacher.
Written to ``--out`` as ``report.md``, ``report.json`` and two figures
(:mod:`lightning_kd.report.figures`).

The datamodule is ``--data`` (a run config with a ``data`` entry, or a ``class_path`` /
``init_args`` file), else the ``config.yaml`` that ``lightning-kd fit`` saved beside the
teacher's checkpoint, else the datamodule recorded in the teacher's checkpoint;
``--data-dir`` replaces its ``data_dir``. Only its test split is read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_kd.report.calibration import DEFAULT_BINS
from lightning_kd.report.document import render_markdown
from lightning_kd.report.evaluate import classification_metrics, predict_test_split
from lightning_kd.report.figures import matplotlib_missing, write_figures
from lightning_kd.report.loading import (
    LoadedNetwork,
    build_datamodule,
    load_network,
    read_config_file,
    run_data_config,
)
from lightning_kd.report.measure import (
    Timing,
    count_macs,
    count_parameters,
    state_dict_bytes,
    time_calls,
    time_network,
)

__all__ = ["TimingSettings", "build_report", "main", "network_label", "write_report"]

#: Folder names skipped when naming a network after its checkpoint's path.
_RUN_FOLDERS = re.compile(r"^(version_\d+|checkpoints?|ckpts?)$")


@dataclass(frozen=True)
class TimingSettings:
    """How the networks are timed (see :func:`lightning_kd.report.measure.time_calls`).

    Attributes:
        warmup: Untimed calls before each timing.
        repeats: Timed calls at batch 1.
        batch_size: The large batch of the throughput.
        batch_repeats: Timed calls at ``batch_size``.
        onnxruntime: Also time each network exported to ONNX with onnxruntime (when
            installed).
    """

    warmup: int = 5
    repeats: int = 30
    batch_size: int = 256
    batch_repeats: int = 5
    onnxruntime: bool = True

    def __post_init__(self) -> None:
        for name in ("repeats", "batch_size", "batch_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


def network_label(path: str | Path) -> str:
    """A network's name from its file: the run folder of ``fit``'s layout
    (``runs/quickstart/seed0/student_kd/version_0/final.ckpt`` -> ``student_kd``), else the
    file's stem."""
    file = Path(path)
    for folder in file.parents:
        if folder.name and not _RUN_FOLDERS.match(folder.name):
            if folder != file.parent or file.stem in ("final", "last", "best"):
                return folder.name
            break
    return file.stem


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(threads: int) -> dict[str, Any]:
    cores = os.cpu_count() or 0
    accelerator = (
        f"GPU {torch.cuda.get_device_name(0)} (not used)" if torch.cuda.is_available() else "no GPU"
    )
    onnxruntime_version = None
    try:
        import onnxruntime

        onnxruntime_version = onnxruntime.__version__
    except ImportError:
        pass
    return {
        "description": f"{cores}-core {_cpu_name()}, {accelerator}, {platform.system()}",
        "cpu": _cpu_name(),
        "logical_cpus": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime_version,
        "torch_threads": threads,
    }


def _onnxruntime_timings(
    network: nn.Module,
    input_shape: tuple[int, ...],
    settings: TimingSettings,
    folder: Path,
    name: str,
) -> dict[str, Any]:
    """Export ``network`` to ONNX, check it against PyTorch and time it with onnxruntime."""
    from lightning_kd.export import check_onnx, export_onnx, onnxruntime_session

    path = folder / f"{name}.onnx"
    example = torch.randn(2, *input_shape)
    # ONNX graphs take NCHW; export a contiguous copy of the weights' layout.
    contiguous = network.to(memory_format=torch.contiguous_format)
    try:
        export_onnx(contiguous, path, example)
        check = check_onnx(contiguous, path, input_shape)
    except Exception as error:  # an op without ONNX support: the rest of the report stands
        return {"error": f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"}
    threads = torch.get_num_threads()
    session = onnxruntime_session(path, threads=threads)
    input_name = session.get_inputs()[0].name
    timings = {}
    for key, batch, repeats in (
        ("latency", 1, settings.repeats),
        ("throughput", settings.batch_size, settings.batch_repeats),
    ):
        feed = {input_name: torch.randn(batch, *input_shape).numpy()}

        def run(feed: dict[str, Any] = feed) -> None:
            session.run(None, feed)

        timing = time_calls(
            run, batch_size=batch, warmup=settings.warmup, repeats=repeats, threads=threads
        )
        timings[key] = timing.as_dict()
    return {
        **timings,
        "file_bytes": path.stat().st_size,
        "check": {"max_abs_diff": check.max_abs_diff, "batch_sizes": list(check.batch_sizes)},
    }


def _relative(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    def runtime(entry: dict[str, Any], key: str, value: str) -> float | None:
        timing = (entry.get("onnxruntime") or {}).get(key)
        return None if timing is None else float(timing[value])

    return {
        "ratios": {
            "parameters": ratio(student["parameters"], teacher["parameters"]),
            "macs": ratio(student["macs"], teacher["macs"]),
            "state_dict_bytes": ratio(student["state_dict_bytes"], teacher["state_dict_bytes"]),
            "latency": ratio(student["latency"]["median_s"], teacher["latency"]["median_s"]),
            "throughput": ratio(
                student["throughput"]["images_per_s"], teacher["throughput"]["images_per_s"]
            ),
            "onnxruntime_latency": ratio(
                runtime(student, "latency", "median_s"), runtime(teacher, "latency", "median_s")
            ),
            "onnxruntime_throughput": ratio(
                runtime(student, "throughput", "images_per_s"),
                runtime(teacher, "throughput", "images_per_s"),
            ),
            "top1": ratio(student["top1"], teacher["top1"]),
            "top5": ratio(student["top5"], teacher["top5"]),
            "nll": ratio(student["nll"], teacher["nll"]),
            "ece": ratio(student["ece"], teacher["ece"]),
        },
        "differences": {
            "top1_points": 100 * (student["top1"] - teacher["top1"]),
            "top5_points": 100 * (student["top5"] - teacher["top5"]),
            "nll": student["nll"] - teacher["nll"],
            "ece_points": 100 * (student["ece"] - teacher["ece"]),
        },
    }


def build_report(
    networks: Sequence[LoadedNetwork],
    names: Sequence[str],
    datamodule: Any,
    *,
    data_source: str,
    settings: TimingSettings,
    command: str,
) -> dict[str, Any]:
    """Measure and evaluate the networks; the first is the teacher.

    Args:
        networks: The teacher, then the students (eval mode, CPU).
        names: A name per network.
        datamodule: The datamodule whose test split is evaluated.
        data_source: Where its config came from.
        settings: Timing settings.
        command: The command line, recorded in the report.

    Returns:
        The report (what ``report.json`` holds): ``date``, ``command``, ``machine`` (with the
        load average before and after), ``data``, ``timing``, ``calibration`` and one entry
        per network in ``networks`` (``relative_to_teacher`` for the students).
    """
    if len(networks) < 2:
        raise ValueError(f"a report needs a teacher and at least one student, got {len(networks)}")
    load_before = list(os.getloadavg())
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    modules = [loaded.network.float().eval() for loaded in networks]
    num_classes = getattr(datamodule, "num_classes", None)
    predictions = predict_test_split(
        modules,
        datamodule,
        names=names,
        num_classes=num_classes if isinstance(num_classes, int) else None,
    )
    memory_format = torch.channels_last if predictions.channels_last else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    single = torch.randn(1, *predictions.input_shape, generator=generator)
    batch = torch.randn(settings.batch_size, *predictions.input_shape, generator=generator)
    single = single.contiguous(memory_format=memory_format)
    batch = batch.contiguous(memory_format=memory_format)
    use_ort = settings.onnxruntime and _onnxruntime_installed()
    teacher_logits = predictions.logits[0]
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lightning-kd-report-") as folder:
        for k, (loaded, network, name) in enumerate(zip(networks, modules, names, strict=True)):
            latency: Timing = time_network(
                network, single, warmup=settings.warmup, repeats=settings.repeats
            )
            throughput = time_network(
                network, batch, warmup=min(settings.warmup, 2), repeats=settings.batch_repeats
            )
            entry: dict[str, Any] = {
                "name": name,
                "role": "teacher" if k == 0 else "student",
                "source": str(loaded.source),
                "source_bytes": loaded.source.stat().st_size,
                "network": loaded.description,
                "network_config": loaded.spec,
                "origin": loaded.origin,
                "parameters": count_parameters(network),
                "macs": count_macs(network, single),
                "state_dict_bytes": state_dict_bytes(network),
                "latency": latency.as_dict(),
                "throughput": throughput.as_dict(),
                "onnxruntime": None,
            }
            if use_ort:
                entry["onnxruntime"] = _onnxruntime_timings(
                    network, predictions.input_shape, settings, Path(folder), f"network{k}"
                )
                network.to(memory_format=memory_format)
            entry.update(
                classification_metrics(
                    predictions.logits[k], predictions.targets, teacher_logits=teacher_logits
                )
            )
            entries.append(entry)
    for entry in entries[1:]:
        entry["relative_to_teacher"] = _relative(entry, entries[0])
    machine = _machine(torch.get_num_threads())
    machine["load_average_before"] = load_before
    machine["load_average_after"] = list(os.getloadavg())
    return {
        "date": date,
        "command": command,
        "machine": machine,
        "data": {
            "datamodule": type(datamodule).__name__,
            "source": data_source,
            "split": "test",
            "images": int(predictions.targets.numel()),
            "input_shape": list(predictions.input_shape),
            "channels_last": predictions.channels_last,
        },
        "timing": {
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "batch_size": settings.batch_size,
            "batch_repeats": settings.batch_repeats,
            "batch_warmup": min(settings.warmup, 2),
            "clock": "time.perf_counter, each call timed alone",
        },
        "calibration": {"bins": DEFAULT_BINS, "norm": "l1", "nll_unit": "nats"},
        "networks": entries,
    }


def _onnxruntime_installed() -> bool:
    from lightning_kd.export import onnxruntime_available

    return onnxruntime_available()


def write_report(report: dict[str, Any], folder: str | Path, *, figures: bool = True) -> list[Path]:
    """Write ``report.json``, the figures (when matplotlib is installed) and ``report.md``.

    Returns:
        The files written.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    report["figures"] = []
    if figures:
        missing = matplotlib_missing()
        if missing is None:
            paths = write_figures(report["networks"], out)
            report["figures"] = [p.name for p in paths]
            written += paths
        else:
            report["figures_note"] = missing
            print(missing)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path = out / "report.md"
    md_path.write_text(render_markdown(report))
    return [json_path, md_path, *written]


# ----------------------------------------------------------------------------- command
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-kd report",
        description="Compression report of a teacher and its students: size, MACs, latency "
        "and throughput on this machine, test accuracy, agreement and calibration, and the "
        "ratios to the teacher (Markdown, JSON and figures).",
    )
    network_help = (
        "a checkpoint of a lightning-kd module, or a weights file followed by its network "
        "config (YAML file or inline YAML with class_path / init_args; default "
        "<stem>.network.yaml beside it)"
    )
    parser.add_argument(
        "--teacher", required=True, nargs="+", metavar=("FILE", "NETWORK"), help=network_help
    )
    parser.add_argument(
        "--student",
        required=True,
        nargs="+",
        action="append",
        metavar=("FILE", "NETWORK"),
        help=f"{network_help}; repeat for several students",
    )
    parser.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="names of the teacher and the students, in order "
        "(default: the run folder of each checkpoint)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="CONFIG",
        help="YAML with the datamodule: a run config with a 'data' entry, or class_path / "
        "init_args (default: config.yaml beside the teacher's checkpoint, else the datamodule "
        "recorded in it)",
    )
    parser.add_argument("--data-dir", default=None, help="replaces the datamodule's data_dir")
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=None,
        help="replaces the datamodule's eval_batch_size",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's current count)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls at batch 1")
    parser.add_argument("--batch-size", type=int, default=256, help="the throughput's batch")
    parser.add_argument("--batch-repeats", type=int, default=5, help="timed calls at --batch-size")
    parser.add_argument(
        "--no-onnxruntime",
        action="store_true",
        help="do not time ONNX exports with onnxruntime (done when onnxruntime is installed)",
    )
    parser.add_argument("--no-figures", action="store_true", help="write no figures")
    return parser


def _file_and_config(value: list[str], option: str) -> tuple[str, str | None]:
    if len(value) > 2:
        raise ValueError(
            f"{option} takes a file and optionally its network config, got {len(value)} values "
            f"{value}; repeat {option} for another network"
        )
    return value[0], value[1] if len(value) == 2 else None


def _data_config(args: argparse.Namespace, teacher_file: str) -> tuple[dict[str, Any], str] | None:
    """``(config, source)`` of the datamodule from ``--data`` or the teacher's run folder."""
    if args.data is not None:
        config = read_config_file(args.data)
        data = config.get("data", config)
        if not (isinstance(data, dict) and isinstance(data.get("class_path"), str)):
            raise ValueError(
                f"--data {args.data!r} has no datamodule: expected a run config with a 'data' "
                "entry (class_path / init_args) or a class_path / init_args file"
            )
        return data, args.data
    found = run_data_config(teacher_file)
    if found is not None:
        return found[0], str(found[1])
    return None


def main(argv: list[str]) -> None:
    """``lightning-kd report``: see the module docstring and ``--help``."""
    args = _parser().parse_args(argv)
    settings = TimingSettings(
        warmup=args.warmup,
        repeats=args.repeats,
        batch_size=args.batch_size,
        batch_repeats=args.batch_repeats,
        onnxruntime=not args.no_onnxruntime,
    )
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    inputs = [_file_and_config(args.teacher, "--teacher")]
    inputs += [_file_and_config(value, "--student") for value in args.student]
    if args.names is not None and len(args.names) != len(inputs):
        raise ValueError(
            f"--names gives {len(args.names)} names for {len(inputs)} networks (the teacher and "
            f"{len(inputs) - 1} students); give one per network, teacher first"
        )
    names = _unique(args.names or [network_label(file) for file, _ in inputs])
    for file, _ in inputs:
        if not Path(file).expanduser().is_file():
            raise FileNotFoundError(f"{file!r} does not exist (resolved: {Path(file).resolve()})")
    found = _data_config(args, inputs[0][0])
    teacher: LoadedNetwork | None = None
    if found is None:
        teacher = load_network(*inputs[0])
        if teacher.data_config is None:
            raise ValueError(
                f"no datamodule: {inputs[0][0]!r} records none and has no config.yaml beside it; "
                "pass --data with the run's config (e.g. configs/quickstart/teacher.yaml)"
            )
        found = (teacher.data_config, f"the checkpoint {inputs[0][0]}")
    data_config, data_source = found
    datamodule = build_datamodule(
        data_config,
        source=data_source,
        data_dir=args.data_dir,
        eval_batch_size=args.eval_batch_size,
    )
    num_classes = getattr(datamodule, "num_classes", None)
    num_classes = num_classes if isinstance(num_classes, int) else None
    networks = [
        teacher
        if k == 0 and teacher is not None
        else load_network(file, config, num_classes=num_classes)
        for k, (file, config) in enumerate(inputs)
    ]
    for name, loaded in zip(names, networks, strict=True):
        print(f"{name}: {loaded.description}, the {loaded.origin} in {loaded.source}")
    command = "lightning-kd report " + " ".join(shlex.quote(a) for a in argv)
    report = build_report(
        networks, names, datamodule, data_source=data_source, settings=settings, command=command
    )
    written = write_report(report, args.out, figures=not args.no_figures)
    sys.stdout.write(Path(written[1]).read_text())
    for path in written:
        print(f"wrote {path}")
