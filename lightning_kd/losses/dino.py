"""DINO self-distillation loss, the teacher-output center, and a collapse monitor.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (ICCV 2021). A
student and an EMA teacher with the same projection head
(:class:`lightning_kd.models.heads.DINOHead`) see several augmented views of each image: the
teacher only the ``V_t`` global views, the student all ``V_s`` views (the same global views
first, then the local crops). The student is trained to predict, from every view, the
teacher's centred and sharpened distribution on every *other* view.

Input layout (shared by :func:`dino_loss`, :func:`teacher_entropy` and
:meth:`DINOCenter.accumulate`): the outputs of one network are either a sequence of ``V``
tensors of shape ``(B, K)`` (one per view, view ``v`` holding the ``B`` images of the batch in
the same order in every view) or one tensor of shape ``(V, B, K)``. Teacher view ``i`` and
student view ``i`` must be the same augmented view for ``i < V_t``; student views
``V_t .. V_s - 1`` are the extra (local) views.

Call order for one optimizer step of ``A`` micro-batches (``A = accumulate_grad_batches``)::

    for each micro-batch:
        loss = dino_loss(s_out, t_out, center.center, student_temperature=0.1,
                         teacher_temperature=0.04)  # pure
        center.accumulate(t_out)                     # adds row sums and counts, no collective
        ...                                          # backward as usual
    optimizer.step()
    center.update()                                  # one all-reduce, one center move

All softmax math runs in float32, also under ``torch.autocast``. Validation only looks at
Python scalars, shapes and dtypes, so it never synchronizes with the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.distributed import all_reduce_sum_
from lightning_kd.losses.logit import _float32_math

__all__ = ["DINOCenter", "dino_loss", "teacher_entropy"]

ViewOutputs = Sequence[Tensor] | Tensor
"""``V`` tensors of shape ``(B, K)``, or one ``(V, B, K)`` tensor."""


def dino_loss(
    student_out: ViewOutputs,
    teacher_out: ViewOutputs,
    center: Tensor,
    *,
    student_temperature: float,
    teacher_temperature: float,
) -> Tensor:
    """DINO cross-entropy between centred, sharpened teacher views and the other student views.

    With teacher outputs ``t_i`` (``i < V_t``), student outputs ``s_j`` (``j < V_s``), all of
    shape ``(B, K)``, and the center ``c``::

        q_i = softmax((t_i - c) / tau_t)                # detached targets, (B, K)
        log p_j = log_softmax(s_j / tau_s)              # (B, K)
        H(i, j) = (1 / B) * sum_b ( -sum_k q_i[b, k] * log p_j[b, k] )
        loss = (1 / P) * sum_{i < V_t, j < V_s, i != j} H(i, j)

    with ``P = V_t * V_s - V_t`` pairs (a view is never compared with itself). The loss is
    the mean over pairs of the batch-mean cross-entropy; no temperature factor is applied.
    The gradient with respect to ``s_j`` is
    ``sum_{i != j} (p_j - q_i) / (tau_s * P * B)``. The teacher outputs and the center are
    detached, so no gradient reaches them.

    Args:
        student_out: Student logits: ``V_s`` tensors of shape ``(B, K)`` or one
            ``(V_s, B, K)`` tensor; the ``V_t`` global views first, then the local views.
        teacher_out: Teacher logits: ``V_t`` tensors of shape ``(B, K)`` or one
            ``(V_t, B, K)`` tensor, ``1 <= V_t <= V_s``; view ``i`` is the same image view as
            student view ``i``.
        center: Center ``c`` of shape ``(K,)`` or ``(1, K)``, e.g. ``DINOCenter.center``.
        student_temperature: ``tau_s > 0`` (0.1 in the paper).
        teacher_temperature: ``tau_t > 0`` (0.04 to 0.07 in the paper).

    Returns:
        Scalar float32 loss; ``log K`` when all distributions are uniform.

    Raises:
        TypeError: If an output or the center is not floating point, or an output is not
            a tensor or sequence of tensors.
        ValueError: On a temperature that is not a finite number > 0, views of different or
            non-``(B, K)`` shapes, ``V_t > V_s``, no ``i != j`` pair (``V_s = 1``), or a
            center whose shape is not ``(K,)`` / ``(1, K)``.
    """
    _check_temperature("student_temperature", student_temperature)
    _check_temperature("teacher_temperature", teacher_temperature)
    student = _views("student_out", student_out)  # V_s x (B, K)
    teacher = _views("teacher_out", teacher_out)  # V_t x (B, K)
    n_student, n_teacher = len(student), len(teacher)
    if student[0].shape != teacher[0].shape:
        raise ValueError(
            f"student and teacher views must have the same shape (B, K), got student "
            f"{tuple(student[0].shape)} and teacher {tuple(teacher[0].shape)}"
        )
    if n_teacher > n_student:
        raise ValueError(
            f"teacher_out must not have more views than student_out, got V_t={n_teacher} "
            f"teacher views and V_s={n_student} student views"
        )
    n_pairs = n_teacher * n_student - n_teacher
    if n_pairs < 1:
        raise ValueError(
            f"dino_loss needs at least one (teacher i, student j) pair with i != j, got "
            f"V_t={n_teacher} and V_s={n_student} (give the student at least 2 views)"
        )
    batch, num_outputs = student[0].shape
    center_row = _center_row(center, num_outputs)  # (K,)
    with _float32_math(student[0]):
        targets = [_teacher_probs(t, center_row, teacher_temperature) for t in teacher]
        log_probs = [F.log_softmax(s.float() / student_temperature, dim=-1) for s in student]
        # Elementwise products, not a matmul: no TF32 rounding when it is enabled globally.
        terms = [
            -(q * log_probs[j]).sum()  # B times the batch-mean cross-entropy H(i, j)
            for i, q in enumerate(targets)
            for j in range(n_student)
            if j != i
        ]
        total = torch.stack(terms).sum()
        return total / (n_pairs * batch)


def teacher_entropy(
    teacher_out: ViewOutputs, center: Tensor, *, teacher_temperature: float
) -> Tensor:
    """Mean entropy (nats) of the centred, sharpened teacher distribution, for monitoring.

    ::

        q = softmax((t - c) / tau_t)                   # every row of every view
        entropy = mean over rows of ( -sum_k q[k] * log q[k] )

    ``log K`` means the teacher output is uniform (collapse to the center), ``0`` means one-hot
    (collapse to one dimension); a healthy run stays in between. Computed without gradient.

    Args:
        teacher_out: Teacher logits: ``V_t`` tensors of shape ``(B, K)`` or one
            ``(V_t, B, K)`` tensor.
        center: Center of shape ``(K,)`` or ``(1, K)``.
        teacher_temperature: ``tau_t > 0``.

    Returns:
        Scalar float32 tensor in ``[0, log K]``.

    Raises:
        TypeError: If an output or the center is not floating point.
        ValueError: On a bad temperature, bad view shapes or a center that is not
            ``(K,)`` / ``(1, K)``.
    """
    _check_temperature("teacher_temperature", teacher_temperature)
    teacher = _views("teacher_out", teacher_out)  # V_t x (B, K)
    center_row = _center_row(center, teacher[0].shape[1])  # (K,)
    with torch.no_grad(), _float32_math(teacher[0]):
        entropies = []
        for view in teacher:
            log_q = F.log_softmax((view.float() - center_row) / teacher_temperature, dim=-1)
            entropies.append(-(log_q.exp() * log_q).sum(dim=-1).mean())  # per-view mean
        return torch.stack(entropies).mean()  # views have equal B: the mean over all rows


class DINOCenter(nn.Module):
    """Momentum average of the teacher outputs, subtracted before the teacher softmax.

    State: the persistent float32 buffer ``center`` of shape ``(1, dim)``, initialised to
    zeros (saved in checkpoints, moved with the module). :meth:`forward` returns it and never
    mutates it. The center changes in two explicit steps, so that it moves once per optimizer
    step whatever the gradient accumulation:

    * :meth:`accumulate` adds the row sum and row count of some teacher outputs to a pending
      total (local to the process; no collective);
    * :meth:`update` all-reduces the pending total once over the DDP processes, moves the
      center to ``m * c + (1 - m) * mean`` and empties it. :meth:`reset` empties it without
      moving the center (a skipped optimizer step).

    The pending total is a plain attribute, neither a buffer nor part of the ``state_dict``:
    it is empty at every optimizer-step boundary, where checkpoints are written, and a buffer
    would be overwritten by DDP's buffer broadcast at every forward.

    Args:
        dim: Output dimension ``K`` of the teacher head, ``>= 1``.
        momentum: ``m`` in ``[0, 1]`` of ``c <- m * c + (1 - m) * mean`` (0.9 in the paper).
            ``m = 0`` replaces the center with the mean, ``m = 1`` never changes it.

    Raises:
        ValueError: If ``dim < 1`` or ``momentum`` is outside ``[0, 1]``.
    """

    center: Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.dim = dim
        self.momentum = float(momentum)
        self.register_buffer("center", torch.zeros(1, dim, dtype=torch.float32))
        # Pending [row sum (K,), row count] since the last update, float32 (K + 1,); None when
        # empty. A host-side row count goes with it (from shapes, so no device sync).
        self._pending: Tensor | None = None
        self._pending_rows = 0

    def forward(self) -> Tensor:
        """The current center, shape ``(1, dim)`` (no copy; does not mutate anything)."""
        return self.center

    @property
    def pending_rows(self) -> int:
        """Rows accumulated on this process since the last :meth:`update` / :meth:`reset`."""
        return self._pending_rows

    @torch.no_grad()
    def accumulate(self, teacher_out: ViewOutputs) -> None:
        """Add the rows of ``teacher_out`` to the pending total of the next :meth:`update`.

        Local to the process (no collective); call it for every micro-batch of an optimizer
        step, after the loss was computed with the current center (which it does not change).

        Args:
            teacher_out: Teacher logits: a sequence of ``(B_v, K)`` tensors (the row counts
                may differ), one ``(N, K)`` tensor or one ``(V, B, K)`` tensor, with
                ``K = dim``. Used without gradient.

        Raises:
            TypeError: If an output is not a floating-point tensor.
            ValueError: If the last dimension is not ``dim``, an output has no rows, or the
                sequence is empty.
        """
        parts = self._row_blocks(teacher_out)  # each (N_v, K)
        with _float32_math(parts[0]):
            stats = self._pending
            if stats is None:
                stats = torch.zeros(self.dim + 1, dtype=torch.float32, device=parts[0].device)
            for part in parts:
                stats[: self.dim] += part.float().sum(dim=0)  # (K,)
                stats[self.dim] += part.shape[0]
                self._pending_rows += part.shape[0]
        self._pending = stats

    @torch.no_grad()
    def update(self) -> None:
        """Move the center towards the mean of the rows accumulated since the last update.

        ::

            mean = (pending row sum, all ranks) / (pending row count, all ranks)
            center <- m * center + (1 - m) * mean

        Under DDP (``torch.distributed`` available and initialised, world size > 1) the pending
        sum and count are all-reduced (summed) in one call, so every rank gets the exact mean
        of the global rows, also when ranks have different batch sizes, and the centers stay
        identical. Every rank must then call ``update`` (it is a collective), also one that
        accumulated nothing. With no rows on any rank the center is left unchanged. The pending
        total is emptied.
        """
        stats = self._pending
        if stats is None:
            stats = torch.zeros(self.dim + 1, dtype=torch.float32, device=self.center.device)
        self.reset()
        all_reduce_sum_(stats)
        count = stats[self.dim]
        mean = (stats[: self.dim] / count.clamp(min=1.0)).unsqueeze(0)  # (1, K)
        moved = self.center.mul(self.momentum).add_(mean.to(self.center), alpha=1.0 - self.momentum)
        # No host sync on the count: an empty update keeps the center as it is.
        self.center.copy_(torch.where(count > 0, moved, self.center))

    def reset(self) -> None:
        """Drop the pending total without moving the center (e.g. a skipped optimizer step)."""
        self._pending = None
        self._pending_rows = 0

    def _row_blocks(self, teacher_out: ViewOutputs) -> list[Tensor]:
        """``teacher_out`` as a list of detached ``(N_v, K)`` blocks, validated."""
        if isinstance(teacher_out, Tensor):
            parts = [teacher_out]
        elif isinstance(teacher_out, Sequence) and len(teacher_out) > 0:
            parts = list(teacher_out)
        else:
            raise ValueError(
                "teacher_out must be a tensor or a non-empty sequence of (B, K) tensors, "
                f"got {_describe(teacher_out)}"
            )
        for index, part in enumerate(parts):
            name = "teacher_out" if isinstance(teacher_out, Tensor) else f"teacher_out[{index}]"
            if not isinstance(part, Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(part).__name__}")
            if not part.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {part.dtype}")
            if part.dim() not in (2, 3) or part.shape[-1] != self.dim or part.numel() == 0:
                raise ValueError(
                    f"{name} must have shape (N, {self.dim}) or (V, B, {self.dim}) with at "
                    f"least one row, got {tuple(part.shape)}"
                )
        return [part.detach().reshape(-1, self.dim) for part in parts]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, momentum={self.momentum}"


def _teacher_probs(teacher: Tensor, center_row: Tensor, temperature: float) -> Tensor:
    """Detached float32 ``softmax((t - c) / tau_t)`` of ``(B, K)`` teacher logits."""
    centred = teacher.detach().float() - center_row.detach()
    return F.softmax(centred / temperature, dim=-1)


def _center_row(center: Tensor, num_outputs: int) -> Tensor:
    """Validate ``center`` against ``K`` and return it as a float32 ``(K,)`` tensor."""
    if not isinstance(center, Tensor):
        raise TypeError(f"center must be a tensor, got {type(center).__name__}")
    if not center.is_floating_point():
        raise TypeError(f"center must be a floating-point tensor, got dtype {center.dtype}")
    if tuple(center.shape) not in ((num_outputs,), (1, num_outputs)):
        raise ValueError(
            f"center must have shape ({num_outputs},) or (1, {num_outputs}) to match the "
            f"outputs, got {tuple(center.shape)}"
        )
    return center.float().reshape(num_outputs)


def _views(name: str, out: ViewOutputs) -> list[Tensor]:
    """Validate the views of one network: a non-empty list of equal ``(B, K)`` tensors."""
    if isinstance(out, Tensor):
        if not out.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {out.dtype}")
        if out.dim() != 3 or 0 in out.shape:
            raise ValueError(
                f"{name} as a tensor must be non-empty and 3-D (V, B, K), got shape "
                f"{tuple(out.shape)} (pass a list of (B, K) tensors for separate views)"
            )
        return list(out.unbind(0))
    if not isinstance(out, Sequence) or len(out) == 0:
        raise ValueError(
            f"{name} must be a (V, B, K) tensor or a non-empty sequence of (B, K) tensors, "
            f"got {_describe(out)}"
        )
    views = list(out)
    for index, view in enumerate(views):
        if not isinstance(view, Tensor):
            raise TypeError(f"{name}[{index}] must be a tensor, got {type(view).__name__}")
        if not view.is_floating_point():
            raise TypeError(
                f"{name}[{index}] must be a floating-point tensor, got dtype {view.dtype}"
            )
        if view.dim() != 2 or 0 in view.shape:
            raise ValueError(
                f"{name}[{index}] must be non-empty and 2-D (B, K), got shape {tuple(view.shape)}"
            )
        if view.shape != views[0].shape:
            raise ValueError(
                f"all views of {name} must have the same shape (B, K), got "
                f"{tuple(views[0].shape)} for view 0 and {tuple(view.shape)} for view {index}"
            )
    return views


def _describe(value: object) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _check_temperature(name: str, temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature}")
