"""Tests for the batch transforms (crop + flip, multi-crop, two views) and their batched ops.

Every random parameter of the batch path is drawn from :class:`SampleKeys`, so a batch of ``n``
copies of one image with ``n`` distinct sample indices is ``n`` independent draws: the
statistical tests below use one such batch where they used to call a transform repeatedly with
a generator. The per-image torchvision path (``pil_views``) draws from torch's CPU RNG, which the
tests seed inside ``torch.random.fork_rng`` so that nothing leaks into other tests.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import functional as TF

from lightning_kd.data import (
    BatchTransform,
    CropFlip,
    MultiCropViews,
    NormalizedViews,
    SampleKeys,
    TwoViews,
)
from lightning_kd.data.ops import (
    CROP_ATTEMPTS,
    adjust_hue,
    color_jitter,
    crop_flip,
    crop_resize,
    gaussian_blur,
    hsv_to_rgb,
    resized_crop_boxes,
    rgb_to_hsv,
    solarize,
)
from lightning_kd.data.transforms import blur_kernel_size, stream

#: Every random step off; crops are the whole image (scale 1, ratio 1).
NO_AUG: dict[str, object] = {
    "global_scale": (1.0, 1.0),
    "local_scale": (1.0, 1.0),
    "ratio": (1.0, 1.0),
    "flip_prob": 0.0,
    "jitter_prob": 0.0,
    "grayscale_prob": 0.0,
    "blur_probs": (0.0, 0.0, 0.0),
    "solarize_probs": (0.0, 0.0, 0.0),
}


def _views(**kwargs: object) -> MultiCropViews:
    return MultiCropViews(**{**NO_AUG, **kwargs})  # type: ignore[arg-type]


def _keys(b: int, *, seed: int = 0, epoch: int = 0, start: int = 0) -> SampleKeys:
    """Keys of a batch of ``b`` distinct samples ``start .. start + b - 1``."""
    return SampleKeys(seed, epoch, torch.arange(start, start + b))


def _random_images(b: int, size: int = 32, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def _copies(image: Tensor, n: int) -> Tensor:
    """``n`` copies ``(n, 3, H, W)`` of one image ``(1, 3, H, W)`` or ``(3, H, W)``."""
    image = image.view(1, *image.shape[-3:])
    return image.expand(n, *image.shape[1:]).contiguous()


def _gradient_image(size: int = 32) -> Tensor:
    """uint8 ``(1, 3, S, S)`` with pixel ``(y, x) = 4x + 2y + 10`` (+0, +20, +40 per channel)."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = 4 * x + 2 * y + 10
    return torch.stack([base, base + 20, base + 40]).to(torch.uint8)[None]


