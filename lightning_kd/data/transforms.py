"""Multi-crop (DINO) and two-view (BYOL) augmentation, per sample or on a whole batch.

:class:`MultiCropViews` turns one image into ``2`` global crops and ``K`` local crops with the
augmentations of DINO (Caron et al., 2021): random resized crop, horizontal flip, colour
jitter, grayscale, Gaussian blur and solarisation, with blur and solarisation probabilities
set per kind of view (global view 1, global view 2, local views). :class:`TwoViews` is the
BYOL (Grill et al., 2020) preset: two views, no local crops.

The same distribution has two implementations:

* ``views(image)`` on one PIL image, with torchvision transforms (DataLoader workers,
  image folders, CIFAR's ``augment="pil"``);
* ``views.batch(images)`` on a whole ``uint8`` batch on any device, every sample with its own
  random parameters and no Python loop over samples (CIFAR's ``augment="batch"``).

Both return float32 views in ``[0, 1]``, **not** normalised: the datamodule normalises them with
its own mean and std (see :class:`NormalizedViews`). Differences between the two paths are of
float rounding and resampling only: PIL works in ``uint8`` and resamples with its antialiased
bilinear filter, the batch path works in float32 and averages bilinear samples
(``roi_align``); grayscale uses the ITU-R 601-2 luma weights in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms

from lightning_kd.data.batch_augment import (
    color_jitter,
    crop_resize,
    gaussian_blur,
    random_resized_crop_boxes,
    rgb_to_grayscale,
    solarize,
)

__all__ = ["MultiCropViews", "NormalizedViews", "TwoViews", "blur_kernel_size"]


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian-blur kernel side of about 10% of the crop side: ``2 * round(size / 20) + 1``.

    23 for 224 px (as BYOL), 11 for 96 px, 5 for 32 px, 3 for 16 px, 1 (no blur) below 10 px.

    Args:
        size: Side of the crop in pixels.

    Returns:
        The kernel side, odd and ``>= 1``.
    """
    return 2 * round(size / 20) + 1


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_prob(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_probs(name: str, values: Sequence[float], length: int) -> tuple[float, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != length:
        raise ValueError(f"{name} must be {length} probabilities, got {values!r}")
    return tuple(_check_prob(f"{name}[{i}]", v) for i, v in enumerate(values))


def _check_range(
    name: str, values: Sequence[float], *, upper: float | None = None
) -> tuple[float, float]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {values!r}")
    lo, hi = float(values[0]), float(values[1])
    if not 0.0 < lo <= hi or (upper is not None and hi > upper):
        bound = f" <= {upper:g}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < min <= max{bound}, got {tuple(values)}")
    return lo, hi


def _check_jitter(values: Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 4:
        raise ValueError(f"jitter must be (brightness, contrast, saturation, hue), got {values!r}")
    b, c, s, h = (float(v) for v in values)
    if min(b, c, s) < 0 or not 0.0 <= h <= 0.5:
        raise ValueError(
            "jitter must have brightness, contrast, saturation >= 0 and hue in [0, 0.5], "
            f"got {tuple(values)}"
        )
    return b, c, s, h


class MultiCropViews:
    """Two global and ``num_local`` local views of an image, with DINO's augmentations.

    Each view is: random resized crop (aspect ratio in ``ratio``), horizontal flip with
    probability ``flip_prob``, colour jitter (brightness, contrast, saturation, hue in random
    order, as torchvision's ``ColorJitter``) with probability ``jitter_prob``, grayscale with
    probability ``grayscale_prob``, Gaussian blur (kernel :func:`blur_kernel_size` of the crop
    side, sigma uniform in ``blur_sigma``) and solarisation (``x -> 1 - x`` where
    ``x >= 0.5``), the last two with probabilities per kind of view.

    The defaults are for 32 px CIFAR images: global crops of 32 px, six local crops of 16 px,
    and no blur, which at 32 px mostly erases the little detail there is (blur kernels would
    be 5 and 3 px wide); solarisation stays on the second global view. :meth:`imagenet` gives
    the paper's ImageNet settings.

    Args:
        global_size: Side of the global crops.
        local_size: Side of the local crops.
        num_local: Number of local crops ``K >= 0``.
        global_scale: ``(min, max)`` area fraction of the global crops, in ``(0, 1]``.
        local_scale: ``(min, max)`` area fraction of the local crops, in ``(0, 1]``.
        ratio: ``(min, max)`` aspect ratio (width / height) of every crop.
        flip_prob: Probability of a horizontal flip.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths of the colour jitter, as
            torchvision's ``ColorJitter`` arguments (hue in ``[0, 0.5]``).
        jitter_prob: Probability of applying the colour jitter.
        grayscale_prob: Probability of converting to grayscale (3 equal channels).
        blur_probs: Blur probability for (global view 1, global view 2, local views).
        blur_sigma: ``(min, max)`` standard deviation of the blur, in pixels.
        solarize_probs: Solarisation probability for (global view 1, global view 2, local
            views).

    Raises:
        ValueError: If a size is < 1, ``num_local`` < 0, a scale is outside ``(0, 1]`` or
            unordered, or a probability is outside ``[0, 1]``.
    """

    def __init__(
        self,
        global_size: int = 32,
        local_size: int = 16,
        num_local: int = 6,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_prob: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_probs: tuple[float, float, float] = (0.0, 0.0, 0.0),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_probs: tuple[float, float, float] = (0.0, 0.2, 0.0),
    ) -> None:
        self.global_size = _check_int("global_size", global_size, 1)
        self.local_size = _check_int("local_size", local_size, 1)
        self.num_local = _check_int("num_local", num_local, 0)
        self.global_scale = _check_range("global_scale", global_scale, upper=1.0)
        self.local_scale = _check_range("local_scale", local_scale, upper=1.0)
        self.ratio = _check_range("ratio", ratio)
        self.flip_prob = _check_prob("flip_prob", flip_prob)
        self.jitter = _check_jitter(jitter)
        self.jitter_prob = _check_prob("jitter_prob", jitter_prob)
        self.grayscale_prob = _check_prob("grayscale_prob", grayscale_prob)
        self.blur_probs = _check_probs("blur_probs", blur_probs, 3)
        self.blur_sigma = _check_range("blur_sigma", blur_sigma)
        self.solarize_probs = _check_probs("solarize_probs", solarize_probs, 3)
        self._pipelines = [
            self._pil_pipeline(self.global_size, self.global_scale, kind) for kind in (0, 1)
        ]
        self._pipelines.append(self._pil_pipeline(self.local_size, self.local_scale, 2))

    @classmethod
    def imagenet(cls, num_local: int = 8) -> MultiCropViews:
        """DINO's ImageNet settings: 224 px global and 96 px local crops.

        Global scale ``(0.4, 1)``, local scale ``(0.05, 0.4)``, blur probabilities
        ``(1.0, 0.1, 0.5)``, solarisation ``(0, 0.2, 0)``; jitter, grayscale and flip as the
        defaults.

        Args:
            num_local: Number of local crops.

        Returns:
            The configured :class:`MultiCropViews`.
        """
        return MultiCropViews(
            global_size=224,
            local_size=96,
            num_local=num_local,
            global_scale=(0.4, 1.0),
            local_scale=(0.05, 0.4),
            blur_probs=(1.0, 0.1, 0.5),
            solarize_probs=(0.0, 0.2, 0.0),
        )

    @property
    def num_global(self) -> int:
        """Number of global views (2); they come first in the returned list."""
        return 2

    @property
    def num_views(self) -> int:
        """Total number of views, ``2 + num_local``."""
        return self.num_global + self.num_local

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global_size={self.global_size}, "
            f"local_size={self.local_size}, num_local={self.num_local}, "
            f"global_scale={self.global_scale}, local_scale={self.local_scale}, "
            f"ratio={self.ratio}, flip_prob={self.flip_prob}, jitter={self.jitter}, "
            f"jitter_prob={self.jitter_prob}, grayscale_prob={self.grayscale_prob}, "
            f"blur_probs={self.blur_probs}, blur_sigma={self.blur_sigma}, "
            f"solarize_probs={self.solarize_probs})"
        )

    # ------------------------------------------------------------------ per sample (PIL)
    def _pil_pipeline(self, size: int, scale: tuple[float, float], kind: int) -> transforms.Compose:
        """torchvision pipeline of one kind of view (0, 1: global views; 2: local views)."""
        b, c, s, h = self.jitter
        steps: list[Any] = [
            transforms.RandomResizedCrop(size, scale=scale, ratio=self.ratio, antialias=True),
            transforms.RandomHorizontalFlip(self.flip_prob),
            transforms.RandomApply(
                [transforms.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)],
                p=self.jitter_prob,
            ),
            transforms.RandomGrayscale(self.grayscale_prob),
        ]
        if self.blur_probs[kind] > 0:
            blur = transforms.GaussianBlur(blur_kernel_size(size), sigma=self.blur_sigma)
            steps.append(transforms.RandomApply([blur], p=self.blur_probs[kind]))
        if self.solarize_probs[kind] > 0:
            steps.append(transforms.RandomSolarize(128, p=self.solarize_probs[kind]))
        steps.append(transforms.ToTensor())
        return transforms.Compose(steps)

    def __call__(self, image: Image.Image) -> list[Tensor]:
        """Views of one image, drawn with torch's global CPU RNG.

        Args:
            image: An RGB PIL image of any size.

        Returns:
            ``[global1, global2, local1, ..., localK]``: float32 tensors in ``[0, 1]``,
            ``(3, global_size, global_size)`` then ``(3, local_size, local_size)``.
        """
        g1, g2, local = self._pipelines
        return [g1(image), g2(image)] + [local(image) for _ in range(self.num_local)]

    # ------------------------------------------------------------------ whole batch (tensor)
    def batch(self, images: Tensor, *, generator: torch.Generator | None = None) -> list[Tensor]:
        """Views of every image of a batch, each sample with its own random parameters.

        Vectorised over the batch: the two global views go through the pipeline together as
        one ``(2B, ...)`` batch and the local views as one ``(K B, ...)`` batch; crops are
        resized with ``roi_align``, the photometric transforms select per sample with
        ``torch.where``, blur is one grouped convolution (only if a blur probability is > 0).

        Args:
            images: ``uint8`` batch ``(B, 3, H, W)`` on any device.
            generator: Source of randomness on the images' device; ``None`` uses torch's
                global RNG for that device, so ``seed_everything`` makes runs repeatable.

        Returns:
            ``[global1, global2, local1, ..., localK]``: float32 tensors in ``[0, 1]`` on the
            images' device, ``(B, 3, global_size, global_size)`` then
            ``(B, 3, local_size, local_size)``.

        Raises:
            TypeError: If ``images`` is not a ``uint8`` tensor.
            ValueError: If it is not ``(B, 3, H, W)``.
        """
        if not isinstance(images, Tensor) or images.dtype != torch.uint8:
            got = images.dtype if isinstance(images, Tensor) else type(images).__name__
            raise TypeError(f"batch expects uint8 images (B, 3, H, W), got {got}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"batch expects images (B, 3, H, W), got {tuple(images.shape)}")
        b = images.shape[0]
        x = images.float().div_(255.0)  # (B, 3, H, W) in [0, 1]
        views = self._batch_kind(
            x,
            size=self.global_size,
            scale=self.global_scale,
            blur_probs=self.blur_probs[:2],
            solarize_probs=self.solarize_probs[:2],
            generator=generator,
        ).split(b)
        out = list(views)
        if self.num_local > 0:
            local = self._batch_kind(
                x,
                size=self.local_size,
                scale=self.local_scale,
                blur_probs=(self.blur_probs[2],) * self.num_local,
                solarize_probs=(self.solarize_probs[2],) * self.num_local,
                generator=generator,
            )
            out += list(local.split(b))
        return out

    def _batch_kind(
        self,
        images: Tensor,
        *,
        size: int,
        scale: tuple[float, float],
        blur_probs: Sequence[float],
        solarize_probs: Sequence[float],
        generator: torch.Generator | None,
    ) -> Tensor:
        """``V = len(blur_probs)`` views of each image as one ``(V B, 3, size, size)`` batch.

        Args:
            images: float ``(B, 3, H, W)`` in ``[0, 1]``.
            size: Crop side.
            scale: Crop area fraction.
            blur_probs: Blur probability of each of the ``V`` views.
            solarize_probs: Solarisation probability of each of the ``V`` views.
            generator: RNG on the images' device, or ``None``.

        Returns:
            ``(V B, 3, size, size)``: view ``v`` of image ``i`` at row ``v B + i``.
        """
        b, _, h, w = images.shape
        copies = len(blur_probs)
        n = copies * b
        device = images.device

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, device=device, generator=generator)

        def per_view(probs: Sequence[float]) -> Tensor:  # (N,) probability of each row
            return torch.tensor(probs, device=device).repeat_interleave(b)

        boxes = random_resized_crop_boxes(
            n, h, w, scale=scale, ratio=self.ratio, device=device, generator=generator
        )
        source = torch.arange(n, device=device) % b  # (N,) image of each row
        x = crop_resize(images, boxes, size, batch_index=source)  # (N, 3, s, s)

        flip = (rand(n) < self.flip_prob).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)

        bright, contr, satur, hue = self.jitter
        if self.jitter_prob > 0 and max(self.jitter) > 0:

            def factors(strength: float) -> Tensor | None:
                if strength == 0:
                    return None
                lo = max(0.0, 1.0 - strength)
                return lo + (1.0 + strength - lo) * rand(n)

            jittered = color_jitter(
                x,
                order=rand(n, 4).argsort(dim=1),  # a random permutation per row
                brightness=factors(bright),
                contrast=factors(contr),
                saturation=factors(satur),
                hue=(2.0 * rand(n) - 1.0) * hue if hue > 0 else None,
            )
            apply = (rand(n) < self.jitter_prob).view(-1, 1, 1, 1)
            x = torch.where(apply, jittered, x)

        if self.grayscale_prob > 0:
            gray = (rand(n) < self.grayscale_prob).view(-1, 1, 1, 1)
            x = torch.where(gray, rgb_to_grayscale(x).expand_as(x), x)

        kernel = blur_kernel_size(size)
        if max(blur_probs) > 0 and kernel > 1:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * rand(n)
            blur = (rand(n) < per_view(blur_probs)).view(-1, 1, 1, 1)
            x = torch.where(blur, gaussian_blur(x, sigma, kernel_size=kernel), x)

        if max(solarize_probs) > 0:
            x = solarize(x, rand(n) < per_view(solarize_probs))
        return x.clamp_(0.0, 1.0)


