"""Run by test_mlkd.py: MLKD with strategy="ddp" on 2 CPU processes (gloo).

Usage: python mlkd_ddp_script.py OUT_DIR CIFAR100_DIR. Trains an MLKDModule for 3 steps on
``CIFAR100DataModule(transform=StrongAugment(), return_indices=True)``; each rank writes
``rank<r>.pt`` with its student and teacher state dicts, the initial teacher state, the
training-set positions of the samples it saw and its global step.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import TinyNet, ddp_trainer
from torch import Tensor

from lightning_kd.data import CIFAR100DataModule, StrongAugment
from lightning_kd.modules.mlkd import MLKDModule


class RecordingMLKD(MLKDModule):
    """MLKDModule that remembers the training-set positions of the samples it saw."""

    def compute_losses(self, batch: list) -> dict[str, Tensor]:
        self.seen.append(batch[2].clone())
        return super().compute_losses(batch)


def main(out_dir: Path, data_dir: str) -> None:
    L.seed_everything(0)
    teacher = TinyNet(num_classes=100, width=8)
    teacher_initial = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = RecordingMLKD(TinyNet(num_classes=100), teacher)
    module.seen = []
    datamodule = CIFAR100DataModule(
        data_dir, batch_size=8, transform=StrongAugment(), return_indices=True, view_seed=3
    )
    trainer = ddp_trainer(max_steps=3, limit_val_batches=1)
    trainer.fit(module, datamodule=datamodule)
    torch.save(
        {
            "student": module.student.state_dict(),
            "teacher": module.teacher.state_dict(),
            "teacher_initial": teacher_initial,
            "seen": torch.cat(module.seen),
            "global_step": trainer.global_step,
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
