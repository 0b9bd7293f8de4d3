"""The GPU check: every module for a few hundred steps on one CUDA device, bf16-mixed and
channels-last, in a few minutes; finite losses, frozen teachers unchanged, images/s.

Modules (the CIFAR-10 configs of ``configs/cifar10/`` with their networks, on generated
CIFAR-shaped data so that nothing has to be downloaded or copied to the machine):

* ``kd``: KD, ResNet-32x4 -> ResNet-8x4 (``kd_resnet32x4_resnet8x4.yaml``), teacher online;
* ``kd_cached``: the same from a teacher cache built on the GPU first (its build throughput is
  reported), teacher left out;
* ``kd_compiled``: ``kd`` with the student under ``torch.compile`` (skipped, with the reason,
  where compiling fails);
* ``fitnet``: feature KD (``fitnet_resnet32x4_resnet8x4.yaml``);
* ``mean_teacher``: WRN-28-2, 4,000 labels (``mean_teacher_wrn_28_2_4000.yaml``);
* ``dino``, ``byol``: ResNet-18, multi-crop / two views (``dino_resnet18.yaml``,
  ``byol_resnet18.yaml``).

Teachers are randomly initialised (the check is of speed and correctness, not accuracy). Each
run: ``--steps`` optimizer steps after ``--warmup``; reported: images/s (training images per
second, each image counted once whatever its views), the last loss, whether every logged loss
was finite, and for the frozen teachers whether their weights and BatchNorm statistics are
bit-for-bit what they were. Without CUDA it prints why and exits 0 (``--allow-cpu`` runs the
same on the CPU with 32-bit precision, a smoke test of the script itself).

Usage::

    python benchmarks/gpu_check.py [--steps 200] [--out DIR]

Writes ``gpu_check.{md,json}`` to ``benchmarks/results/`` on a GPU, and to ``--out`` when
given (the only output of a CPU smoke test).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: name -> (config, overrides). Teachers random, checkpoints kept in the module.
RUNS: dict[str, tuple[str, list[str]]] = {
    "kd": ("configs/cifar10/kd_resnet32x4_resnet8x4.yaml", []),
    "kd_cached": ("configs/cifar10/kd_resnet32x4_resnet8x4.yaml", []),
    "kd_compiled": ("configs/cifar10/kd_resnet32x4_resnet8x4.yaml", []),
    "fitnet": ("configs/cifar10/fitnet_resnet32x4_resnet8x4.yaml", []),
    "mean_teacher": ("configs/cifar10/mean_teacher_wrn_28_2_4000.yaml", []),
    "dino": ("configs/cifar10/dino_resnet18.yaml", []),
    "byol": ("configs/cifar10/byol_resnet18.yaml", []),
}
FROZEN = {"kd", "kd_compiled", "fitnet"}


class Recorder(L.Callback):
    """Times the steps after ``warmup`` and records every training loss."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.images = 0
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, i: int) -> None:
        if trainer.global_step == self.warmup and not self.start:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(float(loss.detach().float()))
        if self.start:
            self.images += _images_in(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def _images_in(batch: Any) -> int:
    """Training images in a batch (views of one image counted once; both SSL streams)."""
    if isinstance(batch, dict):
        return sum(_images_in(v) for v in batch.values())
    first = batch[0]
    while isinstance(first, list | tuple):
        first = first[0]
    return int(first.shape[0])


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def run(name: str, args: argparse.Namespace, data_dir: Path, work: Path) -> dict[str, Any]:
    from lightning_kd.caching import build_cache
    from lightning_kd.cli import build_cli

    config, extra = RUNS[name]
    overrides = [
        "--config",
        str(REPO_ROOT / config),
        f"--data.init_args.data_dir={data_dir}",
        "--trainer.logger=false",
        f"--trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        *extra,
    ]
    if args.train_subset and name != "mean_teacher":
        overrides.append(f"--data.init_args.train_subset={args.train_subset}")
    if name == "mean_teacher":  # its label split for the generated data, not the repository's
        overrides.append(f"--data.init_args.split_file={work / 'split.json'}")
    if name in ("kd", "kd_cached", "kd_compiled", "fitnet"):
        overrides += [
            "--model.init_args.teacher_checkpoint=null",
            "--model.init_args.save_teacher_weights=true",
        ]
    cli = build_cli(overrides, run=False, exit_on_error=False)
    module, datamodule = cli.model, cli.datamodule
    precision = args.precision
    result: dict[str, Any] = {"module": type(module).__name__, "config": config}
    if name == "kd_cached":
        datamodule.setup("fit")
        module.set_input_statistics(datamodule.mean, datamodule.std)
        device = torch.device(args.device)
        autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if precision == "bf16-mixed"
            else None
        )
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"autocast": autocast} if autocast is not None else {}
        manifest = build_cache(
            module,
            datamodule,
            work / "cache",
            epochs=1,
            precision=precision,
            dtype="float16",
            chunk_rows=2048,
            device=device,
            progress=False,
            overwrite=True,
            **kwargs,
        )
        seconds = time.perf_counter() - started
        result["cache_build_images_per_second"] = manifest.size / seconds
        cli = build_cli(
            [
                *overrides,
                "--model.init_args.teacher=null",
                f"--model.init_args.teacher_cache={work / 'cache'}",
            ],
            run=False,
            exit_on_error=False,
        )
        module, datamodule = cli.model, cli.datamodule
    if name == "kd_compiled":
        try:
            module.student = torch.compile(module.student)
        except Exception as error:
            return {**result, "skipped": f"torch.compile failed: {error}"}
    frozen = _snapshot(module.teacher) if name in FROZEN else None
    recorder = Recorder(args.warmup)
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_epochs=1,
        limit_train_batches=args.warmup + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    if hasattr(module, "channels_last"):
        module.channels_last = True
    try:
        trainer.fit(module, datamodule=datamodule)
    except Exception as error:
        return {**result, "failed": f"{type(error).__name__}: {error}"}
    seconds = recorder.end - recorder.start
    result.update(
        {
            "steps": trainer.global_step,
            "images_per_second": recorder.images / seconds if seconds > 0 else None,
            "last_loss": recorder.losses[-1] if recorder.losses else None,
            "losses_finite": all(math.isfinite(x) for x in recorder.losses),
        }
    )
    if frozen is not None:
        now = module.teacher.state_dict()
        result["teacher_unchanged"] = all(
            torch.equal(now[k].cpu(), v.cpu()) for k, v in frozen.items()
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-test on the CPU")
    parser.add_argument(
        "--train-subset", type=int, default=None, help="train on (and cache) this many images"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "gpu_check: skipped: no CUDA device (torch.cuda.is_available() is False). Run it on "
            "a machine with a GPU (python benchmarks/gpu_check.py), or --allow-cpu to smoke-test "
            "the script."
        )
        return
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from fake_data import write_fake_cifar10
    from report import RESULTS_DIR, header, write_result

    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        # 20,000 training + 2,000 test images of CIFAR-10's layout (a class colour + noise).
        write_fake_cifar10(data_dir, n_train_per_batch=4000, n_test=2000, seed=0)
        for name in args.runs:
            work = Path(tmp) / name
            work.mkdir()
            L.seed_everything(0)
            results[name] = run(name, args, data_dir, work)
            print(name, json.dumps(results[name]), flush=True)
    total = time.perf_counter() - started
    kd, cached = results.get("kd", {}), results.get("kd_cached", {})
    ratio = (
        cached["images_per_second"] / kd["images_per_second"]
        if kd.get("images_per_second") and cached.get("images_per_second")
        else None
    )
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke test)"
    lines = [
        f"Device: {device}; precision {args.precision}, channels-last; {args.warmup} warm-up + "
        f"{args.steps} timed steps per module; generated CIFAR-shaped data; total {total:.0f} s.",
        "",
        "| module | class | img/s | last loss | losses finite | frozen teacher unchanged | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ips = f"{r['images_per_second']:.0f}" if r.get("images_per_second") else "-"
        loss = f"{r['last_loss']:.4g}" if r.get("last_loss") is not None else "-"
        note = r.get("skipped") or r.get("failed") or ""
        if "cache_build_images_per_second" in r:
            note = f"cache build {r['cache_build_images_per_second']:.0f} img/s"
        lines.append(
            f"| {name} | {r['module']} | {ips} | {loss} | {r.get('losses_finite', '-')} | "
            f"{r.get('teacher_unchanged', 'n/a')} | {note} |"
        )
    if ratio is not None:
        lines += ["", f"Cached KD / online KD images/s: {ratio:.2f}x"]
    body = "\n".join(lines)
    summary = {"device": device, "results": results, "cached_vs_online": ratio, "seconds": total}
    text = header("GPU check") + body + "\n"
    if args.device == "cuda":  # a CPU smoke test is not a result
        write_result("gpu_check", "GPU check", body)
        (RESULTS_DIR / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(text)
        (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    ok = all(
        r.get("losses_finite", True) and r.get("teacher_unchanged", True) and "failed" not in r
        for r in results.values()
    )
    if not ok:
        raise SystemExit("gpu_check: a module failed, gave a non-finite loss or moved its teacher")


if __name__ == "__main__":
    main()
