"""Weighted distillation terms that :class:`~lightning_kd.modules.FeatureKDModule` combines.

A term names the layers it needs (tapped by name with forward hooks, so no network is
rewritten), builds its adapters from the feature shapes of one dry-run forward, and computes
one unweighted loss from a :class:`TermInputs`. Terms are ``nn.Module``\\ s registered on the
LightningModule, so the optimizer, checkpoints and DDP all see their adapters. In YAML::

    terms:
      - class_path: lightning_kd.modules.HintTerm
        init_args: {student_layer: layer2, teacher_layer: layer2, weight: 100.0}
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_kd.losses.crd import CRDMemory, crd_objective
from lightning_kd.losses.ctkd import GlobalTemperature, ctkd_kd_loss, ctkd_lambda
from lightning_kd.losses.dist import dist_loss
from lightning_kd.losses.dkd import dkd_loss
from lightning_kd.losses.feature import attention_transfer_loss, hint_loss
from lightning_kd.losses.logit import standardize_logits
from lightning_kd.losses.relation import rkd_angle_loss, rkd_distance_loss
from lightning_kd.modules.projectors import LinearEmbedding, projector_for
from lightning_kd.schedules import linear_warmup

Capture = Literal["output", "input"]
#: A tapped feature: (submodule name, whether its output or its input is captured).
Tap = tuple[str, Capture]


@dataclass
class TermInputs:
    """Everything a term may read for one training batch.

    Attributes:
        student_features: tapped student features, keyed by :data:`Tap`.
        teacher_features: tapped teacher features (no autograd graph), keyed by :data:`Tap`.
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``, constants.
        targets: ``(B,)`` labels.
        indices: ``(B,)`` sample ids in the training set, or ``None`` when the datamodule does
            not return them (``return_indices=True`` on the CIFAR datamodules).
        epoch: the current epoch, counted from 0.
    """

    student_features: dict[Tap, Tensor]
    teacher_features: dict[Tap, Tensor]
    student_logits: Tensor
    teacher_logits: Tensor
    targets: Tensor
    indices: Tensor | None
    epoch: int


class DistillationTerm(nn.Module):
    """Base of the terms: a name, a weight, the taps it needs and one loss.

    Subclasses set :attr:`name`, list their taps in :meth:`student_taps` /
    :meth:`teacher_taps`, may build adapters in :meth:`build`, and implement :meth:`forward`
    returning the unweighted loss. The module adds ``weight_at(epoch) * loss`` to the
    objective and logs the loss as ``train/loss_<name>``.

    Args:
        weight: non-negative weight of the term in the objective.
    """

    name: str = "term"

    def __init__(self, weight: float) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"{type(self).__name__} weight must be >= 0, got {weight}")
        self.weight = weight

    def student_taps(self) -> list[Tap]:
        """Student features this term reads."""
        return []

    def teacher_taps(self) -> list[Tap]:
        """Teacher features this term reads."""
        return []

    def build(
        self, student_shapes: dict[Tap, torch.Size], teacher_shapes: dict[Tap, torch.Size]
    ) -> None:
        """Create adapters from the feature shapes of a dry-run forward (batch dim included)."""

    def weight_at(self, epoch: int) -> float:
        """The weight used at ``epoch``; constant unless a subclass schedules it."""
        return self.weight

    def update(self, inputs: TermInputs) -> None:
        """Explicit state update for a batch, called after its backward pass (no-op by
        default)."""

    def logged_values(self, inputs: TermInputs) -> dict[str, Tensor]:
        """Extra scalars to log for this batch, keyed by name (logged as
        ``train/<name>_step`` / ``_epoch``); none by default. Detached, and computed from the
        term's state and ``inputs``, never stored by :meth:`forward`."""
        return {}

    def forward(self, inputs: TermInputs) -> Tensor:
        """The unweighted loss of this term for one batch (a scalar)."""
        raise NotImplementedError


