"""Run by test_teacher_cache.py: KD on 2 CPU processes (gloo) with the teacher online and from
a teacher cache built on one process.

Usage: python teacher_cache_ddp_script.py OUT_DIR CIFAR10_DIR. ``OUT_DIR`` holds ``teacher.pt``
and the cache ``cache/``; each rank writes ``rank<r>.pt`` with both students' state dicts and
the final global step.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from tiny import TinyNet, ddp_trainer

from lightning_kd.data import CIFAR10DataModule
from lightning_kd.modules import KDModule


def _student() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(10, 4)


def _fit(module: KDModule, data_dir: str) -> tuple[dict, int]:
    L.seed_everything(0)
    trainer = ddp_trainer(max_epochs=2, limit_val_batches=1)
    datamodule = CIFAR10DataModule(data_dir=data_dir, batch_size=16, view_seed=3, val_split=40)
    trainer.fit(module, datamodule=datamodule)
    return {k: v.clone() for k, v in module.student.state_dict().items()}, trainer.global_step


def main(out_dir: Path, data_dir: str) -> None:
    teacher = TinyNet(10, 8)
    teacher.load_state_dict(torch.load(out_dir / "teacher.pt", weights_only=True))
    online, _ = _fit(KDModule(_student(), teacher), data_dir)
    cached, step = _fit(KDModule(_student(), teacher_cache=str(out_dir / "cache")), data_dir)
    rank = torch.distributed.get_rank()
    torch.save(
        {"online": online, "cached": cached, "global_step": step}, out_dir / f"rank{rank}.pt"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
