"""Strong augmentation: RandAugment (Cubuk et al., 2020) on a batch, with per-sample parameters.

Multi-view logit distillation (MLKD, Jin et al., CVPR 2023) trains on a weak and a strong view
of every image. :class:`StrongAugment` makes both from a ``uint8`` batch: the weak view is
:class:`~lightning_kd.data.transforms.CropFlip`'s pad-4 crop and flip, the strong view the same
kind of crop and flip followed by RandAugment. :class:`RandAugmentView` makes the strong view
alone.

RandAugment follows torchvision's ``transforms.RandAugment`` on ``uint8`` tensors: the same 14
operations (:data:`RANDAUGMENT_OPS`) with the same magnitude of bin ``magnitude`` out of
``num_magnitude_bins`` (:func:`randaugment_magnitudes`), each of ``num_ops`` steps choosing an
operation uniformly and, for the signed ones, a sign with probability 1/2. The operations below
reproduce torchvision's tensor functions (``equalize``, ``autocontrast``, ``posterize``,
``solarize``, ``adjust_brightness/contrast/saturation/sharpness``, ``affine`` and ``rotate``)
including their ``uint8`` rounding: blends truncate (``.to(uint8)``), resampling and the
sharpness blur round. So a sample's strong view equals torchvision's ``_apply_op`` chain run on
the sample's crop with the same choices (tested).

Every operation takes its parameters as tensors, one row per sample, and draws nothing; the
transforms draw them from :class:`~lightning_kd.data.keyed_random.SampleKeys`, so a view is a
pure function of ``(seed, epoch, sample index)``. :func:`rand_augment` applies a step to a whole
batch by grouping the rows that chose the same operation (``index_select`` / ``index_copy_``):
each operation runs once per step on its rows, the five geometric ones together as one
per-sample affine warp, with no Python loop over samples.

The operations accept ``uint8`` images (values 0..255) or float images in ``[0, 1]``. On float
images they follow torchvision's float semantics (no rounding, clamped to ``[0, 1]``), except
:func:`equalize` and :func:`posterize`, which torchvision defines on 8 bits only: they quantise
``round(255 x)`` and return ``levels / 255``.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.data.keyed_random import SampleKeys
from lightning_kd.data.ops import crop_flip
from lightning_kd.data.transforms import BatchTransform, CropFlip, check_uint8_batch, stream

__all__ = [
    "GEOMETRIC_OPS",
    "RANDAUGMENT_OPS",
    "RandAugmentParams",
    "RandAugmentView",
    "StrongAugment",
    "affine",
    "autocontrast",
    "enhance_brightness",
    "enhance_color",
    "enhance_contrast",
    "enhance_sharpness",
    "equalize",
    "inverse_affine_matrices",
    "posterize",
    "rand_augment",
    "randaugment_affine_matrices",
    "randaugment_magnitudes",
    "solarize_threshold",
]

#: torchvision's RandAugment operations, in its order: op ``k`` is ``RANDAUGMENT_OPS[k]``.
RANDAUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
#: Indices of the geometric operations (one affine warp together).
GEOMETRIC_OPS: tuple[int, ...] = (1, 2, 3, 4, 5)

Interpolation = Literal["nearest", "bilinear"]

#: torchvision's luma weights for tensors (``_functional_tensor.rgb_to_grayscale``).
_TV_LUMA = (0.2989, 0.587, 0.114)


# --------------------------------------------------------------------------- checks
def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point, got {images.dtype}")


def _check_rgb(images: Tensor) -> None:
    _check_images(images)
    if images.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(images.shape)}")


def _per_sample(value: Tensor, images: Tensor, name: str) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != (images.shape[0],):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{name} must be a tensor with one value per sample, shape ({images.shape[0]},), "
            f"got {got}"
        )
    return value


def _bound(images: Tensor) -> float:
    """The value of white: 255 for ``uint8``, 1 for float images."""
    return 255.0 if images.dtype == torch.uint8 else 1.0


def _work_dtype(images: Tensor) -> torch.dtype:
    """The float dtype the arithmetic runs in (float32 for ``uint8``, as torchvision)."""
    return images.dtype if images.is_floating_point() else torch.float32


# --------------------------------------------------------------------------- photometric ops
def _blend(img1: Tensor, img2: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``_blend``: ``clamp(f img1 + (1 - f) img2, 0, bound)`` in ``img1``'s dtype.

    ``f`` and ``1 - f`` are formed in float64 and rounded to the working dtype, as Python
    floats are when torchvision multiplies a tensor by them; ``uint8`` results are truncated.
    """
    dtype = _work_dtype(img1)
    f = factor.to(torch.float64)
    r = f.to(dtype).view(-1, 1, 1, 1)
    q = (1.0 - f).to(dtype).view(-1, 1, 1, 1)
    out = r * img1 + q * img2
    return out.clamp_(0.0, _bound(img1)).to(img1.dtype)


