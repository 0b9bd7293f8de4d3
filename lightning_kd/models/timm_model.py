"""Any timm model, by name, with optional local weights (needs the ``timm`` extra)."""

from __future__ import annotations

import difflib
from typing import Any

from torch import Tensor, nn

from lightning_kd.models.loading import load_weights

__all__ = ["TimmModel"]

_HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def _import_timm() -> Any:
    try:
        import timm
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "TimmModel needs timm: pip install 'lightning-kd[timm]' (or pip install timm)"
        ) from err
    return timm


def _check_name(timm: Any, name: str, pretrained: bool) -> None:
    """Raise a ValueError for a name timm cannot build here, listing close valid names."""
    if name.startswith(_HUB_PREFIXES):
        if not pretrained:
            raise ValueError(
                f"timm model {name!r} is a Hugging Face Hub name, whose configuration timm "
                "downloads; pass pretrained=True to allow that, or give the architecture name "
                "(e.g. 'resnet50') and a local checkpoint_path"
            )
        return
    architecture, _ = timm.models.split_model_name_tag(name)  # "resnet50.a1_in1k" -> resnet50
    if timm.is_model(architecture):
        return
    available = timm.list_models()
    close = difflib.get_close_matches(architecture, available, n=5, cutoff=0.5)
    hint = f"close matches: {close}" if close else f"some valid names: {available[:5]}"
    raise ValueError(f"unknown timm model {name!r}; {hint} (all names: timm.list_models())")


def _classifier_names(net: nn.Module) -> list[str]:
    """Module names of ``net``'s classifier (``"fc"``, ``"head.fc"``, ...) from its timm config."""
    config = getattr(net, "pretrained_cfg", None) or {}
    names = config.get("classifier") or ()
    return [names] if isinstance(names, str) else list(names)


class TimmModel(nn.Module):
    """A `timm <https://github.com/huggingface/pytorch-image-models>`_ model built by name,
    held as ``self.net``.

    The network is ``timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
    **kwargs)``. Nothing is downloaded unless ``pretrained=True`` is asked for (which fetches
    timm's weights from the Hugging Face Hub, or takes them from its local cache). Weights come
    from a local file instead with ``checkpoint_path``, loaded by
    :func:`~lightning_kd.models.loading.load_weights` (so ``weights_only``): a timm state dict
    (``.pth``, ``.bin`` or ``.safetensors``, e.g. the ``model.safetensors`` of a downloaded timm
    repository), a timm training checkpoint (its ``"state_dict"``, not the EMA weights), a
    state dict of this wrapper or a Lightning checkpoint. If the file's classifier has a
    different number of classes than ``num_classes``, everything except the classifier is
    loaded and a warning says so, which is how an ImageNet backbone is reused for CIFAR.

    With ``num_classes=0`` timm removes the classifier and ``forward`` returns the pooled
    features ``(B, num_features)``; a weights file's classifier tensors are then ignored.
    ``num_features`` is the classifier's input width (timm's ``head_hidden_size``, e.g. 1024
    for ``mobilenetv3_small_050``, whose ``net.num_features`` of 288 is the width before its
    head convolution).

    Feature taps and checkpoint keys name the timm modules under ``net.``, as for
    :class:`~lightning_kd.models.TorchvisionModel`: ``"net.layer3"`` of a ResNet,
    ``"net.blocks.3"`` of a MobileNetV3, ``"net.blocks.5"`` of a ViT (tokens ``(B, N, D)``).
    timm lists a network's stage outputs in ``net.feature_info``: the tap names are
    ``["net." + info["module"] for info in model.net.feature_info]``.

    In YAML, the ``timm.create_model`` keywords go under ``dict_kwargs`` (jsonargparse's place
    for ``**kwargs``), next to ``init_args``; ``num_classes`` is linked from the datamodule::

        student:
          class_path: lightning_kd.models.TimmModel
          init_args: {name: vit_tiny_patch16_224}
          dict_kwargs: {img_size: 32, patch_size: 4}

    Args:
        name: A name from ``timm.list_models()``, e.g. ``"resnet18"`` or
            ``"vit_tiny_patch16_224"``, optionally with a pretrained tag
            (``"resnet50.a1_in1k"``). Hugging Face Hub names (``"hf-hub:..."``) need
            ``pretrained=True``.
        num_classes: Number of output logits; ``0`` for no classifier.
        pretrained: Let timm download (or take from its cache) its pretrained weights.
        checkpoint_path: Optional local weights file to load into the network (after the
            classifier change, so a file saved from the same configuration fits). Not together
            with ``pretrained=True``.
        **kwargs: Passed to ``timm.create_model``, e.g. ``img_size=32, patch_size=4`` for a
            ViT on CIFAR, ``drop_path_rate=0.1`` or ``in_chans=1``.

    Raises:
        ModuleNotFoundError: If timm is not installed.
        ValueError: If ``name`` is not a timm model (the message lists close valid names),
            is a Hub name without ``pretrained=True``, ``num_classes < 0``, both
            ``pretrained`` and ``checkpoint_path`` are given, or the weights do not fit.
        FileNotFoundError: If ``checkpoint_path`` does not exist.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        timm = _import_timm()
        _check_name(timm, name, pretrained)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        if pretrained and checkpoint_path is not None:
            raise ValueError(
                f"pass either pretrained=True (timm's weights) or checkpoint_path (a local "
                f"file), not both; got checkpoint_path={checkpoint_path!r}"
            )
        self.name = name
        self.num_classes = num_classes
        self.net: nn.Module = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, **kwargs
        )
        width = getattr(self.net, "head_hidden_size", None) or self.net.num_features
        self.num_features = int(width)
        if checkpoint_path is not None:
            # Without a classifier, the file's classifier tensors have no place to go.
            classifier = _classifier_names(self.net) if num_classes == 0 else []
            drop = tuple(f"net.{name}." for name in classifier)
            load_weights(self, checkpoint_path, skip_mismatched_classifier=True, drop_prefixes=drop)

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (or pooled features when ``num_classes == 0``).

        Args:
            x: Images of shape ``(B, C, H, W)``, at the size the network was built for (a ViT
                checks it).

        Returns:
            Logits of shape ``(B, num_classes)``, or features ``(B, num_features)``.
        """
        out: Tensor = self.net(x)
        return out
