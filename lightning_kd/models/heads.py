"""Heads on a backbone's features: the self-distillation projections and the online probe.

* :class:`DINOHead`: MLP to a bottleneck, L2 normalisation, then a weight-normalised linear
  layer to ``K`` outputs (Caron et al., 2021). Student and EMA teacher use the same head.
* :class:`ProjectionMLP`: ``Linear -> BatchNorm1d -> ReLU -> Linear``, the BYOL projector and
  predictor (Grill et al., 2020).
* :class:`LinearProbe`: a zero-initialised linear classifier on *detached* features, the
  online evaluation of a label-free backbone
  (:class:`~lightning_kd.modules.self_distillation.SelfDistillationModule`).

Register heads on the LightningModule next to the backbone so the optimizer, checkpoints,
DDP and the EMA teacher see them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "LinearProbe", "ProjectionMLP"]


class DINOHead(nn.Module):
    """DINO projection head: ``(B, in_dim) -> (B, out_dim)`` logits.

    ::

        u = normalize(mlp(x))                           # (B, bottleneck_dim), unit rows
        logits = last_layer(u) = (g * v / ||v||) u      # (B, out_dim), no bias

    ``mlp`` is ``Linear(in_dim, hidden_dim)``, [``BatchNorm1d``], ``GELU``, then
    ``num_layers - 2`` blocks ``Linear(hidden_dim, hidden_dim)``, [``BatchNorm1d``], ``GELU``,
    and ``Linear(hidden_dim, bottleneck_dim)``; with ``num_layers=1`` it is the single
    ``Linear(in_dim, bottleneck_dim)``. The L2 normalisation divides by
    ``max(||row||, 1e-12)`` and runs in float32.

    ``last_layer`` is ``nn.Linear(bottleneck_dim, out_dim, bias=False)`` under
    ``torch.nn.utils.parametrizations.weight_norm`` (``dim=0``): its weight is recomputed as
    ``g * v / ||v||`` per output row from the parameters
    ``last_layer.parametrizations.weight.original0`` (``g``, shape ``(out_dim, 1)``) and
    ``...original1`` (``v``, shape ``(out_dim, bottleneck_dim)``). ``g`` starts at 1; with
    ``norm_last_layer=True`` it has ``requires_grad=False``, so every weight row keeps unit
    norm and every logit lies in ``[-1, 1]``. With ``norm_last_layer=False`` ``g`` is trained.
    To freeze the last layer for the first epoch(s), set the grads of
    :meth:`last_layer_parameters` to ``None`` after backward.

    Initialisation: every ``nn.Linear`` weight (``v`` of the last layer included) from a normal
    distribution with std 0.02 truncated at two standard deviations; biases zero.

    Args:
        in_dim: Backbone feature size, ``>= 1``.
        out_dim: Number of outputs ``K`` (65536 in the paper), ``>= 1``.
        hidden_dim: MLP hidden width, ``>= 1`` (unused when ``num_layers=1``).
        bottleneck_dim: Size of the normalised embedding, ``>= 1``.
        num_layers: Number of linear layers in the MLP, ``>= 1``.
        use_bn: Put ``BatchNorm1d`` after every hidden linear layer.
        norm_last_layer: Keep ``g`` fixed at 1 (not trained).

    Raises:
        ValueError: If a size or ``num_layers`` is not an int ``>= 1``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        _check_sizes(
            in_dim=in_dim,
            out_dim=out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            num_layers=num_layers,
        )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.bottleneck_dim = bottleneck_dim
        self.norm_last_layer = norm_last_layer
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for module in (*self.mlp, last):
            if isinstance(module, nn.Linear):
                _init_linear(module)
        self.last_layer = weight_norm(last, name="weight", dim=0)
        magnitude = self.last_layer.parametrizations.weight.original0  # g, (out_dim, 1)
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def embed(self, x: Tensor) -> Tensor:
        """The L2-normalised bottleneck embedding ``u``, shape ``(B, bottleneck_dim)``.

        Args:
            x: Features of shape ``(B, in_dim)``.

        Raises:
            ValueError: If ``x`` is not ``(B, in_dim)``.
        """
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"DINOHead expects (B, {self.in_dim}), got shape {tuple(x.shape)}")
        hidden = self.mlp(x)  # (B, bottleneck_dim)
        unit = F.normalize(hidden.float(), dim=1, eps=1e-12)  # float32: no fp16 underflow
        return unit.to(hidden.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(B, out_dim)`` for features ``x`` of shape ``(B, in_dim)``."""
        return self.last_layer(self.embed(x))  # (B, out_dim)

    def last_layer_parameters(self) -> Iterator[nn.Parameter]:
        """All parameters of ``last_layer`` (``g`` and ``v``), e.g. to drop their grads."""
        return self.last_layer.parameters()


class ProjectionMLP(nn.Module):
    """BYOL projector / predictor: ``Linear -> BatchNorm1d -> ReLU -> Linear``.

    ``(B, in_dim) -> (B, out_dim)``. Both linear layers have a bias (the first one's is
    redundant before BatchNorm). PyTorch's default initialisation.

    Args:
        in_dim: Input size, ``>= 1``.
        hidden_dim: Hidden width (4096 in the paper), ``>= 1``.
        out_dim: Output size (256 in the paper), ``>= 1``.

    Raises:
        ValueError: If a size is not an int ``>= 1``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__()
        _check_sizes(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Project features of shape ``(B, in_dim)`` to ``(B, out_dim)``.

        Raises:
            ValueError: If ``x`` is not ``(B, in_dim)``.
        """
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"ProjectionMLP expects (B, {self.in_dim}), got shape {tuple(x.shape)}"
            )
        return self.net(x)  # (B, out_dim)


class LinearProbe(nn.Module):
    """Linear classifier ``(B, D) -> (B, C)`` on features that are constants for the backbone.

    :meth:`forward` detaches the features and runs in the probe's own dtype (float32 unless
    the whole module is cast) with autocast disabled, so no gradient reaches the network that
    produced them and bf16 features are classified in float32. The layer starts at zero
    (weight and bias), without drawing random numbers: the run's random stream is the same
    with or without a probe, and the first logits are all 0 (loss ``log C``, prediction class
    0).

    Args:
        feature_dim: Feature width ``D``, ``>= 1``.
        num_classes: Number of classes ``C``, ``>= 1``.

    Raises:
        ValueError: If a size is not an int ``>= 1``.
    """

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        _check_sizes(feature_dim=feature_dim, num_classes=num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        # skip_init: allocated without the default (random) initialisation.
        self.linear = nn.utils.skip_init(nn.Linear, feature_dim, num_classes)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, C)`` for features ``(B, D)`` (detached here).

        Raises:
            ValueError: If ``features`` is not ``(B, D)``.
        """
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"LinearProbe expects (B, {self.feature_dim}), got shape {tuple(features.shape)}"
            )
        weight = self.linear.weight
        x = features.detach().to(dtype=weight.dtype)  # (B, D), a constant for the backbone
        with torch.autocast(x.device.type, enabled=False):
            return self.linear(x)  # (B, C)

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, num_classes={self.num_classes}"


def _init_linear(linear: nn.Linear, std: float = 0.02) -> None:
    nn.init.trunc_normal_(linear.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
