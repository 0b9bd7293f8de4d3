"""Feature- and relation-based distillation on any pair of networks, by module name."""

from collections.abc import Iterable
from typing import Literal, cast

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from lightning_kd.features import FeatureTaps, feature_shapes
from lightning_kd.modules.base import Batch, NonFiniteLoss, object_arguments, sgd
from lightning_kd.modules.kd import KDModule
from lightning_kd.modules.terms import Capture, DistillationTerm, Tap, TermInputs


class FeatureKDModule(KDModule):
    """KD with any weighted set of feature, relation and logit terms.

    ``loss = ce_weight * CE + kd_weight * KD(T) + sum_i weight_i(epoch) * term_i``

    Features are tapped with forward hooks on the named submodules of the student and the
    teacher (``"layer2"``, ``"features.6"``, ``"net.layer3"``...), so torchvision, timm or your
    own networks work unchanged. At construction one dry-run forward on a zero batch of shape
    ``(2, *input_size)`` sizes the terms' adapters, which are registered on this module (in the
    optimizer, the checkpoint and DDP's gradient sync).

    One teacher only: its features are tapped by name and each term's adapters are sized for
    it, so there is no ``teachers`` argument here (a config that gives one is refused by the
    parser). To distil from several teachers' logits, use ``KDModule(teachers=...)``.

    Args:
        student, teacher, teacher_checkpoint, student_checkpoint, save_teacher_weights,
        temperature, evaluate_teacher, teacher_mean, teacher_std, input_mean, input_std,
        optimizer, scheduler, scheduler_interval,
        channels_last, nonfinite_loss: as for :class:`~lightning_kd.modules.KDModule`.
        terms: the distillation terms (:mod:`lightning_kd.modules.terms`).
        ce_weight: weight of the hard-label cross-entropy, a finite float ``>= 0``.
        kd_weight: weight of Hinton's ``T^2 KL`` on the logits, a finite float ``>= 0`` (0
            turns it off). (No ``alpha`` shorthand here: the two weights are independent.)
        input_size: ``(C, H, W)`` of one input image, for the dry-run forward.
    """

    progress_bar_names = None

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        terms: list[DistillationTerm] | None = None,
        teacher_cache: str | None = None,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
        input_size: tuple[int, int, int] = (3, 32, 32),
        teacher_checkpoint: str | None = None,
        student_checkpoint: str | None = None,
        save_teacher_weights: bool = True,
        evaluate_teacher: bool = True,
        teacher_mean: list[float] | None = None,
        teacher_std: list[float] | None = None,
        input_mean: list[float] | None = None,
        input_std: list[float] | None = None,
        optimizer: OptimizerCallable = sgd,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        channels_last: bool = False,
        nonfinite_loss: NonFiniteLoss = "error",
    ) -> None:
        super().__init__(
            student,
            teacher,
            teacher_cache=teacher_cache,
            teacher_checkpoint=teacher_checkpoint,
            student_checkpoint=student_checkpoint,
            save_teacher_weights=save_teacher_weights,
            temperature=temperature,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            evaluate_teacher=evaluate_teacher,
            teacher_mean=teacher_mean,
            teacher_std=teacher_std,
            input_mean=input_mean,
            input_std=input_std,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            channels_last=channels_last,
            nonfinite_loss=nonfinite_loss,
        )
        self.save_hyperparameters(
            ignore=object_arguments("student", "teacher", "terms", "optimizer", "scheduler")
        )
        self.terms = nn.ModuleList(terms or [])
        names = [term.name for term in self.distillation_terms]
        if len(set(names)) != len(names):
            raise ValueError(f"terms must have distinct names, got {names}")

        example = torch.zeros(2, *input_size)
        student_taps = _unique(t for term in self.distillation_terms for t in term.student_taps())
        teacher_taps = _unique(t for term in self.distillation_terms for t in term.teacher_taps())
        student_shapes = _shapes(self.student, student_taps, example)
        teacher_shapes = _shapes(self.teacher, teacher_taps, example)
        for term in self.distillation_terms:
            term.build(student_shapes, teacher_shapes)
        self._student_taps = _make_taps(self.student, student_taps)
        self._teacher_taps = _make_taps(self.teacher, teacher_taps)
        self._pending_update: TermInputs | None = None
        if teacher_cache is not None:
            self.check_cacheable()

    @override
    def check_cacheable(self) -> None:
        """A cache holds the teacher's logits only: refuse terms that read its features.

        Raises:
            ValueError: Naming the terms and the layers they read.
        """
        online = {
            term.name: [name for name, _ in term.teacher_taps()]
            for term in self.distillation_terms
            if term.teacher_taps()
        }
        if online:
            raise ValueError(
                f"teacher_cache holds the teacher's logits only, but the terms {online} read "
                "teacher features (name: layers), which need the teacher online: leave "
                "teacher_cache out for this method"
            )

    @property
    def distillation_terms(self) -> list[DistillationTerm]:
        """The terms, typed (``self.terms`` is the ``nn.ModuleList`` that registers them)."""
        return cast(list[DistillationTerm], list(self.terms))

    @override
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        indices = batch[2] if len(batch) > 2 and isinstance(batch[2], Tensor) else None
        if self.teacher_is_cached:  # logit-only terms (check_cacheable)
            teacher_logits = self.cached_teacher_outputs(batch)[:, 0, 0]
            teacher_features: dict[Tap, Tensor] = {}
        else:
            with torch.inference_mode():
                teacher_logits = self.teacher_forward(x)
                teacher_features = _pop(self._teacher_taps)
            # Leave inference mode so losses may save these constants for the backward pass.
            teacher_logits = teacher_logits.clone()
            teacher_features = {k: v.clone() for k, v in teacher_features.items()}
        student_logits = self.student(x)
        student_features = _pop(self._student_taps)

        losses = self.logit_losses(student_logits, teacher_logits, y)
        inputs = TermInputs(
            student_features=student_features,
            teacher_features=teacher_features,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            targets=y,
            indices=indices,
            epoch=self.current_epoch,
        )
        total = losses["loss"]
        for term in self.distillation_terms:
            value = term(inputs)
            losses[f"loss_{term.name}"] = value
            losses.update(term.logged_values(inputs))
            total = total + term.weight_at(self.current_epoch) * value
        losses["loss"] = total
        # State updates (CRD's memory) wait until after backward: the loss still needs the
        # state it was computed from.
        self._pending_update = inputs
        return losses

    @override
    def on_after_backward(self) -> None:
        inputs, self._pending_update = self._pending_update, None
        if inputs is not None:
            for term in self.distillation_terms:
                term.update(inputs)

    @override
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        values = super().evaluate(batch)
        self._clear_taps()  # evaluation forwards fire the hooks too
        return values

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = super().predict_step(batch, batch_idx)
        self._clear_taps()
        return logits

    def _clear_taps(self) -> None:
        for taps in (*self._student_taps, *self._teacher_taps):
            taps.clear()

    def remove_taps(self) -> None:
        """Remove the forward hooks from the student and the teacher (e.g. before export)."""
        for taps in (*self._student_taps, *self._teacher_taps):
            taps.remove()


def _unique(taps: Iterable[Tap]) -> list[Tap]:
    seen: list[Tap] = []
    for tap in taps:
        if tap not in seen:
            seen.append(tap)
    return seen


def _by_capture(taps: list[Tap]) -> dict[Capture, list[str]]:
    groups: dict[Capture, list[str]] = {}
    for name, capture in taps:
        groups.setdefault(capture, []).append(name)
    return groups


def _make_taps(model: nn.Module, taps: list[Tap]) -> list[FeatureTaps]:
    return [
        FeatureTaps(model, names, capture=capture) for capture, names in _by_capture(taps).items()
    ]


def _shapes(model: nn.Module, taps: list[Tap], example: Tensor) -> dict[Tap, torch.Size]:
    shapes: dict[Tap, torch.Size] = {}
    for capture, names in _by_capture(taps).items():
        for name, shape in feature_shapes(model, names, example, capture=capture).items():
            shapes[(name, capture)] = shape
    return shapes


def _pop(all_taps: list[FeatureTaps]) -> dict[Tap, Tensor]:
    features: dict[Tap, Tensor] = {}
    for taps in all_taps:
        for name, value in taps.pop().items():
            features[(name, taps.capture)] = value
    return features
