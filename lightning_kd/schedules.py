"""Schedules as pure functions of the optimizer step.

Call them with ``trainer.global_step`` and, for the length, with
``trainer.estimated_stepping_batches`` (never ``len(dataloader) * max_epochs``, which
ignores gradient accumulation and ``limit_train_batches``). They hold no state, so
resuming from a checkpoint needs nothing beyond the restored step.
"""

from __future__ import annotations

import math

__all__ = ["cosine_schedule", "linear_warmup", "sigmoid_rampup"]


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at ``total_steps``.

    ::

        value = end - (end - start) * (1 + cos(pi * step / total_steps)) / 2

    ``step`` is clamped to ``[0, total_steps]``: earlier steps give ``start`` and later
    steps give ``end``. The midpoint gives ``(start + end) / 2``; e.g. a BYOL/DINO EMA
    momentum going from 0.996 to 1 is 0.998 halfway.

    Args:
        step: Current step (e.g. ``trainer.global_step``).
        total_steps: Length of the schedule, > 0.
        start: Value at step 0.
        end: Value at ``total_steps`` and after.

    Returns:
        The scheduled value.

    Raises:
        ValueError: If ``total_steps <= 0``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step <= 0:
        return start
    if step >= total_steps:
        return end
    return end - (end - start) * (1.0 + math.cos(math.pi * step / total_steps)) / 2.0


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ramp from ``start`` at step 0 to ``end`` at ``warmup_steps``, then constant.

    ::

        value = start + (end - start) * step / warmup_steps   for 0 <= step < warmup_steps
        value = end                                            for step >= warmup_steps

    Negative steps give ``start``; ``warmup_steps == 0`` means no warmup (always ``end``).

    Args:
        step: Current step (e.g. ``trainer.global_step``).
        warmup_steps: Length of the ramp, >= 0.
        start: Value at step 0.
        end: Value from ``warmup_steps`` on.

    Returns:
        The scheduled value.

    Raises:
        ValueError: If ``warmup_steps < 0``.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if step >= warmup_steps:
        return end
    if step <= 0:
        return start
    return start + (end - start) * step / warmup_steps


def sigmoid_rampup(step: int, rampup_steps: int, max_value: float = 1.0) -> float:
    """Sigmoid-shaped ramp-up of Laine & Aila (2017) and Tarvainen & Valpola (2017).

    ::

        t = clip(step / rampup_steps, 0, 1)
        value = max_value * exp(-5 * (1 - t)^2)

    Starts at ``exp(-5) * max_value`` (about 0.0067 of the maximum, not 0), is
    ``exp(-1.25) * max_value`` halfway and ``max_value`` from ``rampup_steps`` on.
    ``rampup_steps == 0`` means no ramp (always ``max_value``).

    Args:
        step: Current step (e.g. ``trainer.global_step``).
        rampup_steps: Length of the ramp, >= 0.
        max_value: Value reached at the end of the ramp.

    Returns:
        The scheduled value.

    Raises:
        ValueError: If ``rampup_steps < 0``.
    """
    if rampup_steps < 0:
        raise ValueError(f"rampup_steps must be >= 0, got {rampup_steps}")
    if rampup_steps == 0 or step >= rampup_steps:
        return max_value
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return max_value * math.exp(-5.0 * (1.0 - t) ** 2)
