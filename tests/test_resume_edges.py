"""Resume at the edges: an interrupt on an epoch's last step, another batch size, 0 or 2 optimizer steps per batch."""

import csv
import json
import os
import signal

import pytest
import torch

import main
from agents.example import ExampleAgent
from tests.conftest import EXAMPLE, REPO, DropoutAgent, assert_same_tensors, load, train
from utils.errors import RunInterrupted

pytestmark = pytest.mark.usefixtures("test_agents_registered")  # DropoutAgent

# 320 random images: 192 to train on (6 batches of 32 per epoch), 64 to validate, 64 to test. The template
# with dropout and a per-epoch LR decay: exactness depends on the RNG and the scheduler too.
STEP_LR = 'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.7}}'
SMALL = ["agent=DropoutAgent", STEP_LR, "random_size=320", "image_size=16", "hidden=8", "batch_size=32"]
SMALL += ["torch_threads=1", "log_every=1"]


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def interrupt_at(monkeypatch, epoch: int, batch: int, agent: type = DropoutAgent) -> None:
    """Deliver a Ctrl-C as training step ``batch`` (1-based) of epoch ``epoch`` (0-based) of ``agent`` ends."""
    original = agent.train_step

    def train_step(self, b):
        logs = original(self, b)
        if self.epoch == epoch and self.batch_in_epoch + 1 == batch:
            self.signals.received = signal.SIGINT
        return logs

    monkeypatch.setattr(agent, "train_step", train_step)


@pytest.mark.parametrize("batch", [6, 3])
def test_an_interrupt_then_resume_trains_every_remaining_epoch_exactly(exps, monkeypatch, batch):
    """batch 6 is the epoch's last step: the epoch counts as trained, the next ones are whole. The second epoch,
    after the LR's first decay: the resumed scheduler must carry on from there."""
    train(EXAMPLE, exps, "exp_name=straight", "max_epoch=3", *SMALL)
    interrupt_at(monkeypatch, epoch=1, batch=batch)
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, "exp_name=cut", "max_epoch=3", *SMALL)
    monkeypatch.undo()
    assert load(exps / "cut" / "checkpoints" / "last.pth")["batch_in_epoch"] == batch
    train(EXAMPLE, exps, "exp_name=cut", "max_epoch=3", *SMALL)
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("straight", "cut"))
    assert b["global_step"] == 18
    for key in ("models", "optimizers", "schedulers", "epoch", "global_step"):
        assert_same_tensors(a[key], b[key], key)
    # Every column but train/loss: after a mid-epoch resume that is the mean of the batches trained since.
    cut, straight = (read_csv(exps / n / "metrics.csv") for n in ("cut", "straight"))
    assert [{k: v for k, v in row.items() if k != "train/loss"} for row in cut] == [
        {k: v for k, v in row.items() if k != "train/loss"} for row in straight
    ]
    summary = json.loads((exps / "cut" / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["steps"] == 18


def test_mid_epoch_resume_with_another_batch_size_skips_what_was_trained(exps, monkeypatch):
    interrupt_at(monkeypatch, epoch=0, batch=3)  # 3 x 32 = 96 of 192 samples done
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, "exp_name=bs", "max_epoch=1", *SMALL)
    monkeypatch.undo()
    train(EXAMPLE, exps, "exp_name=bs", "max_epoch=1", *SMALL, "batch_size=16")
    state = load(exps / "bs" / "checkpoints" / "last.pth")
    assert state["global_step"] == 3 + (192 - 96) // 16  # the other 96 samples, once, in batches of 16
    assert "the 96 samples of epoch 1 already trained on are skipped" in (exps / "bs" / "logs" / "run.log").read_text()


class StepsAgent(ExampleAgent):
    """Calls optimize 0 times on odd batches and twice on even ones (a GAN's critic steps, DQN's warm-up)."""

    def train_step(self, batch):
        x, y = self.to_device(batch)
        loss = None
        for _ in range(0 if self.batch_in_epoch % 2 else 2):
            with self.autocast():
                loss = self.loss(self.model(x), y)
            self.optimize(loss, self.optimizer)
        return {"loss": loss.detach() if loss is not None else None}


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_with_zero_or_two_optimizer_steps_per_batch(exps, monkeypatch, amp):
    import agents

    monkeypatch.setitem(agents.AGENTS, "StepsAgent", __name__)
    train(EXAMPLE, exps, "agent=StepsAgent", "exp_name=s", f"amp={amp}", "max_epoch=1", "max_train_batches=6")
    state = load(exps / "s" / "checkpoints" / "last.pth")
    assert state["global_step"] == 6
    if amp == "fp16":  # one scaler update per optimizer step (no overflow at the initial scale here)
        assert state["scaler"]["_growth_tracker"] == 6


def test_mode_test_evaluates_the_whole_test_split_despite_the_debug_limit(exps):
    args = [*SMALL, "exp_name=t", "max_epoch=1", "batch_size=8"]
    train(EXAMPLE, exps, *args)
    train(EXAMPLE, exps, *args, "mode=test")
    whole = json.loads((exps / "t" / "summary.json").read_text())["test/loss"]
    train(EXAMPLE, exps, *args, "mode=test", "max_valid_batches=1")
    assert json.loads((exps / "t" / "summary.json").read_text())["test/loss"] == whole


def test_resume_path_is_relative_to_the_repository_like_every_path_key(exps, tmp_path, monkeypatch):
    train(EXAMPLE, exps, "exp_name=src", "max_epoch=1", *SMALL)
    relative = os.path.relpath(exps / "src" / "checkpoints" / "last.pth", REPO)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    train(EXAMPLE, exps, "exp_name=dst", "max_epoch=2", f"resume={relative}", *SMALL)
    assert load(exps / "dst" / "checkpoints" / "last.pth")["global_step"] == 12


def test_start_log_names_the_data_mode_and_split_sizes(exps):
    train(EXAMPLE, exps, "exp_name=log", "max_epoch=1", *SMALL)
    log = (exps / "log" / "logs" / "run.log").read_text()
    assert "data: data_mode=random from ExampleDataLoader: train 192 samples, valid 64 samples\n" in log


def test_deterministic_is_enforced_during_the_run_and_repeats_exactly(exps, monkeypatch):
    seen = []
    original = DropoutAgent.train_step

    def train_step(self, batch):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self, batch)

    monkeypatch.setattr(DropoutAgent, "train_step", train_step)
    for name in ("d1", "d2"):
        train(EXAMPLE, exps, f"exp_name={name}", "deterministic=true", "max_epoch=1", *SMALL)
    assert seen and all(seen)
    a, b = (load(exps / n / "checkpoints" / "last.pth")["models"]["model"] for n in ("d1", "d2"))
    assert_same_tensors(a, b)
    seen.clear()
    train(EXAMPLE, exps, "exp_name=d3", "max_epoch=1", *SMALL)
    assert seen and not any(seen)


