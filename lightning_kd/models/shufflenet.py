"""The CIFAR ShuffleNets of the KD literature (RepDistiller's ``ShuffleV1`` and ``ShuffleV2``).

Both follow the CRD benchmark (Tian et al., 2020; mdistiller uses the same classes): a 1x1
conv stem to 24 channels at full resolution (no stride, no max pooling), three stages that
each start by halving the resolution (32 -> 16 -> 8 -> 4), global average pooling and a linear
classifier named ``linear``.

* :class:`ShuffleNetV1` (Zhang et al., 2018) with 3 groups: stages of ``(4, 8, 4)``
  bottleneck units at widths ``(240, 480, 960)``. A unit is a grouped 1x1 conv to a quarter of
  its output width, a channel shuffle, a 3x3 depthwise conv and a grouped 1x1 conv, each with
  BN (ReLU after the first two); the shortcut is the identity (added) or, in the first unit of
  a stage, a 3x3 stride-2 average pool (concatenated). The first unit after the stem uses an
  ungrouped first conv. 0.95M parameters with a 100-class head.
* :class:`ShuffleNetV2` (Ma et al., 2018) at size 1: stages of a down-sampling unit and
  ``(3, 7, 3)`` basic units at widths ``(116, 232, 464)``, then a 1x1 conv to 1024 channels with
  BN and ReLU before pooling. A basic unit splits the channels in halves, transforms the second
  (1x1 conv, 3x3 depthwise conv, 1x1 conv with BN; ReLU after the first and the last) and
  concatenates it after the untouched first half; a down-sampling unit concatenates two strided
  branches. Both end with a 2-group channel shuffle. 1.36M parameters with a 100-class head.

The reference pools with a fixed 4x4 window, which for 32x32 inputs is the global average used
here. The state-dict keys and shapes are RepDistiller's (``conv1.weight``,
``layer1.0.conv1.weight``, ..., ``linear.weight``), so its checkpoints load without renaming.
As in the reference, the convolutions keep PyTorch's default initialization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChannelShuffle",
    "ShuffleNetV1",
    "ShuffleNetV1Unit",
    "ShuffleNetV2",
    "ShuffleNetV2BasicUnit",
    "ShuffleNetV2DownUnit",
    "shufflenetv1",
    "shufflenetv2",
]

#: ShuffleNetV2 sizes of the reference: stage widths, width of the last conv, basic units.
_V2_SIZES: dict[float, tuple[tuple[int, int, int], int, tuple[int, int, int]]] = {
    0.2: ((40, 80, 160), 512, (3, 3, 3)),
    0.3: ((40, 80, 160), 512, (3, 7, 3)),
    0.5: ((48, 96, 192), 1024, (3, 7, 3)),
    1.0: ((116, 232, 464), 1024, (3, 7, 3)),
    1.5: ((176, 352, 704), 1024, (3, 7, 3)),
    2.0: ((224, 488, 976), 2048, (3, 7, 3)),
}
_STEM = 24


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups: ``(B, g * n, H, W)``, group-major ->
    channel-major (channel ``i * n + j`` moves to ``j * g + i``).

    Args:
        groups: Number of groups ``g``; the channel count must be a multiple of it.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        """Shuffle ``x`` of shape ``(B, C, H, W)``; the output has the same shape."""
        b, c, h, w = x.shape
        g = self.groups
        return x.reshape(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNetV1Unit(nn.Module):
    """ShuffleNetV1 bottleneck unit; stride 2 concatenates an average-pooled shortcut.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the residual branch; the unit outputs
            ``out_channels + in_channels`` when ``stride == 2`` and ``out_channels`` otherwise
            (then ``in_channels`` must equal it).
        stride: 1 or 2.
        groups: Groups of the 1x1 convolutions.
        first_conv_groups: Groups of the first 1x1 convolution (and its shuffle); 1 right
            after the stem.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        first_conv_groups: int,
    ) -> None:
        super().__init__()
        mid = out_channels // 4
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=first_conv_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(first_conv_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit.

        Args:
            x: Input of shape ``(B, C_in, H, W)``.

        Returns:
            Output of shape ``(B, C_out + C_in, H / 2, W / 2)`` for stride 2, else
            ``(B, C_out, H, W)``.
        """
        out = self.shuffle1(self.relu(self.bn1(self.conv1(x))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        out = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return self.relu(out)


class ShuffleNetV1(nn.Module):
    """CIFAR ShuffleNetV1 (3 groups) of the CRD benchmark.

    ``num_features`` is the width of the pooled features (960).

    Feature taps (``named_modules()`` names for :class:`lightning_kd.features.FeatureTaps`;
    shapes for a 32x32 input):

    * stem: ``relu`` ``(B, 24, 32, 32)`` (RepDistiller's ``f0``), or ``bn1`` before the ReLU.
    * stage ends, after their ReLU (RepDistiller's ``f1`` ... ``f3``): ``layer1``
      ``(B, 240, 16, 16)``, ``layer2`` ``(B, 480, 8, 8)``, ``layer3`` ``(B, 960, 4, 4)``. The
      hint of FitNets (its ``hint_layer=2``) is ``layer2``; attention transfer uses all three.
    * the pooled feature (CRD, RKD): the input of ``linear`` (``capture="input"``),
      ``(B, 960)``.

    Args:
        num_classes: Number of output logits; ``0`` for no classifier (``linear`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).

    Raises:
        ValueError: If ``num_classes < 0``.
    """

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        widths, units, groups = (240, 480, 960), (4, 8, 4), 3
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.conv1 = nn.Conv2d(3, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        self.relu = nn.ReLU()  # the stem's; not in place, so ``bn1`` can be tapped
        self.layer1 = self._make_stage(_STEM, widths[0], units[0], groups)
        self.layer2 = self._make_stage(widths[0], widths[1], units[1], groups)
        self.layer3 = self._make_stage(widths[1], widths[2], units[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear: nn.Module = (
            nn.Linear(widths[2], num_classes) if num_classes > 0 else nn.Identity()
        )

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, units: int, groups: int) -> nn.Sequential:
        # The first unit concatenates its pooled input, so its branch makes the remainder.
        first_groups = 1 if in_channels == _STEM else groups
        layers = [
            ShuffleNetV1Unit(in_channels, out_channels - in_channels, 2, groups, first_groups)
        ]
        layers += [
            ShuffleNetV1Unit(out_channels, out_channels, 1, groups, groups)
            for _ in range(units - 1)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 24, H, W)
        x = self.layer1(x)  # (B, 240, H/2, W/2)
        x = self.layer2(x)  # (B, 480, H/4, W/4)
        x = self.layer3(x)  # (B, 960, H/8, W/8)
        x = self.avgpool(x).flatten(1)  # (B, 960)
        out: Tensor = self.linear(x)  # (B, num_classes) or (B, 960)
        return out


class ShuffleNetV2BasicUnit(nn.Module):
    """ShuffleNetV2 basic unit: keep one half of the channels, transform the other, shuffle.

    Args:
        channels: Channels of the input and the output (even).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit to ``x`` of shape ``(B, C, H, W)``; the output has the same shape."""
        kept, branch = x.chunk(2, dim=1)
        branch = F.relu(self.bn1(self.conv1(branch)), inplace=True)
        branch = self.bn2(self.conv2(branch))
        branch = F.relu(self.bn3(self.conv3(branch)), inplace=True)
        out: Tensor = self.shuffle(torch.cat([kept, branch], 1))
        return out


class ShuffleNetV2DownUnit(nn.Module):
    """ShuffleNetV2 down-sampling unit: two stride-2 branches, concatenated and shuffled.

    The left branch is a 3x3 depthwise conv (stride 2) with BN and a 1x1 conv with BN and ReLU;
    the right one a 1x1 conv with BN and ReLU, a 3x3 depthwise conv (stride 2) with BN and a
    1x1 conv with BN and ReLU. Each gives ``out_channels // 2`` channels.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output (even).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the unit.

        Args:
            x: Input of shape ``(B, C_in, H, W)``.

        Returns:
            Output of shape ``(B, C_out, H / 2, W / 2)``.
        """
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)), inplace=True)
        out: Tensor = self.shuffle(torch.cat([left, right], 1))
        return out


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNetV2 of the CRD benchmark; size 1 by default.

    ``num_features`` is the width of the pooled features (1024 at size 1).

    Feature taps (``named_modules()`` names for :class:`lightning_kd.features.FeatureTaps`;
    shapes for a 32x32 input at size 1):

    * stem: ``relu`` ``(B, 24, 32, 32)`` (RepDistiller's ``f0``), or ``bn1`` before the ReLU.
    * stage ends (RepDistiller's ``f1`` ... ``f3``): ``layer1`` ``(B, 116, 16, 16)``,
      ``layer2`` ``(B, 232, 8, 8)``, ``layer3`` ``(B, 464, 4, 4)``. The hint of FitNets (its
      ``hint_layer=2``) is ``layer2``; attention transfer uses all three.
    * last conv: ``bn2`` ``(B, 1024, 4, 4)``, before its ReLU.
    * the pooled feature (CRD, RKD): the input of ``linear`` (``capture="input"``),
      ``(B, 1024)``.

    Args:
        num_classes: Number of output logits; ``0`` for no classifier (``linear`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).
        net_size: One of the reference's sizes 0.2, 0.3, 0.5, 1, 1.5 and 2 (stage widths
            ``(116, 232, 464)`` and last conv 1024 at size 1; see the reference's table).

    Raises:
        ValueError: If ``num_classes < 0`` or ``net_size`` is not one of the sizes.
    """

    def __init__(self, num_classes: int = 100, net_size: float = 1.0) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        if net_size not in _V2_SIZES:
            raise ValueError(f"net_size must be one of {sorted(_V2_SIZES)}, got {net_size}")
        widths, last, units = _V2_SIZES[net_size]
        self.num_classes = num_classes
        self.net_size = net_size
        self.num_features = last
        self.conv1 = nn.Conv2d(3, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        self.relu = nn.ReLU()  # the stem's; not in place, so ``bn1`` can be tapped
        self.layer1 = self._make_stage(_STEM, widths[0], units[0])
        self.layer2 = self._make_stage(widths[0], widths[1], units[1])
        self.layer3 = self._make_stage(widths[1], widths[2], units[2])
        self.conv2 = nn.Conv2d(widths[2], last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear: nn.Module = nn.Linear(last, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, units: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleNetV2DownUnit(in_channels, out_channels)]
        layers += [ShuffleNetV2BasicUnit(out_channels) for _ in range(units)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 24, H, W)
        x = self.layer1(x)  # (B, 116, H/2, W/2)
        x = self.layer2(x)  # (B, 232, H/4, W/4)
        x = self.layer3(x)  # (B, 464, H/8, W/8)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 1024, H/8, W/8)
        x = self.avgpool(x).flatten(1)  # (B, 1024)
        out: Tensor = self.linear(x)  # (B, num_classes) or (B, 1024)
        return out


def shufflenetv1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNetV1 with 3 groups (``ShuffleV1``); 0.95M parameters with 100 classes."""
    return ShuffleNetV1(num_classes)


def shufflenetv2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNetV2 at size 1 (``ShuffleV2``); 1.36M parameters with 100 classes."""
    return ShuffleNetV2(num_classes, net_size=1.0)
