"""DDP on 2 CPU processes (gloo): identical students, untouched teachers, distinct data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _run_ddp_script(script: str, out_dir: Path, *args: str) -> list[dict]:
    """Run a 2-process DDP script of this folder; return what each rank saved."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / script), str(out_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("kind", ["kd", "feature"])
def test_kd_ddp_two_processes(kind: str, tmp_path: Path) -> None:
    ranks = _run_ddp_script("ddp_kd_script.py", tmp_path, kind)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4
    # Weights are identical. (BatchNorm running statistics are per rank in DDP: each rank's
    # last forward updates its own, and DDP re-broadcasts rank 0's at the next forward.)
    for key, value in ranks[0]["student"].items():
        if "running" not in key:
            assert torch.equal(value, ranks[1]["student"][key]), key
    # The feature adapters (trained, registered on the module) agree across ranks too.
    for key, value in ranks[0]["terms"].items():
        if "running" not in key:
            assert torch.equal(value, ranks[1]["terms"][key]), key
    if kind == "feature":
        assert "0.projector.conv.weight" in ranks[0]["terms"]
    for rank in ranks:
        for key, value in rank["teacher_initial"].items():
            assert torch.equal(rank["teacher"][key], value), key
    # The student did move, and each rank saw different images.
    assert not torch.equal(ranks[0]["student"]["fc.weight"], ranks[0]["teacher"]["fc.weight"])
    seen0, seen1 = set(ranks[0]["seen"].tolist()), set(ranks[1]["seen"].tolist())
    assert len(seen0) == len(seen1) == 16
    assert not seen0 & seen1


@pytest.mark.parametrize("mode", ["skip", "error"])
def test_nonfinite_loss_on_one_rank_is_decided_jointly(mode: str, tmp_path: Path) -> None:
    ranks = _run_ddp_script("nonfinite_ddp_script.py", tmp_path, mode)
    if mode == "error":
        # Both processes stop at the same step, each naming it (rank 0's own loss was finite).
        assert "non-finite training loss at optimizer step 0" in ranks[0]["error"]
        assert "loss=nan" in ranks[1]["error"]
        assert "the loss on another process" in ranks[0]["error"]
        return
    assert ranks[0]["error"] == ranks[1]["error"] == ""
    # Both skipped step 0 and trained on: weights identical on both ranks, and moved.
    for key, value in ranks[0]["model"].items():
        if "running" not in key:
            assert torch.equal(value, ranks[1]["model"][key]), key
    assert not torch.equal(ranks[0]["model"]["fc.weight"], ranks[0]["initial"]["fc.weight"])
