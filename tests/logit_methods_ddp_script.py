"""Run by test_logit_methods.py: CTKD (and DIST) with strategy="ddp" on 2 CPU processes (gloo).

Usage: python logit_methods_ddp_script.py OUT_DIR. A FeatureKDModule with a CTKDTerm (learnable
temperature behind a gradient reversal) and a DISTTerm trains 4 optimizer steps under DDP with
find_unused_parameters=False, so the temperature parameter must receive a gradient on every
rank at every step. Each rank writes ``rank<r>.pt`` with its student and term state dicts, the
initial temperature parameter, the temperatures its batches were trained at and the indices
of the samples it saw.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import TinyData, TinyNet, ddp_trainer
from torch import Tensor

from lightning_kd.modules import FeatureKDModule
from lightning_kd.modules.terms import CTKDTerm, DISTTerm


class RecordingFeatureKD(FeatureKDModule):
    """Remembers the first pixel of every training image and the CTKD temperature it used."""

    seen: list[Tensor]
    temperatures: list[Tensor]

    def compute_losses(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        self.seen.append(batch[0][:, 0, 0, 0].clone())
        losses = super().compute_losses(batch)
        self.temperatures.append(losses["ctkd_temperature"].reshape(1).clone())
        return losses


def main(out_dir: Path) -> None:
    L.seed_everything(0)
    terms = [CTKDTerm(weight=0.9), DISTTerm(weight=2.0)]
    module = RecordingFeatureKD(
        TinyNet(), TinyNet(width=8), terms=terms, ce_weight=0.1, input_size=(3, 8, 8)
    )
    module.seen = []
    module.temperatures = []
    ctkd = module.distillation_terms[0]
    assert isinstance(ctkd, CTKDTerm)
    initial = ctkd.temperature.g.detach().clone()
    trainer = ddp_trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=TinyData(n=64, batch_size=4))
    torch.save(
        {
            "student": module.student.state_dict(),
            "terms": module.terms.state_dict(),
            "g_initial": initial,
            "temperatures": torch.cat(module.temperatures),
            "seen": torch.cat(module.seen),
            "global_step": trainer.global_step,
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
