"""``lightning-kd cache``: run a KD config's teacher(s) once over the exact training views of
every epoch and store the outputs, for any number of students (``teacher_cache: DIR``).

::

    lightning-kd cache --config configs/quickstart/student_kd.yaml \\
        --model.init_args.teacher_checkpoint runs/teacher/version_0/final.ckpt \\
        --data.init_args.data_dir ../shared/data --out caches/quickstart_teacher

Options of its own (everything else is the training config, as for ``fit``): ``--out``,
``--epochs`` (default: the config's ``max_epochs``, or its ``view_epochs`` when smaller),
``--top-k``, ``--dtype float16|float32`` (default ``float16``), ``--batch-size`` (images per
teacher forward; default the config's training batch size: on the 2-core CPU this was written
on, the quickstart teacher ran at 3,922 / 3,227 / 1,746 / 1,908 img/s at batch 128 / 256 / 512 /
1024, larger batches falling out of the caches; on a GPU pass a larger one), ``--precision``
(default: the config's trainer precision, the one a student's online teacher would run under,
which the student run then checks),
``--devices`` (processes sharing the work; with more than 1 they are launched as under DDP),
``--overwrite``. Interrupt it any time; the same command continues it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from lightning_kd.caching.build import build_cache
from lightning_kd.caching.store import normalised_precision

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-kd cache",
        description=(
            "Run a KD config's teacher(s) once over the exact training views of each epoch and "
            "store their logits for students trained with teacher_cache. Every option not "
            "listed here is passed to the config parser, as for `lightning-kd fit`."
        ),
    )
    parser.add_argument("--out", required=True, help="the cache folder to write")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs to cover (default: the config's max_epochs, or view_epochs if smaller)",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="keep the k largest logits of each row only"
    )
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per teacher forward (default: the config's training batch size)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="precision of the teacher (default: the config's trainer.precision)",
    )
    parser.add_argument(
        "--devices", type=int, default=1, help="processes sharing the work (default 1)"
    )
    parser.add_argument(
        "--accelerator", default=None, help="default: the config's trainer.accelerator"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a cache of another run in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> None:
    """Entry point of ``lightning-kd cache`` (``argv`` without the command name)."""
    from lightning.fabric import Fabric

    from lightning_kd.cli import build_cli

    options, config_args = _parser().parse_known_args(argv)
    # LightningCLI warns when it is given args while sys.argv has some too; the command line
    # is kept for the processes that --devices launches (they re-run it).
    command_line, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = build_cli(config_args, run=False, exit_on_error=False)
    finally:
        sys.argv = command_line
    module: Any = cli.model
    datamodule: Any = cli.datamodule
    trainer = cli.trainer
    if not hasattr(module, "cache_outputs"):
        raise ValueError(
            f"{type(module).__name__} has no teacher to cache: lightning-kd cache takes the "
            "config of a frozen-teacher logit module (KDModule, FeatureKDModule with logit "
            "terms, MLKDModule)"
        )
    epochs = options.epochs
    if epochs is None:
        limits = [v for v in (trainer.max_epochs, datamodule.view_epochs) if v and v > 0]
        if not limits:
            raise ValueError(
                "the config trains without an epoch limit (max_epochs is -1 or None) and "
                "without view_epochs: pass --epochs"
            )
        epochs = min(limits)
    precision = normalised_precision(options.precision or trainer.precision)
    accelerator = options.accelerator or _accelerator_name(trainer)
    fabric = Fabric(
        accelerator=accelerator,
        devices=options.devices,
        strategy="ddp" if options.devices > 1 else "auto",
        precision=precision,  # type: ignore[arg-type]
    )
    fabric.launch()
    datamodule.setup("fit")
    module.set_input_statistics(datamodule.mean, datamodule.std)
    try:
        manifest = build_cache(
            module,
            datamodule,
            options.out,
            epochs=epochs,
            precision=precision,
            top_k=options.top_k,
            dtype=options.dtype,
            chunk_rows=options.batch_size or datamodule.batch_size,
            device=fabric.device,
            rank=fabric.global_rank,
            world_size=fabric.world_size,
            barrier=fabric.barrier,
            autocast=fabric.autocast,
            overwrite=options.overwrite,
            progress=not options.no_progress,
        )
    except KeyboardInterrupt:
        sys.stderr.write(
            "lightning-kd cache: interrupted; every finished chunk is kept. Run the same "
            "command again to continue.\n"
        )
        raise SystemExit(130) from None
    if fabric.global_rank == 0:
        seconds = manifest.extra.get("seconds")
        rate = manifest.extra.get("images_per_second_rank0")
        if rate is None:
            rate = "nothing left to compute; it was complete"
        print(
            f"lightning-kd cache: {manifest.epochs} epochs x {manifest.size} images x "
            f"{manifest.num_views} view(s) of {manifest.num_teachers} teacher(s) in {options.out} "
            f"({manifest.dtype}, top_k={manifest.top_k}, {seconds} s, {rate} views/s on rank 0)"
        )
    torch.set_grad_enabled(True)


def _accelerator_name(trainer: Any) -> str:
    """The trainer's accelerator as a name Fabric accepts."""
    name = type(trainer.accelerator).__name__.lower()
    for known in ("cpu", "cuda", "mps", "xla"):
        if known in name:
            return known
    return "auto"
