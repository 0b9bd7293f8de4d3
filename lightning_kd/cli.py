"""The ``lightning-kd`` command: LightningCLI with class_path/init_args injection.

``lightning-kd fit --config configs/cifar10/kd_resnet56_resnet20.yaml`` builds the module,
its networks and the datamodule from YAML. The datamodule's ``num_classes`` is linked into
every network argument of the module (``model``, ``student``, ``teacher``, and the
``network`` of each entry of ``teachers``) so the two can never disagree.

What the command adds to LightningCLI, so that a run never silently does something other
than what its config says:

* ``--ckpt_path`` never changes the module, networks or settings: the config (and the
  command line) is what runs. A checkpoint of another module class, or whose tensors do not
  fit the config's networks, is refused before any work, naming both; a file that is not a
  Lightning checkpoint is refused with its name.
* Relative paths of a run (the logger's ``save_dir``, ``ModelCheckpoint.dirpath``, the
  module's ``teacher_checkpoint`` / ``student_checkpoint``) are taken relative to
  ``--trainer.default_root_dir`` (default: the current directory), so one option decides
  where every run writes and reads its own outputs. Data paths (``data_dir``) stay relative
  to the current directory.
* ``fit`` refuses to write into a checkpoint folder that already holds checkpoints of an
  earlier run (which would leave a ``last-v1.ckpt`` that nothing reads), unless resumed with
  ``--ckpt_path`` or told ``--overwrite true`` (then the old files are replaced).
* ``fit`` refuses checkpoint selection or early stopping on ``val/...`` metrics when the
  datamodule validates on its test split.
* ``predict`` writes the predictions to a file (``--predictions_file``).
* ``fit`` stops on Ctrl-C or SIGTERM after the current optimizer step and saves
  ``interrupted.ckpt`` of it (:class:`~lightning_kd.callbacks.InterruptCheckpoint`, added
  unless the config has one); ``fit --ckpt_path`` of any checkpoint continues exactly (keyed
  data order and views) and logs into the same version folder of the run it continues.
* One flat, filterable hyperparameter record per run in TensorBoard's HPARAMS tab, with
  ``hp_metric`` the validation accuracy; a rich progress bar with the method's loss parts.
* Tools around training, each with its own options (``--help``): ``lightning-kd cache``
  (a teacher cache of a KD config, :mod:`lightning_kd.caching`), ``lightning-kd report`` (the
  compression report, :mod:`lightning_kd.report`) and ``lightning-kd export`` (ONNX /
  TorchScript / state dict, :mod:`lightning_kd.export`).
* Errors: the library's own message is printed once, as the last line, without the argument
  parser's noise; ``--verbose`` (or ``LIGHTNING_KD_VERBOSE=1``) shows the full traceback.
  A run that fails before its first training step leaves no empty log folder behind.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_kd.callbacks.interrupt import InterruptCheckpoint
from lightning_kd.callbacks.predictions import PredictionWriter
from lightning_kd.callbacks.progress import default_progress_bar
from lightning_kd.checkpoint import (
    CheckpointMismatchError,
    check_checkpoint_fits,
    flatten_config,
    read_checkpoint,
    recorded_file,
    recorded_teacher_files,
    settings_differences,
)

#: Module arguments that hold networks whose ``num_classes`` comes from the datamodule.
NETWORK_ARGUMENTS = ("model", "student", "teacher")

#: Set to 1 to see full tracebacks instead of the one-line error (same as ``--verbose``).
VERBOSE_ENV = "LIGHTNING_KD_VERBOSE"

#: ``--ckpt_path`` values that Lightning resolves itself (not files).
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def datamodule_num_classes(data: Namespace) -> int:
    """``num_classes`` of the datamodule that a parsed ``data`` config describes.

    The link is applied at parse time (so it also reaches networks nested in the module's
    ``init_args``, and targets that a module lacks are skipped), which means the value comes
    from a throw-away instance: datamodule constructors only store their arguments (and at
    most list class folders), data is read in ``setup``. Arguments that are objects themselves
    (``class_path`` entries, e.g. ``views``) are left at their defaults: the class count never
    depends on them.
    """
    config = data.as_dict() if isinstance(data, Namespace) else dict(data)
    module_name, _, class_name = config["class_path"].rpartition(".")
    datamodule_class = getattr(importlib.import_module(module_name), class_name)
    plain = {
        key: value
        for key, value in config.get("init_args", {}).items()
        if not (isinstance(value, dict) and "class_path" in value)
    }
    return int(datamodule_class(**plain).num_classes)


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` to the log dir and write one flat hyperparameter record.

    The record (TensorBoard's HPARAMS tab, and the logger's ``hparams.yaml``) holds every
    setting of the run under dotted keys without ``init_args`` (``model.temperature``,
    ``model.student``, ``model.student.width``, ``data.batch_size``, ...), plus the module's
    :meth:`run_facts` (e.g. the teacher file and its SHA-256), with ``hp_metric`` declared
    as its metric; the module logs ``hp_metric`` (the validation accuracy) after each
    validation. Lightning's own records of the module's and datamodule's hyperparameters are
    turned off, so there is exactly one. ``predict`` writes neither (no log folder).
    """

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict" or trainer.logger is None:
            return  # no log folder: nothing to write config.yaml into (not the cwd)
        # This record replaces Lightning's own (module and datamodule hyperparameters, and an
        # ``hp_metric`` of -1), on every process: Lightning logs those after setup.
        pl_module._log_hyperparams = False
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            datamodule._log_hyperparams = False
        if stage == "fit" and trainer.ckpt_path is not None:
            # A resumed run continues in its log folder (see _continue_log_version): its
            # config.yaml is the one of the run that continues it.
            self.overwrite = True
        super().setup(trainer, pl_module, stage)

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if not isinstance(logger, Logger):
            return
        dumped = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
        record = flatten_config({k: dumped[k] for k in ("model", "data") if k in dumped})
        record["seed_everything"] = _hparam_value(dumped.get("seed_everything"))
        record["ckpt_path"] = _hparam_value(dumped.get("ckpt_path"))
        for key in ("max_epochs", "max_steps", "precision", "accumulate_grad_batches"):
            record[f"trainer.{key}"] = _hparam_value(dumped.get("trainer", {}).get(key))
        facts = getattr(pl_module, "run_facts", None)
        if callable(facts):
            record.update(facts())
        write_hparams_record(logger, {key: _hparam_value(value) for key, value in record.items()})


