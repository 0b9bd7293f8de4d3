"""Several frozen teachers: one :class:`Teacher` per network, combined by a
:class:`TeacherEnsemble`.

:class:`~lightning_kd.modules.KDModule` takes either one ``teacher`` or a weighted list of
``teachers``; in YAML::

    teachers:
      - class_path: lightning_kd.modules.Teacher
        init_args:
          network: {class_path: lightning_kd.models.CIFARResNet, init_args: {depth: 56}}
          checkpoint: checkpoints/resnet56/last.ckpt
          weight: 2.0
      - class_path: lightning_kd.modules.Teacher
        init_args:
          network: {class_path: lightning_kd.models.WideResNet, init_args: {depth: 40}}
          checkpoint: checkpoints/wrn_40_2/last.ckpt
    ensemble: probabilities   # or: logits

How the teachers' outputs become one soft target is in :mod:`lightning_kd.losses.ensemble`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import cast

from torch import Tensor, nn
from typing_extensions import Self, override

from lightning_kd.losses.ensemble import EnsembleMode, ensemble_targets, ensemble_weights
from lightning_kd.metrics import top1_agreement, topk_correct
from lightning_kd.normalization import Renormalize

__all__ = ["CachedTeachers", "Teacher", "TeacherEnsemble", "teacher_metrics"]


class Teacher(nn.Module):
    """One frozen teacher of an ensemble: its network, the file of its weights, its weight in
    the combined target and the input normalisation it expects.

    The teacher is frozen for real: its parameters have ``requires_grad=False`` and it stays in
    eval mode whatever ``.train()`` is called with (its BatchNorm statistics never move).

    Args:
        network: the pretrained network, ``(B, 3, H, W) -> (B, C)``, same input and classes as
            the student.
        checkpoint: optional file loaded into ``network`` when the
            :class:`~lightning_kd.modules.KDModule` is built (as its ``teacher_checkpoint``);
            its path and SHA-256 are recorded in every checkpoint.
        weight: the teacher's weight in the combined target, a finite float ``>= 0``; the
            weights of an ensemble are normalised to sum 1 (``1`` each: a plain mean).
        mean, std: the per-channel input normalisation this teacher expects when it differs
            from the student's (as ``teacher_mean`` / ``teacher_std`` of a single teacher);
            ``None`` (default): it sees the batch as the student does.

    Raises:
        ValueError: On a weight that is negative or not finite, or only one of ``mean`` /
            ``std``.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        checkpoint: str | None = None,
        weight: float = 1.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"Teacher weight must be a finite number >= 0, got {weight}")
        if (mean is None) != (std is None):
            raise ValueError(f"Teacher mean and std go together, got mean={mean} and std={std}")
        self.network = network
        self.checkpoint = checkpoint
        self.weight = float(weight)
        self.mean, self.std = mean, std
        #: Maps the batch to this teacher's input normalisation (identity when not needed).
        self.input: nn.Module = nn.Identity()
        self.network.requires_grad_(False)
        self.eval()

    @property
    def needs_input_statistics(self) -> bool:
        """Whether ``mean`` / ``std`` are set but the batches' own statistics are not known
        yet (see :meth:`set_input_statistics`)."""
        return self.mean is not None and isinstance(self.input, nn.Identity)

    def set_input_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Re-normalise batches that arrive normalised with ``(mean, std)`` to this teacher's
        ``(self.mean, self.std)``; nothing when the teacher has no ``mean`` / ``std``."""
        if self.mean is not None and self.std is not None:
            self.input = Renormalize(mean, std, self.mean, self.std)

    @override
    def train(self, mode: bool = True) -> Self:
        """Stay in eval mode: a teacher is never trained."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` of the network on ``x`` re-normalised to its own statistics."""
        return self.network(self.input(x))