def test_checkpoint_and_model_mismatch_names_the_keys_and_shapes(exps):
    train(EXAMPLE, exps, "exp_name=m", "max_epoch=1", "hidden=8")
    with pytest.raises(
        main.UserError, match=r"differs from the checkpoint's: .*features.0.weight \(8, 3, 3, 3\) -> \(4,"
    ):
        train(EXAMPLE, exps, "exp_name=m", "max_epoch=2", "hidden=4")


def test_stop_and_resume_number_the_epoch_alike_and_only_a_total_schedule_warns_of_a_new_length(exps, monkeypatch):
    interrupt_at(monkeypatch, epoch=1, batch=3)
    with pytest.raises(RunInterrupted, match=r"stopped by SIGINT in epoch 2 after batch 3, step 9;"):
        train(EXAMPLE, exps, "exp_name=cut", "max_epoch=3", *SMALL)
    monkeypatch.undo()
    train(EXAMPLE, exps, "exp_name=cut", "max_epoch=4", *SMALL)  # a longer run, a StepLR without "total"
    log = (exps / "cut" / "logs" / "run.log").read_text()
    assert "in epoch 2 after batch 3, step 9" in log.split("resumed from", 1)[1].split("\n", 1)[0]
    assert "new length" not in log
    cosine = 'scheduler={"type": "CosineAnnealingLR", "args": {"T_max": "total"}}'
    train(EXAMPLE, exps, "exp_name=cos", "max_epoch=1", *SMALL, cosine)
    train(EXAMPLE, exps, "exp_name=cos", "max_epoch=2", *SMALL, cosine)
    assert "rebuilt for the run's new length" in (exps / "cos" / "logs" / "run.log").read_text()


def test_a_forked_loader_worker_ignores_the_signal_the_main_process_saves_on(exps, monkeypatch):
    config, cls = main.load_config(str(EXAMPLE), [f"experiments_dir={exps}", "exp_name=w", "max_epoch=1"])
    agent = cls(config)
    try:
        monkeypatch.setattr(os, "getpid", lambda: agent.signals._pid + 1)  # as in a forked worker
        agent.signals.on_signal(signal.SIGINT, None)
        assert agent.signals.received is None and not (exps / "w" / "logs" / "run.log").read_text().count("SIGINT")
        monkeypatch.undo()
        agent.signals.on_signal(signal.SIGINT, None)
        assert agent.signals.received == signal.SIGINT
    finally:
        agent.finalize()
