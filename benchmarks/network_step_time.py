"""Milliseconds per CPU training step of the CIFAR zoo networks, fp32 and bf16-mixed.

One training step is forward (under ``torch.autocast("cpu", dtype=torch.bfloat16)`` in the
bf16-mixed rows, none in the fp32 rows), float32 cross-entropy over 100 classes, backward and
an SGD step (momentum 0.9, weight decay 5e-4, the CRD recipe), on a fixed random batch of
32x32 images in channels-last memory format (``--memory-format contiguous`` for NCHW). Every
round builds each network afresh (seed 0), runs ``--warmup`` untimed steps and times
``--steps`` steps one by one; rounds alternate over networks and precisions, so a drift of the
machine's speed spreads over all rows. The report gives the median over all timed steps of a
row, its interquartile range and the median of each round.

With ``--kd-pairs`` (default: the six cross-architecture pairs of the CIFAR-100 table) it also
times one KD step per pair: the frozen teacher's forward in eval mode under
``torch.inference_mode``, the student's forward, ``0.1 * CE + 0.9 * kd_loss(T=4)``, backward
and the SGD step of the student, as ``KDModule`` does.

Timings on a shared machine are not worth reporting: run on an idle one (the load averages
before and after are recorded) with ``OMP_NUM_THREADS`` unset or set to the core count.

Usage (from the repository root)::

    .venv/bin/python benchmarks/network_step_time.py
    .venv/bin/python benchmarks/network_step_time.py --networks vgg8 resnet50 --rounds 5
    .venv/bin/python benchmarks/network_step_time.py --include-existing

Writes ``benchmarks/results/network_step_time.md`` and ``.json`` (``--name`` changes the
file names, e.g. for a trial run).
"""

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from report import RESULTS_DIR, busy, cpu_model, load_average, write_result
from torch import Tensor, nn

from lightning_kd import models
from lightning_kd.losses import kd_loss

ZOO = [
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
    "resnet50",
]
EXISTING = ["resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2"]
#: The cross-architecture (teacher, student) pairs of the CIFAR-100 KD table.
CROSS_PAIRS = [
    "vgg13:mobilenetv2",
    "resnet50:mobilenetv2",
    "resnet50:vgg8",
    "resnet32x4:shufflenetv1",
    "resnet32x4:shufflenetv2",
    "wrn_40_2:shufflenetv1",
]
PRECISIONS = ["fp32", "bf16-mixed"]
NUM_CLASSES = 100


@dataclass
class Row:
    """One (network, precision) measurement; times in milliseconds per training step."""

    network: str
    parameters: int
    precision: str
    memory_format: str
    median_ms: float
    p25_ms: float
    p75_ms: float
    round_medians_ms: list[float]
    images_per_s: float


