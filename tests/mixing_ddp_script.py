"""Run by test_mixing.py: the mixed training views and soft targets of every sample on 2 DDP
processes.

Usage: python mixing_ddp_script.py OUT_DIR CIFAR10_DIR. Each rank trains a do-nothing module for
one epoch on ``CIFAR10DataModule(transform=MixUp())`` with ``strategy="ddp"`` (gloo) and writes
``rank<r>.pt``: ``{sample index: (view (3, 32, 32), target (10,))}`` of what it saw.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import ddp_trainer
from torch import Tensor, nn

from lightning_kd.data import CIFAR10DataModule, MixUp


def datamodule(data_dir: str, batch_size: int) -> CIFAR10DataModule:
    return CIFAR10DataModule(
        data_dir,
        batch_size=batch_size,
        val_split=8,
        drop_last=False,
        return_indices=True,
        transform=MixUp(alpha=0.5),
        view_seed=5,
    )


class Recorder(L.LightningModule):
    """Records the mixed view and soft target of every training sample (by its file index)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: dict[int, tuple[Tensor, Tensor]] = {}

    def training_step(self, batch: list, batch_idx: int) -> Tensor:
        views, targets, positions = batch
        samples = self.trainer.datamodule.train_dataset.file_indices[positions.cpu()]
        for row, sample in enumerate(samples.tolist()):
            self.seen[sample] = (views[row].clone(), targets[row].clone())
        return (self.weight**2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out_dir: Path, data_dir: str) -> None:
    module = Recorder()
    trainer = ddp_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule(data_dir, batch_size=16))
    torch.save(module.seen, out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
