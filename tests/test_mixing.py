"""Keyed mixup and CutMix (lightning_kd.data.mixing) and the soft targets they give.

A mixed view is a pure function of ``(view_seed, epoch, sample index)``: its partner (an image
of the training set) and its ratio are drawn from the image's keys, so the views and targets do
not depend on the batch size or the number of processes and can be recomputed with
``make_views``. The hand-value tests use constant images, so a mixed pixel is known in closed
form from the target.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from tiny import TinyNet, trainer
from torch import Tensor, nn

from lightning_kd.data import (
    BatchTransform,
    CIFAR10DataModule,
    CropFlip,
    CutMix,
    ImageDataModule,
    MixUp,
    MultiCropViews,
    SampleKeys,
    StrongAugment,
    ViewKeys,
)
from lightning_kd.data.mixing import (
    GAMMA_ROUNDS,
    MIX_VIEW,
    beta_uniforms,
    cutmix_boxes,
    mixed_targets,
    symmetric_beta,
)
from lightning_kd.data.transforms import STREAMS_PER_VIEW
from lightning_kd.metrics import dominant_class, topk_correct
from lightning_kd.modules import ClassifierModule, DKDTerm, FeatureKDModule, KDModule

#: No crop, no flip: the base view is the image itself.
IDENTITY = CropFlip(padding=0, flip_prob=0.0)
#: The two constant images of the hand-value set: value 10 (label 0) and 200 (label 1).
VALUES = (10.0, 200.0)


class _PairData(ImageDataModule):
    """Two 8 x 8 training images, constant 10 (label 0) and 200 (label 1); mean 0 and std 1, so
    a normalised view is the pixels / 255."""

    mean: ClassVar[tuple[float, ...]] = (0.0, 0.0, 0.0)
    std: ClassVar[tuple[float, ...]] = (1.0, 1.0, 1.0)

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def dataset_name(self) -> str:
        return "pair"

    def read_split(self, *, train: bool) -> tuple[Tensor, Tensor]:
        images = torch.stack([torch.full((3, 8, 8), int(v), dtype=torch.uint8) for v in VALUES])
        return images, torch.tensor([0, 1])


def _pair(transform: BatchTransform) -> _PairData:
    dm = _PairData(batch_size=2, val_split=0, drop_last=False, transform=transform, view_seed=3)
    with pytest.warns(UserWarning, match="val_split=0"):
        dm.setup("fit")
    return dm


def _batches(dm: ImageDataModule, epochs: int) -> list[tuple[list[Any], list[Any]]]:
    """``(raw keyed batch, training batch)`` of every batch of ``epochs`` epochs."""
    loader = dm.train_dataloader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            out.append((batch, dm.training_batch(batch)))
    return out


# ----------------------------------------------------------------------------- hand values


def test_mixup_pixels_are_the_target_weighted_images() -> None:
    dm = _pair(MixUp(IDENTITY))
    partners_other = partners_self = 0
    for raw, (views, targets) in _batches(dm, epochs=12):
        assert views.shape == (2, 3, 8, 8) and targets.shape == (2, 2)
        assert targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(2))
        for row, label in enumerate(raw[1].tolist()):
            lam = float(targets[row, label])
            other = 1 - label
            # x = lam * x_i + (1 - lam) * x_j, in [0, 1] units.
            expected = (lam * VALUES[label] + (1 - lam) * VALUES[other]) / 255.0
            torch.testing.assert_close(views[row], torch.full((3, 8, 8), expected))
            # The partner is the other image exactly when the target puts weight on its label.
            keys = SampleKeys(dm.view_seed, raw[4], raw[2][row : row + 1])
            partner = int(dm.transform.partners(keys, 2)[0])  # type: ignore[attr-defined]
            assert (partner != raw[3][row]) == (float(targets[row, other]) > 0)
            partners_other += partner != raw[3][row]
            partners_self += partner == raw[3][row]
    assert partners_other > 3 and partners_self > 3  # both cases happen (N = 2)


def test_cutmix_pastes_a_box_from_the_partner_and_lam_is_its_exact_area() -> None:
    dm = _pair(CutMix(IDENTITY))
    boxes = 0
    for raw, (views, targets) in _batches(dm, epochs=12):
        for row, label in enumerate(raw[1].tolist()):
            view = views[row] * 255.0  # (3, 8, 8) back in pixel values
            from_partner = (view - VALUES[1 - label]).abs() < 1e-3  # (3, 8, 8)
            assert bool((((view - VALUES[label]).abs() < 1e-3) | from_partner).all())
            mask = from_partner[0]
            assert torch.equal(mask, from_partner[1]) and torch.equal(mask, from_partner[2])
            pasted = int(mask.sum())
            # lam corrected to the box: the own label's weight is the fraction of pixels kept.
            assert float(targets[row, label]) == pytest.approx(1.0 - pasted / 64.0, abs=1e-6)
            if pasted:
                boxes += 1
                rows = mask.any(dim=1).nonzero().flatten()
                cols = mask.any(dim=0).nonzero().flatten()
                h = int(rows.max() - rows.min() + 1)
                w = int(cols.max() - cols.min() + 1)
                assert pasted == h * w  # one axis-aligned rectangle
    assert boxes > 3


def test_cutmix_boxes_by_hand() -> None:
    lam = torch.tensor([0.75, 0.75, 0.0, 1.0, 0.5])
    cy, cx = torch.tensor([2, 0, 4, 3, 4]), torch.tensor([5, 0, 4, 3, 4])
    boxes = cutmix_boxes(lam, cy, cx, height=8, width=8)
    # sqrt(1 - 0.75) = 0.5: a 4 x 4 box around (2, 5); clipped to 2 x 2 at the corner (0, 0);
    # lam 0 cuts 8 // 2 = 4 on each side of (4, 4): the whole image; lam 1: no box;
    # lam 0.5: floor(8 * 0.7071) = 5, half 2: rows and columns 2..5.
    assert boxes.tolist() == [
        [0, 4, 3, 7],
        [0, 2, 0, 2],
        [0, 8, 0, 8],
        [3, 3, 3, 3],
        [2, 6, 2, 6],
    ]
    # The corrected lam of the authors' code, 1 - area / (H W): 0.75, 0.9375, 0, 1, 0.75.
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    assert (1 - area / 64).tolist() == [0.75, 0.9375, 0.0, 1.0, 0.75]


def test_mixed_targets_by_hand() -> None:
    soft = mixed_targets(
        torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0]), torch.tensor([0.25, 0.6, 1.0]), 3
    )
    assert soft.tolist() == [[0.25, 0.75, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    with pytest.raises(TypeError, match="integer class indices"):
        mixed_targets(soft, torch.tensor([1, 2, 0]), torch.ones(3), 3)
    with pytest.raises(ValueError, match=r"must all be \(B,\)"):
        mixed_targets(torch.tensor([0, 1]), torch.tensor([1, 2, 0]), torch.ones(3), 3)


def test_no_mixing_with_prob_zero_gives_the_base_views_and_one_hot_targets(
    cifar10_dir: Path,
) -> None:
    plain = CIFAR10DataModule(str(cifar10_dir), batch_size=16, val_split=8, view_seed=2)
    plain.setup("fit")
    batch = next(iter(plain.train_dataloader()))
    base_views, labels = plain.training_batch(batch)
    for transform in (CutMix(prob=0.0), MixUp(prob=0.0)):
        dm = CIFAR10DataModule(
            str(cifar10_dir), batch_size=16, val_split=8, view_seed=2, transform=transform
        )
        dm.setup("fit")
        views, targets = dm.training_batch(batch)
        torch.testing.assert_close(views, base_views, rtol=0, atol=1e-5)  # MixUp: float path
        assert torch.equal(targets, F.one_hot(labels, 10).float())


# ----------------------------------------------------------------------------- Beta(a, a)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0, 5.0])
def test_mixup_ratio_has_the_moments_of_beta(alpha: float) -> None:
    n = 100_000
    keys = SampleKeys(0, 0, torch.arange(n))
    zeros, ones = torch.zeros(n, 1, 1, 1), torch.ones(n, 1, 1, 1)
    lam = MixUp(alpha=alpha).mix([zeros], [ones], keys).lam.double()
    assert float(lam.min()) >= 0.0 and float(lam.max()) <= 1.0
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    # Standard error of the mean <= 0.0016, of the variance about 0.0007.
    assert abs(lam.mean().item() - 0.5) < 0.006
    assert abs(lam.var().item() - var) < 0.03 * var + 0.001
    if alpha >= 0.5:  # below, float32 rounds the mass within 6e-8 of 1 to 1.0: ties
        from scipy import stats

        assert stats.kstest(lam.numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_beta_sampler_uses_the_first_accepted_round_and_falls_back_to_d() -> None:
    # Marsaglia-Tsang at shape 2: d = 5/3, c = 1 / sqrt(15). A normal x = sqrt(-2 log r) is
    # drawn with angle 0; x = 2 with acceptance uniform 0.99 is rejected (bound -0.06), x = 0
    # is always accepted (v = 1), x = 1 with uniform 0.5 is accepted (v = (1 + c)^3).
    rounds, d, c = GAMMA_ROUNDS, 5.0 / 3.0, 1.0 / math.sqrt(15.0)

    def gamma_uniforms(xs: list[float], accept: list[float]) -> list[float]:
        radius = [math.exp(-x * x / 2) for x in xs]
        return radius + [0.0] * rounds + accept

    reject = gamma_uniforms([2.0] * rounds, [0.99] * rounds)
    second = gamma_uniforms([2.0, 0.0] + [2.0] * (rounds - 2), [0.99] * rounds)  # G = d
    first = gamma_uniforms([1.0] * rounds, [0.5] * rounds)  # G = d (1 + c)^3
    assert beta_uniforms(2.0) == 2 * 3 * rounds
    u = torch.tensor([reject + reject, second + first])
    lam = symmetric_beta(u, 2.0)
    assert lam[0].item() == pytest.approx(0.5)  # both fell back to d
    assert lam[1].item() == pytest.approx(d / (d + d * (1 + c) ** 3), rel=1e-5)
    # alpha < 1: Gamma(a) = Gamma(a + 1) U^(1/a), with one more uniform per gamma.
    rounds_half = gamma_uniforms([0.0] * rounds, [0.5] * rounds)
    u = torch.tensor([[*rounds_half, 0.5, *rounds_half, 0.25]])
    assert beta_uniforms(0.5) == u.shape[1]
    # X / (X + Y) = 0.5^2 / (0.5^2 + 0.25^2) = 0.8
    assert symmetric_beta(u, 0.5).item() == pytest.approx(0.8, rel=1e-5)
    with pytest.raises(ValueError, match=r"uniforms \(N, 48\)"):
        symmetric_beta(torch.rand(3, 5), 2.0)


@pytest.mark.parametrize(
    "transform", [MixUp(alpha=0.5), MixUp(alpha=3.0), CutMix(alpha=0.3)], ids=str
)
def test_a_samples_ratio_is_bitwise_the_same_in_any_batch(transform: MixUp) -> None:
    # Every op of the sampler rounds the same in the vectorised and the scalar CPU loops (not
    # torch.sigmoid, which is why it is not used), so batch size and row do not matter.
    def lam(indices: Tensor) -> Tensor:
        n = indices.numel()
        zeros, ones = torch.zeros(n, 3, 8, 8), torch.ones(n, 3, 8, 8)
        return transform.mix([zeros], [ones], SampleKeys(5, 0, indices)).lam

    indices = torch.arange(300)
    full = lam(indices)
    for size in (1, 3, 7, 16, 48):
        parts = torch.cat([lam(indices[i : i + size]) for i in range(0, 300, size)])
        assert torch.equal(parts, full), size


# ----------------------------------------------------------------------------- keyed invariance


def _mixed_by_sample(
    cifar10_dir: Path, transform: BatchTransform, batch_size: int, *, view_seed: int = 11
) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
    dm = CIFAR10DataModule(
        str(cifar10_dir),
        batch_size=batch_size,
        val_split=8,
        drop_last=False,
        transform=transform,
        view_seed=view_seed,
        return_keys=True,
    )
    dm.setup("fit")
    out: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
    for raw, (views, targets, keys) in _batches(dm, epochs=2):
        assert isinstance(keys, ViewKeys) and torch.equal(keys.samples, raw[2])
        # make_views (what a teacher cache recomputes the views with) gives the same views.
        assert torch.equal(dm.make_views(raw[0], raw[2], raw[4])[0], views)
        for row, sample in enumerate(raw[2].tolist()):
            out[(raw[4], sample)] = (views[row], targets[row])
    return out


@pytest.mark.parametrize(
    "transform", [MixUp(), CutMix(), MixUp(alpha=0.4, prob=0.5)], ids=["mixup", "cutmix", "p0.5"]
)
def test_mixed_views_and_targets_do_not_depend_on_the_batch(
    cifar10_dir: Path, transform: BatchTransform
) -> None:
    small = _mixed_by_sample(cifar10_dir, transform, 32)
    large = _mixed_by_sample(cifar10_dir, transform, 128)
    assert set(small) == set(large) and len(small) == 2 * 192
    for key, (views, targets) in small.items():
        assert torch.equal(views, large[key][0]), key
        assert torch.equal(targets, large[key][1]), key
    targets = torch.stack([t for _, t in small.values()])  # (384, 10)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(small)))
    assert int((targets > 0).sum(dim=1).max()) == 2  # own label and the partner's
    mixed = (targets.max(dim=1).values < 1).float().mean().item()
    assert mixed > (0.3 if transform.prob < 1 else 0.7)  # type: ignore[attr-defined]
    # Another view seed: other partners and ratios.
    other = _mixed_by_sample(cifar10_dir, transform, 32, view_seed=12)
    assert sum(not torch.equal(small[k][0], other[k][0]) for k in small) > 0.9 * len(small)


def test_a_mixed_view_is_recomputed_from_its_index_and_epoch(cifar10_dir: Path) -> None:
    dm = CIFAR10DataModule(str(cifar10_dir), batch_size=16, val_split=8, transform=CutMix())
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    raw = next(iter(loader))
    views, _ = dm.training_batch(raw)
    assert dm.train_dataset is not None
    for row in (0, 7):
        position = int(raw[3][row])
        image = dm.train_dataset.images[position : position + 1]
        again = dm.make_views(image, raw[2][row : row + 1], 3)[0]
        assert torch.equal(again[0], views[row])


def test_partners_come_from_the_whole_training_set_with_their_own_keyed_view(
    cifar10_dir: Path,
) -> None:
    base = CropFlip()
    dm = CIFAR10DataModule(
        str(cifar10_dir), batch_size=16, val_split=8, transform=MixUp(base), view_seed=4
    )
    dm.setup("fit")
    train = dm.train_dataset
    assert train is not None
    raw = next(iter(dm.train_dataloader()))
    keys = SampleKeys(dm.view_seed, raw[4], raw[2])
    partners = dm.transform.partners(keys, len(train))  # type: ignore[attr-defined]
    assert not set(partners.tolist()) <= set(raw[3].tolist())  # partners outside the batch
    # Each view is the mix of the image's base view and the partner's base view, keyed by
    # the partner's own sample index (its view of this epoch wherever it is drawn).
    partner_keys = SampleKeys(dm.view_seed, raw[4], train.file_indices[partners])
    own = base(raw[0], keys)[0].float() / 255
    theirs = base(train.images[partners], partner_keys)[0].float() / 255
    views, targets = dm.training_views(raw[0], raw[1], raw[2], raw[4])
    differ = train.targets[partners] != raw[1]  # else the target is one-hot: lam not visible
    assert int(differ.sum()) > 8
    lam = targets.gather(1, raw[1][:, None]).view(-1, 1, 1, 1)
    expected = dm.normalize_batch(own * lam + theirs * (1 - lam))
    torch.testing.assert_close(views[0][differ], expected[differ])


@pytest.mark.parametrize("transform", [MixUp, CutMix])
def test_every_view_gets_the_same_partner_and_ratio(
    cifar10_dir: Path, transform: type[MixUp]
) -> None:
    two_copies = CropFlip(padding=0, flip_prob=0.0, num_views=2)  # both views: the image
    dm = CIFAR10DataModule(
        str(cifar10_dir), batch_size=8, val_split=8, transform=transform(two_copies)
    )
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    (first, second), targets = dm.training_batch(raw)
    assert torch.equal(first, second) and targets.shape == (8, 10)
    # Two different views (MLKD's weak and strong) are both mixed.
    dm.transform = transform(StrongAugment())
    (weak, strong), _ = dm.training_batch(raw)
    assert weak.shape == strong.shape == (8, 3, 32, 32)


def test_cutmix_needs_views_of_one_size() -> None:
    keys = SampleKeys(0, 0, torch.arange(2))
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="share one size"):
        CutMix(MultiCropViews(num_local=1)).mix_batch(images, keys, images, keys)


def test_mixing_streams_are_apart_from_the_base_transforms() -> None:
    # Base transforms draw view v from streams 64 v + q for v < num_views; mixing uses view
    # 2**20. So the base view inside a mix is exactly the base transform's view, and the
    # partner draw is not a function of the crop offsets.
    keys = SampleKeys(0, 0, torch.arange(4096))
    images = torch.randint(0, 256, (4096, 3, 8, 8), dtype=torch.uint8)
    mixed = CutMix(CropFlip(), prob=0.0).mix_batch(images, keys, images.flip(0), keys)
    assert torch.equal(mixed.views[0], CropFlip()(images, keys)[0])
    offsets = keys.uniform(0, 1)[:, 0]  # CropFlip's first draw (stream 0)
    partners = MixUp().partners(keys, 4096).float()
    assert abs(torch.corrcoef(torch.stack([offsets, partners]))[0, 1].item()) < 0.05
    assert MIX_VIEW * STREAMS_PER_VIEW >= 2**26


# ----------------------------------------------------------------------------- errors, config


def test_a_mixing_transform_refuses_to_run_without_partners_and_bad_arguments() -> None:
    keys = SampleKeys(0, 0, torch.arange(2))
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="cannot run on a batch alone"):
        MixUp()(images, keys)
    with pytest.raises(ValueError, match="alpha"):
        MixUp(alpha=0.0)
    with pytest.raises(ValueError, match="prob"):
        CutMix(prob=1.5)
    with pytest.raises(TypeError, match="not itself a mixing transform"):
        MixUp(CutMix())
    with pytest.raises(ValueError, match="seed and epoch"):
        MixUp().mix_batch(images, keys, images, SampleKeys(0, 1, torch.arange(2)))
    dm = CIFAR10DataModule("nowhere", transform=MixUp())
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        dm.make_views(images, torch.arange(2), 0)


def test_mixing_transforms_build_from_class_path() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--transform", type=BatchTransform)
    config = parser.parse_object(
        {
            "transform": {
                "class_path": "lightning_kd.data.CutMix",
                "init_args": {
                    "base": {"class_path": "lightning_kd.data.CropFlip", "init_args": {}},
                    "alpha": 0.5,
                    "prob": 0.5,
                },
            }
        }
    )
    built = parser.instantiate_classes(config).transform
    assert isinstance(built, CutMix) and isinstance(built.base, CropFlip)
    assert (built.alpha, built.prob, built.num_views) == (0.5, 0.5, 1)


def test_accuracy_of_soft_targets_counts_the_dominant_class() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    soft = torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.4, 0.6]])
    assert dominant_class(soft).tolist() == [1, 2]
    assert topk_correct(logits, soft).tolist() == [0.0, 1.0]
    assert topk_correct(logits, soft, k=2).tolist() == [1.0, 1.0]
    assert torch.equal(topk_correct(logits, soft), topk_correct(logits, torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="soft targets must have the logits' shape"):
        topk_correct(logits, soft[:, :2])


# ----------------------------------------------------------------------------- through the Trainer


class _Spy(nn.Module):
    """A network that keeps its last training input."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.last: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.last = x.detach().clone()
        return self.net(x)


