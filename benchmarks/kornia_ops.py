"""Our batched per-sample image ops against kornia's functional equivalents: agreement and speed.

For each op of ``lightning_kd.data.ops`` (brightness, contrast, saturation, hue, grayscale,
Gaussian blur with a per-sample sigma, solarise, crop-and-resize, pad-crop-flip on ``uint8``)
and of ``lightning_kd.data.strong_augment`` (equalize, autocontrast, posterize, sharpness,
affine warp), the kornia function with the same meaning gets the same per-sample parameters.

1. Agreement: the largest absolute difference of the two outputs (pixel values in ``[0, 1]``;
   ``uint8`` rows in levels). kornia functions with the same *name* but another meaning
   (``adjust_brightness`` adds, ``adjust_contrast`` multiplies, ``adjust_saturation`` scales
   HSV saturation) are checked too and listed under "other kornia functions".
2. Speed: ours and kornia's timed in one process, alternating which goes first, after warm-up
   calls; the median over ``--repeats`` samples, each the mean of ``--inner`` calls, in ms per
   batch, and the ratio kornia / ours (> 1: ours is faster).

Inputs: a batch of ``--batch`` random 32x32 RGB images (``uint8`` levels / 255, so float ops see
exact 8-bit values), float32 on the CPU, ``torch.set_num_threads(--threads)``; per-sample
parameters from a seeded generator. Timings on a shared machine are not worth reporting: run
on an idle one (load averages before and after are recorded).

Usage (from the repository root)::

    .venv/bin/python benchmarks/kornia_ops.py            # writes benchmarks/results/kornia_ops.*
    .venv/bin/python benchmarks/kornia_ops.py --quick    # smoke run: kornia_ops_quick.*

Without kornia installed the kornia columns are skipped with a message (our ops still run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from report import RESULTS_DIR, busy, cpu_model, load_average, write_result
from torch import Tensor

from lightning_kd.data.ops import (
    adjust_brightness,
    adjust_hue,
    adjust_saturation,
    crop_flip,
    crop_resize,
    gaussian_blur,
    resized_crop_boxes,
)
from lightning_kd.data.strong_augment import (
    affine,
    autocontrast,
    enhance_sharpness,
    equalize,
    inverse_affine_matrices,
    posterize,
)

try:
    import kornia
except ImportError:  # the benchmark still times our ops
    kornia = None

Fn = Callable[[], Tensor]


# --------------------------------------------------------------------------- replaced versions
# Our hand-written versions of the four ops that now call kornia (this benchmark chose them):
# kept here so that the comparison that justified the switch can be rerun.
_LUMA = (0.299, 0.587, 0.114)


def hand_rgb_to_grayscale(images: Tensor) -> Tensor:
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def hand_adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    f = factor.to(images.dtype).view(-1, 1, 1, 1)
    mean = hand_rgb_to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean, images, f).clamp_(0.0, 1.0)


def hand_solarize(images: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    mask = apply.view(-1, 1, 1, 1).bool() & (images >= threshold)
    return torch.where(mask, 1.0 - images, images)


def hand_equalize(images: Tensor) -> Tensor:
    """PIL's equalize per channel on ``round(255 x)`` levels (float in, float out)."""
    n, c, h, w = images.shape
    levels = images.mul(255.0).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    present = torch.arange(256, device=images.device).masked_fill(hist == 0, 0)
    last_count = hist.gather(1, present.amax(dim=1, keepdim=True))
    step = (h * w - last_count).div(255, rounding_mode="floor")
    safe = step.clamp(min=1)
    lut = (hist.cumsum(dim=1) + step.div(2, rounding_mode="floor")).div(safe, rounding_mode="floor")
    lut = torch.nn.functional.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    mapped = torch.where(step == 0, levels, lut.gather(1, levels)).view(n, c, h, w)
    out = mapped.to(images.dtype).div_(255.0)
    return torch.where((step == 0).view(n, c, 1, 1), images, out)


