"""Classical knowledge distillation from a frozen, pretrained teacher (Hinton et al., 2015)."""

import hashlib
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import Self, override

from lightning_kd.caching.build import run_description
from lightning_kd.caching.store import (
    MANIFEST,
    CacheManifest,
    TeacherCache,
    check_manifest_matches,
    normalised_precision,
    state_dict_sha256,
)
from lightning_kd.data.datamodule import ImageDataModule, ViewKeys
from lightning_kd.losses import kd_loss, standardize_logits
from lightning_kd.losses.ensemble import EnsembleMode, kd_loss_to_distribution
from lightning_kd.metrics import top1_agreement, topk_correct
from lightning_kd.models.loading import load_weights
from lightning_kd.modules.base import (
    CHECKPOINT_RECORD,
    Batch,
    LightningKDModule,
    NonFiniteLoss,
    object_arguments,
    sgd,
)
from lightning_kd.modules.teachers import (
    CachedTeachers,
    Teacher,
    TeacherEnsemble,
    teacher_metric_names,
    teacher_metrics,
)
from lightning_kd.normalization import Renormalize

TEACHER_PREFIX = "teacher."


class KDModule(LightningKDModule):
    """Distil a student from a frozen teacher with Hinton's soft-target loss.

    ``loss = ce_weight * CE(student, labels) + kd_weight * T^2 * KL(p_t(T) || p_s(T))``.

    ``ce_weight`` and ``kd_weight`` are the weights the loss uses (the attributes of the same
    names, and the values the checkpoint's hyperparameters record). ``alpha`` is Hinton's
    shorthand for the two: ``alpha=a`` means ``ce_weight=a, kd_weight=1 - a``; it cannot be
    combined with either weight. With none of the three: ``ce_weight=0.1, kd_weight=0.9``.

    The teacher is frozen for real: its parameters have ``requires_grad=False`` and are not in
    the optimizer, it stays in eval mode when Lightning calls ``.train()`` (so its BatchNorm
    statistics never move), and it runs under ``torch.inference_mode``.

    To add a loss term, subclass and override :meth:`compute_losses`, reusing
    :meth:`teacher_logits` and :meth:`logit_losses`.

    **A teacher cache.** With ``teacher_cache: DIR`` (built by ``lightning-kd cache`` from
    this run's config) the teacher's training outputs are read from the cache, for the exact
    view of each image in each epoch, instead of being recomputed; ``teacher`` (or
    ``teachers``) may then be left out, and the run checks the cache was built for its
    training set, transform, view seed, class count, precision and (when given) teacher
    weights, naming the field that differs. With full fp32 logits the student trains exactly
    as with the teacher online. Without the teacher network, evaluation logs no teacher
    metrics. Modules that read teacher features (FitNets, AT, RKD, CRD, ReviewKD) need the
    teacher online and refuse a cache.

    **Several teachers.** Instead of ``teacher``, ``teachers`` takes a list of
    :class:`~lightning_kd.modules.Teacher` s, each with its own ``network``, ``checkpoint``,
    ``weight`` and input ``mean`` / ``std``. The KD term is then ``T^2 KL(q || p_s(T))``
    against their combined distribution ``q`` (:mod:`lightning_kd.losses.ensemble`): by
    default (``ensemble="probabilities"``) ``q = sum_k w_k softmax(z_k / T)``, the weighted
    mean of the softened distributions, with the weights normalised to sum 1;
    ``ensemble="logits"`` softens the weighted mean of the logits instead. (Averaging the
    per-teacher KD losses would give the student the same gradient as the default, but a
    larger loss value, by the teachers' Jensen-Shannon divergence.) Every teacher is frozen
    as one is, recorded (path and SHA-256) and checked on resume, and left out of
    checkpoints by ``save_teacher_weights=False``. ``teacher_acc`` and ``agreement`` are
    then those of the combined target; ``teacher<k>_acc``, ``teacher<k>_agreement`` (with the
    student) and ``teacher_agreement`` (mean over teacher pairs) are logged as well, in
    training and (with ``evaluate_teacher``) evaluation. A subclass that uses one teacher's
    logits (:meth:`teacher_logits`, :meth:`teacher_forward`) refuses an ensemble.

    Args:
        student: the network being trained, ``(B, 3, H, W) -> (B, C)``.
        teacher: the pretrained network, same input and class count as the student; exactly
            one of ``teacher`` and ``teachers``.
        teachers: several pretrained teachers (see above), each a
            :class:`~lightning_kd.modules.Teacher`; instead of ``teacher``, and then without
            ``teacher_checkpoint`` / ``teacher_mean`` / ``teacher_std`` (each teacher has its
            own). Both may be left out with ``teacher_cache``.
        teacher_cache: a folder written by ``lightning-kd cache`` (see above): the teachers'
            training outputs are read from it. A run that trains more epochs than it covers is
            refused unless the datamodule repeats views (``view_epochs``).
        ensemble: how ``teachers`` combine: ``"probabilities"`` (default) or ``"logits"``.
        teacher_checkpoint: optional path loaded into ``teacher`` at construction (a Lightning
            checkpoint of a ``ClassifierModule``, a plain ``state_dict``, or a torchvision
            weights file; see :func:`lightning_kd.models.load_weights`).
        student_checkpoint: optional path loaded into ``student`` at construction (a warm
            start, e.g. stage 2 of FitNets from the stage-1 checkpoint).
        save_teacher_weights: store the teacher's weights in this module's checkpoints. When
            ``False`` (requires ``teacher_checkpoint``) checkpoints hold only the teacher's source
            path and its SHA-256, and the teacher is reloaded from that file, which keeps
            checkpoints student-sized.
        temperature: softmax temperature ``T > 0`` of the soft targets.
        ce_weight: weight of the hard-label cross-entropy, a finite float ``>= 0``; 0.1 when
            not given (``None``) and ``alpha`` is not given either.
        kd_weight: weight of the ``T^2 KL`` soft-target term, a finite float ``>= 0``; 0.9
            when not given (``None``) and ``alpha`` is not given either.
        alpha: shorthand for ``ce_weight=alpha, kd_weight=1 - alpha``, in ``[0, 1]``; only
            without ``ce_weight`` and ``kd_weight``.
        logit_standardization: z-score each row of the student's and the teacher's logits
            (:func:`~lightning_kd.losses.standardize_logits`, not detached) before the
            temperature softmax of the KD term ("KD + LS", Sun et al., CVPR 2024; the authors
            use ``temperature=2``, ``ce_weight=0.1``, ``kd_weight=9`` on CIFAR-100). The
            cross-entropy and the accuracies use the raw logits. One teacher only.
        evaluate_teacher: also run the teacher on validation/test batches to log its accuracy
            and the teacher-student top-1 agreement.
        teacher_mean, teacher_std: the per-channel input normalisation the teacher expects
            (e.g. ImageNet's ``[0.485, 0.456, 0.406]`` / ``[0.229, 0.224, 0.225]`` for a timm or
            torchvision teacher) when it differs from the student's; the teacher then sees
            the batch re-normalised (:class:`~lightning_kd.normalization.Renormalize`), the
            student the batch as it is. ``None`` (default): both see the same batch.
        input_mean, input_std: the normalisation the batches arrive with; by default the
            datamodule's ``mean`` / ``std`` (read at setup). Needed only with
            ``teacher_mean``.
        optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss: see
            :class:`~lightning_kd.modules.base.LightningKDModule`.

    Raises:
        ValueError: On a temperature that is not > 0, a weight that is negative or not finite,
            ``alpha`` outside ``[0, 1]`` or given together with ``ce_weight`` / ``kd_weight``,
            ``save_teacher_weights=False`` without ``teacher_checkpoint`` (or a teacher of
            ``teachers`` without its ``checkpoint``), both or neither of ``teacher`` and
            ``teachers``, or teacher weights that are negative or all 0.
    """

    #: The weights when neither they nor ``alpha`` are given (Hinton's alpha = 0.1).
    DEFAULT_CE_WEIGHT: ClassVar[float] = 0.1
    DEFAULT_KD_WEIGHT: ClassVar[float] = 0.9

    eval_metric_names = ("loss", "acc", "acc_top5", "teacher_acc", "agreement")
    progress_bar_names: ClassVar[tuple[str, ...] | None] = ("loss_ce", "loss_kd")

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        teachers: list[Teacher] | None = None,
        ensemble: EnsembleMode = "probabilities",
        teacher_cache: str | None = None,
        teacher_checkpoint: str | None = None,
        student_checkpoint: str | None = None,
        save_teacher_weights: bool = True,
        temperature: float = 4.0,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
        alpha: float | None = None,
        logit_standardization: bool = False,
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
        super().__init__(optimizer, scheduler, scheduler_interval, channels_last, nonfinite_loss)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        ce_weight, kd_weight = loss_weights(ce_weight, kd_weight, alpha)
        if logit_standardization and teachers is not None:
            raise ValueError(
                "logit_standardization applies to one teacher's logits, got teachers= a list "
                f"of {len(teachers)}; use teacher=, or logit_standardization=False"
            )
        #: The cache's manifest (read at construction when the teacher is left out, else at
        #: setup) and its reader (opened at setup).
        self.teacher_cache = teacher_cache
        self.cache_manifest: CacheManifest | None = None
        self._cache: TeacherCache | None = None
        if teacher is None and teachers is None and teacher_cache is not None:
            self.cache_manifest = _read_manifest(teacher_cache)
            teacher = CachedTeachers(
                [t["weight"] for t in self.cache_manifest.teachers],
                mode=ensemble,
                folder=str(Path(teacher_cache).expanduser().resolve()),
            )
            if teacher_checkpoint is not None or teacher_mean is not None:
                raise ValueError(
                    "teacher_checkpoint / teacher_mean belong to a teacher network, but the "
                    "teacher is left out (teacher_cache supplies its outputs); give teacher= as "
                    "well, or drop them"
                )
        else:
            teacher = _teacher_network(
                teacher,
                teachers,
                ensemble,
                teacher_checkpoint=teacher_checkpoint,
                teacher_mean=teacher_mean,
                teacher_std=teacher_std,
            )
        if not save_teacher_weights and not isinstance(teacher, CachedTeachers):
            _check_reloadable(teacher, teacher_checkpoint)
        self.save_hyperparameters(
            ignore=object_arguments("student", "teacher", "teachers", "optimizer", "scheduler")
        )
        # The hyperparameters record the weights the loss uses, in the one convention.
        self.hparams.update(ce_weight=ce_weight, kd_weight=kd_weight, alpha=None)
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        #: Weights of the cross-entropy and of the KD term in :meth:`logit_losses`.
        self.ce_weight: float = ce_weight
        self.kd_weight: float = kd_weight
        #: Whether :meth:`logit_losses` z-scores the logits of its KD term.
        self.logit_standardization = logit_standardization
        self.evaluate_teacher = evaluate_teacher
        self.save_teacher_weights = save_teacher_weights
        self.teacher_checkpoint = teacher_checkpoint
        self.student_checkpoint = student_checkpoint
        #: Where the teacher / student weights came from: absolute path and SHA-256 of each
        #: file (``None`` when not loaded from a file), recorded in every checkpoint.
        self.teacher_source = _load_recorded(self.teacher, teacher_checkpoint)
        self.student_source = _load_recorded(self.student, student_checkpoint)
        self.teacher_sha256: str | None = self.teacher_source["sha256"]
        #: The source of every teacher: ``[teacher_source]`` for one, one per member of an
        #: ensemble (each loaded from its own ``checkpoint`` here).
        self.teacher_sources = [self.teacher_source]
        if isinstance(self.teacher, TeacherEnsemble):
            self.teacher_sources = [
                _load_recorded(t.network, t.checkpoint) for t in self.teacher.members
            ]
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if (teacher_mean is None) != (teacher_std is None):
            raise ValueError(
                "teacher_mean and teacher_std go together, got teacher_mean="
                f"{teacher_mean} and teacher_std={teacher_std}"
            )
        if (input_mean is None) != (input_std is None):
            raise ValueError(
                f"input_mean and input_std go together, got input_mean={input_mean} and "
                f"input_std={input_std}"
            )
        self.teacher_mean, self.teacher_std = teacher_mean, teacher_std
        #: Maps the batch to the teacher's input normalisation (identity when not needed).
        self.teacher_input: nn.Module = nn.Identity()
        if teacher_mean is not None and teacher_std is not None and input_mean is not None:
            assert input_std is not None
            self.teacher_input = Renormalize(input_mean, input_std, teacher_mean, teacher_std)
        if isinstance(self.teacher, TeacherEnsemble):
            if input_mean is not None and input_std is not None:
                self.teacher.set_input_statistics(input_mean, input_std)
            # Per-teacher scores, averaged over the evaluation set like the others.
            extra = teacher_metric_names(len(self.teacher))
            # An instance value that extends the class's names for this module only.
            self.eval_metric_names = (*type(self).eval_metric_names, *extra)  # type: ignore[misc, assignment]
            for stage in ("val", "test"):
                for name in extra:
                    self.eval_metrics[f"{stage}_{name}"] = MeanMetric()

    @override
    def setup(self, stage: str) -> None:
        """Build the teacher's input re-normalisation from the datamodule's ``mean`` / ``std``
        when ``teacher_mean`` (or a :class:`Teacher`'s ``mean``) is set and ``input_mean`` is
        not; with ``teacher_cache``, open the cache and check it was built for this run."""
        if self.needs_input_statistics:
            datamodule = getattr(self.trainer, "datamodule", None)
            mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            if mean is None or std is None:
                single = self.teacher_mean is not None
                what = "teacher_mean / teacher_std" if single else "a Teacher's mean / std"
                raise ValueError(
                    f"{what} need the normalisation the batches arrive with; the datamodule "
                    f"({type(datamodule).__name__}) has no mean / std: pass input_mean and "
                    "input_std"
                )
            self.set_input_statistics(mean, std)
        if self.teacher_cache is not None and stage == "fit":
            self._open_cache()
        super().setup(stage)

    @property
    def needs_input_statistics(self) -> bool:
        """Whether a teacher re-normalises its input but the batches' statistics are unknown."""
        single = self.teacher_mean is not None and isinstance(self.teacher_input, nn.Identity)
        members = isinstance(self.teacher, TeacherEnsemble) and any(
            t.needs_input_statistics for t in self.teacher.members
        )
        return single or members

    def set_input_statistics(self, mean: Any, std: Any) -> None:
        """Batches arrive normalised with ``(mean, std)``: re-normalise them for each teacher
        that expects other statistics (nothing when none does, or it is already set)."""
        if self.teacher_mean is not None and isinstance(self.teacher_input, nn.Identity):
            assert self.teacher_std is not None
            self.teacher_input = Renormalize(mean, std, self.teacher_mean, self.teacher_std)
        if isinstance(self.teacher, TeacherEnsemble):
            self.teacher.set_input_statistics(mean, std)

    # ------------------------------------------------------------------ teacher cache
    @property
    def teacher_is_cached(self) -> bool:
        """Whether the training teacher outputs come from ``teacher_cache``."""
        return self.teacher_cache is not None

    @property
    def teacher_is_online(self) -> bool:
        """Whether the teacher network is here (not left out for a cache)."""
        return not isinstance(self.teacher, CachedTeachers)

    def check_cacheable(self) -> None:
        """Refuse a cache when the loss needs more of the teacher than its logits (a subclass
        that reads teacher features overrides this).

        Raises:
            ValueError: Never here; subclasses raise naming what they need.
        """

    @property
    def cache_num_views(self) -> int:
        """The views of each training image the loss reads the teacher on (1 here)."""
        return 1

    def cache_teachers(self) -> list[dict[str, Any]]:
        """The teachers a cache built from this module records: per teacher its checkpoint
        ``path`` and ``sha256``, the SHA-256 of its weights and its normalised ``weight``.

        Raises:
            ValueError: If the teacher network is left out (nothing to cache).
        """
        if not self.teacher_is_online:
            raise ValueError(
                "this config leaves the teacher network out (it trains from teacher_cache "
                f"{self.teacher_cache}); lightning-kd cache needs the teacher: give the module "
                "teacher= (or teachers=) with its checkpoint"
            )
        if isinstance(self.teacher, TeacherEnsemble):
            members = [
                (m.network, source, w)
                for m, source, w in zip(
                    self.teacher.members, self.teacher_sources, self.teacher.weights, strict=True
                )
            ]
        else:
            members = [(self.teacher, self.teacher_source, 1.0)]
        return [
            {
                "path": source["path"],
                "sha256": source["sha256"],
                "weights_sha256": state_dict_sha256(network),
                "weight": weight,
            }
            for network, source, weight in members
        ]

    def cache_outputs(self, views: list[Tensor]) -> Tensor:
        """Every teacher's logits on every view of a chunk of training images, ``(R, V, K,
        C)`` (what ``lightning-kd cache`` stores).

        Args:
            views: ``V`` normalised views ``(R, 3, H, W)``, as the training batch holds them.
        """
        per_view = []
        for view in views:
            if isinstance(self.teacher, TeacherEnsemble):
                per_view.append(torch.stack(self.teacher.outputs(view), dim=1))  # (R, K, C)
            else:
                per_view.append(self.teacher_forward(view).unsqueeze(1))  # (R, 1, C)
        return torch.stack(per_view, dim=1)

    def cached_teacher_outputs(self, batch: Batch) -> Tensor:
        """The cached teacher logits of a training batch, float32 ``(B, V, K, C)``, by the
        :class:`~lightning_kd.data.ViewKeys` that ends the batch.

        Raises:
            ValueError: If the batch carries no keys.
        """
        keys = batch[-1]
        if not isinstance(keys, ViewKeys) or self._cache is None:
            raise ValueError(
                "teacher_cache needs training batches that end with their ViewKeys "
                "(ImageDataModule with return_keys=True, set at setup); got a batch ending in "
                f"{type(keys).__name__}"
            )
        positions = keys.host_positions if keys.host_positions is not None else keys.positions
        return self._cache.lookup(keys.epoch, positions, device=keys.positions.device)

    def training_teacher_outputs(self, batch: Batch, x: Tensor) -> list[Tensor]:
        """Every teacher's ``(B, C)`` logits for the training batch's (first) view: from the
        cache with ``teacher_cache``, else computed (:meth:`teacher_outputs`)."""
        if self.teacher_is_cached:
            return list(self.cached_teacher_outputs(batch)[:, 0].unbind(1))
        return self.teacher_outputs(x)

    def _open_cache(self) -> None:
        """Open ``teacher_cache`` and refuse it unless it was built for this run (training
        set, transform, view seed, classes, views, precision, teacher weights, epochs)."""
        assert self.teacher_cache is not None
        self.check_cacheable()
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, ImageDataModule):
            raise TypeError(
                "teacher_cache needs an ImageDataModule (keyed training views, e.g. "
                f"CIFAR10DataModule), got {type(datamodule).__name__}"
            )
        cache = TeacherCache(self.teacher_cache)
        manifest = cache.manifest
        expected = run_description(self, datamodule)
        expected["precision"] = normalised_precision(trainer.precision)
        check_manifest_matches(manifest, expected, folder=cache.folder)
        if self.teacher_is_online:
            ours = self.cache_teachers()
            theirs = manifest.teachers
            if len(ours) != len(theirs):
                raise ValueError(
                    f"teacher_cache {cache.folder} holds {len(theirs)} teacher(s), this module "
                    f"has {len(ours)}: use the teachers it was built with, or rebuild it"
                )
            for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                if a["weights_sha256"] != b["weights_sha256"]:
                    raise ValueError(
                        f"teacher_cache {cache.folder} was built with other teacher weights "
                        f"(teacher {k}: {b['path']}, sha256 {b['sha256']}), not this run's "
                        f"({a['path']}, sha256 {a['sha256']}): rebuild the cache with "
                        "lightning-kd cache, or point teacher_cache at the one of this teacher"
                    )
        self._check_cache_epochs(manifest, datamodule, cache.folder)
        datamodule.return_keys = True
        self._cache = cache
        self.cache_manifest = manifest

    def _check_cache_epochs(
        self, manifest: CacheManifest, datamodule: ImageDataModule, folder: Path
    ) -> None:
        """Refuse a run whose views go beyond the cached epochs."""
        max_epochs = self.trainer.max_epochs
        view_epochs = datamodule.view_epochs
        limits = [v for v in (max_epochs, view_epochs) if v is not None and v > 0]
        needed = min(limits) if limits else None
        if needed is None or needed > manifest.epochs:
            runs = "without an epoch limit" if needed is None else f"{max_epochs} epochs"
            rebuild = "" if needed is None else f"build the cache with --epochs {needed}, "
            raise ValueError(
                f"the run trains {runs} but teacher_cache {folder} covers epochs "
                f"0..{manifest.epochs - 1}: {rebuild}train --trainer.max_epochs "
                f"{manifest.epochs}, or repeat the cached views with --data.init_args.view_epochs "
                f"{manifest.epochs}"
            )

    @override
    def train(self, mode: bool = True) -> Self:
        """Set train/eval mode on everything but the teacher, which always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Student logits ``(B, C)`` for images ``(B, 3, H, W)``."""
        return self.student(x)

    def teacher_forward(self, x: Tensor) -> Tensor:
        """The teacher on the batch ``x``, re-normalised to its own input statistics
        (``teacher_mean`` / ``teacher_std``) if those differ from the student's.

        Raises:
            ValueError: With ``teachers`` (an ensemble has no single teacher's logits; see
                :meth:`teacher_outputs`).
        """
        if isinstance(self.teacher, TeacherEnsemble):
            raise ValueError(
                f"{type(self).__name__} uses one teacher's logits (teacher_forward), but it "
                f"was given {len(self.teacher)} teachers (teachers=...): give it one teacher, "
                "or use teacher_outputs() and the ensemble's combined target"
            )
        return self.teacher(self.teacher_input(x))

    def teacher_outputs(self, x: Tensor) -> list[Tensor]:
        """Every teacher's logits ``(B, C)``, computed without autograd (normal tensors that
        losses may save): ``[teacher_logits(x)]`` for one teacher, one per member (each on its
        own input normalisation) for ``teachers``."""
        if not isinstance(self.teacher, TeacherEnsemble):
            return [self.teacher_logits(x)]
        with torch.inference_mode():
            outputs = self.teacher.outputs(x)
        return [logits.clone() for logits in outputs]

    def ensemble_logit_losses(
        self, student_logits: Tensor, teacher_logits: list[Tensor], targets: Tensor
    ) -> dict[str, Tensor]:
        """The objective with ``teachers`` and its parts, for ``(B, C)`` student logits, the
        members' ``(B, C)`` logits and ``(B,)`` labels.

        ``loss = ce_weight * CE + kd_weight * T^2 KL(q || p_s)`` with ``q`` the combined
        target (:meth:`TeacherEnsemble.target`). Returns ``loss``, ``loss_ce``, ``loss_kd``,
        student ``acc``, ``teacher_acc`` and ``agreement`` of the combined target, and
        ``teacher<k>_acc``, ``teacher<k>_agreement``, ``teacher_agreement``
        (:func:`~lightning_kd.modules.teachers.teacher_metrics`), each a scalar.
        """
        assert isinstance(self.teacher, TeacherEnsemble | CachedTeachers)
        target = self.teacher.target(teacher_logits, temperature=self.temperature)  # (B, C)
        ce = F.cross_entropy(student_logits.float(), targets)
        kd = kd_loss_to_distribution(student_logits, target, temperature=self.temperature)
        student_detached = student_logits.detach()
        losses = {
            "loss": self.ce_weight * ce + self.kd_weight * kd,
            "loss_ce": ce,
            "loss_kd": kd,
            "acc": topk_correct(student_detached, targets).mean(),
            "teacher_acc": topk_correct(target, targets).mean(),
            "agreement": top1_agreement(student_detached, target).mean(),
        }
        for name, value in teacher_metrics(student_detached, teacher_logits, targets).items():
            losses[name] = value.mean()
        return losses

    def teacher_logits(self, x: Tensor) -> Tensor:
        """Teacher logits ``(B, C)``, computed without autograd, as a normal (non-inference)
        tensor that losses may save for the backward pass."""
        with torch.inference_mode():
            logits = self.teacher_forward(x)
        return logits.clone()

    def logit_losses(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """The Hinton objective and its parts for ``(B, C)`` logits and ``(B,)`` labels.

        ``loss = ce_weight * CE + kd_weight * KD``, the KD term on z-scored logits with
        ``logit_standardization``.
        Returns ``loss``, ``loss_ce``, ``loss_kd``, student ``acc``, ``teacher_acc`` and
        ``agreement`` (teacher-student top-1), each a scalar.
        """
        ce = F.cross_entropy(student_logits.float(), targets)
        if self.logit_standardization:
            kd = kd_loss(
                standardize_logits(student_logits),
                standardize_logits(teacher_logits),
                temperature=self.temperature,
            )
        else:
            kd = kd_loss(student_logits, teacher_logits, temperature=self.temperature)
        student_detached = student_logits.detach()
        return {
            "loss": self.ce_weight * ce + self.kd_weight * kd,
            "loss_ce": ce,
            "loss_kd": kd,
            "acc": topk_correct(student_detached, targets).mean(),
            "teacher_acc": topk_correct(teacher_logits, targets).mean(),
            "agreement": top1_agreement(student_detached, teacher_logits).mean(),
        }

    @override
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        outputs = self.training_teacher_outputs(batch, x)
        if self.is_ensemble:
            return self.ensemble_logit_losses(self.student(x), outputs, y)
        student_logits = self.student(x)
        return self.logit_losses(student_logits, outputs[0], y)

    @property
    def is_ensemble(self) -> bool:
        """Whether the module distils from several teachers (online or cached)."""
        return isinstance(self.teacher, TeacherEnsemble) or (
            isinstance(self.teacher, CachedTeachers) and len(self.teacher) > 1
        )

    @override
    def evaluate(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        student_logits = self.student(x)
        values = {
            "loss": F.cross_entropy(student_logits.float(), y, reduction="none"),
            "acc": topk_correct(student_logits, y, k=1),
            "acc_top5": topk_correct(student_logits, y, k=5),
        }
        if not self.teacher_is_online:
            return values  # the teacher is left out (teacher_cache): no teacher metrics
        if self.evaluate_teacher and isinstance(self.teacher, TeacherEnsemble):
            outputs = self.teacher.outputs(x)
            target = self.teacher.target(outputs, temperature=self.temperature)  # (B, C)
            values["teacher_acc"] = topk_correct(target, y, k=1)
            values["agreement"] = top1_agreement(student_logits, target)
            values.update(teacher_metrics(student_logits, outputs, y))
        elif self.evaluate_teacher:
            teacher_logits = self.teacher_forward(x)
            values["teacher_acc"] = topk_correct(teacher_logits, y, k=1)
            values["agreement"] = top1_agreement(student_logits, teacher_logits)
        return values

    @override
    def exported_model(self) -> nn.Module:
        return self.student

    @override
    def eval_mode_modules(self) -> dict[str, str]:
        return {"teacher": "the frozen teacher's weights and BatchNorm statistics never change"}

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self._cache is not None:
            manifest = self._cache.manifest
            rank_zero_info(
                f"teacher outputs: teacher_cache {self._cache.folder} ({manifest.epochs} epochs, "
                f"{manifest.num_teachers} teacher(s), {manifest.dtype}, top_k={manifest.top_k})"
            )
            if not self.teacher_is_online:
                for k, t in enumerate(manifest.teachers):
                    found = (
                        f"{t['path']} (sha256 {t['sha256']})"
                        if t["path"] is not None
                        else f"weights as constructed (weights sha256 {t['weights_sha256']})"
                    )
                    rank_zero_info(f"cached teacher {k}: {found}")
                rank_zero_info(
                    "the teacher network is left out: validation and test log no teacher metrics"
                )
                return
        if isinstance(self.teacher, TeacherEnsemble):
            for k, source in enumerate(self.teacher_sources):
                weight = self.teacher.weights[k]
                found = (
                    f"{source['path']} (sha256 {source['sha256']})"
                    if source["path"] is not None
                    else "weights as constructed (no checkpoint file)"
                )
                rank_zero_info(f"teacher {k} (weight {weight:.4g}): {found}")
            return
        source = self.teacher_source
        if source["path"] is not None:
            rank_zero_info(f"teacher: {source['path']} (sha256 {source['sha256']})")
        else:
            rank_zero_info("teacher: weights as constructed (no teacher_checkpoint file)")

    def run_facts(self) -> dict[str, Any]:
        """Facts of this run for the hyperparameter record: the teacher and student files
        (with ``teachers``: ``teacher<k>_file``, ``teacher<k>_sha256`` and the normalised
        ``teacher<k>_weight`` of each)."""
        facts: dict[str, Any] = {
            "teacher_file": self.teacher_source["path"],
            "teacher_sha256": self.teacher_source["sha256"],
            "student_init_file": self.student_source["path"],
            "student_init_sha256": self.student_source["sha256"],
        }
        if isinstance(self.teacher, TeacherEnsemble):
            for k, source in enumerate(self.teacher_sources):
                facts[f"teacher{k}_file"] = source["path"]
                facts[f"teacher{k}_sha256"] = source["sha256"]
                facts[f"teacher{k}_weight"] = self.teacher.weights[k]
        return facts

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        record = checkpoint[CHECKPOINT_RECORD]
        record["teacher"] = {**self.teacher_source, "weights_saved": self.save_teacher_weights}
        if isinstance(self.teacher, TeacherEnsemble):
            # One entry per member (the single-teacher path and sha256 above are None).
            record["teacher"]["teachers"] = [
                {**source, "weight": weight}
                for source, weight in zip(self.teacher_sources, self.teacher.weights, strict=True)
            ]
        record["student_init"] = dict(self.student_source)
        if self.teacher_cache is not None:
            manifest = self.cache_manifest
            record["teacher_cache"] = {
                "path": str(Path(self.teacher_cache).expanduser().resolve()),
                "teachers": manifest.teachers if manifest is not None else None,
            }
        if not self.save_teacher_weights:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the teacher: from the checkpoint's own weights, or (when they were left out)
        from ``teacher_checkpoint``, which must be the very file the run was trained with.

        Raises:
            ValueError: If the teacher weights were left out and ``teacher_checkpoint`` is
                missing or is not the file the checkpoint records (by SHA-256); with
                ``teachers``, the same for each teacher, and if the checkpoint was trained
                with another number of teachers.
        """
        source = recorded_teacher(checkpoint)
        if not self.teacher_is_online:
            return  # no teacher weights to restore; the cache is checked at setup
        if isinstance(self.teacher, TeacherEnsemble) or "teachers" in source:
            self._load_ensemble_checkpoint(checkpoint, source)
            return
        state = checkpoint["state_dict"]
        saved_sha = source.get("sha256")
        if any(k.startswith(TEACHER_PREFIX) for k in state):
            if saved_sha is not None and self.teacher_sha256 not in (None, saved_sha):
                rank_zero_warn(
                    f"the teacher file {self.teacher_source['path']} (sha256 "
                    f"{self.teacher_sha256}) is not the one this checkpoint was trained with "
                    f"({source.get('path')}, sha256 {saved_sha}); the checkpoint's own copy of "
                    "the original teacher is used"
                )
            return
        # The teacher's weights were left out: they are the ones this module loaded from
        # ``teacher_checkpoint`` at construction. Put them back so loading stays strict.
        if self.teacher_checkpoint is None:
            raise ValueError(
                "this checkpoint has no teacher weights (it was saved with "
                f"save_teacher_weights=False from {source.get('path')!r}); set "
                "teacher_checkpoint to that file"
            )
        if saved_sha is not None and saved_sha != self.teacher_sha256:
            raise ValueError(
                f"teacher_checkpoint {self.teacher_source['path']} has sha256 "
                f"{self.teacher_sha256}, but this checkpoint was trained with the teacher "
                f"{source.get('path')} of sha256 {saved_sha}, and it holds no copy of its "
                "weights. Point teacher_checkpoint at the original file, or start a new run "
                "without ckpt_path."
            )
        for key, value in self.teacher.state_dict().items():
            state[TEACHER_PREFIX + key] = value

    def _load_ensemble_checkpoint(self, checkpoint: dict[str, Any], source: dict[str, Any]) -> None:
        """:meth:`on_load_checkpoint` with ``teachers``: every member is checked (and, when
        the weights were left out, reloaded) as the single teacher is."""
        recorded = source.get("teachers")
        ours = len(self.teacher) if isinstance(self.teacher, TeacherEnsemble) else None
        theirs = len(recorded) if isinstance(recorded, list) else None
        if ours is None or theirs is None or ours != theirs:
            raise ValueError(
                f"this checkpoint was trained with {_teacher_count(theirs)}, but this module "
                f"has {_teacher_count(ours)}: use the teachers it was trained with"
            )
        assert isinstance(self.teacher, TeacherEnsemble) and isinstance(recorded, list)
        state = checkpoint["state_dict"]
        members = list(zip(self.teacher.members, self.teacher_sources, recorded, strict=True))
        if any(k.startswith(TEACHER_PREFIX) for k in state):
            for k, (_, own, saved) in enumerate(members):
                if saved.get("sha256") is not None and own["sha256"] not in (None, saved["sha256"]):
                    rank_zero_warn(
                        f"teacher {k}: the file {own['path']} (sha256 {own['sha256']}) is not the "
                        f"one this checkpoint was trained with ({saved.get('path')}, sha256 "
                        f"{saved['sha256']}); the checkpoint's own copy of the original teacher "
                        "is used"
                    )
            return
        # The teachers' weights were left out: put back those loaded at construction.
        for k, (member, own, saved) in enumerate(members):
            if member.checkpoint is None:
                raise ValueError(
                    f"teacher {k}: this checkpoint has no teacher weights (it was saved with "
                    f"save_teacher_weights=False from {saved.get('path')!r}); set teachers[{k}]'s "
                    "checkpoint to that file"
                )
            if saved.get("sha256") is not None and saved["sha256"] != own["sha256"]:
                raise ValueError(
                    f"teacher {k}: checkpoint {own['path']} has sha256 {own['sha256']}, but this "
                    f"checkpoint was trained with the teacher {saved.get('path')} of sha256 "
                    f"{saved['sha256']}, and it holds no copy of its weights. Point "
                    f"teachers[{k}]'s checkpoint at the original file, or start a new run "
                    "without ckpt_path."
                )
        for key, value in self.teacher.state_dict().items():
            state[TEACHER_PREFIX + key] = value


def _read_manifest(folder: str) -> CacheManifest:
    """The manifest of the cache ``folder``.

    Raises:
        ValueError: If it has none.
    """
    path = Path(folder).expanduser() / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"teacher_cache {folder} has no {MANIFEST}, and the teacher network is left out: "
            "build the cache first (lightning-kd cache --config <this config with the teacher> "
            f"--out {folder})"
        )
    return CacheManifest.from_json(path.read_text(), source=str(path))


def loss_weights(
    ce_weight: float | None, kd_weight: float | None, alpha: float | None
) -> tuple[float, float]:
    """``(ce_weight, kd_weight)`` from :class:`KDModule`'s arguments: the weights given,
    ``(alpha, 1 - alpha)`` from the shorthand, else the defaults ``(0.1, 0.9)`` for those
    not given.

    Raises:
        ValueError: If ``alpha`` comes with a weight, is outside ``[0, 1]``, or a weight is
            negative or not finite.
    """
    if alpha is not None:
        if ce_weight is not None or kd_weight is not None:
            raise ValueError(
                "alpha is a shorthand for ce_weight=alpha, kd_weight=1 - alpha and cannot be "
                f"combined with them; got alpha={alpha}, ce_weight={ce_weight}, "
                f"kd_weight={kd_weight}. Pass either alpha or the weights"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        return float(alpha), 1.0 - alpha
    weights = (
        KDModule.DEFAULT_CE_WEIGHT if ce_weight is None else ce_weight,
        KDModule.DEFAULT_KD_WEIGHT if kd_weight is None else kd_weight,
    )
    for label, value in zip(("ce_weight", "kd_weight"), weights, strict=True):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{label} must be a finite number >= 0, got {value}")
    return float(weights[0]), float(weights[1])


def recorded_teacher(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The teacher file a KD checkpoint records: ``path`` (absolute), ``sha256`` and
    ``weights_saved`` (empty for a checkpoint of another module)."""
    record = checkpoint.get(CHECKPOINT_RECORD, {})
    if "teacher" in record:
        return dict(record["teacher"])
    return dict(checkpoint.get("teacher_source", {}))  # written before the record existed


def _load_recorded(network: nn.Module, path: str | None) -> dict[str, str | None]:
    """Load ``path`` into ``network`` (if given) and return its absolute path and SHA-256."""
    if path is None:
        return {"path": None, "sha256": None}
    load_weights(network, path)
    return {"path": str(Path(path).expanduser().resolve()), "sha256": _sha256(path)}


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _teacher_network(
    teacher: nn.Module | None,
    teachers: list[Teacher] | None,
    ensemble: EnsembleMode,
    *,
    teacher_checkpoint: str | None,
    teacher_mean: list[float] | None,
    teacher_std: list[float] | None,
) -> nn.Module:
    """The module registered as ``teacher``: the one network, or a :class:`TeacherEnsemble`.

    Raises:
        ValueError: On both or neither of ``teacher`` and ``teachers``, single-teacher
            settings given with ``teachers``, or an invalid ensemble (see
            :class:`TeacherEnsemble`).
    """
    if (teacher is None) == (teachers is None):
        given = "both" if teacher is not None else "neither"
        raise ValueError(
            "give exactly one of teacher (one network) and teachers (a list of "
            f"lightning_kd.modules.Teacher), got {given}"
        )
    if teacher is not None:
        if ensemble != "probabilities":
            raise ValueError(
                f"ensemble={ensemble!r} combines several teachers; with one teacher leave it out"
            )
        return teacher
    assert teachers is not None
    single = {
        "teacher_checkpoint": teacher_checkpoint,
        "teacher_mean": teacher_mean,
        "teacher_std": teacher_std,
    }
    also = sorted(name for name, value in single.items() if value is not None)
    if also:
        raise ValueError(
            f"with teachers, each Teacher has its own checkpoint, mean and std; got {also} "
            "for the module as well: move them into the Teacher entries"
        )
    return TeacherEnsemble(teachers, mode=ensemble)


def _check_reloadable(teacher: nn.Module, teacher_checkpoint: str | None) -> None:
    """``save_teacher_weights=False`` needs every teacher's weights file.

    Raises:
        ValueError: Naming the teacher that has none.
    """
    if isinstance(teacher, TeacherEnsemble):
        missing = [k for k, member in enumerate(teacher.members) if member.checkpoint is None]
        if missing:
            raise ValueError(
                "save_teacher_weights=False needs every teacher's checkpoint (the file it is "
                f"reloaded from); teachers {missing} have checkpoint=None"
            )
    elif teacher_checkpoint is None:
        raise ValueError(
            "save_teacher_weights=False needs teacher_checkpoint (the file the teacher is "
            "reloaded from), got teacher_checkpoint=None"
        )


def _teacher_count(count: int | None) -> str:
    """``"one teacher (teacher=...)"`` for ``None``, else ``"an ensemble of K teachers"``."""
    if count is None:
        return "one teacher (teacher=...)"
    return f"an ensemble of {count} teacher{'s' if count != 1 else ''} (teachers=...)"
