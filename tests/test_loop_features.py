"""BaseAgent's loop features end to end: accumulation, per-step schedules, EMA, early stopping, compile,
channels_last, profiling and the host reading the loss only every log_every steps."""

import json
import signal

import pytest
import torch

from agents.base import BaseAgent
from tests.conftest import EXAMPLE, assert_same_tensors, load, train
from utils.errors import RunInterrupted, TrainingStopped, UserError

pytestmark = pytest.mark.usefixtures("test_agents_registered")  # DropoutAgent

# The template CNN has no dropout or batch norm: accumulated and whole batches give the same update.
# 212 random images: a fifth each for valid and test, 128 to train on.
PLAIN = ["optimizer.type=SGD", "optimizer.args.lr=0.05", "random_size=212", "max_epoch=2", "torch_threads=1"]


def weights(exps, name: str) -> dict:
    return load(exps / name / "checkpoints" / "last.pth")["models"]["model"]


def test_accumulating_4_batches_of_8_equals_batches_of_32(exps):
    # 128 training samples: 4 steps of 32 per epoch, or 16 batches of 8 in 4 groups of 4.
    train(EXAMPLE, exps, "exp_name=whole", "batch_size=32", *PLAIN)
    train(EXAMPLE, exps, "exp_name=acc", "batch_size=8", "accumulate_grad_batches=4", *PLAIN)
    a, b = weights(exps, "whole"), weights(exps, "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    state = load(exps / "acc" / "checkpoints" / "last.pth")
    assert state["global_step"] == 32 and state["optimizer_steps"] == 8


def test_interrupts_wait_for_the_end_of_an_accumulation_group(exps, monkeypatch):
    from agents.example import ExampleAgent

    original = ExampleAgent.train_step

    def train_step(self, batch):
        logs = original(self, batch)
        if self.epoch == 0 and self.batch_in_epoch == 5:  # the 6th batch: inside the second group of 4
            self.signals.received = 2
        return logs

    args = ["batch_size=8", "accumulate_grad_batches=4", "log_every=1", *PLAIN]
    train(EXAMPLE, exps, "exp_name=straight", *args)
    monkeypatch.setattr(ExampleAgent, "train_step", train_step)
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, "exp_name=cut", *args)
    monkeypatch.undo()
    assert load(exps / "cut" / "checkpoints" / "last.pth")["batch_in_epoch"] == 8  # the group ended first
    train(EXAMPLE, exps, "exp_name=cut", *args)
    assert_same_tensors(weights(exps, "straight"), weights(exps, "cut"))


WARMUP_COSINE = (
    'scheduler=[{"type": "LinearLR", "args": {"start_factor": 0.1, "total_iters": 3}, "steps": 3}, '
    '{"type": "CosineAnnealingLR", "args": {"T_max": "total"}}]'
)


def test_per_step_warmup_then_cosine_over_the_whole_run_resumes_with_the_exact_lr(exps, monkeypatch):
    from agents.example import ExampleAgent

    lrs = {}
    original = ExampleAgent.train_step

    def train_step(self, batch):
        lrs.setdefault(self.config.exp_name, []).append(self.optimizer.param_groups[0]["lr"])
        logs = original(self, batch)
        if self.config.exp_name == "cut" and self.global_step == 5 and not getattr(self, "_again", False):
            self.signals.received = 2
        return logs

    monkeypatch.setattr(ExampleAgent, "train_step", train_step)
    args = ["scheduler_interval=step", WARMUP_COSINE, "batch_size=32", "log_every=1", *PLAIN]
    train(EXAMPLE, exps, "exp_name=straight", *args)
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, "exp_name=cut", *args)
    monkeypatch.setattr(ExampleAgent, "_again", True, raising=False)
    train(EXAMPLE, exps, "exp_name=cut", *args)
    straight = lrs["straight"]
    assert len(straight) == 8  # 4 steps per epoch, 2 epochs
    assert straight[:3] == pytest.approx([0.005, 0.02, 0.035])  # warm-up from 0.1 x lr
    assert straight[3] == pytest.approx(0.05)  # then cosine from the full lr over the other 5 steps
    assert straight[-1] == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(4 / 5 * torch.pi)).item()) / 2)
    assert lrs["cut"] == straight  # the resumed run continues on the same schedule
    assert_same_tensors(weights(exps, "straight"), weights(exps, "cut"))


def test_polynomial_decay_reaches_zero_on_the_last_step(exps):
    train(
        EXAMPLE,
        exps,
        "exp_name=poly",
        "scheduler_interval=step",
        "batch_size=32",
        *PLAIN,
        'scheduler={"type": "PolynomialLR", "args": {"total_iters": "total", "power": 0.9}}',
    )
    state = load(exps / "poly" / "checkpoints" / "last.pth")
    assert state["optimizers"]["optimizer"]["param_groups"][0]["lr"] == 0.0


