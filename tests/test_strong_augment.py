"""Tests for the RandAugment strong views (lightning_kd.data.strong_augment).

References: torchvision's v1 tensor functions, which its ``transforms.RandAugment`` calls
(through ``autoaugment._apply_op``) on ``uint8`` tensors, and hand-worked tiny images. On
``uint8`` the batched ops reproduce v1 exactly, including its truncating blends, so most
comparisons are exact equality.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF
from torchvision.transforms.autoaugment import RandAugment, _apply_op
from torchvision.transforms.v2 import functional as TF2

from lightning_kd.data.keyed_random import SampleKeys
from lightning_kd.data.strong_augment import (
    RANDAUGMENT_OPS,
    RandAugmentView,
    StrongAugment,
    affine,
    autocontrast,
    enhance_brightness,
    enhance_color,
    enhance_contrast,
    enhance_sharpness,
    equalize,
    posterize,
    rand_augment,
    randaugment_affine_matrices,
    randaugment_magnitudes,
    solarize_threshold,
)
from lightning_kd.data.transforms import CropFlip

N_OPS = len(RANDAUGMENT_OPS)


def _images(b: int, h: int = 32, w: int = 32, seed: int = 0) -> Tensor:
    """Random ``uint8`` images; image 0 is constant (flat channels) and image 1 has a narrow
    value range, so the degenerate branches of autocontrast and equalize are exercised."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    x[0] = 77
    if b > 1:
        x[1] = x[1] // 8 + 100
    return x


def _factors(b: int, seed: int = 1) -> Tensor:
    """float64 ``(B,)`` factors in ``[0, 2)``, as RandAugment's ``1 +- 0.9`` range."""
    return torch.rand(b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def _keys(n: int, *, seed: int = 0, epoch: int = 0, start: int = 0) -> SampleKeys:
    return SampleKeys(seed, epoch, torch.arange(start, start + n))


# --------------------------------------------------------------------------- magnitudes
@pytest.mark.parametrize(("h", "w"), [(32, 32), (24, 40), (224, 224)])
@pytest.mark.parametrize(("magnitude", "num_bins"), [(0, 31), (9, 31), (30, 31), (5, 10)])
def test_magnitude_table_is_torchvisions(h: int, w: int, magnitude: int, num_bins: int) -> None:
    space = RandAugment()._augmentation_space(num_bins, (h, w))
    assert tuple(space) == RANDAUGMENT_OPS
    values, signed = randaugment_magnitudes(magnitude, num_bins, h, w)
    for name, value, is_signed in zip(RANDAUGMENT_OPS, values, signed, strict=True):
        mags, tv_signed = space[name]
        expected = float(mags[magnitude].item()) if mags.ndim > 0 else 0.0
        assert value == expected, name
        assert is_signed == tv_signed, name


_SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_SIGNED += ("Brightness", "Color", "Contrast", "Sharpness")


def test_default_magnitudes_worked_by_hand() -> None:
    values, signed = randaugment_magnitudes(9, 31, 32, 32)
    m = dict(zip(RANDAUGMENT_OPS, values, strict=True))
    # bin 9 of 31 is 9/30 = 0.3 of each range
    assert m["ShearX"] == pytest.approx(0.09) and m["ShearY"] == pytest.approx(0.09)
    assert m["TranslateX"] == pytest.approx(150 / 331 * 32 * 0.3)  # 4.35 px, applied as 4
    assert m["Rotate"] == pytest.approx(9.0)
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        assert m[name] == pytest.approx(0.27)
    assert m["Posterize"] == 7  # 8 - round(9 / 7.5)
    assert m["Solarize"] == pytest.approx(178.5)
    assert dict(zip(RANDAUGMENT_OPS, signed, strict=True)) == {
        name: name in _SIGNED for name in RANDAUGMENT_OPS
    }


# --------------------------------------------------------------------------- tiny images
def test_autocontrast_stretches_each_channel_by_hand() -> None:
    x = torch.tensor([[50, 100], [150, 200]], dtype=torch.uint8).expand(1, 3, 2, 2).clone()
    x[0, 2] = 9  # flat channel: unchanged
    out = autocontrast(x)
    assert out[0, 0].tolist() == [[0, 85], [170, 255]]  # (x - 50) * 255 / 150
    assert out[0, 1].tolist() == [[0, 85], [170, 255]]
    assert out[0, 2].tolist() == [[9, 9], [9, 9]]
    assert torch.allclose(autocontrast(x.float() / 255), out.float() / 255, atol=1e-6)


def test_equalize_worked_by_hand() -> None:
    # One 32 x 32 channel: 512 pixels of 10, 256 of 20, 256 of 30. step = (1024 - 256) // 255
    # = 3; lut[v] = (cumsum[v - 1] + 1) // 3: 10 -> 0, 20 -> 513 // 3 = 171, 30 -> 769 // 3
    # = 256, clipped to 255.
    x = torch.full((1, 1, 32, 32), 10, dtype=torch.uint8)
    x[0, 0, 16:24] = 20
    x[0, 0, 24:] = 30
    out = equalize(x)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 16, 0] == 171 and out[0, 0, 24, 0] == 255
    assert torch.unique(out).tolist() == [0, 171, 255]
    # step 0 (fewer than 256 pixels below the top level): unchanged, as PIL
    small = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    assert torch.equal(equalize(small), small)
    assert torch.equal(
        equalize(torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)).unique(),
        torch.tensor([200], dtype=torch.uint8),
    )


