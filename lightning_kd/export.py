"""``lightning-kd export``: the deployable network of a run as ONNX, TorchScript or a state dict.

::

    lightning-kd export --ckpt runs/quickstart/seed0/student_kd/version_0/final.ckpt \\
        --format onnx --out student_kd.onnx

The network is the module's :meth:`~lightning_kd.modules.base.LightningKDModule.exported_model`
(the student of a KD module, the EMA teacher of Mean Teacher by default, the backbone of DINO /
BYOL, the model of a classifier; see :mod:`lightning_kd.report.loading`), in eval mode. It
takes images normalised as its datamodule normalises them (float32 ``(B, C, H, W)``; ``H``,
``W`` fixed by ``--input-shape``, the batch ``B`` free) and returns what the network returns
(logits ``(B, num_classes)`` for a classifier).

* ``onnx``: ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``: it
  needs no package beyond torch; the torch.export-based one, torch's default since 2.9, needs
  ``onnxscript``), opset 17,
  input ``"input"``, output ``"output"``, a dynamic batch axis on both. When onnxruntime is
  installed (``pip install 'lightning-kd[onnx]'``) the file is run on random batches of 1 and
  3 images and its outputs must equal PyTorch's (``allclose``, rtol 1e-3, atol 1e-4).
* ``torchscript``: ``torch.jit.trace`` then ``torch.jit.save``; reloaded and checked the same
  way. (PyTorch deprecates TorchScript in favour of ``torch.export``; the file still loads with
  ``torch.jit.load`` and in LibTorch.)
* ``state_dict``: ``torch.save(network.state_dict())``, what ``module.export(path)`` writes,
  plus the network's ``class_path`` / ``init_args`` in ``<stem>.network.yaml`` beside it,
  which ``lightning-kd report`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import Tensor, nn

__all__ = [
    "FORMATS",
    "RoundTrip",
    "check_onnx",
    "check_torchscript",
    "export_onnx",
    "export_state_dict",
    "export_torchscript",
    "main",
    "onnxruntime_available",
    "onnxruntime_session",
]

ExportFormat = Literal["onnx", "torchscript", "state_dict"]
#: The formats of ``--format``.
FORMATS: tuple[ExportFormat, ...] = ("onnx", "torchscript", "state_dict")
#: Opset of the ONNX files.
ONNX_OPSET = 17
#: Names of the ONNX graph's input and output.
ONNX_INPUT, ONNX_OUTPUT = "input", "output"
#: Tolerances of the round-trip checks (float32 logits).
RTOL, ATOL = 1e-3, 1e-4
#: Batch sizes of the round-trip checks: one image, and a batch size other than the traced one.
CHECK_BATCH_SIZES = (1, 3)
#: The batch size the network is traced / exported with.
EXAMPLE_BATCH_SIZE = 2
ONNX_EXTRA_HINT = "pip install 'lightning-kd[onnx]' (onnx and onnxruntime)"


@dataclass(frozen=True)
class RoundTrip:
    """An exported file run against the PyTorch network.

    Attributes:
        runtime: What ran the file (``"onnxruntime 1.18.0"``, ``"torch.jit"``).
        batch_sizes: The random batches' sizes.
        max_abs_diff: The largest ``|file - torch|`` over every output element.
    """

    runtime: str
    batch_sizes: tuple[int, ...]
    max_abs_diff: float


def _example(input_shape: Sequence[int], batch_size: int, seed: int = 0) -> Tensor:
    """Random normal float32 images ``(batch_size, *input_shape)`` (normalised images are
    roughly standard normal)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *input_shape, generator=generator)


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"input shape must be positive sizes without the batch, e.g. 3 32 32, got {shape}"
        )
    return shape


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Hide PyTorch's notices that TorchScript and the TorchScript-based ONNX exporter are
    deprecated (their files are what is asked for); other warnings stay visible."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r".*legacy TorchScript-based ONNX"
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*will be removed")
        yield


