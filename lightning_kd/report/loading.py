"""Turn a checkpoint (or an exported weights file and its network config) into a network ready
for inference, and a datamodule config into a datamodule.

Two kinds of input name a network:

* a **Lightning checkpoint of any lightning-kd module** (``fit`` writes them): the module is
  rebuilt from the hyperparameters the ``lightning-kd`` CLI records in it (``class_path`` /
  ``init_args`` of every network), its weights are loaded from the checkpoint's state dict,
  and the network is the module's ``exported_model()``: the student of a KD module, the EMA
  teacher of Mean Teacher (``export_network``), the backbone of DINO / BYOL, the model of a
  classifier. Files the module would read at construction (``teacher_checkpoint``,
  ``student_checkpoint``, each ``teachers`` entry's ``checkpoint``) are not read: the weights
  come from the checkpoint, so a checkpoint saved with ``save_teacher_weights=False`` is fine,
  even when its teacher file has moved;
* a **weights file** (``module.export(path)``, ``lightning-kd export --format state_dict``, any
  ``torch.save(net.state_dict())``) **with its network config**: a YAML file (or inline
  YAML) with ``class_path`` and ``init_args``, e.g.
  ``{class_path: lightning_kd.models.SmallCNN, init_args: {width: 16}}``. ``lightning-kd
  export --format state_dict`` writes it beside the weights (:func:`network_config_path`),
  where it is found without being named.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch import nn

from lightning_kd.checkpoint import checkpoint_module_class

__all__ = [
    "LoadedNetwork",
    "build_datamodule",
    "build_network",
    "describe_network",
    "exported_network",
    "load_network",
    "network_config_path",
    "read_config_file",
    "read_network_config",
    "run_data_config",
]


@dataclass
class LoadedNetwork:
    """A network rebuilt from a file, in eval mode on the CPU, with where it came from.

    Attributes:
        network: The network (eval mode, CPU, float32).
        source: The file it was loaded from.
        description: ``"SmallCNN(width=16)"``, or the class name when no config is recorded.
        spec: Its ``class_path`` / ``init_args`` config, when known.
        module: Name of the lightning-kd module class of a checkpoint (``"KDModule"``), or
            ``None`` for a weights file.
        exported: Attribute path of the network in that module (``"student"``), or ``None``.
        data_config: The datamodule config recorded in the checkpoint (``class_path`` /
            ``init_args``), if any.
    """

    network: nn.Module
    source: Path
    description: str
    spec: dict[str, Any] | None = None
    module: str | None = None
    exported: str | None = None
    data_config: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def origin(self) -> str:
        """``"student of KDModule"`` or ``"weights file"``: what part of the file it is."""
        if self.module is None:
            return "weights file"
        return f"{self.exported or 'module'} of {self.module}"


def network_config_path(weights: str | Path) -> Path:
    """Where the network config of a weights file is written / looked for:
    ``student.pt`` -> ``student.network.yaml``."""
    return Path(weights).with_suffix(".network.yaml")


# ----------------------------------------------------------------------------- configs
def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON) file that holds a mapping.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not YAML or holds no mapping.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        value = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"{str(path)!r} is not a YAML file: {reason}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"{str(path)!r} holds {type(value).__name__}, expected a YAML mapping "
            "(class_path / init_args, or a run config with a 'data' entry)"
        )
    return value


def read_network_config(value: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A network config from a YAML file, inline YAML / JSON, or a mapping.

    Returns:
        ``{"class_path": ..., "init_args": {...}}``.

    Raises:
        ValueError: If it has no ``class_path``.
    """
    if isinstance(value, Mapping):
        config: Any = dict(value)
        where = "the network config"
    elif Path(value).expanduser().is_file():
        config = read_config_file(value)
        where = repr(str(value))
    else:
        text = str(value)
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError:
            config = None
        where = f"the network config {text!r}"
        if not isinstance(config, dict):
            raise ValueError(
                f"{where} is neither an existing file nor inline YAML with a class_path; expected "
                "e.g. net.yaml or '{class_path: lightning_kd.models.SmallCNN, init_args: "
                "{width: 16}}'"
            )
    if not isinstance(config.get("class_path"), str):
        raise ValueError(
            f"{where} has no class_path (keys: {sorted(config)}); a network config is "
            "{class_path: package.Network, init_args: {...}}, e.g. {class_path: "
            "lightning_kd.models.SmallCNN, init_args: {width: 16}}"
        )
    return {"class_path": config["class_path"], "init_args": dict(config.get("init_args") or {})}


