"""The teacher cache: built once over the exact training views, replayed exactly, refused when
it was built for something else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_ddp import _run_ddp_script
from tiny import TinyNet, trainer
from torch import Tensor

from lightning_kd.caching import TeacherCache, build_cache, rebuild_logits
from lightning_kd.caching.store import MANIFEST, done_file, epoch_files
from lightning_kd.cli import main
from lightning_kd.data import CIFAR10DataModule, CropFlip, MixUp, StrongAugment, ViewKeys
from lightning_kd.losses import kd_loss
from lightning_kd.modules import FeatureKDModule, HintTerm, KDModule, Teacher
from lightning_kd.modules.mlkd import MLKDModule
from lightning_kd.modules.terms import DKDTerm


def _datamodule(data_dir: Path, **kwargs: object) -> CIFAR10DataModule:
    settings: dict[str, object] = {"batch_size": 16, "view_seed": 3, "val_split": 40}
    settings.update(kwargs)
    return CIFAR10DataModule(data_dir=str(data_dir), **settings)  # type: ignore[arg-type]


def _teacher(seed: int = 1, width: int = 8) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(10, width)


def _student() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(10, 4)


def _build(module: KDModule, data_dir: Path, out: Path, **kwargs: object) -> None:
    datamodule = _datamodule(data_dir, **kwargs.pop("data", {}))  # type: ignore[arg-type]
    datamodule.setup("fit")
    settings: dict[str, object] = {
        "epochs": 2,
        "precision": "32-true",
        "dtype": "float32",
        "chunk_rows": 64,
        "progress": False,
    }
    settings.update(kwargs)
    build_cache(module, datamodule, out, **settings)  # type: ignore[arg-type]


def _fit(module: KDModule, data_dir: Path, *, epochs: int = 2, **data: object) -> dict[str, Tensor]:
    L.seed_everything(0)
    fit = trainer(max_epochs=epochs, limit_val_batches=1)
    fit.fit(module, datamodule=_datamodule(data_dir, **data))
    return {k: v.clone() for k, v in module.student.state_dict().items()}


def _assert_close(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _moved(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


# ---------------------------------------------------------------------- the store
def test_top_k_rebuild_by_hand() -> None:
    # Logits [3, 1, 0, -4], top 2 kept: the other two become their mean, (0 + -4) / 2 = -2.
    values = torch.tensor([[3.0, 1.0]])
    indices = torch.tensor([[0, 1]])
    rest = torch.tensor([-2.0])
    assert rebuild_logits(values, indices, rest, 4).tolist() == [[3.0, 1.0, -2.0, -2.0]]
    # Classes in any order: top 2 of [0, 5, -1, 2] are 5 (class 1) and 2 (class 3).
    out = rebuild_logits(torch.tensor([5.0, 2.0]), torch.tensor([1, 3]), torch.tensor(-0.5), 4)
    assert out.tolist() == [-0.5, 5.0, -0.5, 2.0]


def test_cache_holds_the_teacher_on_the_exact_views(cifar10_dir: Path, tmp_path: Path) -> None:
    teacher = _teacher()
    module = KDModule(_student(), teacher)
    _build(module, cifar10_dir, tmp_path / "c")
    cache = TeacherCache(tmp_path / "c")
    manifest = cache.manifest
    assert (manifest.epochs, manifest.size, manifest.num_views, manifest.num_teachers) == (
        2,
        160,
        1,
        1,
    )
    assert manifest.transform == "CropFlip(padding=4, flip_prob=0.5, num_views=1)"
    # Row p of epoch e is the teacher on the view make_views gives image p in epoch e.
    datamodule = _datamodule(cifar10_dir)
    datamodule.setup("fit")
    train = datamodule.train_dataset
    assert train is not None
    positions = torch.tensor([0, 7, 159])
    for epoch in (0, 1):
        (view,) = datamodule.make_views(
            train.images[positions], train.file_indices[positions], epoch
        )
        with torch.no_grad():
            expected = teacher(view)
        got = cache.lookup(epoch, positions)
        assert got.shape == (3, 1, 1, 10)
        torch.testing.assert_close(got[:, 0, 0], expected, rtol=1e-5, atol=1e-5)
    # The two epochs hold different views.
    assert not torch.allclose(cache.lookup(0, positions), cache.lookup(1, positions))
    with pytest.raises(ValueError, match=r"covers epochs 0\.\.1, the run asked for epoch 2"):
        cache.lookup(2, positions)


def test_interrupted_build_continues_where_it_stopped(cifar10_dir: Path, tmp_path: Path) -> None:
    module = KDModule(_student(), _teacher())
    out = tmp_path / "c"
    _build(module, cifar10_dir, out)
    (logits_file,) = epoch_files(out, 1, None).values()
    full = np.load(logits_file).copy()
    # As if interrupted in epoch 1 after chunk 0: chunk 1 (rows 64..127) never written.
    partial = np.load(logits_file, mmap_mode="r+")
    partial[64:128] = 0
    partial.flush()
    done = np.load(done_file(out, 1), mmap_mode="r+")
    done[1] = 0
    done.flush()
    with pytest.raises(ValueError, match=r"incomplete: epochs 1 are not fully written \(1 of 2"):
        TeacherCache(out)
    _build(module, cifar10_dir, out)
    np.testing.assert_array_equal(np.load(logits_file), full)
    assert TeacherCache(out).missing_epochs() == []


def test_another_run_in_the_folder_is_refused_or_overwritten(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    module = KDModule(_student(), _teacher())
    out = tmp_path / "c"
    _build(module, cifar10_dir, out)
    with pytest.raises(ValueError, match=r"holds a teacher cache of another run \(epochs: 2 -> 3"):
        _build(module, cifar10_dir, out, epochs=3)
    _build(module, cifar10_dir, out, epochs=3, overwrite=True)
    assert TeacherCache(out).manifest.epochs == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a teacher cache"):
        _build(module, cifar10_dir, tmp_path / "other")


# ---------------------------------------------------------------------- exactness
def test_cached_student_equals_the_online_one(cifar10_dir: Path, tmp_path: Path) -> None:
    teacher = _teacher()
    _build(KDModule(_student(), teacher), cifar10_dir, tmp_path / "c")
    start = _student().state_dict()
    online = _fit(KDModule(_student(), teacher), cifar10_dir)
    cached = _fit(KDModule(_student(), teacher_cache=str(tmp_path / "c")), cifar10_dir)
    assert _moved(online, start)
    _assert_close(online, cached)
    # With the teacher given as well, its weights are checked and the result is the same.
    checked = _fit(KDModule(_student(), teacher, teacher_cache=str(tmp_path / "c")), cifar10_dir)
    _assert_close(online, checked)


def test_cached_two_teachers_and_logit_terms_equal_online(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    a, b = _teacher(1, 8), _teacher(2, 6)

    def ensemble() -> KDModule:
        return KDModule(_student(), teachers=[Teacher(a, weight=2.0), Teacher(b)], kd_weight=0.9)

    _build(ensemble(), cifar10_dir, tmp_path / "two")
    manifest = TeacherCache(tmp_path / "two").manifest
    assert [t["weight"] for t in manifest.teachers] == pytest.approx([2 / 3, 1 / 3])
    online = _fit(ensemble(), cifar10_dir)
    cached = _fit(KDModule(_student(), teacher_cache=str(tmp_path / "two")), cifar10_dir)
    _assert_close(online, cached)

    def dkd(cache: str | None = None, teacher: TinyNet | None = a) -> FeatureKDModule:
        return FeatureKDModule(
            _student(), teacher, terms=[DKDTerm(weight=1.0)], teacher_cache=cache
        )

    _build(dkd(), cifar10_dir, tmp_path / "dkd")
    _assert_close(_fit(dkd(), cifar10_dir), _fit(dkd(str(tmp_path / "dkd"), None), cifar10_dir))


def test_cached_mlkd_equals_online_on_both_views(cifar10_dir: Path, tmp_path: Path) -> None:
    teacher = _teacher()

    def mlkd(cache: str | None = None, net: TinyNet | None = teacher) -> MLKDModule:
        return MLKDModule(_student(), net, teacher_cache=cache)

    data = {"transform": StrongAugment()}
    _build(mlkd(), cifar10_dir, tmp_path / "c", data=data)
    assert TeacherCache(tmp_path / "c").manifest.num_views == 2
    online = _fit(mlkd(), cifar10_dir, transform=StrongAugment())
    cached = _fit(mlkd(str(tmp_path / "c"), None), cifar10_dir, transform=StrongAugment())
    _assert_close(online, cached)


def test_cached_student_on_mixed_views_equals_online(cifar10_dir: Path, tmp_path: Path) -> None:
    # Keyed mixup: the partner and the ratio are functions of the keys, so the cache holds the
    # teacher on the very mixed image the student sees (FunMatch's consistent teaching).
    teacher = _teacher()

    def funmatch(cache: str | None = None, net: TinyNet | None = teacher) -> KDModule:
        return KDModule(
            _student(), net, teacher_cache=cache, temperature=1.0, ce_weight=0.0, kd_weight=1.0
        )

    _build(funmatch(), cifar10_dir, tmp_path / "c", data={"transform": MixUp(alpha=1.0)})
    assert TeacherCache(tmp_path / "c").manifest.transform.startswith("MixUp(")
    online = _fit(funmatch(), cifar10_dir, transform=MixUp(alpha=1.0))
    cached = _fit(funmatch(str(tmp_path / "c"), None), cifar10_dir, transform=MixUp(alpha=1.0))
    _assert_close(online, cached)


def test_view_epochs_replays_a_shorter_cache_exactly(cifar10_dir: Path, tmp_path: Path) -> None:
    teacher = _teacher()
    _build(KDModule(_student(), teacher), cifar10_dir, tmp_path / "c", epochs=1)
    online = _fit(KDModule(_student(), teacher), cifar10_dir, epochs=2, view_epochs=1)
    cached = _fit(
        KDModule(_student(), teacher_cache=str(tmp_path / "c")),
        cifar10_dir,
        epochs=2,
        view_epochs=1,
    )
    _assert_close(online, cached)
    with pytest.raises(ValueError, match=r"the run trains 2 epochs but teacher_cache .* covers"):
        _fit(KDModule(_student(), teacher_cache=str(tmp_path / "c")), cifar10_dir, epochs=2)
    with pytest.raises(ValueError, match=r"without an epoch limit .*: train --trainer.max_epochs"):
        L.seed_everything(0)
        trainer(max_epochs=-1, max_steps=2).fit(
            KDModule(_student(), teacher_cache=str(tmp_path / "c")),
            datamodule=_datamodule(cifar10_dir),
        )


def test_fp16_and_top_k_stay_close_to_online(cifar10_dir: Path, tmp_path: Path) -> None:
    teacher = _teacher()
    _build(KDModule(_student(), teacher), cifar10_dir, tmp_path / "full")
    _build(KDModule(_student(), teacher), cifar10_dir, tmp_path / "half", dtype="float16")
    _build(KDModule(_student(), teacher), cifar10_dir, tmp_path / "top5", top_k=5)
    positions = torch.arange(160)
    full = TeacherCache(tmp_path / "full").lookup(0, positions)[:, 0, 0]
    torch.manual_seed(5)
    student = torch.randn(160, 10)
    exact = kd_loss(student, full, temperature=4.0)
    half_logits = TeacherCache(tmp_path / "half").lookup(0, positions)[:, 0, 0]
    top5_logits = TeacherCache(tmp_path / "top5").lookup(0, positions)[:, 0, 0]
    half = kd_loss(student, half_logits, temperature=4.0)
    top5 = kd_loss(student, top5_logits, temperature=4.0)
    assert abs(float(half - exact)) < 1e-3 * float(exact)
    assert float(top5 - exact) != 0.0  # an approximation, measured in benchmarks/teacher_cache.py
    assert abs(float(top5 - exact)) < 0.2 * float(exact)


# ---------------------------------------------------------------------- refusals
def test_a_cache_of_something_else_is_refused_naming_the_field(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    teacher = _teacher()
    cache = str(tmp_path / "c")
    _build(KDModule(_student(), teacher), cifar10_dir, tmp_path / "c")
    with pytest.raises(ValueError, match="view_seed: the cache has 3, this run 4"):
        _fit(KDModule(_student(), teacher_cache=cache), cifar10_dir, view_seed=4)
    with pytest.raises(ValueError, match=r"transform: the cache has 'CropFlip\(padding=4"):
        _fit(KDModule(_student(), teacher_cache=cache), cifar10_dir, transform=CropFlip(2))
    with pytest.raises(ValueError, match="dataset: the cache has"):
        _fit(KDModule(_student(), teacher_cache=cache), cifar10_dir, val_split=30)
    with pytest.raises(ValueError, match="built with other teacher weights"):
        _fit(KDModule(_student(), _teacher(seed=9), teacher_cache=cache), cifar10_dir)
    with pytest.raises(ValueError, match="precision: the cache has '32-true', this run 'bf16"):
        L.seed_everything(0)
        trainer(max_epochs=2, precision="bf16-mixed").fit(
            KDModule(_student(), teacher_cache=cache), datamodule=_datamodule(cifar10_dir)
        )
    with pytest.raises(ValueError, match=r"terms \{'hint': \['conv'\]\} read teacher features"):
        FeatureKDModule(
            _student(),
            teacher,
            terms=[HintTerm("conv", "conv", weight=1.0)],
            teacher_cache=cache,
            input_size=(3, 32, 32),
        )
    with pytest.raises(ValueError, match=r"has no manifest\.json, and the teacher network is left"):
        KDModule(_student(), teacher_cache=str(tmp_path / "nothing"))


def test_without_the_teacher_evaluation_has_no_teacher_metrics(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    _build(KDModule(_student(), _teacher()), cifar10_dir, tmp_path / "c")
    module = KDModule(_student(), teacher_cache=str(tmp_path / "c"))
    L.seed_everything(0)
    fit = trainer(max_epochs=1, limit_val_batches=1)
    fit.fit(module, datamodule=_datamodule(cifar10_dir))
    assert "val/acc" in fit.callback_metrics
    assert "val/teacher_acc" not in fit.callback_metrics
    assert "train/teacher_acc_epoch" in fit.callback_metrics  # from the cached logits
    assert not list(module.teacher.state_dict())  # nothing of a teacher is saved


# ---------------------------------------------------------------------- the command
CONFIG = """
seed_everything: 0
model:
  class_path: lightning_kd.modules.KDModule
  init_args:
    student:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 4}}
{teacher}
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args: {{data_dir: {data_dir}, batch_size: 16, val_split: 40}}
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {out}/ckpt, save_last: true}}
"""
TEACHER = """    teacher:
      class_path: lightning_kd.models.SmallCNN
      init_args: {width: 8}
    teacher_checkpoint: {checkpoint}
    save_teacher_weights: false"""


def _last_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


def test_cli_cache_then_students_without_the_teacher(
    cifar10_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(1)
    from lightning_kd.models import SmallCNN

    teacher_file = tmp_path / "teacher.pt"
    torch.save(SmallCNN(num_classes=10, width=8).state_dict(), teacher_file)
    online = tmp_path / "online.yaml"
    online.write_text(
        CONFIG.format(
            teacher=TEACHER.replace("{checkpoint}", str(teacher_file)),
            data_dir=cifar10_dir,
            out=tmp_path / "online",
        )
    )
    cache = tmp_path / "cache"
    main(["cache", "--config", str(online), "--out", str(cache), "--dtype", "float32"])
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["epochs"] == 2 and manifest["precision"] == "32-true"
    assert manifest["teachers"][0]["path"] == str(teacher_file.resolve())
    assert "2 epochs x 160 images x 1 view(s) of 1 teacher(s)" in capsys.readouterr().out

    cached = tmp_path / "cached.yaml"
    cached.write_text(
        CONFIG.format(
            teacher=f"    teacher_cache: {cache}", data_dir=cifar10_dir, out=tmp_path / "cached"
        )
    )
    main(["fit", "--config", str(online)])
    main(["fit", "--config", str(cached)])
    a = torch.load(tmp_path / "online/ckpt/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cached/ckpt/last.ckpt", weights_only=True)["state_dict"]
    assert sorted(a) == sorted(b)  # neither holds the teacher
    _assert_close(a, b)
    record = torch.load(tmp_path / "cached/ckpt/last.ckpt", weights_only=True)["lightning_kd"]
    assert record["teacher_cache"]["path"] == str(cache.resolve())

    # A longer run is refused, with the fixes, as the last line.
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(cached), "--trainer.max_epochs", "3", "--overwrite", "true"])
    line = _last_error(capsys)
    assert line.startswith("lightning-kd: error: ") and "--data.init_args.view_epochs 2" in line
    # The teacher file changed in place: the run that names the file is refused.
    over = ["--overwrite", "true"]
    state = torch.load(teacher_file, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, teacher_file)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(online), "--model.init_args.teacher_cache", str(cache), *over])
    assert "built with other teacher weights" in _last_error(capsys)
    # The cache command's own errors are one line too.
    with pytest.raises(SystemExit):
        main(["cache", "--config", str(cached), "--out", str(tmp_path / "again")])
    line = _last_error(capsys)
    assert line.startswith("lightning-kd cache: error: ") and "needs the teacher" in line


def test_cached_student_equals_online_on_two_processes(cifar10_dir: Path, tmp_path: Path) -> None:
    teacher = _teacher()
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    _build(KDModule(_student(), teacher), cifar10_dir, tmp_path / "cache")
    ranks = _run_ddp_script("teacher_cache_ddp_script.py", tmp_path, str(cifar10_dir))
    for rank in ranks:
        _assert_close(rank["online"], rank["cached"])
        assert rank["global_step"] == 2 * 5  # 160 images / 2 processes / 16 per batch, 2 epochs
    for key, value in ranks[0]["cached"].items():
        if "running" not in key:
            assert torch.equal(value, ranks[1]["cached"][key]), key


def test_cli_cache_sharded_over_two_processes_equals_one(cifar10_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "kd.yaml"
    torch.manual_seed(1)
    from lightning_kd.models import SmallCNN

    teacher_file = tmp_path / "teacher.pt"
    torch.save(SmallCNN(num_classes=10, width=8).state_dict(), teacher_file)
    config.write_text(
        CONFIG.format(
            teacher=TEACHER.replace("{checkpoint}", str(teacher_file)),
            data_dir=cifar10_dir,
            out=tmp_path / "run",
        )
    )
    for devices in ("1", "2"):
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "lightning_kd.cli", "cache", "--config", str(config)),
                *("--out", str(tmp_path / devices), "--devices", devices, "--batch-size", "32"),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = TeacherCache(tmp_path / "1"), TeacherCache(tmp_path / "2")
    assert two.manifest.extra["processes"] == 2
    assert one.manifest.differences(two.manifest) == []
    positions = torch.arange(160)
    for epoch in (0, 1):
        assert torch.equal(one.lookup(epoch, positions), two.lookup(epoch, positions))


def test_training_batches_carry_their_keys_with_host_positions(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    _build(KDModule(_student(), _teacher()), cifar10_dir, tmp_path / "c")
    seen: list[object] = []

    class Recording(KDModule):
        def compute_losses(self, batch: list) -> dict[str, Tensor]:
            seen.append(batch[-1])
            return super().compute_losses(batch)

    datamodule = _datamodule(cifar10_dir)
    L.seed_everything(0)
    trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(
        Recording(_student(), teacher_cache=str(tmp_path / "c")), datamodule=datamodule
    )
    assert datamodule.return_keys  # set by the module at setup
    assert len(seen) == 2
    for keys in seen:
        assert isinstance(keys, ViewKeys) and keys.epoch == 0
        assert keys.host_positions is not None and keys.host_positions.device.type == "cpu"
        assert torch.equal(keys.host_positions, keys.positions.cpu())
        train = datamodule.train_dataset
        assert train is not None
        assert torch.equal(train.file_indices[keys.positions], keys.samples)
