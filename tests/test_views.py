"""Tests for multi-crop / two-view augmentation and its batched primitives."""

from __future__ import annotations

import pickle

import pytest
import torch
from jsonargparse import ArgumentParser
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

from lightning_kd.data import MultiCropViews, NormalizedViews, TwoViews
from lightning_kd.data.batch_augment import (
    adjust_hue,
    color_jitter,
    crop_resize,
    gaussian_blur,
    hsv_to_rgb,
    random_resized_crop_boxes,
    rgb_to_hsv,
    solarize,
)
from lightning_kd.data.views import blur_kernel_size

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


def _random_images(b: int, size: int = 32, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def _gradient_image(size: int = 32) -> Tensor:
    """uint8 ``(1, 3, S, S)`` with pixel ``(y, x) = 4x + 2y + 10`` (+0, +20, +40 per channel)."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = 4 * x + 2 * y + 10
    return torch.stack([base, base + 20, base + 40]).to(torch.uint8)[None]


def _pil(image: Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


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
    torch.manual_seed(0)
    images = _random_images(5)
    batched = views.batch(images)
    single = views(_pil(images[0]))
    for out, expected in ((batched, (5, 3)), (single, (3,))):
        assert [tuple(v.shape) for v in out] == [(*expected, s, s) for s in sizes]
        assert all(v.dtype == torch.float32 for v in out)
        assert all(float(v.min()) >= 0.0 and float(v.max()) <= 1.0 for v in out)


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
    torch.manual_seed(0)
    out = MultiCropViews.imagenet(num_local=1).batch(_random_images(2, size=64))
    assert [tuple(v.shape) for v in out] == [(2, 3, 224, 224)] * 2 + [(2, 3, 96, 96)]
    image = Image.fromarray(_random_images(1, size=80)[0].permute(1, 2, 0).numpy())
    assert [tuple(v.shape) for v in byol(image)] == [(3, 224, 224)] * 2


def test_cifar_defaults() -> None:
    views = MultiCropViews()
    assert (views.global_size, views.local_size, views.num_local) == (32, 16, 6)
    assert views.blur_probs == (0.0, 0.0, 0.0) and views.solarize_probs == (0.0, 0.2, 0.0)
    assert views.jitter == (0.4, 0.4, 0.2, 0.1) and views.jitter_prob == 0.8
    byol = TwoViews()
    assert byol.num_local == 0 and byol.global_scale == (0.08, 1.0)
    assert byol.blur_probs == (0.0, 0.0, 0.0) and byol.solarize_probs == (0.0, 0.2, 0.0)
    pickle.loads(pickle.dumps(views))  # DataLoader workers may pickle it


# --------------------------------------------------------------------------- closed forms
def test_no_augmentation_returns_the_resized_image() -> None:
    image = _gradient_image(32)
    views = _views(global_size=32, local_size=16, num_local=1)
    g1, g2, local = views.batch(image)
    expected = image.float() / 255
    torch.testing.assert_close(g1, expected, atol=0, rtol=0)
    torch.testing.assert_close(g2, expected, atol=0, rtol=0)
    # 32 -> 16: each output pixel averages a 2x2 block, a linear image is sampled at the
    # block centre: (y, x) -> 4 (2x + 0.5) + 2 (2y + 0.5) + 10 (+ 20 c).
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    base = 4 * (2 * x + 0.5) + 2 * (2 * y + 0.5) + 10
    torch.testing.assert_close(local[0], torch.stack([base, base + 20, base + 40]) / 255)
    # The per-sample path is the same at full size.
    single = views(_pil(image[0]))
    torch.testing.assert_close(single[0], expected[0], atol=0, rtol=0)

    constant = torch.full((2, 3, 20, 20), 77, dtype=torch.uint8)
    for view in _views(global_size=48, local_size=7, num_local=1).batch(constant):
        torch.testing.assert_close(view, torch.full_like(view, 77 / 255))


def test_forced_grayscale_is_the_luma() -> None:
    image = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    image[0, 0, 0, 0] = 255  # a red pixel
    image[0, :, 1, 1] = torch.tensor([10, 200, 40], dtype=torch.uint8)
    views = _views(global_size=4, num_local=0, grayscale_prob=1.0)
    for view in views.batch(image):
        assert torch.equal(view[:, 0], view[:, 1]) and torch.equal(view[:, 1], view[:, 2])
        assert view[0, 0, 0, 0].item() == pytest.approx(0.299)
        expected = (0.299 * 10 + 0.587 * 200 + 0.114 * 40) / 255
        assert view[0, 0, 1, 1].item() == pytest.approx(expected, abs=1e-6)
        assert view[0, 0, 2, 2].item() == 0.0
    single = views(_pil(image[0]))[0]
    assert torch.equal(single[0], single[1])
    assert single[0, 0, 0].item() == pytest.approx(round(0.299 * 255) / 255)


def test_forced_solarisation_follows_the_per_view_probabilities() -> None:
    values = torch.tensor([0, 100, 127, 128, 200, 255], dtype=torch.uint8)
    image = values.view(1, 1, 1, 6).expand(1, 3, 6, 6).contiguous()
    x = values.float() / 255
    solarized = torch.where(x >= 0.5, 1 - x, x)  # 0, 100, 127 kept; 128 -> 127/255, ...
    views = _views(global_size=6, local_size=6, num_local=1, solarize_probs=(0.0, 1.0, 1.0))
    for out in (views.batch(image), [v[None] for v in views(_pil(image[0]))]):
        g1, g2, local = out
        torch.testing.assert_close(g1[0, :, 0], x.expand(3, 6), atol=1e-6, rtol=0)
        torch.testing.assert_close(g2[0, :, 0], solarized.expand(3, 6), atol=1e-6, rtol=0)
        torch.testing.assert_close(local[0, :, 0], solarized.expand(3, 6), atol=1e-6, rtol=0)


def test_forced_blur_follows_the_per_view_probabilities() -> None:
    torch.manual_seed(0)
    images = _random_images(3)
    g1, g2, local = _views(num_local=1, local_size=32, blur_probs=(1.0, 0.0, 1.0)).batch(images)
    plain = images.float() / 255
    assert torch.equal(g2, plain)
    for blurred in (g1, local):
        assert not torch.allclose(blurred, plain)
        # Blurring keeps the mean (a normalised kernel) and lowers the pixel variance.
        torch.testing.assert_close(blurred.mean(), plain.mean(), atol=2e-3, rtol=0)
        assert blurred.var() < 0.9 * plain.var()
    flat = torch.full((2, 3, 32, 32), 90, dtype=torch.uint8)
    for view in _views(blur_probs=(1.0, 1.0, 1.0), num_local=0).batch(flat):
        torch.testing.assert_close(view, torch.full_like(view, 90 / 255))


def test_forced_flip_mirrors_the_image() -> None:
    image = _gradient_image(8)
    views = _views(global_size=8, num_local=0, flip_prob=1.0)
    for view in views.batch(image):
        torch.testing.assert_close(view, image.flip(-1).float() / 255, atol=0, rtol=0)


# --------------------------------------------------------------------------- randomness
def test_batch_draws_parameters_per_sample() -> None:
    same = _random_images(1).expand(16, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    views = MultiCropViews(num_local=2)
    for view in views.batch(same):
        distinct = {v.numpy().tobytes() for v in view}
        assert len(distinct) == 16  # every sample got its own crop and colours
    # Crops only: still per sample.
    crops = _views(global_scale=(0.3, 0.6), ratio=(0.75, 1.33), num_local=0).batch(same)
    assert len({v.numpy().tobytes() for v in crops[0]}) == 16
    # Seeded: same draw again; the two global views differ from each other.
    torch.manual_seed(1)
    first = views.batch(same)
    torch.manual_seed(1)
    again = views.batch(same)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    gen = torch.Generator().manual_seed(3)
    with_gen = views.batch(same, generator=gen)
    gen.manual_seed(3)
    assert torch.equal(views.batch(same, generator=gen)[0], with_gen[0])


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
    torch.manual_seed(0)
    batched = views.batch(image[None].expand(n, 3, 32, 32).contiguous())
    pil = _pil(image)
    per_sample = [views(pil) for _ in range(n)]
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
    torch.manual_seed(2)
    spread_batch = torch.cat(crops.batch(gradient.expand(400, 3, 32, 32).contiguous()))
    spread_single = torch.stack([v for _ in range(400) for v in crops(_pil(gradient[0]))])
    for stat in (lambda s: s.mean(), lambda s: s.std()):
        a_s = float(stat(spread_batch.flatten(1).std(1)))
        b_s = float(stat(spread_single.flatten(1).std(1)))
        assert abs(a_s - b_s) < 0.005, (a_s, b_s)

    flips = _views(global_size=32, num_local=0, flip_prob=0.5)
    torch.manual_seed(1)
    out = torch.cat(flips.batch(image[None].expand(300, 3, 32, 32).contiguous()))
    flipped_batch = (out == image.flip(-1).float() / 255).flatten(1).all(1).float().mean()
    singles = torch.stack([v for _ in range(300) for v in flips(pil)])
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


def test_two_views_and_batch_errors() -> None:
    with pytest.raises(ValueError, match="blur_probs must be 2 probabilities"):
        TwoViews(blur_probs=(0.0, 0.0, 0.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scale must satisfy 0 < min <= max <= 1"):
        TwoViews(scale=(0.08, 2.0))
    views = MultiCropViews()
    with pytest.raises(TypeError, match=r"uint8 images .* got torch.float32"):
        views.batch(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(2, 1, 32, 32\)"):
        views.batch(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mean and std need the same length and std > 0"):
        NormalizedViews(views, (0.5, 0.5, 0.5), (0.2, 0.0, 0.2))


def test_views_build_from_class_path() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--views", type=MultiCropViews)
    config = parser.parse_object(
        {
            "views": {
                "class_path": "lightning_kd.data.TwoViews",
                "init_args": {"size": 24, "blur_probs": [1.0, 0.1]},
            }
        }
    )
    views = parser.instantiate_classes(config).views
    assert isinstance(views, TwoViews) and views.global_size == 24
    assert views.blur_probs == (1.0, 0.1, 0.0)


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


def test_random_resized_crop_boxes_follow_the_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = random_resized_crop_boxes(2000, 32, 48, scale=(0.2, 0.6), ratio=(0.5, 2.0), generator=g)
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
    # Impossible requests fall back to the centred largest crop.
    fallback = random_resized_crop_boxes(3, 10, 40, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert fallback.tolist() == [[15.0, 0.0, 25.0, 10.0]] * 3
    with pytest.raises(ValueError, match=r"scale must satisfy 0 < min <= max <= 1"):
        random_resized_crop_boxes(1, 8, 8, scale=(0.5, 0.2))


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
