"""Reproducible randomness and exact resume.

Every augmentation draw of sample ``i`` in epoch ``e`` is a pure function of ``(seed, e, i)``,
the training order a pure function of ``(seed, e)`` and the rank, and a run resumed from any
checkpoint (mid-epoch, at an epoch boundary, or written on SIGINT) ends with the weights of
the uninterrupted run, for KD, Mean Teacher and DINO on the real datamodules.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from tiny import SigintAtStep, TinyNet, trainer
from torch import Tensor, nn

from lightning_kd.callbacks import InterruptCheckpoint
from lightning_kd.data import (
    CIFAR10DataModule,
    CIFAR10SSLDataModule,
    CropFlip,
    EpochSampler,
    MultiCropViews,
    SampleKeys,
    TensorImageDataset,
    collate_batch,
    epoch_permutation,
)
from lightning_kd.data.keyed_random import mix32, sample_seed
from lightning_kd.data.samplers import CyclingDistributedSampler, ResumableDataLoader
from lightning_kd.modules import DINOModule, KDModule, MeanTeacherModule

# ----------------------------------------------------------------------------- keyed draws


def test_mix32_is_the_same_on_ints_and_tensors_and_a_bijection() -> None:
    values = torch.arange(0, 2**32, 2**32 // 65536 + 7, dtype=torch.long)  # spread over 32 bits
    mixed = mix32(values)
    assert int(mixed.min()) >= 0 and int(mixed.max()) < 2**32
    assert mixed.unique().numel() == values.numel()  # no collision: a bijection on the sample
    for v in [*values[:50].tolist(), 0, 1, 2**32 - 1]:
        assert mix32(v) == int(mix32(torch.tensor([v]))[0])
    assert mix32(0) == 0  # lowbias32 fixes 0; the chains never feed it a bare 0 key
    # Neighbouring inputs land far apart (avalanche): about half of the 32 bits flip.
    flips = torch.tensor([bin(mix32(v) ^ mix32(v + 1)).count("1") for v in range(1, 2001)])
    assert 14.0 < flips.float().mean().item() < 18.0


def test_sample_keys_depend_only_on_seed_epoch_index_and_stream() -> None:
    a = SampleKeys(3, 1, torch.tensor([5, 9, 12]))
    b = SampleKeys(3, 1, torch.tensor([12, 100, 5, 7]))  # other batch, other order
    ua, ub = a.uniform(4, 6), b.uniform(4, 6)
    assert torch.equal(ua[0], ub[2]) and torch.equal(ua[2], ub[0])  # samples 5 and 12
    assert not torch.equal(ua[0], ua[1])
    assert not torch.equal(SampleKeys(3, 2, torch.tensor([5])).uniform(4, 6)[0], ua[0])  # epoch
    assert not torch.equal(SampleKeys(4, 1, torch.tensor([5])).uniform(4, 6)[0], ua[0])  # seed
    assert not torch.equal(a.uniform(5, 6)[0], ua[0])  # stream
    # Index 0 at counter 0 is no special case (a symmetric xor would make it 0).
    zero = SampleKeys(0, 0, torch.tensor([0])).bits(0, 1)
    assert int(zero) != 0


def test_uniform_and_integer_draws_have_the_right_distribution() -> None:
    keys = SampleKeys(0, 0, torch.arange(200_000))
    u = keys.uniform(1)
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(u.mean().item() - 0.5) < 0.003  # sd of the mean: 0.29 / sqrt(2e5) = 6.5e-4
    assert abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.bincount(keys.integers(2, 9), minlength=9).float()
    expected = 200_000 / 9
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 40.0  # 8 degrees of freedom: P(chi2 > 40) < 1e-5
    with pytest.raises(ValueError, match="high must be"):
        keys.integers(0, 0)
    with pytest.raises(TypeError, match="integer tensor"):
        SampleKeys(0, 0, torch.zeros(3))
    with pytest.raises(ValueError, match=">= 0"):
        SampleKeys(-1, 0, torch.arange(3))


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch() -> None:
    p = epoch_permutation(1000, 7, 3)
    assert torch.equal(p.sort().values, torch.arange(1000))
    assert torch.equal(p, epoch_permutation(1000, 7, 3))
    assert not torch.equal(p, epoch_permutation(1000, 7, 4))
    assert not torch.equal(p, epoch_permutation(1000, 8, 3))
    firsts = torch.stack([epoch_permutation(10, 0, e)[0] for e in range(500)])
    assert torch.bincount(firsts, minlength=10).min() > 25  # each index leads ~50 times
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3) != sample_seed(1, 2, 4)


# ----------------------------------------------------------------------------- order & loaders


def test_epoch_sampler_shards_cover_the_epoch_and_follow_the_permutation() -> None:
    dataset = TensorImageDataset(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), torch.arange(10))
    shards = []
    for rank in (0, 1, 2):
        sampler = EpochSampler(dataset, seed=5, num_replicas=3, rank=rank)
        sampler.set_epoch(2)
        shards.append(torch.tensor(list(sampler)) % 10)  # keys -> positions
    order = epoch_permutation(10, 5, 2)
    padded = torch.cat([order, order[:2]])  # 12 = 3 x 4, wrapped as DistributedSampler
    for rank in (0, 1, 2):
        assert torch.equal(shards[rank], padded[rank::3])
    assert set(torch.cat(shards).tolist()) == set(range(10))


def _keys_of(loader: ResumableDataLoader) -> list[list[int]]:
    return [batch[2].tolist() for batch in loader]


def test_resumable_loader_continues_the_epoch_after_its_state() -> None:
    dataset = TensorImageDataset(torch.zeros(20, 3, 2, 2, dtype=torch.uint8), torch.arange(20) % 4)

    def loader() -> ResumableDataLoader:
        sampler = EpochSampler(dataset, seed=1, batch_size=3)
        return ResumableDataLoader(
            dataset, batch_size=3, sampler=sampler, drop_last=True, collate_fn=collate_batch
        )

    full = loader()
    full.sampler.set_epoch(4)
    uninterrupted = _keys_of(full)
    assert len(uninterrupted) == 6
    first = loader()
    first.sampler.set_epoch(4)
    iterator = iter(first)
    for _ in range(4):
        next(iterator)
    state = first.state_dict()
    assert state == {"epoch": 4, "batches_done": 4, "num_batches": 6}
    resumed = loader()
    resumed.load_state_dict(state)
    assert _keys_of(resumed) == uninterrupted[4:]
    # A complete epoch continues with the next one.
    done = loader()
    done.load_state_dict({"epoch": 4, "batches_done": 6, "num_batches": 6})
    nxt = loader()
    nxt.sampler.set_epoch(5)
    assert _keys_of(done) == _keys_of(nxt)
    with pytest.raises(ValueError, match="7 batches per process, this loader 6"):
        loader().load_state_dict({"epoch": 0, "batches_done": 1, "num_batches": 7})


def test_cycling_sampler_gives_repeated_draws_their_own_keys() -> None:
    dataset = TensorImageDataset(torch.zeros(8, 3, 2, 2, dtype=torch.uint8), torch.arange(8))
    sampler = CyclingDistributedSampler(dataset, batch_size=4, num_batches=6, seed=0, salt=1)
    keys = torch.tensor(list(sampler))
    _, _, samples, positions, epoch = dataset.__getitems__(keys.tolist())
    assert epoch == 0 and keys.numel() == 24  # 3 passes over 8 images
    assert samples.unique().numel() == 24  # each draw of an image has its own sample index
    assert torch.equal(samples % 8, positions)
    for p in range(3):  # every pass is a permutation of the 8 images
        assert sorted(positions[8 * p : 8 * (p + 1)].tolist()) == list(range(8))


# ----------------------------------------------------------------------------- views


def _views_by_sample(dm: CIFAR10DataModule, epochs: int = 1) -> dict[tuple[int, int], Tensor]:
    """Every training view of every sample: ``(epoch, sample index) -> views (V, 3, s, s)``."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    out: dict[tuple[int, int], Tensor] = {}
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            views = dm.make_views(batch[0], batch[2], batch[4])
            stacked = torch.stack(views, dim=1) if len({v.shape for v in views}) == 1 else None
            for row, sample in enumerate(batch[2].tolist()):
                if stacked is not None:
                    out[(epoch, sample)] = stacked[row]
                else:
                    out[(epoch, sample)] = torch.cat([v[row].flatten() for v in views])
    return out


