"""Exponential moving average (EMA) of one module's weights into another.

There is one helper, :func:`ema_update_`, and one declaration, :class:`EMAPair`. A module
lists its pairs in :meth:`~lightning_kd.modules.base.LightningKDModule.ema_pairs` and its
momentum as a pure function of the optimizer step in
:meth:`~lightning_kd.modules.base.LightningKDModule.ema_momentum`; the base class calls
:func:`ema_update_` on every pair once per optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["BufferPolicy", "EMAPair", "ema_update_"]

#: What :func:`ema_update_` does with the teacher's floating-point buffers.
BufferPolicy = Literal["average", "copy", "keep"]


class EMAPair(NamedTuple):
    """One ``(teacher, student)`` pair kept as an EMA: ``teacher`` follows ``student``.

    Attributes:
        teacher: The EMA copy, updated in place (never trained).
        student: The trained network it follows; same parameter and buffer names and shapes.
        buffers: The teacher's floating-point buffers: ``"average"``, ``"copy"`` or ``"keep"``
            (see :func:`ema_update_`).
    """

    teacher: nn.Module
    student: nn.Module
    buffers: BufferPolicy = "copy"


_MAX_NAMES_SHOWN = 8


@torch.no_grad()
def ema_update_(
    teacher: nn.Module,
    student: nn.Module,
    *,
    momentum: float,
    buffers: BufferPolicy = "copy",
) -> None:
    """Move ``teacher`` toward ``student`` in place: ``theta_t <- m * theta_t + (1 - m) * theta_s``.

    Every parameter is updated with ``torch._foreach_lerp_(teacher, student, 1 - m)``.
    ``momentum = 0`` copies the student exactly, ``momentum = 1`` leaves the teacher
    exactly unchanged. Floating-point buffers (e.g. BatchNorm running statistics) are
    averaged the same way when ``buffers="average"`` and copied when ``buffers="copy"``;
    non-floating buffers (e.g. BatchNorm ``num_batches_tracked``) are then always copied.
    ``buffers="keep"`` leaves every teacher buffer alone, for a teacher that runs in training
    mode and tracks its own BatchNorm statistics (DINO, BYOL).

    Runs under ``torch.no_grad()``: no autograd graph is recorded and the teacher's
    ``.grad`` is never touched. The teacher keeps its own dtype and device; student
    tensors are converted to them where they differ.

    Args:
        teacher: Module updated in place (the EMA / teacher copy).
        student: Module read from (the online / trained network). Must have exactly the
            same parameter and buffer names and shapes as ``teacher``.
        momentum: ``m`` in ``[0, 1]``; the fraction of the old teacher value kept.
        buffers: ``"average"`` to EMA floating-point buffers too, ``"copy"`` to copy them,
            ``"keep"`` to leave the teacher's buffers unchanged.

    Raises:
        ValueError: If ``momentum`` is outside ``[0, 1]``, ``buffers`` is not a known mode,
            or the two modules' parameter / buffer names or shapes differ.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if buffers not in ("average", "copy", "keep"):
        raise ValueError(f"buffers must be 'average', 'copy' or 'keep', got {buffers!r}")

    param_pairs = _pair_by_name(teacher.named_parameters(), student.named_parameters(), "parameter")
    buffer_pairs = _pair_by_name(teacher.named_buffers(), student.named_buffers(), "buffer")

    lerp_t: list[Tensor] = []
    lerp_s: list[Tensor] = []
    copy_t: list[Tensor] = []
    copy_s: list[Tensor] = []
    for t, s in param_pairs:
        _route(t, s, average=True, lerp=(lerp_t, lerp_s), copy=(copy_t, copy_s))
    for t, s in buffer_pairs if buffers != "keep" else []:
        _route(t, s, average=buffers == "average", lerp=(lerp_t, lerp_s), copy=(copy_t, copy_s))

    if lerp_t:
        torch._foreach_lerp_(lerp_t, lerp_s, 1.0 - momentum)
    if copy_t:
        torch._foreach_copy_(copy_t, copy_s)


def _route(
    t: Tensor,
    s: Tensor,
    *,
    average: bool,
    lerp: tuple[list[Tensor], list[Tensor]],
    copy: tuple[list[Tensor], list[Tensor]],
) -> None:
    """Append ``(t, s)`` to the lerp lists (floating, ``average``) or to the copy lists."""
    if t.dtype != s.dtype or t.device != s.device:
        s = s.to(device=t.device, dtype=t.dtype)
    targets, sources = lerp if average and t.is_floating_point() else copy
    targets.append(t)
    sources.append(s)


def _pair_by_name(
    teacher_named: Iterator[tuple[str, Tensor]],
    student_named: Iterator[tuple[str, Tensor]],
    kind: str,
) -> list[tuple[Tensor, Tensor]]:
    """Pair teacher and student tensors by name, raising if names or shapes differ."""
    teacher_map = dict(teacher_named)
    student_map = dict(student_named)
    missing = [n for n in teacher_map if n not in student_map]
    extra = [n for n in student_map if n not in teacher_map]
    if missing or extra:
        raise ValueError(
            f"teacher and student architectures differ: {kind}s missing from student: "
            f"{_names(missing)}; extra {kind}s in student: {_names(extra)}"
        )
    pairs = []
    for name, t in teacher_map.items():
        s = student_map[name]
        if t.shape != s.shape:
            raise ValueError(
                f"teacher and student architectures differ: {kind} {name!r} has shape "
                f"{tuple(t.shape)} in teacher and {tuple(s.shape)} in student"
            )
        pairs.append((t, s))
    return pairs


def _names(names: Iterable[str]) -> str:
    names = list(names)
    if not names:
        return "none"
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return f"[{shown}, ... ({more} more)]" if more > 0 else f"[{shown}]"