class TwoViews(MultiCropViews):
    """BYOL's two views: :class:`MultiCropViews` with no local crops.

    Both views are random resized crops of scale ``(0.08, 1)``; flip, colour jitter and
    grayscale as DINO. The defaults are for 32 px CIFAR images and so have no blur (see
    :class:`MultiCropViews`); solarisation ``(0, 0.2)`` as in BYOL. :meth:`imagenet` gives the
    paper's ImageNet settings.

    Args:
        size: Side of both views.
        scale: ``(min, max)`` area fraction of the crops, in ``(0, 1]``.
        ratio: ``(min, max)`` aspect ratio (width / height).
        flip_prob: Probability of a horizontal flip.
        jitter: ``(brightness, contrast, saturation, hue)`` of the colour jitter.
        jitter_prob: Probability of applying the colour jitter.
        grayscale_prob: Probability of converting to grayscale.
        blur_probs: Blur probability of (view 1, view 2).
        blur_sigma: ``(min, max)`` standard deviation of the blur, in pixels.
        solarize_probs: Solarisation probability of (view 1, view 2).

    Raises:
        ValueError: As :class:`MultiCropViews`, or if a probability pair is not 2 values.
    """

    def __init__(
        self,
        size: int = 32,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_prob: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_probs: tuple[float, float] = (0.0, 0.0),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_probs: tuple[float, float] = (0.0, 0.2),
    ) -> None:
        blur = _check_probs("blur_probs", blur_probs, 2)
        sol = _check_probs("solarize_probs", solarize_probs, 2)
        super().__init__(
            global_size=size,
            local_size=size,
            num_local=0,
            global_scale=scale,
            local_scale=scale,
            ratio=ratio,
            flip_prob=flip_prob,
            jitter=jitter,
            jitter_prob=jitter_prob,
            grayscale_prob=grayscale_prob,
            blur_probs=(blur[0], blur[1], 0.0),
            blur_sigma=blur_sigma,
            solarize_probs=(sol[0], sol[1], 0.0),
        )

    @classmethod
    def imagenet(cls) -> TwoViews:  # type: ignore[override]
        """BYOL's ImageNet settings: 224 px, blur ``(1.0, 0.1)``, solarisation ``(0, 0.2)``.

        Returns:
            The configured :class:`TwoViews`.
        """
        return TwoViews(size=224, blur_probs=(1.0, 0.1), solarize_probs=(0.0, 0.2))


class NormalizedViews:
    """Per-sample views followed by ``Normalize(mean, std)`` on each view (picklable).

    Args:
        views: The view maker.
        mean: Per-channel mean in ``[0, 1]`` units.
        std: Per-channel standard deviation, all ``> 0``.

    Raises:
        ValueError: If mean and std do not have the same length or a std is not positive.
    """

    def __init__(self, views: MultiCropViews, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(not s > 0 for s in std):
            raise ValueError(
                f"mean and std need the same length and std > 0, got {tuple(mean)} and {tuple(std)}"
            )
        self.views = views
        self.normalize = transforms.Normalize(list(mean), list(std))

    def __call__(self, image: Image.Image) -> list[Tensor]:
        """Normalised views of one image: float32 ``(3, s, s)`` tensors, globals first."""
        return [self.normalize(v) for v in self.views(image)]
