"""ReviewKD (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021) as a
distillation term of :class:`~lightning_kd.modules.FeatureKDModule`.

The student's stage features are fused from deep to shallow by attention-based fusion
(:class:`ABF`) blocks, so the student map that is compared with a teacher stage has "reviewed"
every deeper student stage; each fused map is compared with the teacher's feature at the same
level by the hierarchical context loss :func:`~lightning_kd.losses.review.hcl_loss`. The ABFs
are sized from the dry-run feature shapes and live in the term (an ``nn.Module`` registered on
the LightningModule), so the optimizer, checkpoints and DDP see them. In YAML::

    terms:
      - class_path: lightning_kd.modules.review_kd.ReviewKDTerm
        init_args:
          student_layers: [layer1, layer2, layer3]
          teacher_layers: [layer1, layer2, layer3]
          student_pooled: fc
          teacher_pooled: fc
          weight: 5.0

Reference: the authors' code, dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py`` and
``CIFAR-100/train.py`` (also in megvii-research/mdistiller
``mdistiller/distillers/ReviewKD.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.losses.review import hcl_loss
from lightning_kd.modules.terms import DistillationTerm, Tap, TermInputs
from lightning_kd.schedules import linear_warmup

__all__ = ["ABF", "ReviewKDTerm"]

#: The authors' cap on the ABFs' middle width: ``min(512, C of the deepest student level)``.
MAX_MID_CHANNEL = 512


class ABF(nn.Module):
    """Attention-based fusion block: ``(B, C_s, H, W)`` (+ a deeper residual) ->
    ``(B, C_t, H_t, W_t)`` and the fused ``(B, M, H_t, W_t)`` residual for the next,
    shallower level.

    ::

        x = BN(conv1x1(features))                               # (B, M, H, W)
        if fuse:                                                # every level but the deepest
            r = nearest_upsample(residual, (H, W))              # (B, M, H, W)
            a = sigmoid(conv1x1_with_bias(cat[x, r]))           # (B, 2, H, W)
            x = x * a[:, 0] + r * a[:, 1]
        x = nearest_resize(x, (H_t, W_t))                       # only if the sizes differ
        out = BN(conv3x3(x))                                    # (B, C_t, H_t, W_t)
        return out, x                                           # x is the next residual

    As in the reference, the two convolutions without bias (``conv1``, ``conv2``) get
    ``kaiming_uniform_(a=1)`` weights; the attention convolution (``att_conv``, with bias)
    and the batch norms keep PyTorch's defaults. The submodule names (``conv1``, ``conv2``,
    ``att_conv``) are the reference's; its ``abfs`` list runs deep to shallow, the term's
    shallow to deep (reverse the index to load one into the other).

    Args:
        in_channels: Student channels ``C_s``.
        mid_channels: Width ``M`` of the fused maps.
        out_channels: Teacher channels ``C_t``.
        fuse: Whether a deeper residual is fused in (``False`` for the deepest level only).

    Raises:
        ValueError: If a channel count is < 1.
    """

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, *, fuse: bool
    ) -> None:
        super().__init__()
        if min(in_channels, mid_channels, out_channels) < 1:
            raise ValueError(
                f"channel counts must be >= 1, got in_channels={in_channels}, "
                f"mid_channels={mid_channels}, out_channels={out_channels}"
            )
        self.in_channels = in_channels
        self.mid_channels = mid_channels
        self.out_channels = out_channels
        reduce = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        expand = nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False)
        nn.init.kaiming_uniform_(reduce.weight, a=1)
        nn.init.kaiming_uniform_(expand.weight, a=1)
        self.conv1 = nn.Sequential(reduce, nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(expand, nn.BatchNorm2d(out_channels))
        self.att_conv: nn.Module | None = None
        if fuse:
            attention = nn.Conv2d(2 * mid_channels, 2, kernel_size=1)
            self.att_conv = nn.Sequential(attention, nn.Sigmoid())

    @property
    def fuse(self) -> bool:
        """Whether this block fuses a deeper residual."""
        return self.att_conv is not None

    def forward(
        self, x: Tensor, residual: Tensor | None = None, *, out_size: Sequence[int]
    ) -> tuple[Tensor, Tensor]:
        """Fuse one student level.

        Args:
            x: Student features ``(B, C_s, H, W)``.
            residual: The deeper level's fused map ``(B, M, H', W')`` (any ``H'``, ``W'``;
                resized to ``(H, W)`` by nearest neighbour); ``None`` for the deepest level.
            out_size: The teacher's ``(H_t, W_t)`` at this level.

        Returns:
            ``(out, fused)``: ``out`` of shape ``(B, C_t, H_t, W_t)``, compared with the
            teacher, and ``fused`` of shape ``(B, M, H_t, W_t)``, the next level's residual.

        Raises:
            ValueError: If ``x`` has the wrong channels, or ``residual`` is given to the
                deepest block / missing for a fusing one, or has the wrong channels.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ABF expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        size = (int(out_size[0]), int(out_size[1]))
        x = self.conv1(x)  # (B, M, H, W)
        if self.att_conv is not None:
            if residual is None or residual.dim() != 4 or residual.shape[1] != self.mid_channels:
                got = None if residual is None else tuple(residual.shape)
                raise ValueError(
                    f"this ABF fuses a deeper (B, {self.mid_channels}, H', W') residual, got {got}"
                )
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")  # (B, M, H, W)
            attention = self.att_conv(torch.cat([x, residual], dim=1))  # (B, 2, H, W)
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]  # (B, M, H, W)
        elif residual is not None:
            raise ValueError(
                "the deepest ABF (fuse=False) takes no residual, got one of shape "
                f"{tuple(residual.shape)}"
            )
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="nearest")  # (B, M, H_t, W_t)
        return self.conv2(x), x

    def extra_repr(self) -> str:
        return f"fuse={self.fuse}"