class HintTerm(DistillationTerm):
    """FitNets hint (Romero et al., 2015): MSE between a projected student feature map and the
    teacher's. The projector (1x1 conv + BN, pooling to the teacher's spatial size when they
    differ) is sized from the dry-run shapes.

    Args:
        student_layer: student submodule whose output is the hint's input (e.g. ``"layer2"``).
        teacher_layer: teacher submodule whose output is the hint (e.g. ``"layer2"``).
        weight: weight in the objective (100 in the CRD benchmark).
    """

    name = "hint"

    def __init__(self, student_layer: str, teacher_layer: str, weight: float = 100.0) -> None:
        super().__init__(weight)
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.projector: nn.Module = nn.Identity()

    def student_taps(self) -> list[Tap]:
        return [(self.student_layer, "output")]

    def teacher_taps(self) -> list[Tap]:
        return [(self.teacher_layer, "output")]

    def build(
        self, student_shapes: dict[Tap, torch.Size], teacher_shapes: dict[Tap, torch.Size]
    ) -> None:
        self.projector = projector_for(
            student_shapes[(self.student_layer, "output")],
            teacher_shapes[(self.teacher_layer, "output")],
        )

    def forward(self, inputs: TermInputs) -> Tensor:
        student = self.projector(inputs.student_features[(self.student_layer, "output")])
        return hint_loss(student, inputs.teacher_features[(self.teacher_layer, "output")])


class AttentionTerm(DistillationTerm):
    """Attention transfer (Zagoruyko & Komodakis, 2017), summed over layer pairs.

    No adapter: spatial attention maps compare feature maps of different widths, but each
    pair must have the same spatial size.

    Args:
        student_layers: student submodules, paired in order with ``teacher_layers``.
        teacher_layers: teacher submodules.
        p: power of the channel-wise mean (2 in the paper).
        weight: weight in the objective (1000 in the CRD benchmark).
    """

    name = "at"

    def __init__(
        self,
        student_layers: list[str],
        teacher_layers: list[str],
        p: float = 2.0,
        weight: float = 1000.0,
    ) -> None:
        super().__init__(weight)
        if len(student_layers) != len(teacher_layers) or not student_layers:
            raise ValueError(
                "student_layers and teacher_layers must be non-empty and pair up, got "
                f"{student_layers} and {teacher_layers}"
            )
        self.student_layers = list(student_layers)
        self.teacher_layers = list(teacher_layers)
        self.p = p

    def student_taps(self) -> list[Tap]:
        return [(name, "output") for name in self.student_layers]

    def teacher_taps(self) -> list[Tap]:
        return [(name, "output") for name in self.teacher_layers]

    def forward(self, inputs: TermInputs) -> Tensor:
        losses = [
            attention_transfer_loss(
                inputs.student_features[(s, "output")],
                inputs.teacher_features[(t, "output")],
                p=self.p,
            )
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        ]
        return torch.stack(losses).sum()


