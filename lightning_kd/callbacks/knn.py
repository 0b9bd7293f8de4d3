"""Weighted k-nearest-neighbour evaluation of a label-free (self-distilled) backbone.

:func:`knn_predict` is the InstDisc/DINO weighted kNN classifier as a pure function;
:class:`KNNEvaluation` runs it online during validation, against a feature bank built from the
labeled training images at the start of every due validation epoch.

The callback relies on a small protocol with the LightningModule and the DataModule:

* ``pl_module.embed(images) -> (B, D)``: backbone features of the network being evaluated.
* ``pl_module.validation_step`` returns ``{"features": (B, D), "targets": (B,)}``.
* ``trainer.datamodule.num_classes`` and
  ``trainer.datamodule.feature_bank_dataloader(*, num_replicas, rank)``, which yields
  ``[images, targets]`` over the labeled training images (eval transforms), sharded
  ``rank::num_replicas`` without padding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

from lightning_kd.distributed import all_gather_uneven, all_reduce_sum_

#: Where the protocol the online-evaluation callbacks rely on is described (for error messages).
PROTOCOL = "the online-evaluation protocol (see lightning_kd.callbacks)"


def knn_predict(
    features: Tensor,
    bank_features: Tensor,
    bank_labels: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> Tensor:
    """Weighted kNN class scores (InstDisc / DINO): each neighbour votes ``exp(sim / T)``.

    Both sets of features are L2-normalised, so the similarity ``sim`` is the cosine. For each
    query the ``k`` most similar bank entries (``k`` clipped to the bank size) vote for their
    label with weight ``exp(sim / temperature)``; the votes are normalised to sum to 1 over the
    classes. All math is float32 with autocast disabled, whatever the input dtype.

    Args:
        features: Query features ``(B, D)``.
        bank_features: Bank features ``(N, D)`` with ``N >= 1``.
        bank_labels: Integer labels ``(N,)`` of the bank, each in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.
        k: Number of neighbours; values above ``N`` use the whole bank.
        temperature: Softness ``T > 0`` of the vote weights (small: the nearest dominate).

    Returns:
        ``(B, C)`` float32 scores: the share of the neighbours' total weight that votes for each
        class (rows sum to 1). ``argmax(dim=1)`` is the prediction.

    Raises:
        ValueError: If a shape, ``num_classes``, ``k``, ``temperature`` or a label is invalid.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (B, D), got shape {tuple(features.shape)}")
    if bank_features.ndim != 2 or bank_features.shape[0] == 0:
        raise ValueError(
            f"bank_features must be a non-empty (N, D), got shape {tuple(bank_features.shape)}"
        )
    if bank_features.shape[1] != features.shape[1]:
        raise ValueError(
            f"features and bank_features must have the same D, got {tuple(features.shape)} "
            f"and {tuple(bank_features.shape)}"
        )
    if bank_labels.shape != bank_features.shape[:1]:
        raise ValueError(
            f"bank_labels must be (N,) = ({bank_features.shape[0]},), "
            f"got shape {tuple(bank_labels.shape)}"
        )
    if bank_labels.is_floating_point() or bank_labels.is_complex():
        raise ValueError(f"bank_labels must be integers, got {bank_labels.dtype}")
    _check_knn_args(num_classes=num_classes, k=k, temperature=temperature)
    outside = (bank_labels < 0) | (bank_labels >= num_classes)
    if bool(outside.any()):
        bad = int(bank_labels[outside][0])
        raise ValueError(f"bank_labels must lie in [0, {num_classes}), got label {bad}")
    with torch.autocast(features.device.type, enabled=False):
        query = F.normalize(features.float(), dim=1)
        bank = F.normalize(bank_features.float(), dim=1)
        return _weighted_votes(
            query, bank, bank_labels, num_classes=num_classes, k=k, temperature=temperature
        )