@dataclass
class Check:
    """An extra agreement check (not timed): a kornia call against ours (by default the
    case's own op)."""

    kornia_name: str
    kornia: Fn | None
    why: str
    ours: Fn | None = None


@dataclass
class Alternative:
    """The result of a :class:`Check`."""

    kornia: str
    max_abs_diff: float
    differing_fraction: float
    why: str


@dataclass
class Case:
    """One op: ours, kornia's equivalent, and how they relate."""

    op: str
    ours_name: str
    ours: Fn
    kornia_name: str
    kornia: Fn | None
    note: str
    alternatives: list[Check] = field(default_factory=list)
    #: scale of the outputs (1 for [0, 1] floats, 255 for uint8 levels)
    unit: str = "[0, 1]"


@dataclass
class Row:
    """One op's results."""

    op: str
    ours: str
    kornia: str
    max_abs_diff: float | None
    differing_fraction: float | None
    ours_ms: float
    ours_iqr_ms: tuple[float, float]
    kornia_ms: float | None
    kornia_iqr_ms: tuple[float, float] | None
    kornia_over_ours: float | None
    note: str
    unit: str
    alternatives: list[Alternative]


# --------------------------------------------------------------------------- inputs and cases
def _inputs(batch: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    x8 = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    return {
        "x8": x8,
        "x": x8.float() / 255,
        "factor": 0.6 + 0.8 * rand(batch),  # ColorJitter(0.4): [0.6, 1.4]
        "hue": 0.2 * rand(batch) - 0.1,  # turns, ColorJitter hue 0.1
        "sigma": 0.1 + 1.9 * rand(batch),  # BYOL's (0.1, 2.0)
        "apply": rand(batch) < 0.5,
        "crop_draws": rand(batch, 22),
        "offsets": torch.randint(0, 9, (batch, 2), generator=g),
        "flip": rand(batch) < 0.5,
        "bits": torch.randint(1, 9, (batch,), generator=g),
        "sharp": 2.0 * rand(batch),  # RandAugment's 1 +- 0.9 and beyond
        "angle": 60.0 * rand(batch) - 30.0,  # degrees
        "shear": 2.0 * rand(batch, 2) - 1.0,  # tan of the shear angles in [-1, 1] / 3.3
        "translate": torch.randint(-4, 5, (batch, 2), generator=g).float(),
    }


def _kornia_affine(matrices: Tensor, height: int, width: int) -> Tensor:
    """Our centred output-to-input matrices as kornia's source-to-destination pixel matrices.

    Ours: ``u_src = A u_out + t`` in coordinates centred on the image with pixel ``j`` at
    ``j + 0.5 - W/2``. kornia (``align_corners=True``) puts pixel ``j`` at ``j``, so with
    ``c = ((W - 1) / 2, (H - 1) / 2)`` the output-to-input pixel map is ``A p + t + c - A c``;
    ``warp_affine`` wants its inverse.
    """
    a, t = matrices[:, :, :2], matrices[:, :, 2]
    c = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=matrices.dtype)
    inverse = torch.zeros(matrices.shape[0], 3, 3, dtype=matrices.dtype)
    inverse[:, :2, :2] = a
    inverse[:, :2, 2] = t + c - (a @ c)
    inverse[:, 2, 2] = 1.0
    return torch.linalg.inv(inverse)[:, :2, :].float()


