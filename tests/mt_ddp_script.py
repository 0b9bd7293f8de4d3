"""Run by test_mean_teacher.py: Mean Teacher with strategy="ddp" on 2 CPU processes (gloo).

Usage: python mt_ddp_script.py OUT_DIR. Each rank writes ``rank<r>.pt`` with its student and
teacher state dicts, the initial teacher state, the number of EMA updates made, the global step
and the first pixel of every labeled training image it saw.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from test_mean_teacher import TinySemiSupervisedData
from tiny import TinyNet, ddp_trainer
from torch import Tensor

from lightning_kd.modules.mean_teacher import MeanTeacherModule


class RecordingMeanTeacher(MeanTeacherModule):
    """MeanTeacherModule that remembers the first pixel of every labeled image it saw and the
    step of every EMA update."""

    seen: list[Tensor]
    update_steps: list[int]

    def compute_losses(self, batch: dict[str, list[Tensor]]) -> dict[str, Tensor]:
        self.seen.append(batch["labeled"][0][:, 0, 0, 0].clone())
        return super().compute_losses(batch)

    def update_ema(self, step: int) -> float:
        self.update_steps.append(step)
        return super().update_ema(step)


def main(out_dir: Path) -> None:
    L.seed_everything(0)
    module = RecordingMeanTeacher(TinyNet(), ema_decay=0.9, consistency_rampup_epochs=1.0)
    module.seen = []
    module.update_steps = []
    teacher_initial = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = ddp_trainer(max_steps=4, limit_val_batches=2)
    # Per rank: 8 labeled images in batches of 2, 24 unlabeled in batches of 6 -> 4 batches.
    trainer.fit(module, datamodule=TinySemiSupervisedData(n_labeled=16, n_unlabeled=48))
    torch.save(
        {
            "student": module.student.state_dict(),
            "teacher": module.teacher.state_dict(),
            "teacher_initial": teacher_initial,
            "ema_updates": len(module.update_steps),
            "update_steps": torch.tensor(module.update_steps),
            "global_step": trainer.global_step,
            "seen": torch.cat(module.seen),
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
