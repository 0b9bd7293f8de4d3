"""Tiny networks and an in-memory datamodule for fast module tests."""

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class TinyNet(nn.Module):
    """conv-BN-ReLU, global pool, linear: has BatchNorm buffers, like the real networks."""

    def __init__(self, num_classes: int = 4, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.conv(x)))  # (B, width, H, W)
        return self.fc(h.mean(dim=(2, 3)))  # (B, num_classes)


class ConstantNet(nn.Module):
    """Returns fixed logits for every image (plus a zero-valued trainable bias)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.bias = nn.Parameter(torch.zeros(len(logits)))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1) + self.bias


class TinyData(L.LightningDataModule):
    """Random 8x8 images whose label is the channel with the largest mean (learnable)."""

    def __init__(self, n: int = 32, batch_size: int = 8, num_classes: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)
        self.batch_size = batch_size
        self.num_classes = num_classes

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)

    test_dataloader = val_dataloader


def trainer(**kwargs: object) -> L.Trainer:
    """A quiet CPU trainer without logger/checkpoint side effects unless asked."""
    defaults: dict[str, object] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    defaults.update(kwargs)
    return L.Trainer(**defaults)  # type: ignore[arg-type]


def ddp_trainer(**kwargs: object) -> L.Trainer:
    """A quiet 2-process CPU DDP trainer (gloo) for the DDP test scripts."""
    return trainer(devices=2, strategy="ddp", **kwargs)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call in memory: ``metrics`` is a list of (step, values)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_hyperparams(self, params: object, *args: object, **kwargs: object) -> None:
        pass

    def last(self, key: str) -> float:
        """The last value written under ``key``."""
        values = [m[key] for _, m in self.metrics if key in m]
        if not values:
            raise KeyError(f"{key!r} was never logged; logged keys: {self.keys()}")
        return values[-1]

    def keys(self) -> set[str]:
        return {k for _, m in self.metrics for k in m}


class SigintAtStep(L.Callback):
    """Sends this process SIGINT (as Ctrl-C would; or ``signum``) once ``step`` optimizer steps
    are done."""

    def __init__(self, step: int, signum: int = 2) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            import os

            os.kill(os.getpid(), self.signum)
