"""Batched image operations and normalisation on tensors, with explicit parameters.

Every operation takes its random parameters as tensors (one row per sample) and draws
nothing itself: the batch transforms (:mod:`lightning_kd.data.transforms`) compute those
parameters from :class:`~lightning_kd.data.keyed_random.SampleKeys`.

These functions work on a whole batch at once, on whatever device the batch lives on, with no
Python loop over samples. They replace per-sample torchvision pipelines for data that already
sits in memory as one tensor:

* :func:`crop_flip` is ``RandomCrop(32, padding=4) -> RandomHorizontalFlip`` on ``uint8``;
* :func:`resized_crop_boxes` and :func:`crop_resize` are ``RandomResizedCrop``;
* :func:`color_jitter` (with :func:`adjust_brightness`, :func:`adjust_contrast`,
  :func:`adjust_saturation`, :func:`adjust_hue`), :func:`rgb_to_grayscale`,
  :func:`gaussian_blur` and :func:`solarize` are the photometric transforms of
  ``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur`` and ``RandomSolarize``, each with its
  own parameters per sample. They take float images in ``[0, 1]``.

Where kornia has the same operation with per-sample parameters and it is not slower, it is
used (contrast, grayscale, solarise); our own versions stay where they were measured faster
or kornia's computes something else (``benchmarks/results/kornia_ops.md``: brightness,
saturation, hue, blur and the pad-and-crop are faster here; kornia's ``crop_and_resize``
samples without antialiasing, unlike ``roi_align``'s bin averages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

__all__ = [
    "CROP_ATTEMPTS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "crop_flip",
    "crop_resize",
    "gaussian_blur",
    "hsv_to_rgb",
    "normalize",
    "normalize_constants",
    "resized_crop_boxes",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "solarize",
]

#: ITU-R 601-2 luma weights, as in PIL's ``convert("L")``.
_LUMA = (0.299, 0.587, 0.114)


def _check_batch(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")


def crop_flip(images: Tensor, offsets: Tensor, flip: Tensor, *, padding: int) -> Tensor:
    """Crop each image at its own offset after zero padding, then flip the selected ones.

    ``offsets`` uniform in ``[0, 2 * padding]`` and ``flip`` with probability 0.5 give the
    distribution of torchvision's ``RandomCrop(H, padding=padding)`` followed by
    ``RandomHorizontalFlip()`` with zero fill. The crop and flip are one ``gather`` over the
    padded batch.

    Args:
        images: Batch ``(B, C, H, W)``, normally ``uint8`` (any dtype works). Output windows
            have the input's size ``H x W``.
        offsets: int64 ``(B, 2)``: ``(dy, dx)`` of each window in the padded image, each in
            ``[0, 2 * padding]``.
        flip: bool ``(B,)``: which samples are flipped left-right.
        padding: Zero padding added on every side before cropping; ``0`` means flip only.

    Returns:
        Tensor ``(B, C, H, W)`` of the input's dtype and device (contiguous) where
        ``out[i] = flip_i(pad(images)[i, :, dy_i:dy_i + H, dx_i:dx_i + W])``.

    Raises:
        TypeError: If ``images`` is not a tensor.
        ValueError: If it is not 4-D, ``padding`` is negative or the parameters do not have
            one row per sample.
    """
    _check_batch(images, "images")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    b, c, h, w = images.shape
    if offsets.shape != (b, 2) or flip.shape != (b,):
        raise ValueError(
            f"offsets must be ({b}, 2) and flip ({b},), got {tuple(offsets.shape)} and "
            f"{tuple(flip.shape)}"
        )
    device = images.device
    padded = F.pad(images.contiguous(), (padding, padding, padding, padding))
    wp = w + 2 * padding
    cols = torch.arange(w, device=device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + offsets[:, 1, None]  # (B, W)
    rows = torch.arange(h, device=device) + offsets[:, 0, None]  # (B, H)
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)  # (B, 1, H*W)
    out = padded.reshape(b, c, -1).gather(2, index.expand(b, c, h * w))  # (B, C, H*W)
    return out.view(b, c, h, w)


def normalize_constants(
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    *,
    device: torch.device | str | None = None,
    max_value: float = 255.0,
) -> tuple[Tensor, Tensor]:
    """Fold ``/max_value``, mean and std into one scale and shift.

    Args:
        mean: Per-channel mean of images scaled to ``[0, 1]``, length ``C``.
        std: Per-channel standard deviation, length ``C``, all ``> 0``.
        device: Where to put the constants.
        max_value: Pixel value that means 1: ``255`` for ``uint8`` images, ``1`` for float
            images already in ``[0, 1]``.

    Returns:
        ``(scale, shift)``, float32 tensors ``(1, C, 1, 1)`` with
        ``scale = 1 / (max_value * std)`` and ``shift = -mean / std``.

    Raises:
        ValueError: If lengths differ, are not 1-D, a std is not positive or ``max_value``
            is not positive.
    """
    if not max_value > 0:
        raise ValueError(f"max_value must be > 0, got {max_value}")
    m = torch.as_tensor(mean, dtype=torch.float64, device=device).flatten()
    s = torch.as_tensor(std, dtype=torch.float64, device=device).flatten()
    if m.numel() != s.numel() or m.numel() == 0:
        raise ValueError(
            f"mean and std must have the same length >= 1, got {m.numel()} and {s.numel()}"
        )
    if bool((s <= 0).any()):
        raise ValueError(f"std must be > 0 in every channel, got {s.tolist()}")
    scale = (1.0 / (max_value * s)).float().view(1, -1, 1, 1)
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


# --------------------------------------------------------------------------- random resized crop
def _check_range(name: str, value: Sequence[float], *, upper: float | None) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0.0 < lo <= hi or (upper is not None and hi > upper):
        bound = f" <= {upper:g}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < min <= max{bound}, got {tuple(value)}")
    return lo, hi


#: Attempts per box of torchvision's ``RandomResizedCrop.get_params``.
CROP_ATTEMPTS = 10


def resized_crop_boxes(
    draws: Tensor,
    height: int,
    width: int,
    *,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
) -> Tensor:
    """Crop boxes as torchvision's ``RandomResizedCrop.get_params`` draws them, from given
    uniform numbers.

    For each box, up to :data:`CROP_ATTEMPTS` attempts take an area fraction uniform in
    ``scale`` and a log aspect ratio (width / height) uniform in ``log(ratio)``; the first
    attempt whose rounded size ``(h, w)`` fits in the image is kept and placed at an offset
    uniform over the valid integer positions. A box with no fitting attempt is the largest
    centred box whose aspect ratio is clipped to ``ratio``. No Python loop over boxes.

    Args:
        draws: float ``(N, 2 * CROP_ATTEMPTS + 2)`` uniforms in ``[0, 1)``: area fractions,
            then log ratios of the attempts, then the vertical and horizontal offsets.
        height: Image height ``H`` in pixels.
        width: Image width ``W`` in pixels.
        scale: ``(min, max)`` fraction of the image area, ``0 < min <= max <= 1``.
        ratio: ``(min, max)`` aspect ratio (width / height), ``0 < min <= max``.

    Returns:
        float32 ``(N, 4)`` boxes ``(x1, y1, x2, y2)`` in pixel-edge coordinates: the box covers
        pixels ``x1 .. x2 - 1`` and ``y1 .. y2 - 1`` (all integers), on ``draws``' device.

    Raises:
        ValueError: If a size is not positive, ``draws`` has the wrong shape or ``scale`` /
            ``ratio`` is out of range.
    """
    attempts = CROP_ATTEMPTS
    if draws.dim() != 2 or draws.shape[1] != 2 * attempts + 2:
        raise ValueError(f"draws must be (N, {2 * attempts + 2}), got {tuple(draws.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"need height, width >= 1, got {height}, {width}")
    s_lo, s_hi = _check_range("scale", scale, upper=1.0)
    r_lo, r_hi = _check_range("ratio", ratio, upper=None)
    area = float(height * width)
    target = s_lo + (s_hi - s_lo) * draws[:, :attempts]  # (N, 10)
    log_lo, log_hi = math.log(r_lo), math.log(r_hi)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[:, attempts : 2 * attempts])
    w = torch.round(torch.sqrt(target * area * aspect))  # (N, 10)
    h = torch.round(torch.sqrt(target * area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (N, 10)
    first = fits.int().argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
    w = w.gather(1, first).squeeze(1)  # (N,)
    h = h.gather(1, first).squeeze(1)

    # Fallback (no attempt fits): centred crop with the aspect ratio clipped to ``ratio``.
    in_ratio = width / height
    if in_ratio < r_lo:
        fw, fh = width, round(width / r_lo)
    elif in_ratio > r_hi:
        fw, fh = round(height * r_hi), height
    else:
        fw, fh = width, height
    ok = fits.any(dim=1)  # (N,)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    u_top, u_left = draws[:, 2 * attempts], draws[:, 2 * attempts + 1]
    top = torch.where(
        ok, torch.floor(u_top * (height - h + 1)), torch.full_like(h, (height - fh) // 2)
    )
    left = torch.where(
        ok, torch.floor(u_left * (width - w + 1)), torch.full_like(w, (width - fw) // 2)
    )
    return torch.stack([left, top, left + w, top + h], dim=1)  # (N, 4)


def crop_resize(images: Tensor, boxes: Tensor, size: int, *, batch_index: Tensor) -> Tensor:
    """Crop boxes out of a batch and resize each to ``size x size`` with one ``roi_align``.

    Each output pixel averages bilinear samples on a regular grid inside its bin, with
    ``ceil(box side / size)`` samples per side: plain bilinear interpolation when enlarging,
    a box-filtered (antialiased) reduction when shrinking. A box of exactly ``size`` pixels
    returns its pixels unchanged.

    Args:
        images: float images ``(B, C, H, W)``.
        boxes: ``(N, 4)`` boxes ``(x1, y1, x2, y2)`` in pixel-edge coordinates (see
            :func:`resized_crop_boxes`).
        size: Side of the output crops.
        batch_index: int64 ``(N,)``: which image each box is cut from, in ``[0, B)``.

    Returns:
        ``(N, C, size, size)`` crops in the images' dtype.

    Raises:
        TypeError: If ``images`` is not a floating-point tensor.
        ValueError: If shapes disagree or ``size < 1``.
    """
    _check_batch(images)
    if not images.is_floating_point():
        raise TypeError(f"crop_resize needs float images, got {images.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or batch_index.shape != (boxes.shape[0],):
        raise ValueError(
            f"boxes must be (N, 4) and batch_index (N,), got {tuple(boxes.shape)} and "
            f"{tuple(batch_index.shape)}"
        )
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rois = torch.cat([batch_index.to(images.dtype)[:, None], boxes.to(images.dtype)], dim=1)
    # aligned=True: pixel i covers [i, i + 1), so integer pixel-edge boxes need no shift.
    return roi_align(
        images.contiguous(), rois, output_size=(size, size), sampling_ratio=-1, aligned=True
    )


# --------------------------------------------------------------------------- colour
def _per_sample(factor: Tensor, images: Tensor, name: str) -> Tensor:
    if factor.shape != (images.shape[0],):
        raise ValueError(
            f"{name} must have one value per sample, shape ({images.shape[0]},), "
            f"got {tuple(factor.shape)}"
        )
    return factor.to(images.dtype).view(-1, 1, 1, 1)


def _check_rgb(images: Tensor) -> None:
    _check_batch(images)
    if images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"expected float RGB images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )


def rgb_to_grayscale(images: Tensor) -> Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2, as PIL's ``convert("L")``).

    kornia's ``rgb_to_grayscale`` (same weights; measured 1.2x faster at batch 256,
    benchmarks/results/kornia_ops.md).

    Args:
        images: float RGB images ``(B, 3, H, W)``.

    Returns:
        ``(B, 1, H, W)`` luma, same dtype.
    """
    _check_rgb(images)
    weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
    return kornia.color.rgb_to_grayscale(images, rgb_weights=weights)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``clamp(f * x, 0, 1)`` with a factor ``f >= 0`` per sample.

    Args:
        images: float RGB images ``(B, 3, H, W)`` in ``[0, 1]``.
        factor: ``(B,)`` factors; 1 leaves an image unchanged.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.
    """
    _check_rgb(images)
    return (images * _per_sample(factor, images, "factor")).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its mean luma: ``clamp(f * x + (1 - f) * mean(gray(x)), 0, 1)``.

    kornia's ``adjust_contrast_with_mean_subtraction`` (the same blend with the same luma;
    measured 1.75x faster at batch 256, benchmarks/results/kornia_ops.md).

    Args:
        images: float RGB images ``(B, 3, H, W)`` in ``[0, 1]``.
        factor: ``(B,)`` factors; 1 leaves an image unchanged, 0 gives flat grey.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.
    """
    _check_rgb(images)
    f = _per_sample(factor, images, "factor").flatten()
    return kornia.enhance.adjust_contrast_with_mean_subtraction(images, f)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its luma: ``clamp(f * x + (1 - f) * gray(x), 0, 1)``.

    Args:
        images: float RGB images ``(B, 3, H, W)`` in ``[0, 1]``.
        factor: ``(B,)`` factors; 1 leaves an image unchanged, 0 gives its greyscale.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.
    """
    f = _per_sample(factor, images, "factor")
    return torch.lerp(rgb_to_grayscale(images), images, f).clamp_(0.0, 1.0)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """RGB -> HSV, every channel in ``[0, 1]`` (hue in turns; 0 for grey pixels).

    Args:
        images: float RGB images ``(B, 3, H, W)`` in ``[0, 1]``.

    Returns:
        ``(B, 3, H, W)`` stacked ``(hue, saturation, value)``.
    """
    _check_rgb(images)
    r, g, b = images.unbind(1)  # (B, H, W) each
    value = images.amax(dim=1)
    chroma = value - images.amin(dim=1)
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        (g - b) / safe,
        torch.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )  # sixths of a turn, in [-1, 5]
    hue = torch.where(chroma > 0, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """HSV -> RGB, the inverse of :func:`rgb_to_hsv`.

    Args:
        images: ``(B, 3, H, W)`` stacked ``(hue, saturation, value)``; hue in turns (taken
            modulo 1), saturation and value in ``[0, 1]``.

    Returns:
        float RGB images ``(B, 3, H, W)`` in ``[0, 1]``.
    """
    _check_rgb(images)
    hue, sat, val = images.unbind(1)  # (B, H, W) each
    sixths = torch.remainder(hue, 1.0) * 6.0
    sector = torch.floor(sixths)
    frac = sixths - sector
    sector = sector.long().remainder(6).unsqueeze(1)  # (B, 1, H, W), in 0..5
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * frac)
    t = val * (1.0 - sat * (1.0 - frac))
    # Per sector 0..5: R = (v, q, p, p, t, v), G = (t, v, v, q, p, p), B = (p, p, t, v, v, q).
    channels = [
        torch.stack(c, dim=1).gather(1, sector)  # (B, 1, H, W)
        for c in ((val, q, p, p, t, val), (t, val, val, q, p, p), (p, p, t, val, val, q))
    ]
    return torch.cat(channels, dim=1)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each image by ``shift`` turns (in HSV space).

    Args:
        images: float RGB images ``(B, 3, H, W)`` in ``[0, 1]``.
        shift: ``(B,)`` hue shifts in turns, e.g. in ``[-0.5, 0.5]``; 0 leaves an image
            unchanged (to float rounding).

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.
    """
    hsv = rgb_to_hsv(images)
    s = _per_sample(shift, images, "shift").view(-1, 1, 1)
    hue = torch.remainder(hsv[:, 0] + s, 1.0)
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