@pytest.mark.parametrize(
    "transform",
    [CropFlip(), CropFlip(num_views=2), MultiCropViews(num_local=2)],
    ids=["crop_flip", "two_views", "multi_crop"],
)
def test_a_sample_gets_the_same_views_whatever_the_batch_size(
    cifar10_dir: Path, transform: Any
) -> None:
    def views(batch_size: int) -> dict[tuple[int, int], Tensor]:
        dm = CIFAR10DataModule(
            str(cifar10_dir),
            batch_size=batch_size,
            val_split=8,
            drop_last=False,
            transform=transform,
            view_seed=11,
        )
        return _views_by_sample(dm, epochs=2)

    small, large = views(32), views(128)
    assert set(small) == set(large) and len(small) == 2 * 192
    for key, value in small.items():
        assert torch.equal(value, large[key]), key
    # ... and differ between epochs and between samples.
    assert not torch.equal(small[(0, 0)], small[(1, 0)])
    assert not torch.equal(small[(0, 0)], small[(0, 1)])


def test_views_change_with_the_run_seed_and_can_be_recomputed(
    cifar10_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = CIFAR10DataModule(str(cifar10_dir), batch_size=16, val_split=8)
    dm.setup("fit")
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    seed1 = dm.view_seed
    batch = next(iter(dm.train_dataloader()))
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")
    assert dm.view_seed != seed1
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    # The view of a sample is recomputed later from its image, index and epoch alone.
    index = int(batch[2][3])
    position = int(batch[3][3])
    image = dm.train_dataset.images[position : position + 1]
    again = dm.make_views(image, torch.tensor([index]), 0)[0]
    assert torch.equal(again[0], dm.make_views(batch[0], batch[2], 0)[0][3])


def test_semi_supervised_streams_have_their_own_views_per_pass(cifar10_dir: Path) -> None:
    dm = CIFAR10SSLDataModule(
        str(cifar10_dir),
        num_labels=20,
        val_split=20,
        labeled_batch_size=10,
        unlabeled_batch_size=30,
        view_seed=3,
    )
    dm.setup("fit")
    combined = dm.train_dataloader()
    batches = list(iter(combined))
    labeled_images: dict[int, list[Tensor]] = {}
    for batch, _, _ in batches:
        out = dm.on_after_batch_transfer(batch, 0)
        for row, sample in enumerate(batch["labeled"][2].tolist()):
            labeled_images.setdefault(sample % 200, []).append(out["labeled"][0][row])
    # 6 steps x 10 labeled draws over 20 labeled images: every image is drawn 3 times, with
    # 3 different views (its sample index carries the pass).
    assert {len(v) for v in labeled_images.values()} == {3}
    for views in labeled_images.values():
        assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])


