"""Run by test_reproducible_data.py: the training views of every sample on 2 DDP processes.

Usage: python views_ddp_script.py OUT_DIR CIFAR10_DIR. Each rank trains a do-nothing module for
one epoch on ``CIFAR10DataModule(transform=CropFlip(num_views=2))`` with ``strategy="ddp"``
(gloo) and writes ``rank<r>.pt``: ``{sample index: views (2, 3, 32, 32)}`` of what it saw.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import ddp_trainer
from torch import Tensor, nn

from lightning_kd.data import CIFAR10DataModule, CropFlip


def datamodule(data_dir: str, batch_size: int) -> CIFAR10DataModule:
    return CIFAR10DataModule(
        data_dir,
        batch_size=batch_size,
        val_split=8,
        drop_last=False,
        return_indices=True,
        transform=CropFlip(num_views=2),
        view_seed=5,
    )


class Recorder(L.LightningModule):
    """Records the views of every training sample (by its index in the training file)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: dict[int, Tensor] = {}

    def training_step(self, batch: list, batch_idx: int) -> Tensor:
        views, _, positions = batch
        samples = self.trainer.datamodule.train_dataset.file_indices[positions.cpu()]
        stacked = torch.stack(views, dim=1)  # (B, 2, 3, 32, 32)
        for row, sample in enumerate(samples.tolist()):
            self.seen[sample] = stacked[row].clone()
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
