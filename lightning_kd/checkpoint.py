"""Reading a Lightning checkpoint before a run uses it, and checking that it fits the run.

The ``lightning-kd`` command calls these before ``fit`` / ``validate`` / ``test`` /
``predict`` with ``--ckpt_path``, so that a checkpoint of another module or of other networks
is refused before any work, naming both, instead of being loaded into whatever the config
built (Lightning's own loading either fails late with a long key list, or, for a module whose
keys happen to match, silently evaluates the wrong network).
"""

from __future__ import annotations

import argparse
import importlib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from torch import Tensor

__all__ = [
    "CheckpointMismatchError",
    "check_checkpoint_fits",
    "describe_networks",
    "flatten_config",
    "read_checkpoint",
    "recorded_file",
    "recorded_teacher_files",
    "settings_differences",
]

#: Key of lightning-kd's own record in a checkpoint (see ``LightningKDModule``).
RECORD_KEY = "lightning_kd"
#: Module arguments that hold networks, in the order they are described.
NETWORK_KEYS = ("model", "student", "teacher", "backbone")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to the module or networks of the run's config."""


def read_checkpoint(path: str | Path, *, weights_only: bool = True) -> dict[str, Any]:
    """Load a Lightning checkpoint's contents on the CPU (memory-mapped when possible).

    Args:
        path: The file given as ``--ckpt_path``.
        weights_only: Passed to ``torch.load`` (``--weights_only``).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not a file ``torch.load`` can read, or holds no Lightning
            checkpoint (a dict with ``state_dict`` and ``pytorch-lightning_version``).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        where = f" (resolved: {file.resolve()})" if not file.is_absolute() else ""
        raise FileNotFoundError(f"ckpt_path {str(path)!r} does not exist{where}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(
                file, map_location="cpu", weights_only=weights_only, mmap=zipfile.is_zipfile(file)
            )
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        if weights_only and "Unsupported global" in str(error):
            raise ValueError(
                f"ckpt_path {str(path)!r} holds objects that torch.load(weights_only=True) "
                f"refuses ({reason}); if you trust the file, pass --weights_only false"
            ) from error
        raise ValueError(
            f"ckpt_path {str(path)!r} is not a checkpoint: torch.load cannot read it "
            f"({type(error).__name__}: {reason}); expected a .ckpt file written by Lightning"
        ) from error
    if not isinstance(obj, dict) or "state_dict" not in obj:
        got = f"a dict with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"ckpt_path {str(path)!r} is not a Lightning checkpoint: it holds {got}, expected "
            "a dict with 'state_dict' and 'pytorch-lightning_version' (to start from a file "
            "of weights alone, give it as the module's teacher_checkpoint / "
            "student_checkpoint instead)"
        )
    return obj


def checkpoint_module_class(checkpoint: Mapping[str, Any]) -> str | None:
    """Import path of the module class a checkpoint was written by, if it says."""
    record = checkpoint.get(RECORD_KEY, {})
    if isinstance(record, Mapping) and record.get("module"):
        return str(record["module"])
    hparams = checkpoint.get("hyper_parameters", {})
    if isinstance(hparams, Mapping) and hparams.get("_class_path"):
        return str(hparams["_class_path"])
    return None


def _import_class(path: str) -> type | None:
    module_name, _, name = path.rpartition(".")
    try:
        value = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return value if isinstance(value, type) else None


def describe_networks(arguments: Mapping[str, Any] | None) -> str:
    """``"student=SmallCNN(width=16), teacher=SmallCNN(width=48)"`` from a module's
    ``init_args`` (as saved in ``hyper_parameters`` or given in the config); an ensemble of
    teachers as ``teachers=[SmallCNN(width=48), SmallCNN(width=32)]``."""
    if not arguments:
        return "networks not recorded"
    parts = []
    for key in NETWORK_KEYS:
        shown = _describe_network(arguments.get(key))
        if shown is not None:
            parts.append(f"{key}={shown}")
    teachers = arguments.get("teachers")
    if isinstance(teachers, list) and teachers:
        members = []
        for teacher in teachers:
            spec = teacher.as_dict() if isinstance(teacher, Namespace) else teacher
            init = spec.get("init_args") if isinstance(spec, Mapping) else None
            network = init.get("network") if isinstance(init, Mapping) else None
            members.append(_describe_network(network) or "?")
        parts.append(f"teachers=[{', '.join(members)}]")
    return ", ".join(parts) if parts else "networks not recorded"


def _describe_network(spec: Any) -> str | None:
    """``"SmallCNN(width=16)"`` for a ``class_path`` / ``init_args`` entry, else ``None``."""
    if isinstance(spec, Namespace):
        spec = spec.as_dict()
    if not (isinstance(spec, Mapping) and spec.get("class_path")):
        return None
    init = spec.get("init_args") or {}
    shown = ", ".join(
        f"{k}={v}" for k, v in sorted(init.items()) if k != "num_classes" and v is not None
    )
    return f"{str(spec['class_path']).rpartition('.')[2]}({shown})"


def check_checkpoint_fits(
    checkpoint: Mapping[str, Any], module: L.LightningModule, model_config: Any
) -> None:
    """Refuse a checkpoint written by another module class, or whose tensors do not fit the
    networks the config built.

    Args:
        checkpoint: From :func:`read_checkpoint`.
        module: The module the config built.
        model_config: The config's ``model`` entry (``class_path`` / ``init_args``).

    Raises:
        CheckpointMismatchError: Naming both modules and networks.
    """
    config = model_config.as_dict() if isinstance(model_config, Namespace) else model_config
    config = config if isinstance(config, Mapping) else {}
    wanted = f"{type(module).__name__} ({describe_networks(config.get('init_args'))})"
    hparams = checkpoint.get("hyper_parameters", {})
    saved_class = checkpoint_module_class(checkpoint)
    got = (
        f"{(saved_class or 'an unrecorded module').rpartition('.')[2]} "
        f"({describe_networks(hparams if isinstance(hparams, Mapping) else None)})"
    )
    if saved_class is not None and _import_class(saved_class) is not type(module):
        raise CheckpointMismatchError(
            f"the checkpoint holds a {got}, but the config builds a {wanted}: --ckpt_path "
            "never changes the module or networks. Use the config that trained this "
            "checkpoint, or a checkpoint of this config's module"
        )
    state: Mapping[str, Tensor] = checkpoint["state_dict"]
    own = module.state_dict()
    wrong = [
        f"{key}: checkpoint {tuple(value.shape)}, config {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and isinstance(value, Tensor) and value.shape != own[key].shape
    ]
    obsolete = set(getattr(module, "obsolete_state_keys", ()))  # dropped when loading
    unknown = [key for key in state if key not in own and key not in obsolete]
    optional = _optional_prefixes(checkpoint)
    missing = [
        key
        for key in own
        if key not in state and not any(key.startswith(prefix) for prefix in optional)
    ]
    if wrong or unknown or missing:
        details = []
        if wrong:
            details.append(f"{len(wrong)} tensors of another shape (e.g. {wrong[0]})")
        if unknown:
            details.append(f"{len(unknown)} tensors the config's networks lack (e.g. {unknown[0]})")
        if missing:
            details.append(f"{len(missing)} tensors of the config missing (e.g. {missing[0]})")
        raise CheckpointMismatchError(
            f"the checkpoint's networks do not fit the config's: it holds a {got}, the config "
            f"builds a {wanted}; {'; '.join(details)}. Use the config that trained this "
            "checkpoint"
        )


def _optional_prefixes(checkpoint: Mapping[str, Any]) -> tuple[str, ...]:
    """State-dict prefixes a checkpoint may leave out: a teacher saved by path only."""
    record = checkpoint.get(RECORD_KEY, {})
    teacher = record.get("teacher", {}) if isinstance(record, Mapping) else {}
    legacy = checkpoint.get("teacher_source", {})
    if teacher.get("weights_saved") is False or legacy.get("weights_saved") is False:
        return ("teacher.",)
    return ()


def recorded_file(checkpoint: Mapping[str, Any], kind: str) -> str | None:
    """The absolute path of the ``"teacher"`` or ``"student_init"`` weights file a KD
    checkpoint records, if any."""
    record = checkpoint.get(RECORD_KEY, {})
    entry = record.get(kind, {}) if isinstance(record, Mapping) else {}
    if not entry and kind == "teacher":
        entry = checkpoint.get("teacher_source", {})
    path = entry.get("path") if isinstance(entry, Mapping) else None
    return str(path) if path else None


def recorded_teacher_files(checkpoint: Mapping[str, Any]) -> list[str | None]:
    """The absolute path of each teacher's weights file that a KD checkpoint trained with
    ``teachers`` records, in order (``None`` for a teacher built without a file); ``[]`` for
    a checkpoint of one teacher or of another module."""
    record = checkpoint.get(RECORD_KEY, {})
    entry = record.get("teacher", {}) if isinstance(record, Mapping) else {}
    members = entry.get("teachers") if isinstance(entry, Mapping) else None
    if not isinstance(members, list):
        return []
    paths = [m.get("path") if isinstance(m, Mapping) else None for m in members]
    return [str(path) if path else None for path in paths]


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested ``class_path`` / ``init_args`` config into dotted keys.

    ``{"model": {"class_path": "a.KDModule", "init_args": {"temperature": 4.0, "student":
    {"class_path": "a.SmallCNN", "init_args": {"width": 16}}}}}`` becomes ``{"model":
    "a.KDModule", "model.temperature": 4.0, "model.student": "a.SmallCNN",
    "model.student.width": 16}``. Lists become ``prefix.0``, ``prefix.1``, ...; values stay
    as they are (``None`` included).
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("_instantiator", "_class_path"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Namespace):
            value = value.as_dict()
        if isinstance(value, Mapping) and "class_path" in value:
            flat[name] = value["class_path"]
            flat.update(flatten_config(value.get("init_args") or {}, f"{name}."))
            flat.update(flatten_config(value.get("dict_kwargs") or {}, f"{name}."))
        elif isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            flat.update(flatten_config({str(i): v for i, v in enumerate(value)}, f"{name}."))
        else:
            flat[name] = value
    return flat


def settings_differences(checkpoint: Mapping[str, Any], model_config: Any) -> list[str]:
    """``"temperature: 3.0 (checkpoint: 4.0)"`` for every module setting of the config that
    differs from the checkpoint's saved hyperparameters (only keys both record)."""
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(hparams, Mapping):
        return []
    config = model_config.as_dict() if isinstance(model_config, Namespace) else model_config
    init_args = config.get("init_args", {}) if isinstance(config, Mapping) else {}
    ours = flatten_config(init_args or {})
    theirs = flatten_config(hparams)
    return [
        f"{key}: {ours[key]!r} (checkpoint: {theirs[key]!r})"
        for key in sorted(ours.keys() & theirs.keys())
        if ours[key] != theirs[key]
        and not _same_number(ours[key], theirs[key])
        and not callable(ours[key])  # a default callable; the checkpoint has its import path
    ]


def _same_number(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False
