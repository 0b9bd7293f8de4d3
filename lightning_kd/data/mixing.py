"""Keyed mixup and CutMix: batch transforms whose partner and mixing ratio are pure functions of
``(seed, epoch, sample index)``.

The published recipes mix each image with another image *of its batch* (a permutation of the
batch) and draw one ratio per batch, so what a sample sees depends on the batch it falls in, the
batch size and the number of processes. Here every draw is keyed by the sample, as every other
view of the library (:mod:`lightning_kd.data.keyed_random`):

* the **partner** of image ``i`` is a position drawn uniformly in the whole training set
  ``[0, N)`` (possibly outside the batch, possibly ``i`` itself, with probability ``1 / N``);
  the datamodule fetches it (:meth:`~lightning_kd.data.datamodule.ImageDataModule.make_views`),
  and its view is the partner's own keyed view of that epoch (the ``base`` transform keyed by
  the partner's sample index);
* the **ratio** ``lam`` (and CutMix's box centre, and whether the sample is mixed at all) is
  drawn from image ``i``'s keys.

So a mixed view is recomputable from ``(view_seed, epoch, index)``, identical whatever the batch
size or number of processes, and a teacher's output for it can be cached and replayed. Teacher
and student see the same mixed image ("consistent teaching", Beyer et al., CVPR 2022).

The training targets then say the mix: ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)``, float32
``(B, C)`` (:func:`mixed_targets`); cross-entropy with these is the authors'
``lam * CE(y_i) + (1 - lam) * CE(y_j)``.

**Streams.** A base transform draws view ``v``'s parameters from streams ``64 v + q``
(:func:`~lightning_kd.data.transforms.stream`), for the views ``v < num_views`` it makes; the
mixing draws use the streams of view ``MIX_VIEW = 2**20`` (partner: draw 0, the other
parameters: draw 1), far above any view count, so they never share a random number with the
base transform's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_kd.data.keyed_random import SampleKeys
from lightning_kd.data.transforms import BatchTransform, CropFlip, check_uint8_batch, stream

__all__ = [
    "GAMMA_ROUNDS",
    "MIX_VIEW",
    "CutMix",
    "MixUp",
    "MixedViews",
    "MixingTransform",
    "beta_uniforms",
    "cutmix_boxes",
    "mixed_targets",
    "symmetric_beta",
]

#: The view number whose streams the mixing draws use (see the module docstring).
MIX_VIEW = 2**20
_PARTNER_STREAM = stream(MIX_VIEW, 0)
_PARAM_STREAM = stream(MIX_VIEW, 1)

#: Marsaglia-Tsang rejection rounds per gamma variate of :func:`symmetric_beta`.
GAMMA_ROUNDS = 8


# ----------------------------------------------------------------------------- Beta(a, a)
# Why a ratio of gammas with a bounded number of keyed rejection rounds. A keyed draw must use
# a fixed number of uniforms per sample (the same columns whatever the batch), so an unbounded
# rejection loop is out. The inverse CDF would be exact with one uniform, but torch has no
# regularised incomplete beta function: a hand-written continued fraction inverted by Newton or
# bisection needs dozens of iterations per sample and loses float32 accuracy near 0 and 1,
# where Beta(0.2, 0.2) puts most of its mass. Instead lam = X / (X + Y) with X, Y ~ Gamma(a)
# (exact), each gamma by Marsaglia and Tsang (2000): for shape s >= 1, d = s - 1/3,
# c = 1 / sqrt(9 d), x ~ N(0, 1), v = (1 + c x)^3, accept d v if v > 0 and
# log u < x^2 / 2 + d - d v + d log v; for a < 1, Gamma(a) = Gamma(a + 1) * U^(1/a). The
# acceptance rate is >= 0.951 (at s = 1) and grows with s, so GAMMA_ROUNDS = 8 rounds all reject
# with probability <= 0.049^8 < 4e-11 per gamma; then (the documented fallback) the variate is
# d, the value at x = 0 (about the median of Gamma(s)). Everything runs in log space
# (lam = 1 / (1 + exp(log Y - log X))), so tiny alphas do not underflow. Normals are Box-Muller from
# 23-bit uniforms in (0, 1), so |x| <= 5.8: the tails beyond 5.8 sd (probability 7e-9) are cut.
# For alpha == 1 lam is the keyed uniform itself (Beta(1, 1) is uniform).


def beta_uniforms(alpha: float) -> int:
    """How many uniforms :func:`symmetric_beta` takes per sample for ``alpha``.

    Returns:
        1 for ``alpha == 1``; else ``2 * (3 * GAMMA_ROUNDS + [alpha < 1])`` (two gammas, each
        ``GAMMA_ROUNDS`` rounds of (radius, angle, acceptance), plus the ``U^(1/a)`` boost).
    """
    if alpha == 1.0:
        return 1
    return 2 * (3 * GAMMA_ROUNDS + (1 if alpha < 1.0 else 0))


def symmetric_beta(u: Tensor, alpha: float) -> Tensor:
    """``lam ~ Beta(alpha, alpha)`` from given uniforms (see the comment above the function).

    Args:
        u: float ``(N, beta_uniforms(alpha))`` uniforms in the open interval ``(0, 1)`` (for
            ``alpha == 1``, ``[0, 1)`` is fine).
        alpha: The concentration ``> 0``.

    Returns:
        float32 ``(N,)`` in ``[0, 1]``, a pure function of ``u``.

    Raises:
        ValueError: If ``alpha`` is not finite and > 0 or ``u`` has the wrong shape.
    """
    _check_alpha(alpha)
    need = beta_uniforms(alpha)
    if u.dim() != 2 or u.shape[1] != need:
        raise ValueError(
            f"symmetric_beta(alpha={alpha}) takes uniforms (N, {need}), got {tuple(u.shape)}"
        )
    u = u.float()
    if alpha == 1.0:
        return u[:, 0].clone()
    half = need // 2
    log_x = _log_gamma(u[:, :half], alpha)  # (N,)
    log_y = _log_gamma(u[:, half:], alpha)  # (N,)
    # X / (X + Y) = 1 / (1 + exp(log Y - log X)), not torch.sigmoid: its vectorised and scalar
    # CPU kernels round differently, so a sample's lam would depend on its place in the batch.
    return 1.0 / (1.0 + torch.exp(log_y - log_x))


def _log_gamma(u: Tensor, alpha: float) -> Tensor:
    """``log G``, ``G ~ Gamma(alpha, 1)``, from ``(N, 3 R [+ 1])`` open uniforms (Marsaglia-Tsang,
    ``R = GAMMA_ROUNDS`` rounds, first accepted round wins, fallback ``G = d``)."""
    rounds = GAMMA_ROUNDS
    shape = alpha + 1.0 if alpha < 1.0 else alpha
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    radius, angle, accept = u[:, :rounds], u[:, rounds : 2 * rounds], u[:, 2 * rounds : 3 * rounds]
    x = torch.sqrt(-2.0 * torch.log(radius)) * torch.cos((2.0 * math.pi) * angle)  # (N, R)
    t = 1.0 + c * x
    log_v = 3.0 * torch.log(t.clamp_min(1e-30))  # (N, R), log v where v > 0
    v = torch.exp(log_v)
    ok = (t > 0) & (torch.log(accept) < 0.5 * x * x + d - d * v + d * log_v)  # (N, R)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first accepted round
    chosen = log_v.gather(1, first).squeeze(1)  # (N,)
    log_g = math.log(d) + torch.where(ok.any(dim=1), chosen, torch.zeros_like(chosen))
    if alpha < 1.0:
        log_g = log_g + torch.log(u[:, 3 * rounds]) / alpha  # Gamma(a) = Gamma(a + 1) U^(1/a)
    return log_g


def _open_uniform(bits: Tensor) -> Tensor:
    """float32 uniforms in ``(0, 1)`` (23-bit, exact midpoints ``(k + 0.5) / 2**23``)."""
    return ((bits >> 9).float() + 0.5) * 2.0**-23


def _uniform(bits: Tensor) -> Tensor:
    """float32 uniforms in ``[0, 1)`` (24-bit), as :meth:`SampleKeys.uniform`."""
    return (bits >> 8).float() * 2.0**-24


def _integers(bits: Tensor, high: int) -> Tensor:
    """int64 uniform in ``[0, high)``, as :meth:`SampleKeys.integers`."""
    return (bits >> 8) * high >> 24


# ----------------------------------------------------------------------------- targets, boxes


def mixed_targets(
    targets: Tensor, partner_targets: Tensor, lam: Tensor, num_classes: int
) -> Tensor:
    """The soft targets of mixed images: ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)``.

    Args:
        targets: int64 ``(B,)`` labels of the images.
        partner_targets: int64 ``(B,)`` labels of their partners.
        lam: float ``(B,)`` weight of each image's own label (1 where it was not mixed).
        num_classes: ``C``.

    Returns:
        float32 ``(B, C)``, rows summing to 1 (a single 1 where ``y_i == y_j``).

    Raises:
        ValueError: If the shapes do not match or ``num_classes < 1``.
        TypeError: If the labels are not integer tensors.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, labels in (("targets", targets), ("partner_targets", partner_targets)):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"{name} must be integer class indices (B,), got dtype {labels.dtype}; mixing "
                "applies to the labels of a plain (unmixed) batch"
            )
    b = targets.shape[0]
    if targets.shape != (b,) or partner_targets.shape != (b,) or lam.shape != (b,):
        raise ValueError(
            "targets, partner_targets and lam must all be (B,), got "
            f"{tuple(targets.shape)}, {tuple(partner_targets.shape)} and {tuple(lam.shape)}"
        )
    lam = lam.float()
    out = torch.zeros(b, num_classes, dtype=torch.float32, device=targets.device)  # (B, C)
    out.scatter_add_(1, targets.long().unsqueeze(1), lam.unsqueeze(1))
    return out.scatter_add_(1, partner_targets.long().unsqueeze(1), (1.0 - lam).unsqueeze(1))


