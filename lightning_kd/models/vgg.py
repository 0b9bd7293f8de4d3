"""The batch-norm CIFAR VGGs of the KD literature (vgg8 ... vgg19), with a global-pool head.

These are the VGGs of the CRD benchmark (Tian et al., 2020; RepDistiller's ``vgg*_bn``, which
mdistiller reuses): five stages of 3x3 conv (with bias) + BN + ReLU at widths
``(64, 128, 256, 512, 512)``, 2x2 max pooling after the first three stages only (32 -> 16 ->
8 -> 4; the fourth pooling runs only for 64x64 inputs, as in the reference), global average
pooling and a single linear classifier (no fully-connected stack). The stages hold
``(1, 1, 1, 1, 1)`` convolutions for vgg8, ``(1, 1, 2, 2, 2)`` for vgg11, ``(2, 2, 2, 2, 2)``
for vgg13, ``(2, 2, 3, 3, 3)`` for vgg16 and ``(2, 2, 4, 4, 4)`` for vgg19.

The state-dict keys and shapes are RepDistiller's (``block0.0.weight``, ``block0.1.running_mean``,
..., ``classifier.weight``), so its checkpoints load without renaming. Sizes with a 100-class
head: vgg8 3.97M, vgg11 9.28M, vgg13 9.46M, vgg16 14.77M, vgg19 20.09M parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_kd.models.cifar_resnet import init_conv_bn_

__all__ = ["VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

#: Convolutions per stage for each depth (the stage widths are always 64, 128, 256, 512, 512).
_CONVS_PER_STAGE: dict[int, tuple[int, int, int, int, int]] = {
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_WIDTHS = (64, 128, 256, 512, 512)


def _stage(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    """``convs`` times conv3x3(bias)-BN-ReLU; module ``3i`` is a conv, ``3i + 1`` its BN.

    The ReLU after the last BN is not in place, so the stage's pre-activation (the last BN's
    output) stays intact for a feature tap.
    """
    layers: list[nn.Module] = []
    for i in range(convs):
        last = i == convs - 1
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=not last),
        ]
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """CIFAR VGG with batch norm, five stages and a global-average-pool linear head.

    ``num_features`` is the width of the pooled features (512).

    Feature taps (``named_modules()`` names for :class:`lightning_kd.features.FeatureTaps`;
    shapes for a 32x32 input):

    * stage ends, after their ReLU: ``block0`` ``(B, 64, 32, 32)``, ``block1``
      ``(B, 128, 16, 16)``, ``block2`` ``(B, 256, 8, 8)``, ``block3`` ``(B, 512, 4, 4)``,
      ``block4`` ``(B, 512, 4, 4)``. These are RepDistiller's ``f0`` ... ``f4``: the hint of
      FitNets (its ``hint_layer=2``) is ``block2``; attention transfer uses ``block1`` to
      ``block4``.
    * stage pre-activations (the last BN of a stage, RepDistiller's ``f1_pre`` ... ``f4_pre``):
      ``block{i}.{3n - 2}`` for a stage of ``n`` convolutions, e.g. ``block1.1`` ...
      ``block4.1`` for vgg8 and ``block2.4``, ``block3.4``, ``block4.4`` for vgg13.
    * the pooled feature (CRD, RKD): the input of ``classifier``
      (``capture="input"``), ``(B, 512)``; or the output of ``pool4``, ``(B, 512, 1, 1)``.

    Args:
        depth: 8, 11, 13, 16 or 19: the variant's name, which counts the original VGG's
            three fully-connected layers (these networks have one linear layer, so vgg11 has
            eight convolutions).
        num_classes: Number of output logits; ``0`` for no classifier (``classifier`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).

    Raises:
        ValueError: If ``depth`` is not one of the five or ``num_classes < 0``.
    """

    def __init__(self, depth: int = 13, num_classes: int = 100) -> None:
        super().__init__()
        if depth not in _CONVS_PER_STAGE:
            raise ValueError(f"VGG depth must be one of {sorted(_CONVS_PER_STAGE)}, got {depth}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        convs = _CONVS_PER_STAGE[depth]
        w0, w1, w2, w3, w4 = _WIDTHS

        self.depth = depth
        self.num_classes = num_classes
        self.num_features = w4
        self.block0 = _stage(3, w0, convs[0])
        self.block1 = _stage(w0, w1, convs[1])
        self.block2 = _stage(w1, w2, convs[2])
        self.block3 = _stage(w2, w3, convs[3])
        self.block4 = _stage(w3, w4, convs[4])
        self.pool0 = nn.MaxPool2d(2)
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.pool3 = nn.MaxPool2d(2)  # only for 64x64 inputs
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = nn.Identity()
        init_conv_bn_(self)
        if num_classes > 0:
            self.classifier = nn.Linear(w4, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.01)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR). A 64x64 input is pooled once
                more before the last stage, as in the reference.

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        height = x.shape[-2]
        x = self.pool0(self.block0(x))  # (B, 64, H/2, W/2)
        x = self.pool1(self.block1(x))  # (B, 128, H/4, W/4)
        x = self.pool2(self.block2(x))  # (B, 256, H/8, W/8)
        x = self.block3(x)  # (B, 512, H/8, W/8)
        if height == 64:
            x = self.pool3(x)  # (B, 512, 4, 4)
        x = self.block4(x)  # (B, 512, H/8, W/8), or 4x4 for 64x64 inputs
        x = self.pool4(x).flatten(1)  # (B, 512)
        out: Tensor = self.classifier(x)  # (B, num_classes) or (B, 512)
        return out


def vgg8(num_classes: int = 100) -> VGG:
    """VGG-8 with batch norm, one conv per stage; 3.97M parameters with 100 classes."""
    return VGG(8, num_classes)


def vgg11(num_classes: int = 100) -> VGG:
    """VGG-11 with batch norm, convs per stage (1, 1, 2, 2, 2); 9.28M parameters."""
    return VGG(11, num_classes)


def vgg13(num_classes: int = 100) -> VGG:
    """VGG-13 with batch norm, two convs per stage; 9.46M parameters with 100 classes."""
    return VGG(13, num_classes)


def vgg16(num_classes: int = 100) -> VGG:
    """VGG-16 with batch norm, convs per stage (2, 2, 3, 3, 3); 14.77M parameters."""
    return VGG(16, num_classes)


def vgg19(num_classes: int = 100) -> VGG:
    """VGG-19 with batch norm, convs per stage (2, 2, 4, 4, 4); 20.09M parameters."""
    return VGG(19, num_classes)
