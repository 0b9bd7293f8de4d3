"""Stop on SIGINT / SIGTERM at the next optimizer step and save a checkpoint of that step.

Ctrl-C (SIGINT) or a scheduler's SIGTERM no longer loses the work since the last checkpoint:
:class:`InterruptCheckpoint` lets the current optimizer step finish (the rest of an
accumulation window included), writes ``interrupted.ckpt`` of exactly that step (weights,
optimizer, EMA teachers, loop counters and the training loader's position in its epoch) and
stops. ``fit --ckpt_path .../interrupted.ckpt`` continues as if nothing had happened: with the
keyed data order and views (:mod:`lightning_kd.data.samplers`) the resumed run ends with the
weights of an uninterrupted one. A second Ctrl-C interrupts at once (Python's
``KeyboardInterrupt``), without a checkpoint.

Under DDP every process learns of a signal that reached any of them (one all-reduce per
optimizer step, only while distributed) and all stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["InterruptCheckpoint", "TrainingInterrupted"]

_SIGNALS: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after the interrupt checkpoint is written; Lightning then shuts down as for
    Ctrl-C. ``path`` is the checkpoint, ``step`` its optimizer step."""

    def __init__(self, message: str, *, path: Path, step: int) -> None:
        super().__init__(message)
        self.path = path
        self.step = step


class InterruptCheckpoint(Callback):
    """On SIGINT or SIGTERM, finish the optimizer step, save it, stop.

    Args:
        dirpath: Folder of the checkpoint; ``None`` uses the ``ModelCheckpoint``'s folder, or
            ``<log dir>/checkpoints`` without one.
        filename: File name of the checkpoint (replaced if it exists).
    """

    def __init__(self, dirpath: str | None = None, filename: str = "interrupted.ckpt") -> None:
        if not filename.endswith(".ckpt"):
            raise ValueError(f"filename must end with .ckpt, got {filename!r}")
        self.dirpath = dirpath
        self.filename = filename
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}
        self._log_version: Any = None
        self._stop: TrainingInterrupted | None = None

    # ------------------------------------------------------------------ signals
    def request(self, name: str = "SIGINT") -> None:
        """Ask for a stop at the next optimizer step (what the signal handlers call)."""
        self.requested = name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested is not None:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.request(_SIGNALS.get(signum, str(signum)))

    # ------------------------------------------------------------------ checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        """The logger's version folder, so that a resumed run can continue its curves there
        (the CLI reads it; see ``lightning_kd.cli``)."""
        return {"log_version": self._log_version}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._log_version = state_dict.get("log_version")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        self._log_version = logger.version if logger is not None else None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's own signal handlers (registered after on_fit_start), which it
        # restores at teardown.
        self.requested = None
        self._stop = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed by the main thread
        for signum in _SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle:  # not replaced since
                signal.signal(signum, handler)
        self._previous = {}

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    # ------------------------------------------------------------------ the stop
    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where the interrupt checkpoint goes (see ``dirpath``)."""
        checkpointing = trainer.checkpoint_callback
        if self.dirpath is not None:
            folder = Path(self.dirpath)
        elif isinstance(checkpointing, ModelCheckpoint) and checkpointing.dirpath:
            folder = Path(checkpointing.dirpath)
        else:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return folder.expanduser().resolve() / self.filename

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        accumulate = trainer.accumulate_grad_batches
        is_last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (batch_idx + 1) % accumulate != 0 and not is_last:
            return  # inside an accumulation window: stop once the optimizer has stepped
        requested = self.requested is not None
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        step = trainer.global_step
        message = (
            f"stopped by {self.requested or 'a signal on another process'} after optimizer step "
            f"{step} (epoch {trainer.current_epoch}, batch {batch_idx + 1}); saved {path}. "
            f"Resume with --ckpt_path {path}"
        )
        # Stop at the next hook, once this batch's hooks (the module's logging) have run.
        self._stop = TrainingInterrupted(message, path=path, step=step)

    def _raise_if_stopping(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            raise stop

    @override
    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._raise_if_stopping()

    @override
    def on_validation_start(self, *args: Any, **kwargs: Any) -> None:
        self._raise_if_stopping()

    @override
    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        self._raise_if_stopping()

    @override
    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self._raise_if_stopping()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        if isinstance(exception, TrainingInterrupted):
            rank_zero_info(f"lightning-kd: {exception}")
