"""Curriculum temperature KD (CTKD; Li et al., "Curriculum Temperature for Knowledge
Distillation", AAAI 2023).

CTKD learns the KD temperature adversarially: one global temperature ``T`` is a trained
parameter, but the gradient that reaches it passes a *gradient reversal* layer, so while the
student descends the KD loss the temperature ascends it (it makes the task harder). The
reversal weight follows a curriculum from 0 (no adversary) to -1 over the first epochs
(:func:`ctkd_lambda`).

Pieces, each small and pure:

* :class:`GradientReversal` / :func:`gradient_reversal`: identity forward, gradient times
  ``lambda_`` backward.
* :class:`GlobalTemperature`: the learnable parameter ``g`` and ``T = 1 + 20 * sigmoid(g)``.
* :func:`ctkd_lambda`: the cosine curriculum of the reversal weight, a pure function of the
  epoch.
* :func:`ctkd_kd_loss`: Hinton's ``T^2 * KL`` for a temperature *tensor* (so the gradient
  reaches ``T``); :func:`~lightning_kd.losses.kd_loss` takes a Python float.

As in :mod:`lightning_kd.losses.logit`, the math runs in float32 with autocast disabled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.losses.logit import _check_floating, _check_logits_pair, _float32_math
from lightning_kd.schedules import cosine_schedule

__all__ = [
    "GlobalTemperature",
    "GradientReversal",
    "ctkd_kd_loss",
    "ctkd_lambda",
    "gradient_reversal",
]


class GradientReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``lambda_`` in the backward.

    The weight is applied **as given**, as in the CTKD authors' code (``dx = lambda_ * grads``):
    a negative ``lambda_`` reverses the gradient, ``0`` blocks it, ``1`` leaves it unchanged.
    (Ganin & Lempitsky's layer multiplies by ``-lambda`` with ``lambda >= 0``; CTKD instead
    schedules ``lambda_`` from 0 to -1, see :func:`ctkd_lambda`.) Use :func:`gradient_reversal`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * ctx.lambda_, None


def gradient_reversal(x: Tensor, lambda_: float) -> Tensor:
    """``x`` unchanged, with its gradient multiplied by ``lambda_`` on the way back.

    Args:
        x: Any tensor.
        lambda_: Finite gradient weight; CTKD uses values in ``[-1, 0]`` (negative reverses).

    Returns:
        A tensor equal to ``x``.

    Raises:
        ValueError: If ``lambda_`` is not finite.
    """
    if not math.isfinite(lambda_):
        raise ValueError(f"lambda_ must be a finite number, got {lambda_}")
    out: Tensor = GradientReversal.apply(x, float(lambda_))
    return out


def ctkd_lambda(
    epoch: int, *, num_epochs: int = 10, start: float = 0.0, end: float = -1.0
) -> float:
    """CTKD's cosine curriculum of the gradient-reversal weight.

    ::

        lambda(e) = end + (start - end) * (1 + cos(pi * min(e, num_epochs) / num_epochs)) / 2

    With the authors' CIFAR values (``start = 0``, ``end = -1``, ``num_epochs = 10``) that is
    ``(cos(pi * min(e, 10) / 10) + 1) / 2 - 1``: 0 at ``e = 0``, -0.5 at 5, -1 from 10 on.
    ``epoch`` is counted **from 1** in the authors' loop (``for epoch in range(1, epochs + 1)``),
    so their first epoch already trains with ``lambda(1) = -0.0245``;
    :class:`~lightning_kd.modules.CTKDTerm` passes Lightning's 0-based epoch plus one.

    Args:
        epoch: The curriculum step (an epoch count); values below 0 give ``start``.
        num_epochs: Length of the curriculum, > 0 (the authors' ``decay_loops``, 10).
        start: Weight at epoch 0 (the authors' ``decay_max``, 0).
        end: Weight from ``num_epochs`` on (the authors' ``decay_min``, -1).

    Returns:
        The reversal weight for :func:`gradient_reversal`.

    Raises:
        ValueError: If ``num_epochs <= 0``.
    """
    return cosine_schedule(epoch, num_epochs, start, end)


class GlobalTemperature(nn.Module):
    """CTKD's learnable global temperature ``T = min_temperature + temperature_range *
    sigmoid(g)``.

    ``g`` is a one-element parameter initialised to ``init`` (the authors: ``torch.ones(1)``,
    so ``T`` starts at ``1 + 20 * sigmoid(1) = 15.62``); ``T`` stays in
    ``(min_temperature, min_temperature + temperature_range)``, i.e. ``(1, 21)`` with the
    authors' ``t_start = 1, t_end = 20`` (``t_end`` is the range, not the upper end). The
    gradient reversal is applied to ``g`` before the sigmoid, as in the authors' ``Global_T``.

    Register it on the LightningModule (e.g. inside a term) so the optimizer, checkpoints and
    DDP's gradient all-reduce see ``g``.

    Args:
        min_temperature: Lower end of ``T`` (> 0).
        temperature_range: Width of the range of ``T`` (> 0).
        init: Initial value of ``g``.
    """

    def __init__(
        self, min_temperature: float = 1.0, temperature_range: float = 20.0, init: float = 1.0
    ) -> None:
        super().__init__()
        for name, value in (
            ("min_temperature", min_temperature),
            ("temperature_range", temperature_range),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not math.isfinite(init):
            raise ValueError(f"init must be a finite number, got {init}")
        self.min_temperature = min_temperature
        self.temperature_range = temperature_range
        self.g = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, lambda_: float) -> Tensor:
        """The temperature, a 0-D float32 tensor whose gradient reaches ``g`` times
        ``lambda_``."""
        with _float32_math(self.g):
            g = gradient_reversal(self.g.float(), lambda_)  # (1,)
            return (self.min_temperature + self.temperature_range * torch.sigmoid(g)).squeeze(0)


def ctkd_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor) -> Tensor:
    """Hinton's ``T^2 * KL(p_t || p_s)`` with a temperature tensor that carries gradient.

    Same formula as :func:`~lightning_kd.losses.kd_loss`, with ``p = softmax(z / T)`` over the
    rows of ``(B, C)``, KL summed over classes and averaged over the batch, ``T^2`` **included**;
    here ``T`` is a 0-D (or one-element) tensor, e.g. :class:`GlobalTemperature`'s output, and
    the loss is differentiable in it. Its value is not checked (that would sync the device);
    :class:`GlobalTemperature` keeps it above its ``min_temperature``.

    Args:
        student_logits: Student logits ``z_s``, shape ``(B, C)``, floating point.
        teacher_logits: Teacher logits ``z_t``, shape ``(B, C)``, floating point (not detached).
        temperature: ``T > 0``, a floating-point tensor with one element.

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If the logits or ``temperature`` are not floating point.
        ValueError: If the logits are not 2-D of the same shape, or ``temperature`` has more
            than one element.
    """
    _check_logits_pair(student_logits, teacher_logits)
    _check_floating("temperature", temperature)
    if temperature.numel() != 1:
        raise ValueError(f"temperature must have one element, got shape {tuple(temperature.shape)}")
    with _float32_math(student_logits):
        t = temperature.float().reshape(())
        log_p_s = F.log_softmax(student_logits.float() / t, dim=1)  # (B, C)
        log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)  # (B, C)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * t * t