def describe_network(spec: Mapping[str, Any] | None, network: nn.Module | None = None) -> str:
    """``"SmallCNN(width=16)"`` from a network config (``num_classes`` left out), else the
    network's class name."""
    if not spec or not spec.get("class_path"):
        return type(network).__name__ if network is not None else "?"
    init = spec.get("init_args") or {}
    shown = ", ".join(
        f"{key}={value}"
        for key, value in sorted(init.items())
        if key != "num_classes" and value is not None and not isinstance(value, dict)
    )
    return f"{str(spec['class_path']).rpartition('.')[2]}({shown})"


def _instantiate(kind: type, config: Mapping[str, Any], what: str) -> Any:
    """Instantiate a ``class_path`` / ``init_args`` config whose class is a ``kind``, with
    jsonargparse (as the CLI does: nested ``class_path`` entries are built too).

    Raises:
        ValueError: Naming ``what`` and the parser's or constructor's reason.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=kind)
    failure: BaseException | None = None
    try:
        parsed = parser.parse_object({"value": dict(config)})
        built = (
            parser.instantiate(parsed)
            if hasattr(parser, "instantiate")
            else parser.instantiate_classes(parsed)
        )
    except Exception as error:  # reported below, outside the handler (one message)
        failure = error
    else:
        return built.value
    from lightning_kd.cli import user_message

    reason, _ = user_message(failure)
    raise ValueError(f"cannot build {what}: {reason.removeprefix('value: ')}")


def build_network(spec: Mapping[str, Any], *, num_classes: int | None = None) -> nn.Module:
    """Build a network from its ``class_path`` / ``init_args`` config.

    Args:
        spec: The config (:func:`read_network_config`).
        num_classes: Filled into ``init_args.num_classes`` when the config leaves it out and the
            class takes it (as the CLI links the datamodule's class count).

    Raises:
        ValueError: If the class cannot be built from the config, or is not an ``nn.Module``.
    """
    config = {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    if num_classes is not None and "num_classes" not in config["init_args"]:
        try:
            module_name, _, name = str(config["class_path"]).rpartition(".")
            cls = getattr(importlib.import_module(module_name), name)
            if "num_classes" in inspect.signature(cls).parameters:
                config["init_args"]["num_classes"] = num_classes
        except (ImportError, AttributeError, ValueError, TypeError):
            pass  # the instantiation below names the problem
    network = _instantiate(nn.Module, config, f"the network {describe_network(config)}")
    if not isinstance(network, nn.Module):
        raise ValueError(f"{config['class_path']} is not a torch.nn.Module")
    return network


# ----------------------------------------------------------------------------- networks
def _read(path: Path) -> Any:
    """``torch.load`` a file safely onto the CPU (``weights_only=True``)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        failure = f"{type(error).__name__}: {reason}"
    raise ValueError(
        f"cannot read {str(path)!r} with torch.load(weights_only=True) ({failure}); expected a "
        "Lightning checkpoint of a lightning-kd module or a state-dict file (torch.save); "
        "ONNX and TorchScript files are outputs of lightning-kd export, not inputs"
    )


def load_network(
    path: str | Path,
    network_config: str | Path | Mapping[str, Any] | None = None,
    *,
    num_classes: int | None = None,
) -> LoadedNetwork:
    """The deployable network of a checkpoint, or the network of a weights file.

    Args:
        path: A Lightning checkpoint of a lightning-kd module, or a weights file.
        network_config: The network config of a weights file (file, inline YAML or mapping);
            ``None``: a checkpoint, or a weights file with its config beside it
            (:func:`network_config_path`).
        num_classes: The datamodule's class count, filled into a network config that leaves
            it out.

    Returns:
        The network in eval mode and where it came from.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file cannot be read, is a weights file without a network config,
            or its module / network cannot be rebuilt or does not fit its weights.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        where = f" (resolved: {file.resolve()})" if not file.is_absolute() else ""
        kind = "directory, not a file" if file.is_dir() else "does not exist"
        raise FileNotFoundError(f"{str(path)!r} {kind}{where}")
    sidecar = network_config_path(file)
    if network_config is None and sidecar.is_file():
        obj = _read(file)
        if not (isinstance(obj, dict) and "state_dict" in obj):
            network_config = sidecar
    if network_config is not None:
        return _load_weights_file(file, read_network_config(network_config), num_classes)
    obj = _read(file)
    if isinstance(obj, dict) and "state_dict" in obj:
        return _load_checkpoint(file, obj)
    got = (
        f"a state dict of {len(obj)} entries"
        if isinstance(obj, dict)
        else f"a {type(obj).__name__}"
    )
    raise ValueError(
        f"{str(path)!r} holds {got}, not a Lightning checkpoint, and no network config was "
        f"given ({sidecar.name} is not beside it): give the network config after the file, "
        f"e.g. --student {path} net.yaml, with net.yaml holding class_path and init_args "
        "({class_path: lightning_kd.models.SmallCNN, init_args: {width: 16}})"
    )


def _load_weights_file(file: Path, spec: dict[str, Any], num_classes: int | None) -> LoadedNetwork:
    from lightning_kd.models.loading import load_weights

    network = build_network(spec, num_classes=num_classes)
    load_weights(network, file)
    network.eval()
    return LoadedNetwork(
        network=network,
        source=file,
        description=describe_network(spec, network),
        spec=spec,
    )


def _load_checkpoint(file: Path, checkpoint: Mapping[str, Any]) -> LoadedNetwork:
    from lightning_kd.modules.base import LightningKDModule

    class_path = checkpoint_module_class(checkpoint)
    if class_path is None:
        raise ValueError(
            f"{str(file)!r} is a Lightning checkpoint that does not record the module that wrote "
            "it; expected a checkpoint written by a lightning-kd module (lightning-kd fit). For "
            "another file give the network config after it: FILE net.yaml"
        )
    module_name, _, name = class_path.rpartition(".")
    try:
        module_class = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        module_class = None
    if not (isinstance(module_class, type) and issubclass(module_class, LightningKDModule)):
        raise ValueError(
            f"{str(file)!r} is a checkpoint of {class_path}, which is not a lightning-kd module "
            "(lightning_kd.modules); give the network config after the file to load its "
            "network's weights: FILE net.yaml"
        )
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "_class_path" not in hparams:
        raise ValueError(
            f"{str(file)!r} ({module_class.__name__}) was written by a module built in Python: "
            "its hyperparameters do not record the networks (the lightning-kd CLI records "
            "them). Save the network with module.export(path) and give it with its network "
            "config: FILE net.yaml"
        )
    init_args = _without_weight_files({k: v for k, v in hparams.items() if not k.startswith("_")})
    module = _instantiate(
        LightningKDModule,
        {"class_path": class_path, "init_args": init_args},
        f"{module_class.__name__} from the hyperparameters of {str(file)!r}",
    )
    network, prefix = exported_network(module)
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    attribute = prefix.rstrip(".") or "module"
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        problem = " ".join(str(error).split())[:300]
    else:
        problem = ""
    if problem:
        raise ValueError(
            f"the {attribute} of {module_class.__name__} in {str(file)!r} does not fit the "
            f"network its hyperparameters build ({problem}); was the checkpoint written by "
            "another version of the network class?"
        )
    network.eval()
    spec = _network_spec(hparams, prefix, module, network)
    return LoadedNetwork(
        network=network,
        source=file,
        description=describe_network(spec, network),
        spec=spec,
        module=module_class.__name__,
        exported=attribute,
        data_config=_recorded_data_config(checkpoint),
    )


def _without_weight_files(init_args: dict[str, Any]) -> dict[str, Any]:
    """The module's arguments with the weight files it reads at construction left out.

    ``*_checkpoint`` arguments and each ``teachers`` entry's ``checkpoint`` become ``None``,
    ``save_teacher_weights`` becomes ``True`` (which needs a teacher file otherwise): the
    weights come from the checkpoint's state dict.
    """
    args = copy.deepcopy(init_args)
    for key in list(args):
        if key.endswith("_checkpoint"):
            args[key] = None
    if "save_teacher_weights" in args:
        args["save_teacher_weights"] = True
    teachers = args.get("teachers")
    if isinstance(teachers, list):
        for teacher in teachers:
            init = teacher.get("init_args") if isinstance(teacher, dict) else None
            if isinstance(init, dict) and "checkpoint" in init:
                init["checkpoint"] = None
    return args


def exported_network(module: nn.Module) -> tuple[nn.Module, str]:
    """A lightning-kd module's :meth:`exported_model` and its state-dict prefix in the module.

    Returns:
        ``(network, prefix)``, e.g. ``(module.student, "student.")``; ``""`` when the network is
        the module itself.
    """
    exported = getattr(module, "exported_model", None)
    if not callable(exported):
        raise TypeError(f"{type(module).__name__} has no exported_model(); expected a module")
    network = exported()
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"{type(module).__name__}.exported_model() returned {type(network).__name__}, "
            "expected an nn.Module"
        )
    for name, child in module.named_modules():
        if child is network:
            return network, f"{name}." if name else ""
    raise ValueError(
        f"{type(module).__name__}.exported_model() returned a network that is not a submodule "
        "of the module, so its weights are not in the checkpoint"
    )


def _network_spec(
    hparams: Mapping[str, Any], prefix: str, module: nn.Module, network: nn.Module
) -> dict[str, Any] | None:
    """The ``class_path`` / ``init_args`` config of the exported network, from the module's
    hyperparameters: the argument named by the first or last part of its attribute path
    (``student``; ``backbone`` for ``teacher.backbone``), or, for an EMA teacher that the
    module builds as a copy of its student, the student's."""
    parts = prefix.rstrip(".").split(".") if prefix else []
    for key in dict.fromkeys([*parts[:1], *parts[-1:]]):
        spec = hparams.get(key)
        if isinstance(spec, Mapping) and isinstance(spec.get("class_path"), str):
            return {
                "class_path": spec["class_path"],
                "init_args": dict(spec.get("init_args") or {}),
            }
    pairs = getattr(module, "ema_pairs", None)
    for pair in pairs() if callable(pairs) else []:
        if pair.teacher is network or network in list(pair.teacher.modules()):
            names = {id(child): name for name, child in module.named_modules()}
            student = names.get(id(pair.student))
            if student:
                inner = prefix[len(parts[0]) + 1 :] if parts else ""
                return _network_spec(hparams, f"{student}.{inner}", module, pair.student)
    return None


def _recorded_data_config(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The datamodule config Lightning records in a checkpoint (``_class_path`` and the
    arguments), as ``class_path`` / ``init_args``."""
    hparams = checkpoint.get("datamodule_hyper_parameters")
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("_class_path"), str):
        return None
    init_args = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    return {"class_path": hparams["_class_path"], "init_args": init_args}


# ----------------------------------------------------------------------------- data
def run_data_config(checkpoint: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The ``data`` entry of the ``config.yaml`` that ``lightning-kd fit`` saved beside a
    checkpoint (in its folder, or the folder above for ``checkpoints/``), and that file."""
    file = Path(checkpoint).expanduser()
    for folder in (file.parent, file.parent.parent):
        config = folder / "config.yaml"
        if config.is_file():
            data = read_config_file(config).get("data")
            if isinstance(data, dict) and data.get("class_path"):
                return data, config
    return None


def build_datamodule(
    config: Mapping[str, Any],
    *,
    source: str,
    data_dir: str | None = None,
    eval_batch_size: int | None = None,
) -> L.LightningDataModule:
    """Build a datamodule from a ``class_path`` / ``init_args`` config.

    Args:
        config: The config (``data`` entry of a run config).
        source: Where it came from, for messages.
        data_dir: Replaces ``init_args.data_dir``.
        eval_batch_size: Replaces ``init_args.eval_batch_size``.

    Raises:
        ValueError: If it cannot be built, naming ``source``.
    """
    spec = {
        "class_path": config["class_path"],
        "init_args": copy.deepcopy(dict(config.get("init_args") or {})),
    }
    if data_dir is not None:
        spec["init_args"]["data_dir"] = data_dir
    if eval_batch_size is not None:
        spec["init_args"]["eval_batch_size"] = eval_batch_size
    datamodule = _instantiate(
        L.LightningDataModule,
        spec,
        f"the datamodule {str(spec['class_path']).rpartition('.')[2]} of {source} (pass "
        "--data with a current run config, e.g. the YAML the run was trained with)",
    )
    assert isinstance(datamodule, L.LightningDataModule)
    return datamodule
