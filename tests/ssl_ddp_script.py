"""Run by test_semi_supervised_data.py: CIFAR10SSLDataModule under DDP on 2 CPU processes.

Usage: python ssl_ddp_script.py DATA_DIR OUT_DIR. DATA_DIR holds a fake CIFAR-10 whose train
image ``i`` has red value ``1 + i % 250`` and green value ``1 + i // 250`` (see
``_write_indexed_cifar10`` in the test file), so the index of every image a step receives can
be read back from its pixels. Each rank trains for 2 epochs and writes ``rank<r>.pt`` with, per
stream, the indices decoded from both views and the labels, shaped ``(epochs, steps, B)``.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from lightning_kd.data import CIFAR10_MEAN, CIFAR10_STD, CIFAR10SSLDataModule

STREAMS = ("labeled", "unlabeled")


def decode_indices(x: Tensor) -> Tensor:
    """Training-image index of every normalised view ``(B, 3, 32, 32)`` -> int64 ``(B,)``."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    centre = ((x * std + mean) * 255).round().long()[:, :, 16, 16]  # (B, 3), never padding
    return (centre[:, 0] - 1) + 250 * (centre[:, 1] - 1)


class Recorder(L.LightningModule):
    """Records what every training step receives; the loss only touches a dummy weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list[tuple[int, Tensor, Tensor, Tensor]]] = {s: [] for s in STREAMS}

    def training_step(self, batch: dict[str, list[Tensor]], batch_idx: int) -> Tensor:
        for name in STREAMS:
            student, teacher, labels = batch[name]
            self.seen[name].append(
                (self.current_epoch, decode_indices(student), decode_indices(teacher), labels)
            )
        return (self.weight**2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(data_dir: Path, out_dir: Path) -> None:
    L.seed_everything(0)
    dm = CIFAR10SSLDataModule(
        data_dir=str(data_dir), num_labels=40, labeled_batch_size=4, unlabeled_batch_size=16
    )
    module = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    result: dict[str, Tensor | int] = {"world_size": trainer.world_size}
    assert dm.labeled_indices is not None
    result["labeled_indices"] = dm.labeled_indices
    for name in STREAMS:
        records = module.seen[name]
        epochs = torch.tensor([r[0] for r in records])
        shape = (2, -1, records[0][1].numel())  # (epochs, steps, B)
        assert torch.equal(epochs, epochs.sort().values)
        for key, column in (("student", 1), ("teacher", 2), ("labels", 3)):
            column_values: list[Tensor] = [r[column] for r in records]  # type: ignore[misc]
            result[f"{name}_{key}"] = torch.stack(column_values).view(shape)
    torch.save(result, out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