def cutmix_boxes(
    lam: Tensor, centre_y: Tensor, centre_x: Tensor, *, height: int, width: int
) -> Tensor:
    """CutMix boxes as the authors' ``rand_bbox`` (clovaai/CutMix-PyTorch, ``train.py``): sides
    ``floor(H sqrt(1 - lam))`` and ``floor(W sqrt(1 - lam))``, halved (integer division) on
    each side of the centre, clipped to the image.

    Args:
        lam: float ``(B,)`` drawn ratio; the box covers about ``1 - lam`` of the image.
        centre_y: int64 ``(B,)`` centre rows in ``[0, height)``.
        centre_x: int64 ``(B,)`` centre columns in ``[0, width)``.
        height: Image height ``H``.
        width: Image width ``W``.

    Returns:
        int64 ``(B, 4)``: ``(y1, y2, x1, x2)``, the box is rows ``y1 <= r < y2`` and columns
        ``x1 <= c < x2``.
    """
    ratio = torch.sqrt((1.0 - lam.float()).clamp_min(0.0))  # (B,)
    half_h = torch.floor(height * ratio).long() // 2
    half_w = torch.floor(width * ratio).long() // 2
    y1 = (centre_y - half_h).clamp(0, height)
    y2 = (centre_y + half_h).clamp(0, height)
    x1 = (centre_x - half_w).clamp(0, width)
    x2 = (centre_x + half_w).clamp(0, width)
    return torch.stack([y1, y2, x1, x2], dim=1)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """bool ``(B, 1, H, W)``: True inside each row's box ``(y1, y2, x1, x2)``."""
    rows = torch.arange(height, device=boxes.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, 1, width)
    y1, y2, x1, x2 = (boxes[:, k].view(-1, 1, 1, 1) for k in range(4))
    return (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)