def _outputs(value: Any) -> list[Tensor]:
    """The tensors of a network's output, flattened in order (a tensor, tuple, list or dict)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _outputs(v)]
    raise TypeError(f"the network returned {type(value).__name__}, expected tensors")


def _compare(reference: list[Tensor], got: list[Any], what: str, batch: int) -> float:
    if len(reference) != len(got):
        raise ValueError(
            f"{what} returned {len(got)} outputs for a batch of {batch}, PyTorch {len(reference)}"
        )
    worst = 0.0
    for expected, value in zip(reference, got, strict=True):
        actual = torch.as_tensor(value).float()
        if actual.shape != expected.shape:
            raise ValueError(
                f"{what} returned shape {tuple(actual.shape)} for a batch of {batch}, PyTorch "
                f"{tuple(expected.shape)}"
            )
        diff = float((actual - expected.float()).abs().max()) if expected.numel() else 0.0
        worst = max(worst, diff)
        if not torch.allclose(actual, expected.float(), rtol=RTOL, atol=ATOL):
            raise ValueError(
                f"{what} differs from PyTorch on a random batch of {batch}: max |diff| "
                f"{diff:.3g} > atol {ATOL} + rtol {RTOL} * |torch|"
            )
    return worst


# ----------------------------------------------------------------------------- formats
def export_state_dict(
    network: nn.Module, path: str | Path, *, spec: dict[str, Any] | None = None
) -> list[Path]:
    """``torch.save(network.state_dict(), path)``, and with ``spec`` (the network's
    ``class_path`` / ``init_args``) the config beside it (``<stem>.network.yaml``).

    Returns:
        The files written.
    """
    from lightning_kd.report.loading import network_config_path

    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), file)
    written = [file]
    if spec is not None:
        sidecar = network_config_path(file)
        header = (
            f"# The network of {file.name}: build it from this config and load the state dict "
            "into it\n# (lightning-kd report reads it; in Python: "
            "lightning_kd.report.loading.load_network).\n"
        )
        sidecar.write_text(header + yaml.safe_dump(spec, sort_keys=False))
        written.append(sidecar)
    return written


def export_torchscript(network: nn.Module, path: str | Path, example: Tensor) -> Path:
    """Trace ``network`` (eval mode) on ``example`` ``(B, ...)`` and save it."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    network.eval()
    with _quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(network, example)
        torch.jit.save(traced, str(file))
    return file


def export_onnx(
    network: nn.Module, path: str | Path, example: Tensor, *, opset: int = ONNX_OPSET
) -> Path:
    """Export ``network`` (eval mode) to ONNX with a dynamic batch axis, and check the file
    with ``onnx.checker`` when onnx is installed.

    Uses the TorchScript-based exporter (``dynamo=False`` where torch has the argument, i.e.
    torch >= 2.5, where the torch.export-based one became the default in 2.9): it needs no
    package beyond torch, where the torch.export-based one needs ``onnxscript``.

    Args:
        network: The network.
        path: The ``.onnx`` file to write.
        example: An input batch ``(B, ...)`` (its sizes other than the batch are fixed).
        opset: ONNX opset version.
    """
    import inspect

    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    network.eval()
    options: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    with _quiet_deprecations(), torch.no_grad():
        torch.onnx.export(
            network,
            (example,),
            str(file),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=opset,
            **options,
        )
    try:
        import onnx
    except ModuleNotFoundError:
        return file
    onnx.checker.check_model(str(file))
    return file