def recorded_log_version(checkpoint: dict[str, Any]) -> Any:
    """The logger version an :class:`InterruptCheckpoint` recorded in ``checkpoint``, or None."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("InterruptCheckpoint") and isinstance(state, dict):
            return state.get("log_version")
    return None


def _continue_log_version(config: Namespace, checkpoint: dict[str, Any]) -> None:
    """``fit --ckpt_path``: log into the version folder of the run that wrote the checkpoint
    (curves continue in one run), unless the logger config names a version itself."""
    version = recorded_log_version(checkpoint)
    logger = config.trainer.get("logger")
    if version is None or not isinstance(logger, Namespace):
        return
    class_path = str(logger.get("class_path", ""))
    if not class_path.endswith(("TensorBoardLogger", "CSVLogger")):
        return
    init_args = logger.get("init_args")
    if isinstance(init_args, Namespace) and init_args.get("version") is None:
        init_args["version"] = version
        rank_zero_info(f"resuming: logging into version {version!r} of the checkpoint's run")


def _hparam_value(value: Any) -> Any:
    """A value TensorBoard's HPARAMS tab can show and filter: bool, int, float or str."""
    if isinstance(value, bool | int | float | str):
        return value
    return "None" if value is None else json.dumps(value, default=str)


def write_hparams_record(logger: Logger, record: dict[str, Any]) -> None:
    """Write ``record`` as the run's only hyperparameter record, ``hp_metric`` its metric.

    For a :class:`TensorBoardLogger` the HPARAMS summaries are written directly, without the
    ``hp_metric = -1`` placeholder that ``log_hyperparams`` would log; other loggers get
    ``log_hyperparams(record)``.
    """
    if isinstance(logger, TensorBoardLogger):
        from torch.utils.tensorboard.summary import hparams

        logger.hparams.update(record)  # saved to hparams.yaml
        experiment, start, end = hparams(record, {"hp_metric": 0.0})
        writer = logger.experiment._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)
    else:
        logger.log_hyperparams(record)


