"""Batch transforms: from a ``uint8`` batch to the views a method trains on.

A batch transform is a small callable ``transform(images, keys) -> list[Tensor]``: ``images``
is a ``uint8 (B, 3, H, W)`` batch on the device, ``keys`` its
:class:`~lightning_kd.data.keyed_random.SampleKeys` (seed, epoch and each sample's dataset
index), and every random parameter of a sample's views is drawn from ``keys``. So a sample's
views are a pure function of ``(seed, epoch, index)``: the same whatever the batch size, the
number of processes or workers, and recomputable later. The views come back as ``uint8`` or
float32 in ``[0, 1]``, not normalised: the datamodule normalises them with its dataset's mean
and std. The datamodules take a transform in YAML (``transform: {class_path: ...}``):

* :class:`CropFlip`: pad-and-crop plus horizontal flip, one view (supervised training, KD) or
  ``num_views`` independent ones (two for Mean Teacher);
* :class:`MultiCropViews`: DINO's two global and ``K`` local crops (Caron et al., 2021);
* :class:`TwoViews`: BYOL's two views (Grill et al., 2020);
* :class:`~lightning_kd.data.strong_augment.StrongAugment`: a weak (crop + flip) and a strong
  (crop + flip + RandAugment) view, for multi-view logit distillation (MLKD).

Draw streams: view ``v`` of a transform uses streams ``v * 64 + q`` for its parameters ``q``
(:class:`CropFlip` draws all its views from stream 0, view ``v`` in its own columns), so two
views never share a random number. :class:`MultiCropViews` also keeps a per-image
torchvision path (:meth:`MultiCropViews.pil_views`) for datamodules that decode files
(``ImageFolderDataModule``); it draws from torch's CPU RNG, which that datamodule seeds per
sample from the same keys. The two paths differ in float rounding and resampling only (PIL
works in ``uint8`` with its antialiased bilinear filter, the batch path in float32 with
``roi_align``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms

from lightning_kd.data.keyed_random import SampleKeys
from lightning_kd.data.ops import (
    CROP_ATTEMPTS,
    color_jitter,
    crop_flip,
    crop_resize,
    gaussian_blur,
    resized_crop_boxes,
    rgb_to_grayscale,
    solarize,
)

__all__ = [
    "BatchTransform",
    "CropFlip",
    "MultiCropViews",
    "NormalizedViews",
    "TwoViews",
    "blur_kernel_size",
    "check_uint8_batch",
    "stream",
]

#: Draw streams reserved per view (see the module docstring).
STREAMS_PER_VIEW = 64


#: Uniform draws per view of :class:`MultiCropViews`: crop box, flip, 9 for the colour jitter
#: (4 order keys, 4 factors, apply), grayscale, 2 for the blur (sigma, apply), solarise.
_CROP = 2 * CROP_ATTEMPTS + 2
_VIEW_DRAWS = _CROP + 14


def stream(view: int, draw: int) -> int:
    """The stream of parameter ``draw`` (``< 64``) of view ``view``."""
    if not 0 <= draw < STREAMS_PER_VIEW:
        raise ValueError(f"draw must be in [0, {STREAMS_PER_VIEW}), got {draw}")
    return view * STREAMS_PER_VIEW + draw


def check_uint8_batch(images: Any, keys: SampleKeys) -> None:
    """Raise unless ``images`` is a ``uint8 (B, 3, H, W)`` batch with ``B == len(keys)``."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"a batch transform expects uint8 images (B, 3, H, W), got {got}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"a batch transform expects images (B, 3, H, W), got {tuple(images.shape)}"
        )
    if images.shape[0] != len(keys):
        raise ValueError(f"{images.shape[0]} images but {len(keys)} sample keys")


class BatchTransform:
    """Base of the batch transforms: ``transform(images, keys) -> list of num_views views``.

    Subclasses set :attr:`num_views` and implement :meth:`__call__`.
    """

    #: Number of views returned per image.
    num_views: int = 1

    def __call__(self, images: Tensor, keys: SampleKeys) -> list[Tensor]:
        """Views of every image of the batch.

        Args:
            images: ``uint8`` ``(B, 3, H, W)`` on any device.
            keys: The batch's sample keys, on the same device.

        Returns:
            ``num_views`` tensors ``(B, 3, h, w)``, ``uint8`` or float32 in ``[0, 1]``.
        """
        raise NotImplementedError


