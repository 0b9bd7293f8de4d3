"""Schedule boundaries and hand-computed interior values."""

from __future__ import annotations

import pytest

from lightning_kd.schedules import cosine_schedule, linear_warmup, sigmoid_rampup

# ----------------------------------------------------------------------------- cosine


def test_cosine_boundaries() -> None:
    assert cosine_schedule(0, 100, 0.996, 1.0) == 0.996
    assert cosine_schedule(100, 100, 0.996, 1.0) == 1.0


def test_cosine_midpoint() -> None:
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998, abs=1e-12)
    assert cosine_schedule(5, 10, 2.0, -4.0) == pytest.approx(-1.0, abs=1e-12)


def test_cosine_interior_hand_value() -> None:
    # step 1 of 3: cos(pi / 3) = 0.5 -> 1 - (1 - 0) * (1 + 0.5) / 2 = 0.25
    assert cosine_schedule(1, 3, 0.0, 1.0) == pytest.approx(0.25, abs=1e-12)


def test_cosine_clamps_step() -> None:
    assert cosine_schedule(250, 100, 0.996, 1.0) == 1.0
    assert cosine_schedule(-5, 100, 0.996, 1.0) == 0.996


@pytest.mark.parametrize("total_steps", [0, -3])
def test_cosine_bad_total_raises(total_steps: int) -> None:
    with pytest.raises(ValueError, match=f"total_steps must be > 0, got {total_steps}"):
        cosine_schedule(0, total_steps, 0.0, 1.0)


# ----------------------------------------------------------------------------- linear warmup


def test_linear_warmup_boundaries() -> None:
    assert linear_warmup(0, 10, 0.5, 2.0) == 0.5
    assert linear_warmup(10, 10, 0.5, 2.0) == 2.0
    assert linear_warmup(11, 10, 0.5, 2.0) == 2.0
    assert linear_warmup(-1, 10, 0.5, 2.0) == 0.5


def test_linear_warmup_interior_hand_value() -> None:
    # 0 + (2 - 0) * 3 / 4 = 1.5
    assert linear_warmup(3, 4, 0.0, 2.0) == pytest.approx(1.5, abs=1e-12)


def test_linear_warmup_zero_steps_is_end() -> None:
    assert linear_warmup(0, 0, 0.5, 2.0) == 2.0
    assert linear_warmup(7, 0, 0.5, 2.0) == 2.0


def test_linear_warmup_bad_steps_raise() -> None:
    with pytest.raises(ValueError, match="warmup_steps must be >= 0, got -1"):
        linear_warmup(0, -1, 0.0, 1.0)


# ----------------------------------------------------------------------------- sigmoid ramp-up


def test_sigmoid_rampup_boundaries() -> None:
    # t = 0: exp(-5) = 0.006737947; t = 1: max_value
    assert sigmoid_rampup(0, 100) == pytest.approx(0.006737947, abs=1e-9)
    assert sigmoid_rampup(0, 100, max_value=30.0) == pytest.approx(0.2021384, abs=1e-6)
    assert sigmoid_rampup(100, 100, max_value=30.0) == 30.0
    assert sigmoid_rampup(1000, 100, max_value=30.0) == 30.0


def test_sigmoid_rampup_midpoint() -> None:
    # t = 0.5: exp(-5 * 0.25) = exp(-1.25) = 0.2865048
    assert sigmoid_rampup(50, 100) == pytest.approx(0.2865048, abs=1e-7)


def test_sigmoid_rampup_interior_hand_value() -> None:
    # t = 3/4: 2 * exp(-5 * 0.0625) = 2 * exp(-0.3125) = 2 * 0.7316156 = 1.4632312
    assert sigmoid_rampup(3, 4, max_value=2.0) == pytest.approx(1.4632312, abs=1e-6)


def test_sigmoid_rampup_negative_step_clipped() -> None:
    assert sigmoid_rampup(-10, 100) == pytest.approx(0.006737947, abs=1e-9)


def test_sigmoid_rampup_zero_steps_is_max() -> None:
    assert sigmoid_rampup(0, 0, max_value=3.0) == 3.0


def test_sigmoid_rampup_bad_steps_raise() -> None:
    with pytest.raises(ValueError, match="rampup_steps must be >= 0, got -2"):
        sigmoid_rampup(0, -2)
