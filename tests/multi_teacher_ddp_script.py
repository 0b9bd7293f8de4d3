"""Run by test_multi_teacher.py: KD from two teachers with strategy="ddp" on 2 CPU processes.

Usage: python multi_teacher_ddp_script.py OUT_DIR. Each rank writes ``rank<r>.pt`` with its
student state dict, each teacher's state dict before and after training, the indices of the
samples it saw and the final global step.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import TinyData, TinyNet, ddp_trainer
from torch import Tensor

from lightning_kd.modules.kd import KDModule
from lightning_kd.modules.teachers import Teacher


class RecordingKD(KDModule):
    """KDModule that remembers the first pixel of every training image it saw."""

    def compute_losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        self.seen.append(batch[0][:, 0, 0, 0].clone())
        return super().compute_losses(batch)


def main(out_dir: Path) -> None:
    L.seed_everything(0)
    networks = [TinyNet(width=8), TinyNet(width=6)]
    initial = [{k: v.clone() for k, v in n.state_dict().items()} for n in networks]
    teachers = [Teacher(networks[0], weight=2.0), Teacher(networks[1], weight=1.0)]
    module = RecordingKD(TinyNet(), teachers=teachers, temperature=4.0, alpha=0.1)
    module.seen = []
    trainer = ddp_trainer(max_epochs=1, limit_val_batches=2)
    trainer.fit(module, datamodule=TinyData(n=32, batch_size=4))  # 4 steps on each rank
    torch.save(
        {
            "student": module.student.state_dict(),
            "teachers": [n.state_dict() for n in networks],
            "teachers_initial": initial,
            "seen": torch.cat(module.seen),
            "global_step": trainer.global_step,
            "val_teacher0_acc": float(trainer.callback_metrics["val/teacher0_acc"]),
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