def _check_knn_args(*, num_classes: int, k: int, temperature: float) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _weighted_votes(
    query: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    *,
    num_classes: int,
    k: int,
    temperature: float,
) -> Tensor:
    """:func:`knn_predict` on unit-norm float32 ``query (B, D)`` and ``bank (N, D)``."""
    similarity = query @ bank.T  # (B, N)
    top_sim, top_idx = similarity.topk(min(k, bank.shape[0]), dim=1)  # (B, k) each
    # exp(sim / T) up to a per-row factor exp(-max / T), which the normalisation cancels; it
    # keeps the largest weight at 1, so a small T can neither overflow nor underflow every vote.
    weights = ((top_sim - top_sim[:, :1]) / temperature).exp()  # (B, k)
    votes = torch.zeros(query.shape[0], num_classes, device=query.device)  # (B, C)
    votes.scatter_add_(1, bank_labels[top_idx].long(), weights)
    return votes / votes.sum(dim=1, keepdim=True)


def trainer_datamodule(trainer: L.Trainer) -> Any:
    """``trainer.datamodule`` (set by Lightning at ``fit``/``validate`` time), or ``None``."""
    return getattr(trainer, "datamodule", None)


def split_outputs(outputs: Any, hook: str) -> tuple[Tensor, Tensor]:
    """``(features (B, D), targets (B,))`` from a step's ``outputs`` dict, checked.

    Args:
        outputs: What the training or validation step returned.
        hook: The hook being run, for the error message.

    Raises:
        KeyError: If ``outputs`` is not a mapping with ``"features"`` and ``"targets"``.
        ValueError: If their shapes do not match ``(B, D)`` and ``(B,)``.
    """
    if not isinstance(outputs, Mapping) or "features" not in outputs or "targets" not in outputs:
        got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise KeyError(
            f"{hook} needs the step to return a dict with 'features' (B, D) and 'targets' (B,) "
            f"as in {PROTOCOL}; got {got}"
        )
    features, targets = outputs["features"], outputs["targets"]
    if features.ndim != 2 or targets.shape != features.shape[:1]:
        raise ValueError(
            f"{hook}: outputs['features'] must be (B, D) and outputs['targets'] (B,), got "
            f"{tuple(features.shape)} and {tuple(targets.shape)}"
        )
    return features, targets