class _RecordingKD(KDModule):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_targets: list[Tensor] = []
        self.losses: list[float] = []
        self.same_input: list[bool] = []
        self.val_batches: list[list[Tensor]] = []

    def compute_losses(self, batch: Any) -> dict[str, Tensor]:
        losses = super().compute_losses(batch)
        self.train_targets.append(batch[1])
        self.losses.append(float(losses["loss"].detach()))
        student, teacher = self.student, self.teacher
        assert isinstance(student, _Spy) and isinstance(teacher, _Spy)
        assert student.last is not None and teacher.last is not None
        self.same_input.append(torch.equal(student.last, teacher.last))
        return losses

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_batches.append([t.clone() for t in batch])
        super().validation_step(batch, batch_idx)


def test_kd_with_mixup_trains_on_the_same_mixed_view_and_never_mixes_evaluation(
    cifar10_dir: Path,
) -> None:
    torch.manual_seed(0)
    module = _RecordingKD(
        _Spy(TinyNet(num_classes=10, width=8)),
        _Spy(TinyNet(num_classes=10)),
        temperature=1.0,
        ce_weight=0.0,
        kd_weight=1.0,  # FunMatch: KL only at T = 1
    )
    dm = CIFAR10DataModule(
        str(cifar10_dir), batch_size=32, val_split=20, transform=MixUp(), view_seed=1
    )
    t = trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    t.fit(module, datamodule=dm)
    assert t.global_step == 3 and all(module.same_input)  # consistent teaching
    for targets in module.train_targets:
        assert targets.shape == (32, 10) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(32))
    assert all(math.isfinite(v) for v in module.losses)
    # Validation: the held-out images as they are, int64 labels.
    images, labels = module.val_batches[0]
    assert dm.val_dataset is not None
    n = images.shape[0]
    assert torch.equal(images, dm.normalize_batch(dm.val_dataset.images[:n]))
    assert labels.dtype == torch.int64 and torch.equal(labels, dm.val_dataset.targets[:n])


