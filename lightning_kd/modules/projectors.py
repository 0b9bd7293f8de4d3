"""Adapters that map student features to the shape of the teacher's features.

Feature-distillation losses compare a student feature with a teacher feature of the same
shape. When the two networks differ in width (or resolution), a small trainable adapter
maps the student feature first. Register adapters as submodules of the LightningModule
(e.g. in an ``nn.ModuleList``) so the optimizer, checkpoints and DDP see them.

* :class:`ConvProjector`: 1x1 convolution + BatchNorm for ``(B, C, H, W)`` feature maps
  (the FitNets regressor in the form used by the CRD benchmark code).
* :class:`LinearEmbedding`: flatten, linear layer and L2 normalization (CRD's embedding
  head).
* :func:`projector_for`: picks the adapter from the student and teacher shapes that
  :func:`lightning_kd.features.feature_shapes` reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvProjector", "LinearEmbedding", "projector_for"]


class ConvProjector(nn.Module):
    """1x1 convolution (no bias) followed by BatchNorm2d: ``(B, C_s, H, W) -> (B, C_t, H', W')``.

    No activation follows the BatchNorm. With ``spatial_size`` the input is first
    average-pooled with ``F.adaptive_avg_pool2d`` to ``(H', W') = spatial_size`` (skipped when
    the input already has that size); without it the output keeps the input's ``(H, W)``.
    Pooling before the 1x1 convolution gives the same result as pooling after it (both are
    linear and act on different axes) at a lower cost when shrinking.

    The convolution and BatchNorm use PyTorch's default initialization.

    Args:
        in_channels: Student channels ``C_s``.
        out_channels: Teacher channels ``C_t``.
        spatial_size: Optional target ``(H', W')``; a two-element list is accepted (YAML).

    Raises:
        ValueError: If a channel count is < 1 or ``spatial_size`` is not two positive ints.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"channel counts must be >= 1, got in_channels={in_channels}, "
                f"out_channels={out_channels}"
            )
        size: tuple[int, int] | None = None
        if spatial_size is not None:
            given = tuple(spatial_size)  # YAML may give a list
            if len(given) != 2 or any(not isinstance(s, int) or s < 1 for s in given):
                raise ValueError(
                    f"spatial_size must be two positive ints (H, W), got {spatial_size!r}"
                )
            size = (given[0], given[1])
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_size = size
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Project a student feature map.

        Args:
            x: Student features of shape ``(B, C_s, H, W)``.

        Returns:
            Features of shape ``(B, C_t, H, W)``, or ``(B, C_t, *spatial_size)``.

        Raises:
            ValueError: If ``x`` is not 4-D with ``C_s`` channels.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvProjector expects (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        if self.spatial_size is not None and tuple(x.shape[2:]) != self.spatial_size:
            x = F.adaptive_avg_pool2d(x, self.spatial_size)  # (B, C_s, H', W')
        return self.bn(self.conv(x))  # (B, C_t, H', W')

    def extra_repr(self) -> str:
        return f"spatial_size={self.spatial_size}"


class LinearEmbedding(nn.Module):
    """Flatten, linear layer, optional L2 normalization: ``(B, ...) -> (B, out_features)``.

    ``z = W flatten(x) + b`` and, with ``normalize=True``, ``z / max(||z||_2, 1e-12)`` per row,
    so every output row has unit Euclidean norm (a zero row stays zero).

    Args:
        in_features: Number of features per example after flattening, e.g. ``C * H * W``.
        out_features: Embedding size.
        normalize: L2-normalize each output row.

    Raises:
        ValueError: If ``in_features`` or ``out_features`` is < 1.
    """

    def __init__(
        self, in_features: int, out_features: int = 128, *, normalize: bool = True
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"feature counts must be >= 1, got in_features={in_features}, "
                f"out_features={out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.normalize = normalize
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Embed a batch.

        Args:
            x: Features of shape ``(B, ...)`` with ``in_features`` values per example.

        Returns:
            Embeddings of shape ``(B, out_features)``, rows of unit norm if ``normalize``.

        Raises:
            ValueError: If ``x`` has no batch dimension or the wrong number of features.
        """
        if x.dim() < 2:
            raise ValueError(f"LinearEmbedding expects (B, ...), got shape {tuple(x.shape)}")
        flat = x.flatten(1)  # (B, in_features)
        if flat.shape[1] != self.in_features:
            raise ValueError(
                f"LinearEmbedding expects {self.in_features} features per example, got "
                f"{flat.shape[1]} from input shape {tuple(x.shape)}"
            )
        z = self.linear(flat)  # (B, out_features)
        return F.normalize(z, p=2.0, dim=1) if self.normalize else z

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


def projector_for(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """Build the adapter that maps a student feature to the teacher feature's shape.

    Shapes include the batch dimension, as returned by
    :func:`lightning_kd.features.feature_shapes` for the same example batch.

    * identical shapes: ``nn.Identity()``;
    * ``(B, C_s, H_s, W_s) -> (B, C_t, H_t, W_t)``: ``ConvProjector(C_s, C_t)``, with
      ``spatial_size=(H_t, W_t)`` when the spatial sizes differ;
    * ``(B, D_s) -> (B, D_t)``: ``nn.Linear(D_s, D_t)`` (no normalization).

    Args:
        student_shape: Shape of the student feature, e.g. a ``torch.Size``.
        teacher_shape: Shape of the teacher feature.

    Returns:
        A fresh, trainable module (or ``nn.Identity``).

    Raises:
        ValueError: If the ranks differ, the rank is not 2 or 4, or the batch sizes differ.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t):
        raise ValueError(
            f"student and teacher features must have the same rank, got student shape {s} "
            f"and teacher shape {t}"
        )
    if len(s) not in (2, 4):
        raise ValueError(
            "projector_for handles (B, D) vectors and (B, C, H, W) feature maps, got student "
            f"shape {s} and teacher shape {t}"
        )
    if s[0] != t[0]:
        raise ValueError(
            f"batch sizes differ: student shape {s}, teacher shape {t}; measure both with the "
            "same example batch"
        )
    if s == t:
        return nn.Identity()
    if len(s) == 2:
        return nn.Linear(s[1], t[1])
    spatial_size = None if s[2:] == t[2:] else (t[2], t[3])
    return ConvProjector(s[1], t[1], spatial_size=spatial_size)
