"""utils.training.schedules: "total" resolved, warm-up then decay by the closed form, exact resume, one-line errors."""

import io
import math

import pytest
import torch

from utils.config import validate
from utils.errors import UserError
from utils.training.schedules import build_scheduler, scheduler_key

LR = 0.1
WARMUP_COSINE = [
    {"type": "LinearLR", "args": {"start_factor": 0.1, "total_iters": 5}, "steps": 5},
    {"type": "CosineAnnealingLR", "args": {"T_max": "total"}},
]


def optimizer() -> torch.optim.Optimizer:
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.ones(2)
    return torch.optim.SGD([param], lr=LR)


def lr_of(opt: torch.optim.Optimizer) -> float:
    return opt.param_groups[0]["lr"]


def run(opt: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The LR each of ``steps`` optimizer steps uses, then the LR after the last scheduler step."""
    lrs = []
    for _ in range(steps):
        lrs.append(lr_of(opt))
        opt.step()
        scheduler.step()
    return [*lrs, lr_of(opt)]


def test_warmup_then_cosine_follows_the_closed_form_and_ends_at_zero():
    opt = optimizer()
    lrs = run(opt, build_scheduler(WARMUP_COSINE, opt, total=20), 20)
    warmup = [LR * (0.1 + 0.9 * k / 5) for k in range(5)]
    cosine = [LR * 0.5 * (1 + math.cos(math.pi * k / 15)) for k in range(16)]
    assert lrs == pytest.approx(warmup + cosine, rel=1e-12, abs=1e-15)
    assert lrs[-1] == 0.0 and lrs[-2] > 0


def test_polynomial_over_the_whole_run_ends_at_zero_on_the_last_step():
    opt = optimizer()
    spec = {"type": "PolynomialLR", "args": {"total_iters": "total", "power": 0.9}}
    lrs = run(opt, build_scheduler(spec, opt, total=7), 7)
    assert lrs == pytest.approx([LR * (1 - k / 7) ** 0.9 for k in range(8)], rel=1e-12, abs=1e-15)
    assert lrs[-1] == 0.0 and lrs[-2] > 0


def test_total_in_an_earlier_phase_is_that_phases_steps():
    opt = optimizer()
    spec = [
        {"type": "LinearLR", "args": {"start_factor": 0.5, "total_iters": "total"}, "steps": 4},
        {"type": "ConstantLR", "args": {"factor": 1.0}},
    ]
    lrs = run(opt, build_scheduler(spec, opt, total=10), 10)
    assert lrs[:5] == pytest.approx([LR * (0.5 + 0.5 * k / 4) for k in range(5)], rel=1e-12)
    assert lrs[4:] == pytest.approx([LR] * 7, rel=1e-12)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "spec",
    [{"type": "CosineAnnealingLR", "args": {"T_max": "total", "eta_min": 0.001}}, WARMUP_COSINE],
    ids=["single", "list"],
)
@pytest.mark.parametrize("stop_at", [1, 5, 6, 13])
def test_resume_continues_with_exactly_the_same_lrs(spec, stop_at):
    opt = optimizer()
    straight = run(opt, build_scheduler(spec, opt, total=20), 20)

    opt = optimizer()
    scheduler = build_scheduler(spec, opt, total=20)
    first = run(opt, scheduler, stop_at)[:-1]
    saved = roundtrip({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()})
    opt = optimizer()  # a new process: same spec, same total, the optimizer built with the config's lr
    scheduler = build_scheduler(spec, opt, total=20)
    opt.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    assert first + run(opt, scheduler, 20 - stop_at) == straight


def test_plateau_alone_builds():
    opt = optimizer()
    scheduler = build_scheduler({"type": "ReduceLROnPlateau", "args": {"patience": 0}}, opt, total=10)
    scheduler.step(1.0)
    scheduler.step(2.0)
    assert lr_of(opt) == pytest.approx(LR * 0.1)


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (5, "cfg.json: key 'scheduler.0.steps': the phases up to this one last 5 scheduler steps, but the whole run"),
        (3, "cfg.json: key 'scheduler.0.steps': the phases up to this one last 5 scheduler steps, but the whole run"),
    ],
)
def test_a_run_too_short_for_the_earlier_phases_names_the_key(total, expected):
    with pytest.raises(UserError) as caught:
        build_scheduler(WARMUP_COSINE, optimizer(), total=total, source="cfg.json")
    assert str(caught.value).startswith(expected) and f"has {total}," in str(caught.value)
    build_scheduler(WARMUP_COSINE, optimizer(), total=6)  # one step left for the last phase is enough


def test_a_later_phase_past_the_run_names_its_key():
    spec = [{**WARMUP_COSINE[0]}, {"type": "ConstantLR", "args": {}, "steps": 10}, WARMUP_COSINE[1]]
    with pytest.raises(UserError, match=r"key 'scheduler\.1\.steps': the phases up to this one last 15"):
        build_scheduler(spec, optimizer(), total=12)


def test_total_of_zero_steps_is_a_user_error():
    with pytest.raises(UserError, match=r"key 'scheduler\.args\.T_max': 'total' is 0 scheduler steps"):
        build_scheduler({"type": "CosineAnnealingLR", "args": {"T_max": "total"}}, optimizer(), total=0)


def load(value):
    return validate({"scheduler": value}, {"scheduler": scheduler_key()}, "cfg.json")["scheduler"]


def phase(kind: str, steps: int | None = None, **args) -> dict:
    return {"type": kind, "args": args} if steps is None else {"type": kind, "args": args, "steps": steps}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            [phase("LinearLR", 5), phase("CosineAnealingLR", T_max="total")],
            "cfg.json: key 'scheduler.1.type': unknown lr scheduler 'CosineAnealingLR' "
            "(did you mean 'CosineAnnealingLR'?)",
        ),
        (
            [phase("LinearLR", 5), phase("CosineAnnealingLR", T_maxx="total")],
            "cfg.json: unknown key 'scheduler.1.args.T_maxx' (did you mean 'T_max'?)",
        ),
        (
            [phase("LinearLR", 5), phase("CosineAnnealingLR", T_max="ten")],
            "cfg.json: key 'scheduler.1.args': CosineAnnealingLR fails with {'T_max': 'ten'}",
        ),
        (
            [phase("LinearLR", 5), phase("StepLR", step_size=2, gamma=True)],
            "cfg.json: key 'scheduler.1.args.gamma': expected a number",
        ),
        ({"type": "StepLR", "args": {"step_size": 0}}, "cfg.json: key 'scheduler.args': StepLR"),
        ([phase("LinearLR"), phase("ConstantLR")], "cfg.json: missing required key 'scheduler.0.steps'"),
        ([phase("LinearLR", 5), phase("ConstantLR", 5)], "cfg.json: key 'scheduler.1.steps': the last phase runs"),
        ([phase("LinearLR", 0), phase("ConstantLR")], "cfg.json: key 'scheduler.0.steps': must be at least 1"),
        (
            [{"type": "LinearLR", "args": {}, "step": 5}, phase("ConstantLR")],
            "cfg.json: unknown key 'scheduler.0.step' (did you mean 'steps'?)",
        ),
        (
            [phase("LinearLR", 5), phase("ReduceLROnPlateau")],
            "cfg.json: key 'scheduler.1.type': ReduceLROnPlateau follows a metric",
        ),
        ([], "cfg.json: key 'scheduler': expected a scheduler or a non-empty list"),
        (["StepLR"], "cfg.json: key 'scheduler.0': expected an object"),
        ("StepLR", "cfg.json: key 'scheduler': expected an object or a list"),
        ({"type": "StepLR", "args": {"step_size": 2}, "steps": 5}, "cfg.json: unknown key 'scheduler.steps'"),
    ],
)
def test_config_mistakes_are_one_line_naming_the_key(value, expected):
    with pytest.raises(UserError) as caught:
        load(value)
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message


def test_good_configs_load_unchanged():
    assert load(None) is None
    assert load(WARMUP_COSINE) == WARMUP_COSINE
    plateau = {"type": "ReduceLROnPlateau", "args": {"mode": "max"}}
    assert load(plateau) == plateau
    long_warmup = [phase("LinearLR", 1000, total_iters="total"), phase("PolynomialLR", total_iters="total")]
    assert load(long_warmup) == long_warmup


def test_a_list_of_one_phase_runs_like_that_phase_alone():
    single = {"type": "CosineAnnealingLR", "args": {"T_max": "total"}}
    opt_a, opt_b = optimizer(), optimizer()
    assert run(opt_a, build_scheduler([single], opt_a, total=6), 6) == run(opt_b, build_scheduler(single, opt_b, 6), 6)
