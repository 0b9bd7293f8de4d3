"""Online evaluation of label-free (self-distilled) backbones during training.

The kNN callback relies on a small protocol with the LightningModule and the DataModule:

* ``pl_module.training_step`` returns ``{"loss": ..., "features": (B, D), "targets": (B,)}``:
  detached float features of the first global view and their int64 labels;
* ``pl_module.validation_step`` returns ``{"features": (B, D), "targets": (B,)}`` for the
  validation images (dataloader 0);
* ``pl_module.embed(images) -> (B, D)``: the evaluated backbone's features (kNN bank);
* ``trainer.datamodule.num_classes`` and
  ``trainer.datamodule.feature_bank_dataloader(*, num_replicas=1, rank=0)``, which yields
  ``[images, targets]`` over the labeled training images with eval transforms, sharded
  ``rank::num_replicas`` without padding (kNN bank).

:class:`KNNEvaluation` logs the weighted-kNN accuracy ``val/knn_acc`` (and ``val/knn_acc5``).
The online linear probe is part of the module, not a callback
(``SelfDistillationModule(probe_num_classes=...)``, logging ``val/probe_acc``).

Also here: :class:`InterruptCheckpoint` (Ctrl-C / SIGTERM save the step they stopped at),
:class:`PredictionWriter` (``predict`` outputs to a file) and the progress bars
that show a module's loss parts (:mod:`lightning_kd.callbacks.progress`).
"""

from lightning_kd.callbacks.interrupt import InterruptCheckpoint, TrainingInterrupted
from lightning_kd.callbacks.knn import KNNEvaluation, knn_predict
from lightning_kd.callbacks.predictions import PredictionWriter
from lightning_kd.callbacks.progress import PartsRichProgressBar, PartsTQDMProgressBar

__all__ = [
    "InterruptCheckpoint",
    "KNNEvaluation",
    "PartsRichProgressBar",
    "PartsTQDMProgressBar",
    "PredictionWriter",
    "TrainingInterrupted",
    "knn_predict",
]