# ----------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class MixedViews:
    """The views of a mixed batch and how they were mixed.

    Attributes:
        views: ``num_views`` tensors ``(B, 3, h, w)``: each image's view ``v`` mixed with its
            partner's view ``v`` (same partner and ratio for every view).
        lam: float32 ``(B,)``: the weight of each image's own label in its target (1 where it
            was not mixed; for CutMix the exact fraction of pixels kept).
    """

    views: list[Tensor]
    lam: Tensor


class MixingTransform(BatchTransform):
    """Base of :class:`MixUp` and :class:`CutMix`: a ``base`` view of every image, mixed with the
    same view of a partner image of the training set.

    A mixing transform cannot run on a batch alone (its partners are images of the training set,
    not of the batch): :class:`~lightning_kd.data.datamodule.ImageDataModule` draws the partners
    with :meth:`partners`, fetches them and calls :meth:`mix_batch`. Subclasses implement
    :meth:`mix`.

    Args:
        base: Makes each image's views before mixing; ``None`` is
            :class:`~lightning_kd.data.transforms.CropFlip` (pad 4, flip). Not itself a mixing
            transform.
        alpha: Concentration of ``lam ~ Beta(alpha, alpha)``, finite and ``> 0`` (1: uniform).
        prob: Probability that an image is mixed at all (else its target is its own label).

    Raises:
        TypeError: If ``base`` is not a :class:`BatchTransform` or is a mixing transform.
        ValueError: If ``alpha`` is not finite and ``> 0`` or ``prob`` is outside ``[0, 1]``.
    """

    def __init__(
        self, base: BatchTransform | None = None, alpha: float = 1.0, prob: float = 1.0
    ) -> None:
        if base is None:
            base = CropFlip()
        if not isinstance(base, BatchTransform) or isinstance(base, MixingTransform):
            raise TypeError(
                f"{type(self).__name__}'s base must be a BatchTransform that is not itself a "
                f"mixing transform (e.g. CropFlip()), got {base!r}"
            )
        _check_alpha(alpha)
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be a probability in [0, 1], got {prob!r}")
        self.base = base
        self.alpha = float(alpha)
        self.prob = float(prob)
        #: Views per image: those of ``base``.
        self.num_views = base.num_views

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={self.base!r}, alpha={self.alpha}, prob={self.prob})"

    def __call__(self, images: Tensor, keys: SampleKeys) -> list[Tensor]:
        """Not available: the partners are images of the training set, not of the batch.

        Raises:
            TypeError: Always; use it as the ``transform`` of an
                :class:`~lightning_kd.data.datamodule.ImageDataModule` (e.g.
                ``CIFAR100DataModule``), or call :meth:`mix_batch` with the partner images.
        """
        raise TypeError(
            f"{self!r} mixes each image with a partner image of the training set, so it cannot "
            "run on a batch alone; it is the transform of an ImageDataModule (e.g. "
            "CIFAR100DataModule(transform=MixUp())), whose make_views fetches the partners "
            "(semi-supervised and image-folder datamodules do not support mixing), or call "
            "mix_batch(images, keys, partner_images, partner_keys)"
        )

    def partners(self, keys: SampleKeys, num_images: int) -> Tensor:
        """The partner of each image: a position in the training set, keyed by the image.

        Args:
            keys: The batch's sample keys.
            num_images: Size ``N`` of the training set.

        Returns:
            int64 ``(B,)`` uniform in ``[0, N)``, on ``keys.device``.

        Raises:
            ValueError: If ``num_images`` is not in ``[1, 2**24]``.
        """
        if not 1 <= num_images <= 2**24:
            raise ValueError(
                f"a mixing transform draws partners among 1 to 2**24 training images, got "
                f"num_images={num_images}"
            )
        return keys.integers(_PARTNER_STREAM, num_images)

    def mix_batch(
        self, images: Tensor, keys: SampleKeys, partner_images: Tensor, partner_keys: SampleKeys
    ) -> MixedViews:
        """The mixed views of a batch, given its partners' images and keys.

        The base transform makes the views of both in one call (``2B`` rows; each row's view
        depends only on its own keys, so a partner's view is its keyed view of this epoch), then
        :meth:`mix` mixes them.

        Args:
            images: ``uint8 (B, 3, H, W)``.
            keys: The batch's sample keys.
            partner_images: ``uint8 (B, 3, H, W)``: image ``i``'s partner in row ``i``.
            partner_keys: The partners' sample keys (same seed and epoch as ``keys``).

        Returns:
            The :class:`MixedViews`.

        Raises:
            TypeError: If the images are not ``uint8`` batches.
            ValueError: On mismatched shapes, seeds or epochs.
        """
        check_uint8_batch(images, keys)
        check_uint8_batch(partner_images, partner_keys)
        if partner_images.shape != images.shape:
            raise ValueError(
                f"partner_images must have the images' shape {tuple(images.shape)}, got "
                f"{tuple(partner_images.shape)}"
            )
        if (partner_keys.seed, partner_keys.epoch) != (keys.seed, keys.epoch):
            raise ValueError(
                "partner_keys must have the batch's seed and epoch "
                f"({keys.seed}, {keys.epoch}), got ({partner_keys.seed}, {partner_keys.epoch})"
            )
        b = images.shape[0]
        both = SampleKeys(keys.seed, keys.epoch, torch.cat([keys.indices, partner_keys.indices]))
        views = self.base(torch.cat([images, partner_images]), both)
        return self.mix([v[:b] for v in views], [v[b:] for v in views], keys)

    def mix(self, views: list[Tensor], partner_views: list[Tensor], keys: SampleKeys) -> MixedViews:
        """Mix each image's views with its partner's, with parameters drawn from ``keys``.

        Args:
            views: ``num_views`` tensors ``(B, 3, h, w)`` (``uint8`` or float in ``[0, 1]``).
            partner_views: The partners' views, same shapes.
            keys: The batch's sample keys (the images', not the partners').

        Returns:
            The :class:`MixedViews`.
        """
        raise NotImplementedError

    def _draws(self, keys: SampleKeys, extra: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(apply (B,) bool, lam (B,) float32, extra bits (B, extra))`` from one keyed call:
        column 0 decides whether to mix, the next :func:`beta_uniforms` columns give lam."""
        n_beta = beta_uniforms(self.alpha)
        bits = keys.bits(_PARAM_STREAM, 1 + n_beta + extra)  # (B, D)
        apply = _uniform(bits[:, 0]) < self.prob
        lam_bits = bits[:, 1 : 1 + n_beta]
        u = _uniform(lam_bits) if self.alpha == 1.0 else _open_uniform(lam_bits)
        return apply, symmetric_beta(u, self.alpha), bits[:, 1 + n_beta :]


class MixUp(MixingTransform):
    """Mixup (Zhang et al., ICLR 2018), keyed: ``x = lam * x_i + (1 - lam) * x_j``.

    ``lam ~ Beta(alpha, alpha)`` per image (the authors, facebookresearch/mixup-cifar10, draw
    one per batch and pair the batch with a permutation of itself; here the partner ``j`` and
    ``lam`` are keyed by image ``i``, see :mod:`lightning_kd.data.mixing`). With probability
    ``1 - prob`` an image is left as its base view (``lam = 1``). Views come back as float32 in
    ``[0, 1]``.

    Args:
        base: The views before mixing (default :class:`~lightning_kd.data.transforms.CropFlip`).
        alpha: Concentration of the Beta (1.0: uniform, as FunMatch; 0.2 / 1.0 in the mixup
            paper's ImageNet / CIFAR runs).
        prob: Probability that an image is mixed.
    """

    def mix(self, views: list[Tensor], partner_views: list[Tensor], keys: SampleKeys) -> MixedViews:
        """``lam * view + (1 - lam) * partner_view`` for every view, float32 in ``[0, 1]``."""
        _check_pairs(views, partner_views, len(keys), same_size=False)
        apply, lam, _ = self._draws(keys, 0)
        lam = torch.where(apply, lam, torch.ones_like(lam))  # (B,)
        weight = lam.view(-1, 1, 1, 1)
        mixed = [
            torch.lerp(_to_unit(p), _to_unit(v), weight)  # p + lam (v - p)
            for v, p in zip(views, partner_views, strict=True)
        ]
        return MixedViews(mixed, lam)


class CutMix(MixingTransform):
    """CutMix (Yun et al., ICCV 2019), keyed: a box of about ``1 - lam`` of the image is pasted
    from the partner.

    As the authors' code (clovaai/CutMix-PyTorch ``train.py``, :func:`cutmix_boxes`): ``lam ~
    Beta(alpha, alpha)``, box sides ``floor(H sqrt(1 - lam))`` x ``floor(W sqrt(1 - lam))``
    centred on a uniform pixel, clipped to the image, then ``lam`` corrected to the exact
    fraction of pixels kept, ``1 - box area / (H W)``. Keyed per image (the authors use one box
    and one permutation per batch). With probability ``1 - prob`` an image is not mixed (the
    authors' CIFAR runs use ``cutmix_prob=0.5``). Every view gets the same box, so the base's
    views must share one size. Views keep the base's dtype.

    Args:
        base: The views before mixing (default :class:`~lightning_kd.data.transforms.CropFlip`).
        alpha: Concentration of the Beta (1.0 in the authors' runs).
        prob: Probability that an image is mixed.
    """

    def mix(self, views: list[Tensor], partner_views: list[Tensor], keys: SampleKeys) -> MixedViews:
        """Paste each image's box from its partner, in every view.

        Raises:
            ValueError: If the views do not all have the same size.
        """
        _check_pairs(views, partner_views, len(keys), same_size=True)
        h, w = views[0].shape[-2:]
        apply, lam, extra = self._draws(keys, 2)
        boxes = cutmix_boxes(
            lam, _integers(extra[:, 0], h), _integers(extra[:, 1], w), height=h, width=w
        )
        boxes[:, 1] = torch.where(apply, boxes[:, 1], boxes[:, 0])  # no box: y2 = y1
        area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])  # (B,)
        lam = 1.0 - area.float() / float(h * w)
        inside = box_masks(boxes, h, w)  # (B, 1, H, W)
        mixed = [torch.where(inside, p, v) for v, p in zip(views, partner_views, strict=True)]
        return MixedViews(mixed, lam)


def _to_unit(view: Tensor) -> Tensor:
    """float32 in ``[0, 1]`` from a ``uint8`` or float view."""
    return view.float().div_(255.0) if view.dtype == torch.uint8 else view.float()


def _check_pairs(
    views: list[Tensor], partner_views: list[Tensor], batch: int, *, same_size: bool
) -> None:
    if len(views) != len(partner_views) or not views:
        raise ValueError(
            f"need as many partner views as views (>= 1), got {len(views)} and {len(partner_views)}"
        )
    for v, p in zip(views, partner_views, strict=True):
        if v.shape != p.shape or v.shape[0] != batch:
            raise ValueError(
                f"a view and its partner view must both be ({batch}, 3, h, w), got "
                f"{tuple(v.shape)} and {tuple(p.shape)}"
            )
    if same_size and len({tuple(v.shape[-2:]) for v in views}) > 1:
        sizes = [tuple(v.shape[-2:]) for v in views]
        raise ValueError(
            f"CutMix pastes the same box into every view, so the base transform's views must "
            f"share one size, got {sizes}; use MixUp, or a base with equal-sized views"
        )


def _check_alpha(alpha: float) -> None:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(f"alpha (the Beta concentration) must be finite and > 0, got {alpha!r}")