class TeacherEnsemble(nn.ModuleList):
    """The :class:`Teacher` s of a :class:`~lightning_kd.modules.KDModule` and how their
    outputs combine.

    Registered as the module's ``teacher``, so member ``k``'s weights are the state-dict keys
    ``teacher.<k>.network.*`` and everything that holds for one teacher (frozen, eval mode,
    left out of checkpoints with ``save_teacher_weights=False``) holds for all.

    Args:
        teachers: one or more :class:`Teacher` s.
        mode: ``"probabilities"`` (weighted mean of the softened distributions) or
            ``"logits"`` (softened weighted mean of the logits); see
            :mod:`lightning_kd.losses.ensemble`.

    Raises:
        ValueError: On an empty list, an entry that is not a :class:`Teacher`, weights that
            are all 0, or an unknown ``mode``.
    """

    def __init__(self, teachers: Sequence[Teacher], *, mode: EnsembleMode = "probabilities"):
        if not teachers:
            raise ValueError("teachers must hold at least one Teacher, got []")
        for k, teacher in enumerate(teachers):
            if not isinstance(teacher, Teacher):
                raise ValueError(
                    f"teachers[{k}] must be a lightning_kd.modules.Teacher (network, "
                    f"checkpoint, weight, mean, std), got {type(teacher).__name__}"
                )
        if mode not in ("probabilities", "logits"):
            raise ValueError(f"ensemble must be 'probabilities' or 'logits', got {mode!r}")
        super().__init__(teachers)
        self.mode: EnsembleMode = mode
        #: The members' weights normalised to sum 1.
        self.weights: list[float] = ensemble_weights([t.weight for t in teachers])

    @property
    def members(self) -> list[Teacher]:
        """The teachers, typed."""
        return cast(list[Teacher], list(self))

    def set_input_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """:meth:`Teacher.set_input_statistics` on every member that has a ``mean`` / ``std``."""
        for teacher in self.members:
            teacher.set_input_statistics(mean, std)

    def outputs(self, x: Tensor) -> list[Tensor]:
        """Each teacher's logits ``(B, C)`` on ``x`` (each on its own input normalisation)."""
        return [teacher(x) for teacher in self.members]

    def target(self, teacher_logits: Sequence[Tensor], *, temperature: float) -> Tensor:
        """The combined ``(B, C)`` soft target at ``temperature`` of the members' logits."""
        return ensemble_targets(
            teacher_logits, self.weights, temperature=temperature, mode=self.mode
        )

    def forward(self, x: Tensor) -> Tensor:
        """Refused: an ensemble has no logits of its own. Use :meth:`outputs` and
        :meth:`target`."""
        raise TypeError(
            f"an ensemble of {len(self)} teachers has no logits of its own: use outputs(x) for "
            "each teacher's logits and target(...) for the combined distribution"
        )


class CachedTeachers(nn.Module):
    """Stands in for teacher networks left out of a module that trains from a teacher cache
    (``teacher_cache``): it holds no weights, only what the cache's manifest says of the
    teachers (their normalised ``weights``, and how to combine several), and refuses to run.

    Args:
        weights: The teachers' normalised weights, from the cache's manifest.
        mode: How several teachers' outputs combine (see :class:`TeacherEnsemble`).
        folder: The cache folder (for messages).
    """

    def __init__(self, weights: Sequence[float], *, mode: EnsembleMode, folder: str) -> None:
        super().__init__()
        self.weights: list[float] = ensemble_weights(list(weights))
        self.mode: EnsembleMode = mode
        self.folder = folder

    def __len__(self) -> int:
        return len(self.weights)

    def target(self, teacher_logits: Sequence[Tensor], *, temperature: float) -> Tensor:
        """The combined ``(B, C)`` soft target of the cached logits of several teachers."""
        return ensemble_targets(
            teacher_logits, self.weights, temperature=temperature, mode=self.mode
        )

    def forward(self, x: Tensor) -> Tensor:
        """Refused: the teacher networks are not here."""
        raise ValueError(
            f"the teacher network was left out: its training outputs come from teacher_cache "
            f"{self.folder}, which has none for this input (validation, test, predict, or "
            "features). Give the module its teacher (teacher= or teachers=) as well, or set "
            "evaluate_teacher=False"
        )


def teacher_metrics(
    student_logits: Tensor, teacher_logits: Sequence[Tensor], targets: Tensor
) -> dict[str, Tensor]:
    """Per-sample scores of each teacher of an ensemble, all ``(B,)`` float32 0/1.

    ``teacher<k>_acc`` (teacher ``k`` top-1 correct), ``teacher<k>_agreement`` (teacher ``k``
    and the student predict the same class) and, with two or more teachers,
    ``teacher_agreement`` (the fraction of teacher pairs that predict the same class).

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``K`` tensors ``(B, C)``.
        targets: ``(B,)`` labels.
    """
    values: dict[str, Tensor] = {}
    for k, logits in enumerate(teacher_logits):
        values[f"teacher{k}_acc"] = topk_correct(logits, targets)
        values[f"teacher{k}_agreement"] = top1_agreement(student_logits, logits)
    pairs = [top1_agreement(a, b) for a, b in combinations(teacher_logits, 2)]
    if pairs:
        values["teacher_agreement"] = sum(pairs[1:], pairs[0]) / len(pairs)
    return values


def teacher_metric_names(count: int) -> tuple[str, ...]:
    """The names :func:`teacher_metrics` returns for ``count`` teachers."""
    names: list[str] = []
    for k in range(count):
        names += [f"teacher{k}_acc", f"teacher{k}_agreement"]
    return (*names, "teacher_agreement") if count > 1 else tuple(names)