def test_early_stopping_stops_says_so_and_a_rerun_does_not_train_on(exps, monkeypatch):
    monkeypatch.setattr(BaseAgent, "validate", lambda self, *a, **k: {"valid/loss": 1.0, "valid/accuracy": 0.5})
    args = ["exp_name=es", "max_epoch=10", "early_stop_patience=2", *PLAIN[:3]]
    train(EXAMPLE, exps, *args)
    summary = json.loads((exps / "es" / "summary.json").read_text())
    assert summary["status"] == "early stopped" and summary["early_stopped_epoch"] == 3 and summary["epochs"] == 3
    train(EXAMPLE, exps, *args)  # the counter survived: still stopped
    assert load(exps / "es" / "checkpoints" / "last.pth")["epoch"] == 3
    train(EXAMPLE, exps, *args[:-1], "early_stop_patience=3", *PLAIN[:3])  # more patience: one more epoch
    assert load(exps / "es" / "checkpoints" / "last.pth")["epoch"] == 4


def test_ema_weights_serve_validation_best_and_test_and_resume_exactly(exps, monkeypatch):
    # The template with dropout and a per-epoch LR decay: 192 images to train on, 6 batches of 32 per epoch.
    common = [
        "agent=DropoutAgent",
        'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.7}}',
        "random_size=320",
        "image_size=16",
        "hidden=8",
        "ema_decay=0.9",
        "batch_size=32",
        "torch_threads=1",
    ]
    train(EXAMPLE, exps, "exp_name=straight", "max_epoch=2", *common)
    state = load(exps / "straight" / "checkpoints" / "last.pth")
    averaged, trained = state["callbacks"]["ema"]["model"]["module"], state["models"]["model"]
    assert not torch.equal(averaged["features.0.weight"], trained["features.0.weight"])
    assert state["callbacks"]["ema"]["model"]["updates"] == state["optimizer_steps"] == 12
    train(EXAMPLE, exps, "exp_name=resumed", "max_epoch=1", *common)
    train(EXAMPLE, exps, "exp_name=resumed", "max_epoch=2", *common)
    resumed = load(exps / "resumed" / "checkpoints" / "last.pth")
    assert_same_tensors(state["callbacks"]["ema"], resumed["callbacks"]["ema"], "ema")
    assert_same_tensors(state["models"], resumed["models"], "models")
    # Validation ran on the average: evaluating the averaged weights by hand gives the logged metric.
    from main import load_config

    config, cls = load_config(str(EXAMPLE), [f"experiments_dir={exps}", "exp_name=check", "max_epoch=2", *common])
    test_config, _ = load_config(str(EXAMPLE), [f"experiments_dir={exps}", "exp_name=check", "mode=test", *common])
    agent = cls(config)
    try:
        agent.model.load_state_dict(averaged)
        by_hand = agent.validate()
    finally:
        agent.finalize()
    logged = json.loads((exps / "straight" / "summary.json").read_text())["final"]
    assert logged["valid/loss"] == pytest.approx(by_hand["valid/loss"], rel=1e-9)
    train(EXAMPLE, exps, "exp_name=straight", "max_epoch=2", "mode=test", *common)
    tested = json.loads((exps / "straight" / "summary.json").read_text())
    agent = cls(test_config)  # the template's data loader builds the test split for mode=test only
    try:
        agent.model.load_state_dict(
            load(exps / "straight" / "checkpoints" / "best.pth")["callbacks"]["ema"]["model"]["module"]
        )
        expected = agent.validate(agent.data_loader.test_loader, split="test", limit=None)
    finally:
        agent.finalize()
    assert tested["test/loss"] == pytest.approx(expected["test/loss"], rel=1e-9)


def test_channels_last_trains_with_channels_last_weights_and_batches(exps, monkeypatch):
    from agents.example import ExampleAgent

    seen = []
    original = ExampleAgent.train_step

    def train_step(self, batch):
        x, _ = self.to_device(batch)
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return original(self, batch)

    monkeypatch.setattr(ExampleAgent, "train_step", train_step)
    train(EXAMPLE, exps, "exp_name=cl", "channels_last=true", *PLAIN[:3], "max_epoch=1")
    assert seen and all(seen)