def build_cases(inp: dict[str, Tensor], k: ModuleType | None) -> list[Case]:
    """The compared ops; ``k`` is the kornia module or ``None``."""
    x, x8, b = inp["x"], inp["x8"], inp["x"].shape[0]
    ke = k.enhance if k is not None else None
    kg = k.geometry.transform if k is not None else None

    boxes = resized_crop_boxes(inp["crop_draws"], 32, 32)  # (B, 4) pixel edges
    source = torch.arange(b)
    x1, y1, x2, y2 = boxes.unbind(1)
    corners = torch.stack(  # kornia: inclusive pixel positions, clockwise from top-left
        [
            torch.stack([x1, y1], 1),
            torch.stack([x2 - 1, y1], 1),
            torch.stack([x2 - 1, y2 - 1], 1),
            torch.stack([x1, y2 - 1], 1),
        ],
        dim=1,
    )
    dy, dx = inp["offsets"].unbind(1)
    window = torch.stack(  # 32x32 windows in the padded 40x40 image, inclusive corners
        [
            torch.stack([dx, dy], 1),
            torch.stack([dx + 31, dy], 1),
            torch.stack([dx + 31, dy + 31], 1),
            torch.stack([dx, dy + 31], 1),
        ],
        dim=1,
    )

    # whole-image boxes (no resizing): ours in pixel edges, kornia inclusive corners
    boxes32 = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(b, 4)
    window32 = torch.tensor([[[0.0, 0.0], [31.0, 0.0], [31.0, 31.0], [0.0, 31.0]]]).expand(b, 4, 2)
    x_off = x * (1 - 1e-4)  # just below the 8-bit grid

    shear_deg = torch.rad2deg(torch.atan(inp["shear"] / 3.3))
    matrices = inverse_affine_matrices(
        inp["angle"], inp["translate"], shear_deg, torch.zeros(b, 2)
    )  # (B, 2, 3) float64
    kornia_m = _kornia_affine(matrices, 32, 32)
    sigma2 = inp["sigma"][:, None].expand(b, 2).contiguous()
    rgb_gray = k.color.rgb_to_grayscale if k is not None else None

    def kornia_crop_flip() -> Tensor:
        assert kg is not None
        padded = F.pad(x8, (4, 4, 4, 4))
        crops = kg.crop_by_indices(padded, window, size=(32, 32))
        return torch.where(inp["flip"].view(-1, 1, 1, 1), kg.hflip(crops), crops)

    def kornia_solarize() -> Tensor:
        assert ke is not None
        thresholds = torch.where(inp["apply"], 0.5, 2.0)  # 2: above every pixel, no change
        return ke.solarize(x, thresholds)

    return [
        Case(
            "brightness",
            "ops.adjust_brightness",
            lambda: adjust_brightness(x, inp["factor"]),
            "enhance.adjust_brightness_accumulative",
            (lambda: ke.adjust_brightness_accumulative(x, inp["factor"])) if ke else None,
            "same: clamp(f x, 0, 1)",
            [
                Check(
                    "enhance.adjust_brightness",
                    (lambda: ke.adjust_brightness(x, inp["factor"] - 1.0)) if ke else None,
                    "adds the factor (x + f) instead of multiplying; f - 1 passed",
                ),
                Check(
                    "enhance.adjust_contrast",
                    (lambda: ke.adjust_contrast(x, inp["factor"])) if ke else None,
                    "kornia's contrast is a plain multiplication, i.e. our brightness",
                ),
            ],
        ),
        Case(
            "contrast",
            "hand-written blend (now: kornia's)",
            lambda: hand_adjust_contrast(x, inp["factor"]),
            "enhance.adjust_contrast_with_mean_subtraction",
            (lambda: ke.adjust_contrast_with_mean_subtraction(x, inp["factor"])) if ke else None,
            "same: blend with the mean luma (both 0.299/0.587/0.114)",
            [
                Check(
                    "enhance.adjust_contrast",
                    (lambda: ke.adjust_contrast(x, inp["factor"])) if ke else None,
                    "multiplies (f x), no blend with the mean",
                )
            ],
        ),
        Case(
            "saturation",
            "ops.adjust_saturation",
            lambda: adjust_saturation(x, inp["factor"]),
            "enhance.adjust_saturation_with_gray_subtraction",
            (lambda: ke.adjust_saturation_with_gray_subtraction(x, inp["factor"])) if ke else None,
            "same: blend with the luma",
            [
                Check(
                    "enhance.adjust_saturation",
                    (lambda: ke.adjust_saturation(x, inp["factor"])) if ke else None,
                    "scales HSV saturation (keeps max(R, G, B)), not a blend with the luma",
                )
            ],
        ),
        Case(
            "hue",
            "ops.adjust_hue",
            lambda: adjust_hue(x, inp["hue"]),
            "enhance.adjust_hue",
            (lambda: ke.adjust_hue(x, 2 * math.pi * inp["hue"])) if ke else None,
            "same HSV rotation; ours in turns, kornia in radians (2 pi shift passed)",
        ),
        Case(
            "grayscale",
            "hand-written luma (now: kornia's)",
            lambda: hand_rgb_to_grayscale(x),
            "color.rgb_to_grayscale",
            (lambda: rgb_gray(x)) if rgb_gray else None,
            "same weights 0.299/0.587/0.114",
        ),
        Case(
            "gaussian blur (k=5, per-sample sigma)",
            "ops.gaussian_blur",
            lambda: gaussian_blur(x, inp["sigma"], kernel_size=5),
            "filters.gaussian_blur2d",
            (lambda: k.filters.gaussian_blur2d(x, (5, 5), sigma2, "reflect")) if k else None,
            "same kernel, reflect padding, separable; sigma (B, 2)",
        ),
        Case(
            "solarize (half the samples)",
            "hand-written where (now: kornia's)",
            lambda: hand_solarize(x, inp["apply"]),
            "enhance.solarize",
            kornia_solarize if ke else None,
            "same (x >= 0.5 -> 1 - x); kornia has no per-sample switch: threshold 2 for 'off'",
        ),
        Case(
            "crop_resize (RandomResizedCrop boxes -> 32)",
            "ops.crop_resize",
            lambda: crop_resize(x, boxes, 32, batch_index=source),
            "geometry.transform.crop_and_resize",
            (lambda: kg.crop_and_resize(x, corners, (32, 32))) if kg else None,
            "different sampling: ours roi_align (bin averages, antialiased, pixel-edge boxes); "
            "kornia bilinear at a grid from first to last pixel centre (align_corners=True)",
            [
                Check(
                    "geometry.transform.crop_and_resize (whole image)",
                    (lambda: kg.crop_and_resize(x, window32, (32, 32))) if kg else None,
                    "whole-image boxes, no resizing: both copy the pixels",
                    lambda: crop_resize(x, boxes32, 32, batch_index=source),
                )
            ],
        ),
        Case(
            "crop_flip (pad 4, uint8)",
            "ops.crop_flip",
            lambda: crop_flip(x8, inp["offsets"], inp["flip"], padding=4),
            "F.pad + geometry.transform.crop_by_indices + hflip",
            kornia_crop_flip if kg else None,
            "same pixels; kornia slices each box in a Python loop over samples, then one cat",
            unit="uint8 levels",
        ),
        Case(
            "equalize",
            "hand-written scatter_add (now: kornia's)",
            lambda: hand_equalize(x),
            "enhance.equalize",
            (lambda: ke.equalize(x)) if ke else None,
            "same algorithm (PIL); kornia takes levels as trunc(255 x), ours round(255 x): "
            "the same on exact 8-bit values (these inputs)",
            [
                Check(
                    "enhance.equalize (inputs off the 8-bit grid)",
                    (lambda: ke.equalize(x_off)) if ke else None,
                    "x (1 - 1e-4): kornia's trunc(255 x) drops a level, ours rounds",
                    lambda: equalize(x_off),
                )
            ],
        ),
        Case(
            "autocontrast",
            "strong_augment.autocontrast",
            lambda: autocontrast(x),
            "enhance.normalize_min_max",
            (lambda: ke.normalize_min_max(x, 0.0, 1.0)) if ke else None,
            "per channel (x - min) / (max - min); kornia adds eps 1e-6 to the range and maps a "
            "flat channel to 0 (ours: unchanged); kornia's RandomAutoContrast calls it",
        ),
        Case(
            "posterize (per-sample bits)",
            "strong_augment.posterize",
            lambda: posterize(x, inp["bits"]),
            "enhance.posterize",
            (lambda: ke.posterize(x, inp["bits"])) if ke else None,
            "same bit mask on 8-bit levels; kornia takes levels as trunc(255 x), ours round(255 x)",
            [
                Check(
                    "enhance.posterize (inputs off the 8-bit grid)",
                    (lambda: ke.posterize(x_off, inp["bits"])) if ke else None,
                    "x (1 - 1e-4): kornia's trunc(255 x) can drop a level, ours rounds",
                    lambda: posterize(x_off, inp["bits"]),
                )
            ],
        ),
        Case(
            "sharpness",
            "strong_augment.enhance_sharpness",
            lambda: enhance_sharpness(x, inp["sharp"]),
            "enhance.sharpness",
            (lambda: ke.sharpness(x, inp["sharp"])) if ke else None,
            "same PIL 3x3 kernel, border kept; blend written x + (1 - f)(blur - x) in kornia",
        ),
        Case(
            "affine (rotate + shear + translate, bilinear)",
            "strong_augment.affine",
            lambda: affine(x, matrices, interpolation="bilinear"),
            "geometry.transform.warp_affine",
            (lambda: kg.warp_affine(x, kornia_m, (32, 32), align_corners=True)) if kg else None,
            "same warp; kornia takes the forward pixel matrix and inverts it again",
            [
                Check(
                    "geometry.transform.warp_affine (nearest)",
                    (
                        lambda: kg.warp_affine(
                            x, kornia_m, (32, 32), mode="nearest", align_corners=True
                        )
                    )
                    if kg
                    else None,
                    "vs our nearest: a pixel differs where its sample point lies within float "
                    "round-off of a rounding tie (kornia inverts the matrix once more)",
                    lambda: affine(x, matrices, interpolation="nearest"),
                )
            ],
        ),
    ]


