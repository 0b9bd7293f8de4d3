"""Where and how a benchmark ran: the header every file in benchmarks/results/ starts with."""

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's description)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1/5/15-minute load averages, as text (a busy machine distorts timings)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def busy() -> bool:
    """Whether the 1-minute load average exceeds the number of cores."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False


def header(title: str, load_before: str | None = None) -> str:
    """Markdown header: title, command line, date, machine, load, software versions."""
    import lightning

    command = shlex.join(["python", *sys.argv])
    load = f"before {load_before}, after " if load_before is not None else ""
    return (
        "\n".join(
            [
                f"# {title}",
                "",
                f"- Command: `{command}`",
                f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                f"- Machine: {cpu_model()}, {os.cpu_count()} cores, "
                f"torch threads {torch.get_num_threads()}, no GPU"
                if not torch.cuda.is_available()
                else f"- Machine: {torch.cuda.get_device_name()}",
                f"- Load average (1/5/15 min): {load}{load_average()}",
                f"- Software: Python {platform.python_version()}, torch {torch.__version__}, "
                f"lightning {lightning.__version__}",
            ]
        )
        + "\n\n"
    )


def write_result(name: str, title: str, body: str, *, load_before: str | None = None) -> Path:
    """Write ``header(title) + body`` to ``benchmarks/results/<name>.md`` and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(header(title, load_before) + body.rstrip() + "\n")
    return path