def color_jitter(
    images: Tensor,
    *,
    order: Tensor,
    brightness: Tensor | None = None,
    contrast: Tensor | None = None,
    saturation: Tensor | None = None,
    hue: Tensor | None = None,
) -> Tensor:
    """torchvision's ``ColorJitter`` with per-sample factors and a per-sample order.

    Operation ``k`` (0 brightness, 1 contrast, 2 saturation, 3 hue) is applied to sample ``i``
    at step ``j`` where ``order[i, j] == k``; an operation whose factors are ``None`` is
    skipped. At each of the four steps every operation runs once, on the samples whose order
    puts it there (gathered with ``index_select``), so each sample goes through each operation
    exactly once and there is no Python loop over samples.

    Args:
        images: float RGB images ``(B, 3, H, W)`` in ``[0, 1]``.
        order: int64 ``(B, 4)``, each row a permutation of ``0..3``.
        brightness: ``(B,)`` factors for :func:`adjust_brightness`, or ``None``.
        contrast: ``(B,)`` factors for :func:`adjust_contrast`, or ``None``.
        saturation: ``(B,)`` factors for :func:`adjust_saturation`, or ``None``.
        hue: ``(B,)`` shifts for :func:`adjust_hue`, or ``None``.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.

    Raises:
        ValueError: If ``order`` is not ``(B, 4)``.
    """
    _check_rgb(images)
    if order.shape != (images.shape[0], 4):
        raise ValueError(f"order must be ({images.shape[0]}, 4), got {tuple(order.shape)}")
    ops = [
        (k, fn, factor)
        for k, (fn, factor) in enumerate(
            [
                (adjust_brightness, brightness),
                (adjust_contrast, contrast),
                (adjust_saturation, saturation),
                (adjust_hue, hue),
            ]
        )
        if factor is not None
    ]
    x = images.clone()
    for step in range(4):
        for k, fn, factor in ops:
            idx = torch.nonzero(order[:, step] == k).flatten()  # samples doing op k now
            if idx.numel() == 0:
                continue
            x.index_copy_(0, idx, fn(x.index_select(0, idx), factor.index_select(0, idx)))
    return x


