"""utils.training.profiler.StepProfiler: a valid Chrome trace and an operator table; short runs end cleanly."""

import json

import torch
from torch import nn

from utils.training.profiler import StepProfiler


def train(profiler: StepProfiler, steps: int, close: bool = True) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = model(torch.randn(4, 8)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        profiler.step()
    if close:
        profiler.close()


def test_profiles_the_steps_after_warmup_and_then_stops(tmp_path):
    logged = []
    profiler = StepProfiler(steps=3, out_dir=tmp_path / "out", log=logged.append, warmup=1, cuda=False)
    train(profiler, steps=4, close=False)
    assert not profiler.running  # done after warm-up + profiled steps: later steps cost nothing
    train(profiler, steps=2)
    trace = json.loads((tmp_path / "out" / "profile_trace.json").read_text())
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3"}  # #0 was the warm-up
    assert len(logged) == 1  # written once, at the end of the profiled steps; close() adds nothing
    assert logged[0].startswith("profile: 3 step(s) after 1 warm-up step(s); trace in ")
    assert "aten::addmm" in logged[0] and "Self CPU" in logged[0]
    assert not torch.autograd._profiler_enabled()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["profile_trace.json"]


def test_a_run_ending_during_the_profiled_steps_writes_what_it_has(tmp_path):
    logged = []
    train(StepProfiler(steps=3, out_dir=tmp_path, log=logged.append, warmup=1, cuda=False), steps=2)
    assert "traceEvents" in json.loads((tmp_path / "profile_trace.json").read_text())
    assert logged[0].startswith("profile: 1 step(s) after 1 warm-up step(s) (the run ended: 1 of the 3 asked for)")
    assert not torch.autograd._profiler_enabled()


def test_a_run_ending_during_warmup_writes_nothing_and_says_so(tmp_path):
    logged = []
    train(StepProfiler(steps=3, out_dir=tmp_path, log=logged.append, warmup=2, cuda=False), steps=2)
    assert logged == [
        "profile: the run ended after 2 step(s), before any profiled step ended (2 warm-up steps come first); "
        "no trace written"
    ]
    assert not (tmp_path / "profile_trace.json").exists()
    assert not torch.autograd._profiler_enabled()


def test_disabled_does_nothing(tmp_path):
    logged = []
    profiler = StepProfiler(steps=1, out_dir=tmp_path, log=logged.append, warmup=0, enabled=False)
    assert not torch.autograd._profiler_enabled() and not profiler.running
    train(profiler, steps=3)
    assert logged == [] and list(tmp_path.iterdir()) == []
