"""Pre-activation Wide ResNet (Zagoruyko & Komodakis, 2016) for 32x32 inputs.

WRN-d-k has depth ``d = 6n + 4`` (``n`` blocks per stage) and stage widths
``(16k, 32k, 64k)`` after a 16-channel 3x3 stem. Blocks are pre-activation (BN-ReLU-conv);
a block that changes width or stride has a 1x1 convolutional shortcut. Published sizes with a
100-class head: wrn_16_2 0.70M, wrn_40_2 2.26M parameters.

Two variants of the projection shortcut are in use, with the same parameters but different
functions, chosen by ``shortcut_input``:

* ``"preact"`` (the default): the 1x1 convolution sees the pre-activated input
  ``relu(bn1(x))``, as in the original WRN code and in RepDistiller / mdistiller (the CRD
  benchmark teachers);
* ``"raw"``: it sees the block input ``x`` itself, as in torchdistill's CIFAR WRN.

:func:`~lightning_kd.models.loading.load_weights` translates both projects' key names and
refuses a file of the other variant when it can tell from the keys. A lightning-kd state dict
does not record the variant: build the network with the ``shortcut_input`` it was trained with.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor, nn

from lightning_kd.models.cifar_resnet import init_conv_bn_

__all__ = ["PreActBlock", "ShortcutInput", "WideResNet", "wrn_16_2", "wrn_40_1", "wrn_40_2"]

#: What a projection shortcut is applied to: the pre-activated input or the raw block input.
ShortcutInput = Literal["preact", "raw"]
_SHORTCUT_INPUTS: tuple[str, ...] = get_args(ShortcutInput)


class PreActBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        stride: Stride of the first convolution (and of the shortcut).
        dropout: Dropout probability between the two convolutions (after ``relu2``).
        shortcut_input: ``"preact"`` to apply the projection shortcut to ``relu(bn1(x))``,
            ``"raw"`` to apply it to ``x``. Blocks without a projection add ``x`` either way.

    Raises:
        ValueError: If ``shortcut_input`` is neither ``"preact"`` nor ``"raw"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dropout: float = 0.0,
        shortcut_input: ShortcutInput = "preact",
    ) -> None:
        super().__init__()
        _check_shortcut_input(shortcut_input)
        self.shortcut_input = shortcut_input
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Input of shape ``(B, C_in, H, W)``.

        Returns:
            Output of shape ``(B, C_out, H / stride, W / stride)``.
        """
        pre = self.relu1(self.bn1(x))  # a new tensor: x itself is left unchanged
        # The identity always adds the raw input; the projection sees the chosen one.
        if self.shortcut is None:
            identity = x
        else:
            identity = self.shortcut(pre if self.shortcut_input == "preact" else x)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    """Pre-activation Wide ResNet WRN-depth-widen_factor.

    Attributes ``conv1`` (stem), ``layer1``, ``layer2``, ``layer3`` (stages), ``bn``
    (final norm before pooling) and ``fc`` (classifier) are stable names for feature taps.
    ``num_features`` is the width of the pooled features (``64k``).

    Args:
        depth: Total depth, ``6n + 4`` (10, 16, 22, 28, 40, ...).
        widen_factor: Width multiplier ``k``; stage widths are ``(16k, 32k, 64k)``.
        num_classes: Number of output logits; ``0`` for no classifier (``fc`` is
            ``nn.Identity`` and ``forward`` returns the pooled features).
        dropout: Dropout probability inside each block (0 disables it). It sits between
            ``relu2`` and ``conv2``; torchdistill puts it after ``conv1``, which differs in
            training mode only.
        shortcut_input: ``"preact"`` (original WRN, RepDistiller, mdistiller) or ``"raw"``
            (torchdistill): what the 1x1 projection shortcuts are applied to (see the module
            docstring). Stored as the attribute of the same name.

    Raises:
        ValueError: If ``depth`` is not ``6n + 4`` with ``n >= 1``, or ``widen_factor``,
            ``num_classes``, ``dropout`` or ``shortcut_input`` are out of range.
    """

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 2,
        num_classes: int = 100,
        dropout: float = 0.0,
        shortcut_input: ShortcutInput = "preact",
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(
                f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), "
                f"got {depth}"
            )
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        _check_shortcut_input(shortcut_input)
        blocks_per_stage = (depth - 4) // 6
        w1, w2, w3 = 16 * widen_factor, 32 * widen_factor, 64 * widen_factor

        self.depth = depth
        self.widen_factor = widen_factor
        self.num_classes = num_classes
        self.num_features = w3
        self.shortcut_input: ShortcutInput = shortcut_input
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layer1 = self._make_stage(16, w1, blocks_per_stage, 1, dropout, shortcut_input)
        self.layer2 = self._make_stage(w1, w2, blocks_per_stage, 2, dropout, shortcut_input)
        self.layer3 = self._make_stage(w2, w3, blocks_per_stage, 2, dropout, shortcut_input)
        self.bn = nn.BatchNorm2d(w3)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Identity()
        if num_classes > 0:
            self.fc = nn.Linear(w3, num_classes)
            nn.init.zeros_(self.fc.bias)
        init_conv_bn_(self)

    @staticmethod
    def _make_stage(
        in_channels: int,
        out_channels: int,
        blocks: int,
        stride: int,
        dropout: float,
        shortcut_input: ShortcutInput,
    ) -> nn.Sequential:
        layers = [PreActBlock(in_channels, out_channels, stride, dropout, shortcut_input)]
        layers += [
            PreActBlock(out_channels, out_channels, 1, dropout, shortcut_input)
            for _ in range(blocks - 1)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)`` (32x32 on CIFAR).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16k, H, W)
        x = self.layer2(x)  # (B, 32k, H/2, W/2)
        x = self.layer3(x)  # (B, 64k, H/4, W/4)
        x = self.relu(self.bn(x))
        x = self.avgpool(x).flatten(1)  # (B, 64k)
        out: Tensor = self.fc(x)  # (B, num_classes) or (B, 64k)
        return out


def _check_shortcut_input(shortcut_input: str) -> None:
    if shortcut_input not in _SHORTCUT_INPUTS:
        raise ValueError(
            f"shortcut_input must be one of {list(_SHORTCUT_INPUTS)}, got {shortcut_input!r}"
        )


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    """WRN-16-2; 0.70M parameters with 100 classes."""
    return WideResNet(16, 2, num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    """WRN-40-1."""
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    """WRN-40-2; 2.26M parameters with 100 classes."""
    return WideResNet(40, 2, num_classes)
