"""Load network weights from Lightning checkpoints, plain state dicts and torchvision files.

Three file layouts are understood, all read onto the CPU:

* a Lightning checkpoint: a dict whose ``"state_dict"`` holds the weights of the whole
  ``LightningModule``, e.g. ``"model.fc.weight"`` for a classifier whose network is the
  attribute ``model``, or ``"student.fc.weight"`` / ``"teacher.fc.weight"`` for a
  distillation module;
* a plain state dict (``torch.save(net.state_dict(), path)``), optionally saved from a
  ``DistributedDataParallel`` wrapper (keys prefixed with ``"module."``);
* a torchvision weights file, which is a plain state dict of the torchvision network. When
  the target is a thin wrapper whose state all lives under one child (``TorchvisionModel``
  keeps its network in ``net``), keys without that child's prefix are accepted.

Files are read with ``torch.load(..., weights_only=True)``, which cannot run code. Lightning
checkpoints can hold hyperparameters that ``weights_only`` refuses (an ``argparse.Namespace``,
a ``Path``, a class); only for a file that is recognisably a Lightning checkpoint (its pickle
names the ``"pytorch-lightning_version"`` entry Lightning writes, checked without
unpickling) does loading fall back to ``weights_only=False``, which unpickles arbitrary
objects: load such checkpoints only from sources you trust.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

__all__ = ["load_weights"]

_LIGHTNING_MARKER = b"pytorch-lightning_version"
_LIGHTNING_PREFIXES = ("model.", "student.", "")
_PLAIN_PREFIXES = ("", "module.", "model.", "student.")
_MAX_LISTED = 5


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    prefix: str | None = None,
    strict: bool = True,
    skip_mismatched_classifier: bool = False,
    drop_prefixes: Sequence[str] = (),
) -> nn.Module:
    """Load weights from a checkpoint or state-dict file into ``model`` in place.

    When ``prefix`` is None it is inferred: for a Lightning checkpoint ``"model."`` and then
    ``"student."`` are tried (then no prefix, for a checkpoint of ``model`` itself); for a
    plain state dict no prefix, then ``"module."`` (DDP), ``"model."`` and ``"student."``. The
    first prefix whose stripped keys are exactly the model's keys wins; failing that, the one
    sharing the most keys with the model is used, and the usual key checks report what
    differs.

    Args:
        model: Network to load into.
        path: File written by ``torch.save``: a Lightning checkpoint, a plain state dict or a
            torchvision weights file (see the module docstring).
        prefix: Keep only checkpoint keys starting with this string and strip it, e.g.
            ``"student."`` to take the student out of a distillation checkpoint.
        strict: Require the checkpoint keys to be exactly the model's keys. With False,
            missing and unexpected keys are skipped, but at least one key must match.
        skip_mismatched_classifier: Instead of raising on a class-count mismatch, load
            everything except the classifier tensors (which keep their current values) and
            emit a warning on rank zero.
        drop_prefixes: Checkpoint keys that start with one of these, once the prefix is
            stripped (i.e. named as in ``model.state_dict()``), are ignored, e.g.
            ``("net.fc.",)`` to load a backbone whose classifier was removed.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a directory.
        TypeError: If the file holds neither a Lightning checkpoint nor a state dict.
        ValueError: If the file cannot be read safely, no prefix fits, keys are missing or
            unexpected (with ``strict``), shapes differ, or the checkpoint classifier has a
            different number of classes than the model.
    """
    file = Path(path)
    obj = _read_file(file)
    state, is_lightning = _extract_state_dict(obj, file)
    model_state = model.state_dict()

    if prefix is not None:
        if not any(k.startswith(prefix) for k in state):
            raise ValueError(
                f"no key in {str(file)!r} starts with prefix {prefix!r}; "
                f"its keys start with {_top_level_names(state)}"
            )
        prefixes: Sequence[str] = (prefix,)
    else:
        prefixes = _LIGHTNING_PREFIXES if is_lightning else _PLAIN_PREFIXES
    used_prefix, state = _select_view(state, model_state, prefixes, file)
    if drop_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}

    skipped = _check_compatible(
        model,
        model_state,
        state,
        file=file,
        prefix=used_prefix,
        strict=strict,
        skip_mismatched_classifier=skip_mismatched_classifier,
    )
    for key in skipped:
        del state[key]
    model.load_state_dict(state, strict=strict and not skipped)
    return model


def _read_file(path: Path) -> Any:
    """Read ``path`` with ``weights_only=True``, or fully for a Lightning checkpoint."""
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a weights file, got the directory {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _is_lightning_archive(path):
            raise ValueError(
                f"cannot read {str(path)!r} with torch.load(weights_only=True) and it is not a "
                f"Lightning checkpoint, so it is not unpickled further: {str(err)[:300]}"
            ) from err
    # A Lightning checkpoint whose hyperparameters hold objects weights_only refuses.
    return torch.load(path, map_location="cpu", weights_only=False)


def _is_lightning_archive(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` archive whose pickle names a Lightning entry."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.count("/") == 1 and name.endswith("/data.pkl"):
                return _LIGHTNING_MARKER in archive.read(name)
    return False


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], bool]:
    """Return the state dict held by ``obj`` and whether ``obj`` is a Lightning checkpoint."""
    is_lightning = isinstance(obj, Mapping) and "state_dict" in obj
    state = obj["state_dict"] if is_lightning else obj
    expected = "a Lightning checkpoint (a dict with 'state_dict') or a state dict of tensors"
    if not isinstance(state, Mapping) or not state:
        raise TypeError(f"{str(path)!r} holds {_describe(obj)}; expected {expected}")
    non_tensors = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise TypeError(
            f"{str(path)!r} holds {_describe(obj)} with non-tensor entries "
            f"{non_tensors[:_MAX_LISTED]}; expected {expected}"
        )
    return {str(k): v for k, v in state.items()}, is_lightning


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:_MAX_LISTED]]
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"an object of type {type(obj).__name__}"


def _top_level_names(state: Mapping[str, Tensor]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in state})[:10]


def _select_view(
    state: dict[str, Tensor],
    model_state: Mapping[str, Tensor],
    prefixes: Sequence[str],
    path: Path,
) -> tuple[str, dict[str, Tensor]]:
    """Pick the prefix (and wrapper re-prefixing) under which ``state`` fits the model.

    Returns the chosen prefix and the re-keyed state dict.
    """
    model_keys = set(model_state)
    # A thin wrapper keeps all of its state under one child, e.g. "net." for TorchvisionModel.
    heads = {k.split(".", 1)[0] for k in model_keys}
    wrapper = f"{heads.pop()}." if len(heads) == 1 and all("." in k for k in model_keys) else None

    views: list[tuple[str, dict[str, Tensor]]] = []
    for p in prefixes:
        view = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        if not view:
            continue
        views.append((p, view))
        if wrapper is not None and not any(k.startswith(wrapper) for k in view):
            views.append((p, {wrapper + k: v for k, v in view.items()}))

    for p, view in views:
        if set(view) == model_keys:
            return p, view
    overlaps = [len(model_keys.intersection(view)) for _, view in views]
    if not views or max(overlaps) == 0:
        tried = ", ".join(repr(p) for p in prefixes)
        raise ValueError(
            f"no key of {str(path)!r} matches the model after stripping any of the prefixes "
            f"[{tried}]; checkpoint keys start with {_top_level_names(state)}, model keys with "
            f"{_top_level_names(model_state)}; pass prefix= to choose the sub-module to load"
        )
    return views[overlaps.index(max(overlaps))]


def _num_classes(model: nn.Module) -> int | None:
    """The model's class count: its ``num_classes`` attribute, else the last Linear's width."""
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _check_compatible(
    model: nn.Module,
    model_state: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    *,
    file: Path,
    prefix: str,
    strict: bool,
    skip_mismatched_classifier: bool,
) -> list[str]:
    """Raise a ValueError listing every incompatibility; return classifier keys to skip."""
    num_classes = _num_classes(model)
    problems: list[str] = []
    classifier: list[tuple[str, torch.Size, torch.Size]] = []
    for key in sorted(set(model_state).intersection(state)):
        got, want = state[key].shape, model_state[key].shape
        if got == want:
            continue
        is_classifier = (
            len(got) == len(want)
            and len(got) > 0
            and got[1:] == want[1:]
            and want[0] == num_classes
        )
        if is_classifier:
            classifier.append((key, got, want))
        else:
            problems.append(
                f"shape mismatch for {key!r}: checkpoint {tuple(got)}, model {tuple(want)}"
            )
    if classifier:
        got_classes = classifier[0][1][0]
        keys = [k for k, _, _ in classifier]
        message = f"checkpoint classifier has {got_classes} classes, model has {num_classes}"
        if skip_mismatched_classifier:
            rank_zero_warn(
                f"{message} ({str(file)!r}); loading everything except {keys}, which keep "
                "their current (random) values"
            )
        else:
            problems.insert(0, f"{message} (keys {keys})")
    if strict:
        missing = sorted(set(model_state).difference(state))
        unexpected = sorted(set(state).difference(model_state))
        if missing:
            problems.append(
                f"{len(missing)} missing key(s), in the model but not the checkpoint: "
                f"{missing[:_MAX_LISTED]}{' ...' if len(missing) > _MAX_LISTED else ''}"
            )
        if unexpected:
            problems.append(
                f"{len(unexpected)} unexpected key(s), in the checkpoint but not the model: "
                f"{unexpected[:_MAX_LISTED]}{' ...' if len(unexpected) > _MAX_LISTED else ''}"
            )
    if problems:
        where = f" (prefix {prefix!r})" if prefix else ""
        raise ValueError(
            f"cannot load {str(file)!r}{where} into {type(model).__name__}:\n  "
            + "\n  ".join(problems)
        )
    return [k for k, _, _ in classifier] if skip_mismatched_classifier else []