def test_classifier_trains_on_cutmix_soft_targets(cifar10_dir: Path) -> None:
    torch.manual_seed(0)
    module = ClassifierModule(TinyNet(num_classes=10), label_smoothing=0.1)
    dm = CIFAR10DataModule(
        str(cifar10_dir), batch_size=32, val_split=20, transform=CutMix(), view_seed=1
    )
    t = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    t.fit(module, datamodule=dm)
    assert t.global_step == 2 and math.isfinite(float(t.callback_metrics["train/loss_epoch"]))


def test_dkd_refuses_soft_targets(cifar10_dir: Path) -> None:
    # DKD's target-class mask needs integer labels; a mixed batch is refused, not miscounted.
    torch.manual_seed(0)
    module = FeatureKDModule(
        TinyNet(num_classes=10, width=8), TinyNet(num_classes=10), terms=[DKDTerm()]
    )
    dm = CIFAR10DataModule(str(cifar10_dir), batch_size=32, val_split=20, transform=MixUp())
    with pytest.raises((TypeError, ValueError), match="targets"):
        trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=dm)


def test_mixed_views_are_identical_on_one_and_on_two_ddp_processes(
    cifar10_dir: Path, tmp_path: Path
) -> None:
    from mixing_ddp_script import Recorder, datamodule
    from test_ddp import _run_ddp_script

    ranks = _run_ddp_script("mixing_ddp_script.py", tmp_path, str(cifar10_dir))
    single = Recorder()
    trainer(max_epochs=1, limit_val_batches=0).fit(
        single, datamodule=datamodule(str(cifar10_dir), batch_size=48)
    )
    assert len(single.seen) == 192
    assert len(ranks[0]) == len(ranks[1]) == 96 and not set(ranks[0]) & set(ranks[1])
    for rank in ranks:
        for sample, (view, target) in rank.items():
            assert torch.equal(view, single.seen[sample][0]), sample
            assert torch.equal(target, single.seen[sample][1]), sample


