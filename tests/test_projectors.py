"""Tests for the feature adapters in :mod:`lightning_kd.modules.projectors`."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from lightning_kd.features import FeatureTaps, feature_shapes
from lightning_kd.models import resnet8, resnet8x4
from lightning_kd.modules.projectors import ConvProjector, LinearEmbedding, projector_for


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, which stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- ConvProjector -------------------------------------------------------------------------


def test_conv_projector_parameters() -> None:
    proj = ConvProjector(16, 32)
    assert sum(p.numel() for p in proj.parameters()) == 16 * 32 + 2 * 32
    assert proj.conv.weight.shape == (32, 16, 1, 1)
    assert proj.conv.bias is None
    assert isinstance(proj.bn, nn.BatchNorm2d) and proj.bn.num_features == 32
    assert [name for name, _ in proj.named_children()] == ["conv", "bn"]  # no activation


def test_conv_projector_matches_channel_mixing() -> None:
    torch.manual_seed(0)
    proj = ConvProjector(3, 5).eval()  # BN with running mean 0 and var 1
    x = _randn(2, 3, 4, 6)
    weight = proj.conv.weight[:, :, 0, 0]  # (5, 3)
    expected = torch.einsum("oc,bchw->bohw", weight, x) / math.sqrt(1 + proj.bn.eps)
    out = proj(x)
    assert out.shape == (2, 5, 4, 6)
    torch.testing.assert_close(out, expected)


def test_conv_projector_train_mode_normalizes_channels() -> None:
    proj = ConvProjector(4, 6).train()
    out = proj(_randn(8, 4, 3, 3))  # (B, C, H, W)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    var = out.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(var, torch.ones(6), atol=1e-3, rtol=0)


def test_conv_projector_spatial_size() -> None:
    torch.manual_seed(0)
    proj = ConvProjector(3, 4, spatial_size=(2, 3)).eval()
    x = _randn(2, 3, 4, 6)
    pooled = x.reshape(2, 3, 2, 2, 3, 2).mean(dim=(3, 5))  # 2x2 block means, (2, 3, 2, 3)
    no_pool = ConvProjector(3, 4).eval()
    no_pool.load_state_dict(proj.state_dict())
    out = proj(x)
    assert out.shape == (2, 4, 2, 3)
    torch.testing.assert_close(out, no_pool(pooled))
    torch.testing.assert_close(proj(pooled), no_pool(pooled))  # already the target size
    assert ConvProjector(3, 4, spatial_size=[2, 3]).spatial_size == (2, 3)  # type: ignore[arg-type]


def test_conv_projector_gradients_reach_weights() -> None:
    proj = ConvProjector(4, 8).train()
    x = _randn(4, 4, 3, 3).requires_grad_(True)
    proj(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert proj.conv.weight.grad is not None and proj.conv.weight.grad.abs().sum() > 0
    assert proj.bn.weight.grad is not None


def test_conv_projector_errors() -> None:
    with pytest.raises(ValueError, match="in_channels=0, out_channels=4"):
        ConvProjector(0, 4)
    with pytest.raises(ValueError, match=r"spatial_size must be two positive ints.*\(0, 4\)"):
        ConvProjector(2, 4, spatial_size=(0, 4))
    with pytest.raises(ValueError, match="spatial_size must be two positive ints"):
        ConvProjector(2, 4, spatial_size=(4,))  # type: ignore[arg-type]
    proj = ConvProjector(2, 4)
    with pytest.raises(ValueError, match=r"expects \(B, 2, H, W\), got shape \(1, 3, 4, 4\)"):
        proj(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"got shape \(1, 2\)"):
        proj(torch.zeros(1, 2))


# ---- LinearEmbedding -----------------------------------------------------------------------


def test_linear_embedding_unit_rows() -> None:
    torch.manual_seed(0)
    embed = LinearEmbedding(8 * 2 * 2)
    out = embed(_randn(5, 8, 2, 2))
    assert out.shape == (5, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_linear_embedding_direction_matches_linear() -> None:
    torch.manual_seed(0)
    embed = LinearEmbedding(12, 6)
    raw = LinearEmbedding(12, 6, normalize=False)
    raw.load_state_dict(embed.state_dict())
    x = _randn(3, 3, 4)
    z = x.flatten(1) @ embed.linear.weight.T + embed.linear.bias  # (3, 6)
    torch.testing.assert_close(raw(x), z)
    torch.testing.assert_close(embed(x), z / z.norm(dim=1, keepdim=True))
    assert sum(p.numel() for p in embed.parameters()) == 12 * 6 + 6


def test_linear_embedding_errors() -> None:
    with pytest.raises(ValueError, match="in_features=0, out_features=128"):
        LinearEmbedding(0)
    embed = LinearEmbedding(16, 4)
    with pytest.raises(ValueError, match=r"expects 16 features per example, got 12.*\(2, 3, 4\)"):
        embed(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"expects \(B, \.\.\.\), got shape \(16,\)"):
        embed(torch.zeros(16))


# ---- projector_for -------------------------------------------------------------------------


def test_projector_for_choices() -> None:
    same = projector_for(torch.Size([2, 64, 8, 8]), torch.Size([2, 64, 8, 8]))
    assert isinstance(same, nn.Identity)
    assert isinstance(projector_for((2, 10), (2, 10)), nn.Identity)

    conv = projector_for(torch.Size([2, 64, 8, 8]), torch.Size([2, 256, 8, 8]))
    assert isinstance(conv, ConvProjector)
    assert (conv.in_channels, conv.out_channels, conv.spatial_size) == (64, 256, None)

    pooled = projector_for(torch.Size([2, 32, 16, 16]), torch.Size([2, 32, 8, 4]))
    assert isinstance(pooled, ConvProjector)
    assert (pooled.in_channels, pooled.out_channels, pooled.spatial_size) == (32, 32, (8, 4))
    assert pooled(torch.zeros(2, 32, 16, 16)).shape == (2, 32, 8, 4)

    linear = projector_for(torch.Size([2, 64]), torch.Size([2, 256]))
    assert type(linear) is nn.Linear
    assert (linear.in_features, linear.out_features) == (64, 256)


def test_projector_for_errors() -> None:
    with pytest.raises(ValueError, match=r"same rank.*\(2, 64, 8, 8\).*\(2, 256\)"):
        projector_for(torch.Size([2, 64, 8, 8]), torch.Size([2, 256]))
    with pytest.raises(ValueError, match=r"\(B, D\) vectors.*\(2, 197, 384\).*\(2, 197, 768\)"):
        projector_for((2, 197, 384), (2, 197, 768))
    with pytest.raises(ValueError, match=r"batch sizes differ.*\(2, 64\).*\(4, 64\)"):
        projector_for((2, 64), (4, 64))


def test_projector_for_resnet8_to_resnet8x4() -> None:
    torch.manual_seed(0)
    student, teacher = resnet8(num_classes=10), resnet8x4(num_classes=10)
    example = torch.zeros(2, 3, 32, 32)
    names = ["layer3", "fc"]
    s_shapes = feature_shapes(student, names, example)
    t_shapes = feature_shapes(teacher, names, example)
    assert s_shapes["layer3"] == (2, 64, 8, 8) and t_shapes["layer3"] == (2, 256, 8, 8)
    projectors = nn.ModuleList(projector_for(s_shapes[n], t_shapes[n]) for n in names)
    assert isinstance(projectors[0], ConvProjector) and isinstance(projectors[1], nn.Identity)

    x = _randn(2, 3, 32, 32)
    with FeatureTaps(student, names) as s_taps, FeatureTaps(teacher, names) as t_taps:
        student(x)
        with torch.no_grad():
            teacher(x)
        s_feats, t_feats = s_taps.pop(), t_taps.pop()
    mapped = projectors[0](s_feats["layer3"])
    assert mapped.shape == t_feats["layer3"].shape
    (mapped - t_feats["layer3"]).square().mean().backward()
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert projectors[0].conv.weight.grad is not None