def _pil(image: Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _pil_draws(views: MultiCropViews, image: Image.Image, n: int, seed: int) -> list[list[Tensor]]:
    """``n`` calls of the per-image path under a seeded CPU RNG (restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [views.pil_views(image) for _ in range(n)]


def _means_agree(a: Tensor, b: Tensor, sds: float = 5.0) -> bool:
    """Two samples ``(n,)`` have means within ``sds`` standard errors of their difference."""
    se = math.sqrt(float(a.var()) / a.numel() + float(b.var()) / b.numel())
    return abs(float(a.mean()) - float(b.mean())) < sds * se + 1e-9


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("views", "sizes"),
    [
        (MultiCropViews(), [32, 32] + [16] * 6),
        (MultiCropViews(blur_probs=(1.0, 0.1, 0.5), num_local=2), [32, 32, 16, 16]),
        (MultiCropViews(global_size=24, local_size=8, num_local=0), [24, 24]),
        (TwoViews(), [32, 32]),
    ],
)
def test_both_paths_give_views_of_the_right_shape(views: MultiCropViews, sizes: list[int]) -> None:
    assert views.num_views == len(sizes) and views.num_global == 2
    images = _random_images(5)
    batched = views(images, _keys(5))
    single = _pil_draws(views, _pil(images[0]), 1, seed=0)[0]
    for out, expected in ((batched, (5, 3)), (single, (3,))):
        assert [tuple(v.shape) for v in out] == [(*expected, s, s) for s in sizes]
        assert all(v.dtype == torch.float32 for v in out)
        assert all(float(v.min()) >= 0.0 and float(v.max()) <= 1.0 for v in out)


def test_crop_flip_views_keep_the_size_and_dtype() -> None:
    images = _random_images(4, size=20)
    for transform, count in ((CropFlip(), 1), (CropFlip(num_views=3, padding=2), 3)):
        out = transform(images, _keys(4))
        assert transform.num_views == len(out) == count
        assert all(v.dtype == torch.uint8 and v.shape == (4, 3, 20, 20) for v in out)


def test_imagenet_presets() -> None:
    dino = MultiCropViews.imagenet()
    assert (dino.global_size, dino.local_size, dino.num_local, dino.num_views) == (224, 96, 8, 10)
    assert dino.global_scale == (0.4, 1.0) and dino.local_scale == (0.05, 0.4)
    assert dino.blur_probs == (1.0, 0.1, 0.5) and dino.solarize_probs == (0.0, 0.2, 0.0)
    assert MultiCropViews.imagenet(num_local=2).num_views == 4
    byol = TwoViews.imagenet()
    assert isinstance(byol, TwoViews) and byol.num_views == 2 and byol.global_size == 224
    assert byol.global_scale == (0.08, 1.0)
    assert byol.blur_probs[:2] == (1.0, 0.1) and byol.solarize_probs[:2] == (0.0, 0.2)
    assert blur_kernel_size(224) == 23 and blur_kernel_size(96) == 11
    out = MultiCropViews.imagenet(num_local=1)(_random_images(2, size=64), _keys(2))
    assert [tuple(v.shape) for v in out] == [(2, 3, 224, 224)] * 2 + [(2, 3, 96, 96)]
    image = _pil(_random_images(1, size=80)[0])
    assert [tuple(v.shape) for v in _pil_draws(byol, image, 1, seed=0)[0]] == [(3, 224, 224)] * 2


def test_cifar_defaults() -> None:
    views = MultiCropViews()
    assert (views.global_size, views.local_size, views.num_local) == (32, 16, 6)
    assert views.blur_probs == (0.0, 0.0, 0.0) and views.solarize_probs == (0.0, 0.2, 0.0)
    assert views.jitter == (0.4, 0.4, 0.2, 0.1) and views.jitter_prob == 0.8
    byol = TwoViews()
    assert byol.num_local == 0 and byol.global_scale == (0.08, 1.0)
    assert byol.blur_probs == (0.0, 0.0, 0.0) and byol.solarize_probs == (0.0, 0.2, 0.0)
    crop = CropFlip()
    assert (crop.padding, crop.flip_prob, crop.num_views) == (4, 0.5, 1)
    for transform in (views, byol, crop):  # DataLoader workers may pickle them
        assert isinstance(transform, BatchTransform)
        again = pickle.loads(pickle.dumps(transform))
        assert repr(again) == repr(transform)


# --------------------------------------------------------------------------- closed forms
def test_no_augmentation_returns_the_resized_image() -> None:
    image = _gradient_image(32)
    views = _views(global_size=32, local_size=16, num_local=1)
    g1, g2, local = views(image, _keys(1))
    expected = image.float() / 255
    torch.testing.assert_close(g1, expected, atol=0, rtol=0)
    torch.testing.assert_close(g2, expected, atol=0, rtol=0)
    # 32 -> 16: each output pixel averages a 2x2 block, a linear image is sampled at the
    # block centre: (y, x) -> 4 (2x + 0.5) + 2 (2y + 0.5) + 10 (+ 20 c).
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    base = 4 * (2 * x + 0.5) + 2 * (2 * y + 0.5) + 10
    torch.testing.assert_close(local[0], torch.stack([base, base + 20, base + 40]) / 255)
    # The per-sample path is the same at full size.
    single = _pil_draws(views, _pil(image[0]), 1, seed=0)[0]
    torch.testing.assert_close(single[0], expected[0], atol=0, rtol=0)

    constant = torch.full((2, 3, 20, 20), 77, dtype=torch.uint8)
    for view in _views(global_size=48, local_size=7, num_local=1)(constant, _keys(2)):
        torch.testing.assert_close(view, torch.full_like(view, 77 / 255))


def test_forced_grayscale_is_the_luma() -> None:
    image = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    image[0, 0, 0, 0] = 255  # a red pixel
    image[0, :, 1, 1] = torch.tensor([10, 200, 40], dtype=torch.uint8)
    views = _views(global_size=4, num_local=0, grayscale_prob=1.0)
    for view in views(image, _keys(1)):
        assert torch.equal(view[:, 0], view[:, 1]) and torch.equal(view[:, 1], view[:, 2])
        assert view[0, 0, 0, 0].item() == pytest.approx(0.299)
        expected = (0.299 * 10 + 0.587 * 200 + 0.114 * 40) / 255
        assert view[0, 0, 1, 1].item() == pytest.approx(expected, abs=1e-6)
        assert view[0, 0, 2, 2].item() == 0.0
    single = _pil_draws(views, _pil(image[0]), 1, seed=0)[0][0]
    assert torch.equal(single[0], single[1])
    assert single[0, 0, 0].item() == pytest.approx(round(0.299 * 255) / 255)


def test_forced_solarisation_follows_the_per_view_probabilities() -> None:
    values = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.uint8)
    image = values.view(1, 1, 1, 6).expand(1, 3, 6, 6).contiguous()
    x = values.float() / 255
    solarized = torch.where(x >= 0.5, 1 - x, x)  # 0, 100, 127 kept; 128 -> 127/255, ...
    views = _views(global_size=6, local_size=6, num_local=1, solarize_probs=(0.0, 1.0, 1.0))
    single = _pil_draws(views, _pil(image[0]), 1, seed=0)[0]
    for out in (views(image, _keys(1)), [v[None] for v in single]):
        g1, g2, local = out
        torch.testing.assert_close(g1[0, :, 0], x.expand(3, 6), atol=1e-6, rtol=0)
        torch.testing.assert_close(g2[0, :, 0], solarized.expand(3, 6), atol=1e-6, rtol=0)
        torch.testing.assert_close(local[0, :, 0], solarized.expand(3, 6), atol=1e-6, rtol=0)


def test_forced_blur_follows_the_per_view_probabilities() -> None:
    images = _random_images(3)
    views = _views(num_local=1, local_size=32, blur_probs=(1.0, 0.0, 1.0))
    g1, g2, local = views(images, _keys(3))
    plain = images.float() / 255
    assert torch.equal(g2, plain)
    for blurred in (g1, local):
        assert not torch.allclose(blurred, plain)
        # Blurring keeps the mean (a normalised kernel) and lowers the pixel variance.
        torch.testing.assert_close(blurred.mean(), plain.mean(), atol=2e-3, rtol=0)
        assert blurred.var() < 0.9 * plain.var()
    flat = torch.full((2, 3, 32, 32), 90, dtype=torch.uint8)
    for view in _views(blur_probs=(1.0, 1.0, 1.0), num_local=0)(flat, _keys(2)):
        torch.testing.assert_close(view, torch.full_like(view, 90 / 255))


def test_forced_flip_mirrors_the_image() -> None:
    image = _gradient_image(8)
    views = _views(global_size=8, num_local=0, flip_prob=1.0)
    for view in views(image, _keys(1)):
        torch.testing.assert_close(view, image.flip(-1).float() / 255, atol=0, rtol=0)
    for view in CropFlip(padding=0, flip_prob=1.0, num_views=2)(image, _keys(1)):
        assert torch.equal(view, image.flip(-1))
    assert torch.equal(CropFlip(padding=0, flip_prob=0.0)(image, _keys(1))[0], image)


# --------------------------------------------------------------------------- crop + flip
def test_crop_flip_matches_torchvision_pad_crop_flip_for_every_window() -> None:
    # Every (dy, dx, flip) of padding 4 in one batch, against torchvision's tensor ops.
    image = _random_images(1, size=12, seed=3)[0]
    grid = torch.cartesian_prod(torch.arange(9), torch.arange(9), torch.arange(2))  # (162, 3)
    offsets, flip = grid[:, :2].contiguous(), grid[:, 2].bool()
    out = crop_flip(_copies(image, 162), offsets, flip, padding=4)
    assert out.dtype == torch.uint8 and out.shape == (162, 3, 12, 12)
    padded = TF.pad(image, [4])
    for row, (dy, dx, f) in enumerate(grid.tolist()):
        expected = TF.crop(padded, dy, dx, 12, 12)
        if f:
            expected = TF.hflip(expected)
        assert torch.equal(out[row], expected), (dy, dx, f)
    # Each image of a batch is cut from its own source image.
    images = _random_images(3, size=8, seed=4)
    out = crop_flip(
        images, torch.tensor([[0, 0], [2, 1], [1, 2]]), torch.tensor([0, 1, 0]).bool(), padding=1
    )
    for i, (dy, dx, f) in enumerate([(0, 0, 0), (2, 1, 1), (1, 2, 0)]):
        expected = TF.crop(TF.pad(images[i], [1]), dy, dx, 8, 8)
        assert torch.equal(out[i], TF.hflip(expected) if f else expected)
    with pytest.raises(ValueError, match=r"offsets must be \(3, 2\) and flip \(3,\), got \(2, 2\)"):
        crop_flip(images, torch.zeros(2, 2, dtype=torch.long), torch.zeros(3).bool(), padding=1)
    with pytest.raises(ValueError, match="padding must be an int >= 0, got -1"):
        crop_flip(images, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3).bool(), padding=-1)


def _position_image() -> Tensor:
    """uint8 ``(1, 3, 32, 32)``: red ``1 + 7x``, green ``1 + 7y``, blue 100 (never 0)."""
    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    return torch.stack([1 + 7 * x, 1 + 7 * y, torch.full_like(x, 100)]).to(torch.uint8)[None]


def _decode_crop_flip(views: Tensor, padding: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """``(dy, dx, flip)`` of crop-flip views ``(N, 3, 32, 32)`` of :func:`_position_image`,
    read from the centre pixels (never padding for ``padding <= 4``)."""
    centre = views[:, :, 16, 16].long()  # (N, 3)
    x0, y0 = (centre[:, 0] - 1) // 7, (centre[:, 1] - 1) // 7
    flip = views[:, 0, 16, 17].long() < centre[:, 0]  # red falls to the right when mirrored
    return y0 - (16 - padding), x0 - (16 - padding) + flip.long(), flip


def test_crop_flip_draws_follow_torchvisions_distribution() -> None:
    n = 81 * 50
    image = _position_image()
    first, second = CropFlip(num_views=2)(_copies(image, n), _keys(n))
    dy, dx, flip = _decode_crop_flip(first)
    # The decoded parameters reproduce the views exactly, so the decoding is right.
    assert torch.equal(
        crop_flip(_copies(image, n), torch.stack([dy, dx], 1), flip, padding=4), first
    )
    # torchvision's RandomCrop(32, padding=4): offsets uniform over the 9 x 9 windows.
    counts = torch.bincount(9 * dy + dx, minlength=81).float()
    assert counts.numel() == 81
    chi2 = float(((counts - 50) ** 2 / 50).sum())
    assert chi2 < 150.0  # 80 degrees of freedom: mean 80, sd 12.6; P(chi2 > 150) < 1e-5
    assert abs(float(flip.float().mean()) - 0.5) < 0.03  # sd 0.008
    # The second view is drawn independently: its windows agree with the first's 1 in 162.
    dy2, dx2, flip2 = _decode_crop_flip(second)
    same = (dy == dy2) & (dx == dx2) & (flip == flip2)
    assert float(same.float().mean()) < 0.02
    assert abs(float((dx == dx2).float().mean()) - 1 / 9) < 0.03

    # The mean view equals that of torchvision's RandomCrop + RandomHorizontalFlip, per pixel.
    reference = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torchvision_views = torch.stack([reference(image[0]) for _ in range(n)]).float()
    ours = first.float()
    se = torch.sqrt(ours.var(0) / n + torchvision_views.var(0) / n)
    diff = (ours.mean(0) - torchvision_views.mean(0)).abs()
    assert bool((diff <= 5 * se + 1e-6).all()), float((diff / (se + 1e-6)).max())

    flips = CropFlip(padding=0, flip_prob=0.25)(_copies(image, n), _keys(n))[0]
    mirrored = (flips == image.flip(-1)).flatten(1).all(1)
    assert bool(((flips == image).flatten(1).all(1) | mirrored).all())  # flip only, no shift
    assert abs(float(mirrored.float().mean()) - 0.25) < 0.03  # sd 0.007


# --------------------------------------------------------------------------- keyed randomness
def test_batch_draws_parameters_per_sample() -> None:
    same = _copies(_random_images(1), 16)
    views = MultiCropViews(num_local=2)
    for view in views(same, _keys(16)):
        distinct = {v.numpy().tobytes() for v in view}
        assert len(distinct) == 16  # every sample got its own crop and colours
    # Crops only: still per sample.
    crops = _views(global_scale=(0.3, 0.6), ratio=(0.75, 1.33), num_local=0)(same, _keys(16))
    assert len({v.numpy().tobytes() for v in crops[0]}) == 16
    assert len({v.numpy().tobytes() for v in CropFlip()(same, _keys(16))[0]}) > 12  # of 162


@pytest.mark.parametrize(
    "transform",
    [CropFlip(num_views=2), MultiCropViews(num_local=2), TwoViews()],
    ids=["crop_flip", "multi_crop", "two_views"],
)
def test_views_are_a_function_of_the_keys(transform: BatchTransform) -> None:
    images = _random_images(6)
    keys = SampleKeys(5, 2, torch.tensor([3, 17, 4, 250, 9, 1000]))
    first = transform(images, keys)
    # Same keys: the same views, bit for bit.
    again = transform(images, SampleKeys(5, 2, keys.indices.clone()))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # The same samples in another order: each keeps its views.
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    shuffled = transform(images[perm], SampleKeys(5, 2, keys.indices[perm]))
    assert all(torch.equal(a[perm], b) for a, b in zip(first, shuffled, strict=True))
    # Another epoch, seed or sample index: other views (for every view of the transform).
    for other in (
        SampleKeys(5, 3, keys.indices),
        SampleKeys(6, 2, keys.indices),
        SampleKeys(5, 2, keys.indices + 1),
    ):
        changed = transform(images, other)
        assert not any(torch.equal(a, b) for a, b in zip(first, changed, strict=True))
    # The first two views of an image differ from each other.
    assert not torch.equal(first[0], first[1])


def test_each_view_has_its_own_streams() -> None:
    images = _random_images(8)
    keys = _keys(8, seed=1)
    # Adding views leaves the earlier ones unchanged: view v draws only from stream(v, .).
    two = CropFlip(num_views=2)(images, keys)
    assert torch.equal(CropFlip(num_views=1)(images, keys)[0], two[0])
    assert all(
        torch.equal(a, b) for a, b in zip(CropFlip(num_views=3)(images, keys)[:2], two, strict=True)
    )
    few = MultiCropViews(num_local=1)(images, keys)
    many = MultiCropViews(num_local=4)(images, keys)
    assert all(torch.equal(a, b) for a, b in zip(few, many[:3], strict=True))
    assert not torch.equal(many[2], many[3])  # local views are not copies of each other
    assert stream(0, 5) != stream(1, 5) and stream(2, 0) == 2 * stream(1, 0)
    with pytest.raises(ValueError, match=r"draw must be in \[0, 64\), got 64"):
        stream(0, 64)


def _statistics(views: list[Tensor]) -> dict[str, float]:
    """Per kind of view: mean pixel, fraction of grayscale views, mean within-view std."""
    stats: dict[str, float] = {}
    for kind, group in (("global", views[:2]), ("local", views[2:])):
        x = torch.cat(group)  # (N, 3, s, s)
        gray = (x[:, 0] == x[:, 1]).flatten(1).all(1) & (x[:, 1] == x[:, 2]).flatten(1).all(1)
        stats[f"{kind}_mean"] = float(x.mean())
        stats[f"{kind}_gray"] = float(gray.float().mean())
        stats[f"{kind}_std"] = float(x.flatten(1).std(1).mean())
    return stats


def test_batch_and_per_sample_paths_agree_statistically() -> None:
    # A colourful image with structure at every scale: colour gradients plus stripes.
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = torch.stack([6 * x + 30, 7 * y + 20, 120 + 80 * torch.sin(x / 2 + y / 3)])
    image = image.clamp(0, 255).to(torch.uint8)
    views = MultiCropViews(num_local=2, solarize_probs=(0.0, 0.5, 0.2))
    n = 600
    batched = views(_copies(image, n), _keys(n))
    pil = _pil(image)
    per_sample = _pil_draws(views, pil, n, seed=0)
    stacked = [torch.stack([s[k] for s in per_sample]) for k in range(views.num_views)]
    a, b = _statistics(batched), _statistics(stacked)
    for key in a:
        tol = 0.05 if key.endswith("gray") else 0.02
        assert abs(a[key] - b[key]) < tol, (key, a[key], b[key])
    assert 0.15 < a["global_gray"] < 0.25  # grayscale_prob = 0.2

    # Crop scale: on a linear gradient the spread of a view's pixels grows with the crop side;
    # (0.08, 1) and (0.4, 1) differ by about 0.017 in the mean spread, the paths by < 0.005.
    gradient = _gradient_image(32)
    crops = _views(global_scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), num_local=0)
    spread_batch = torch.cat(crops(_copies(gradient, 400), _keys(400, seed=2)))
    draws = _pil_draws(crops, _pil(gradient[0]), 400, seed=2)
    spread_single = torch.stack([v for pair in draws for v in pair])
    for stat in (lambda s: s.mean(), lambda s: s.std()):
        a_s = float(stat(spread_batch.flatten(1).std(1)))
        b_s = float(stat(spread_single.flatten(1).std(1)))
        assert abs(a_s - b_s) < 0.005, (a_s, b_s)

    flips = _views(global_size=32, num_local=0, flip_prob=0.5)
    out = torch.cat(flips(_copies(image, 300), _keys(300, seed=1)))
    flipped_batch = (out == image.flip(-1).float() / 255).flatten(1).all(1).float().mean()
    singles = torch.stack([v for pair in _pil_draws(flips, pil, 300, seed=1) for v in pair])
    flipped_single = (singles == image.flip(-1).float() / 255).flatten(1).all(1).float().mean()
    assert abs(float(flipped_batch) - 0.5) < 0.06 and abs(float(flipped_single) - 0.5) < 0.06


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"global_size": 0}, "global_size must be an int >= 1, got 0"),
        ({"local_size": 2.5}, "local_size must be an int >= 1, got 2.5"),
        ({"num_local": -1}, "num_local must be an int >= 0, got -1"),
        ({"global_scale": (0.5, 0.4)}, r"global_scale must satisfy 0 < min <= max <= 1, got"),
        ({"local_scale": (0.0, 0.4)}, r"local_scale must satisfy 0 < min <= max <= 1"),
        ({"global_scale": (0.5, 1.5)}, r"<= 1, got \(0.5, 1.5\)"),
        ({"ratio": (2.0, 1.0)}, r"ratio must satisfy 0 < min <= max, got \(2.0, 1.0\)"),
        ({"flip_prob": 1.5}, r"flip_prob must be a probability in \[0, 1\], got 1.5"),
        ({"blur_probs": (0.1, 0.2)}, r"blur_probs must be 3 probabilities, got \(0.1, 0.2\)"),
        ({"solarize_probs": (0, 2, 0)}, r"solarize_probs\[1\] must be a probability.*got 2"),
        ({"jitter": (0.4, 0.4, 0.2, 0.6)}, r"hue in \[0, 0.5\], got \(0.4, 0.4, 0.2, 0.6\)"),
        ({"blur_sigma": (0.0, 2.0)}, "blur_sigma must satisfy 0 < min <= max"),
    ],
)
def test_invalid_arguments_are_named(kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        MultiCropViews(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"padding": -1}, "padding must be an int >= 0, got -1"),
        ({"padding": 2.0}, "padding must be an int >= 0, got 2.0"),
        ({"flip_prob": -0.1}, r"flip_prob must be a probability in \[0, 1\], got -0.1"),
        ({"num_views": 0}, "num_views must be an int >= 1, got 0"),
    ],
)
def test_invalid_crop_flip_arguments_are_named(kwargs: dict[str, object], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        CropFlip(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "transform", [MultiCropViews(), CropFlip()], ids=["multi_crop", "crop_flip"]
)
def test_batch_errors(transform: BatchTransform) -> None:
    with pytest.raises(TypeError, match=r"uint8 images .* got torch.float32"):
        transform(torch.rand(2, 3, 32, 32), _keys(2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(2, 1, 32, 32\)"):
        transform(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), _keys(2))
    with pytest.raises(ValueError, match="2 images but 3 sample keys"):
        transform(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), _keys(3))


def test_two_views_and_normalized_views_errors() -> None:
    with pytest.raises(ValueError, match="blur_probs must be 2 probabilities"):
        TwoViews(blur_probs=(0.0, 0.0, 0.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scale must satisfy 0 < min <= max <= 1"):
        TwoViews(scale=(0.08, 2.0))
    with pytest.raises(ValueError, match="mean and std need the same length and std > 0"):
        NormalizedViews(MultiCropViews(), (0.5, 0.5, 0.5), (0.2, 0.0, 0.2))


def test_transforms_build_from_class_path() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--views", type=MultiCropViews)
    parser.add_argument("--transform", type=BatchTransform)
    config = parser.parse_object(
        {
            "views": {
                "class_path": "lightning_kd.data.TwoViews",
                "init_args": {"size": 24, "blur_probs": [1.0, 0.1]},
            },
            "transform": {
                "class_path": "lightning_kd.data.CropFlip",
                "init_args": {"padding": 2, "num_views": 2},
            },
        }
    )
    built = parser.instantiate_classes(config)
    assert isinstance(built.views, TwoViews) and built.views.global_size == 24
    assert built.views.blur_probs == (1.0, 0.1, 0.0)
    assert isinstance(built.transform, CropFlip)
    assert (built.transform.padding, built.transform.num_views) == (2, 2)


def test_normalized_views() -> None:
    views = NormalizedViews(
        _views(global_size=8, num_local=1, local_size=4), (0.5,) * 3, (0.25,) * 3
    )
    out = views(Image.new("RGB", (8, 8), (255, 0, 128)))
    assert [tuple(v.shape) for v in out] == [(3, 8, 8), (3, 8, 8), (3, 4, 4)]
    torch.testing.assert_close(out[0][:, 0, 0], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) * 4]))


# --------------------------------------------------------------------------- primitives
def test_hsv_round_trip_and_known_colours() -> None:
    rgb = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5], [0, 0, 0]])
    hsv = rgb_to_hsv(rgb.T.reshape(1, 3, 5, 1))[0, :, :, 0].T  # (5, 3)
    expected = torch.tensor([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5], [0, 0, 0]])
    torch.testing.assert_close(hsv, expected)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-6, rtol=0)
    # A third of a turn maps red to green and green to blue.
    red = torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1)
    green = adjust_hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_color_jitter_matches_torchvision_in_the_given_order() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 8, 8, generator=g)
    bright = 0.6 + 0.8 * torch.rand(6, generator=g)
    contrast = 0.6 + 0.8 * torch.rand(6, generator=g)
    sat = 0.8 + 0.4 * torch.rand(6, generator=g)
    hue = 0.2 * torch.rand(6, generator=g) - 0.1
    order = torch.rand(6, 4, generator=g).argsort(dim=1)
    out = color_jitter(
        images, order=order, brightness=bright, contrast=contrast, saturation=sat, hue=hue
    )
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(6):
        x = images[i]
        factors = [bright[i], contrast[i], sat[i], hue[i]]
        for k in order[i].tolist():
            x = ops[k](x, float(factors[k]))
        # torchvision's luma weights are 0.2989/0.587/0.114, ours 0.299/0.587/0.114.
        torch.testing.assert_close(out[i], x, atol=1e-3, rtol=0)
    # Skipped operations (None) and an identity draw leave the images alone.
    same = color_jitter(images, order=order, brightness=torch.ones(6))
    assert torch.equal(same, images)


def test_gaussian_blur_matches_torchvision_per_sample() -> None:
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.8, 2.0])
    out = gaussian_blur(images, sigma, kernel_size=5)
    for i in range(3):
        expected = TF.gaussian_blur(images[i], [5, 5], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"kernel_size must be odd.*got 4"):
        gaussian_blur(images, sigma, kernel_size=4)


def test_solarize_only_selected_samples() -> None:
    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 1, 1, 3).expand(2, 1, 1, 3)
    out = solarize(x, torch.tensor([True, False]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.2, 0.5, 0.1]))
    assert torch.equal(out[1], x[1])


#: Columns of ``resized_crop_boxes``' draws: area fractions, log ratios, top, left.
DRAW_COLUMNS = 2 * CROP_ATTEMPTS + 2


def test_resized_crop_boxes_follow_the_distribution() -> None:
    draws = _keys(2000).uniform(0, DRAW_COLUMNS)  # (2000, 22)
    boxes = resized_crop_boxes(draws, 32, 48, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    assert boxes.shape == (2000, 4) and boxes.dtype == torch.float32
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    assert torch.equal(boxes, boxes.round())
    assert bool((x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 48).all() and (y2 <= 32).all())
    area = w * h / (32 * 48)
    assert float(area.min()) > 0.17 and float(area.max()) < 0.64  # rounding widens a little
    assert abs(float(area.mean()) - 0.4) < 0.02
    aspect = w / h
    assert float(aspect.min()) > 0.4 and float(aspect.max()) < 2.3
    assert len({(int(a), int(b)) for a, b in zip(x1, y1, strict=True)}) > 200  # offsets vary
    # Impossible requests fall back to the centred largest crop, whatever the draws.
    fallback = resized_crop_boxes(draws[:3], 10, 40, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert fallback.tolist() == [[15.0, 0.0, 25.0, 10.0]] * 3
    with pytest.raises(ValueError, match=r"scale must satisfy 0 < min <= max <= 1"):
        resized_crop_boxes(draws[:1], 8, 8, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"draws must be \(N, 22\), got \(1, 21\)"):
        resized_crop_boxes(draws[:1, :21], 8, 8)


def test_resized_crop_boxes_keep_the_first_fitting_attempt_and_place_it() -> None:
    # 32 x 32, area fraction in (0.25, 1), aspect in (1/2, 2). Attempt 0: the whole area at
    # aspect 2 (45 x 23 px) does not fit; attempt 1: a quarter at aspect 1, 16 x 16 px.
    draws = torch.full((3, DRAW_COLUMNS), 0.5)
    draws[:, 0], draws[:, CROP_ATTEMPTS] = 0.999999, 0.999999
    draws[:, 1], draws[:, CROP_ATTEMPTS + 1] = 0.0, 0.5
    # Offsets: 17 valid positions per axis; u = 0 -> 0, u just below 1 -> 16, u = 0.5 -> 8.
    draws[:, 2 * CROP_ATTEMPTS :] = torch.tensor([[0.0, 0.999], [0.999, 0.0], [0.5, 0.5]])
    boxes = resized_crop_boxes(draws, 32, 32, scale=(0.25, 1.0), ratio=(0.5, 2.0))
    assert boxes.tolist() == [[16, 0, 32, 16], [0, 16, 16, 32], [8, 8, 24, 24]]


@pytest.mark.parametrize(
    ("scale", "ratio"),
    [((0.2, 0.6), (0.5, 2.0)), ((0.5, 1.0), (0.25, 4.0))],
    ids=["mostly_fitting", "often_rejected"],
)
def test_resized_crop_boxes_match_torchvision_get_params(
    scale: tuple[float, float], ratio: tuple[float, float]
) -> None:
    n, height, width = 3000, 32, 48
    boxes = resized_crop_boxes(
        _keys(n, seed=7).uniform(0, DRAW_COLUMNS), height, width, scale=scale, ratio=ratio
    )
    ours = {
        "left": boxes[:, 0],
        "top": boxes[:, 1],
        "w": boxes[:, 2] - boxes[:, 0],
        "h": boxes[:, 3] - boxes[:, 1],
    }
    image = torch.zeros(3, height, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        params = torch.tensor(
            [
                transforms.RandomResizedCrop.get_params(image, list(scale), list(ratio))
                for _ in range(n)
            ],
            dtype=torch.float32,
        )  # (n, 4): top, left, h, w
    theirs = {"top": params[:, 0], "left": params[:, 1], "h": params[:, 2], "w": params[:, 3]}
    for stats in (ours, theirs):
        stats["area"] = stats["w"] * stats["h"] / (height * width)
        stats["log_aspect"] = torch.log(stats["w"] / stats["h"])
    for key in ours:
        assert _means_agree(ours[key], theirs[key]), (
            key,
            float(ours[key].mean()),
            float(theirs[key].mean()),
        )
        assert float(ours[key].min()) >= float(theirs[key].min()) - 1
        assert float(ours[key].max()) <= float(theirs[key].max()) + 1


def test_crop_resize_identity_and_index() -> None:
    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0], [0.0, 0.0, 6.0, 6.0]])
    out = crop_resize(images, boxes, 3, batch_index=torch.tensor([1, 0]))
    torch.testing.assert_close(out[0], images[1, :, 2:5, 1:4], atol=1e-6, rtol=0)
    # Halving: each output pixel is the mean of a 2x2 block (samples on pixel centres).
    pooled = torch.nn.functional.avg_pool2d(images[0], 2)
    torch.testing.assert_close(out[1], pooled, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match=r"float images, got torch\.uint8"):
        crop_resize(images.to(torch.uint8), boxes, 3, batch_index=torch.tensor([1, 0]))
