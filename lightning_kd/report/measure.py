"""What a network costs: parameters, multiply-accumulates, file size and time on this machine.

* Parameters: every element of ``network.parameters()`` (buffers such as BatchNorm statistics
  are not parameters).
* MACs: ``torch.utils.flop_counter.FlopCounterMode`` on one forward of a single image,
  ``MACs = FLOPs / 2``. It counts the matrix multiplies and convolutions (``mm``, ``addmm``,
  ``bmm``, ``convolution``, attention), not BatchNorm, activations, pooling or bias additions,
  the usual convention of MAC counts in papers.
* File size: the bytes of ``torch.save(network.state_dict())``, the deployable weights
  (what ``lightning-kd export --format state_dict`` writes), not the training checkpoint.
* Time: :func:`time_calls` runs a callable ``warmup`` times untimed, then ``repeats`` times,
  each call timed alone with ``time.perf_counter``; the result keeps the median, the
  quartiles and the min / max of the repeats, the batch size and torch's thread count.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Timing",
    "count_macs",
    "count_parameters",
    "state_dict_bytes",
    "time_calls",
    "time_network",
]


def count_parameters(network: nn.Module) -> int:
    """Number of parameter elements (each shared parameter once)."""
    return sum(p.numel() for p in network.parameters())


def count_macs(network: nn.Module, example: Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``example``.

    Args:
        network: The network (put in eval mode by the caller).
        example: An input batch ``(B, ...)``; give ``B = 1`` for MACs per image.

    Returns:
        ``FLOPs / 2`` as counted by ``FlopCounterMode`` (see the module docstring).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(example)
    return int(counter.get_total_flops()) // 2


def state_dict_bytes(network: nn.Module) -> int:
    """Size in bytes of ``torch.save(network.state_dict())``."""
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@dataclass(frozen=True)
class Timing:
    """Seconds per call of repeated, individually timed calls after a warm-up.

    Attributes:
        batch_size: Images per call.
        repeats: Timed calls.
        warmup: Untimed calls before them.
        threads: ``torch.get_num_threads()`` (or the runtime's thread count) during the calls.
        median_s, q1_s, q3_s, min_s, max_s: The median, quartiles (inclusive method), minimum
            and maximum of the timed calls, in seconds.
    """

    batch_size: int
    repeats: int
    warmup: int
    threads: int
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float

    @property
    def median_ms(self) -> float:
        """Median milliseconds per call."""
        return self.median_s * 1e3

    @property
    def images_per_s(self) -> float:
        """Throughput of the median call: ``batch_size / median_s``."""
        return self.batch_size / self.median_s

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["median_ms"] = self.median_ms
        values["images_per_s"] = self.images_per_s
        # The quartiles of the time are the quartiles of the throughput, swapped.
        values["images_per_s_q1"] = self.batch_size / self.q3_s
        values["images_per_s_q3"] = self.batch_size / self.q1_s
        return values


def time_calls(
    call: Callable[[], object],
    *,
    batch_size: int,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> Timing:
    """Time ``call()``: ``warmup`` untimed calls, then ``repeats`` timed one by one.

    Args:
        call: What to time (e.g. one forward pass).
        batch_size: Images per call, recorded in the result.
        warmup: Untimed calls first (allocator, kernel selection, caches).
        repeats: Timed calls (>= 1).
        threads: Thread count to record; ``None`` records ``torch.get_num_threads()``.

    Raises:
        ValueError: If ``repeats < 1``, ``warmup < 0`` or ``batch_size < 1``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    if repeats > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return Timing(
        batch_size=batch_size,
        repeats=repeats,
        warmup=warmup,
        threads=torch.get_num_threads() if threads is None else threads,
        median_s=statistics.median(times),
        q1_s=q1,
        q3_s=q3,
        min_s=min(times),
        max_s=max(times),
    )


def time_network(
    network: nn.Module, example: Tensor, *, warmup: int = 5, repeats: int = 30
) -> Timing:
    """Time the forward pass of ``network`` on ``example`` ``(B, ...)`` under
    ``torch.inference_mode`` (the network should be in eval mode)."""

    def forward() -> None:
        with torch.inference_mode():
            network(example)

    return time_calls(forward, batch_size=example.shape[0], warmup=warmup, repeats=repeats)
