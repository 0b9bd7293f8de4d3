"""Contrastive Representation Distillation (CRD), NCE form with a memory bank.

Tian, Krishnan and Isola, "Contrastive Representation Distillation" (ICLR 2020). The student
and the teacher each have an embedding head that maps features to L2-normalised vectors of
size ``D``. Two memory banks of shape ``(N, D)``, one row per training sample id, hold a
momentum average of past student and teacher embeddings. For a batch of sample ids, each
sample is paired with its own bank row (the positive) and ``K`` random rows (the negatives),
and a noise-contrastive estimation (NCE) loss asks the critic
``h(s, t) = exp(<s, t> / T) / Z`` to tell the positive pair apart from the noise pairs.

The pairing is *crossed*: the student embedding is scored against rows of the **teacher**
bank, and the teacher embedding against rows of the **student** bank.

Call order for one training step (every micro-batch, training data only)::

    loss = crd_objective(memory, s_embed, t_embed, indices)  # samples + scores, pure
    ...                                                       # backward as usual
    memory.update(s_embed.detach(), t_embed.detach(), indices)  # explicit state change

:class:`CRDMemory` holds the banks and the two normalisation constants ``Z``;
:meth:`CRDMemory.scores` (and ``forward``) never mutate it, :meth:`CRDMemory.update` does.
:func:`crd_loss` is a pure function on the ``(B, K + 1)`` score matrices. All score and loss
math runs in float32, also under ``torch.autocast``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.distributed import all_gather_cat, all_reduce_mean_
from lightning_kd.losses.logit import _float32_math

__all__ = ["CRDMemory", "crd_loss", "crd_objective"]


class CRDMemory(nn.Module):
    """Student and teacher memory banks for CRD, indexed by training-sample id.

    State (all buffers, all persistent, so they are saved in checkpoints):

    * ``student_bank``, ``teacher_bank``: float32, shape ``(N, D)``. Initialised with
      entries uniform in ``[-stdv, stdv]``, ``stdv = 1 / sqrt(D / 3)``, so each row has an
      expected squared norm of 1 (rows are not normalised exactly until first updated).
    * ``z_student``, ``z_teacher``: float32 scalars, the NCE normalisation constants of the
      student-side and teacher-side scores. ``-1`` means "not set yet". They are set once,
      by the first :meth:`update`, to the batch estimate ``N * mean(exp(<row, embed> / T))``
      over the ``(B, K + 1)`` sampled pairs, as in the paper's implementation, and never
      change afterwards.

    ``z_student`` normalises the student-side scores (student embedding against teacher
    bank rows), ``z_teacher`` the teacher-side scores (teacher embedding against student
    bank rows).

    Call order: :meth:`scores` (pure) for the loss, then :meth:`update` (mutating) with the
    same batch. If ``Z`` is still unset when :meth:`scores` is called, the batch estimate
    is used for that call only (detached, not stored); :meth:`update` then stores an
    estimate. ``forward`` is :meth:`scores`.

    Memory cost:

    * The banks: ``2 * N * D * 4`` bytes (CIFAR-100, 50,000 x 128: 51 MB), in the
      checkpoint as well.
    * Per step, the scores need ``<row, embed>`` for ``B * (K + 1)`` rows on each side.
      When ``N <= B * (K + 1)`` (typical for CIFAR) they are taken from the full ``(B, N)``
      similarity matrix, ``B * N * 4`` bytes per side (B = 64, N = 50,000: 12.8 MB).
      Otherwise the sampled rows are gathered into a ``(B, K + 1, D)`` tensor,
      ``B * (K + 1) * D * 4`` bytes per side, kept for the backward pass (B = 64,
      K = 16,384, D = 128: 537 MB per side, 1.07 GB for both). On small machines use a
      smaller ``num_negatives`` (e.g. 4096) or a smaller batch.

    Negatives are drawn uniformly over all ``N`` sample ids (a negative can be the sample
    itself, as in the reference). The reference implementation also offers class-conditional
    sampling (negatives only from other classes); that mode is not provided here.

    Under DDP, :meth:`update` all-gathers the embeddings and ids of every rank, so the banks
    stay identical across ranks. Note that DDP's per-forward buffer broadcast
    (``forward_sync_buffers`` / ``broadcast_buffers``) then re-sends the banks from rank 0
    every step for nothing; it can be turned off.

    Args:
        num_samples: Number of training samples ``N``; sample ids lie in ``[0, N)``.
        embed_dim: Embedding size ``D``.
        num_negatives: Negatives per sample ``K >= 1`` (16,384 in the paper).
        temperature: Critic temperature ``T > 0`` (0.07 in the paper).
        momentum: Bank momentum ``m`` in ``[0, 1]``: ``row <- normalize(m * row +
            (1 - m) * embed)``. ``0`` replaces the row, ``1`` never changes it.

    Raises:
        ValueError: On ``num_samples < 1``, ``embed_dim < 1``, ``num_negatives < 1``, a
            temperature that is not a finite number > 0, or a momentum outside ``[0, 1]``.
    """

    student_bank: Tensor
    teacher_bank: Tensor
    z_student: Tensor
    z_teacher: Tensor

    def __init__(
        self,
        num_samples: int,
        embed_dim: int = 128,
        *,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_samples = num_samples
        self.embed_dim = embed_dim
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.momentum = momentum

        stdv = 1.0 / math.sqrt(embed_dim / 3.0)
        self.register_buffer("student_bank", _uniform_rows(num_samples, embed_dim, stdv))
        self.register_buffer("teacher_bank", _uniform_rows(num_samples, embed_dim, stdv))
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))
        # Host-side cache of "both Z are set", so update() reads the buffers (a device sync)
        # only until they are set. Reset whenever a state dict is loaded.
        self._normalizers_known_set = False
        self.register_load_state_dict_post_hook(_reset_normalizer_cache)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, embed_dim={self.embed_dim}, "
            f"num_negatives={self.num_negatives}, temperature={self.temperature}, "
            f"momentum={self.momentum}"
        )

    def sample_negatives(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample ids for the positive and ``K`` uniform negatives of every batch element.

        Args:
            indices: Training-sample ids of the batch, shape ``(B,)``, integer dtype.
                Values are not range-checked (that would sync with the device).
            generator: Optional random generator for the negatives. It may live on another
                device than ``indices``; the draw is then moved to ``indices.device``.

        Returns:
            int64 tensor of shape ``(B, K + 1)`` on ``indices.device``: column 0 is
            ``indices`` (the positive), columns ``1..K`` are uniform in ``[0, N)``.

        Raises:
            TypeError: If ``indices`` is not an integer tensor.
            ValueError: If ``indices`` is not 1-D.
        """
        _check_indices("indices", indices)
        gen_device = generator.device if generator is not None else indices.device
        negatives = torch.randint(
            0,
            self.num_samples,
            (indices.shape[0], self.num_negatives),
            generator=generator,
            device=gen_device,
        ).to(indices.device)  # (B, K)
        return torch.cat([indices.long().unsqueeze(1), negatives], dim=1)  # (B, K + 1)

    def scores(
        self, student_embed: Tensor, teacher_embed: Tensor, sample_idx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Normalised critic scores of the sampled pairs; does not change any state.

        With ``T`` the temperature and ``Z`` the normalisation constants::

            student_scores[b, j] = exp(<teacher_bank[sample_idx[b, j]], s[b]> / T) / Z_s
            teacher_scores[b, j] = exp(<student_bank[sample_idx[b, j]], t[b]> / T) / Z_t

        If a ``Z`` is unset (``< 0``), the detached batch estimate
        ``N * mean_{b, j} exp(<row, embed> / T)`` of that side is used instead (not stored;
        :meth:`update` stores it). Choosing between the two does not sync with the device.

        Gradients flow to the embeddings, never to the banks.

        Args:
            student_embed: L2-normalised student embeddings ``s``, shape ``(B, D)``.
            teacher_embed: L2-normalised teacher embeddings ``t``, shape ``(B, D)``.
            sample_idx: Sample ids from :meth:`sample_negatives`, shape ``(B, K + 1)``,
                positive in column 0.

        Returns:
            ``(student_scores, teacher_scores)``, float32, each of shape ``(B, K + 1)``.

        Raises:
            TypeError: If an embedding is not floating point or ``sample_idx`` not integer.
            ValueError: On shapes that are not ``(B, D)`` / ``(B, K + 1)`` with matching
                ``B`` and ``D = embed_dim`` and ``K + 1 >= 2``.
        """
        batch = self._check_embeds(student_embed, teacher_embed)
        _check_sample_idx(sample_idx, batch)
        with _float32_math(student_embed):
            raw_s = _exp_scores(student_embed, self.teacher_bank, sample_idx, self.temperature)
            raw_t = _exp_scores(teacher_embed, self.student_bank, sample_idx, self.temperature)
            z_s = torch.where(self.z_student > 0, self.z_student, self._estimate_z(raw_s))
            z_t = torch.where(self.z_teacher > 0, self.z_teacher, self._estimate_z(raw_t))
            return raw_s / z_s, raw_t / z_t  # (B, K + 1) each

    def forward(
        self, student_embed: Tensor, teacher_embed: Tensor, sample_idx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Same as :meth:`scores` (pure; never updates the memory)."""
        return self.scores(student_embed, teacher_embed, sample_idx)

    @torch.no_grad()
    def maybe_init_normalizers_(
        self, student_embed: Tensor, teacher_embed: Tensor, sample_idx: Tensor
    ) -> bool:
        """Store the batch estimates of ``Z`` if they are not set yet.

        Each side gets ``N * mean_{b, j} exp(<row, embed> / T)`` over the sampled pairs (see
        :meth:`scores`), computed with the banks as they are now, so call this before the
        banks change. Under DDP the estimates are averaged over ranks (equal batch sizes
        make that the estimate of the whole global batch), so every rank stores the same
        value; every rank must then call this (it is a collective while ``Z`` is unset).
        Reads the buffers (a device sync) only until ``Z`` is known to be set.

        Args:
            student_embed: Student embeddings, shape ``(B, D)``.
            teacher_embed: Teacher embeddings, shape ``(B, D)``.
            sample_idx: Sample ids, shape ``(B, K + 1)``.

        Returns:
            ``True`` if the constants were set by this call, ``False`` if already set.
        """
        if self._normalizers_set():
            return False
        _check_sample_idx(sample_idx, self._check_embeds(student_embed, teacher_embed))
        with _float32_math(student_embed):
            raw_s = _exp_scores(student_embed, self.teacher_bank, sample_idx, self.temperature)
            raw_t = _exp_scores(teacher_embed, self.student_bank, sample_idx, self.temperature)
            z = torch.stack([self._estimate_z(raw_s), self._estimate_z(raw_t)])  # (2,)
        all_reduce_mean_(z)
        self.z_student.copy_(torch.where(self.z_student > 0, self.z_student, z[0]))
        self.z_teacher.copy_(torch.where(self.z_teacher > 0, self.z_teacher, z[1]))
        self._normalizers_known_set = True
        return True

    @torch.no_grad()
    def update(
        self,
        student_embed: Tensor,
        teacher_embed: Tensor,
        indices: Tensor,
        *,
        sample_idx: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Momentum-update the bank rows of the batch (and set ``Z`` once).

        For every id ``i`` of the batch, with ``m`` the momentum::

            student_bank[i] <- normalize(m * student_bank[i] + (1 - m) * s_i)
            teacher_bank[i] <- normalize(m * teacher_bank[i] + (1 - m) * t_i)

        Rows of ids not in the batch are unchanged. If an id occurs more than once in the
        (gathered) batch, its last occurrence is used, deterministically. Call this after
        :meth:`scores` for the same batch, once per training batch (every micro-batch under
        gradient accumulation: each covers different ids), on training data only.

        If ``Z`` is unset, it is first set by :meth:`maybe_init_normalizers_` on the local
        batch, with ``sample_idx`` if given (then the stored value equals the estimate the
        first :meth:`scores` call used, on one process) or else with freshly drawn negatives
        (``generator`` if given).

        Under DDP (``torch.distributed`` available and initialised, world size > 1), the
        embeddings and ids of all ranks are all-gathered first (rank order), and every rank
        applies the same update, so the banks stay identical. ``torch.distributed.all_gather``
        needs equal batch sizes on all ranks at every step. Lightning's ``DistributedSampler``
        gives every rank the same number of samples (padding with repeated ids, which the
        last-occurrence rule handles), so the batch sizes match, also for a last partial
        batch; ``drop_last=True`` on the train loader makes every batch full. Every rank must
        call ``update``.

        Args:
            student_embed: L2-normalised student embeddings, shape ``(B, D)``. Used without
                gradient.
            teacher_embed: L2-normalised teacher embeddings, shape ``(B, D)``.
            indices: Training-sample ids of the batch, shape ``(B,)``, integer dtype.
            sample_idx: Optional ``(B, K + 1)`` ids used for the first ``Z`` estimate.
            generator: Optional generator for negatives drawn for the first ``Z`` estimate.

        Raises:
            TypeError: If an embedding is not floating point or ``indices`` is not integer.
            ValueError: On shapes other than ``(B, D)`` / ``(B,)`` with ``D = embed_dim``
                and the same ``B``. Id values are not range-checked (no device sync).
        """
        _check_indices("indices", indices)
        batch = self._check_embeds(student_embed, teacher_embed)
        if indices.shape[0] != batch:
            raise ValueError(
                f"indices must have shape ({batch},) to match the embeddings, "
                f"got {tuple(indices.shape)}"
            )
        if not self._normalizers_set():
            if sample_idx is None:
                sample_idx = self.sample_negatives(indices, generator)
            self.maybe_init_normalizers_(student_embed, teacher_embed, sample_idx)

        s, t, idx = student_embed.detach(), teacher_embed.detach(), indices.long()
        s, t, idx = all_gather_cat(s), all_gather_cat(t), all_gather_cat(idx)
        idx, keep = _last_occurrence(idx)  # (U,), (U,)
        with _float32_math(s):
            self._update_bank(self.student_bank, s.float()[keep], idx)
            self._update_bank(self.teacher_bank, t.float()[keep], idx)

    def _update_bank(self, bank: Tensor, embed: Tensor, idx: Tensor) -> None:
        rows = bank.index_select(0, idx).float()  # (U, D)
        rows = F.normalize(self.momentum * rows + (1.0 - self.momentum) * embed, dim=1)
        bank.index_copy_(0, idx, rows.to(bank.dtype))

    def _estimate_z(self, raw: Tensor) -> Tensor:
        """Detached ``N * mean(raw)``, a 0-D float32 tensor."""
        return raw.detach().mean() * self.num_samples

    def _normalizers_set(self) -> bool:
        """Whether both ``Z`` are set; reads the buffers (a device sync) only until they are."""
        if not self._normalizers_known_set:
            self._normalizers_known_set = bool((self.z_student > 0) & (self.z_teacher > 0))
        return self._normalizers_known_set

    def _check_embeds(self, student_embed: Tensor, teacher_embed: Tensor) -> int:
        """Validate a ``(B, D)`` embedding pair and return ``B``."""
        for name, embed in (("student_embed", student_embed), ("teacher_embed", teacher_embed)):
            if not embed.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {embed.dtype}")
            if embed.dim() != 2 or embed.shape[0] < 1 or embed.shape[1] != self.embed_dim:
                raise ValueError(
                    f"{name} must have shape (B, {self.embed_dim}) with B >= 1, "
                    f"got {tuple(embed.shape)}"
                )
        if student_embed.shape != teacher_embed.shape:
            raise ValueError(
                f"batch sizes differ: student_embed has {student_embed.shape[0]} rows, "
                f"teacher_embed has {teacher_embed.shape[0]}"
            )
        return student_embed.shape[0]


def crd_loss(student_scores: Tensor, teacher_scores: Tensor, *, num_samples: int) -> Tensor:
    """NCE loss of CRD on ``(B, K + 1)`` critic scores, student and teacher sides summed.

    Column 0 holds the positive pair's score ``P_0``, columns ``1..K`` the negatives'
    ``P_j``. With the noise probability ``Pn = 1 / N``, the NCE posterior of "real pair" is
    ``P / (P + K * Pn)``, and per side::

        loss_side = -(1 / B) * sum_b [ log(P_b0 / (P_b0 + K Pn))
                                       + sum_{j=1..K} log(K Pn / (P_bj + K Pn)) ]

    The returned loss is ``loss_side(student_scores) + loss_side(teacher_scores)`` (the two
    sides are **summed**, not averaged, as in the reference implementation). The logs are
    computed as ``-log1p(K Pn / P_0)`` and ``-log1p(P_j / (K Pn))``; unlike the reference no
    ``1e-7`` is added to the denominators. Scores must be positive (not checked: that would
    sync with the device); a zero positive score gives an infinite loss.

    Args:
        student_scores: Student-side scores, shape ``(B, K + 1)``, floating point.
        teacher_scores: Teacher-side scores, shape ``(B, K + 1)``, floating point.
        num_samples: Number of training samples ``N >= 1`` (the bank size).

    Returns:
        Scalar float32 loss.

    Raises:
        TypeError: If a score tensor is not floating point.
        ValueError: If ``num_samples < 1``, the scores are not 2-D with ``B >= 1`` rows and
            at least 2 columns, or their shapes differ.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    for name, scores in (("student_scores", student_scores), ("teacher_scores", teacher_scores)):
        if not scores.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {scores.dtype}")
        if scores.dim() != 2 or scores.shape[0] < 1 or scores.shape[1] < 2:
            raise ValueError(
                f"{name} must be 2-D (B, K + 1) with B >= 1 and K >= 1, "
                f"got shape {tuple(scores.shape)}"
            )
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"score shapes differ: student {tuple(student_scores.shape)}, "
            f"teacher {tuple(teacher_scores.shape)}"
        )
    with _float32_math(student_scores):
        return _nce_side(student_scores.float(), num_samples) + _nce_side(
            teacher_scores.float(), num_samples
        )


def crd_objective(
    memory: CRDMemory,
    student_embed: Tensor,
    teacher_embed: Tensor,
    indices: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample negatives, score them and return :func:`crd_loss`; the memory is not updated.

    The embeddings must already be L2-normalised (the caller's embedding heads do this,
    e.g. ``F.normalize(linear(features), dim=1)``). Pass teacher embeddings from a head that
    is trained (the CRD teacher head has parameters), computed from frozen teacher
    features. Call ``memory.update(s.detach(), t.detach(), indices)`` afterwards,
    explicitly.

    Args:
        memory: The :class:`CRDMemory` holding the banks.
        student_embed: Student embeddings, shape ``(B, D)``.
        teacher_embed: Teacher embeddings, shape ``(B, D)``.
        indices: Training-sample ids of the batch, shape ``(B,)``, in ``[0, N)``.
        generator: Optional generator for the negatives.

    Returns:
        Scalar float32 loss (student and teacher sides summed).
    """
    sample_idx = memory.sample_negatives(indices, generator)  # (B, K + 1)
    student_scores, teacher_scores = memory.scores(student_embed, teacher_embed, sample_idx)
    return crd_loss(student_scores, teacher_scores, num_samples=memory.num_samples)


def _nce_side(scores: Tensor, num_samples: int) -> Tensor:
    """One side of :func:`crd_loss` on float32 ``(B, K + 1)`` scores."""
    batch, num_negatives = scores.shape[0], scores.shape[1] - 1
    noise = num_negatives / num_samples  # K * Pn
    log_pos = -torch.log1p(noise / scores[:, 0])  # (B,)  log(P / (P + K Pn))
    log_neg = -torch.log1p(scores[:, 1:] / noise)  # (B, K)  log(K Pn / (P + K Pn))
    return -(log_pos.sum() + log_neg.sum()) / batch


def _exp_scores(embed: Tensor, bank: Tensor, sample_idx: Tensor, temperature: float) -> Tensor:
    """``exp(<bank[sample_idx[b, j]], embed[b]> / T)`` in float32, shape ``(B, K + 1)``."""
    batch, cols = sample_idx.shape
    embed = embed.float()  # (B, D)
    if bank.shape[0] <= batch * cols:
        # Cheaper to score every bank row once than to gather B * (K + 1) rows.
        dots = (embed @ bank.float().t()).gather(1, sample_idx.long())  # (B, N) -> (B, K + 1)
    else:
        rows = bank.float().index_select(0, sample_idx.reshape(-1).long())  # (B * (K + 1), D)
        rows = rows.view(batch, cols, -1)  # (B, K + 1, D)
        dots = torch.bmm(rows, embed.unsqueeze(2)).squeeze(2)  # (B, K + 1)
    return torch.exp(dots / temperature)


def _uniform_rows(num_rows: int, dim: int, stdv: float) -> Tensor:
    return torch.rand(num_rows, dim) * (2 * stdv) - stdv  # (N, D), uniform in [-stdv, stdv]


def _reset_normalizer_cache(module: nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, CRDMemory):
        module._normalizers_known_set = False


def _last_occurrence(idx: Tensor) -> tuple[Tensor, Tensor]:
    """Unique ids and, for each, the position of its last occurrence in ``idx``."""
    unique, inverse = torch.unique(idx, return_inverse=True)  # (U,), (n,)
    positions = torch.arange(idx.shape[0], device=idx.device)  # (n,)
    last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, positions, reduce="amax")
    return unique, last


def _check_indices(name: str, indices: Tensor) -> None:
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"{name} must be integer sample ids, got dtype {indices.dtype}")
    if indices.dim() != 1:
        raise ValueError(f"{name} must be 1-D (B,), got shape {tuple(indices.shape)}")


def _check_sample_idx(sample_idx: Tensor, batch_size: int) -> None:
    if sample_idx.is_floating_point() or sample_idx.is_complex() or sample_idx.dtype == torch.bool:
        raise TypeError(f"sample_idx must be integer sample ids, got dtype {sample_idx.dtype}")
    if sample_idx.dim() != 2 or sample_idx.shape[0] != batch_size or sample_idx.shape[1] < 2:
        raise ValueError(
            f"sample_idx must have shape (B, K + 1) with B = {batch_size} and K >= 1, "
            f"got {tuple(sample_idx.shape)}"
        )