def test_the_host_reads_the_loss_every_log_every_steps_only(exps, monkeypatch):
    reads = {"n": 0, "training": False}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            if reads["training"] and self.is_floating_point():  # values, not the sampler's index lists
                reads["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    epoch = BaseAgent.train_one_epoch

    def one_epoch(self):
        reads["training"] = True
        try:
            epoch(self)
        finally:
            reads["training"] = False

    monkeypatch.setattr(BaseAgent, "train_one_epoch", one_epoch)
    # 1706 random images, 1024 to train on: 32 steps, log_every 8: four looks (the window's sums, the logged
    # loss), and one at the epoch's end. SGD: torch's CPU Adam reads its step count (a float tensor) each step.
    train(
        EXAMPLE,
        exps,
        "exp_name=sync",
        "optimizer.type=SGD",
        "random_size=1706",
        "image_size=16",
        "hidden=8",
        "batch_size=32",
        "max_epoch=1",
        "log_every=8",
    )
    assert 0 < reads["n"] <= 4 * 2 + 1


def test_profile_steps_writes_a_trace_and_the_top_operators(exps):
    train(EXAMPLE, exps, "exp_name=prof", "profile_steps=2", *PLAIN[:3], "max_epoch=1")
    trace = json.loads((exps / "prof" / "out" / "profile_trace.json").read_text())
    assert trace["traceEvents"]
    assert "aten::" in (exps / "prof" / "logs" / "run.log").read_text()


@pytest.mark.slow
def test_a_checkpoint_written_compiled_loads_uncompiled_and_back(exps):
    args = [*PLAIN[:3], "batch_size=32", "max_train_batches=2", "max_valid_batches=1"]
    train(EXAMPLE, exps, "exp_name=c", "compile=true", "max_epoch=1", *args)
    state = load(exps / "c" / "checkpoints" / "last.pth")
    assert not any("_orig_mod" in k for k in state["models"]["model"])
    train(EXAMPLE, exps, "exp_name=c", "compile=false", "max_epoch=2", *args)
    train(EXAMPLE, exps, "exp_name=c", "compile=true", "max_epoch=3", *args)
    assert load(exps / "c" / "checkpoints" / "last.pth")["epoch"] == 3


def test_a_short_last_group_updates_like_one_batch_of_its_size(exps):
    # 128 samples: batches of 8 in groups of 5 (5, 5, 5, 1) against batches of 40 (40, 40, 40, 8).
    train(EXAMPLE, exps, "exp_name=groups", "batch_size=8", "accumulate_grad_batches=5", *PLAIN, "max_epoch=1")
    train(EXAMPLE, exps, "exp_name=big", "batch_size=40", *PLAIN, "max_epoch=1")
    a, b = weights(exps, "groups"), weights(exps, "big")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_two_optimizer_steps_per_batch_cannot_accumulate(exps, monkeypatch):
    import agents
    from tests.test_resume_edges import StepsAgent

    monkeypatch.setitem(agents.AGENTS, "StepsAgent", "tests.test_resume_edges")
    assert StepsAgent.train_step  # calls optimize twice on even batches
    with pytest.raises(UserError, match="accumulate_grad_batches"):
        train(EXAMPLE, exps, "agent=StepsAgent", "exp_name=two", "accumulate_grad_batches=2", *PLAIN)


def test_ema_turned_on_at_a_resume_starts_from_the_restored_weights(exps):
    train(EXAMPLE, exps, "exp_name=late", *PLAIN, "max_epoch=1")
    trained = weights(exps, "late")
    train(EXAMPLE, exps, "exp_name=late", *PLAIN, "max_epoch=2", "ema_decay=1.0")  # 1.0: the average never moves
    assert_same_tensors(
        load(exps / "late" / "checkpoints" / "last.pth")["callbacks"]["ema"]["model"]["module"], trained
    )


def test_weights_made_nan_by_an_epochs_last_step_are_never_saved(exps, monkeypatch):
    from agents.example import ExampleAgent

    original = ExampleAgent.train_step

    def train_step(self, batch):
        logs = original(self, batch)
        if self.epoch == 1 and self.batch_in_epoch == 3:  # the last step of epoch 2
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return logs

    monkeypatch.setattr(ExampleAgent, "train_step", train_step)
    with pytest.raises(TrainingStopped, match="epoch 2"):
        train(EXAMPLE, exps, "exp_name=nan", "batch_size=32", *PLAIN)
    assert load(exps / "nan" / "checkpoints" / "last.pth")["epoch"] == 1


def test_resuming_another_runs_checkpoint_starts_its_own_early_stopping(exps, monkeypatch):
    scores = iter([0.9, 0.3, 0.4, 0.5])
    monkeypatch.setattr(
        BaseAgent, "validate", lambda self, *a, **k: {"valid/loss": 1.0, "valid/accuracy": next(scores)}
    )
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", *PLAIN[:3], "early_stop_patience=1")
    source = exps / "a" / "checkpoints" / "last.pth"
    train(EXAMPLE, exps, "exp_name=b", "max_epoch=4", *PLAIN[:3], "early_stop_patience=1", f"resume={source}")
    summary = json.loads((exps / "b" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 4  # 0.3, 0.4, 0.5: always improving


def test_the_profiler_writes_what_it_recorded_when_interrupted(exps, monkeypatch):
    from agents.example import ExampleAgent

    original = ExampleAgent.train_step

    def train_step(self, batch):
        logs = original(self, batch)
        if self.global_step == 3:
            self.signals.received = 2
        return logs

    monkeypatch.setattr(ExampleAgent, "train_step", train_step)
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, "exp_name=pi", "profile_steps=5", "log_every=1", *PLAIN[:3])
    assert (exps / "pi" / "out" / "profile_trace.json").exists()


def test_a_second_ctrl_c_aborts_but_a_second_sigterm_is_only_noted():
    """SLURM sends SIGTERM right after its warning (which the run takes as SIGTERM): the save must go on."""
    from utils.training.signals import Signals

    warnings = []
    signals = Signals(warnings.append, 10, "train")
    signals.on_signal(signal.SIGTERM, None)
    signals.on_signal(signal.SIGTERM, None)
    assert signals.received == signal.SIGTERM and len(warnings) == 1, warnings
    with pytest.raises(KeyboardInterrupt):
        signals.on_signal(signal.SIGINT, None)
