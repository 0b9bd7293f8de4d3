"""What a teacher cache buys: step time of vanilla, online KD and cached KD side by side, the
cache's build throughput and size, the error of fp16 and top-k caches, the break-even count.

For each pair (the quickstart's SmallCNN(48) -> SmallCNN(16), and the literature's ResNet-32x4
-> ResNet-8x4, both on real CIFAR-10 images here, 10 classes; this machine has no CIFAR-100):

1. build a cache of epoch 0 (``build_cache``, fp16 full logits, and fp16 top-k) of a
   ``--train-subset`` class-balanced training set, timing the teacher's throughput;
2. time ``--steps`` training steps after ``--warmup`` under the Lightning Trainer (same
   datamodule, keyed views, batch, optimizer, channels-last, fp32) of the vanilla student
   (``ClassifierModule``), online KD and cached KD (teacher left out), alternating
   ``--repeats`` times; the median ms/step of each is reported with the ratios;
3. the KD loss (T = 4) of a student on the cached fp16 / top-k logits against the exact fp32
   logits of the same views (relative error, mean over the training set).

Usage (from the repository root, nothing else running)::

    .venv/bin/python benchmarks/teacher_cache.py --data-dir ../shared/data \\
        --teacher runs/quickstart/seed0/teacher/version_0/final.ckpt \\
        --student runs/quickstart/seed0/student_kd/version_0/final.ckpt

Writes ``benchmarks/results/teacher_cache.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from report import RESULTS_DIR, load_average, write_result
from torch import nn

from lightning_kd.caching import TeacherCache, build_cache
from lightning_kd.data import CIFAR10DataModule
from lightning_kd.losses import kd_loss
from lightning_kd.models import CIFARResNet, SmallCNN, load_weights
from lightning_kd.modules import ClassifierModule, KDModule

BATCH, LR, TEMPERATURE = 128, 0.05, 4.0


def networks(pair: str, args: argparse.Namespace) -> tuple[nn.Module, nn.Module, int]:
    """``(student, teacher, top_k)`` of a pair, the teacher loaded when a file is given."""
    torch.manual_seed(0)
    if pair == "quickstart":
        student, teacher = SmallCNN(num_classes=10, width=16), SmallCNN(num_classes=10, width=48)
        if args.teacher:
            load_weights(teacher, args.teacher)
        if args.student:
            load_weights(student, _student_state(args.student))
        return student, teacher, 3
    wide = [32, 64, 128, 256]
    return (
        CIFARResNet(depth=8, channels=wide, num_classes=10),
        CIFARResNet(depth=32, channels=wide, num_classes=10),
        3,
    )


def _student_state(path: str) -> str:
    """A KD checkpoint's student weights as a plain state dict file (``student.`` stripped)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    student = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    out = Path(tempfile.mkdtemp()) / "student.pt"
    torch.save(student, out)
    return str(out)


def datamodule(args: argparse.Namespace) -> CIFAR10DataModule:
    return CIFAR10DataModule(
        data_dir=args.data_dir,
        batch_size=BATCH,
        train_subset=args.train_subset,
        channels_last=True,
        view_seed=0,
    )


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=5e-4)


