"""CRD (contrastive representation distillation): NCE loss and memory bank."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from crd_ddp_script import NUM_SAMPLES, make_memory, rank_batch
from torch import Tensor, nn

from lightning_kd.losses.crd import CRDMemory, crd_loss, crd_objective

HERE = Path(__file__).parent

# B = 1, K = 2, N = 4: Pn = 1/4, K * Pn = 0.5, scores [P0, P1, P2] = [1.0, 0.5, 0.25]:
#   positive:   log(1.0 / (1.0 + 0.5))  = log(2/3) = -0.4054651081
#   negative 1: log(0.5 / (0.5 + 0.5))  = log(1/2) = -0.6931471806
#   negative 2: log(0.5 / (0.25 + 0.5)) = log(2/3) = -0.4054651081
#   one side:   -(sum) / B = 1.5040773968
HAND_SCORES = [[1.0, 0.5, 0.25]]
HAND_SIDE_LOSS = 1.5040773968


def _unit(*rows: list[float]) -> Tensor:
    return F.normalize(torch.tensor(rows), dim=1)


def _memory(num_samples: int = 4, embed_dim: int = 2, **kwargs: float) -> CRDMemory:
    torch.manual_seed(0)
    options: dict[str, float] = {"num_negatives": 2, "temperature": 0.5, "momentum": 0.5}
    options.update(kwargs)
    return CRDMemory(
        num_samples,
        embed_dim,
        num_negatives=int(options["num_negatives"]),
        temperature=options["temperature"],
        momentum=options["momentum"],
    )


# ----------------------------------------------------------------------------- crd_loss
def test_crd_loss_hand_case() -> None:
    scores = torch.tensor(HAND_SCORES)
    # Identical sides: the two sides are summed, so twice the one-side value.
    loss = crd_loss(scores, scores.clone(), num_samples=4)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(2 * HAND_SIDE_LOSS, abs=1e-6)
    # A side whose positive is certain and negatives impossible contributes ~0:
    # log(1e6 / (1e6 + 0.5)) ~ -5e-7, log(0.5 / (1e-9 + 0.5)) ~ -2e-9.
    other = torch.tensor([[1e6, 1e-9, 1e-9]])
    assert crd_loss(scores, other, num_samples=4).item() == pytest.approx(HAND_SIDE_LOSS, abs=1e-5)


def test_crd_loss_averages_over_batch() -> None:
    scores = torch.tensor(HAND_SCORES * 3)  # three identical rows: same mean as one row
    loss = crd_loss(scores, scores, num_samples=4)
    assert loss.item() == pytest.approx(2 * HAND_SIDE_LOSS, abs=1e-6)


def test_crd_loss_gradient_closed_form() -> None:
    # d/dP0 [-log(P0 / (P0 + c))] = -c / (P0 (P0 + c)) = -0.5 / 1.5 = -1/3
    # d/dPj [-log(c / (Pj + c))]  = 1 / (Pj + c): 1 / 1.0 = 1, 1 / 0.75 = 4/3
    student = torch.tensor(HAND_SCORES, requires_grad=True)
    crd_loss(student, torch.tensor(HAND_SCORES), num_samples=4).backward()
    assert student.grad is not None
    torch.testing.assert_close(student.grad, torch.tensor([[-1 / 3, 1.0, 4 / 3]]))


def test_crd_loss_float32_under_autocast() -> None:
    scores = torch.tensor(HAND_SCORES, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crd_loss(scores, scores, num_samples=4)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(2 * HAND_SIDE_LOSS, abs=1e-5)  # all values exact in bf16


@pytest.mark.parametrize(
    ("student", "teacher", "num_samples", "error", "match"),
    [
        (torch.ones(3), torch.ones(3), 4, ValueError, r"2-D \(B, K \+ 1\).*got shape \(3,\)"),
        (torch.ones(2, 1), torch.ones(2, 1), 4, ValueError, r"K >= 1, got shape \(2, 1\)"),
        (torch.ones(0, 3), torch.ones(0, 3), 4, ValueError, r"B >= 1"),
        (torch.ones(2, 3), torch.ones(2, 4), 4, ValueError, r"student \(2, 3\), teacher \(2, 4\)"),
        (torch.ones(2, 3), torch.ones(2, 3), 0, ValueError, r"num_samples must be >= 1, got 0"),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), 4, TypeError, r"torch.int64"),
    ],
)
def test_crd_loss_validation(
    student: Tensor, teacher: Tensor, num_samples: int, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        crd_loss(student, teacher, num_samples=num_samples)


# ----------------------------------------------------------------------------- CRDMemory
def test_memory_init() -> None:
    memory = CRDMemory(50, 12, num_negatives=7)
    stdv = 1 / math.sqrt(12 / 3)  # 0.5
    for bank in (memory.student_bank, memory.teacher_bank):
        assert bank.shape == (50, 12)
        assert bank.dtype == torch.float32
        assert bank.abs().max() <= stdv
        assert bank.abs().max() > 0.4  # spans the range, not a tiny init
    assert not torch.equal(memory.student_bank, memory.teacher_bank)
    assert memory.z_student.item() == memory.z_teacher.item() == -1.0
    assert set(memory.state_dict()) == {"student_bank", "teacher_bank", "z_student", "z_teacher"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, r"num_samples must be >= 1, got 0"),
        ({"embed_dim": 0}, r"embed_dim must be >= 1, got 0"),
        ({"num_negatives": 0}, r"num_negatives must be >= 1, got 0"),
        ({"temperature": 0.0}, r"temperature must be a finite number > 0, got 0.0"),
        ({"temperature": math.inf}, r"temperature must be a finite number > 0, got inf"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\], got 1.5"),
    ],
)
def test_memory_validation(kwargs: dict[str, float], match: str) -> None:
    args: dict[str, float] = {
        "num_samples": 4,
        "embed_dim": 2,
        "num_negatives": 2,
        "temperature": 0.07,
        "momentum": 0.5,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CRDMemory(
            int(args["num_samples"]),
            int(args["embed_dim"]),
            num_negatives=int(args["num_negatives"]),
            temperature=args["temperature"],
            momentum=args["momentum"],
        )


def test_sample_negatives() -> None:
    memory = _memory(num_samples=10, num_negatives=50)
    indices = torch.tensor([3, 0, 9])
    idx = memory.sample_negatives(indices, torch.Generator().manual_seed(1))
    assert idx.shape == (3, 51)
    assert idx.dtype == torch.int64
    assert torch.equal(idx[:, 0], indices)
    assert int(idx.min()) >= 0 and int(idx.max()) <= 9
    assert len(idx[:, 1:].unique()) == 10  # 150 uniform draws over 10 ids hit every id
    again = memory.sample_negatives(indices, torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)
    other = memory.sample_negatives(indices, torch.Generator().manual_seed(2))
    assert not torch.equal(idx, other)
    assert memory.sample_negatives(indices.int()).shape == (3, 51)  # global RNG, int32 ids


def test_sample_negatives_validation() -> None:
    memory = _memory()
    with pytest.raises(TypeError, match=r"integer sample ids, got dtype torch.float32"):
        memory.sample_negatives(torch.zeros(2))
    with pytest.raises(ValueError, match=r"1-D \(B,\), got shape \(2, 1\)"):
        memory.sample_negatives(torch.zeros(2, 1, dtype=torch.long))


def _known_memory(num_samples: int) -> CRDMemory:
    """Rows 0..3 of both banks set by hand, Z set to 2 (student side) and 4 (teacher side)."""
    memory = _memory(num_samples=num_samples)
    memory.student_bank[:4] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    memory.teacher_bank[:4] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    memory.z_student.fill_(2.0)
    memory.z_teacher.fill_(4.0)
    return memory


@pytest.mark.parametrize("num_samples", [4, 100])  # (B, N) matrix path and row-gather path
def test_scores_known_values(num_samples: int) -> None:
    memory = _known_memory(num_samples)  # T = 0.5
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    sample_idx = torch.tensor([[3, 1, 2]])
    student_scores, teacher_scores = memory.scores(s, t, sample_idx)
    assert student_scores.shape == teacher_scores.shape == (1, 3)
    # Student side uses the TEACHER bank: <[0.6, 0.8], [1, 0]> = 0.6 -> exp(1.2) / 2 = 1.6600585
    # negatives: <[1, 0], s> = 1 -> exp(2) / 2; <[0.8, 0.6], s> = 0.8 -> exp(1.6) / 2
    torch.testing.assert_close(
        student_scores, torch.tensor([[1.6600585, 3.6945280, 2.4765162]]), rtol=1e-6, atol=0
    )
    # Teacher side uses the STUDENT bank: <[-1, 0], [0, 1]> = 0 -> exp(0) / 4 = 0.25
    # negatives: <[0, 1], t> = 1 -> exp(2) / 4; <[0.6, 0.8], t> = 0.8 -> exp(1.6) / 4
    torch.testing.assert_close(
        teacher_scores, torch.tensor([[0.25, 1.8472640, 1.2382581]]), rtol=1e-6, atol=0
    )
    assert torch.equal(memory(s, t, sample_idx)[0], student_scores)  # forward is scores


def test_scores_with_unset_normalizers_use_batch_estimate_and_store_nothing() -> None:
    memory = _memory(num_samples=20, embed_dim=8, num_negatives=5)
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    s, t = F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    sample_idx = memory.sample_negatives(torch.tensor([0, 7, 19]))
    student_scores, teacher_scores = memory.scores(s, t, sample_idx)
    # Z = N * mean(raw) makes every normalised score matrix average exactly 1 / N.
    assert student_scores.mean().item() == pytest.approx(1 / 20, rel=1e-6)
    assert teacher_scores.mean().item() == pytest.approx(1 / 20, rel=1e-6)
    crd_objective(memory, s, t, torch.tensor([0, 7, 19]))
    for key, value in memory.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_scores_validation() -> None:
    memory = _memory()
    s = torch.zeros(2, 2)
    idx = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"student_embed must have shape \(B, 2\).*got \(2, 3\)"):
        memory.scores(torch.zeros(2, 3), s, idx)
    with pytest.raises(ValueError, match=r"student_embed has 2 rows, teacher_embed has 1"):
        memory.scores(s, torch.zeros(1, 2), idx)
    with pytest.raises(TypeError, match=r"teacher_embed must be a floating-point"):
        memory.scores(s, s.long(), idx)
    with pytest.raises(ValueError, match=r"sample_idx must have shape \(B, K \+ 1\) with B = 2"):
        memory.scores(s, s, idx[:1])
    with pytest.raises(ValueError, match=r"K >= 1, got \(2, 1\)"):
        memory.scores(s, s, idx[:, :1])
    with pytest.raises(TypeError, match=r"sample_idx must be integer"):
        memory.scores(s, s, idx.float())


def test_update_closed_form() -> None:
    memory = _memory(num_samples=3, momentum=0.5)
    memory.student_bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    memory.teacher_bank.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]]))
    # normalize(0.5 * [1, 0] + 0.5 * [0, 1]) = [0.7071, 0.7071]
    # normalize(0.5 * [0, 1] + 0.5 * [-1, 0]) = [-0.7071, 0.7071]
    memory.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]]), torch.tensor([0]))
    r = 0.70710678
    torch.testing.assert_close(
        memory.student_bank, torch.tensor([[r, r], [0.0, 1.0], [0.6, 0.8]]), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        memory.teacher_bank, torch.tensor([[-r, r], [1.0, 0.0], [0.8, 0.6]]), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(("momentum", "expected"), [(0.0, [0.0, 1.0]), (1.0, [1.0, 0.0])])
def test_update_momentum_extremes(momentum: float, expected: list[float]) -> None:
    memory = _memory(num_samples=2, momentum=momentum)
    memory.student_bank[0] = torch.tensor([1.0, 0.0])
    memory.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    torch.testing.assert_close(memory.student_bank[0], torch.tensor(expected))


def test_update_duplicate_ids_last_occurrence_wins() -> None:
    memory = _memory(num_samples=3, momentum=0.5)
    memory.student_bank[1] = torch.tensor([1.0, 0.0])
    s = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])  # id 1 twice: the second row is used
    memory.update(s, s.clone(), torch.tensor([1, 1]))
    r = 0.70710678
    torch.testing.assert_close(memory.student_bank[1], torch.tensor([r, r]), rtol=0, atol=1e-6)


def test_update_validation() -> None:
    memory = _memory()
    s = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"indices must have shape \(2,\).*got \(3,\)"):
        memory.update(s, s, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"indices must be integer sample ids"):
        memory.update(s, s, torch.zeros(2))


def test_normalizers_set_once_by_first_update() -> None:
    memory = _memory(num_samples=20, embed_dim=8, num_negatives=5, temperature=0.1)
    s, t = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    indices = torch.tensor([1, 2, 3, 4])
    sample_idx = memory.sample_negatives(indices)
    # exp(<row, embed> / T) over the sampled pairs, before the banks change.
    raw_s = torch.exp((memory.teacher_bank[sample_idx] * s[:, None]).sum(-1) / 0.1)
    raw_t = torch.exp((memory.student_bank[sample_idx] * t[:, None]).sum(-1) / 0.1)
    memory.update(s, t, indices, sample_idx=sample_idx)
    assert memory.z_student.item() == pytest.approx(20 * raw_s.mean().item(), rel=1e-5)
    assert memory.z_teacher.item() == pytest.approx(20 * raw_t.mean().item(), rel=1e-5)
    z = (memory.z_student.clone(), memory.z_teacher.clone())
    memory.update(-s, -t, torch.tensor([5, 6, 7, 8]))
    assert torch.equal(memory.z_student, z[0]) and torch.equal(memory.z_teacher, z[1])
    assert not memory.maybe_init_normalizers_(s, t, sample_idx)


def test_update_without_sample_idx_sets_normalizers() -> None:
    memory = _memory(num_samples=20, embed_dim=8, num_negatives=5)
    s = F.normalize(torch.randn(4, 8), dim=1)
    memory.update(s, s, torch.tensor([1, 2, 3, 4]), generator=torch.Generator().manual_seed(0))
    assert memory.z_student.item() > 0 and memory.z_teacher.item() > 0


def test_state_dict_round_trip() -> None:
    memory = _memory(num_samples=20, embed_dim=8, num_negatives=5)
    s = F.normalize(torch.randn(4, 8), dim=1)
    memory.update(s, s, torch.tensor([1, 2, 3, 4]))
    torch.manual_seed(123)
    restored = CRDMemory(20, 8, num_negatives=5, temperature=0.5)
    restored.load_state_dict(memory.state_dict())
    for key, value in memory.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    z = restored.z_student.clone()
    restored.update(-s, -s, torch.tensor([5, 6, 7, 8]))
    assert torch.equal(restored.z_student, z)  # a restored Z is not re-estimated


def test_loading_unset_normalizers_resets_them_through_a_parent() -> None:
    memory = _memory(num_samples=20, embed_dim=8, num_negatives=5)
    s = F.normalize(torch.randn(4, 8), dim=1)
    memory.update(s, s, torch.tensor([1, 2, 3, 4]))  # Z set
    parent = nn.ModuleDict({"crd": memory})
    parent.load_state_dict(nn.ModuleDict({"crd": _memory(20, 8, num_negatives=5)}).state_dict())
    assert memory.z_student.item() == -1.0
    memory.update(s, s, torch.tensor([1, 2, 3, 4]))
    assert memory.z_student.item() > 0  # estimated again after loading an unset state


def test_gradients_reach_embeddings_not_banks() -> None:
    memory = _memory(num_samples=16, embed_dim=8, num_negatives=6)
    s = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    t = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    loss = crd_objective(memory, s, t, torch.tensor([0, 5, 10, 15]))
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for embed in (s, t):
        assert embed.grad is not None
        assert torch.isfinite(embed.grad).all() and embed.grad.abs().sum() > 0
    for buffer in memory.buffers():
        assert not buffer.requires_grad and buffer.grad is None
    assert list(memory.parameters()) == []


def test_objective_float32_under_autocast() -> None:
    memory = _memory(num_samples=16, embed_dim=8, num_negatives=6)
    s = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crd_objective(memory, s, s, torch.tensor([0, 5, 10, 15]))
        memory.update(s, s, torch.tensor([0, 5, 10, 15]))
    assert loss.dtype == torch.float32
    assert memory.student_bank.dtype == torch.float32


def test_update_is_identical_across_two_ddp_processes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "crd_ddp_script.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key

    # Expected: one process updating with the concatenated batch (rank 0 then rank 1).
    (s0, t0, i0), (s1, t1, i1) = rank_batch(0), rank_batch(1)
    expected = make_memory()
    initial = {k: v.clone() for k, v in expected.state_dict().items()}
    expected.z_student.fill_(1.0)  # skip Z estimation; Z is checked separately below
    expected.z_teacher.fill_(1.0)
    expected.update(torch.cat([s0, s1]), torch.cat([t0, t1]), torch.cat([i0, i1]))
    for key in ("student_bank", "teacher_bank"):
        torch.testing.assert_close(ranks[0][key], expected.state_dict()[key])
    # Both ranks' rows moved (id 2 is in both batches: rank 1's embedding was used), others not.
    moved = (ranks[0]["student_bank"] != initial["student_bank"]).any(dim=1)
    assert moved.nonzero().flatten().tolist() == [0, 1, 2, 5, 6]
    r = F.normalize(0.5 * initial["student_bank"][2] + 0.5 * s1[2], dim=0)
    torch.testing.assert_close(ranks[0]["student_bank"][2], r)

    # Z is the average of the two ranks' single-process estimates.
    single = []
    for rank, (s, t, i) in enumerate((rank_batch(0), rank_batch(1))):
        memory = make_memory()
        memory.update(s, t, i, generator=torch.Generator().manual_seed(rank))
        single.append((memory.z_student.item(), memory.z_teacher.item()))
    assert ranks[0]["z_student"].item() == pytest.approx((single[0][0] + single[1][0]) / 2)
    assert ranks[0]["z_teacher"].item() == pytest.approx((single[0][1] + single[1][1]) / 2)
    assert single[0][0] != pytest.approx(single[1][0])  # the ranks did estimate differently
    assert ranks[0]["student_bank"].shape[0] == NUM_SAMPLES
