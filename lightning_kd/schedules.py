"""Schedules as pure functions of the optimizer step.

Call them with ``trainer.global_step`` and, for the length, with
``trainer.estimated_stepping_batches`` (never ``len(dataloader) * max_epochs``, which
ignores gradient accumulation and ``limit_train_batches``). They hold no state, so
resuming from a checkpoint needs nothing beyond the restored step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

__all__ = ["check_run_length", "cosine_schedule", "linear_warmup", "run_length", "sigmoid_rampup"]


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


def run_length(trainer: L.Trainer, interval: str) -> int:
    """Scheduler steps of the whole run: optimizer steps (``interval="step"``, from
    ``trainer.estimated_stepping_batches``, which counts accumulation, ``limit_train_batches``
    and ``max_steps``) or epochs (``"epoch"``, ``trainer.max_epochs``).

    Raises:
        ValueError: If the run has no finite length (``max_epochs=-1`` without ``max_steps``).
    """
    if interval == "step":
        total = trainer.estimated_stepping_batches
    else:
        total = trainer.max_epochs if trainer.max_epochs is not None else math.inf
    if not math.isfinite(total) or total < 1:
        raise ValueError(
            f"the LR schedule needs the run length, but this run has none (scheduler_interval="
            f"{interval!r}: {total}); set trainer.max_epochs or trainer.max_steps"
        )
    return int(total)


def _scheduler_class(factory: Callable[..., Any]) -> type | None:
    """The class a scheduler factory builds: the factory itself, or the class a
    ``functools.partial`` wraps (what LightningCLI and jsonargparse make from YAML)."""
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        inner = [factory.func, *factory.args]
        return next((x for x in inner if isinstance(x, type)), None)
    return None


def check_run_length(
    factory: Callable[..., Any], optimizer: Optimizer, trainer: L.Trainer, *, interval: str
) -> LRScheduler:
    """Build an LR scheduler whose length matches the run.

    ``OneCycleLR`` is the scheduler that breaks when the run length changes: it raises after
    ``total_steps`` steps, or never finishes its annealing. Built without ``total_steps``
    (and without ``epochs`` / ``steps_per_epoch``) it gets the run's length from
    :func:`run_length`; built with one, that length must equal the run's, else this fails
    before training starts (skipped under ``fast_dev_run``). Other schedulers are built as
    they are.

    Args:
        factory: Callable from the optimizer to the scheduler (the module's ``scheduler``).
        optimizer: The optimizer to schedule.
        trainer: The running trainer.
        interval: ``"step"`` or ``"epoch"``: how often Lightning steps the scheduler.

    Raises:
        ValueError: If a ``OneCycleLR`` length in the config differs from the run's.
    """
    cls = _scheduler_class(factory)
    if cls is None or not issubclass(cls, OneCycleLR):
        scheduler = factory(optimizer)
        if not isinstance(scheduler, OneCycleLR):
            return scheduler
    else:
        keywords = factory.keywords if isinstance(factory, functools.partial) else {}
        if keywords.get("total_steps") is None and keywords.get("epochs") is None:
            return factory(optimizer, total_steps=run_length(trainer, interval))
        scheduler = factory(optimizer)
    expected = run_length(trainer, interval)
    if scheduler.total_steps != expected and not getattr(trainer, "fast_dev_run", False):
        unit = "optimizer steps" if interval == "step" else "epochs"
        raise ValueError(
            f"OneCycleLR is set to {scheduler.total_steps} {unit}, but this run makes "
            f"{expected} {unit} (scheduler_interval={interval!r}, max_epochs="
            f"{trainer.max_epochs}, max_steps={trainer.max_steps}). Remove total_steps (and "
            "epochs / steps_per_epoch) from the scheduler's init_args to take the length from "
            "the trainer."
        )
    return scheduler
