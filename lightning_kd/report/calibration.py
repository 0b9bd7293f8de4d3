"""How well a classifier's confidence matches its accuracy: NLL, ECE and reliability bins.

* NLL: the mean negative log-likelihood of the true class, ``-mean_i log p_i[y_i]`` (nats),
  i.e. the cross-entropy of the logits.
* ECE (expected calibration error, Guo et al. 2017): the top-1 confidences ``max_c p_i[c]``
  are put into ``n_bins`` equal-width bins of ``[0, 1]``; ``ECE = sum_b (n_b / N) |acc_b -
  conf_b|``, with ``acc_b`` the accuracy and ``conf_b`` the mean confidence of bin ``b``.
  Computed by torchmetrics' ``MulticlassCalibrationError(n_bins=15, norm="l1")``.
* Reliability diagram: ``acc_b`` against the bin, with ``conf_b`` and ``n_b``
  (:func:`reliability_bins`, the same bins as the ECE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ReliabilityBins",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
]

#: Bins of the ECE and of the reliability diagrams.
DEFAULT_BINS = 15


def _check(probs: Tensor, targets: Tensor) -> None:
    if probs.ndim != 2 or targets.ndim != 1 or probs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected probabilities (N, C) and targets (N,), got {tuple(probs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("expected at least one sample, got N = 0")


def negative_log_likelihood(logits: Tensor, targets: Tensor) -> float:
    """Mean NLL of the true class, in nats.

    Args:
        logits: ``(N, C)`` scores (softmax is applied, in float32).
        targets: ``(N,)`` class indices.
    """
    _check(logits, targets)
    return float(F.cross_entropy(logits.float(), targets.long()))


def expected_calibration_error(
    probs: Tensor, targets: Tensor, *, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE with ``n_bins`` equal-width confidence bins, L1 (torchmetrics).

    Args:
        probs: ``(N, C)`` class probabilities (rows summing to 1; give ``softmax(logits)``:
            torchmetrics would only apply softmax itself to values outside ``[0, 1]``).
        targets: ``(N,)`` class indices.
        n_bins: Number of bins.

    Returns:
        The ECE in ``[0, 1]``.
    """
    from torchmetrics.classification import MulticlassCalibrationError

    _check(probs, targets)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return float(metric(probs.float(), targets.long()))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, mean confidence and accuracy of the top-1 predictions.

    Attributes:
        edges: ``n_bins + 1`` bin edges, ``0 .. 1``.
        counts: Samples per bin.
        confidence: Mean top-1 confidence per bin (0 for an empty bin).
        accuracy: Top-1 accuracy per bin (0 for an empty bin).
    """

    edges: list[float]
    counts: list[int]
    confidence: list[float]
    accuracy: list[float]

    def ece(self) -> float:
        """``sum_b (n_b / N) |acc_b - conf_b|`` over these bins."""
        total = sum(self.counts)
        return sum(
            n / total * abs(a - c)
            for n, a, c in zip(self.counts, self.accuracy, self.confidence, strict=True)
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability_bins(
    probs: Tensor, targets: Tensor, *, n_bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """The bins of a reliability diagram: bin ``b`` holds confidences in
    ``[b / n_bins, (b + 1) / n_bins)``, the last bin also holds confidence 1.

    The same bins as torchmetrics' ECE, except that torchmetrics gives confidences of exactly 1
    a bin of their own (its ECE, which the report quotes, can differ from
    :meth:`ReliabilityBins.ece` by that bin only).

    Args:
        probs: ``(N, C)`` class probabilities.
        targets: ``(N,)`` class indices.
        n_bins: Number of bins.
    """
    _check(probs, targets)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence, predicted = probs.float().max(dim=1)  # (N,), (N,)
    correct = (predicted == targets).float()  # (N,)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)  # (N,)
    counts = torch.zeros(n_bins).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins).scatter_add_(0, index, correct)
    safe = counts.clamp(min=1)
    return ReliabilityBins(
        edges=[float(e) for e in edges],
        counts=[int(n) for n in counts],
        confidence=[float(c) for c in conf_sum / safe],
        accuracy=[float(a) for a in acc_sum / safe],
    )
