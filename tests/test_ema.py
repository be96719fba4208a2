"""utils.training.ema.EMA: the closed form after a few updates, buffers copied, exact state round trip."""

import io

import pytest
import torch
from torch import nn

from utils.training.ema import EMA


def set_weights(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(-value)


def test_three_updates_match_the_closed_form():
    model = nn.Linear(3, 2)
    set_weights(model, 8.0)
    ema = EMA(model, decay=0.75)
    for value in (16.0, 4.0, 32.0):  # the model after each of three optimizer steps
        set_weights(model, value)
        ema.update(model)
    d = 0.75  # dyadic values: every step is exact in float32, so the comparison can be exact too
    expected = d**3 * 8.0 + (1 - d) * (d**2 * 16.0 + d * 4.0 + 32.0)
    assert torch.equal(ema.module.weight, torch.full((2, 3), expected))
    assert torch.equal(ema.module.bias, torch.full((2,), -expected))
    assert ema.updates == 3


def test_the_average_is_an_eval_copy_without_gradients():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    ema = EMA(model, decay=0.9)
    assert not ema.module.training and model.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(ema.module[0].weight, before)  # a copy: the model's step does not reach it


def test_buffers_and_non_float_tensors_are_copied_from_the_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.register_parameter("count", nn.Parameter(torch.tensor([3]), requires_grad=False))
    ema = EMA(model, decay=0.99)
    model.train()
    model(torch.randn(8, 4) * 5 + 3)  # moves the running statistics
    with torch.no_grad():
        model.count.fill_(7)
    ema.update(model)
    bn, ema_bn = model[1], ema.module[1]
    assert torch.equal(ema_bn.running_mean, bn.running_mean) and torch.equal(ema_bn.running_var, bn.running_var)
    assert int(ema_bn.num_batches_tracked) == 1 and ema_bn.num_batches_tracked.dtype == torch.long
    assert ema.module.count.dtype == torch.long and int(ema.module.count) == 7


def test_warmup_decay_rises_to_the_set_decay():
    model = nn.Linear(2, 2)
    plain, warm = EMA(model, decay=0.25), EMA(model, decay=0.25, warmup=True)
    seen = []
    for _ in range(4):
        seen.append(warm.current_decay())
        warm.update(model)
    assert seen == [0.1, 2 / 11, 0.25, 0.25] and plain.current_decay() == 0.25


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_round_trip_continues_identically():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    straight = EMA(model, decay=0.9, warmup=True)
    steps = [torch.randn(8, 4) for _ in range(6)]

    def train_step(x: torch.Tensor, emas: list[EMA]) -> None:
        model(x).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        for ema in emas:
            ema.update(model)

    for x in steps[:3]:
        train_step(x, [straight])
    saved = roundtrip(straight.state_dict())
    resumed = EMA(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), decay=0.9, warmup=True)
    resumed.load_state_dict(saved)
    for x in steps[3:]:
        train_step(x, [straight, resumed])
    assert resumed.updates == straight.updates == 6
    for (name, a), b in zip(straight.module.state_dict().items(), resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_decay_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(nn.Linear(2, 2), decay=1.5)
