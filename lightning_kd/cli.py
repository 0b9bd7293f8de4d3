"""The ``lightning-kd`` command: LightningCLI with class_path/init_args injection.

``lightning-kd fit --config configs/cifar10/kd_resnet56_resnet20.yaml`` builds the module,
its networks and the datamodule from YAML. The datamodule's ``num_classes`` is linked into
every network argument of the module (``model``, ``student``, ``teacher``) so the two can
never disagree.
"""

import importlib

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger
from typing_extensions import override

#: Module arguments that hold networks whose ``num_classes`` comes from the datamodule.
NETWORK_ARGUMENTS = ("model", "student", "teacher")


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
    """Save ``config.yaml`` to the log dir and record the full config as logger hyperparameters,
    so TensorBoard's HPARAMS tab shows every setting of the run, networks included."""

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.logger, Logger):
            config = self.parser.dump(self.config, skip_none=False, format="json")
            trainer.logger.log_hyperparams({"config": config})


class KDLightningCLI(LightningCLI):
    """LightningCLI with the datamodule's class count linked into the networks."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in NETWORK_ARGUMENTS:
            parser.link_arguments(
                "data",
                f"model.init_args.{name}.init_args.num_classes",
                compute_fn=datamodule_num_classes,
                apply_on="parse",
            )


def build_cli(args: list[str] | None = None, *, run: bool = True) -> KDLightningCLI:
    """Build (and with ``run=True`` execute) the CLI; ``args`` as on the command line.

    With ``run=False`` no subcommand is given in ``args`` (e.g. ``["--config", "x.yaml"]``) and
    the returned object holds the instantiated ``model``, ``datamodule`` and ``trainer``.
    """
    return KDLightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-kd`` console script."""
    build_cli(args)


if __name__ == "__main__":
    main()
