"""DINOHead and ProjectionMLP: shapes, unit norms, the frozen last-layer norm, validation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_kd.models.heads import DINOHead, ProjectionMLP

G_NAME = "last_layer.parametrizations.weight.original0"
V_NAME = "last_layer.parametrizations.weight.original1"


def _head(**kwargs: int | bool) -> DINOHead:
    torch.manual_seed(0)
    options: dict[str, int | bool] = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}
    options.update(kwargs)
    return DINOHead(12, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
@pytest.mark.parametrize("use_bn", [False, True])
def test_dino_head_shapes_and_layers(num_layers: int, use_bn: bool) -> None:
    head = _head(num_layers=num_layers, use_bn=use_bn)
    x = torch.randn(5, 12)
    assert head(x).shape == (5, 32)
    assert head.embed(x).shape == (5, 8)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers
    assert linears[0].in_features == 12 and linears[-1].out_features == 8
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == num_layers - 1
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.mlp) == (num_layers - 1) * use_bn


def test_dino_head_unit_norms_and_bounded_logits() -> None:
    head = _head()
    x = torch.randn(6, 12) * 50
    embed = head.embed(x)
    torch.testing.assert_close(embed.norm(dim=1), torch.ones(6))
    weight = head.last_layer.weight  # (out_dim, bottleneck_dim), g * v / ||v||
    assert weight.shape == (32, 8)
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(32))
    # Unit embedding times unit weight rows: every logit is a cosine.
    assert head(x).abs().max().item() <= 1.0 + 1e-6
    # The last layer has no bias.
    assert head.last_layer.bias is None


def test_dino_head_init_truncated_normal_and_zero_bias() -> None:
    head = DINOHead(256, out_dim=512, hidden_dim=512, bottleneck_dim=256)
    for module in head.mlp:
        if isinstance(module, nn.Linear):
            assert module.weight.abs().max().item() <= 0.04 + 1e-7  # truncated at 2 std
            assert 0.015 < module.weight.std().item() < 0.02
            assert torch.count_nonzero(module.bias) == 0


def test_frozen_norm_stays_one_after_optimizer_steps() -> None:
    head = _head()
    params = dict(head.named_parameters())
    assert not params[G_NAME].requires_grad
    assert params[V_NAME].requires_grad
    torch.testing.assert_close(params[G_NAME], torch.ones(32, 1))
    v_before = params[V_NAME].detach().clone()
    # Even handed every parameter, with weight decay, the optimizer skips g (it has no grad).
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        head(torch.randn(4, 12)).pow(2).sum().backward()
        optimizer.step()
    assert params[G_NAME].grad is None
    assert torch.equal(params[G_NAME], torch.ones(32, 1))
    assert not torch.equal(params[V_NAME], v_before)  # the direction is trained
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(32))


def test_trainable_norm_when_not_normalized() -> None:
    head = _head(norm_last_layer=False)
    g = dict(head.named_parameters())[G_NAME]
    assert g.requires_grad
    torch.testing.assert_close(g, torch.ones(32, 1))  # starts at 1 as well
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    head(torch.randn(4, 12)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(g, torch.ones(32, 1))


def test_last_layer_parameters_drop_grads_to_freeze() -> None:
    head = _head()
    names = {id(p): n for n, p in head.named_parameters()}
    assert {names[id(p)] for p in head.last_layer_parameters()} == {G_NAME, V_NAME}
    last_before = copy.deepcopy(head.last_layer.state_dict())
    first = head.mlp[0]
    assert isinstance(first, nn.Linear)
    first_before = first.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=0.5)
    head(torch.randn(4, 12)).pow(2).sum().backward()
    for param in head.last_layer_parameters():
        param.grad = None
    optimizer.step()
    for key, value in head.last_layer.state_dict().items():
        assert torch.equal(value, last_before[key]), key
    assert not torch.equal(first.weight, first_before)


def test_dino_head_deepcopy_and_state_dict_round_trip() -> None:
    head = _head(use_bn=True).eval()
    twin = copy.deepcopy(head)  # how an EMA teacher is made
    x = torch.randn(3, 12)
    assert torch.equal(twin(x), head(x))
    fresh = _head(use_bn=True).eval()
    with torch.no_grad():
        for param in fresh.parameters():
            param.add_(1.0)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(x), head(x))
    assert not dict(fresh.named_parameters())[G_NAME].requires_grad


def test_dino_head_under_bf16_autocast() -> None:
    head = _head()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(4, 12))
        embed = head.embed(torch.randn(4, 12))
    assert out.shape == (4, 32) and torch.isfinite(out).all()
    torch.testing.assert_close(embed.float().norm(dim=1), torch.ones(4), rtol=0, atol=1e-2)


def test_projection_mlp_structure_and_shape() -> None:
    mlp = ProjectionMLP(12, hidden_dim=20, out_dim=6)
    kinds = [type(m) for m in mlp.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert mlp.net[0].in_features == 12 and mlp.net[0].out_features == 20
    assert mlp.net[3].in_features == 20 and mlp.net[3].out_features == 6
    assert mlp(torch.randn(5, 12)).shape == (5, 6)
    assert ProjectionMLP(3)(torch.randn(2, 3)).shape == (2, 256)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_dim": 0}, "in_dim must be"),
        ({"out_dim": -1}, "out_dim must be"),
        ({"hidden_dim": 0}, "hidden_dim must be"),
        ({"bottleneck_dim": 0}, "bottleneck_dim must be"),
        ({"num_layers": 0}, "num_layers must be"),
        ({"out_dim": True}, "out_dim must be"),
        ({"out_dim": 2.0}, "out_dim must be"),
    ],
)
def test_dino_head_invalid_sizes(kwargs: dict[str, object], match: str) -> None:
    options: dict[str, object] = {"in_dim": 4, "out_dim": 8}
    options.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DINOHead(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "match"),
    [((0,), "in_dim must be"), ((4, 0), "hidden_dim must be"), ((4, 8, 0), "out_dim must be")],
)
def test_projection_mlp_invalid_sizes(args: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProjectionMLP(*args)


def test_wrong_input_shapes() -> None:
    with pytest.raises(ValueError, match=r"DINOHead expects \(B, 12\), got shape \(4, 11\)"):
        _head()(torch.randn(4, 11))
    with pytest.raises(ValueError, match=r"ProjectionMLP expects \(B, 3\)"):
        ProjectionMLP(3, 4, 5)(torch.randn(2, 3, 1))
