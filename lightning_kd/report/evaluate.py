"""Run networks over a datamodule's test split once and score their predictions.

The report reads the **test split only**: it describes final models after training, and
nothing is selected on it (validation is not used at all here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_kd.metrics import top1_agreement, topk_correct
from lightning_kd.report.calibration import (
    DEFAULT_BINS,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

__all__ = ["TestPredictions", "classification_metrics", "predict_test_split"]


@dataclass
class TestPredictions:
    """Every network's logits on the test split, in the loader's order.

    Attributes:
        logits: One float32 ``(N, C)`` tensor per network.
        targets: int64 ``(N,)`` labels.
        input_shape: One image's shape, ``(C, H, W)``.
        channels_last: Whether the datamodule's batches are channels-last (the networks were
            converted to match).
    """

    logits: list[Tensor]
    targets: Tensor
    input_shape: tuple[int, ...]
    channels_last: bool


def _is_channels_last(images: Tensor) -> bool:
    return (
        images.ndim == 4
        and images.is_contiguous(memory_format=torch.channels_last)
        and not images.is_contiguous()
    )


def _images_and_targets(batch: Any) -> tuple[Tensor, Tensor]:
    if not (
        isinstance(batch, list | tuple)
        and len(batch) >= 2
        and isinstance(batch[0], Tensor)
        and isinstance(batch[1], Tensor)
    ):
        got = (
            f"a {type(batch).__name__} of {len(batch)}"
            if isinstance(batch, list | tuple)
            else type(batch).__name__
        )
        raise ValueError(
            f"expected test batches [images (B, C, H, W), targets (B,)] from the datamodule, "
            f"got {got}"
        )
    return batch[0], batch[1]


@torch.inference_mode()
def predict_test_split(
    networks: Sequence[nn.Module],
    datamodule: L.LightningDataModule,
    *,
    names: Sequence[str],
    num_classes: int | None = None,
) -> TestPredictions:
    """Logits of every network on every test batch.

    The datamodule is set up for ``"test"``; each batch of ``test_dataloader()`` goes through
    ``on_after_batch_transfer`` (where lightning-kd datamodules normalise), as in
    ``lightning-kd test``. When the batches are channels-last, the networks are converted to
    channels-last too (in place), as the modules' ``channels_last`` does in training.

    Args:
        networks: Networks in eval mode.
        datamodule: The datamodule.
        names: A name per network, for messages.
        num_classes: The datamodule's class count, checked against the logits.

    Raises:
        ValueError: If a network does not return ``(B, num_classes)`` logits, or the batches
            are not ``[images, targets]``.
    """
    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    outputs: list[list[Tensor]] = [[] for _ in networks]
    targets: list[Tensor] = []
    input_shape: tuple[int, ...] | None = None
    channels_last = False
    for batch in loader:
        images, labels = _images_and_targets(datamodule.on_after_batch_transfer(batch, 0))
        if input_shape is None:
            input_shape = tuple(images.shape[1:])
            channels_last = _is_channels_last(images)
            if channels_last:
                for network in networks:
                    network.to(memory_format=torch.channels_last)
        for k, network in enumerate(networks):
            logits = network(images)
            if not (isinstance(logits, Tensor) and logits.ndim == 2):
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
                raise ValueError(
                    f"{names[k]} returns {shape} for a batch of {images.shape[0]} images, "
                    "expected logits (B, num_classes): the report is for classifiers (a "
                    "self-supervised backbone returns features; report its linear probe "
                    "instead)"
                )
            if num_classes is not None and logits.shape[1] != num_classes:
                raise ValueError(
                    f"{names[k]} returns logits of {logits.shape[1]} classes, the datamodule "
                    f"has {num_classes}; report networks on the data they classify"
                )
            outputs[k].append(logits.float())
        targets.append(labels.long())
    if input_shape is None:
        raise ValueError(
            f"the test split of {type(datamodule).__name__} is empty: no batch to evaluate"
        )
    return TestPredictions(
        logits=[torch.cat(chunks) for chunks in outputs],
        targets=torch.cat(targets),
        input_shape=input_shape,
        channels_last=channels_last,
    )


def classification_metrics(
    logits: Tensor, targets: Tensor, *, teacher_logits: Tensor, n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy, agreement with the teacher, NLL, ECE and reliability bins.

    Args:
        logits: ``(N, C)`` logits of the network.
        targets: ``(N,)`` labels.
        teacher_logits: ``(N, C)`` logits of the teacher on the same images.
        n_bins: Bins of the ECE and the reliability diagram.

    Returns:
        ``top1``, ``top5`` (top-``min(5, C)``, with ``top5_k``), ``agreement`` (fraction of
        images whose top-1 class equals the teacher's), ``nll`` (nats), ``ece`` (fractions in
        ``[0, 1]``) and ``reliability`` (:class:`~lightning_kd.report.calibration.ReliabilityBins`
        as a dict).
    """
    k = min(5, logits.shape[1])
    probs = torch.softmax(logits.float(), dim=1)  # (N, C)
    return {
        # Means of 0/1 scores in float64: exact fractions of the test set in the JSON.
        "top1": float(topk_correct(logits, targets, k=1).double().mean()),
        "top5": float(topk_correct(logits, targets, k=k).double().mean()),
        "top5_k": k,
        "agreement": float(top1_agreement(logits, teacher_logits).double().mean()),
        "nll": negative_log_likelihood(logits, targets),
        "ece": expected_calibration_error(probs, targets, n_bins=n_bins),
        "reliability": reliability_bins(probs, targets, n_bins=n_bins).as_dict(),
    }
