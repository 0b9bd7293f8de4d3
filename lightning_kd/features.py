"""Capture intermediate features of any network by submodule name, with forward hooks.

:class:`FeatureTaps` registers one hook per submodule name (a name from
``model.named_modules()``, such as ``"layer3"``, ``"features.6"`` or ``"net.layer3"``), so
features are read from an unmodified model: no forward is rewritten and no wrapper class is
needed. During a forward each hook stores its tensor under its name; :meth:`FeatureTaps.pop`
hands them over and empties the store, so nothing outlives the training step.

:func:`feature_shapes` runs one dry-run forward to learn the shapes of the tapped features,
which is what projectors are sized from at construction time.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import Self

__all__ = ["FeatureTaps", "feature_shapes"]

_CAPTURES = ("output", "input")


class FeatureTaps:
    """Forward hooks that capture the outputs (or inputs) of named submodules.

    Typical use inside a training step::

        taps = FeatureTaps(student, ["layer2", "layer3"])  # once, at construction
        logits = student(x)  # (B, C); the hooks fill the store
        feats = taps.pop()  # {"layer2": (B, C2, H2, W2), "layer3": (B, C3, H3, W3)}

    or as a context manager, which removes the hooks on exit::

        with FeatureTaps(model, ["features.6"]) as taps:
            model(x)
            feats = taps.pop()

    Captured tensors are stored exactly as produced: with their autograd graph (student
    features need gradients), in the autocast dtype under ``torch.autocast`` (e.g. bfloat16),
    and as inference tensors under ``torch.inference_mode()``. Run the teacher under
    ``torch.no_grad()`` or ``torch.inference_mode()``; inference tensors must be ``.clone()``-d
    outside inference mode before a loss saves them for backward (as
    :meth:`~lightning_kd.modules.kd.KDModule.teacher_logits` does for logits).

    Details:

    * A module whose output is a tuple or list (e.g. ``nn.LSTM``) is captured as the first
      ``Tensor`` element of it. With ``capture="input"`` the first positional argument of the
      module's call is captured, with the same rule when it is a tuple or list.
    * A module called several times in one forward (a shared ``nn.ReLU``, a weight-tied layer)
      keeps the **last** call's tensor.
    * Input capture uses a forward pre-hook, output capture a forward hook. A captured tensor
      that is later modified in place (e.g. the output of a ``BatchNorm2d`` that is followed
      by ``nn.ReLU(inplace=True)``) holds the modified values; :meth:`pop` warns when it sees
      this (inference tensors carry no version counter and are not checked).
    * The taps hold no reference to the model, only the hook handles and, between a forward
      and :meth:`pop`, the captured tensors of that forward. Tensors captured by a forward
      that is never popped (e.g. an evaluation forward) are overwritten by the next forward;
      :meth:`clear` drops them at once.
    * Hooks are plain module hooks, so they fire on the inner module when it runs inside
      ``DistributedDataParallel``. Call :meth:`remove` (or use ``with``) to take them off;
      garbage collection of this object does not remove them.

    Args:
        model: Any network; it is not modified apart from the registered hooks.
        names: Submodule names as in ``model.named_modules()``, unique; ``""`` is the model
            itself. May be empty (no hooks, :meth:`pop` returns ``{}``).
        capture: ``"output"`` to capture what each module returns, ``"input"`` to capture
            its first positional input.

    Raises:
        TypeError: If ``names`` is a single string instead of a sequence of names.
        ValueError: If ``capture`` is not ``"output"`` or ``"input"``, a name appears twice,
            or a name is not a submodule of ``model`` (the message lists the closest valid
            names and how many named submodules ``model`` has).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        *,
        capture: Literal["output", "input"] = "output",
    ) -> None:
        if capture not in _CAPTURES:
            raise ValueError(f"capture must be 'output' or 'input', got {capture!r}")
        if isinstance(names, str):
            raise TypeError(
                f"names must be a sequence of submodule names, got the string {names!r}; "
                f"pass [{names!r}] to tap a single module"
            )
        names = tuple(names)
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"names must be unique, got {repeated} more than once in {names}")
        modules = [_submodule(model, name) for name in names]  # validate all before hooking

        self.names: tuple[str, ...] = names
        self.capture: Literal["output", "input"] = capture
        self._features: dict[str, Tensor] = {}
        self._versions: dict[str, int | None] = {}  # version counters at capture time
        self._handles: list[RemovableHandle] = []
        for name, module in zip(names, modules, strict=True):
            if capture == "output":
                handle = module.register_forward_hook(self._output_hook(name))
            else:
                handle = module.register_forward_pre_hook(self._input_hook(name))
            self._handles.append(handle)

    def pop(self) -> dict[str, Tensor]:
        """Return the features captured since the last call and empty the store.

        Returns:
            ``{name: tensor}`` in the order of ``names``; shapes are whatever the modules
            produce, e.g. ``(B, C, H, W)`` for convolutional stages and ``(B, D)`` for
            vectors.

        Raises:
            RuntimeError: If a tapped module did not run since the last :meth:`pop` (no
                forward was run, or the forward skips that module). The store is emptied
                anyway.

        Warns:
            UserWarning: If a captured tensor was modified in place after its capture.
        """
        features, versions = self._features, self._versions
        self.clear()
        missing = [name for name in self.names if name not in features]
        if missing:
            raise RuntimeError(
                f"no {self.capture} was captured for {missing} since the last pop() "
                f"(captured: {sorted(features)}); run the model's forward before pop(), and "
                "check that its forward calls these modules"
            )
        for name in self.names:
            version = versions[name]
            if version is not None and features[name]._version != version:
                warnings.warn(
                    f"the {self.capture} of {name!r} was modified in place after it was "
                    "captured (e.g. by a following nn.ReLU(inplace=True)), so pop() returns the "
                    "modified values; tap the module that modifies it, or make that operation "
                    "out-of-place, to get well-defined features",
                    UserWarning,
                    stacklevel=2,
                )
        return {name: features[name] for name in self.names}

    def clear(self) -> None:
        """Drop the captured tensors without returning them."""
        self._features = {}
        self._versions = {}

    def remove(self) -> None:
        """Remove all hooks from the model and drop captured tensors. Safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(names={list(self.names)}, capture={self.capture!r}, "
            f"hooked={bool(self._handles)})"
        )

    def _output_hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._store(name, output)

        return hook

    def _input_hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args:
                raise TypeError(
                    f"cannot capture the input of {name!r}: it was called without positional "
                    "arguments (capture='input' takes the first positional one)"
                )
            self._store(name, args[0])

        return hook

    def _store(self, name: str, value: Any) -> None:
        tensor = _first_tensor(value)
        if tensor is None:
            raise TypeError(
                f"cannot capture the {self.capture} of {name!r}: expected a Tensor or a "
                f"tuple/list holding one, got {type(value).__name__}"
            )
        self._features[name] = tensor
        self._versions[name] = None if tensor.is_inference() else tensor._version


def feature_shapes(
    model: nn.Module,
    names: Sequence[str],
    example: Tensor,
    *,
    capture: Literal["output", "input"] = "output",
) -> dict[str, torch.Size]:
    """Shapes of the tapped features for one example batch, from a dry-run forward.

    The forward runs under ``torch.no_grad()`` with the whole model in eval mode, so
    BatchNorm running statistics and other buffers updated in training mode are left
    untouched. Afterwards every submodule gets back its own previous ``training`` flag (a
    model mixing train- and eval-mode parts is restored as it was), also when the forward
    raises. No hooks are left on the model.

    Args:
        model: The network to probe.
        names: Submodule names, as for :class:`FeatureTaps`.
        example: An input batch the model accepts, e.g. ``(B, 3, H, W)`` images, on the
            model's device.
        capture: ``"output"`` or ``"input"``, as for :class:`FeatureTaps`.

    Returns:
        ``{name: shape}`` in the order of ``names``; shapes include the batch dimension.

    Raises:
        TypeError, ValueError: As :class:`FeatureTaps` for bad ``names`` or ``capture``.
        RuntimeError: If the forward does not call a tapped module.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with FeatureTaps(model, names, capture=capture) as taps, torch.no_grad():
            model(example)
            features = taps.pop()
    finally:
        for module, training in modes:
            module.training = training
    return {name: feature.shape for name, feature in features.items()}


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that suggests the closest valid names."""
    if not isinstance(name, str):
        raise TypeError(f"submodule names must be str, got {type(name).__name__} {name!r}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    valid = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, valid, n=5)
    if close:
        hint = f"closest names: {close}"
    else:
        hint = f"top-level names: {[n for n in valid if '.' not in n][:10]}"
    raise ValueError(
        f"{type(model).__name__} has no submodule named {name!r} ({len(valid)} named "
        f"submodules); {hint}; see model.named_modules() for all names"
    )


def _first_tensor(value: Any) -> Tensor | None:
    """``value`` itself if it is a tensor, else the first tensor in a tuple/list, else None."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list):
        for item in value:
            if isinstance(item, Tensor):
                return item
    return None