class KNNEvaluation(Callback):
    """Online weighted-kNN accuracy of the backbone's features during validation.

    At the start of every due validation epoch the callback embeds the labeled training images
    of ``trainer.datamodule.feature_bank_dataloader`` with ``pl_module.embed`` (each rank its
    own shard; the shards are then all-gathered, so every rank holds the whole bank), classifies
    the validation features that ``validation_step`` returns with :func:`knn_predict`, and at
    the end of the epoch logs the top-1 (and, for ``C >= 5``, top-5) accuracy over all ranks as
    fractions in ``[0, 1]``: ``<log_prefix>_acc`` and ``<log_prefix>_acc5``
    (``val/knn_acc``, ``val/knn_acc5`` by default), which ``ModelCheckpoint`` can monitor.
    The bank is freed at the end of the epoch.

    A validation epoch is due when ``(trainer.current_epoch + 1) % every_n_epochs == 0``, never
    during the sanity check, and always in ``trainer.validate``. Only dataloader 0 is used.

    Args:
        k: Number of neighbours (clipped to the bank size).
        temperature: Temperature ``T > 0`` of the ``exp(sim / T)`` vote weights.
        every_n_epochs: Evaluate every this many training epochs (``>= 1``).
        log_prefix: Prefix of the logged keys.
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        every_n_epochs: int = 1,
        log_prefix: str = "val/knn",
    ) -> None:
        super().__init__()
        _check_knn_args(num_classes=1, k=k, temperature=temperature)
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.k = k
        self.temperature = temperature
        self.every_n_epochs = every_n_epochs
        self.log_prefix = log_prefix
        self.num_classes = 0
        #: The unit-norm bank ``(N, D)`` float32 and its labels ``(N,)`` int64, on the module's
        #: device, while a due validation epoch runs; ``None`` otherwise.
        self.bank_features: Tensor | None = None
        self.bank_labels: Tensor | None = None
        # Running counts of the current epoch: [top-1 correct, top-5 correct, samples].
        self._counts: Tensor | None = None

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._free()
        if not self._due(trainer):
            return
        datamodule = trainer_datamodule(trainer)
        if not hasattr(datamodule, "feature_bank_dataloader") or not hasattr(
            datamodule, "num_classes"
        ):
            raise AttributeError(
                "KNNEvaluation needs trainer.datamodule with num_classes and "
                f"feature_bank_dataloader(num_replicas=, rank=) as in {PROTOCOL}; got "
                f"{type(datamodule).__name__}"
            )
        if not callable(getattr(pl_module, "embed", None)):
            raise AttributeError(
                f"KNNEvaluation needs pl_module.embed(images) -> (B, D) as in {PROTOCOL}; "
                f"{type(pl_module).__name__} has none"
            )
        self.num_classes = int(datamodule.num_classes)
        features, labels = self._embed_shard(trainer, pl_module)
        features, labels = all_gather_uneven(features, labels)
        if features.shape[0] == 0:
            raise ValueError("KNNEvaluation: feature_bank_dataloader yielded no images on any rank")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"KNNEvaluation: bank labels must lie in [0, {self.num_classes}), got min "
                f"{int(labels.min())}, max {int(labels.max())}"
            )
        self.bank_features, self.bank_labels = features, labels
        self._counts = torch.zeros(3, dtype=torch.long, device=features.device)

    def _embed_shard(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[Tensor, Tensor]:
        """This rank's unit-norm bank features ``(n, D)`` float32 and labels ``(n,)`` int64."""
        loader = trainer_datamodule(trainer).feature_bank_dataloader(
            num_replicas=trainer.world_size, rank=trainer.global_rank
        )
        embed = cast(Callable[[Tensor], Tensor], pl_module.embed)
        chunks: list[Tensor] = []
        label_chunks: list[Tensor] = []
        with torch.no_grad():
            for batch in loader:
                # Runs transfer_batch_to_device and on_after_batch_transfer (the datamodule's
                # if it overrides them), exactly as Lightning does for the validation batches.
                images, targets = trainer.strategy.batch_to_device(batch, dataloader_idx=0)[:2]
                # The same precision (e.g. bf16 autocast) as validation_step's features.
                with trainer.precision_plugin.val_step_context():
                    features = embed(images)  # (b, D)
                if features.ndim != 2 or features.shape[0] != targets.shape[0]:
                    raise ValueError(
                        f"pl_module.embed must return (B, D) for {targets.shape[0]} images, got "
                        f"shape {tuple(features.shape)}"
                    )
                with torch.autocast(features.device.type, enabled=False):
                    chunks.append(F.normalize(features.float(), dim=1))
                label_chunks.append(targets.long())
        device = pl_module.device
        if not chunks:  # an empty shard; D is learnt from the other ranks when gathering
            return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.long, device=device)
        return torch.cat(chunks).to(device), torch.cat(label_chunks).to(device)

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0:
            return
        # Checked on every batch (the sanity check too), so a module off the protocol fails early.
        features, targets = split_outputs(outputs, "KNNEvaluation.on_validation_batch_end")
        if self.bank_features is None or self.bank_labels is None or self._counts is None:
            return
        if features.shape[1] != self.bank_features.shape[1]:
            raise ValueError(
                f"KNNEvaluation: validation features have D={features.shape[1]} but the bank "
                f"from pl_module.embed has D={self.bank_features.shape[1]}"
            )
        with torch.autocast(features.device.type, enabled=False):
            query = F.normalize(features.detach().float(), dim=1).to(self.bank_features.device)
            scores = _weighted_votes(
                query,
                self.bank_features,
                self.bank_labels,
                num_classes=self.num_classes,
                k=self.k,
                temperature=self.temperature,
            )  # (B, C)
        targets = targets.to(scores.device).long()
        top = scores.topk(min(5, self.num_classes), dim=1).indices  # (B, min(5, C))
        hits = top == targets[:, None]  # (B, min(5, C))
        self._counts[:2] += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()])
        self._counts[2] += len(targets)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = self._counts
        self._free()
        if counts is None:
            return
        all_reduce_sum_(counts)
        total = counts[2].clamp(min=1).double()
        # Already reduced over ranks, so no sync_dist; every rank logs the same value.
        pl_module.log(f"{self.log_prefix}_acc", (counts[0] / total).float(), sync_dist=False)
        if self.num_classes >= 5:
            pl_module.log(f"{self.log_prefix}_acc5", (counts[1] / total).float(), sync_dist=False)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._free()

    def _free(self) -> None:
        self.bank_features = self.bank_labels = self._counts = None
