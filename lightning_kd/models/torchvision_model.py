"""Any torchvision classification network, by name, with optional local weights."""

from __future__ import annotations

import difflib

import torchvision
from torch import Tensor, nn

from lightning_kd.models.loading import load_weights

__all__ = ["TorchvisionModel"]


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear] | None:
    """Name and module of the last ``nn.Linear`` of ``net`` (its classifier), if any."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _pooled_width(net: nn.Module, name: str) -> int:
    """Width of the features the classifier sees: the last Linear's (or 1x1 conv's) input."""
    found = _last_linear(net)
    if found is not None:
        return found[1].in_features
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"torchvision model {name!r} has neither a Linear nor a Conv2d layer")
    return convs[-1].in_channels  # SqueezeNet's classifier is a 1x1 convolution


class TorchvisionModel(nn.Module):
    """A torchvision classification model built by name, held as ``self.net``.

    The network is built with ``torchvision.models.get_model(name, weights=None,
    num_classes=num_classes)``; nothing is ever downloaded. Pretrained weights come from a
    local file instead: a state dict of the torchvision network (what torchvision's
    downloaded ``.pth`` files contain, or ``torch.save(net.state_dict(), path)``); a state
    dict of this wrapper or a Lightning checkpoint also work (see
    :func:`~lightning_kd.models.loading.load_weights`). If the file's classifier has a
    different number of classes than ``num_classes``, everything except the classifier is
    loaded and a warning says so, which is how an ImageNet backbone is reused for CIFAR.

    With ``num_classes=0`` the network's classifier (its last ``nn.Linear``, e.g. ``fc`` of a
    ResNet, ``classifier.3`` of MobileNetV3, ``heads.head`` of a ViT) becomes ``nn.Identity``
    and ``forward`` returns the pooled features ``(B, num_features)``; a weights file's
    classifier tensors are then ignored. ``num_features`` is the classifier's input width.

    Args:
        name: A name from ``torchvision.models.list_models(module=torchvision.models)``,
            e.g. ``"resnet18"`` or ``"mobilenet_v3_small"``.
        num_classes: Number of output logits; ``0`` for no classifier.
        weights_path: Optional local weights file to load into the network (after the
            classifier and stem changes, so a file saved from the same configuration fits).
        cifar_stem: For ResNet-family models (``conv1`` and ``maxpool``), replace the 7x7
            stride-2 ``conv1`` by a 3x3 stride-1 convolution without bias and ``maxpool`` by
            ``nn.Identity``: the usual CIFAR ResNet-18, which keeps 32x32 inputs at 4x4 before
            pooling.

    Raises:
        ValueError: If ``name`` is not a torchvision classification model (the message lists
            close valid names), ``num_classes < 0``, ``num_classes == 0`` for a model without
            a Linear classifier, ``cifar_stem`` for a model without ``conv1``/``maxpool``, or
            the weights do not fit the network.
        FileNotFoundError: If ``weights_path`` does not exist.
    """

    def __init__(
        self,
        name: str,
        num_classes: int = 1000,
        weights_path: str | None = None,
        cifar_stem: bool = False,
    ) -> None:
        super().__init__()
        available = torchvision.models.list_models(module=torchvision.models)
        if name not in available:
            close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
            hint = f"close matches: {close}" if close else f"some valid names: {available[:5]}"
            raise ValueError(
                f"unknown torchvision classification model {name!r}; {hint} (all names: "
                "torchvision.models.list_models(module=torchvision.models))"
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        self.name = name
        self.num_classes = num_classes
        self.cifar_stem = cifar_stem
        kwargs = {"num_classes": num_classes} if num_classes > 0 else {}
        self.net = torchvision.models.get_model(name, weights=None, **kwargs)
        self.num_features = _pooled_width(self.net, name)
        if cifar_stem:
            self._use_cifar_stem()
        drop: tuple[str, ...] = ()
        if num_classes == 0:
            found = _last_linear(self.net)
            if found is None:
                raise ValueError(
                    f"num_classes=0 removes the final nn.Linear classifier, but torchvision "
                    f"model {name!r} has none; use num_classes >= 1"
                )
            path = found[0]
            parent_path, _, child = path.rpartition(".")
            setattr(self.net.get_submodule(parent_path), child, nn.Identity())
            drop = (f"net.{path}.",)
        if weights_path is not None:
            load_weights(self, weights_path, skip_mismatched_classifier=True, drop_prefixes=drop)

    def _use_cifar_stem(self) -> None:
        """3x3 stride-1 ``conv1`` without bias and no ``maxpool`` (ResNet family)."""
        conv1 = getattr(self.net, "conv1", None)
        maxpool = getattr(self.net, "maxpool", None)
        if not isinstance(conv1, nn.Conv2d) or not isinstance(maxpool, nn.MaxPool2d):
            raise ValueError(
                f"cifar_stem=True needs a ResNet-family model with a Conv2d 'conv1' and a "
                f"MaxPool2d 'maxpool'; torchvision model {self.name!r} has "
                f"conv1={type(conv1).__name__}, maxpool={type(maxpool).__name__}"
            )
        stem = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
        self.net.conv1 = stem
        self.net.maxpool = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, 3, H, W)``.

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)`` (in
            training mode, some networks such as ``inception_v3`` and ``googlenet`` return
            their torchvision output tuple).
        """
        out: Tensor = self.net(x)
        return out