# ----------------------------------------------------------------------------- exact resume


def _kd(cifar10_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    torch.manual_seed(0)
    module = KDModule(TinyNet(num_classes=10), TinyNet(num_classes=10, width=8), temperature=4.0)
    dm = CIFAR10DataModule(str(cifar10_dir), batch_size=32, val_split=20, view_seed=1)
    return module, dm


def _mean_teacher(cifar10_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    torch.manual_seed(0)
    module = MeanTeacherModule(TinyNet(num_classes=10), ema_decay=0.9, consistency_rampup_epochs=1)
    dm = CIFAR10SSLDataModule(
        str(cifar10_dir),
        num_labels=20,
        val_split=20,
        labeled_batch_size=8,
        unlabeled_batch_size=32,
        view_seed=1,
    )
    return module, dm


class _Backbone(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.num_features = width

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def _dino(cifar10_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    torch.manual_seed(0)
    module = DINOModule(_Backbone(), out_dim=16, hidden_dim=16, bottleneck_dim=8, head_layers=2)
    dm = CIFAR10DataModule(
        str(cifar10_dir),
        batch_size=32,
        val_split=20,
        transform=MultiCropViews(num_local=2),
        view_seed=1,
    )
    return module, dm


MODULES = {"kd": _kd, "mean_teacher": _mean_teacher, "dino": _dino}
#: Optimizer steps per epoch of each setup (180 training images).
STEPS = {"kd": 5, "mean_teacher": 5, "dino": 5}


def _fit(
    kind: str, cifar10_dir: Path, *, ckpt_path: str | None = None, **kwargs: Any
) -> L.LightningModule:
    module, dm = MODULES[kind](cifar10_dir)
    t = trainer(max_epochs=2, limit_val_batches=1, **kwargs)
    t.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        if value.is_floating_point():
            torch.testing.assert_close(sb[key], value, rtol=1e-6, atol=1e-7, msg=key)
        else:
            assert torch.equal(sb[key], value), key


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_resume_mid_epoch_and_at_epoch_end_equals_the_uninterrupted_run(
    kind: str, cifar10_dir: Path, tmp_path: Path
) -> None:
    steps = ModelCheckpoint(
        dirpath=tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    epochs = ModelCheckpoint(dirpath=tmp_path / "epochs", filename="{epoch}", save_top_k=-1)
    uninterrupted = _fit(kind, cifar10_dir, enable_checkpointing=True, callbacks=[steps, epochs])
    per_epoch = STEPS[kind]
    assert uninterrupted.trainer.global_step == 2 * per_epoch
    for name in (
        "step=2.ckpt",  # mid-epoch
        f"step={per_epoch}.ckpt",  # last batch of epoch 0, before its validation
        "epochs/epoch=0.ckpt",  # end of epoch 0, after validation
    ):
        resumed = _fit(kind, cifar10_dir, ckpt_path=str(tmp_path / name))
        assert resumed.trainer.global_step == 2 * per_epoch, name
        _assert_same_weights(uninterrupted, resumed)


@pytest.mark.parametrize(
    ("kind", "signum"),
    [("kd", signal.SIGINT), ("dino", signal.SIGINT), ("kd", signal.SIGTERM)],
    ids=["kd-sigint", "dino-sigint", "kd-sigterm"],
)
def test_a_signal_saves_the_step_it_stopped_at_and_resume_is_exact(
    kind: str, signum: int, cifar10_dir: Path, tmp_path: Path
) -> None:
    uninterrupted = _fit(kind, cifar10_dir)
    interrupt = InterruptCheckpoint(dirpath=str(tmp_path))
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after KeyboardInterrupt
        _fit(kind, cifar10_dir, callbacks=[SigintAtStep(3, signum), interrupt])
    path = tmp_path / "interrupted.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    resumed = _fit(kind, cifar10_dir, ckpt_path=str(path))
    _assert_same_weights(uninterrupted, resumed)


def test_interrupt_waits_for_the_end_of_an_accumulation_window(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    class _Request(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if args[-1] == 2:  # batch 2 (0-based): inside the second window of 2 batches
                interrupt.request()

    interrupt = InterruptCheckpoint(dirpath=str(tmp_path))
    with pytest.raises(SystemExit):
        _fit("kd", cifar10_dir, accumulate_grad_batches=2, callbacks=[_Request(), interrupt])
    checkpoint = torch.load(tmp_path / "interrupted.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2  # saved after batch 3 completed the window
    uninterrupted = _fit("kd", cifar10_dir, accumulate_grad_batches=2)
    resumed = _fit(
        "kd", cifar10_dir, accumulate_grad_batches=2, ckpt_path=str(tmp_path / "interrupted.ckpt")
    )
    _assert_same_weights(uninterrupted, resumed)


def test_resume_with_another_batch_size_is_refused(cifar10_dir: Path, tmp_path: Path) -> None:
    steps = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2)
    _fit("kd", cifar10_dir, enable_checkpointing=True, callbacks=[steps], max_steps=2)
    module, _ = _kd(cifar10_dir)
    dm = CIFAR10DataModule(str(cifar10_dir), batch_size=16, val_split=20, view_seed=1)
    with pytest.raises(ValueError, match="batch size, training set or number of processes"):
        trainer(max_epochs=2).fit(module, datamodule=dm, ckpt_path=str(tmp_path / "step=2.ckpt"))


def test_views_are_identical_on_one_and_on_two_ddp_processes(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    from test_ddp import _run_ddp_script
    from views_ddp_script import Recorder, datamodule

    ranks = _run_ddp_script("views_ddp_script.py", tmp_path, str(cifar10_dir))
    single = Recorder()
    trainer(max_epochs=1, limit_val_batches=0).fit(
        single, datamodule=datamodule(str(cifar10_dir), batch_size=48)
    )
    assert len(single.seen) == 192
    # The two ranks split the epoch (192 images, 96 each) without overlap ...
    assert len(ranks[0]) == len(ranks[1]) == 96 and not set(ranks[0]) & set(ranks[1])
    # ... and every image got exactly the views it gets on one process with batch 48.
    for rank in ranks:
        for sample, views in rank.items():
            assert torch.equal(views, single.seen[sample]), sample


RUN = """
seed_everything: 0
model:
  class_path: lightning_kd.modules.ClassifierModule
  init_args:
    model:
      class_path: lightning_kd.models.SmallCNN
      init_args: {{width: 4}}
data:
  class_path: lightning_kd.data.CIFAR10DataModule
  init_args: {{data_dir: {data_dir}, batch_size: 32, val_split: 20}}
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  log_every_n_steps: 1
  enable_model_summary: false
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: runs, name: run}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: checkpoints/run, save_last: true}}
{extra}
"""


def test_cli_ctrl_c_saves_the_step_and_resume_continues_the_same_run_folder(
    cifar10_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lightning_kd.cli import main

    monkeypatch.chdir(tmp_path)
    stop = "    - class_path: tiny.SigintAtStep\n      init_args: {step: 3}"
    Path("run.yaml").write_text(RUN.format(data_dir=cifar10_dir, extra=stop))
    Path("plain.yaml").write_text(RUN.format(data_dir=cifar10_dir, extra=""))
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", "run.yaml"])
    assert stopped.value.code == 1
    saved = (tmp_path / "checkpoints/run/interrupted.ckpt").resolve()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "stopped by SIGINT after optimizer step 3" in m and f"--ckpt_path {saved}" in m
        for m in messages
    ), messages[-3:]
    assert torch.load(saved, weights_only=False)["global_step"] == 3

    main(["fit", "--config", "plain.yaml", "--ckpt_path", str(saved)])
    # One run folder: the resumed run logged into version_0, after step 3.
    assert sorted(p.name for p in (tmp_path / "runs/run").iterdir()) == ["version_0"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: list[int] = []
    for events in sorted((tmp_path / "runs/run/version_0").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "train/loss_step" in accumulator.Tags()["scalars"]:
            steps += [e.step for e in accumulator.Scalars("train/loss_step")]
    assert steps == list(range(10))  # 2 epochs of 5 steps, each logged once
    last = torch.load(tmp_path / "checkpoints/run/last.ckpt", weights_only=False)
    assert last["global_step"] == 10
