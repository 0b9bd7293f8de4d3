"""Any torchvision classification network, by name, with optional local weights."""

from __future__ import annotations

import difflib

import torchvision
from torch import Tensor, nn

from lightning_kd.models.loading import load_weights

__all__ = ["TorchvisionModel"]


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

    Args:
        name: A name from ``torchvision.models.list_models(module=torchvision.models)``,
            e.g. ``"resnet18"`` or ``"mobilenet_v3_small"``.
        num_classes: Number of output logits.
        weights_path: Optional local weights file to load into the network.

    Raises:
        ValueError: If ``name`` is not a torchvision classification model (the message lists
            close valid names), ``num_classes < 1``, or the weights do not fit the network.
        FileNotFoundError: If ``weights_path`` does not exist.
    """

    def __init__(self, name: str, num_classes: int = 1000, weights_path: str | None = None) -> None:
        super().__init__()
        available = torchvision.models.list_models(module=torchvision.models)
        if name not in available:
            close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
            hint = f"close matches: {close}" if close else f"some valid names: {available[:5]}"
            raise ValueError(
                f"unknown torchvision classification model {name!r}; {hint} (all names: "
                "torchvision.models.list_models(module=torchvision.models))"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.name = name
        self.num_classes = num_classes
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if weights_path is not None:
            load_weights(self, weights_path, skip_mismatched_classifier=True)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits.

        Args:
            x: Images of shape ``(B, 3, H, W)``.

        Returns:
            Logits of shape ``(B, num_classes)`` (in training mode, some networks such as
            ``inception_v3`` and ``googlenet`` return their torchvision output tuple).
        """
        out: Tensor = self.net(x)
        return out
