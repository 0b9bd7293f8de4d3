"""Progress bars that show the method's loss parts next to ``train/loss``.

The modules log only ``train/loss`` through ``self.log`` (each call costs about a millisecond
on a CPU); the other parts of the objective reach the progress bar here instead: at each
refresh the bar reads the module's :meth:`~lightning_kd.modules.base.LightningKDModule.
progress_bar_parts` (this step's detached values, e.g. ``loss_ce`` and ``loss_kd`` for KD)
and shows them, which costs one host sync per refresh, not per step.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from typing_extensions import override

__all__ = ["PartsRichProgressBar", "PartsTQDMProgressBar", "default_progress_bar"]


def _with_parts(items: dict[str, Any], pl_module: L.LightningModule) -> dict[str, Any]:
    parts = getattr(pl_module, "progress_bar_parts", None)
    trainer = pl_module._trainer
    if not callable(parts) or trainer is None or not trainer.training:
        return items
    for name, value in parts().items():
        items[name] = float(value)
    return items


class PartsRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar plus the module's loss parts."""

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return _with_parts(super().get_metrics(trainer, pl_module), pl_module)


class PartsTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar plus the module's loss parts."""

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return _with_parts(super().get_metrics(trainer, pl_module), pl_module)


def default_progress_bar() -> ProgressBar:
    """The ``lightning-kd`` command's progress bar: rich (a dependency of lightning-kd), or
    tqdm where rich cannot be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return PartsTQDMProgressBar()
    return PartsRichProgressBar()