class StepTimer(L.Callback):
    """Wall time of the steps after ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end = time.perf_counter()


def time_steps(module: L.LightningModule, args: argparse.Namespace, steps: int) -> float:
    """ms per training step of ``module`` over ``steps`` steps after the warm-up."""
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_epochs=1,
        limit_train_batches=args.warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule(args))
    return 1000 * (timer.end - timer.start) / steps


def kd_errors(cache_dir: Path, caches: dict[str, Path], student: nn.Module, args: Any) -> dict:
    """Relative error of the KD loss, and of its gradient with respect to the student's
    logits, on each approximate cache against the exact logits (means over chunks)."""
    exact = TeacherCache(cache_dir)
    dm = datamodule(args)
    dm.setup("fit")
    train = dm.train_dataset
    assert train is not None
    student.eval()
    out: dict[str, list[float]] = {name: [] for name in caches}
    grads: dict[str, list[float]] = {name: [] for name in caches}
    readers = {name: TeacherCache(path) for name, path in caches.items()}
    for start in range(0, len(train), 1000):
        positions = torch.arange(start, min(start + 1000, len(train)))
        (views,) = dm.make_views(train.images[positions], train.file_indices[positions], 0)
        with torch.no_grad():
            logits = student(views)

        def loss_and_grad(
            teacher: torch.Tensor, logits: torch.Tensor = logits
        ) -> tuple[float, torch.Tensor]:
            s = logits.clone().requires_grad_()
            loss = kd_loss(s, teacher, temperature=TEMPERATURE)
            loss.backward()
            assert s.grad is not None
            return float(loss), s.grad

        reference, ref_grad = loss_and_grad(exact.lookup(0, positions)[:, 0, 0])
        for name, reader in readers.items():
            approx, grad = loss_and_grad(reader.lookup(0, positions)[:, 0, 0])
            out[name].append(abs(approx - reference) / reference)
            grads[name].append(float((grad - ref_grad).norm() / ref_grad.norm()))
    return {
        name: {"loss": statistics.mean(out[name]), "gradient": statistics.mean(grads[name])}
        for name in out
    }


def hundred_classes(args: argparse.Namespace, top_k: int = 10) -> dict[str, Any]:
    """fp16 and top-k errors and sizes at 100 classes, without a 100-class dataset here: a
    random-init ResNet-32x4 / ResNet-8x4 with 100 outputs on 2,000 CIFAR-10 training views,
    through the cache's own split / rebuild (:func:`split_logits`, :func:`rebuild_logits`);
    sizes from its array layout (:func:`array_specs`)."""
    from lightning_kd.caching.store import rebuild_logits, split_logits

    torch.manual_seed(0)
    wide = [32, 64, 128, 256]
    teacher = CIFARResNet(depth=32, channels=wide, num_classes=100).eval()
    student = CIFARResNet(depth=8, channels=wide, num_classes=100).eval()
    dm = datamodule(args)
    dm.setup("fit")
    train = dm.train_dataset
    assert train is not None
    positions = torch.arange(2000)
    (views,) = dm.make_views(train.images[positions], train.file_indices[positions], 0)
    with torch.no_grad():
        t = torch.cat([teacher(v) for v in views.split(250)])
        s = torch.cat([student(v) for v in views.split(250)])

    def loss_and_grad(target: torch.Tensor) -> tuple[float, torch.Tensor]:
        logits = s.clone().requires_grad_()
        loss = kd_loss(logits, target, temperature=TEMPERATURE)
        loss.backward()
        assert logits.grad is not None
        return float(loss), logits.grad

    reference, ref_grad = loss_and_grad(t)
    half = t.half().float()
    parts = split_logits(t[:, None, None].half().float(), top_k)
    top = rebuild_logits(
        parts["topk_values"].half().float(), parts["topk_indices"], parts["rest_mean"], 100
    )[:, 0, 0]
    out: dict[str, Any] = {"top_k": top_k}
    for name, target, per_row in (
        ("fp16", half, 100 * 2),
        (f"fp16_top{top_k}", top, top_k * (2 + 2) + 4),
    ):
        loss, grad = loss_and_grad(target)
        out[name] = {
            "loss": abs(loss - reference) / reference,
            "gradient": float((grad - ref_grad).norm() / ref_grad.norm()),
            "megabytes_per_50k_images_per_epoch": 50_000 * per_row / 1e6,
        }
    return out


def run_pair(pair: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    student, teacher, top_k = networks(pair, args)
    dm = datamodule(args)
    dm.setup("fit")
    online = KDModule(student, teacher, temperature=TEMPERATURE, channels_last=True)
    builds: dict[str, Any] = {}
    folders = {}
    for name, dtype, k in (
        ("fp32", "float32", None),
        ("fp16", "float16", None),
        (f"fp16_top{top_k}", "float16", top_k),
    ):
        folder = work / f"{pair}_{name}"
        started = time.perf_counter()
        manifest = build_cache(
            online,
            dm,
            folder,
            epochs=1,
            precision="32-true",
            dtype=dtype,
            top_k=k,
            chunk_rows=args.cache_batch,
            progress=False,
        )
        seconds = time.perf_counter() - started
        size = TeacherCache(folder).disk_bytes()
        builds[name] = {
            "seconds": seconds,
            "images_per_second": manifest.size / seconds,
            "bytes": size,
            "megabytes_per_50k_images_per_epoch": size * 50_000 / manifest.size / 1e6,
        }
        folders[name] = folder
    errors = kd_errors(
        folders["fp32"],
        {k: v for k, v in folders.items() if k != "fp32"},
        student if args.student and pair == "quickstart" else networks(pair, args)[0],
        args,
    )

    def build(kind: str) -> L.LightningModule:
        s, t, _ = networks(pair, args)
        if kind == "vanilla":
            return ClassifierModule(s, optimizer=sgd, channels_last=True)
        if kind == "online":
            return KDModule(s, t, temperature=TEMPERATURE, optimizer=sgd, channels_last=True)
        return KDModule(
            s,
            teacher_cache=str(folders["fp16"]),
            temperature=TEMPERATURE,
            optimizer=sgd,
            channels_last=True,
        )

    times: dict[str, list[float]] = {"vanilla": [], "online": [], "cached": []}
    for _ in range(args.repeats):
        for kind in times:
            steps = args.steps if pair == "quickstart" else args.steps_resnet
            times[kind].append(time_steps(build(kind), args, steps))
    median = {kind: statistics.median(v) for kind, v in times.items()}
    # Speed ratios of the runs of one repeat (run back to back), then their median: less
    # sensitive to the machine's drift than the ratio of medians.
    paired = {
        "cached_vs_vanilla": statistics.median(
            v / c for v, c in zip(times["vanilla"], times["cached"], strict=True)
        ),
        "online_vs_vanilla": statistics.median(
            v / o for v, o in zip(times["vanilla"], times["online"], strict=True)
        ),
    }
    steps_per_epoch = 50_000 // BATCH
    saved_per_student_epoch = (median["online"] - median["cached"]) / 1000 * steps_per_epoch
    build_per_epoch = 50_000 / builds["fp16"]["images_per_second"]
    return {
        "pair": pair,
        "train_images": len(dm.train_dataset or []),
        "ms_per_step": times,
        "median_ms_per_step": median,
        "median_paired_speed_ratio": paired,
        "cached_speed_vs_vanilla": median["vanilla"] / median["cached"],
        "online_speed_vs_vanilla": median["vanilla"] / median["online"],
        "cached_speedup_vs_online": median["online"] / median["cached"],
        "builds": builds,
        "kd_loss_relative_error": errors,
        "build_seconds_per_50k_epoch": build_per_epoch,
        "saved_seconds_per_student_per_50k_epoch": saved_per_student_epoch,
        "break_even_students": build_per_epoch / saved_per_student_epoch
        if saved_per_student_epoch > 0
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--teacher", default=None, help="the quickstart teacher's checkpoint")
    parser.add_argument("--student", default=None, help="a quickstart KD student's checkpoint")
    parser.add_argument("--pairs", nargs="+", default=["quickstart", "resnet32x4_resnet8x4"])
    parser.add_argument("--train-subset", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--steps-resnet", type=int, default=12, help="timed steps of the (slow) ResNet pair"
    )
    parser.add_argument("--repeats", type=int, default=5)
    # The training batch: on this CPU the teacher is fastest at small batches (see
    # lightning_kd/caching/command.py), on a GPU pass a larger one.
    parser.add_argument("--cache-batch", type=int, default=BATCH)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_pair(pair, args, Path(tmp)) for pair in args.pairs]
    hundred = hundred_classes(args)
    lines = [
        f"Batch {BATCH}, fp32, channels-last, real CIFAR-10 images ({args.train_subset}-image "
        f"class-balanced subset), {args.warmup} warm-up + {args.steps} timed steps "
        f"({args.steps_resnet} for the ResNet pair) under the "
        f"Lightning Trainer, {args.repeats} alternating repeats (vanilla, online, cached), "
        "medians; `paired`: the median over repeats of vanilla / cached speed within one repeat. "
        "Cached KD reads the fp16 cache with the teacher left out.",
        "",
        "| pair | vanilla ms/step | online KD | cached KD | cached speed / vanilla | "
        "online speed / vanilla | cached vs online | cached / vanilla, paired |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["median_ms_per_step"]
        lines.append(
            f"| {r['pair']} | {m['vanilla']:.1f} | {m['online']:.1f} | {m['cached']:.1f} | "
            f"{r['cached_speed_vs_vanilla']:.2f}x | {r['online_speed_vs_vanilla']:.2f}x | "
            f"{r['cached_speedup_vs_online']:.2f}x faster | "
            f"{r['median_paired_speed_ratio']['cached_vs_vanilla']:.2f}x |"
        )
    lines += [
        "",
        "Cache build (teacher in inference mode, batch "
        f"{args.cache_batch}, one epoch of the subset) and size:",
        "",
        "| pair | cache | teacher img/s | MB per 50k images per epoch | "
        "KD loss rel. error vs fp32 | KD gradient rel. error vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for name, b in r["builds"].items():
            error = r["kd_loss_relative_error"].get(name)
            shown = (
                f"{error['loss']:.2e} | {error['gradient']:.2e}"
                if error is not None
                else "0 (reference) | 0 (reference)"
            )
            lines.append(
                f"| {r['pair']} | {name} | {b['images_per_second']:.0f} | "
                f"{b['megabytes_per_50k_images_per_epoch']:.2f} | {shown} |"
            )
    lines += [
        "",
        "Errors are means over the training views: the KD loss (T = 4) of a student on the "
        "cached logits against the exact fp32 ones, and the relative norm error of its gradient "
        "with respect to the student's logits. The quickstart student is the trained quickstart "
        "KD student (given with --student); the ResNet pair is random-init (no trained CIFAR "
        "weights here). Top-k keeps the k largest logits and rebuilds the others as their mean.",
        "",
        "100 classes (no CIFAR-100 here: a random-init ResNet-32x4 / ResNet-8x4 with 100 "
        "outputs on 2,000 CIFAR-10 views, through the cache's split / rebuild; size from its "
        "array layout):",
        "",
        "| cache | MB per 50k images per epoch | KD loss rel. error | KD gradient rel. error |",
        "|---|---|---|---|",
    ]
    for name, value in hundred.items():
        if name == "top_k":
            continue
        lines.append(
            f"| {name} | {value['megabytes_per_50k_images_per_epoch']:.2f} | "
            f"{value['loss']:.2e} | {value['gradient']:.2e} |"
        )
    lines += [
        "",
        "Break-even (per 50k-image epoch): building costs 50,000 / (teacher img/s) seconds; "
        "each cached student saves (online - cached) ms/step x 390 steps.",
        "",
        "| pair | build s / epoch | saved s / student / epoch | students to break even |",
        "|---|---|---|---|",
    ]
    for r in results:
        be = r["break_even_students"]
        lines.append(
            f"| {r['pair']} | {r['build_seconds_per_50k_epoch']:.1f} | "
            f"{r['saved_seconds_per_student_per_50k_epoch']:.1f} | "
            f"{be:.2f} |"
            if be is not None
            else f"| {r['pair']} | - | - | never |"
        )
    lines += [
        "",
        "Raw ms/step per repeat: "
        + "; ".join(
            f"{r['pair']}: " + ", ".join(f"{k} {v}" for k, v in r["ms_per_step"].items())
            for r in results
        ),
    ]
    path = write_result(
        "teacher_cache",
        "Teacher cache: step time, build, size",
        "\n".join(lines),
        load_before=load_before,
    )
    summary = {"pairs": results, "hundred_classes": hundred}
    (RESULTS_DIR / "teacher_cache.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
