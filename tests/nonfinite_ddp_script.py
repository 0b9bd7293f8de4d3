"""Run by test_ddp.py: a non-finite loss on one of 2 DDP processes (gloo).

Usage: python nonfinite_ddp_script.py OUT_DIR MODE. The loss of rank 1 is NaN at its first
step only. With ``MODE=skip`` both ranks must skip that step together (otherwise rank 0
waits forever in the gradient all-reduce) and train on; with ``MODE=error`` both must stop
with the error. Each rank writes ``rank<r>.pt``: its student after training (or the error
message) and the student before training.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import TinyData, TinyNet, ddp_trainer
from torch import Tensor

from lightning_kd.modules import ClassifierModule


class NaNOnRankOne(ClassifierModule):
    """A classifier whose loss is NaN on rank 1 at its first training step."""

    calls = 0

    def compute_losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        losses = super().compute_losses(batch)
        self.calls += 1
        if self.global_rank == 1 and self.calls == 1:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def main(out_dir: Path, mode: str) -> None:
    L.seed_everything(0)
    module = NaNOnRankOne(TinyNet(), nonfinite_loss=mode)  # type: ignore[arg-type]
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = ddp_trainer(max_steps=3, limit_val_batches=0)
    error = ""
    try:
        trainer.fit(module, datamodule=TinyData(n=64, batch_size=4))
    except FloatingPointError as e:
        error = str(e)
    torch.save(
        {"model": module.model.state_dict(), "initial": initial, "error": error},
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
