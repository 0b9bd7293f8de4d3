"""lightning-kd export: ONNX, TorchScript and state-dict files that compute what PyTorch does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_report import KD, SMALL_CNN_PARAMETERS, fit_tiny_run
from tiny import TinyNet

from lightning_kd.cli import main
from lightning_kd.export import (
    check_onnx,
    check_torchscript,
    export_onnx,
    export_state_dict,
    export_torchscript,
)
from lightning_kd.models import SmallCNN
from lightning_kd.report.loading import load_network

ONNXRUNTIME_MISSING = "onnxruntime is not installed (pip install 'lightning-kd[onnx]')"
# The tests reload TorchScript files themselves; PyTorch's notice that TorchScript is deprecated
# is not what they test.
JIT_DEPRECATED = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*:FutureWarning")


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in eval mode with BatchNorm statistics that are not the identity."""
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def kd_checkpoint(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KD run, student SmallCNN(width=4) and teacher SmallCNN(width=8) (saved with it)."""
    root = tmp_path_factory.mktemp("export_runs")
    kd = KD.format(width=4, teacher_width=8, teacher_checkpoint="null", save_teacher_weights="true")
    return fit_tiny_run(root, "kd", kd, cifar10_dir)


def test_onnx_round_trip_equals_pytorch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason=ONNXRUNTIME_MISSING)
    net = _trained_like(TinyNet(num_classes=5, width=6))
    path = export_onnx(net, tmp_path / "tiny.onnx", torch.randn(2, 3, 8, 8))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch axis is dynamic: neither is the exported batch of 2
        x = torch.randn(batch, 3, 8, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.inference_mode():
            expected = net(x)
        assert got.shape == (batch, 5)
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
    check = check_onnx(net, path, (3, 8, 8))
    assert check.batch_sizes == (1, 3) and check.max_abs_diff < 1e-4


def test_onnx_check_refuses_a_file_of_another_network(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason=ONNXRUNTIME_MISSING)
    path = export_onnx(
        _trained_like(TinyNet(num_classes=3)), tmp_path / "a.onnx", torch.randn(2, 3, 8, 8)
    )
    other = _trained_like(TinyNet(num_classes=3))
    torch.nn.init.normal_(other.fc.weight, std=5.0)
    with pytest.raises(ValueError, match="differs from PyTorch on a random batch of 1"):
        check_onnx(other, path, (3, 8, 8))


@JIT_DEPRECATED
def test_torchscript_round_trip(tmp_path: Path) -> None:
    net = _trained_like(SmallCNN(num_classes=10, width=4))
    path = export_torchscript(net, tmp_path / "net.pt", torch.randn(2, 3, 32, 32))
    loaded = torch.jit.load(str(path))
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net(x))
    assert check_torchscript(net, path, (3, 32, 32)).max_abs_diff < 1e-5


def test_state_dict_export_loads_into_the_network(tmp_path: Path) -> None:
    net = _trained_like(SmallCNN(num_classes=10, width=4))
    spec = {
        "class_path": "lightning_kd.models.SmallCNN",
        "init_args": {"width": 4, "num_classes": 10},
    }
    weights, sidecar = export_state_dict(net, tmp_path / "student.pt", spec=spec)
    assert sidecar == tmp_path / "student.network.yaml"
    assert yaml.safe_load(sidecar.read_text()) == spec
    fresh = SmallCNN(num_classes=10, width=4)
    fresh.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fresh.eval()(x), net(x))
    # The report finds the config beside the file.
    loaded = load_network(weights)
    assert loaded.description == "SmallCNN(width=4)" and loaded.module is None


@JIT_DEPRECATED
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "state_dict"])
def test_export_command_writes_the_student_of_a_kd_checkpoint(
    fmt: str, kd_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason=ONNXRUNTIME_MISSING)
    out = tmp_path / f"student.{fmt}"
    main(["export", "--ckpt", str(kd_checkpoint), "--format", fmt, "--out", str(out)])
    printed = capsys.readouterr().out
    assert (
        f"SmallCNN(width=4) ({SMALL_CNN_PARAMETERS[4]:,} parameters), the student of KDModule"
        in printed
    )
    assert "matches PyTorch on random batches of 1 and 3 images" in printed
    student = load_network(kd_checkpoint).network
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected = student(x)
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        elif fmt == "torchscript":
            got = torch.jit.load(str(out))(x)
        else:
            net = SmallCNN(num_classes=10, width=4).eval()
            net.load_state_dict(torch.load(out, weights_only=True))
            got = net(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_export_without_onnxruntime_says_how_to_check(
    kd_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    out = tmp_path / "student.onnx"
    main(["export", "--ckpt", str(kd_checkpoint), "--format", "onnx", "--out", str(out)])
    printed = capsys.readouterr().out
    assert out.stat().st_size > 0
    assert (
        "check skipped: onnxruntime is not installed (pip install 'lightning-kd[onnx]'" in printed
    )


def _error_line(capsys: pytest.CaptureFixture[str], args: list[str], code: int) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == code
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_export_errors_are_one_line(
    kd_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "x.onnx")]
    line = _error_line(capsys, ["export", "--ckpt", "missing.ckpt", "--format", "onnx", *out], 1)
    assert line.startswith("lightning-kd export: error: 'missing.ckpt' does not exist")

    line = _error_line(
        capsys, ["export", "--ckpt", str(kd_checkpoint), "--format", "tflite", *out], 2
    )
    assert line.startswith(
        "lightning-kd export: error: argument --format: invalid choice: 'tflite'"
    )

    args = ["export", "--ckpt", str(kd_checkpoint), "--format", "onnx", "--out", str(tmp_path)]
    line = _error_line(capsys, args, 1)
    assert "is a directory; expected a file name" in line

    weights = tmp_path / "w.pt"
    torch.save(SmallCNN(width=4).state_dict(), weights)
    args = [
        "export",
        "--ckpt",
        str(weights),
        "--network",
        "{init_args: {width: 4}}",
        "--format",
        "onnx",
        *out,
    ]
    line = _error_line(capsys, args, 1)
    assert line.startswith("lightning-kd export: error: ") and "has no class_path" in line
