"""Weighted kNN: knn_predict against hand-worked values, KNNEvaluation in a real Trainer and DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from knn_ddp_script import (
    EmbedModule,
    VectorData,
    ddp_callbacks,
    ddp_data,
    separable_data,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import RecordingLogger, trainer
from torch import Tensor

from lightning_kd.callbacks import KNNEvaluation, knn_predict

HERE = Path(__file__).parent


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# ---------------------------------------------------------------------------- knn_predict
def test_query_near_a_centre_gets_its_class() -> None:
    # Three classes around the directions 0, 120 and 240 degrees, 5 points each.
    angles = [c * 120 + jitter for c in range(3) for jitter in (-10, -5, 0, 5, 10)]
    bank = torch.tensor([_unit(a) for a in angles]) * 3.0  # norms do not matter (cosine)
    labels = torch.arange(3).repeat_interleave(5)
    queries = torch.tensor([_unit(125), _unit(-3), _unit(250)])
    scores = knn_predict(queries, bank, labels, num_classes=3, k=5)
    assert scores.shape == (3, 3) and scores.dtype == torch.float32
    assert scores.argmax(dim=1).tolist() == [1, 0, 2]
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(3))


def test_k1_is_the_nearest_neighbour() -> None:
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(20, 4, generator=g), torch.randn(7, 4, generator=g)
    labels = torch.randint(0, 3, (20,), generator=g)
    cosine = F.cosine_similarity(queries[:, None], bank[None], dim=2)  # (7, 20)
    nearest = labels[cosine.argmax(dim=1)]
    scores = knn_predict(queries, bank, labels, num_classes=3, k=1, temperature=0.07)
    torch.testing.assert_close(scores, F.one_hot(nearest, 3).float())


# Query (1, 0). Bank: one class-0 point at 0 degrees (sim 1), two class-1 points at +-60
# degrees (sim 0.5). Votes: class 0 gets e^(1/T), class 1 gets 2 e^(0.5/T).
#   T = 1:   e / (e + 2 e^0.5) = 1 / (1 + 2 e^-0.5) = 1 / 2.21306 = 0.451863 (the pair wins)
#   T = 0.1: 1 / (1 + 2 e^-5) = 1 / 1.013476 = 0.986703 (the nearest wins)
#   T = 1e-3: 1 / (1 + 2 e^-500) = 1 (e^1000 would overflow float32 if computed naively)
@pytest.mark.parametrize(("temperature", "class0"), [(1.0, 0.451863), (0.1, 0.986703), (1e-3, 1.0)])
def test_temperature_weighting_worked_by_hand(temperature: float, class0: float) -> None:
    bank = torch.tensor([_unit(0), _unit(60), _unit(-60)])
    labels = torch.tensor([0, 1, 1])
    scores = knn_predict(
        torch.tensor([_unit(0)]), bank, labels, num_classes=2, k=3, temperature=temperature
    )
    torch.testing.assert_close(scores, torch.tensor([[class0, 1 - class0]]), atol=1e-5, rtol=0)


def test_k_is_clipped_to_the_bank_and_unused_classes_score_zero() -> None:
    bank = torch.tensor([_unit(0), _unit(90)])
    scores = knn_predict(torch.tensor([_unit(0)]), bank, torch.tensor([0, 2]), num_classes=4, k=200)
    # Votes e^(1/0.1) and e^(0/0.1): share 1 / (1 + e^-10) for class 0.
    share = 1 / (1 + math.exp(-10))
    torch.testing.assert_close(scores, torch.tensor([[share, 0.0, 1 - share, 0.0]]))


def test_half_precision_inputs_use_float32_math() -> None:
    g = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(5, 8, generator=g), torch.randn(30, 8, generator=g)
    labels = torch.randint(0, 4, (30,), generator=g)
    half = knn_predict(queries.bfloat16(), bank.bfloat16(), labels, num_classes=4, k=10)
    assert half.dtype == torch.float32
    expected = knn_predict(queries.bfloat16().float(), bank.bfloat16().float(), labels,
                           num_classes=4, k=10)  # fmt: skip
    torch.testing.assert_close(half, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be >= 1, got 0"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"num_classes": 0}, "num_classes must be >= 1, got 0"),
        ({"features": torch.ones(2, 3)}, "same D"),
        ({"features": torch.ones(4)}, r"features must be \(B, D\), got shape \(4,\)"),
        ({"bank_features": torch.ones(0, 2)}, r"non-empty \(N, D\), got shape \(0, 2\)"),
        ({"bank_labels": torch.tensor([0, 1])}, r"bank_labels must be \(N,\) = \(3,\)"),
        ({"bank_labels": torch.tensor([0.0, 1.0, 1.0])}, "must be integers, got torch.float32"),
        ({"bank_labels": torch.tensor([0, 1, 3])}, r"lie in \[0, 3\), got label 3"),
    ],
)
def test_knn_predict_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "features": torch.ones(2, 2),
        "bank_features": torch.ones(3, 2),
        "bank_labels": torch.tensor([0, 1, 2]),
        "num_classes": 3,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        knn_predict(
            args.pop("features"), args.pop("bank_features"), args.pop("bank_labels"), **args
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be >= 1"),
        ({"temperature": -1.0}, "temperature must be > 0, got -1.0"),
        ({"every_n_epochs": 0}, "every_n_epochs must be >= 1, got 0"),
    ],
)
def test_callback_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KNNEvaluation(**kwargs)


# ---------------------------------------------------------------------------- in a Trainer
@pytest.mark.parametrize(
    ("feature_dtype", "precision"), [(torch.float32, "32-true"), (torch.bfloat16, "bf16-mixed")]
)
def test_identity_embedding_on_separable_data_is_exact(
    feature_dtype: torch.dtype, precision: str, tmp_path: Path
) -> None:
    # The datamodule stores negated vectors and flips them in on_after_batch_transfer, so this
    # also shows the bank batches went through that hook exactly once (0 or 2 times: acc 0).
    data = VectorData(separable_data(per_class=4, seed=0), separable_data(per_class=2, seed=1), 5)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/knn_acc", mode="max")
    fit = trainer(
        max_epochs=2,
        callbacks=[KNNEvaluation(k=3), checkpoint],
        enable_checkpointing=True,
        default_root_dir=tmp_path,
        precision=precision,
    )
    fit.fit(EmbedModule("identity", feature_dtype=feature_dtype), datamodule=data)
    assert fit.callback_metrics["val/knn_acc"].item() == 1.0
    assert fit.callback_metrics["val/knn_acc5"].item() == 1.0
    assert checkpoint.best_model_score is not None and checkpoint.best_model_score.item() == 1.0
    assert data.bank_loader_calls == [(1, 0), (1, 0)]


def test_constant_embedding_votes_by_class_frequency() -> None:
    # All features equal: with k >= N every bank image votes with the same weight, so the
    # scores are the class frequencies 1:2:3:4:5:6. Top-1 is always class 5 and the top 5 are
    # classes 1-5. Validation labels [5, 5, 4, 0, 0, 3, 2, 1]: top-1 2/8, top-5 6/8.
    bank_labels = torch.arange(6).repeat_interleave(torch.arange(1, 7))  # N = 21
    val_labels = torch.tensor([5, 5, 4, 0, 0, 3, 2, 1])
    g = torch.Generator().manual_seed(0)
    data = VectorData(
        (torch.randn(21, 6, generator=g), bank_labels),
        (torch.randn(8, 6, generator=g), val_labels),
        num_classes=6,
    )
    fit = trainer(max_epochs=1, callbacks=[KNNEvaluation(k=200)])
    fit.fit(EmbedModule("constant", dim=6), datamodule=data)
    assert fit.callback_metrics["val/knn_acc"].item() == pytest.approx(0.25)
    assert fit.callback_metrics["val/knn_acc5"].item() == pytest.approx(0.75)


def test_every_n_epochs_and_sanity_check_are_skipped() -> None:
    data = VectorData(separable_data(num_classes=3), separable_data(num_classes=3, seed=1), 3)
    knn = KNNEvaluation(k=3, every_n_epochs=2, log_prefix="val/nn")
    logger = RecordingLogger()
    fit = trainer(max_epochs=4, callbacks=[knn], logger=logger, num_sanity_val_steps=2)
    fit.fit(EmbedModule("identity", dim=3), datamodule=data)
    # Epochs 1 and 3 (0-based) are due; the sanity check and epochs 0 and 2 are not.
    assert len(data.bank_loader_calls) == 2
    assert len([m for _, m in logger.metrics if "val/nn_acc" in m]) == 2
    logged = logger.keys()
    assert "val/nn_acc5" not in logged  # fewer than 5 classes
    assert knn.bank_features is None  # freed after each epoch
    # A standalone validate always evaluates.
    (result,) = fit.validate(EmbedModule("identity", dim=3), datamodule=data, verbose=False)
    assert result["val/nn_acc"] == 1.0 and len(data.bank_loader_calls) == 3


class NoOutputs(EmbedModule):
    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:  # type: ignore[override]
        return None


def test_missing_protocol_is_reported() -> None:
    data = VectorData(separable_data(), separable_data(seed=1), 5)
    with pytest.raises(KeyError, match=r"'features'.*'targets'.*protocol.*got NoneType"):
        trainer(callbacks=[KNNEvaluation()]).validate(NoOutputs(), datamodule=data, verbose=False)
    bare = data.val_dataloader()  # a plain DataLoader: no datamodule, no bank
    with pytest.raises(AttributeError, match=r"feature_bank_dataloader.*protocol"):
        trainer(callbacks=[KNNEvaluation()]).validate(EmbedModule(), bare, verbose=False)


# ---------------------------------------------------------------------------- DDP
def _single_process_run() -> float:
    """What the DDP run should produce: batch 8 on one process = 2 ranks x batch 4."""
    fit = trainer(max_epochs=2, callbacks=ddp_callbacks())
    fit.fit(EmbedModule(), datamodule=ddp_data(batch_size=8))
    return fit.callback_metrics["val/knn_acc"].item()


def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "knn_ddp_script.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    knn_acc = _single_process_run()
    assert 0.0 < knn_acc < 1.0  # a non-trivial value, so agreement means something
    # The two shards (11 and 10 images, rank::2) together are the whole bank, in rank order.
    x, y = ddp_data(batch_size=4).bank.tensors
    order = torch.cat([torch.arange(0, 21, 2), torch.arange(1, 21, 2)])
    for rank in ranks:
        torch.testing.assert_close(rank["bank_features"], F.normalize(-x[order], dim=1))
        assert torch.equal(rank["bank_labels"], y[order])
        assert rank["knn_acc"].item() == pytest.approx(knn_acc)