# ----------------------------------------------------------------------------- checks
def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnxruntime_session(path: str | Path, *, threads: int | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads; ``None``: ``torch.get_num_threads()``, so that the two
            runtimes are timed with the same thread count.

    Raises:
        ModuleNotFoundError: If onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModuleNotFoundError(f"onnxruntime is not installed: {ONNX_EXTRA_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(
    network: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = CHECK_BATCH_SIZES,
) -> RoundTrip:
    """Run the ONNX file with onnxruntime on random batches and compare with ``network``.

    Raises:
        ModuleNotFoundError: If onnxruntime is not installed.
        ValueError: If an output differs (``allclose``, :data:`RTOL`, :data:`ATOL`).
    """
    import onnxruntime as ort

    session = onnxruntime_session(path)
    name = session.get_inputs()[0].name
    worst = 0.0
    for k, batch in enumerate(batch_sizes):
        x = _example(input_shape, batch, seed=1 + k)
        with torch.inference_mode():
            reference = _outputs(network(x))
        got = session.run(None, {name: x.numpy()})
        worst = max(worst, _compare(reference, got, f"the ONNX file {str(path)!r}", batch))
    return RoundTrip(f"onnxruntime {ort.__version__}", tuple(batch_sizes), worst)


def check_torchscript(
    network: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = CHECK_BATCH_SIZES,
) -> RoundTrip:
    """Reload the TorchScript file with ``torch.jit.load`` and compare with ``network`` on
    random batches.

    Raises:
        ValueError: If an output differs.
    """
    with _quiet_deprecations():
        loaded = torch.jit.load(str(path), map_location="cpu")
    worst = _worst_difference(
        network, loaded, input_shape, batch_sizes, f"the TorchScript file {str(path)!r}"
    )
    return RoundTrip("torch.jit", tuple(batch_sizes), worst)


def check_state_dict(
    network: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = CHECK_BATCH_SIZES,
) -> RoundTrip:
    """Rebuild the network from the state dict and its ``.network.yaml`` and compare."""
    from lightning_kd.report.loading import load_network

    loaded = load_network(path).network
    worst = _worst_difference(
        network, loaded, input_shape, batch_sizes, f"the state dict {str(path)!r}"
    )
    return RoundTrip("load_state_dict", tuple(batch_sizes), worst)


def _worst_difference(
    network: nn.Module,
    loaded: Any,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    what: str,
) -> float:
    """The largest absolute difference between ``network`` and the reloaded ``loaded`` on
    random batches of each size (``_compare`` raises if one is not close)."""
    worst = 0.0
    for k, batch in enumerate(batch_sizes):
        x = _example(input_shape, batch, seed=1 + k)
        with torch.inference_mode():
            reference = _outputs(network(x))
            got = _outputs(loaded(x))
        worst = max(worst, _compare(reference, got, what, batch))
    return worst


# ----------------------------------------------------------------------------- command
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-kd export",
        description="Write the deployable network of a run (the module's exported_model(): "
        "the student of a KD module, the EMA teacher where the method exports it) as ONNX, "
        "TorchScript or a state dict, and check the file against PyTorch.",
    )
    parser.add_argument(
        "--ckpt",
        required=True,
        metavar="FILE",
        help="a checkpoint of a lightning-kd module, or a weights file (with --network)",
    )
    parser.add_argument(
        "--network",
        metavar="CONFIG",
        default=None,
        help="the network config of a weights file: YAML file or inline YAML with class_path "
        "and init_args (default: <stem>.network.yaml beside it)",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument(
        "--input-shape",
        type=int,
        nargs="+",
        default=[3, 32, 32],
        metavar="N",
        help="the input's shape without the batch (default: 3 32 32, CIFAR)",
    )
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset (default: 17)")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="filled into a --network config that leaves num_classes out",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="do not run the file against PyTorch"
    )
    return parser


def main(argv: list[str]) -> None:
    """``lightning-kd export``: see the module docstring and ``--help``."""
    from lightning_kd.report.loading import load_network
    from lightning_kd.report.measure import count_parameters

    args = _parser().parse_args(argv)
    input_shape = _check_input_shape(args.input_shape)
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {args.out!r} is a directory; expected a file name")
    loaded = load_network(args.ckpt, args.network, num_classes=args.num_classes)
    network = loaded.network.float().eval()
    print(
        f"network: {loaded.description} ({count_parameters(network):,} parameters), the "
        f"{loaded.origin} in {loaded.source}"
    )
    example = _example(input_shape, EXAMPLE_BATCH_SIZE)
    fmt: ExportFormat = args.format
    check: RoundTrip | None = None
    skipped = ""
    if fmt == "onnx":
        written = [export_onnx(network, out, example, opset=args.opset)]
        if not args.no_check:
            if onnxruntime_available():
                check = check_onnx(network, out, input_shape)
            else:
                skipped = f"onnxruntime is not installed ({ONNX_EXTRA_HINT})"
    elif fmt == "torchscript":
        written = [export_torchscript(network, out, example)]
        if not args.no_check:
            check = check_torchscript(network, out, input_shape)
    else:
        written = export_state_dict(network, out, spec=loaded.spec)
        if loaded.spec is None:
            skipped = (
                "the checkpoint does not record the network's config, so no .network.yaml was "
                "written: give the config with the file to lightning-kd report"
            )
        elif not args.no_check:
            check = check_state_dict(network, out, input_shape)
    shape = "(batch, " + ", ".join(str(s) for s in input_shape) + ")"
    for file in written:
        print(f"wrote {file} ({file.stat().st_size:,} bytes)")
    print(
        f"input: float32 {shape}, images normalised as the run's datamodule normalises them"
        + ("; the batch axis is dynamic" if fmt != "state_dict" else "")
    )
    if check is not None:
        sizes = " and ".join(str(b) for b in check.batch_sizes)
        print(
            f"check: {check.runtime} matches PyTorch on random batches of {sizes} images "
            f"(max |diff| {check.max_abs_diff:.2g})"
        )
    elif skipped:
        print(f"check skipped: {skipped}")