def _grayscale(images: Tensor) -> Tensor:
    """torchvision's tensor luma ``0.2989 R + 0.587 G + 0.114 B``, ``(N, 1, H, W)`` in the
    images' dtype (truncated for ``uint8``)."""
    r, g, b = images.unbind(1)
    luma = _TV_LUMA[0] * r + _TV_LUMA[1] * g + _TV_LUMA[2] * b
    return luma.to(images.dtype).unsqueeze(1)


def enhance_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """Brightness as PIL's ``ImageEnhance.Brightness`` / torchvision's ``adjust_brightness``:
    blend with black, ``clamp(f x, 0, bound)``.

    Args:
        images: ``uint8`` or float ``(N, C, H, W)``.
        factor: ``(N,)`` factors ``>= 0``; 1 leaves an image unchanged.

    Returns:
        ``(N, C, H, W)`` in the images' dtype (``uint8`` truncated).

    Raises:
        TypeError: If ``images`` is not a ``uint8`` or float tensor.
        ValueError: If it is not 4-D or ``factor`` is not ``(N,)``.
    """
    _check_images(images)
    _per_sample(factor, images, "factor")
    return _blend(images, torch.zeros_like(images), factor)


def enhance_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Contrast as torchvision's ``adjust_contrast``: blend each image with the mean of its luma.

    The mean is that of the luma image in the images' dtype (for ``uint8``, the truncated
    ``uint8`` luma, as torchvision), over all pixels.

    Args:
        images: ``uint8`` or float RGB ``(N, 3, H, W)``.
        factor: ``(N,)`` factors ``>= 0``; 1 leaves an image unchanged, 0 gives flat grey.

    Returns:
        ``(N, 3, H, W)`` in the images' dtype.
    """
    _check_rgb(images)
    _per_sample(factor, images, "factor")
    mean = _grayscale(images).to(_work_dtype(images)).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def enhance_color(images: Tensor, factor: Tensor) -> Tensor:
    """Colour (saturation) as PIL's ``ImageEnhance.Color`` / torchvision's
    ``adjust_saturation``: blend each image with its luma.

    Args:
        images: ``uint8`` or float RGB ``(N, 3, H, W)``.
        factor: ``(N,)`` factors ``>= 0``; 1 leaves an image unchanged, 0 gives its greyscale.

    Returns:
        ``(N, 3, H, W)`` in the images' dtype.
    """
    _check_rgb(images)
    _per_sample(factor, images, "factor")
    return _blend(images, _grayscale(images), factor)


def enhance_sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """Sharpness as PIL's ``ImageEnhance.Sharpness`` / torchvision's ``adjust_sharpness``.

    Blends each image with a smoothed copy: inside a 1-pixel border the copy is the 3x3
    filter ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` (rounded to ``uint8`` for ``uint8``
    images), on the border it is the image itself. Factors above 1 sharpen. Images with a
    side of 2 pixels or less are returned unchanged.

    Args:
        images: ``uint8`` or float ``(N, C, H, W)``.
        factor: ``(N,)`` factors ``>= 0``; 1 leaves an image unchanged, 0 gives the smoothed copy.

    Returns:
        ``(N, C, H, W)`` in the images' dtype.
    """
    _check_images(images)
    _per_sample(factor, images, "factor")
    c, h, w = images.shape[1:]
    if h <= 2 or w <= 2:
        return images.clone()
    dtype = _work_dtype(images)
    kernel = torch.ones(3, 3, dtype=dtype, device=images.device)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    x = images.to(dtype)
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)  # (N, C, H-2, W-2)
    if images.dtype == torch.uint8:
        smooth = smooth.round_()
    degenerate = images.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth.to(images.dtype)
    return _blend(images, degenerate, factor)


def autocontrast(images: Tensor) -> Tensor:
    """Stretch every channel of every image to the full range, as torchvision's ``autocontrast``.

    ``(x - min) * bound / (max - min)`` per image and channel, clamped (``uint8`` truncated);
    a constant channel is left unchanged.

    Args:
        images: ``uint8`` or float ``(N, C, H, W)``.

    Returns:
        ``(N, C, H, W)`` in the images' dtype.
    """
    _check_images(images)
    bound = _bound(images)
    dtype = _work_dtype(images)
    low = images.amin(dim=(-2, -1), keepdim=True).to(dtype)  # (N, C, 1, 1)
    high = images.amax(dim=(-2, -1), keepdim=True).to(dtype)
    scale = bound / (high - low)
    flat = ~torch.isfinite(scale)
    low = low.masked_fill(flat, 0.0)
    scale = scale.masked_fill(flat, 1.0)
    return ((images - low) * scale).clamp_(0.0, bound).to(images.dtype)


def _levels(images: Tensor) -> Tensor:
    """8-bit levels of ``uint8`` or ``[0, 1]`` float images, int64 (float: ``round(255 x)``)."""
    if images.dtype == torch.uint8:
        return images.long()
    return images.mul(255.0).round_().clamp_(0, 255).long()


def equalize(images: Tensor) -> Tensor:
    """Histogram equalisation of every channel of every image, as torchvision's ``equalize``.

    Per channel (PIL's ``ImageOps.equalize``): a 256-bin histogram; ``step = (number of
    pixels - count of the highest level present) // 255``; if ``step == 0`` the channel is left
    unchanged, otherwise level ``v`` maps to ``(cumsum[v - 1] + step // 2) // step`` (0 for
    ``v = 0``), clipped to 255. All ``N * C`` histograms come from one ``scatter_add_`` and all
    lookups from one ``gather``.

    Args:
        images: ``uint8`` ``(N, C, H, W)``, or float in ``[0, 1]`` (quantised to
            ``round(255 x)``; the result is ``levels / 255``).

    Returns:
        ``(N, C, H, W)`` in the images' dtype.
    """
    _check_images(images)
    # kornia's equalize (the same PIL algorithm, on float levels): measured 2.8x faster than a
    # hand-written scatter_add / gather version at batch 256 (benchmarks/results/kornia_ops.md)
    # and equal to it, and to torchvision's, on every 8-bit input.
    from kornia.enhance import equalize as kornia_equalize

    if images.dtype == torch.uint8:
        out = kornia_equalize(images.float().div_(255.0))
        return out.mul_(255.0).round_().to(torch.uint8)
    levels = _levels(images).to(images.dtype).div_(255.0)  # round(255 x) / 255
    out = kornia_equalize(levels)
    unchanged = (out == levels).flatten(2).all(dim=2)[:, :, None, None]  # step == 0 channels
    return torch.where(unchanged, images, out)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the ``bits`` most significant bits of every 8-bit value (``x & mask``), as
    torchvision's ``posterize``.

    Args:
        images: ``uint8`` ``(N, C, H, W)``, or float in ``[0, 1]`` (quantised to
            ``round(255 x)``; the result is ``levels / 255``).
        bits: int64 ``(N,)`` in ``[0, 8]``; 8 leaves an image unchanged, 0 gives black.

    Returns:
        ``(N, C, H, W)`` in the images' dtype.

    Raises:
        ValueError: If ``bits`` is not ``(N,)`` integers in ``[0, 8]``.
    """
    _check_images(images)
    _per_sample(bits, images, "bits")
    if bits.is_floating_point() or bool(((bits < 0) | (bits > 8)).any()):
        raise ValueError(f"bits must be integers in [0, 8], got {bits.tolist()}")
    mask = ((0xFF << (8 - bits.long())) & 0xFF).view(-1, 1, 1, 1)  # (N, 1, 1, 1)
    if images.dtype == torch.uint8:
        return images & mask.to(torch.uint8)
    return (_levels(images) & mask).to(images.dtype).div_(255.0)


def solarize_threshold(images: Tensor, threshold: Tensor) -> Tensor:
    """Invert the values at or above a per-sample threshold: ``bound - x`` where
    ``x >= threshold``, as torchvision's ``solarize``.

    Args:
        images: ``uint8`` or float ``(N, C, H, W)``.
        threshold: ``(N,)`` thresholds in the images' units (0..255 for ``uint8``, 0..1 for
            float); a threshold above the maximum leaves an image unchanged.

    Returns:
        ``(N, C, H, W)`` in the images' dtype.
    """
    _check_images(images)
    _per_sample(threshold, images, "threshold")
    inverted = (255 - images) if images.dtype == torch.uint8 else 1.0 - images
    return torch.where(images >= threshold.view(-1, 1, 1, 1), inverted, images)


# --------------------------------------------------------------------------- geometric ops
def inverse_affine_matrices(
    angle: Tensor, translate: Tensor, shear: Tensor, center: Tensor
) -> Tensor:
    """Per-sample output-to-input affine matrices, as torchvision's ``_get_inverse_affine_matrix``
    (scale 1), vectorised.

    The forward map is ``T(translate) C(center) R(angle) Sh_y(shear_y) Sh_x(shear_x) C^-1``;
    this returns its inverse, in torchvision's tensor convention: coordinates in pixels with
    the origin at the image centre (pixel ``(i, j)`` sits at ``(j + 0.5 - W/2, i + 0.5 - H/2)``),
    ``x`` to the right and ``y`` down.

    Args:
        angle: ``(N,)`` rotation in degrees, positive clockwise in this ``y``-down frame
            (torchvision's ``rotate(img, a)`` uses ``angle = -a``).
        translate: ``(N, 2)`` translation ``(tx, ty)`` in pixels.
        shear: ``(N, 2)`` shear angles ``(sx, sy)`` in degrees.
        center: ``(N, 2)`` centre ``(cx, cy)`` in centred coordinates (``(0, 0)``: the image
            centre; ``(-W/2, -H/2)``: the top-left corner).

    Returns:
        float64 ``(N, 2, 3)`` matrices ``[[a, b, c], [d, e, f]]``: output pixel ``(x, y)``
        samples the input at ``(a x + b y + c, d x + e y + f)``.
    """
    n = angle.shape[0]
    if translate.shape != (n, 2) or shear.shape != (n, 2) or center.shape != (n, 2):
        raise ValueError(
            f"angle must be (N,) and translate, shear, center (N, 2), got {tuple(angle.shape)}, "
            f"{tuple(translate.shape)}, {tuple(shear.shape)}, {tuple(center.shape)}"
        )
    f64 = torch.float64
    rot = torch.deg2rad(angle.to(f64))
    sx, sy = torch.deg2rad(shear.to(f64)).unbind(1)
    cx, cy = center.to(f64).unbind(1)
    tx, ty = translate.to(f64).unbind(1)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a  # inverse of [[a, b], [c, d]] (determinant 1)
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(n, 2, 3)


def affine(
    images: Tensor,
    matrices: Tensor,
    *,
    interpolation: Interpolation = "nearest",
    fill: float | None = None,
) -> Tensor:
    """Warp every image with its own affine matrix: one ``grid_sample`` for the batch.

    The sampling grid is torchvision's (``_gen_affine_grid``): output pixel centres in centred
    coordinates, mapped by the matrix, divided by ``(W/2, H/2)``, sampled with
    ``align_corners=False``. ``uint8`` images are warped in float32 and rounded back.

    Args:
        images: ``uint8`` or float ``(N, C, H, W)``.
        matrices: ``(N, 2, 3)`` output-to-input matrices in centred pixel coordinates (see
            :func:`inverse_affine_matrices`).
        interpolation: ``"nearest"`` or ``"bilinear"``.
        fill: Value of the area mapped from outside the image, in the images' units. ``None``
            (RandAugment's default) samples zeros outside, so it is black and, with bilinear
            interpolation, edges blend towards black; a number uses torchvision's mask
            (replace for nearest, ``x m + fill (1 - m)`` for bilinear).

    Returns:
        ``(N, C, H, W)`` in the images' dtype.

    Raises:
        ValueError: If shapes disagree or ``interpolation`` is unknown.
    """
    _check_images(images)
    n, c, h, w = images.shape
    if matrices.shape != (n, 2, 3):
        raise ValueError(f"matrices must be ({n}, 2, 3), got {tuple(matrices.shape)}")
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    dtype = _work_dtype(images)
    device = images.device
    theta = matrices.to(dtype)
    base = torch.empty(h, w, 3, dtype=dtype, device=device)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, device=device))
    base[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, device=device)[:, None])
    base[..., 2].fill_(1.0)
    half = torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=device)
    rescaled = theta.transpose(1, 2) / half  # (N, 3, 2)
    grid = base.view(1, h * w, 3).expand(n, h * w, 3).bmm(rescaled).view(n, h, w, 2)
    x = images.to(dtype)
    if fill is not None:
        x = torch.cat([x, torch.ones(n, 1, h, w, dtype=dtype, device=device)], dim=1)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    if fill is not None:
        out, mask = out[:, :c], out[:, c:]
        if interpolation == "nearest":
            out = out.masked_fill(mask < 0.5, float(fill))
        else:
            out = out * mask + (1.0 - mask) * float(fill)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)


def randaugment_affine_matrices(op: Tensor, magnitude: Tensor, height: int, width: int) -> Tensor:
    """The affine matrices of RandAugment's geometric operations, as torchvision applies them.

    * ShearX / ShearY (``op`` 1 / 2): shear angle ``degrees(atan(m))`` about the top-left
      corner, i.e. input ``x = x' + m y'`` (resp. ``y = y' + m x'``) measured from that corner;
    * TranslateX / TranslateY (3 / 4): shift by ``int(m)`` pixels (truncated towards zero);
    * Rotate (5): ``m`` degrees counter-clockwise about the image centre.

    Args:
        op: int64 ``(N,)`` operation indices in :data:`GEOMETRIC_OPS`.
        magnitude: ``(N,)`` signed magnitudes.
        height: Image height ``H``.
        width: Image width ``W``.

    Returns:
        float64 ``(N, 2, 3)`` matrices for :func:`affine`.

    Raises:
        ValueError: If an operation is not geometric or shapes disagree.
    """
    if op.dim() != 1 or magnitude.shape != op.shape:
        raise ValueError(
            f"op and magnitude must both be (N,), got {tuple(op.shape)} and "
            f"{tuple(magnitude.shape)}"
        )
    if bool(((op < 1) | (op > 5)).any()):
        raise ValueError(f"geometric ops are {GEOMETRIC_OPS}, got {op.tolist()}")
    m = magnitude.to(torch.float64)
    zero = torch.zeros_like(m)
    shear_deg = torch.rad2deg(torch.atan(m))
    shift = torch.trunc(m)
    angle = torch.where(op == 5, -m, zero)
    translate = torch.stack(
        [torch.where(op == 3, shift, zero), torch.where(op == 4, shift, zero)], dim=1
    )
    shear = torch.stack(
        [torch.where(op == 1, shear_deg, zero), torch.where(op == 2, shear_deg, zero)], dim=1
    )
    corner = torch.tensor([-0.5 * width, -0.5 * height], dtype=torch.float64, device=m.device)
    is_shear = ((op == 1) | (op == 2))[:, None]
    center = torch.where(is_shear, corner, torch.zeros_like(corner))
    return inverse_affine_matrices(angle, translate, shear, center.expand(op.shape[0], 2))


# --------------------------------------------------------------------------- RandAugment
@functools.lru_cache(maxsize=64)
def _magnitude_table(
    magnitude: int, num_bins: int, height: int, width: int
) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    space: dict[str, tuple[Tensor, bool]] = {
        "Identity": (torch.tensor(0.0), False),
        "ShearX": (torch.linspace(0.0, 0.3, num_bins), True),
        "ShearY": (torch.linspace(0.0, 0.3, num_bins), True),
        "TranslateX": (torch.linspace(0.0, 150.0 / 331.0 * width, num_bins), True),
        "TranslateY": (torch.linspace(0.0, 150.0 / 331.0 * height, num_bins), True),
        "Rotate": (torch.linspace(0.0, 30.0, num_bins), True),
        "Brightness": (torch.linspace(0.0, 0.9, num_bins), True),
        "Color": (torch.linspace(0.0, 0.9, num_bins), True),
        "Contrast": (torch.linspace(0.0, 0.9, num_bins), True),
        "Sharpness": (torch.linspace(0.0, 0.9, num_bins), True),
        "Posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int(), False),
        "Solarize": (torch.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (torch.tensor(0.0), False),
        "Equalize": (torch.tensor(0.0), False),
    }
    values = tuple(
        float(space[name][0][magnitude].item()) if space[name][0].dim() > 0 else 0.0
        for name in RANDAUGMENT_OPS
    )
    return values, tuple(space[name][1] for name in RANDAUGMENT_OPS)


def randaugment_magnitudes(
    magnitude: int, num_bins: int, height: int, width: int
) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    """Each operation's magnitude at bin ``magnitude``, as torchvision's
    ``RandAugment._augmentation_space(num_bins, (height, width))`` computes it (float32
    ``linspace``): shear ``[0, 0.3]``, translate ``[0, 150/331 * side]`` pixels, rotate
    ``[0, 30]`` degrees, brightness / colour / contrast / sharpness ``[0, 0.9]`` (factor
    ``1 +- m``), posterize ``8 - round(bin / ((num_bins - 1) / 4))`` bits, solarize threshold
    ``[255, 0]``; identity, autocontrast and equalize 0.

    Args:
        magnitude: Bin index, ``0 <= magnitude < num_bins``.
        num_bins: Number of magnitude bins, ``>= 2``.
        height: Image height (for TranslateY).
        width: Image width (for TranslateX).

    Returns:
        ``(magnitudes, signed)``: one float and one bool per operation of
        :data:`RANDAUGMENT_OPS`; a signed operation's magnitude is negated with probability 1/2.

    Raises:
        ValueError: If a bin or size is out of range.
    """
    _check_magnitude(magnitude, num_bins)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} and {width}")
    return _magnitude_table(magnitude, num_bins, height, width)


def _check_magnitude(magnitude: int, num_bins: int) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_magnitude_bins must be an int >= 2, got {num_bins!r}")
    if isinstance(magnitude, bool) or not isinstance(magnitude, int):
        raise ValueError(f"magnitude must be an int bin index, got {magnitude!r}")
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be in [0, {num_bins}), got {magnitude}")


def _apply_photometric(k: int, x: Tensor, m: Tensor) -> Tensor:
    """Photometric operation ``k`` of :data:`RANDAUGMENT_OPS` with signed magnitudes ``m``."""
    name = RANDAUGMENT_OPS[k]
    if name == "Brightness":
        return enhance_brightness(x, 1.0 + m)
    if name == "Color":
        return enhance_color(x, 1.0 + m)
    if name == "Contrast":
        return enhance_contrast(x, 1.0 + m)
    if name == "Sharpness":
        return enhance_sharpness(x, 1.0 + m)
    if name == "Posterize":
        return posterize(x, torch.trunc(m).long())
    if name == "Solarize":  # the table's threshold is in uint8 units
        return solarize_threshold(x, m if x.dtype == torch.uint8 else m / 255.0)
    if name == "AutoContrast":
        return autocontrast(x)
    if name == "Equalize":
        return equalize(x)
    raise AssertionError(f"not a photometric op: {name}")


def rand_augment(
    images: Tensor,
    ops: Tensor,
    magnitudes: Tensor,
    *,
    interpolation: Interpolation = "nearest",
    fill: float | None = None,
) -> Tensor:
    """Apply ``K`` RandAugment steps with per-sample operations and magnitudes.

    At step ``k`` sample ``i`` goes through ``RANDAUGMENT_OPS[ops[i, k]]`` with magnitude
    ``magnitudes[i, k]``, as torchvision's ``_apply_op``. Per step, the rows of each operation
    are gathered with ``index_select``, transformed together and written back with
    ``index_copy_``; the geometric operations share one :func:`affine` call, identity rows are
    not touched.

    Args:
        images: ``uint8`` or float RGB ``(B, 3, H, W)``.
        ops: int64 ``(B, K)`` indices into :data:`RANDAUGMENT_OPS`.
        magnitudes: ``(B, K)`` signed magnitudes (see :func:`randaugment_magnitudes`; solarize
            thresholds in ``uint8`` units whatever the images' dtype), best float64.
        interpolation: Resampling of the geometric operations.
        fill: Fill of the geometric operations (see :func:`affine`), in the images' units.

    Returns:
        ``(B, 3, H, W)`` in the images' dtype (a new tensor).

    Raises:
        ValueError: If shapes disagree or an op index is out of range.
    """
    _check_rgb(images)
    b, _, h, w = images.shape
    if ops.dim() != 2 or ops.shape[0] != b or magnitudes.shape != ops.shape:
        raise ValueError(
            f"ops and magnitudes must both be ({b}, K), got {tuple(ops.shape)} and "
            f"{tuple(magnitudes.shape)}"
        )
    if ops.is_floating_point() or bool(((ops < 0) | (ops >= len(RANDAUGMENT_OPS))).any()):
        raise ValueError(f"ops must be integers in [0, {len(RANDAUGMENT_OPS)}), got {ops.tolist()}")
    x = images.clone()
    geometric = torch.tensor(GEOMETRIC_OPS, device=images.device)
    for k in range(ops.shape[1]):
        op_k, mag_k = ops[:, k], magnitudes[:, k]
        idx = torch.nonzero(torch.isin(op_k, geometric)).flatten()
        if idx.numel() > 0:
            matrices = randaugment_affine_matrices(op_k[idx], mag_k[idx], h, w)
            warped = affine(
                x.index_select(0, idx), matrices, interpolation=interpolation, fill=fill
            )
            x.index_copy_(0, idx, warped)
        for j in range(GEOMETRIC_OPS[-1] + 1, len(RANDAUGMENT_OPS)):
            idx = torch.nonzero(op_k == j).flatten()
            if idx.numel() > 0:
                x.index_copy_(0, idx, _apply_photometric(j, x.index_select(0, idx), mag_k[idx]))
    return x


# --------------------------------------------------------------------------- transforms
class RandAugmentParams(NamedTuple):
    """The random parameters of one RandAugment view of a batch."""

    #: int64 ``(B, 2)`` crop offsets ``(dy, dx)`` in the padded image.
    offsets: Tensor
    #: bool ``(B,)`` horizontal flips.
    flip: Tensor
    #: int64 ``(B, num_ops)`` operation indices into :data:`RANDAUGMENT_OPS`.
    ops: Tensor
    #: float64 ``(B, num_ops)`` signed magnitudes.
    magnitudes: Tensor


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class RandAugmentView(BatchTransform):
    """One strong view: pad-and-crop, horizontal flip, then RandAugment, on ``uint8``.

    Per sample: crop offsets and flip as :class:`~lightning_kd.data.transforms.CropFlip`
    (the draws of its view ``view``), then ``num_ops`` operations chosen uniformly among the 14 of
    :data:`RANDAUGMENT_OPS` (draw 2) with the magnitude of bin ``magnitude``, negated for the
    signed operations with probability 1/2 (draw 3): torchvision's ``RandAugment(num_ops,
    magnitude, num_magnitude_bins)`` on the cropped ``uint8`` image.

    Args:
        padding: Zero padding on every side before the crop; ``0`` flips only.
        flip_prob: Probability of the flip.
        num_ops: Operations applied in sequence (torchvision's default 2); 0 crops and flips only.
        magnitude: Magnitude bin, ``0 <= magnitude < num_magnitude_bins`` (default 9).
        num_magnitude_bins: Number of magnitude bins (default 31).
        interpolation: ``"nearest"`` (torchvision's default) or ``"bilinear"``.
        fill: Fill of the geometric operations in ``0..255``; ``None`` (default) is black.
        view: Which block of draw streams the view uses (view ``v`` draws on streams
            ``v * 64 + q``); :class:`StrongAugment` uses 1.

    Raises:
        ValueError: If an argument is out of range.
    """

    num_views = 1

    def __init__(
        self,
        padding: int = 4,
        flip_prob: float = 0.5,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        interpolation: Interpolation = "nearest",
        fill: float | None = None,
        view: int = 0,
    ) -> None:
        self.padding = _check_int("padding", padding, 0)
        if isinstance(flip_prob, bool) or not isinstance(flip_prob, int | float):
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {flip_prob!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {flip_prob!r}")
        self.flip_prob = float(flip_prob)
        self.num_ops = _check_int("num_ops", num_ops, 0)
        _check_magnitude(magnitude, num_magnitude_bins)
        self.magnitude = magnitude
        self.num_magnitude_bins = num_magnitude_bins
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(
                f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}"
            )
        self.interpolation: Interpolation = interpolation
        if fill is not None and (
            isinstance(fill, bool) or not isinstance(fill, int | float) or not 0 <= fill <= 255
        ):
            raise ValueError(f"fill must be None or a number in [0, 255], got {fill!r}")
        self.fill = None if fill is None else float(fill)
        self.view = _check_int("view", view, 0)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(padding={self.padding}, flip_prob={self.flip_prob}, "
            f"num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"num_magnitude_bins={self.num_magnitude_bins}, interpolation={self.interpolation!r}, "
            f"fill={self.fill}, view={self.view})"
        )

    def params(self, keys: SampleKeys, height: int, width: int) -> RandAugmentParams:
        """The view's random parameters for a batch of ``height x width`` images.

        Args:
            keys: The batch's sample keys (``B`` samples).
            height: Image height (the translate range depends on it).
            width: Image width.

        Returns:
            :class:`RandAugmentParams` on the keys' device.
        """
        v = self.view
        # dy, dx, flip: exactly CropFlip's view v (columns 3v .. 3v + 2 of stream 0)
        u = keys.uniform(stream(0, 0), 3 * (v + 1))[:, 3 * v :]  # (B, 3)
        offsets = (u[:, :2] * (2 * self.padding + 1)).long()  # (B, 2)
        flip = u[:, 2] < self.flip_prob  # (B,)
        if self.num_ops == 0:
            none = torch.zeros(len(keys), 0, dtype=torch.long, device=keys.device)
            return RandAugmentParams(offsets, flip, none, none.to(torch.float64))
        ops = keys.integers(stream(v, 2), len(RANDAUGMENT_OPS), self.num_ops)  # (B, K)
        negate = keys.uniform(stream(v, 3), self.num_ops) < 0.5  # (B, K)
        values, signed = randaugment_magnitudes(
            self.magnitude, self.num_magnitude_bins, height, width
        )
        table = torch.tensor(values, dtype=torch.float64, device=keys.device)
        can_negate = torch.tensor(signed, device=keys.device)
        sign = torch.where(negate & can_negate[ops], -1.0, 1.0).to(torch.float64)
        return RandAugmentParams(offsets, flip, ops, table[ops] * sign)

    def __call__(self, images: Tensor, keys: SampleKeys) -> list[Tensor]:
        """The strong view of every image.

        Args:
            images: ``uint8`` ``(B, 3, H, W)`` on any device.
            keys: The batch's sample keys, on the same device.

        Returns:
            One ``uint8`` tensor ``(B, 3, H, W)``.

        Raises:
            TypeError: If ``images`` is not ``uint8``.
            ValueError: If it is not ``(B, 3, H, W)`` with one key per image.
        """
        check_uint8_batch(images, keys)
        p = self.params(keys, images.shape[2], images.shape[3])
        x = crop_flip(images, p.offsets, p.flip, padding=self.padding)
        if self.num_ops == 0:
            return [x]
        return [
            rand_augment(x, p.ops, p.magnitudes, interpolation=self.interpolation, fill=self.fill)
        ]


class StrongAugment(BatchTransform):
    """A weak and a strong view of every image, for multi-view distillation (MLKD).

    * weak (view 0): :class:`~lightning_kd.data.transforms.CropFlip` ``(padding, flip_prob)``;
      identical to ``CropFlip(padding, flip_prob)(images, keys)[0]``;
    * strong (view 1): an independent crop and flip followed by RandAugment
      (:class:`RandAugmentView` with ``view=1``).

    Args:
        padding: Zero padding before both crops.
        flip_prob: Flip probability of both views.
        num_ops: RandAugment operations of the strong view (default 2).
        magnitude: RandAugment magnitude bin (default 9).
        num_magnitude_bins: Number of magnitude bins (default 31).
        interpolation: ``"nearest"`` or ``"bilinear"`` for the geometric operations.
        fill: Fill of the geometric operations in ``0..255``; ``None`` is black.

    Raises:
        ValueError: If an argument is out of range.
    """

    num_views = 2

    def __init__(
        self,
        padding: int = 4,
        flip_prob: float = 0.5,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        interpolation: Interpolation = "nearest",
        fill: float | None = None,
    ) -> None:
        self.weak = CropFlip(padding=padding, flip_prob=flip_prob)
        self.strong = RandAugmentView(
            padding=padding,
            flip_prob=flip_prob,
            num_ops=num_ops,
            magnitude=magnitude,
            num_magnitude_bins=num_magnitude_bins,
            interpolation=interpolation,
            fill=fill,
            view=1,
        )

    def __repr__(self) -> str:
        s = self.strong
        return (
            f"StrongAugment(padding={s.padding}, flip_prob={s.flip_prob}, num_ops={s.num_ops}, "
            f"magnitude={s.magnitude}, num_magnitude_bins={s.num_magnitude_bins}, "
            f"interpolation={s.interpolation!r}, fill={s.fill})"
        )

    def __call__(self, images: Tensor, keys: SampleKeys) -> list[Tensor]:
        """``[weak, strong]`` views of every image.

        Args:
            images: ``uint8`` ``(B, 3, H, W)`` on any device.
            keys: The batch's sample keys, on the same device.

        Returns:
            Two ``uint8`` tensors ``(B, 3, H, W)``: weak, strong.

        Raises:
            TypeError: If ``images`` is not ``uint8``.
            ValueError: If it is not ``(B, 3, H, W)`` with one key per image.
        """
        check_uint8_batch(images, keys)
        return [self.weak(images, keys)[0], self.strong(images, keys)[0]]
