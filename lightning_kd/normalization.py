"""Re-normalising a batch for a network that expects another input normalisation.

A teacher trained elsewhere (an ImageNet-normalised timm or torchvision model) can expect
inputs normalised with other statistics than the student's batches (e.g. CIFAR-normalised).
:class:`Renormalize` maps one to the other exactly, on the batch's device, in one fused
multiply-add: with ``x = (raw - m_in) / s_in``,

    ``(raw - m_out) / s_out = x * (s_in / s_out) + (m_in - m_out) / s_out``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Renormalize"]


def _triple(name: str, values: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 0:
        raise ValueError(f"{name} must have one value per channel, got {values}")
    return values


class Renormalize(nn.Module):
    """``(B, C, H, W)`` images normalised with ``(input_mean, input_std)`` -> the same images
    normalised with ``(output_mean, output_std)``.

    The constants are non-persistent buffers (never in a checkpoint), so the module follows
    ``.to(device)`` and keeps the input's dtype and memory format.

    Args:
        input_mean, input_std: Per-channel statistics the batch was normalised with (the
            datamodule's ``mean`` / ``std``), in ``[0, 1]`` pixel units.
        output_mean, output_std: Per-channel statistics the network expects.

    Raises:
        ValueError: On channel counts that differ, or a standard deviation that is not > 0.
    """

    scale: Tensor
    shift: Tensor

    def __init__(
        self,
        input_mean: Sequence[float],
        input_std: Sequence[float],
        output_mean: Sequence[float],
        output_std: Sequence[float],
    ) -> None:
        super().__init__()
        stats = {
            "input_mean": _triple("input_mean", input_mean),
            "input_std": _triple("input_std", input_std),
            "output_mean": _triple("output_mean", output_mean),
            "output_std": _triple("output_std", output_std),
        }
        lengths = {name: len(v) for name, v in stats.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"mean and std must have the same number of channels, got {lengths}")
        for name in ("input_std", "output_std"):
            if not all(v > 0 for v in stats[name]):
                raise ValueError(f"{name} must be > 0 for every channel, got {stats[name]}")
        m_in, s_in = torch.tensor(stats["input_mean"]), torch.tensor(stats["input_std"])
        m_out, s_out = torch.tensor(stats["output_mean"]), torch.tensor(stats["output_std"])
        self.register_buffer("scale", (s_in / s_out).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - m_out) / s_out).view(1, -1, 1, 1), persistent=False)
        self.output_mean, self.output_std = stats["output_mean"], stats["output_std"]

    def forward(self, x: Tensor) -> Tensor:
        """Re-normalised images, same shape, dtype and memory format as ``x``."""
        if x.shape[1] != self.scale.shape[1]:
            raise ValueError(
                f"expected images with {self.scale.shape[1]} channels, got shape {tuple(x.shape)}"
            )
        return torch.addcmul(self.shift.to(x.dtype), x, self.scale.to(x.dtype))

    def extra_repr(self) -> str:
        return f"output_mean={self.output_mean}, output_std={self.output_std}"