class ReviewKDTerm(DistillationTerm):
    """ReviewKD: ABF-fused student features against the teacher's, by the hierarchical context
    loss, summed over levels; the weight ramps up linearly over the first epochs.

    The levels, shallow to deep, are the student's ``student_layers`` outputs, then the input
    of its classifier ``student_pooled`` (the pooled feature, as a ``(B, C, 1, 1)`` map); the
    teacher's are paired with them in order (``teacher_layers``, ``teacher_pooled``). Levels
    pair by position, not by size: a student map smaller than the teacher's is upsampled
    (nearest) inside its ABF, as in the reference (e.g. ShuffleNet students, 16/8/4, against
    CIFAR ResNet teachers, 32/16/8). From the deepest level up, ABF ``i`` maps student level
    ``i`` to the teacher's channels and size, fusing in the (nearest-upsampled) fused map of
    level ``i + 1``; see :class:`ABF`. The loss is
    ``hcl_loss([out_0, ..., out_{n-1}], [teacher_0, ..., teacher_{n-1}])``.

    The weight at epoch ``e`` (counted from 0) is ``weight * min(e / warmup_epochs, 1)``, as
    in the authors' ``train.py`` (epochs from 0, so the first epoch has weight 0; mdistiller
    counts epochs from 1, one epoch ahead).

    The authors' CIFAR setting taps the student's stage outputs (after their activation) and
    the teacher's stage *pre-activations* (``preact=True``), plus both pooled features; see
    ``configs/cifar100/methods/reviewkd/`` for what the library's networks allow.

    Args:
        student_layers: Student submodules whose outputs are the levels, shallow to deep.
        teacher_layers: Teacher submodules, paired in order with ``student_layers``.
        student_pooled: Student classifier whose **input** (the pooled feature) is the deepest
            level (``"fc"``, ``"linear"``, ``"classifier"``), or ``None`` for none.
        teacher_pooled: The same for the teacher.
        mid_channel: Width of the fused maps; ``None`` for the authors' rule
            ``min(512, channels of the deepest student level)``.
        levels: Pooled grid sizes of the hierarchical context loss (``(4, 2, 1)``).
        warmup_epochs: Epochs of the linear warm-up of the weight (20); 0 disables it.
        weight: Weight in the objective after the warm-up (per pair in the reference: 5.0 for
            resnet32x4 -> resnet8x4, 0.6 for resnet56 -> resnet20; 1.0 is its default).

    Raises:
        ValueError: If the student and teacher level counts differ or are 0, or
            ``mid_channel`` / ``warmup_epochs`` are out of range.
    """

    name = "reviewkd"

    def __init__(
        self,
        student_layers: list[str],
        teacher_layers: list[str],
        student_pooled: str | None = "fc",
        teacher_pooled: str | None = "fc",
        mid_channel: int | None = None,
        levels: tuple[int, ...] = (4, 2, 1),
        warmup_epochs: int = 20,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        student: list[Tap] = [(name, "output") for name in student_layers]
        teacher: list[Tap] = [(name, "output") for name in teacher_layers]
        if student_pooled is not None:
            student.append((student_pooled, "input"))
        if teacher_pooled is not None:
            teacher.append((teacher_pooled, "input"))
        if len(student) != len(teacher) or not student:
            raise ValueError(
                "the student and teacher levels must be non-empty and pair up, got student "
                f"{student} and teacher {teacher}"
            )
        if mid_channel is not None and mid_channel < 1:
            raise ValueError(f"mid_channel must be >= 1 (or None), got {mid_channel}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        levels = tuple(levels)
        if any(not isinstance(level, int) or level < 1 for level in levels):
            raise ValueError(f"levels must be positive ints, got {levels!r}")
        self._student: list[Tap] = student
        self._teacher: list[Tap] = teacher
        self.mid_channel = mid_channel
        self.levels = levels
        self.warmup_epochs = warmup_epochs
        self.abfs = nn.ModuleList()  # one per level, shallow to deep; filled by build()

    def student_taps(self) -> list[Tap]:
        return list(self._student)

    def teacher_taps(self) -> list[Tap]:
        return list(self._teacher)

    def build(
        self, student_shapes: dict[Tap, torch.Size], teacher_shapes: dict[Tap, torch.Size]
    ) -> None:
        student = [_map_shape(tap, student_shapes[tap], "student") for tap in self._student]
        teacher = [_map_shape(tap, teacher_shapes[tap], "teacher") for tap in self._teacher]
        mid = self.mid_channel
        if mid is None:
            mid = min(MAX_MID_CHANNEL, student[-1][1])
        last = len(student) - 1
        self.abfs = nn.ModuleList(
            ABF(s[1], mid, t[1], fuse=i < last)
            for i, (s, t) in enumerate(zip(student, teacher, strict=True))
        )

    def weight_at(self, epoch: int) -> float:
        return self.weight * linear_warmup(epoch, self.warmup_epochs, 0.0, 1.0)

    def fuse(self, student: Sequence[Tensor], out_sizes: Sequence[Sequence[int]]) -> list[Tensor]:
        """Run the ABFs from the deepest level up.

        Args:
            student: Student maps, shallow to deep, ``(B, C_i, H_i, W_i)``.
            out_sizes: The teacher's ``(H_t, W_t)`` at each level.

        Returns:
            The fused student maps, shallow to deep, ``(B, C_t_i, H_t_i, W_t_i)``.

        Raises:
            ValueError: If the term was not built, or the level counts differ from its ABFs.
        """
        if len(self.abfs) == 0:
            raise ValueError(
                "ReviewKDTerm has no ABFs: call build() with the feature shapes first "
                "(FeatureKDModule does at construction)"
            )
        if len(student) != len(self.abfs) or len(out_sizes) != len(self.abfs):
            raise ValueError(
                f"expected {len(self.abfs)} student maps and output sizes, got {len(student)} "
                f"and {len(out_sizes)}"
            )
        outputs: list[Tensor] = []
        residual: Tensor | None = None
        for i in reversed(range(len(self.abfs))):
            out, residual = self.abfs[i](student[i], residual, out_size=out_sizes[i])
            outputs.append(out)
        return outputs[::-1]

    def forward(self, inputs: TermInputs) -> Tensor:
        student = [_as_map(inputs.student_features[tap]) for tap in self._student]
        teacher = [_as_map(inputs.teacher_features[tap]) for tap in self._teacher]
        fused = self.fuse(student, [t.shape[-2:] for t in teacher])
        return hcl_loss(fused, teacher, levels=self.levels)


def _as_map(features: Tensor) -> Tensor:
    """``(B, C)`` pooled features as ``(B, C, 1, 1)``; maps unchanged."""
    return features[:, :, None, None] if features.dim() == 2 else features


def _map_shape(tap: Tap, shape: torch.Size, side: str) -> tuple[int, int, int, int]:
    if len(shape) == 2:
        return (shape[0], shape[1], 1, 1)
    if len(shape) == 4:
        return (shape[0], shape[1], shape[2], shape[3])
    raise ValueError(
        f"ReviewKD levels are (B, C, H, W) maps or (B, C) pooled features, got {side} "
        f"{tap[1]} of {tap[0]!r} with shape {tuple(shape)}"
    )