# --------------------------------------------------------------------------- measuring
def _diff(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Max absolute difference and fraction of differing entries (shapes must match)."""
    if a.shape != b.shape:
        raise ValueError(f"output shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = (a.double() - b.double()).abs()
    return float(d.max()), float((d > 0).double().mean())


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def time_pair(
    ours: Fn, theirs: Fn | None, *, warmup: int, repeats: int, inner: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of ``ours`` and ``theirs``: ``repeats`` samples of ``inner`` calls each,
    alternating which runs first."""
    fns = [ours] if theirs is None else [ours, theirs]
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            fn = fns[i]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[i].append((time.perf_counter() - start) / inner)
    return samples[0], (samples[1] if theirs is not None else [])


def measure(case: Case, *, warmup: int, repeats: int, inner: int) -> Row:
    with torch.inference_mode():
        ours_out = case.ours()
        diff = frac = None
        if case.kornia is not None:
            diff, frac = _diff(ours_out, case.kornia())
        alternatives = [
            Alternative(
                c.kornia_name, *_diff(ours_out if c.ours is None else c.ours(), c.kornia()), c.why
            )
            for c in case.alternatives
            if c.kornia is not None
        ]
        ours_t, kornia_t = time_pair(
            case.ours, case.kornia, warmup=warmup, repeats=repeats, inner=inner
        )
    oq = _quartiles(ours_t)
    kq = _quartiles(kornia_t) if kornia_t else None
    return Row(
        op=case.op,
        ours=case.ours_name,
        kornia=case.kornia_name if case.kornia is not None else "",
        max_abs_diff=diff,
        differing_fraction=frac,
        ours_ms=round(1e3 * oq[1], 4),
        ours_iqr_ms=(round(1e3 * oq[0], 4), round(1e3 * oq[2], 4)),
        kornia_ms=round(1e3 * kq[1], 4) if kq else None,
        kornia_iqr_ms=(round(1e3 * kq[0], 4), round(1e3 * kq[2], 4)) if kq else None,
        kornia_over_ours=round(kq[1] / oq[1], 3) if kq else None,
        note=case.note,
        unit=case.unit,
        alternatives=alternatives,
    )


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return cpu_model()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return cpu_model()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.3g}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per function")
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per function")
    parser.add_argument("--inner", type=int, default=5, help="calls per timed sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 warm-up, 3 samples of 1 call"
    )
    parser.add_argument("--name", default=None, help="results file stem (default kornia_ops)")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats, args.inner = 1, 3, 1
    name = args.name or ("kornia_ops_quick" if args.quick else "kornia_ops")
    for option in ("batch", "threads", "repeats", "inner"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1, got {getattr(args, option)}")
    torch.set_num_threads(args.threads)
    if kornia is None:
        print(
            "kornia is not installed: timing our ops only, kornia rows skipped "
            "(pip install kornia)",
            file=sys.stderr,
        )
    kornia_version = getattr(kornia, "__version__", None)

    load_before_text, load_before = load_average(), _loadavg()
    if busy():
        print(f"warning: load average {load_before_text} exceeds the core count", file=sys.stderr)
    started = dt.datetime.now(dt.timezone.utc)
    cases = build_cases(_inputs(args.batch, args.seed), kornia)
    rows = []
    for case in cases:
        row = measure(case, warmup=args.warmup, repeats=args.repeats, inner=args.inner)
        rows.append(row)
        print(
            f"{row.op}: ours {row.ours_ms:.3f} ms, kornia {_fmt(row.kornia_ms, '.3f')} ms, "
            f"max |diff| {_fmt(row.max_abs_diff, '.3g')}",
            flush=True,
        )
    load_after = _loadavg()

    settings = (
        f"Batch {args.batch} of random 3x32x32 images (uint8 levels / 255), float32 on the CPU, "
        f"torch threads {args.threads}, kornia {kornia_version or 'not installed'}. Per function "
        f"{args.warmup} warm-up call(s), then {args.repeats} timed sample(s) of {args.inner} "
        "call(s), ours and kornia's alternating which goes first; median ms per batch (IQR in "
        "the JSON). `kornia/ours` > 1 means ours is faster. `max abs diff` is on `[0, 1]` "
        "values (uint8 rows: levels); `differing` is the fraction of output entries that differ."
    )
    if args.quick:
        settings = (
            "**Quick smoke run (`--quick`): the timings are not measurements.**\n\n" + settings
        )
    table = [
        "| op | ours | kornia | max abs diff | differing | ours ms | kornia ms | kornia/ours |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r.op} | `{r.ours}` | `{r.kornia}` | {_fmt(r.max_abs_diff, '.3g')} | "
            f"{_pct(r.differing_fraction)} | {r.ours_ms:.3f} | "
            f"{_fmt(r.kornia_ms, '.3f')} | {_fmt(r.kornia_over_ours, '.2f')} |"
            for r in rows
        ),
    ]
    notes = ["", "Semantics:", ""] + [f"- {r.op}: {r.note}" for r in rows]
    others = [
        f"- `{a.kornia}` vs `{r.ours}`: max abs diff {a.max_abs_diff:.3g}, "
        f"{_pct(a.differing_fraction)} differing ({a.why})"
        for r in rows
        for a in r.alternatives
    ]
    if others:
        notes += ["", "Other kornia functions checked (not timed):", "", *others]
    if kornia is None:
        notes += ["", "kornia was not installed: kornia columns skipped."]
    body = "\n".join([settings, "", *table, *notes])
    md_path = write_result(
        name, "Batched image ops: ours vs kornia", body, load_before=load_before_text
    )
    record: dict[str, Any] = {
        "benchmark": "kornia_ops",
        "quick": args.quick,
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "machine": {
            "platform": platform.platform(),
            "cpu": _lscpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "kornia": kornia_version,
        },
        "settings": {
            "batch": args.batch,
            "image": [3, 32, 32],
            "dtype": "float32",
            "warmup": args.warmup,
            "repeats": args.repeats,
            "inner": args.inner,
            "seed": args.seed,
        },
        "results": [asdict(r) for r in rows],
    }
    json_path = RESULTS_DIR / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print(body)
    print(f"written to {md_path} and {json_path}")


if __name__ == "__main__":
    main()