class RKDTerm(DistillationTerm):
    """Relational KD (Park et al., 2019): distance and angle losses on embeddings.

    By default the embeddings are the inputs of the classifiers (``fc``), i.e. the pooled
    penultimate features, compared without any adapter (RKD is invariant to scale and works
    across different widths).

    Args:
        student_layer / teacher_layer: submodules whose ``capture`` gives the embeddings.
        capture: ``"input"`` (default, features entering ``fc``) or ``"output"``.
        distance_weight: weight of the distance loss inside the term (25 in the CRD benchmark).
        angle_weight: weight of the angle loss inside the term (50 in the CRD benchmark).
        weight: weight of the whole term in the objective.
    """

    name = "rkd"

    def __init__(
        self,
        student_layer: str = "fc",
        teacher_layer: str = "fc",
        capture: Capture = "input",
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.student_tap: Tap = (student_layer, capture)
        self.teacher_tap: Tap = (teacher_layer, capture)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def student_taps(self) -> list[Tap]:
        return [self.student_tap]

    def teacher_taps(self) -> list[Tap]:
        return [self.teacher_tap]

    def forward(self, inputs: TermInputs) -> Tensor:
        student = inputs.student_features[self.student_tap]
        teacher = inputs.teacher_features[self.teacher_tap]
        return self.distance_weight * rkd_distance_loss(
            student, teacher
        ) + self.angle_weight * rkd_angle_loss(student, teacher)


class CRDTerm(DistillationTerm):
    """Contrastive representation distillation (Tian et al., 2020).

    Two linear embedding heads (student and teacher side, L2-normalised, trained) map the
    pooled features to ``embed_dim``; a :class:`~lightning_kd.losses.crd.CRDMemory` holds one
    embedding per training sample for each side and supplies ``num_negatives`` negatives.
    Needs sample ids in the batch (``return_indices: true`` on the datamodule). Memory:
    ``2 * num_samples * embed_dim * 4`` bytes of banks (26 MB for CIFAR's 50,000 at 128).

    Args:
        num_samples: size of the training set (the range of the sample ids).
        student_layer / teacher_layer / capture: where the pooled features are tapped
            (default: the input of ``fc``).
        embed_dim: embedding size (128).
        num_negatives: negatives per sample (16,384).
        nce_temperature: temperature of the NCE scores (0.07).
        momentum: momentum of the memory update (0.5).
        weight: weight in the objective (0.8 in the CRD benchmark).
    """

    name = "crd"

    def __init__(
        self,
        num_samples: int,
        student_layer: str = "fc",
        teacher_layer: str = "fc",
        capture: Capture = "input",
        embed_dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        weight: float = 0.8,
    ) -> None:
        super().__init__(weight)
        self.student_tap: Tap = (student_layer, capture)
        self.teacher_tap: Tap = (teacher_layer, capture)
        self.embed_dim = embed_dim
        self.memory = CRDMemory(
            num_samples,
            embed_dim,
            num_negatives=num_negatives,
            temperature=nce_temperature,
            momentum=momentum,
        )
        self.student_embed: nn.Module = nn.Identity()
        self.teacher_embed: nn.Module = nn.Identity()

    def student_taps(self) -> list[Tap]:
        return [self.student_tap]

    def teacher_taps(self) -> list[Tap]:
        return [self.teacher_tap]

    def build(
        self, student_shapes: dict[Tap, torch.Size], teacher_shapes: dict[Tap, torch.Size]
    ) -> None:
        self.student_embed = LinearEmbedding(
            student_shapes[self.student_tap][1:].numel(), self.embed_dim
        )
        self.teacher_embed = LinearEmbedding(
            teacher_shapes[self.teacher_tap][1:].numel(), self.embed_dim
        )

    def _embeddings(
        self, inputs: TermInputs, *, float32: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        if inputs.indices is None:
            raise ValueError(
                "CRDTerm needs sample ids in the batch: set return_indices=True on the "
                "datamodule (batches (images, targets, indices)), got batches without them"
            )
        student_features = inputs.student_features[self.student_tap]
        teacher_features = inputs.teacher_features[self.teacher_tap]
        if float32:  # the update runs after backward, outside any autocast region
            student_features, teacher_features = student_features.float(), teacher_features.float()
        student = self.student_embed(student_features)  # (B, D)
        teacher = self.teacher_embed(teacher_features)  # (B, D)
        return student, teacher, inputs.indices

    def forward(self, inputs: TermInputs) -> Tensor:
        student, teacher, indices = self._embeddings(inputs)
        return crd_objective(self.memory, student, teacher, indices)

    @torch.no_grad()
    def update(self, inputs: TermInputs) -> None:
        student, teacher, indices = self._embeddings(inputs, float32=True)
        self.memory.update(student, teacher, indices)


class DKDTerm(DistillationTerm):
    """Decoupled KD (Zhao et al., 2022): ``alpha * TCKD + beta * NCKD`` on the logits, with
    the term's weight ramped linearly from ``1 / warmup_epochs`` at epoch 0 to 1 at epoch
    ``warmup_epochs - 1`` and after (the paper's warm-up, epochs counted from 1).

    With ``logit_standardization=True`` (DKD + LS, Sun et al., CVPR 2024) both logit rows are
    z-scored (:func:`~lightning_kd.losses.standardize_logits`, not detached) before the
    temperature softmax; the authors then multiply ``alpha`` and ``beta`` by their KD weight and
    use a base temperature of 2 or 3 (``configs/cifar100/methods/dkd_ls/``).

    Args:
        alpha: weight of the target-class term (1.0).
        beta: weight of the non-target-class term (8.0 for CIFAR-100 ResNet pairs).
        temperature: softmax temperature (4.0).
        warmup_epochs: length of the linear warm-up of the weight (20); 0 disables it.
        weight: weight in the objective after the warm-up.
        logit_standardization: z-score the student's and the teacher's logits per row first.
    """

    name = "dkd"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        weight: float = 1.0,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__(weight)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        self.logit_standardization = logit_standardization

    def weight_at(self, epoch: int) -> float:
        return self.weight * linear_warmup(epoch + 1, self.warmup_epochs, 0.0, 1.0)

    def forward(self, inputs: TermInputs) -> Tensor:
        student, teacher = inputs.student_logits, inputs.teacher_logits
        if inputs.targets.dim() != 1:
            raise ValueError(
                "DKDTerm's target-class mask needs one integer label per image (B,), got soft "
                f"targets {tuple(inputs.targets.shape)} from a mixing transform (MixUp / CutMix): "
                "train DKD with a plain transform (e.g. CropFlip) or use a method without a "
                "label mask (KD, DIST, ...)"
            )
        if self.logit_standardization:
            student, teacher = standardize_logits(student), standardize_logits(teacher)
        return dkd_loss(
            student,
            teacher,
            inputs.targets,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
        )


class DISTTerm(DistillationTerm):
    """DIST (Huang et al., NeurIPS 2022): Pearson correlation of the softened class
    probabilities of student and teacher, per sample (inter-class) and per class over the batch
    (intra-class), ``beta * inter + gamma * intra``, each times ``tau^2``
    (:func:`~lightning_kd.losses.dist_loss`).

    Under DDP the intra-class relation is taken over each process's own batch, as in the
    authors' code (no gather).

    Args:
        beta: weight of the inter-class relation (1.0, the authors' value).
        gamma: weight of the intra-class relation (1.0, the authors' value).
        temperature: softmax temperature ``tau`` (4.0 on CIFAR-100, 1.0 on ImageNet).
        weight: weight in the objective (the authors' CIFAR-100 runs use 2.0).
    """

    name = "dist"

    def __init__(
        self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 4.0, weight: float = 1.0
    ) -> None:
        super().__init__(weight)
        self.beta = beta
        self.gamma = gamma
        self.temperature = temperature

    def forward(self, inputs: TermInputs) -> Tensor:
        return dist_loss(
            inputs.student_logits,
            inputs.teacher_logits,
            beta=self.beta,
            gamma=self.gamma,
            temperature=self.temperature,
        )


class CTKDTerm(DistillationTerm):
    """Curriculum temperature KD (Li et al., AAAI 2023): Hinton's ``T^2 * KL`` at a learnable
    global temperature ``T = 1 + 20 * sigmoid(g)`` that is trained *against* the student
    through a gradient reversal whose weight follows a cosine curriculum from 0 to -1 over
    ``curriculum_epochs`` (:mod:`lightning_kd.losses.ctkd`).

    The parameter ``g`` lives in :attr:`temperature` (a
    :class:`~lightning_kd.losses.ctkd.GlobalTemperature` registered on this term, hence on the
    LightningModule): it is in the optimizer (with the student's learning rate and weight decay,
    as in the authors' code), in checkpoints, and in DDP's gradient all-reduce, so it stays the
    same on every process. The epoch passed to the curriculum is Lightning's 0-based epoch plus
    one (the authors count epochs from 1). The temperature and the reversal weight are logged as
    ``train/ctkd_temperature_*`` and ``train/ctkd_lambda_*``.

    Args:
        min_temperature: lower end of ``T`` (the authors' ``t_start``, 1.0).
        temperature_range: width of the range of ``T`` (the authors' ``t_end``, 20.0).
        init: initial value of ``g`` (1.0, so ``T`` starts at 15.62).
        curriculum_epochs: epochs of the cosine curriculum (the authors' ``decay_loops``, 10).
        lambda_start: reversal weight at its start (``decay_max``, 0.0).
        lambda_end: reversal weight at its end and after (``decay_min``, -1.0).
        weight: weight in the objective (0.9 in the authors' CIFAR runs, with CE at 0.1).
    """

    name = "ctkd"

    def __init__(
        self,
        min_temperature: float = 1.0,
        temperature_range: float = 20.0,
        init: float = 1.0,
        curriculum_epochs: int = 10,
        lambda_start: float = 0.0,
        lambda_end: float = -1.0,
        weight: float = 0.9,
    ) -> None:
        super().__init__(weight)
        if curriculum_epochs <= 0:
            raise ValueError(f"curriculum_epochs must be > 0, got {curriculum_epochs}")
        self.temperature = GlobalTemperature(min_temperature, temperature_range, init)
        self.curriculum_epochs = curriculum_epochs
        self.lambda_start = lambda_start
        self.lambda_end = lambda_end

    def lambda_at(self, epoch: int) -> float:
        """The gradient-reversal weight at Lightning's (0-based) ``epoch``."""
        return ctkd_lambda(
            epoch + 1,
            num_epochs=self.curriculum_epochs,
            start=self.lambda_start,
            end=self.lambda_end,
        )

    def forward(self, inputs: TermInputs) -> Tensor:
        temperature = self.temperature(self.lambda_at(inputs.epoch))
        return ctkd_kd_loss(inputs.student_logits, inputs.teacher_logits, temperature)

    @torch.no_grad()
    def logged_values(self, inputs: TermInputs) -> dict[str, Tensor]:
        lambda_ = self.lambda_at(inputs.epoch)
        return {
            "ctkd_temperature": self.temperature(lambda_).detach(),
            "ctkd_lambda": torch.tensor(lambda_, device=self.temperature.g.device),
        }
