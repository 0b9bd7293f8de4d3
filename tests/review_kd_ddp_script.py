"""Run by test_review_kd.py: ReviewKD with strategy="ddp" on 2 CPU processes (gloo).

Usage: python review_kd_ddp_script.py OUT_DIR. A FeatureKDModule with a ReviewKDTerm (no
warm-up, so its ABFs get gradients from the first step) trains two tiny two-stage networks for
4 steps; DDP runs with find_unused_parameters=False, so an ABF parameter outside the graph
fails the run. Each rank writes ``rank<r>.pt`` with the term's state dict before and after
training, and the teacher's state dict before and after.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import TinyData, ddp_trainer
from torch import Tensor, nn

from lightning_kd.modules import FeatureKDModule
from lightning_kd.modules.review_kd import ReviewKDTerm


class TwoStageNet(nn.Module):
    """conv-BN-ReLU at 8x8, strided conv-BN-ReLU to 4x4, global pool, linear."""

    def __init__(self, widths: tuple[int, int], num_classes: int = 4) -> None:
        super().__init__()
        w1, w2 = widths
        self.stage1 = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1), nn.BatchNorm2d(w1), nn.ReLU())
        self.stage2 = nn.Sequential(
            nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.BatchNorm2d(w2), nn.ReLU()
        )
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage2(self.stage1(x))  # (B, w2, H/2, W/2)
        return self.fc(x.mean(dim=(2, 3)))  # (B, num_classes)


def main(out_dir: Path) -> None:
    L.seed_everything(0)
    student, teacher = TwoStageNet((4, 8)), TwoStageNet((6, 12))
    term = ReviewKDTerm(["stage1", "stage2"], ["stage1", "stage2"], warmup_epochs=0, weight=1.0)
    module = FeatureKDModule(student, teacher, terms=[term], input_size=(3, 8, 8))
    terms_initial = {k: v.clone() for k, v in module.terms.state_dict().items()}
    teacher_initial = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = ddp_trainer(max_steps=4, limit_val_batches=1)
    trainer.fit(module, datamodule=TinyData(n=64, batch_size=4))
    torch.save(
        {
            "terms": module.terms.state_dict(),
            "terms_initial": terms_initial,
            "teacher": module.teacher.state_dict(),
            "teacher_initial": teacher_initial,
            "global_step": trainer.global_step,
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