class CropFlip(BatchTransform):
    """Random crop after zero padding, then horizontal flip: CIFAR's standard augmentation.

    Per view and sample: offsets ``(dy, dx)`` uniform in ``[0, 2 * padding]`` and a flip with
    probability ``flip_prob`` (torchvision's ``RandomCrop(H, padding)`` then
    ``RandomHorizontalFlip``, zero fill), done on ``uint8`` by one gather
    (:func:`~lightning_kd.data.ops.crop_flip`). All views draw from stream 0, view ``v`` in
    columns ``3v .. 3v + 2``, so view 0 is the same whatever ``num_views``.

    Args:
        padding: Zero padding on every side; ``0`` flips only.
        flip_prob: Probability of the flip.
        num_views: Independent views per image (2 for Mean Teacher's student and teacher).

    Raises:
        ValueError: If ``padding < 0``, ``flip_prob`` is outside ``[0, 1]`` or
            ``num_views < 1``.
    """

    def __init__(self, padding: int = 4, flip_prob: float = 0.5, num_views: int = 1) -> None:
        self.padding = _check_int("padding", padding, 0)
        self.flip_prob = _check_prob("flip_prob", flip_prob)
        self.num_views = _check_int("num_views", num_views, 1)

    def __repr__(self) -> str:
        return (
            f"CropFlip(padding={self.padding}, flip_prob={self.flip_prob}, "
            f"num_views={self.num_views})"
        )

    def __call__(self, images: Tensor, keys: SampleKeys) -> list[Tensor]:
        """``num_views`` cropped and flipped ``uint8`` views ``(B, 3, H, W)``."""
        check_uint8_batch(images, keys)
        # One draw call for all views (each call costs a dozen small ops): view v takes
        # columns 3v .. 3v + 2 (dy, dx, flip) of stream 0.
        u = keys.uniform(stream(0, 0), 3 * self.num_views)  # (B, 3 V)
        offsets = (u * (2 * self.padding + 1)).long()  # offsets in [0, 2 * padding]
        flips = u < self.flip_prob
        return [
            crop_flip(
                images, offsets[:, 3 * v : 3 * v + 2], flips[:, 3 * v + 2], padding=self.padding
            )
            for v in range(self.num_views)
        ]


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


