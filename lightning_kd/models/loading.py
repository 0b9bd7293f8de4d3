"""Load network weights from checkpoints of lightning-kd, Lightning, torchvision, timm and of
the KD codebases whose teachers people already have (RepDistiller, mdistiller, torchdistill).

File layouts understood, all read onto the CPU:

* a Lightning checkpoint: a dict whose ``"state_dict"`` holds the weights of the whole
  ``LightningModule``, e.g. ``"model.fc.weight"`` for a classifier whose network is the
  attribute ``model``, or ``"student.fc.weight"`` / ``"teacher.fc.weight"`` for a
  distillation module (timm's training checkpoints also keep their weights under
  ``"state_dict"``);
* a training checkpoint that keeps the state dict under ``"model"`` next to other entries,
  which are ignored: RepDistiller's ``{"epoch", "model", "accuracy", "optimizer"}`` (its
  released ``<name>_vanilla/ckpt_epoch_240.pth`` teachers), mdistiller's student files
  ``{"model"}`` and its full checkpoints ``{"epoch", "model", "optimizer", "best_acc"}``
  (whose ``"model"`` is the ``DataParallel``-wrapped distiller: ``"module.student."`` and
  ``"module.teacher."`` keys), and torchdistill's ``save_ckpt`` files
  ``{"model", "optimizer", "best_value", "lr_scheduler", "args"}``;
* a plain state dict (``torch.save(net.state_dict(), path)``, torchvision's and torchdistill's
  released weights), optionally saved from a ``DataParallel`` / ``DistributedDataParallel``
  wrapper (keys prefixed with ``"module."``). When the target is a thin wrapper whose state
  all lives under one child (``TorchvisionModel`` and ``TimmModel`` keep their network in
  ``net``), keys without that child's prefix are accepted;
* a ``.safetensors`` file (timm / Hugging Face weights), read with the ``safetensors``
  package.

Foreign key names are translated only where a layout is recognised, never guessed. A layout is
recognised when *every* key of the (prefix-stripped) state dict fits it:

* RepDistiller / mdistiller WRN: top-level ``conv1``, ``bn1``, ``fc`` and block keys
  ``block{i}.layer.{j}.{bn1,conv1,bn2,conv2,convShortcut}.*``; renamed to ``layer{i}.{j}.*``
  with ``convShortcut`` -> ``shortcut`` and the final ``bn1`` -> ``bn``. Same function as
  ``WideResNet(shortcut_input="preact")``;
* torchdistill WRN: top-level ``conv1``, ``bn1``, ``fc`` and block keys
  ``layer{i}.{j}.{bn1,conv1,bn2,conv2,shortcut.0}.*`` with at least one ``shortcut.0``;
  renamed ``shortcut.0`` -> ``shortcut`` and the final ``bn1`` -> ``bn``. Same function as
  ``WideResNet(shortcut_input="raw")``.

Such a file loads only into a :class:`~lightning_kd.models.WideResNet` of the variant that
computes the same function; anything else is an error that names the right constructor. After
translation the usual checks apply: every key of the model must be matched with the right
shape. The CIFAR ResNets of all three projects already use this library's key names (and
function), so they load as they are.

Files are read with ``torch.load(..., weights_only=True)``, which cannot run code, with
``argparse.Namespace`` allowed (torchdistill's ``"args"``, RepDistiller's ``"opt"``, timm's
``"args"``, Lightning's hyperparameters); any other class is refused. Lightning checkpoints
can hold hyperparameters that ``weights_only`` still refuses (a ``Path``, a class); only for a
file that is recognisably a Lightning checkpoint (its pickle names the
``"pytorch-lightning_version"`` entry Lightning writes, checked without unpickling) does
loading fall back to ``weights_only=False``, which unpickles arbitrary objects: load such
checkpoints only from sources you trust.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_kd.models.wide_resnet import WideResNet

__all__ = ["load_weights"]

_LIGHTNING_MARKER = b"pytorch-lightning_version"
_LIGHTNING_PREFIXES = ("model.", "student.", "")
_PLAIN_PREFIXES = ("", "module.", "module.student.", "model.", "student.")
_MAX_LISTED = 5
#: Classes that ``weights_only`` loading may build besides tensors and containers.
_SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

_Container = Literal["lightning", "model", "plain"]
_CONTAINERS: dict[_Container, str] = {
    "lightning": "a Lightning checkpoint (a dict with 'state_dict')",
    "model": "a training checkpoint with the state dict under 'model' (RepDistiller, "
    "mdistiller, torchdistill)",
    "plain": "a state dict of tensors",
}


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
    plain state dict or a ``"model"`` training checkpoint no prefix, then ``"module."``
    (DataParallel / DDP), ``"module.student."`` (an mdistiller distiller), ``"model."`` and
    ``"student."``. The first prefix whose stripped keys are exactly the model's keys (after
    translating a recognised foreign layout, see the module docstring) wins; failing that, the
    one sharing the most keys with the model is used, and the usual key checks report what
    differs.

    Args:
        model: Network to load into.
        path: File written by ``torch.save`` or a ``.safetensors`` file (see the module
            docstring for the layouts).
        prefix: Keep only checkpoint keys starting with this string and strip it, e.g.
            ``"student."`` to take the student out of a distillation checkpoint or
            ``"module.teacher."`` for the teacher of an mdistiller checkpoint.
        strict: Require the checkpoint keys to be exactly the model's keys. With False,
            missing and unexpected keys are skipped, but at least one key must match.
        skip_mismatched_classifier: Instead of raising on a class-count mismatch, load
            everything except the classifier tensors (which keep their current values) and
            emit a warning on rank zero.
        drop_prefixes: Checkpoint keys that start with one of these, once the prefix is
            stripped and foreign names are translated (i.e. named as in
            ``model.state_dict()``), are ignored, e.g. ``("net.fc.",)`` to load a backbone
            whose classifier was removed.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a directory.
        ModuleNotFoundError: If ``path`` is a ``.safetensors`` file and the ``safetensors``
            package is not installed.
        TypeError: If the file holds none of the layouts above.
        ValueError: If the file cannot be read safely, no prefix fits, a recognised foreign
            layout does not fit the model (another network, or the other ``WideResNet``
            variant), keys are missing or unexpected (with ``strict``), shapes differ, or the
            checkpoint classifier has a different number of classes than the model.
    """
    file = Path(path)
    obj = _read_file(file)
    state, container = _extract_state_dict(obj, file)
    model_state = model.state_dict()

    if prefix is not None:
        if not any(k.startswith(prefix) for k in state):
            raise ValueError(
                f"no key in {str(file)!r} starts with prefix {prefix!r}; "
                f"its keys start with {_top_level_names(state)}"
            )
        prefixes: Sequence[str] = (prefix,)
    else:
        prefixes = _LIGHTNING_PREFIXES if container == "lightning" else _PLAIN_PREFIXES
    used_prefix, state, layout = _select_view(state, model_state, prefixes, file)
    if layout is not None:
        _check_layout_target(model, layout, state, file)
        state = layout.translate(state)
    if drop_prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}

    skipped = _check_compatible(
        model,
        model_state,
        state,
        file=file,
        prefix=used_prefix,
        layout=layout,
        strict=strict,
        skip_mismatched_classifier=skip_mismatched_classifier,
    )
    for key in skipped:
        del state[key]
    model.load_state_dict(state, strict=strict and not skipped)
    return model


