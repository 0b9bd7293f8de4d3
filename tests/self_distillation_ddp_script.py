"""Run by test_self_distillation.py: DINOModule with strategy="ddp" on 2 CPU processes (gloo).

Usage: python self_distillation_ddp_script.py OUT_DIR. Each rank trains 3 steps on its own
12 of 24 fixed images (batches of 4, 2 global + 2 local views; the even-numbered images are
brighter, so the two ranks' teacher outputs differ) with ``center_momentum=0`` and an online
linear probe, and writes ``rank<r>.pt`` with its student, teacher and probe state dicts, the
initial teacher state, the center after every optimizer step and the teacher outputs of every
step, the global step and the first pixel of every first-view image it saw.
"""

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from test_self_distillation import PooledConv, ViewsData, make_dino
from tiny import ddp_trainer
from torch import Tensor, nn

from lightning_kd.modules.dino import DINOModule


class RecordingDINO(DINOModule):
    """DINOModule that remembers the first pixel of every first-view image it saw and the
    center after every step."""

    seen: list[Tensor]
    centers: list[Tensor]

    def compute_losses(self, batch: Any) -> dict[str, Tensor]:
        self.seen.append(batch[0][0][:, 0, 0, 0].clone())
        return super().compute_losses(batch)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)  # the center moves here, after the step
        self.centers.append(self.center.center.clone())


def main(out_dir: Path) -> None:
    L.seed_everything(0)
    torch.manual_seed(0)
    module = make_dino(
        RecordingDINO,
        backbone=PooledConv(),
        center_momentum=0.0,
        momentum_start=0.9,
        probe_num_classes=4,
    )
    assert isinstance(module, RecordingDINO)
    module.seen = []
    module.centers = []
    teacher_outputs: list[Tensor] = []

    def keep_output(m: nn.Module, args: Any, out: Tensor) -> None:
        teacher_outputs.append(out.detach().clone())

    module.teacher.head.register_forward_hook(keep_output)
    teacher_initial = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = ddp_trainer(max_steps=3, limit_val_batches=0)
    data = ViewsData(n=24, batch_size=4, num_local=2)
    for view in data.views:  # the DistributedSampler gives the even images to one rank
        view[0::2] += 2.0
    trainer.fit(module, datamodule=data)
    torch.save(
        {
            "student": module.student.state_dict(),
            "teacher": module.teacher.state_dict(),
            "teacher_initial": teacher_initial,
            "probe": module.probe.state_dict() if module.probe is not None else {},
            "centers": torch.stack(module.centers),  # (steps, 1, K)
            "teacher_outputs": torch.stack(teacher_outputs),  # (steps, 2B, K)
            "global_step": trainer.global_step,
            "seen": torch.cat(module.seen),
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
