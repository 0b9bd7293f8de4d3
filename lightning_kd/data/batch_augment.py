"""Batched image augmentation and normalisation on tensors.

These functions work on a whole batch at once, on whatever device the batch lives on, with no
Python loop over samples. They replace the per-sample torchvision pipeline
``RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize`` for data that
already sits in memory as one ``uint8`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize", "normalize_constants", "random_crop_flip"]


def _check_batch(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")


def random_crop_flip(
    images_uint8: Tensor, *, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop after zero padding, then random horizontal flip, drawn per sample.

    Each sample gets its own crop offset ``(dy, dx)``, uniform in ``[0, 2 * padding]`` each,
    and is flipped left-right with probability 0.5: the same distribution as torchvision's
    ``RandomCrop(H, padding=padding)`` followed by ``RandomHorizontalFlip()``, with zero fill.
    The crop and flip are done by one ``gather`` over the padded batch.

    Args:
        images_uint8: Batch ``(B, C, H, W)``, normally ``uint8`` (any dtype works). Output
            windows have the input's size ``H x W``.
        padding: Zero padding added on every side before cropping; ``0`` means flip only.
        generator: Source of randomness; must live on ``images_uint8.device``. ``None`` uses
            torch's global RNG for that device, so ``seed_everything`` makes runs repeatable.

    Returns:
        Tensor ``(B, C, H, W)`` of the input's dtype and device (contiguous) where
        ``out[i] = flip_i(pad(images)[i, :, dy_i:dy_i + H, dx_i:dx_i + W])``.

    Raises:
        TypeError: If ``images_uint8`` is not a tensor.
        ValueError: If it is not 4-D or ``padding`` is negative.
    """
    _check_batch(images_uint8, "images_uint8")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    b, c, h, w = images_uint8.shape
    device = images_uint8.device
    # Draw order: offsets then flips, both on the batch's device.
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=device, generator=generator)
    flip = torch.randint(0, 2, (b,), device=device, generator=generator).bool()  # (B,)

    padded = F.pad(images_uint8.contiguous(), (padding, padding, padding, padding))
    wp = w + 2 * padding
    cols = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + offsets[1, :, None]  # (B, W)
    rows = torch.arange(h, device=device) + offsets[0, :, None]  # (B, H)
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)  # (B, 1, H*W)
    out = padded.reshape(b, c, -1).gather(2, index.expand(b, c, h * w))  # (B, C, H*W)
    return out.view(b, c, h, w)


def normalize_constants(
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    *,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Fold ``/255``, mean and std into one scale and shift.

    Args:
        mean: Per-channel mean of images scaled to ``[0, 1]``, length ``C``.
        std: Per-channel standard deviation, length ``C``, all ``> 0``.
        device: Where to put the constants.

    Returns:
        ``(scale, shift)``, float32 tensors ``(1, C, 1, 1)`` with
        ``scale = 1 / (255 * std)`` and ``shift = -mean / std``.

    Raises:
        ValueError: If lengths differ, are not 1-D, or a std is not positive.
    """
    m = torch.as_tensor(mean, dtype=torch.float64, device=device).flatten()
    s = torch.as_tensor(std, dtype=torch.float64, device=device).flatten()
    if m.numel() != s.numel() or m.numel() == 0:
        raise ValueError(
            f"mean and std must have the same length >= 1, got {m.numel()} and {s.numel()}"
        )
    if bool((s <= 0).any()):
        raise ValueError(f"std must be > 0 in every channel, got {s.tolist()}")
    scale = (1.0 / (255.0 * s)).float().view(1, -1, 1, 1)
    shift = (-m / s).float().view(1, -1, 1, 1)
    return scale, shift


def normalize(
    images_uint8: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
) -> Tensor:
    """Convert a ``uint8`` batch to normalised float32: ``(x / 255 - mean) / std``.

    Computed as ``x * scale + shift`` (see :func:`normalize_constants`), which matches
    ``ToTensor`` followed by ``Normalize`` to float32 rounding (about 1e-6).

    Args:
        images_uint8: Batch ``(B, C, H, W)`` with values in ``[0, 255]``, normally ``uint8``.
        mean: Per-channel mean in ``[0, 1]`` units, length ``C`` (sequence or tensor).
        std: Per-channel standard deviation, length ``C``.

    Returns:
        float32 tensor ``(B, C, H, W)`` with the input's memory format (a ``channels_last``
        input gives a ``channels_last`` output).

    Raises:
        TypeError: If ``images_uint8`` is not a tensor.
        ValueError: If it is not 4-D or the number of channels differs from ``len(mean)``.
    """
    _check_batch(images_uint8, "images_uint8")
    scale, shift = normalize_constants(mean, std, device=images_uint8.device)
    if scale.shape[1] != images_uint8.shape[1]:
        raise ValueError(
            f"images have {images_uint8.shape[1]} channels but mean/std have {scale.shape[1]}"
        )
    return torch.addcmul(shift, images_uint8.float(), scale)