# ----------------------------------------------------------------------------- reading
def _read_file(path: Path) -> Any:
    """Read ``path`` safely (``weights_only=True``), or fully for a Lightning checkpoint."""
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a weights file, got the directory {str(path)!r}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with _allow_safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _is_lightning_archive(path):
            raise ValueError(
                f"cannot read {str(path)!r} with torch.load(weights_only=True) and it is not a "
                f"Lightning checkpoint, so it is not unpickled further: {str(err)[:300]}"
            ) from err
    # A Lightning checkpoint whose hyperparameters hold objects weights_only refuses.
    return torch.load(path, map_location="cpu", weights_only=False)


def _allow_safe_globals() -> contextlib.AbstractContextManager[Any]:
    """Allow ``_SAFE_GLOBALS`` in ``weights_only`` loading, for the ``with`` block if possible."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5 only has the process-wide allow-list
        torch.serialization.add_safe_globals(list(_SAFE_GLOBALS))
        return contextlib.nullcontext()
    manager: contextlib.AbstractContextManager[Any] = safe_globals(list(_SAFE_GLOBALS))
    return manager


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"reading {str(path)!r} needs the safetensors package (pip install safetensors; "
            "it comes with timm)"
        ) from err
    state: dict[str, Tensor] = load_file(str(path), device="cpu")
    return state


def _is_lightning_archive(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` archive whose pickle names a Lightning entry."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.count("/") == 1 and name.endswith("/data.pkl"):
                return _LIGHTNING_MARKER in archive.read(name)
    return False


def _extract_state_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], _Container]:
    """Return the state dict held by ``obj`` and which container held it."""
    container: _Container = "plain"
    state = obj
    if isinstance(obj, Mapping) and "state_dict" in obj:
        container, state = "lightning", obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        container, state = "model", obj["model"]
    kinds = list(_CONTAINERS.values())
    expected = ", ".join(kinds[:-1]) + " or " + kinds[-1]
    if not isinstance(state, Mapping) or not state:
        raise TypeError(f"{str(path)!r} holds {_describe(obj)}; expected {expected}")
    non_tensors = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if non_tensors:
        where = "" if container == "plain" else f" in its {container!r} entry"
        raise TypeError(
            f"{str(path)!r} holds {_describe(obj)} with non-tensor entries{where} "
            f"{non_tensors[:_MAX_LISTED]}; expected {expected}"
        )
    return {str(k): v for k, v in state.items()}, container


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:_MAX_LISTED]]
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"an object of type {type(obj).__name__}"


def _top_level_names(state: Collection[str]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in state})[:10]


# ----------------------------------------------------------------------------- foreign layouts
_BN = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_TOP_LEVEL = re.compile(rf"^(?:conv1\.weight|bn1\.{_BN}|fc\.(?:weight|bias))$")


@dataclass(frozen=True)
class _Layout:
    """A foreign WRN key layout: how to recognise it and how to rename it to ours.

    Attributes:
        name: Who writes this layout, for messages.
        shortcut_input: The :class:`WideResNet` variant that computes the same function.
        block: Pattern every non-top-level key must match; its groups are the stage, the
            block index and the rest of the key (module and tensor name).
        marker: Pattern at least one key must match.
        renames: ``(old, new)`` module names inside a block.
    """

    name: str
    shortcut_input: str
    block: re.Pattern[str]
    marker: re.Pattern[str]
    renames: tuple[tuple[str, str], ...]

    def matches(self, keys: Collection[str]) -> bool:
        """Whether every key fits this layout and the marker is present."""
        fits = all(_TOP_LEVEL.match(k) or self.block.match(k) for k in keys)
        return fits and any(self.marker.match(k) for k in keys) and "conv1.weight" in keys

    def rename(self, key: str) -> str:
        """This library's name for ``key``."""
        found = self.block.match(key)
        if found is None:  # top level: only the final norm is named differently
            return "bn." + key[len("bn1.") :] if key.startswith("bn1.") else key
        stage, index, rest = found.groups()
        for old, new in self.renames:
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
        return f"layer{stage}.{index}.{rest}"

    def translate(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {self.rename(k): v for k, v in state.items()}


_LAYOUTS = (
    _Layout(
        name="RepDistiller / mdistiller WideResNet",
        shortcut_input="preact",
        block=re.compile(
            rf"^block([1-3])\.layer\.(\d+)\.((?:bn1|bn2)\.{_BN}|(?:conv1|conv2|convShortcut)\.weight)$"
        ),
        marker=re.compile(r"^block1\.layer\.0\.conv1\.weight$"),
        renames=(("convShortcut", "shortcut"),),
    ),
    _Layout(
        name="torchdistill WideResNet",
        shortcut_input="raw",
        block=re.compile(
            rf"^layer([1-3])\.(\d+)\.((?:bn1|bn2)\.{_BN}|(?:conv1|conv2|shortcut\.0)\.weight)$"
        ),
        marker=re.compile(r"^layer[1-3]\.\d+\.shortcut\.0\.weight$"),
        renames=(("shortcut.0", "shortcut"),),
    ),
)


def _detect_layout(keys: Collection[str]) -> _Layout | None:
    found = [layout for layout in _LAYOUTS if layout.matches(keys)]
    assert len(found) <= 1, "the foreign layouts are mutually exclusive"
    return found[0] if found else None


def _wrn_arguments(state: Mapping[str, Tensor]) -> str:
    """``WideResNet`` arguments that fit a translated WRN state dict, e.g. ``depth=16, ...``."""
    blocks = {k.split(".")[1] for k in state if k.startswith("layer1.")}
    parts = [f"depth={6 * len(blocks) + 4}"]
    conv = state.get("layer1.0.conv1.weight")
    if conv is not None:
        parts.append(f"widen_factor={conv.shape[0] // 16}")
    fc = state.get("fc.weight")
    parts.append(f"num_classes={fc.shape[0] if fc is not None else 0}")
    return ", ".join(parts)


def _check_layout_target(
    model: nn.Module, layout: _Layout, state: Mapping[str, Tensor], file: Path
) -> None:
    """Refuse a recognised foreign WRN for a model that would not compute its function."""
    arguments = _wrn_arguments(layout.translate(state))
    wanted = f"WideResNet({arguments}, shortcut_input={layout.shortcut_input!r})"
    example = next(k for k in state if layout.marker.match(k))
    got = f"{str(file)!r} holds a {layout.name} state dict (keys such as {example!r})"
    if not isinstance(model, WideResNet):
        raise ValueError(
            f"{got}, which loads into lightning_kd.models.{wanted}, not into {type(model).__name__}"
        )
    if model.shortcut_input != layout.shortcut_input:
        theirs = _SHORTCUT_WORDS[layout.shortcut_input]
        ours = _SHORTCUT_WORDS[model.shortcut_input]
        raise ValueError(
            f"{got}, whose projection shortcuts take {theirs}; the model is "
            f"WideResNet(shortcut_input={model.shortcut_input!r}), whose shortcuts take "
            f"{ours}: the parameters would fit but compute a different function. Build "
            f"{wanted} to load this file"
        )


_SHORTCUT_WORDS = {
    "preact": "the pre-activated block input relu(bn1(x))",
    "raw": "the raw block input x",
}


# ----------------------------------------------------------------------------- matching
def _select_view(
    state: dict[str, Tensor],
    model_state: Mapping[str, Tensor],
    prefixes: Sequence[str],
    path: Path,
) -> tuple[str, dict[str, Tensor], _Layout | None]:
    """Pick the prefix (and wrapper re-prefixing) under which ``state`` fits the model.

    A view whose keys are exactly the model's wins, first untranslated, then after translating
    a recognised foreign layout; otherwise the view sharing the most (translated) keys.

    Returns:
        The chosen prefix, the re-keyed (not yet translated) state dict and its foreign layout
        (None for this library's own key names).
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
            return p, view, None
    candidates: list[tuple[str, dict[str, Tensor], _Layout | None, set[str]]] = []
    for p, view in views:
        layout = _detect_layout(view.keys())
        keys = set(view) if layout is None else {layout.rename(k) for k in view}
        if keys == model_keys:
            return p, view, layout
        candidates.append((p, view, layout, keys))
    overlaps = [len(model_keys & keys) for *_, keys in candidates]
    if not candidates or max(overlaps) == 0:
        # A recognised foreign layout says more than "no key matches".
        for p, view, layout, _ in candidates:
            if layout is not None:
                return p, view, layout
        tried = ", ".join(repr(p) for p in prefixes)
        raise ValueError(
            f"no key of {str(path)!r} matches the model after stripping any of the prefixes "
            f"[{tried}]; checkpoint keys start with {_top_level_names(state)}, model keys with "
            f"{_top_level_names(model_state)}; pass prefix= to choose the sub-module to load"
        )
    p, view, layout, _ = candidates[overlaps.index(max(overlaps))]
    return p, view, layout


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
    layout: _Layout | None,
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
        notes = [f"prefix {prefix!r}"] if prefix else []
        if layout is not None:
            notes.append(f"{layout.name} key names translated, shown as this library's")
        where = f" ({'; '.join(notes)})" if notes else ""
        raise ValueError(
            f"cannot load {str(file)!r}{where} into {type(model).__name__}:\n  "
            + "\n  ".join(problems)
        )
    return [k for k, _, _ in classifier] if skip_mismatched_classifier else []