class MultiCropViews(BatchTransform):
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
        #: Total number of views, ``2 + num_local``.
        self.num_views = 2 + self.num_local
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

    def pil_views(self, image: Image.Image) -> list[Tensor]:
        """Views of one decoded image, drawn with torch's global CPU RNG (seed it per sample,
        as ``ImageFolderDataModule`` does, to make them a function of the sample's keys).

        Args:
            image: An RGB PIL image of any size.

        Returns:
            ``[global1, global2, local1, ..., localK]``: float32 tensors in ``[0, 1]``,
            ``(3, global_size, global_size)`` then ``(3, local_size, local_size)``.
        """
        g1, g2, local = self._pipelines
        return [g1(image), g2(image)] + [local(image) for _ in range(self.num_local)]

    # ------------------------------------------------------------------ whole batch (tensor)
    def __call__(self, images: Tensor, keys: SampleKeys) -> list[Tensor]:
        """Views of every image of a batch, each from its sample's own keyed draws.

        Vectorised over the batch: the two global views go through the pipeline together as
        one ``(2B, ...)`` batch and the local views as one ``(K B, ...)`` batch; crops are
        resized with ``roi_align``, the photometric transforms select per sample with
        ``torch.where``, blur is one grouped convolution (only if a blur probability is > 0).
        Global views are views 0 and 1, local view ``k`` is view ``2 + k`` (draw streams).

        Args:
            images: ``uint8`` batch ``(B, 3, H, W)`` on any device.
            keys: The batch's sample keys, on the same device.

        Returns:
            ``[global1, global2, local1, ..., localK]``: float32 tensors in ``[0, 1]`` on the
            images' device, ``(B, 3, global_size, global_size)`` then
            ``(B, 3, local_size, local_size)``.

        Raises:
            TypeError: If ``images`` is not a ``uint8`` tensor.
            ValueError: If it is not ``(B, 3, H, W)`` with one key per image.
        """
        check_uint8_batch(images, keys)
        b = images.shape[0]
        x = images.float().div_(255.0)  # (B, 3, H, W) in [0, 1]
        views = self._batch_kind(
            x,
            keys,
            first_view=0,
            size=self.global_size,
            scale=self.global_scale,
            blur_probs=self.blur_probs[:2],
            solarize_probs=self.solarize_probs[:2],
        ).split(b)
        out = list(views)
        if self.num_local > 0:
            local = self._batch_kind(
                x,
                keys,
                first_view=2,
                size=self.local_size,
                scale=self.local_scale,
                blur_probs=(self.blur_probs[2],) * self.num_local,
                solarize_probs=(self.solarize_probs[2],) * self.num_local,
            )
            out += list(local.split(b))
        return out

    def _batch_kind(
        self,
        images: Tensor,
        keys: SampleKeys,
        *,
        first_view: int,
        size: int,
        scale: tuple[float, float],
        blur_probs: Sequence[float],
        solarize_probs: Sequence[float],
    ) -> Tensor:
        """``V = len(blur_probs)`` views of each image as one ``(V B, 3, size, size)`` batch.

        Args:
            images: float ``(B, 3, H, W)`` in ``[0, 1]``.
            keys: The batch's sample keys.
            first_view: View number of the first of the ``V`` views (draw streams).
            size: Crop side.
            scale: Crop area fraction.
            blur_probs: Blur probability of each of the ``V`` views.
            solarize_probs: Solarisation probability of each of the ``V`` views.

        Returns:
            ``(V B, 3, size, size)``: view ``v`` of image ``i`` at row ``v B + i``.
        """
        b, _, h, w = images.shape
        copies = len(blur_probs)
        n = copies * b
        device = images.device

        # All draws of a view in one call (columns below), rows v B + i.
        u = torch.cat([keys.uniform(stream(first_view + v, 0), _VIEW_DRAWS) for v in range(copies)])
        crop_u = u[:, :_CROP]
        flip_u, jitter_u = u[:, _CROP], u[:, _CROP + 1 : _CROP + 10]
        gray_u, blur_u, solarize_u = (
            u[:, _CROP + 10],
            u[:, _CROP + 11 : _CROP + 13],
            u[:, _CROP + 13],
        )

        def per_view(probs: Sequence[float]) -> Tensor:  # (N,) probability of each row
            return torch.tensor(probs, device=device).repeat_interleave(b)

        boxes = resized_crop_boxes(crop_u, h, w, scale=scale, ratio=self.ratio)
        source = torch.arange(n, device=device) % b  # (N,) image of each row
        x = crop_resize(images, boxes, size, batch_index=source)  # (N, 3, s, s)

        flip = (flip_u < self.flip_prob).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)

        bright, contr, satur, hue = self.jitter
        if self.jitter_prob > 0 and max(self.jitter) > 0:
            # jitter_u (N, 9): 4 order keys, 4 factors, apply
            def factors(strength: float, column: int) -> Tensor | None:
                if strength == 0:
                    return None
                lo = max(0.0, 1.0 - strength)
                return lo + (1.0 + strength - lo) * jitter_u[:, column]

            jittered = color_jitter(
                x,
                order=jitter_u[:, :4].argsort(dim=1),  # a random permutation per row
                brightness=factors(bright, 4),
                contrast=factors(contr, 5),
                saturation=factors(satur, 6),
                hue=(2.0 * jitter_u[:, 7] - 1.0) * hue if hue > 0 else None,
            )
            apply = (jitter_u[:, 8] < self.jitter_prob).view(-1, 1, 1, 1)
            x = torch.where(apply, jittered, x)

        if self.grayscale_prob > 0:
            gray = (gray_u < self.grayscale_prob).view(-1, 1, 1, 1)
            x = torch.where(gray, rgb_to_grayscale(x).expand_as(x), x)

        kernel = blur_kernel_size(size)
        if max(blur_probs) > 0 and kernel > 1:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * blur_u[:, 0]
            blur = (blur_u[:, 1] < per_view(blur_probs)).view(-1, 1, 1, 1)
            x = torch.where(blur, gaussian_blur(x, sigma, kernel_size=kernel), x)

        if max(solarize_probs) > 0:
            x = solarize(x, solarize_u < per_view(solarize_probs))
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
        return [self.normalize(v) for v in self.views.pil_views(image)]