def _autocast(precision: str) -> AbstractContextManager[object]:
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def time_steps(
    make: Callable[[int], nn.Module],
    precision: str,
    channels_last: bool,
    *,
    batch_size: int,
    warmup: int,
    steps: int,
    make_teacher: Callable[[int], nn.Module] | None = None,
) -> list[float]:
    """Seconds of each of ``steps`` training steps, after ``warmup`` untimed ones; a KD step
    with a frozen teacher when ``make_teacher`` is given."""
    torch.manual_seed(0)
    model = make(NUM_CLASSES).train()
    teacher = make_teacher(NUM_CLASSES).eval().requires_grad_(False) if make_teacher else None
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, NUM_CLASSES, (batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher else None
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step() -> Tensor:
        teacher_logits = None
        if teacher is not None:
            with torch.inference_mode(), _autocast(precision):
                teacher_logits = teacher(x)  # (B, 100)
            teacher_logits = teacher_logits.clone()
        with _autocast(precision):
            logits = model(x)  # (B, 100)
        loss = F.cross_entropy(logits.float(), y)
        if teacher_logits is not None:
            loss = 0.1 * loss + 0.9 * kd_loss(logits, teacher_logits, temperature=4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()} for {precision}")
    return times


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _cpu_flags() -> dict[str, bool]:
    wanted = ["avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return {}
    return {flag: flag in flags for flag in wanted}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", default=ZOO, choices=ZOO + EXISTING)
    parser.add_argument(
        "--include-existing", action="store_true", help=f"also time {', '.join(EXISTING)}"
    )
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument(
        "--memory-format", choices=["channels_last", "contiguous"], default="channels_last"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all rows")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--kd-pairs",
        nargs="*",
        default=CROSS_PAIRS,
        help="teacher:student pairs to time one KD step for (none: --kd-pairs with no value)",
    )
    parser.add_argument("--name", default="network_step_time", help="results file stem")
    args = parser.parse_args()
    for option in ("batch_size", "steps", "rounds"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    networks = list(dict.fromkeys(args.networks + (EXISTING if args.include_existing else [])))
    for pair in args.kd_pairs:
        teacher_name, _, student_name = pair.partition(":")
        for name in (teacher_name, student_name):
            if not hasattr(models, name):
                parser.error(f"--kd-pairs: unknown network {name!r} in {pair!r}")
    rows_to_time = [(name, None) for name in networks] + [
        (pair.partition(":")[2], pair.partition(":")[0]) for pair in args.kd_pairs
    ]
    channels_last = args.memory_format == "channels_last"

    load_before_text, load_before = load_average(), _loadavg()
    if busy():
        print(f"warning: load average {load_before_text} exceeds the core count", file=sys.stderr)
    started = dt.datetime.now(dt.timezone.utc)
    runs: dict[tuple[str, str], list[list[float]]] = {}
    for round_index in range(args.rounds):
        for name, teacher_name in rows_to_time:
            for precision in args.precisions:
                times = time_steps(
                    getattr(models, name),
                    precision,
                    channels_last,
                    batch_size=args.batch_size,
                    warmup=args.warmup,
                    steps=args.steps,
                    make_teacher=getattr(models, teacher_name) if teacher_name else None,
                )
                label = f"KD {teacher_name} -> {name}" if teacher_name else name
                runs.setdefault((label, precision), []).append(times)
                print(
                    f"round {round_index + 1}/{args.rounds} {label} {precision}: "
                    f"{1e3 * statistics.median(times):.1f} ms/step",
                    flush=True,
                )

    rows = []
    for (name, precision), rounds in runs.items():
        p25, median, p75 = _quartiles([t for times in rounds for t in times])
        rows.append(
            Row(
                network=name,
                parameters=sum(
                    p.numel()
                    for p in getattr(models, name.rpartition(" -> ")[2])(NUM_CLASSES).parameters()
                ),
                precision=precision,
                memory_format=args.memory_format,
                median_ms=round(1e3 * median, 2),
                p25_ms=round(1e3 * p25, 2),
                p75_ms=round(1e3 * p75, 2),
                round_medians_ms=[round(1e3 * statistics.median(t), 2) for t in rounds],
                images_per_s=round(args.batch_size / median, 1),
            )
        )

    settings = (
        f"Batch {args.batch_size} of 32x32 images, {NUM_CLASSES} classes, {args.memory_format}, "
        f"SGD (momentum 0.9, weight decay 5e-4); per row {args.rounds} round(s) of {args.warmup} "
        f"warm-up and {args.steps} timed step(s) on a freshly built network (seed 0). Median and "
        f"interquartile range over all {args.rounds * args.steps} timed steps; bf16-mixed is "
        "`torch.autocast('cpu', dtype=torch.bfloat16)` around the forward, float32 loss."
    )
    flags = _cpu_flags()
    table = [
        "| network | params | precision | ms/step (median) | IQR (ms) | round medians (ms) | "
        "img/s |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r.network} | {r.parameters / 1e6:.2f}M | {r.precision} | {r.median_ms:.1f} | "
            f"{r.p25_ms:.1f}-{r.p75_ms:.1f} | {', '.join(f'{t:.1f}' for t in r.round_medians_ms)} "
            f"| {r.images_per_s:,.0f} |"
            for r in rows
        ),
    ]
    flag_text = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()) or "unknown"
    body = "\n".join([settings, f"CPU flags: {flag_text}.", "", *table])
    md_path = write_result(
        args.name,
        "Training step time of the CIFAR zoo networks on CPU",
        body,
        load_before=load_before_text,
    )
    record = {
        "benchmark": "network_step_time",
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1_5_15": {"before": load_before, "after": _loadavg()},
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpu_flags": flags,
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "settings": {
            "batch_size": args.batch_size,
            "num_classes": NUM_CLASSES,
            "memory_format": args.memory_format,
            "warmup": args.warmup,
            "steps": args.steps,
            "rounds": args.rounds,
        },
        "results": [asdict(r) for r in rows],
    }
    json_path = RESULTS_DIR / f"{args.name}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print(body)
    print(f"written to {md_path} and {json_path}")


if __name__ == "__main__":
    main()
