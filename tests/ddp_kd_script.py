"""Run by test_ddp.py: KD with strategy="ddp" on 2 CPU processes (gloo).

Usage: python ddp_kd_script.py OUT_DIR [kd|feature]. With ``feature`` the module is a
FeatureKDModule with a FitNets hint (through a trained 1x1-conv projector) and an RKD term, and
DDP runs with find_unused_parameters=False, so any registered but unused adapter parameter
fails the run. Each rank writes ``rank<r>.pt`` with its student and
teacher state dicts, the initial teacher state and the indices of the samples it saw.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import TinyData, TinyNet, ddp_trainer
from torch import Tensor

from lightning_kd.modules import FeatureKDModule, HintTerm, KDModule, RKDTerm


class RecordingKD(KDModule):
    """KDModule that remembers the first pixel of every training image it saw."""

    def compute_losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        self.seen.append(batch[0][:, 0, 0, 0].clone())
        return super().compute_losses(batch)


class RecordingFeatureKD(FeatureKDModule):
    """FeatureKDModule that remembers the first pixel of every training image it saw."""

    def compute_losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        self.seen.append(batch[0][:, 0, 0, 0].clone())
        return super().compute_losses(batch)


def main(out_dir: Path, kind: str) -> None:
    L.seed_everything(0)
    teacher = TinyNet(width=8)
    teacher_initial = {k: v.clone() for k, v in teacher.state_dict().items()}
    module: KDModule
    if kind == "feature":
        terms = [HintTerm("bn", "bn", weight=10.0), RKDTerm("fc", "fc")]
        module = RecordingFeatureKD(TinyNet(), teacher, terms=terms, input_size=(3, 8, 8))
    else:
        module = RecordingKD(TinyNet(), teacher, temperature=4.0, alpha=0.1)
    module.seen = []
    trainer = ddp_trainer(max_steps=4, limit_val_batches=2)
    trainer.fit(module, datamodule=TinyData(n=64, batch_size=4))
    torch.save(
        {
            "student": module.student.state_dict(),
            "terms": module.terms.state_dict() if kind == "feature" else {},
            "teacher": module.teacher.state_dict(),
            "teacher_initial": teacher_initial,
            "seen": torch.cat(module.seen),
            "global_step": trainer.global_step,
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "kd")
