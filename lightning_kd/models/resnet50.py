"""The CIFAR ResNet-50 of the KD literature: bottleneck blocks after a 3x3 stem.

This is the ResNet50 of the CRD benchmark (Tian et al., 2020; RepDistiller's
``models/resnetv2.py``, which mdistiller reuses): the ImageNet ResNet-50 (He et al., 2016)
with its 7x7 stride-2 stem and max pooling replaced by a 3x3 stride-1 conv with BN and ReLU,
so a 32x32 input keeps full resolution in the first stage. Four stages of ``(3, 4, 6, 3)``
post-activation bottleneck blocks (1x1, 3x3, 1x1 conv, each with BN; expansion 4) at widths
``(256, 512, 1024, 2048)`` and strides ``(1, 2, 2, 2)``; the stride sits in the 3x3 conv and a
block that changes shape has a 1x1 conv + BN shortcut. Global average pooling and a linear
classifier named ``linear``.

The state-dict keys and shapes are RepDistiller's (``conv1.weight``,
``layer1.0.conv1.weight``, ``layer1.0.shortcut.0.weight``, ..., ``linear.weight``), so its
checkpoints load without renaming. 23.71M parameters with a 100-class head.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_kd.models.cifar_resnet import init_conv_bn_

__all__ = ["Bottleneck", "CIFARBottleneckResNet", "resnet50"]


class Bottleneck(nn.Module):
    """Post-activation bottleneck: 1x1, 3x3 (strided), 1x1 conv with BN; 4x expansion.

    Args:
        in_channels: Channels of the input.
        planes: Width of the 1x1 and 3x3 convolutions; the output has ``4 * planes``.
        stride: Stride of the 3x3 convolution (and of the projection shortcut).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = self.expansion * planes
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        # The reference's identity shortcut is an empty nn.Sequential: no state either way.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(B, C_in, H, W)``.

        Returns:
            Output of shape ``(B, 4 * planes, H / stride, W / stride)``.
        """
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + self.shortcut(x)
        return self.relu(out)


class CIFARBottleneckResNet(nn.Module):
    """CIFAR ResNet with bottleneck blocks and a 3x3 stem; ResNet-50 by default.

    ``num_features`` is the width of the pooled features (2048).

    Feature taps (``named_modules()`` names for :class:`lightning_kd.features.FeatureTaps`;
    shapes for a 32x32 input):

    * stem: ``relu`` ``(B, 64, 32, 32)`` (RepDistiller's ``f0``), or ``bn1`` before the ReLU.
    * stage ends, after their ReLU (RepDistiller's ``f1`` ... ``f4``): ``layer1``
      ``(B, 256, 32, 32)``, ``layer2`` ``(B, 512, 16, 16)``, ``layer3`` ``(B, 1024, 8, 8)``,
      ``layer4`` ``(B, 2048, 4, 4)``. The hint of FitNets (its ``hint_layer=2``) is
      ``layer2``; attention transfer uses all four.
    * the pooled feature (CRD, RKD): the input of ``linear`` (``capture="input"``),
      ``(B, 2048)``.

    Args:
        num_classes: Number of output logits; ``0`` for no classifier (``linear`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).
        blocks: Bottleneck blocks per stage: ``(3, 4, 6, 3)`` for ResNet-50,
            ``(3, 4, 23, 3)`` for ResNet-101, ``(3, 8, 36, 3)`` for ResNet-152.

    Raises:
        ValueError: If ``num_classes < 0`` or ``blocks`` is not four positive ints.
    """

    def __init__(
        self, num_classes: int = 100, blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        counts = tuple(blocks)  # YAML may give a list
        if len(counts) != 4 or any(not isinstance(n, int) or n < 1 for n in counts):
            raise ValueError(f"blocks must be four positive ints, got {blocks!r}")
        self.num_classes = num_classes
        self.blocks = counts
        self.num_features = 512 * Bottleneck.expansion
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()  # the stem's; not in place, so ``bn1`` can be tapped
        self.layer1 = self._make_stage(64, 64, counts[0], stride=1)
        self.layer2 = self._make_stage(256, 128, counts[1], stride=2)
        self.layer3 = self._make_stage(512, 256, counts[2], stride=2)
        self.layer4 = self._make_stage(1024, 512, counts[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear: nn.Module = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        init_conv_bn_(self)

    @staticmethod
    def _make_stage(in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(in_channels, planes, stride)]
        layers += [Bottleneck(Bottleneck.expansion * planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H, W)
        x = self.layer1(x)  # (B, 256, H, W)
        x = self.layer2(x)  # (B, 512, H/2, W/2)
        x = self.layer3(x)  # (B, 1024, H/4, W/4)
        x = self.layer4(x)  # (B, 2048, H/8, W/8)
        x = self.avgpool(x).flatten(1)  # (B, 2048)
        out: Tensor = self.linear(x)  # (B, num_classes) or (B, 2048)
        return out


def resnet50(num_classes: int = 100) -> CIFARBottleneckResNet:
    """CIFAR ResNet-50 (``ResNet50``); 23.71M parameters with 100 classes."""
    return CIFARBottleneckResNet(num_classes, (3, 4, 6, 3))
