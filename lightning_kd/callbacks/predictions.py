"""Write what ``predict`` computes to a file: ``lightning-kd predict`` adds this by default."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Collect the outputs of ``predict_step`` with their sample indices and write one file.

    For classification modules (those that evaluate an ``acc``) the file holds, per sample of
    the predict dataloader (the datamodule's test split by default):

    * ``index``: int64 ``(N,)``, the sample's index in the predict dataset;
    * ``target``: int64 ``(N,)``, its label (when the batches carry labels);
    * ``logits``: float32 ``(N, C)``; ``probs``: their softmax; ``prediction``: int64 argmax.

    Other modules (e.g. DINO, whose exported network gives features) write ``features``
    ``(N, D)`` instead of the logits. A ``.pt`` path is written with ``torch.save`` (a dict of
    tensors: ``torch.load(path)["probs"]``); a ``.csv`` path as one row per sample
    (``index, target, prediction, prob_0 ... prob_{C-1}``, or ``feature_j`` columns). Rows
    are sorted by ``index``. Under DDP each process writes its own shard,
    ``<stem>.rank<r><suffix>``.

    Args:
        path: The output file (``.pt`` or ``.csv``); its folder is created.
    """

    def __init__(self, path: str | Path = "predictions.pt") -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        if self.path.suffix not in (".pt", ".csv"):
            raise ValueError(f"predictions path must end in .pt or .csv, got {str(path)!r}")
        self._chunks: list[tuple[Tensor, Tensor, Tensor | None]] = []

    @override
    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._chunks = []

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, Tensor):
            raise TypeError(
                f"PredictionWriter expects predict_step to return a tensor, got "
                f"{type(prediction).__name__}"
            )
        n = prediction.shape[0]
        if batch_indices is not None and len(batch_indices) == n:
            index = torch.as_tensor(list(batch_indices), dtype=torch.long)
        else:  # pragma: no cover - Lightning always tracks predict indices
            start = sum(chunk[0].numel() for chunk in self._chunks)
            index = torch.arange(start, start + n)
        target = None
        if isinstance(batch, list | tuple) and len(batch) > 1 and isinstance(batch[1], Tensor):
            target = batch[1].detach().cpu().long()
        self._chunks.append((index, prediction.detach().float().cpu(), target))

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._chunks:
            return
        index = torch.cat([c[0] for c in self._chunks])
        outputs = torch.cat([c[1] for c in self._chunks])
        targets = [c[2] for c in self._chunks]
        order = index.argsort()
        result: dict[str, Tensor] = {"index": index[order]}
        if all(t is not None for t in targets):
            result["target"] = torch.cat([t for t in targets if t is not None])[order]
        classifier = "acc" in getattr(pl_module, "eval_metric_names", ())
        if classifier:
            logits = outputs[order]
            result["logits"] = logits
            result["probs"] = logits.softmax(dim=1)
            result["prediction"] = logits.argmax(dim=1)
        else:
            result["features"] = outputs[order]
        path = self.path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            torch.save(result, path)
        else:
            _write_csv(path, result)
        self._chunks = []
        rank_zero_info(f"wrote {index.numel()} predictions to {path}")


def _write_csv(path: Path, result: dict[str, Tensor]) -> None:
    columns: list[tuple[str, Tensor]] = [("index", result["index"])]
    if "target" in result:
        columns.append(("target", result["target"]))
    if "prediction" in result:
        columns.append(("prediction", result["prediction"]))
    matrix_name, prefix = ("probs", "prob") if "probs" in result else ("features", "feature")
    matrix = result[matrix_name]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        header = [name for name, _ in columns] + [f"{prefix}_{j}" for j in range(matrix.shape[1])]
        writer.writerow(header)
        rows = zip(*(column.tolist() for _, column in columns), matrix.tolist(), strict=True)
        for *scalars, values in rows:
            writer.writerow([*scalars, *(f"{v:.6g}" for v in values)])