def test_funmatch_config_composes_mixup_kl_only_and_a_long_schedule(
    cifar100_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_kd.cli import build_cli
    from lightning_kd.models import CIFARResNet

    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
    teacher = tmp_path / "teacher.pt"
    torch.save(CIFARResNet(depth=56, num_classes=100).state_dict(), teacher)
    args = [
        *("--config", str(root / "recipe.yaml")),
        *("--config", str(root / "methods" / "funmatch.yaml")),
        *("--config", str(root / "pairs" / "resnet56__resnet20.yaml")),
        *("--data.init_args.data_dir", str(cifar100_dir)),
        *("--model.init_args.teacher_checkpoint", str(teacher)),
        *("--trainer.accelerator", "cpu"),
    ]
    cli = build_cli(args, run=False)
    transform = cli.datamodule.transform
    assert isinstance(transform, MixUp) and isinstance(transform.base, CropFlip)
    assert (transform.alpha, transform.prob) == (1.0, 1.0)
    model = cli.model
    assert isinstance(model, KDModule)
    assert (model.temperature, model.ce_weight, model.kd_weight) == (1.0, 0.0, 1.0)
    assert cli.trainer.max_epochs == 1200
    scheduler = cli.config.model.init_args.scheduler
    assert scheduler.class_path.endswith("MultiStepLR")
    assert scheduler.init_args.milestones == [750, 900, 1050]