class KDLightningCLI(LightningCLI):
    """LightningCLI with the datamodule's class count linked into the networks and the checks
    described in :mod:`lightning_kd.cli`."""

    _checkpoint: dict[str, Any] | None = None
    #: The log folder of the run being built (``log_dir``) and the folders that existed
    #: before it (``existed``), so that :func:`main` can remove it if the run fails early.
    log_folder: dict[str, Any] = {}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in NETWORK_ARGUMENTS:
            parser.link_arguments(
                "data",
                f"model.init_args.{name}.init_args.num_classes",
                compute_fn=datamodule_num_classes,
                apply_on="parse",
            )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: replace the checkpoints an earlier run left in the checkpoint folder "
            "(without it, such a folder is refused)",
        )
        parser.add_argument(
            "--predictions_file",
            type=str | None,
            default=None,
            help="predict: where to write the predictions (.pt or .csv); default "
            "<default_root_dir>/predictions.pt",
        )

    @override
    def _dump_config(self) -> None:
        """The config dump that ``save_hyperparameters`` records, with the linked
        ``num_classes`` of each network put back (jsonargparse leaves link targets out of
        nested class arguments), so that ``load_from_checkpoint`` rebuilds the same networks."""
        if hasattr(self, "config_dump"):
            return
        super()._dump_config()
        model = self._subcommand_config().get("model")
        init_args = model.get("init_args") if isinstance(model, Namespace) else None
        dumped = self.config_dump.get("model", {}).get("init_args", {})
        if not isinstance(init_args, Namespace) or not isinstance(dumped, dict):
            return
        for name in NETWORK_ARGUMENTS:
            network = init_args.get(name)
            target = dumped.get(name)
            if not (isinstance(network, Namespace) and isinstance(target, dict)):
                continue
            num_classes = (network.get("init_args") or Namespace()).get("num_classes")
            if num_classes is not None:
                target.setdefault("init_args", {})["num_classes"] = num_classes

    def _subcommand_config(self) -> Namespace:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    @override
    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` is a Lightning checkpoint; unlike LightningCLI, do not apply
        its saved hyperparameters: the config and the command line decide what runs."""
        config = self._subcommand_config()
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or (ckpt_path in _SPECIAL_CKPT_PATHS and not Path(ckpt_path).exists()):
            return
        weights_only = config.get("weights_only")
        self._checkpoint = read_checkpoint(
            ckpt_path, weights_only=True if weights_only is None else bool(weights_only)
        )

    @override
    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        _link_teachers_num_classes(config)
        root = config.trainer.get("default_root_dir")
        if root:
            _root_relative_paths(config, Path(root).expanduser())
        if self._checkpoint is not None:
            self._fill_missing_weight_files(config)
            if self.subcommand == "fit":
                _continue_log_version(config, self._checkpoint)

    def _fill_missing_weight_files(self, config: Namespace) -> None:
        """With ``--ckpt_path``: a teacher / student file (or the ``checkpoint`` of an entry of
        ``teachers``) that the config names but that does not exist (e.g. a relative path from
        another directory) is replaced by the absolute path the checkpoint records, when that
        file exists; a missing student warm-start
        file is dropped (the student's weights come from the checkpoint)."""
        assert self._checkpoint is not None
        init_args = config.model.get("init_args") if config.get("model") else None
        if not isinstance(init_args, Namespace):
            return
        for argument, kind in (
            ("teacher_checkpoint", "teacher"),
            ("student_checkpoint", "student_init"),
        ):
            given = init_args.get(argument)
            if not given or Path(given).expanduser().exists():
                continue
            recorded = recorded_file(self._checkpoint, kind)
            if recorded is not None and Path(recorded).is_file():
                rank_zero_info(
                    f"{argument} {given!r} does not exist; using {recorded}, the file recorded "
                    "in the checkpoint"
                )
                init_args[argument] = recorded
            elif kind == "student_init":
                rank_zero_info(
                    f"student_checkpoint {given!r} does not exist; not needed, the student's "
                    "weights come from the checkpoint"
                )
                init_args[argument] = None
        recorded_teachers = recorded_teacher_files(self._checkpoint)
        for k, member in enumerate(_teacher_members(config)):
            given = member.get("checkpoint")
            if not given or Path(given).expanduser().exists() or k >= len(recorded_teachers):
                continue
            recorded = recorded_teachers[k]
            if recorded is not None and Path(recorded).is_file():
                rank_zero_info(
                    f"teachers[{k}] checkpoint {given!r} does not exist; using {recorded}, the "
                    "file recorded in the checkpoint"
                )
                member["checkpoint"] = recorded

    @override
    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with a progress bar that shows the loss parts (rich when installed)
        unless the config has its own or disables it, and for ``predict`` a
        :class:`PredictionWriter` unless the config has one."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        extra: list[Callback] = []
        if trainer_config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            extra.append(default_progress_bar())
        if self.subcommand == "fit" and not any(
            isinstance(c, InterruptCheckpoint) for c in callbacks
        ):
            extra.append(InterruptCheckpoint())
        if self.subcommand == "predict" and not any(
            isinstance(c, PredictionWriter) for c in callbacks
        ):
            config = self._subcommand_config()
            path = config.get("predictions_file")
            if not path:
                root = trainer_config.get("default_root_dir") or "."
                path = str(Path(root) / "predictions.pt")
            extra.append(PredictionWriter(path))
        if self.subcommand == "predict":
            kwargs.setdefault("logger", False)  # predict logs nothing: no empty log folder
        if extra:
            kwargs["callbacks"] = [*callbacks, *extra]
        trainer = super().instantiate_trainer(**kwargs)
        logger = trainer.logger
        if isinstance(logger, TensorBoardLogger):
            root = Path(logger.root_dir)
            existed = {str(p) for p in root.iterdir()} if root.is_dir() else set()
            KDLightningCLI.log_folder = {"log_dir": logger.log_dir, "existed": existed}
        return trainer

    # ------------------------------------------------------------------ checks before a run
    def _check_checkpoint(self) -> None:
        if self._checkpoint is None:
            return
        config = self._subcommand_config()
        check_checkpoint_fits(self._checkpoint, self.model, config.model)
        differences = settings_differences(self._checkpoint, config.model)
        if differences:
            shown = "; ".join(differences[:10])
            more = f" and {len(differences) - 10} more" if len(differences) > 10 else ""
            rank_zero_info(
                "settings that differ from the checkpoint's saved hyperparameters (the "
                f"config's are used): {shown}{more}"
            )

    def before_fit(self) -> None:
        self._check_checkpoint()
        self._check_selection_not_on_test()
        if self._checkpoint is None:
            overwrite = bool(self._subcommand_config().get("overwrite"))
            for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, ModelCheckpoint):
                    claim_checkpoint_folder(callback, overwrite=overwrite)

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def before_predict(self) -> None:
        self._check_checkpoint()

    def _check_selection_not_on_test(self) -> None:
        if not getattr(self.datamodule, "validates_on_test", False):
            return
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            monitor = getattr(callback, "monitor", None)
            if isinstance(callback, ModelCheckpoint | EarlyStopping) and monitor is not None:
                raise ValueError(
                    f"{type(callback).__name__}(monitor={monitor!r}) would select on the test "
                    "split: the datamodule has val_split=0, so validation reads the test split. "
                    "Set data.init_args.val_split (e.g. 0.1) to hold out a validation split, "
                    "or remove the monitor"
                )


def _root_relative_paths(config: Namespace, root: Path) -> None:
    """Make the run's relative output paths (and its teacher / student files) relative to
    ``root`` = ``trainer.default_root_dir``."""

    def rebase(path: Any) -> Any:
        if isinstance(path, str) and path and not Path(path).expanduser().is_absolute():
            return str(root / path)
        return path

    trainer = config.trainer
    for logger in _class_configs(trainer.get("logger")):
        init_args = logger.get("init_args")
        if isinstance(init_args, Namespace) and init_args.get("save_dir") is not None:
            init_args["save_dir"] = rebase(init_args["save_dir"])
    for callback in _class_configs(trainer.get("callbacks")):
        init_args = callback.get("init_args")
        if isinstance(init_args, Namespace) and init_args.get("dirpath") is not None:
            init_args["dirpath"] = rebase(init_args["dirpath"])
    model_args = config.model.get("init_args") if config.get("model") else None
    if isinstance(model_args, Namespace):
        for argument in ("teacher_checkpoint", "student_checkpoint"):
            if model_args.get(argument):
                model_args[argument] = rebase(model_args[argument])
        for member in _teacher_members(config):
            if member.get("checkpoint"):
                member["checkpoint"] = rebase(member["checkpoint"])


def _teacher_members(config: Namespace) -> list[Namespace]:
    """The ``init_args`` of each entry of the module's ``teachers`` list (empty without it)."""
    model = config.get("model")
    model_args = model.get("init_args") if isinstance(model, Namespace) else None
    teachers = model_args.get("teachers") if isinstance(model_args, Namespace) else None
    if not isinstance(teachers, list):
        return []
    return [
        teacher.init_args
        for teacher in teachers
        if isinstance(teacher, Namespace) and isinstance(teacher.get("init_args"), Namespace)
    ]


def _link_teachers_num_classes(config: Namespace) -> None:
    """The datamodule's ``num_classes`` into the ``network`` of every entry of ``teachers``,
    as :meth:`KDLightningCLI.add_arguments_to_parser` links it into ``teacher`` (jsonargparse
    cannot link into the items of a list), and like that link it overrides the config: a
    teacher predicts the datamodule's classes. A network class without a ``num_classes``
    argument is left as it is (the module then refuses logits of another class count,
    naming the teacher)."""
    members = _teacher_members(config)
    if not members or not isinstance(config.get("data"), Namespace):
        return
    num_classes = datamodule_num_classes(config.data)
    for member in members:
        network = member.get("network")
        init_args = network.get("init_args") if isinstance(network, Namespace) else None
        if isinstance(init_args, Namespace) and "num_classes" in init_args:
            init_args["num_classes"] = num_classes


def _class_configs(value: Any) -> Iterator[Namespace]:
    """The ``class_path`` / ``init_args`` entries in a logger or callbacks config value."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, Namespace) and item.get("class_path"):
            yield item


def claim_checkpoint_folder(callback: ModelCheckpoint, *, overwrite: bool) -> None:
    """Refuse (or with ``overwrite``, empty) a checkpoint folder an earlier run wrote into.

    A fresh run that writes into it would leave ``last-v1.ckpt`` / ``best-v1.ckpt`` beside
    the old files, while every config that reads ``last.ckpt`` keeps reading the stale one.
    """
    if callback.dirpath is None:
        return  # inside the logger's new version folder: nothing to collide with
    folder = Path(callback.dirpath)
    old = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if not old:
        return
    names = ", ".join(p.name for p in old[:5]) + (" ..." if len(old) > 5 else "")
    if not overwrite:
        raise FileExistsError(
            f"the checkpoint folder {folder} already holds {names} from an earlier run. Pass "
            "--overwrite true to replace them, --ckpt_path to resume that run, or choose "
            "another dirpath (or --trainer.default_root_dir)"
        )
    for path in old:
        path.unlink()
    rank_zero_info(f"--overwrite: removed {names} from {folder}")


# ---------------------------------------------------------------------- entry point
def build_cli(
    args: list[str] | None = None, *, run: bool = True, exit_on_error: bool = True
) -> KDLightningCLI:
    """Build (and with ``run=True`` execute) the CLI; ``args`` as on the command line.

    With ``run=False`` no subcommand is given in ``args`` (e.g. ``["--config", "x.yaml"]``) and
    the returned object holds the instantiated ``model``, ``datamodule`` and ``trainer``.
    With ``exit_on_error=False`` argument errors raise instead of printing usage and exiting.
    """
    return KDLightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": exit_on_error},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-kd`` console script.

    On an error, prints ``lightning-kd: error: <message>`` as the last line and exits with
    status 1 (2 for a command-line usage error); ``--verbose`` or ``LIGHTNING_KD_VERBOSE=1``
    raises the full exception instead.
    """
    argv = list(sys.argv[1:] if args is None else args)
    verbose = os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    if "--verbose" in argv:
        argv.remove("--verbose")
        verbose = True
    if argv and argv[0] in TOOL_COMMANDS:
        _run_tool(argv[0], argv[1:], verbose=verbose)
        return
    KDLightningCLI.log_folder = {}
    if args is None:
        sys.argv[1:] = argv  # without --verbose; LightningCLI reads sys.argv itself
    try:
        build_cli(None if args is None else argv, exit_on_error=False)
    except SystemExit:
        raise
    except BaseException as error:
        _remove_new_empty_log_folder(KDLightningCLI.log_folder)
        if verbose or isinstance(error, KeyboardInterrupt):
            raise
        _exit_with(error, "lightning-kd")


def _exit_with(error: BaseException, prog: str) -> None:
    """Print ``<prog>: error: <the library's one-line message>`` as the last line and exit with
    status 1 (2 for a command-line usage error)."""
    message, usage = user_message(error)
    sys.stdout.flush()
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2 if usage else 1) from None


#: The commands around training, each ``module:function`` taking its own arguments (a list of
#: strings) and parsing them itself: ``lightning-kd cache|report|export ...``.
TOOL_COMMANDS = {
    "cache": "lightning_kd.caching.command:main",
    "report": "lightning_kd.report.command:main",
    "export": "lightning_kd.export:main",
}


def _run_tool(name: str, argv: list[str], *, verbose: bool) -> None:
    """Run one of :data:`TOOL_COMMANDS` with the CLI's error handling: the library's message
    once, as the last line, exit status 1 (``--verbose`` shows the traceback)."""
    module_name, function_name = TOOL_COMMANDS[name].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        function(argv)
    except SystemExit:
        raise
    except BaseException as error:
        if verbose or isinstance(error, KeyboardInterrupt):
            raise
        _exit_with(error, f"lightning-kd {name}")


def _remove_new_empty_log_folder(record: dict[str, Any]) -> None:
    """After a failed run: remove the log folder it created if that holds no training record
    (nothing but ``config.yaml``, ``hparams.yaml`` and event files without scalars)."""
    folder = record.get("log_dir")
    if folder is None or folder in record.get("existed", set()):
        return
    folder = Path(folder)
    if not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if p.is_file()]
    if all(_is_bookkeeping(p) for p in files):
        shutil.rmtree(folder, ignore_errors=True)


def _is_bookkeeping(path: Path) -> bool:
    if path.name in ("config.yaml", "hparams.yaml"):
        return True
    if path.name.startswith("events.out.tfevents"):
        try:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            accumulator = EventAccumulator(str(path))
            accumulator.Reload()
            return not accumulator.Tags().get("scalars")
        except Exception:
            return False
    return False


def user_message(error: BaseException) -> tuple[str, bool]:
    """The one-line message to show for ``error``, and whether it is a usage error.

    The library raises errors that say what was received, what was expected and how to fix
    it; the argument parser wraps them (union subtypes, links, nested namespaces). This digs
    out the innermost error raised by lightning-kd code (or any non-parser error) from the
    chain of causes and prefixes the class whose constructor raised it; a pure command-line
    error (unknown option, wrong type) keeps the parser's message, shortened to its point.
    """
    chain = list(_cause_chain(error))
    library = [e for e in chain if _raised_in_library(e)]
    if library:
        root = library[-1]
        return _prefix_class(root, _one_line(str(root) or type(root).__name__)), False
    if _is_parser_error(chain[0]):
        return _parser_point(str(chain[0])), True
    root = chain[-1]
    return f"{type(root).__name__}: {_one_line(str(root))}", False


def _cause_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _library_frames(tb: TracebackType | None) -> list[Any]:
    frames = []
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR) and not (
            tb.tb_frame.f_code.co_filename.endswith("cli.py")
        ):
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _raised_in_library(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is lightning-kd code."""
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    return last.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def _prefix_class(error: BaseException, message: str) -> str:
    """``"KDModule: <message>"`` when a constructor raised it; the message alone otherwise."""
    if isinstance(error, CheckpointMismatchError):
        return message
    for frame in reversed(_library_frames(error.__traceback__)):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            return f"{type(frame.f_locals['self']).__name__}: {message}"
    return message


def _is_parser_error(error: BaseException) -> bool:
    module = type(error).__module__
    return module.startswith(("jsonargparse", "argparse")) or type(error).__name__ in (
        "ArgumentError",
        "NSKeyError",
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parser_point(message: str) -> str:
    """The point of a jsonargparse message, on one line: the dotted key and the innermost
    reason of the first alternative (the class that was meant, not ``NoneType``).

    ``Parser key "model": ... Errors: - Problem with given class_path 'KDModule':
    Parser key "student": ... Option 'widht' is not accepted`` becomes
    ``model.student: Option 'widht' is not accepted``.
    """
    lines = [line for line in message.splitlines() if line.strip()]
    keys: list[str] = []
    reason = ""
    given = ""
    in_first_item = False
    item_indent = -1
    for line in lines:
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        if text.startswith("- "):
            if in_first_item and indent <= item_indent:
                break  # the next alternative: stop at the first one
            if not in_first_item:
                in_first_item, item_indent = True, indent
            text = text[2:]
        elif in_first_item and indent <= item_indent:
            break
        key = re.match(r'(?:Parser key|Key) "([^"]+)":?\s*(.*)', text)
        if key:
            keys.append(key.group(1))
            text = key.group(2)
        if text.startswith("Given value:"):
            given = text.partition(":")[2].strip()
            continue
        if not text or text.startswith(("Given value", "Subtypes:", "Errors:", "Problem with")):
            continue
        if text.startswith("Does not validate against any of the Union subtypes"):
            continue
        reason = text
    point = reason or _one_line(lines[0] if lines else message)
    if given and len(given) < 60 and "Namespace" not in given and "NestedArg" not in given:
        point = f"{point}, got {given}"
    where = ".".join(k for k in keys if k != "init_args")
    return f"{where}: {point}" if where else f"{point} (run with --help for the options)"


if __name__ == "__main__":
    main()
