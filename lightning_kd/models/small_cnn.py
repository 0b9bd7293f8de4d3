"""A small, fast CNN for 32x32 images, meant for CPU quickstarts.

Four conv3x3-BN-ReLU blocks at widths ``(w, 2w, 4w, 4w)``; the first three are followed by
2x2 max pooling (32 -> 16 -> 8 -> 4), then global average pooling and a linear head. Only
plain conv, batch norm, ReLU and pooling are used, so it runs well in ``channels_last``
memory format and under bf16 autocast. With ``width=32`` it has about 0.27M parameters and
needs about 13M multiply-adds per 32x32 image; a larger ``width`` makes a stronger teacher.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_kd.models.cifar_resnet import init_conv_bn_

__all__ = ["SmallCNN"]


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks with pooling, global average pool and a linear head.

    Attributes ``layer1`` ... ``layer4`` (blocks) and ``fc`` (classifier) are stable names
    for feature taps. ``num_features`` is the width of the pooled features (``4 * width``).

    Args:
        num_classes: Number of output logits; ``0`` for no classifier (``fc`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).
        width: Channels of the first block; later blocks use ``2 * width`` and
            ``4 * width``.

    Raises:
        ValueError: If ``num_classes < 0`` or ``width < 1``.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.num_classes = num_classes
        self.width = width
        self.num_features = 4 * width
        self.layer1 = _conv_block(3, width, pool=True)
        self.layer2 = _conv_block(width, 2 * width, pool=True)
        self.layer3 = _conv_block(2 * width, 4 * width, pool=True)
        self.layer4 = _conv_block(4 * width, 4 * width, pool=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(4 * width, num_classes) if num_classes > 0 else nn.Identity()
        init_conv_bn_(self)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        x = self.layer1(x)  # (B, w, H/2, W/2)
        x = self.layer2(x)  # (B, 2w, H/4, W/4)
        x = self.layer3(x)  # (B, 4w, H/8, W/8)
        x = self.layer4(x)  # (B, 4w, H/8, W/8)
        x = self.avgpool(x).flatten(1)  # (B, 4w)
        out: Tensor = self.fc(x)  # (B, num_classes) or (B, 4w)
        return out
