"""The CIFAR MobileNetV2 of the KD literature (RepDistiller's ``mobile_half``).

MobileNetV2 (Sandler et al., 2018) as the CRD benchmark uses it (Tian et al., 2020; mdistiller
calls it ``MobileNetV2``): width multiplier 0.5 and expansion ratio ``T = 6``. A stride-2 3x3
stem, seven groups of inverted residual blocks (1x1 expansion conv, 3x3 depthwise conv, 1x1
linear projection, each with BN; ReLU after the first two; an identity shortcut where stride is
1 and the width is unchanged), a 1x1 conv to 1280 channels, global average pooling and a linear
classifier. Unlike torchvision's version, the first group (expansion 1) keeps its 1x1
expansion conv, and the last conv stays 1280 wide for multipliers up to 1.

The groups are (expansion, width, blocks, stride) ``(1, 16, 1, 1), (T, 24, 2, 1),
(T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1), (T, 160, 3, 2), (T, 320, 1, 1)``, widths scaled
by the multiplier: at 0.5 they are 8, 12, 16, 32, 48, 80, 160 after a 16-channel stem. A 32x32
input is 16x16 after the stem and 2x2 before pooling. (The reference pools with a fixed 2x2
window, which for the 32x32 inputs it accepts is the global average used here.)

The state-dict keys and shapes are RepDistiller's (``conv1.0.weight``,
``blocks.1.0.conv.3.weight``, ..., ``conv2.0.weight``, ``classifier.0.weight``), so its
checkpoints load without renaming. 0.81M parameters with a 100-class head.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_kd.models.cifar_resnet import init_conv_bn_

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

#: (expansion or None for T, width at multiplier 1, blocks, stride of the first block).
_GROUPS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1), with BN; identity shortcut if shapes allow.

    ``conv`` is ``[conv1x1, BN, ReLU, dwconv3x3, BN, ReLU, conv1x1, BN]``; the output has no
    activation (a linear bottleneck).

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        stride: Stride of the depthwise convolution (1 or 2).
        expansion: Hidden width as a multiple of ``in_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(B, C_in, H, W)``.

        Returns:
            Output of shape ``(B, C_out, H / stride, W / stride)``.
        """
        out: Tensor = self.conv(x)
        return x + out if self.use_shortcut else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 of the CRD benchmark; by default width 0.5 and expansion 6.

    ``num_features`` is the width of the pooled features (1280 for multipliers up to 1).

    Feature taps (``named_modules()`` names for :class:`lightning_kd.features.FeatureTaps`;
    shapes for a 32x32 input at the default width 0.5):

    * stem: ``conv1`` ``(B, 16, 16, 16)`` (RepDistiller's ``f0``).
    * stage ends (RepDistiller's ``f1`` ... ``f4``, the outputs of block groups 1, 2, 4 and
      6): ``blocks.1`` ``(B, 12, 16, 16)``, ``blocks.2`` ``(B, 16, 8, 8)``, ``blocks.4``
      ``(B, 48, 4, 4)``, ``blocks.6`` ``(B, 160, 2, 2)``. The hint of FitNets (its
      ``hint_layer=2``) is ``blocks.2``; attention transfer uses all four. They are linear
      bottleneck outputs (no ReLU), so they are also the pre-activations.
    * last conv: ``conv2`` ``(B, 1280, 2, 2)``.
    * the pooled feature (CRD, RKD): the input of ``classifier`` (``capture="input"``),
      ``(B, 1280)``.

    Args:
        num_classes: Number of output logits; ``0`` for no classifier (``classifier`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).
        width_mult: Width multiplier of the stem and the blocks (0.5 for ``mobile_half``, 1.0
            for RepDistiller's ``mobile_full``); above 1 it also widens the last conv.
        expansion: Expansion ratio ``T`` of all block groups but the first.

    Raises:
        ValueError: If ``num_classes < 0``, ``width_mult < 1/16`` (a zero width) or
            ``expansion < 1``.
    """

    def __init__(self, num_classes: int = 100, width_mult: float = 0.5, expansion: int = 6) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        if not width_mult >= 1 / 16:  # also refuses NaN
            raise ValueError(f"width_mult must be >= 1/16 (every width >= 1), got {width_mult}")
        if expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {expansion}")

        self.num_classes = num_classes
        self.width_mult = width_mult
        self.expansion = expansion
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for group_expansion, width, blocks, stride in _GROUPS:
            out_channels = int(width * width_mult)
            ratio = expansion if group_expansion is None else group_expansion
            layers = []
            for i in range(blocks):
                layers.append(
                    InvertedResidual(channels, out_channels, stride if i == 0 else 1, ratio)
                )
                channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.num_features = last_channels
        self.conv2 = _conv_bn_relu(channels, last_channels, 1, stride=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = nn.Identity()
        init_conv_bn_(self)
        if num_classes > 0:
            linear = nn.Linear(last_channels, num_classes)
            nn.init.normal_(linear.weight, std=0.01)
            nn.init.zeros_(linear.bias)
            self.classifier = nn.Sequential(linear)  # keys "classifier.0.*", as the reference

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        x = self.conv1(x)  # (B, 32w, H/2, W/2)
        for group in self.blocks:
            x = group(x)  # (B, 320w, H/16, W/16) after the last group
        x = self.conv2(x)  # (B, 1280, H/16, W/16)
        x = self.avgpool(x).flatten(1)  # (B, 1280)
        out: Tensor = self.classifier(x)  # (B, num_classes) or (B, 1280)
        return out


def mobilenetv2(num_classes: int = 100) -> MobileNetV2:
    """MobileNetV2 at width 0.5, expansion 6 (``mobile_half``); 0.81M parameters, 100 classes."""
    return MobileNetV2(num_classes, width_mult=0.5, expansion=6)
