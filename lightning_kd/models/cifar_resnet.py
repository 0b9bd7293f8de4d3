"""The 3-stage CIFAR ResNet (He et al., 2016) as used across the KD literature.

The layout follows the CIFAR ResNets of the CRD benchmark (Tian et al., 2020): a 3x3 stem,
three stages of basic blocks (stride 1, 2, 2) and a linear classifier on globally averaged
features. The depth is ``6n + 2`` with ``n`` basic blocks per stage. When a block changes the
spatial size or the width, its shortcut is a 1x1 convolution followed by batch norm.

Published sizes with a 100-class head: resnet20 0.28M, resnet56 0.86M, resnet8x4 1.23M,
resnet32x4 7.43M parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "CIFARResNet",
    "init_conv_bn_",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
]


def init_conv_bn_(module: nn.Module) -> None:
    """Initialize convolutions and batch norms of ``module`` in place.

    Convolutions get Kaiming-normal weights (``fan_out``, ReLU gain) and zero biases; batch
    norms get weight 1 and bias 0. Linear layers keep PyTorch's default initialization.

    Args:
        module: The network whose submodules are re-initialized.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Post-activation basic block: two 3x3 conv + BN, identity or projection shortcut.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        stride: Stride of the first convolution (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(B, C_in, H, W)``.

        Returns:
            Output of shape ``(B, C_out, H / stride, W / stride)``.
        """
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CIFARResNet(nn.Module):
    """CIFAR ResNet with basic blocks and depth ``6n + 2``.

    Attributes ``conv1``/``bn1`` (stem), ``layer1``, ``layer2``, ``layer3`` (stages) and
    ``fc`` (classifier) are stable names for feature taps. ``num_features`` is the width of
    the pooled features (``channels[3]``).

    Args:
        depth: Total number of weighted layers, ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        num_classes: Number of output logits; ``0`` for no classifier (``fc`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).
        channels: ``(stem, stage1, stage2, stage3)`` widths, e.g. ``(16, 16, 32, 64)`` for
            resnet20 and ``(32, 64, 128, 256)`` for the "x4" variants.

    Raises:
        ValueError: If ``depth`` is not ``6n + 2`` with ``n >= 1``, ``num_classes < 0`` or
            ``channels`` is not four positive ints.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 100,
        channels: tuple[int, int, int, int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CIFARResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}"
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        widths = tuple(channels)  # YAML may give a list
        if len(widths) != 4 or any(not isinstance(c, int) or c < 1 for c in widths):
            raise ValueError(f"channels must be four positive ints, got {channels!r}")
        blocks_per_stage = (depth - 2) // 6
        stem, w1, w2, w3 = widths

        self.depth = depth
        self.num_classes = num_classes
        self.channels = widths
        self.num_features = w3
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(stem, w1, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(w1, w2, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(w2, w3, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(w3, num_classes) if num_classes > 0 else nn.Identity()
        init_conv_bn_(self)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        x = self.relu(self.bn1(self.conv1(x)))  # (B, stem, H, W)
        x = self.layer1(x)  # (B, w1, H, W)
        x = self.layer2(x)  # (B, w2, H/2, W/2)
        x = self.layer3(x)  # (B, w3, H/4, W/4)
        x = self.avgpool(x).flatten(1)  # (B, w3)
        out: Tensor = self.fc(x)  # (B, num_classes) or (B, w3)
        return out


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes: int = 100) -> CIFARResNet:
    """ResNet-8, channels (16, 16, 32, 64)."""
    return CIFARResNet(8, num_classes, _NARROW)


def resnet14(num_classes: int = 100) -> CIFARResNet:
    """ResNet-14, channels (16, 16, 32, 64)."""
    return CIFARResNet(14, num_classes, _NARROW)


def resnet20(num_classes: int = 100) -> CIFARResNet:
    """ResNet-20, channels (16, 16, 32, 64); 0.28M parameters with 100 classes."""
    return CIFARResNet(20, num_classes, _NARROW)


def resnet32(num_classes: int = 100) -> CIFARResNet:
    """ResNet-32, channels (16, 16, 32, 64)."""
    return CIFARResNet(32, num_classes, _NARROW)


def resnet44(num_classes: int = 100) -> CIFARResNet:
    """ResNet-44, channels (16, 16, 32, 64)."""
    return CIFARResNet(44, num_classes, _NARROW)


def resnet56(num_classes: int = 100) -> CIFARResNet:
    """ResNet-56, channels (16, 16, 32, 64); 0.86M parameters with 100 classes."""
    return CIFARResNet(56, num_classes, _NARROW)


def resnet110(num_classes: int = 100) -> CIFARResNet:
    """ResNet-110, channels (16, 16, 32, 64)."""
    return CIFARResNet(110, num_classes, _NARROW)


def resnet8x4(num_classes: int = 100) -> CIFARResNet:
    """ResNet-8x4, channels (32, 64, 128, 256); 1.23M parameters with 100 classes."""
    return CIFARResNet(8, num_classes, _WIDE)


def resnet32x4(num_classes: int = 100) -> CIFARResNet:
    """ResNet-32x4, channels (32, 64, 128, 256); 7.43M parameters with 100 classes."""
    return CIFARResNet(32, num_classes, _WIDE)
