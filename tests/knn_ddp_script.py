"""Tiny protocol-following module and datamodule for the online-evaluation callback tests.

Run as a script (by ``test_knn.py``): ``python knn_ddp_script.py OUT_DIR`` trains
:class:`EmbedModule` on :func:`noisy_data` with :class:`KNNEvaluation` under
``strategy="ddp"`` on 2 CPU processes (gloo). Each rank writes ``OUT_DIR/rank<r>.pt`` with the
logged ``val/knn_acc`` and the kNN bank it held in the last validation epoch.

The feature bank has 21 images, so the two shards (``rank::2``) have 11 and 10 of them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from tiny import ddp_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from lightning_kd.callbacks import KNNEvaluation


class EmbedModule(L.LightningModule):
    """Follows the online-evaluation protocol with a fixed ``embed``.

    Args:
        embedding: ``"identity"`` (features are the input vectors), ``"constant"`` (all ones)
            or ``"linear"`` (a trainable ``nn.Linear`` initialised to the identity).
        dim: Input and feature dimension ``D``.
        feature_dtype: dtype ``embed`` returns (e.g. ``torch.bfloat16``, as under bf16).

    The training loss only touches ``self.weight``, so nothing else gets a gradient from it.
    """

    def __init__(
        self,
        embedding: str = "identity",
        dim: int = 5,
        feature_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.embedding = embedding
        self.feature_dtype = feature_dtype
        self.weight = nn.Parameter(torch.ones(1))
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))
            self.proj.bias.zero_()
        # Unused parameters would fail DDP (find_unused_parameters=False).
        self.proj.requires_grad_(embedding == "linear")

    def embed(self, images: Tensor) -> Tensor:
        """``(B, D)`` features of ``(B, D)`` input vectors."""
        if self.embedding == "identity":
            features = images
        elif self.embedding == "constant":
            features = torch.ones_like(images)
        else:
            features = self.proj(images)
        return features.to(self.feature_dtype)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        features = self.embed(x)
        return {
            "loss": (self.weight**2).sum(),
            "features": features.detach(),
            "targets": y,
        }

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        return {"features": self.embed(x), "targets": y}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class VectorData(L.LightningDataModule):
    """Vectors ``(N, D)`` with labels, stored negated; ``on_after_batch_transfer`` flips them.

    The sign flip stands in for the CIFAR datamodule's normalisation of uint8 images there: a
    bank built without it, or with it applied twice, points every vector the wrong way.

    Args:
        bank: ``(x, y)`` of the labeled training images (the kNN feature bank).
        val: ``(x, y)`` of the validation images.
        num_classes: ``C``.
        batch_size: Batch size of every loader.
        train_size: Train on the first ``train_size`` bank images (all if ``None``).
    """

    def __init__(
        self,
        bank: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor],
        num_classes: int,
        batch_size: int = 4,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        self.bank = TensorDataset(-bank[0], bank[1])
        self.val = TensorDataset(-val[0], val[1])
        n = len(self.bank) if train_size is None else train_size
        self.train = Subset(self.bank, range(n))
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.bank_loader_calls: list[tuple[int, int]] = []

    def _loader(self, dataset: Dataset[Any]) -> DataLoader[Any]:
        # Sharded rank::world_size in order (Lightning's own sampler would shuffle the training
        # set under DDP), so that 2 ranks x batch b see what 1 process sees with batch 2b.
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return DataLoader(dataset, batch_size=self.batch_size)
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.train)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.val)

    def feature_bank_dataloader(self, *, num_replicas: int = 1, rank: int = 0) -> DataLoader[Any]:
        self.bank_loader_calls.append((num_replicas, rank))
        shard = Subset(self.bank, range(rank, len(self.bank), num_replicas))
        return DataLoader(shard, batch_size=self.batch_size)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return [-batch[0], *batch[1:]]


def separable_data(
    num_classes: int = 5, per_class: int = 4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``per_class`` points close to each unit axis of ``R^C``: ``x (N, C)``, ``y (N,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat(per_class)
    x = torch.eye(num_classes)[y] + 0.05 * torch.randn(len(y), num_classes, generator=g)
    return x, y


def noisy_data(n: int, seed: int, num_classes: int = 5) -> tuple[Tensor, Tensor]:
    """Overlapping classes (axis + heavy noise), so kNN makes some mistakes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.eye(num_classes)[y] + 0.6 * torch.randn(n, num_classes, generator=g)
    return x, y


def ddp_data(batch_size: int) -> VectorData:
    """21 bank images (first 16 trained on), 16 validation images, 5 classes."""
    return VectorData(
        noisy_data(21, seed=1), noisy_data(16, seed=2), 5, batch_size=batch_size, train_size=16
    )


def ddp_callbacks() -> list[Callback]:
    return [KNNEvaluation(k=3, temperature=0.5)]


class BankRecorder(Callback):
    """Copies the kNN bank at the end of each validation epoch (before the kNN frees it)."""

    def __init__(self, knn: KNNEvaluation) -> None:
        self.knn = knn
        self.bank: tuple[Tensor, Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.knn.bank_features is not None and self.knn.bank_labels is not None:
            self.bank = (self.knn.bank_features.clone(), self.knn.bank_labels.clone())


def main(out_dir: Path) -> None:
    L.seed_everything(0)
    callbacks = ddp_callbacks()
    (knn,) = callbacks
    assert isinstance(knn, KNNEvaluation)
    recorder = BankRecorder(knn)
    # The recorder runs before the kNN callback's epoch end, which frees the bank.
    trainer = ddp_trainer(
        max_epochs=2, callbacks=[recorder, *callbacks], use_distributed_sampler=False
    )
    trainer.fit(EmbedModule(), datamodule=ddp_data(batch_size=4))
    assert recorder.bank is not None
    torch.save(
        {
            "knn_acc": trainer.callback_metrics["val/knn_acc"],
            "bank_features": recorder.bank[0],
            "bank_labels": recorder.bank[1],
            "world_size": trainer.world_size,
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