def test_posterize_keeps_the_high_bits_by_hand() -> None:
    x = torch.full((5, 1, 1, 1), 0b10110111, dtype=torch.uint8)  # 183
    out = posterize(x, torch.tensor([8, 7, 3, 1, 0]))
    assert out.flatten().tolist() == [183, 0b10110110, 0b10100000, 128, 0]
    with pytest.raises(ValueError, match=r"bits must be integers in \[0, 8\], got \[9\]"):
        posterize(x[:1], torch.tensor([9]))


def test_solarize_inverts_at_and_above_the_threshold_by_hand() -> None:
    x = torch.tensor([0, 178, 179, 255], dtype=torch.uint8).view(1, 1, 1, 4)
    assert solarize_threshold(x, torch.tensor([178.5])).flatten().tolist() == [0, 178, 76, 0]
    assert solarize_threshold(x, torch.tensor([178.0])).flatten().tolist() == [0, 77, 76, 0]
    assert solarize_threshold(x, torch.tensor([256.0])).flatten().tolist() == [0, 178, 179, 255]


def test_blends_truncate_like_torchvision_by_hand() -> None:
    x = torch.tensor([101, 200], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    out = enhance_brightness(x, torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert out[0, 0, 0].tolist() == [50, 100]  # 50.5 truncated
    assert out[1, 0, 0].tolist() == [151, 255]  # 151.5 truncated, 300 clamped
    # torchvision's tensor luma weights sum to 0.9999, and the uint8 luma is truncated:
    # grey (100, 100, 100) has luma 99, so colour factor 0 maps it to 99.
    grey = torch.full((1, 3, 2, 2), 100, dtype=torch.uint8)
    assert enhance_color(grey, torch.tensor([0.0])).unique().tolist() == [99]
    assert enhance_contrast(grey, torch.tensor([0.0])).unique().tolist() == [99]


def test_sharpness_blends_with_the_3x3_smoothing_by_hand() -> None:
    x = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    x[0, 0, 1, 1] = 130
    smooth = enhance_sharpness(x, torch.tensor([0.0]))
    assert smooth[0, 0].tolist() == [[0, 0, 0], [0, 50, 0], [0, 0, 0]]  # 130 * 5 / 13; border kept
    sharp = enhance_sharpness(x, torch.tensor([2.0]))
    assert sharp[0, 0, 1, 1] == 210  # 2 * 130 - 50
    tiny = torch.randint(0, 256, (2, 3, 2, 5), dtype=torch.uint8)
    assert torch.equal(enhance_sharpness(tiny, torch.tensor([0.0, 2.0])), tiny)  # side <= 2


def _geometric(x: Tensor, op: str, magnitude: float, **kwargs: object) -> Tensor:
    k = RANDAUGMENT_OPS.index(op)
    m = torch.full((x.shape[0],), magnitude, dtype=torch.float64)
    matrices = randaugment_affine_matrices(torch.full((x.shape[0],), k), m, *x.shape[-2:])
    return affine(x, matrices, **kwargs)  # type: ignore[arg-type]


def test_translate_shifts_whole_pixels_by_hand() -> None:
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    right = _geometric(x, "TranslateX", 1.7)  # int(1.7) = 1 pixel right, black enters
    assert torch.equal(right[..., 1:], x[..., :-1]) and right[..., 0].eq(0).all()
    up = _geometric(x, "TranslateY", -1.7)  # int(-1.7) = -1: one pixel up
    assert torch.equal(up[..., :-1, :], x[..., 1:, :]) and up[..., -1, :].eq(0).all()
    filled = _geometric(x, "TranslateY", -1.0, fill=255.0)
    assert filled[..., -1, :].eq(255).all()


def test_rotate_90_degrees_counter_clockwise_by_hand() -> None:
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8).view(1, 1, 3, 3)
    out = _geometric(x, "Rotate", 90.0)
    assert out[0, 0].tolist() == [[3, 6, 9], [2, 5, 8], [1, 4, 7]]


def test_shear_x_about_the_top_edge_by_hand() -> None:
    # Output pixel (i, j) samples x = j + m (i + 0.5) (pixel centres, nearest): with m = 0.5
    # rows 0..3 are shifted left by round(0.25), round(0.75), round(1.25), round(1.75) = 0, 1, 1, 2.
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    out = _geometric(x, "ShearX", 0.5)[0, 0]
    assert out.tolist() == [[1, 2, 3, 4], [6, 7, 8, 0], [10, 11, 12, 0], [15, 16, 0, 0]]
    out_y = _geometric(x.transpose(-1, -2), "ShearY", 0.5)[0, 0]
    assert torch.equal(out_y, out.T)


# --------------------------------------------------------------------------- vs torchvision v1
#: (our op, torchvision v1 op) pairs with a per-sample float factor.
_ENHANCE = [
    (enhance_brightness, TF.adjust_brightness),
    (enhance_contrast, TF.adjust_contrast),
    (enhance_color, TF.adjust_saturation),
    (enhance_sharpness, TF.adjust_sharpness),
]


@pytest.mark.parametrize(("ours", "ref"), _ENHANCE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_enhance_ops_equal_torchvision(
    ours: Callable[[Tensor, Tensor], Tensor],
    ref: Callable[[Tensor, float], Tensor],
    dtype: torch.dtype,
) -> None:
    x = _images(24, 24, 40)
    x = x if dtype == torch.uint8 else x.float() / 255
    f = _factors(24)
    expected = torch.stack([ref(img, float(fi)) for img, fi in zip(x, f, strict=True)])
    assert torch.equal(ours(x, f), expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_autocontrast_equalize_posterize_solarize_equal_torchvision(dtype: torch.dtype) -> None:
    x8 = _images(24)
    x = x8 if dtype == torch.uint8 else x8.float() / 255
    assert torch.equal(autocontrast(x), torch.stack([TF.autocontrast(img) for img in x]))
    bound = 255.0 if dtype == torch.uint8 else 1.0
    thresholds = torch.linspace(0, bound, 24, dtype=torch.float64)
    expected = torch.stack(
        [TF.solarize(img, float(t)) for img, t in zip(x, thresholds, strict=True)]
    )
    assert torch.equal(solarize_threshold(x, thresholds), expected)
    # torchvision v1 equalizes and posterizes uint8 only; float images are their 8-bit levels
    bits = torch.arange(24) % 9
    eq = torch.stack([TF.equalize(img) for img in x8])
    post = torch.stack([TF.posterize(img, int(k)) for img, k in zip(x8, bits, strict=True)])
    if dtype == torch.uint8:
        assert torch.equal(equalize(x), eq) and torch.equal(posterize(x, bits), post)
    else:
        assert torch.equal(equalize(x), eq.float() / 255)
        assert torch.equal(posterize(x, bits), post.float() / 255)


@pytest.mark.parametrize("op", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("fill", [None, 128.0])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_geometric_ops_equal_torchvision(
    op: str, interpolation: str, fill: float | None, size: tuple[int, int]
) -> None:
    x = _images(16, *size)
    limit = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 14.5, "TranslateY": 14.5}.get(op, 30.0)
    g = torch.Generator().manual_seed(3)
    m = (2 * torch.rand(16, generator=g, dtype=torch.float64) - 1) * limit
    matrices = randaugment_affine_matrices(torch.full((16,), RANDAUGMENT_OPS.index(op)), m, *size)
    mode = InterpolationMode(interpolation)
    for images, unit in ((x, 1.0), (x.float() / 255, 1 / 255)):  # fill in the images' units
        f = None if fill is None else fill * unit
        tv_fill = None if f is None else [f] * 3
        out = affine(images, matrices, interpolation=interpolation, fill=f)  # type: ignore[arg-type]
        expected = torch.stack(
            [
                _apply_op(img, op, float(mi), mode, tv_fill)
                for img, mi in zip(images, m, strict=True)
            ]
        )
        assert torch.equal(out, expected)


def test_torchvision_v2_agrees_within_one_level() -> None:
    """torchvision's v2 kernels compute the same blends in another order (e.g. sharpness as
    ``x + (1 - f)(blur - x)``, autocontrast dividing by ``(max - min) / 255``), so the float
    result before truncation to uint8 can differ in the last bit and land one level away.
    v1, which ``RandAugment`` uses, is matched exactly above."""
    x = _images(16)
    f = _factors(16)
    pairs = [
        (enhance_brightness, TF2.adjust_brightness),
        (enhance_contrast, TF2.adjust_contrast),
        (enhance_color, TF2.adjust_saturation),
        (enhance_sharpness, TF2.adjust_sharpness),
    ]
    for ours, ref in pairs:
        expected = torch.stack([ref(img, float(fi)) for img, fi in zip(x, f, strict=True)])
        assert (ours(x, f).int() - expected.int()).abs().max() <= 1, ours.__name__
    assert (autocontrast(x).int() - TF2.autocontrast(x).int()).abs().max() <= 1
    assert torch.equal(equalize(x), TF2.equalize(x))
    assert torch.equal(posterize(x, torch.full((16,), 3)), TF2.posterize(x, 3))


# --------------------------------------------------------------------------- rand_augment
def _torchvision_chain(
    images: Tensor, ops: Tensor, magnitudes: Tensor, mode: InterpolationMode, fill: float | None
) -> Tensor:
    """torchvision's ``RandAugment.forward`` with the choices given: ``_apply_op`` per step."""
    out = []
    for img, row_ops, row_mags in zip(images, ops, magnitudes, strict=True):
        for k, m in zip(row_ops.tolist(), row_mags.tolist(), strict=True):
            img = _apply_op(img, RANDAUGMENT_OPS[k], m, mode, None if fill is None else [fill] * 3)
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize(("interpolation", "fill"), [("nearest", None), ("bilinear", 128.0)])
def test_rand_augment_equals_torchvision_apply_op_chain(
    interpolation: str, fill: float | None
) -> None:
    # every ordered pair of ops once: 196 images, each op 14 times at each step
    ops = torch.cartesian_prod(torch.arange(N_OPS), torch.arange(N_OPS))  # (196, 2)
    x = _images(ops.shape[0], seed=4)
    values, signed = randaugment_magnitudes(9, 31, 32, 32)
    sign = torch.where(torch.arange(ops.numel()).view(-1, 2) % 3 == 0, -1.0, 1.0).double()
    mags = torch.tensor(values, dtype=torch.float64)[ops]
    mags = torch.where(torch.tensor(signed)[ops], mags * sign, mags)
    out = rand_augment(x, ops, mags, interpolation=interpolation, fill=fill)  # type: ignore[arg-type]
    expected = _torchvision_chain(x, ops, mags, InterpolationMode(interpolation), fill)
    assert torch.equal(out, expected)
    assert out.dtype == torch.uint8 and not torch.equal(out, x)


def test_rand_augment_leaves_its_input_alone_and_checks_arguments() -> None:
    x = _images(4)
    before = x.clone()
    rand_augment(x, torch.full((4, 2), 13), torch.zeros(4, 2, dtype=torch.float64))
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match=r"ops must be integers in \[0, 14\)"):
        rand_augment(x, torch.full((4, 1), 14), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"must both be \(4, K\), got \(4, 2\) and \(4, 1\)"):
        rand_augment(x, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"one value per sample, shape \(4,\), got \(3,\)"):
        enhance_brightness(x, torch.ones(3))
    with pytest.raises(TypeError, match=r"uint8 or floating point, got torch\.int32"):
        autocontrast(x.int())


# --------------------------------------------------------------------------- transforms
def _reference_strong_view(images: Tensor, t: RandAugmentView, keys: SampleKeys) -> Tensor:
    """torchvision per sample: pad, crop, flip, then the ``_apply_op`` chain."""
    p = t.params(keys, *images.shape[-2:])
    h, w = images.shape[-2:]
    crops = []
    for img, (dy, dx), flip in zip(images, p.offsets.tolist(), p.flip.tolist(), strict=True):
        crop = TF.crop(TF.pad(img, [t.padding]), dy, dx, h, w)
        crops.append(TF.hflip(crop) if flip else crop)
    return _torchvision_chain(
        torch.stack(crops), p.ops, p.magnitudes, InterpolationMode.NEAREST, None
    )


def test_strong_augment_views_are_cropflip_and_torchvisions_randaugment() -> None:
    t = StrongAugment()
    assert t.num_views == 2
    x = _images(64, 24, 40, seed=5)
    keys = _keys(64, seed=3, epoch=2, start=1000)
    weak, strong = t(x, keys)
    for view in (weak, strong):
        assert view.dtype == torch.uint8 and view.shape == (64, 3, 24, 40)
    assert torch.equal(weak, CropFlip()(x, keys)[0])
    assert torch.equal(strong, _reference_strong_view(x, t.strong, keys))
    assert t.strong.params(keys, 24, 40).ops.shape == (64, 2)


def test_rand_augment_view_alone_and_without_ops() -> None:
    x = _images(16, seed=6)
    keys = _keys(16)
    t = RandAugmentView(num_ops=3, magnitude=15)
    assert t.num_views == 1
    (view,) = t(x, keys)
    assert view.shape == x.shape and view.dtype == torch.uint8
    assert torch.equal(view, _reference_strong_view(x, t, keys))
    # with no ops the strong view is CropFlip's second view (same streams, view 1)
    plain = StrongAugment(num_ops=0)(x, keys)
    assert torch.equal(plain[1], CropFlip(num_views=2)(x, keys)[1])


def test_views_are_a_pure_function_of_the_keys() -> None:
    t = StrongAugment()
    x = _images(16, seed=7)
    keys = SampleKeys(0, 3, torch.arange(100, 116))
    first = t(x, keys)
    again = t(x.clone(), SampleKeys(0, 3, torch.arange(100, 116)))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # the same samples in a batch of 4, at other positions
    pick = torch.tensor([9, 2, 15, 4])
    small = t(x[pick], SampleKeys(0, 3, torch.arange(100, 116)[pick]))
    assert all(torch.equal(s, f[pick]) for s, f in zip(small, first, strict=True))
    # another epoch or seed: (almost) every sample sees other views
    for other in (
        SampleKeys(0, 4, torch.arange(100, 116)),
        SampleKeys(1, 3, torch.arange(100, 116)),
    ):
        for a, b in zip(t(x, other), first, strict=True):
            changed = (a != b).flatten(1).any(dim=1)
            assert int(changed.sum()) >= 14


def test_op_choices_and_signs_are_uniform() -> None:
    """14 ops at 2 steps over 14,000 samples: 1,000 expected per op and step. The chi-square
    bound 45 (13 degrees of freedom) is exceeded with probability about 2e-5; the seed is fixed,
    so the test is deterministic, and the bound only has to hold for real draws."""
    n = 14_000
    p = RandAugmentView().params(_keys(n, seed=11), 32, 32)
    expected = n / N_OPS
    for k in range(2):
        counts = torch.bincount(p.ops[:, k], minlength=N_OPS).double()
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 45.0, (k, counts.tolist())
    assert abs(float((p.ops[:, 0] == p.ops[:, 1]).double().mean()) - 1 / N_OPS) < 0.015
    _, signed = randaugment_magnitudes(9, 31, 32, 32)
    is_signed = torch.tensor(signed)[p.ops]
    negative = (p.magnitudes < 0)[is_signed].double().mean()
    assert abs(float(negative) - 0.5) < 0.02  # sd 0.004 over 18,000 signed draws
    assert not bool((p.magnitudes < 0)[~is_signed].any())
    assert abs(float(p.flip.double().mean()) - 0.5) < 0.02


def test_magnitude_by_op_matches_the_table() -> None:
    p = RandAugmentView(magnitude=20).params(_keys(2000), 32, 32)
    values, _ = randaugment_magnitudes(20, 31, 32, 32)
    assert torch.equal(p.magnitudes.abs(), torch.tensor(values, dtype=torch.float64)[p.ops].abs())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"magnitude": 31}, r"magnitude must be in \[0, 31\), got 31"),
        ({"magnitude": 2.5}, "magnitude must be an int bin index, got 2.5"),
        (
            {"num_magnitude_bins": 1, "magnitude": 0},
            "num_magnitude_bins must be an int >= 2, got 1",
        ),
        ({"num_ops": -1}, "num_ops must be an int >= 0, got -1"),
        ({"padding": -2}, "padding must be an int >= 0, got -2"),
        ({"flip_prob": 1.5}, r"flip_prob must be a probability in \[0, 1\], got 1.5"),
        (
            {"interpolation": "bicubic"},
            "interpolation must be 'nearest' or 'bilinear', got 'bicubic'",
        ),
        ({"fill": 300}, r"fill must be None or a number in \[0, 255\], got 300"),
    ],
)
def test_bad_arguments_say_what_they_got(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StrongAugment(**kwargs)  # type: ignore[arg-type]


def test_transform_refuses_float_images() -> None:
    with pytest.raises(TypeError, match="expects uint8 images"):
        StrongAugment()(torch.rand(2, 3, 8, 8), _keys(2))


def test_repr_round_trips_the_arguments() -> None:
    t = StrongAugment(num_ops=3, magnitude=5, fill=0)
    assert repr(t) == (
        "StrongAugment(padding=4, flip_prob=0.5, num_ops=3, magnitude=5, num_magnitude_bins=31, "
        "interpolation='nearest', fill=0.0)"
    )
    assert math.isclose(randaugment_magnitudes(5, 31, 32, 32)[0][5], 5.0, rel_tol=1e-6)


def test_v2_randaugment_op_list_is_the_same() -> None:
    """torchvision's v2 RandAugment draws from the same 14 operations (its distribution)."""
    assert tuple(v2.RandAugment()._AUGMENTATION_SPACE) == RANDAUGMENT_OPS
