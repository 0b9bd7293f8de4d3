"""ClassifierModule: the two label-smoothing forms, optimizer and scheduler injection."""

import math
from functools import partial

import pytest
import torch
from tiny import ConstantNet, TinyData, TinyNet, trainer
from torch import nn

from lightning_kd.modules import ClassifierModule


def _loss(mode: str, eps: float) -> float:
    # Logits [0, 0, 0, ln 4]: softmax = [1/7, 1/7, 1/7, 4/7]; label 3.
    model = ConstantNet([0.0, 0.0, 0.0, math.log(4.0)])
    module = ClassifierModule(model, label_smoothing=eps, label_smoothing_mode=mode)  # type: ignore[arg-type]
    out = module.compute_losses((torch.zeros(1, 3, 2, 2), torch.tensor([3])))
    return out["loss"].item()


def test_hard_labels() -> None:
    # -ln(4/7) = 0.559616
    assert _loss("uniform", 0.0) == pytest.approx(0.559616, abs=1e-5)


def test_uniform_label_smoothing_matches_torch_form() -> None:
    # eps = 0.2, C = 4: target 0.05 on each wrong class and 0.85 on the true one.
    # -(0.15 * ln(1/7) + 0.85 * ln(4/7)) = 0.15 * 1.945910 + 0.85 * 0.559616 = 0.767560
    assert _loss("uniform", 0.2) == pytest.approx(0.767560, abs=1e-5)


def test_others_label_smoothing() -> None:
    # eps = 0.2, C = 4: target 0.2/3 on each wrong class and 0.8 on the true one.
    # -(0.2 * ln(1/7) + 0.8 * ln(4/7)) = 0.2 * 1.945910 + 0.8 * 0.559616 = 0.836875
    assert _loss("others", 0.2) == pytest.approx(0.836875, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\), got 1.0"),
        ({"label_smoothing_mode": "bogus"}, "got 'bogus'"),
        ({"scheduler_interval": "batch"}, "got 'batch'"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClassifierModule(TinyNet(), **kwargs)  # type: ignore[arg-type]


def test_injected_optimizer_and_step_scheduler() -> None:
    module = ClassifierModule(
        TinyNet(),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        scheduler_interval="step",
    )
    t = trainer(max_steps=3, limit_val_batches=0)
    t.fit(module, datamodule=TinyData())
    optimizer = t.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    # Three optimizer steps, each followed by a scheduler step: 0.1 * 0.5^3.
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_default_optimizer_is_the_cifar_recipe() -> None:
    module = ClassifierModule(TinyNet())
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 5e-4)


def test_learns_a_learnable_task() -> None:
    torch.manual_seed(0)
    data = TinyData(n=64, batch_size=16)
    data.y = data.x.mean(dim=(2, 3)).argmax(dim=1)  # label = brightest channel (3 classes)
    module = ClassifierModule(TinyNet(), optimizer=partial(torch.optim.Adam, lr=0.05))
    t = trainer(max_epochs=15)
    t.fit(module, datamodule=data)
    (result,) = t.test(module, datamodule=data, verbose=False)
    assert result["test/acc"] > 0.8


def test_others_smoothing_of_a_mixed_target_by_hand() -> None:
    # A 0.7 / 0.3 mix of classes 0 and 1, eps = 0.3, C = 4: smoothing each one-hot gives
    # [0.7, 0.1, 0.1, 0.1] and [0.1, 0.7, 0.1, 0.1]; mixed: [0.52, 0.28, 0.1, 0.1].
    module = ClassifierModule(nn.Linear(2, 4), label_smoothing=0.3, label_smoothing_mode="others")
    probabilities = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    mixed = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    loss = module.classification_loss(probabilities.log(), mixed)
    expected = -(0.52 * math.log(0.4) + 0.28 * math.log(0.3) + 0.1 * math.log(0.2))
    expected -= 0.1 * math.log(0.1)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