# --------------------------------------------------------------------------- blur, solarise
def gaussian_blur(images: Tensor, sigma: Tensor, *, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with its own ``sigma`` per sample, reflect-padded.

    The kernel is ``exp(-d^2 / (2 sigma^2))`` for offsets ``d = -(k-1)/2 .. (k-1)/2``,
    normalised to sum 1 (as torchvision's ``gaussian_blur``). All samples go through one
    grouped convolution per direction.

    Args:
        images: float images ``(B, C, H, W)``.
        sigma: ``(B,)`` standard deviations in pixels, ``> 0``.
        kernel_size: Odd kernel side ``k >= 1`` with ``k // 2 < min(H, W)``.

    Returns:
        ``(B, C, H, W)`` blurred images, same dtype.

    Raises:
        ValueError: If ``kernel_size`` is even, too large, or ``sigma`` has the wrong shape.
    """
    _check_batch(images)
    b, c, h, w = images.shape
    half = kernel_size // 2
    if kernel_size < 1 or kernel_size % 2 == 0 or half >= min(h, w):
        raise ValueError(
            f"kernel_size must be odd, >= 1 and with kernel_size // 2 < min(H, W) = {min(h, w)}, "
            f"got {kernel_size}"
        )
    s = _per_sample(sigma, images, "sigma").view(-1, 1)  # (B, 1)
    offsets = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - half
    kernel = torch.exp(-0.5 * (offsets / s) ** 2)  # (B, k)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    padded = F.pad(images.contiguous(), (half, half, half, half), mode="reflect")
    x = padded.reshape(1, b * c, h + 2 * half, w + 2 * half)
    x = F.conv2d(x, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)  # (1, B*C, H+2h, W)
    x = F.conv2d(x, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)  # (1, B*C, H, W)
    return x.view(b, c, h, w)


def solarize(images: Tensor, apply: Tensor, *, threshold: float = 0.5) -> Tensor:
    """Invert pixels at or above ``threshold`` (``x -> 1 - x``) in the samples selected.

    kornia's ``solarize`` with a per-sample threshold (above 1, so never reached, for the
    samples left alone): measured 1.2x faster than a masked ``where`` at batch 256
    (benchmarks/results/kornia_ops.md), the same values.

    Args:
        images: float images ``(B, C, H, W)`` in ``[0, 1]``.
        apply: bool ``(B,)``: which samples are solarised.
        threshold: Pixels ``>= threshold`` are inverted (0.5 matches PIL's threshold 128 on
            ``uint8`` images).

    Returns:
        ``(B, C, H, W)`` images.
    """
    _check_batch(images)
    flags = _per_sample(apply, images, "apply").flatten().bool()
    thresholds = torch.where(flags, threshold, 2.0).to(images.dtype)
    return kornia.enhance.solarize(images, thresholds)
