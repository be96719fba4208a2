"""utils.training.early_stopping.EarlyStopping: patience counted in a row, min_delta's edge, NaN, resume mid-count."""

import io
import math

import pytest
import torch

from utils.training.early_stopping import EarlyStopping


def steps(stopper: EarlyStopping, values: list[float]) -> list[bool]:
    return [stopper.step(v) for v in values]


def test_max_stops_after_patience_validations_without_improvement():
    stopper = EarlyStopping(patience=2, mode="max")
    assert steps(stopper, [0.5, 0.6, 0.6, 0.7, 0.65]) == [False] * 5  # 0.7 reset the count
    assert stopper.step(0.7) is True
    assert stopper.best == 0.7 and stopper.bad_count == 2


def test_min_counts_larger_values_as_worse():
    stopper = EarlyStopping(patience=3, mode="min")
    assert steps(stopper, [2.0, 1.0, 1.5, 0.5, 0.6, 0.5]) == [False] * 6
    assert stopper.step(3.0) is True and stopper.best == 0.5


@pytest.mark.parametrize(("mode", "sign"), [("max", 1), ("min", -1)])
def test_an_improvement_of_exactly_min_delta_does_not_count(mode, sign):
    stopper = EarlyStopping(patience=2, min_delta=0.25, mode=mode)
    stopper.step(sign * 0.5)
    assert stopper.step(sign * 0.75) is False and stopper.bad_count == 1 and stopper.best == sign * 0.5
    bigger = sign * math.nextafter(0.75, 1.0)  # the smallest step past min_delta counts
    assert stopper.step(bigger) is False and stopper.bad_count == 0 and stopper.best == bigger


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_never_improve(bad):
    stopper = EarlyStopping(patience=2, mode="max")
    assert stopper.step(bad) is False and stopper.best is None
    assert stopper.step(0.1) is False and stopper.best == 0.1 and stopper.bad_count == 0
    assert stopper.step(bad) is False and stopper.step(bad) is True and stopper.best == 0.1


def test_resume_mid_count_stops_at_the_same_validation():
    values = [0.5, 0.4, 0.45, 0.3]
    straight = EarlyStopping(patience=3)
    assert steps(straight, values) == [False, False, False, True]

    first = EarlyStopping(patience=3)
    steps(first, values[:2])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.bad_count == 1 and resumed.best == 0.5
    assert steps(resumed, values[2:]) == [False, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patience": 0}, "patience"),
        ({"patience": 1, "min_delta": -1.0}, "min_delta"),
        ({"patience": 1, "mode": "up"}, "mode"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)
