"""Callbacks: the stages in order, a user's callback from the config with its state resumed exactly, under DDP too,
and its mistakes as one line; the loggers key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import main
from tests.conftest import EXAMPLE, REPO, load, train
from utils.errors import UserError
from utils.training.callbacks import Callback

SMALL = ["random_size=90", "batch_size=8", "image_size=8", "hidden=4", "torch_threads=1"]
SELF = "tests.test_callbacks.StageLog"
EARLY = "utils.training.early_stopping:EarlyStopping"  # module:Class, as an agent is named


class StageLog(Callback):
    """Writes each stage it sees to events.<rank>.txt in the run directory; its state counts the batches."""

    def __init__(self, stop_at_epoch: int | None = None, stop_rank: int | None = None) -> None:
        self.batches = self.epochs = 0
        self.stop_at_epoch, self.stop_rank = stop_at_epoch, stop_rank

    def on_train_start(self, agent) -> None:
        self.log(agent, f"start {agent.epoch} batches {self.batches}")

    def on_train_batch_end(self, agent, logs: dict) -> None:
        self.batches += 1
        self.log(agent, f"batch {agent.global_step}")

    def on_optimizer_step(self, agent, optimizer) -> None:
        self.log(agent, f"step {agent.optimizer_steps}")

    def on_validation_end(self, agent, metrics: dict[str, float]) -> None:
        self.log(agent, f"validated {agent.epoch} {sorted(metrics)}")

    def on_epoch_end(self, agent, metrics: dict[str, float]) -> None:
        self.epochs += 1  # changed in the epoch's last stage: still in its checkpoint
        self.log(agent, f"end {agent.epoch}")
        if agent.epoch == self.stop_at_epoch and self.stop_rank in (None, agent.rank):
            agent.stop_training = True

    def on_train_end(self, agent) -> None:
        self.log(agent, f"done {agent.status}")

    def state_dict(self) -> dict:
        return {"batches": self.batches, "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.batches, self.epochs = state["batches"], state["epochs"]

    @staticmethod
    def log(agent, line: str) -> None:
        with open(agent.run_dir / f"events.{agent.rank}.txt", "a") as f:
            f.write(line + "\n")


def callbacks(**args) -> str:
    return "callbacks=" + json.dumps([{"type": SELF, "args": args}])


def events(exps, name: str, rank: int = 0) -> list[str]:
    return (exps / name / f"events.{rank}.txt").read_text().splitlines()


def expected(epochs: range, batches: int, accumulate: int, first_step: int = 0, start: str = "start 0 batches 0"):
    """The stages of ``epochs`` of ``batches`` batches: the optimizer steps (inside ``train_step``) on the last
    batch of each group of ``accumulate`` (the last group may be short)."""
    lines, step = [start], first_step
    for epoch in epochs:
        for b in range(1, batches + 1):
            if b % accumulate == 0 or b == batches:
                step += 1
                lines.append(f"step {step}")
            lines.append(f"batch {(epoch - 1) * batches + b}")
        lines += [f"validated {epoch} ['valid/accuracy', 'valid/loss']", f"end {epoch}"]
    return [*lines, "done finished"]


def test_stages_run_in_order_and_a_callbacks_state_resumes_exactly(exps):
    # 90 images: 54 to train on, 7 batches of 8 (the last of 6); groups of 2: 4 optimizer steps an epoch.
    args = [*SMALL, "accumulate_grad_batches=2", callbacks()]
    train(EXAMPLE, exps, "exp_name=straight", "max_epoch=2", *args)
    assert events(exps, "straight") == expected(range(1, 3), batches=7, accumulate=2)
    assert load(exps / "straight" / "checkpoints" / "last.pth")["callbacks"]["StageLog{}"] == {
        "batches": 14,
        "epochs": 2,
    }

    train(EXAMPLE, exps, "exp_name=resumed", "max_epoch=1", *args)
    train(EXAMPLE, exps, "exp_name=resumed", "max_epoch=2", *args)
    second = events(exps, "resumed")[len(expected(range(1, 2), 7, 2)) :]
    assert second == expected(range(2, 3), batches=7, accumulate=2, first_step=4, start="start 1 batches 7")
    assert load(exps / "resumed" / "checkpoints" / "last.pth")["callbacks"]["StageLog{}"] == {
        "batches": 14,
        "epochs": 2,
    }


def test_a_callback_stops_training_and_two_of_one_class_keep_their_own_state(exps):
    two = [{"type": SELF, "args": {"stop_at_epoch": 2}}, {"type": SELF}]
    train(EXAMPLE, exps, "exp_name=stop", "max_epoch=5", *SMALL, f"callbacks={json.dumps(two)}")
    summary = json.loads((exps / "stop" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["status"] == "finished"
    keys = {'StageLog{"stop_at_epoch": 2}', "StageLog{}"}
    assert set(load(exps / "stop" / "checkpoints" / "last.pth")["callbacks"]) == keys
    # The first one gone at a resume: the other keeps its own state, and the log says what was dropped.
    train(EXAMPLE, exps, "exp_name=stop", "max_epoch=3", *SMALL, f"callbacks={json.dumps(two[1:])}")
    assert load(exps / "stop" / "checkpoints" / "last.pth")["callbacks"] == {"StageLog{}": {"batches": 21, "epochs": 3}}
    log = (exps / "stop" / "logs" / "run.log").read_text()
    assert 'callbacks this run has not (dropped): StageLog{"stop_at_epoch": 2}' in log


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('[{"type": "tests.no_such_module.Hook"}]', r"key 'callbacks\[0\].type': no module 'tests.no_such_module'"),
        ('[{"type": "tests.test_callbacks.StageLg"}]', r"is no class \(did you mean 'StageLog'\?\)"),
        ('[{"type": "tests.test_callbacks.SELF"}]', "not a Callback subclass"),
        (f'[{{"type": "{SELF}", "args": {{"stop": 1}}}}]', r"callbacks\[0\].args.*unexpected keyword argument 'stop'"),
        ('[{"typ": "a.B"}]', r"key 'callbacks\[0\]': expected"),
        (f'[{{"type": "{SELF}", "arg": {{}}}}]', r"key 'callbacks\[0\].arg': unknown key \(did you mean 'args'\?\)"),
        ('{"type": "a.B"}', "key 'callbacks': expected a list"),
        (f'[{{"type": "{EARLY}", "args": {{"patience": 0}}}}]', r"callbacks\[0\].args.*patience must be at least 1"),
        ('["tensorbord"]', None),
    ],
)
def test_callback_and_logger_mistakes_are_one_line(exps, value, message):
    key = "loggers" if message is None else "callbacks"
    message = message or "key 'loggers': no logger 'tensorbord'.*did you mean 'tensorboard'"
    with pytest.raises(UserError, match=message):
        train(EXAMPLE, exps, "exp_name=bad", "max_epoch=1", *SMALL, f"{key}={value}")
    assert not (exps / "bad" / "checkpoints" / "last.pth").exists()
    with pytest.raises(UserError, match=message):  # main.py --keys: the same line
        main.describe_keys(str(EXAMPLE), [*SMALL, f"{key}={value}"])


def test_no_loggers_writes_no_tensorboard_files_but_metrics_csv(exps):
    train(EXAMPLE, exps, "exp_name=quiet", "max_epoch=1", *SMALL, "loggers=[]")
    assert not list((exps / "quiet" / "summaries").iterdir())
    assert (exps / "quiet" / "metrics.csv").read_text().count("\n") == 2
    train(EXAMPLE, exps, "exp_name=loud", "max_epoch=1", *SMALL)
    assert [p.name.split(".")[0] for p in (exps / "loud" / "summaries").iterdir()] == ["events"]


def test_callbacks_under_two_processes_run_on_every_rank_and_resume_from_rank_0s_state(exps):
    def torchrun(*overrides: str) -> None:
        cmd = [sys.executable, "main.py", "--nproc", "2", str(EXAMPLE), f"experiments_dir={exps}", "exp_name=ddp"]
        result = subprocess.run([*cmd, *SMALL, callbacks(), *overrides], cwd=REPO, capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr.decode()[-3000:]

    # 54 training images over 2 ranks: 27 each, 4 batches of 8 a rank per epoch.
    torchrun("max_epoch=1")
    torchrun("max_epoch=2", "ema_decay=0.9", "early_stop_patience=5")
    for rank in (0, 1):
        lines = events(exps, "ddp", rank)
        assert lines[: len(expected(range(1, 2), 4, 1))] == expected(range(1, 2), batches=4, accumulate=1)
        assert lines[-1] == "done finished" and "start 1 batches 4" in lines
    state = load(exps / "ddp" / "checkpoints" / "last.pth")
    assert state["callbacks"]["StageLog{}"] == {"batches": 8, "epochs": 2}
    assert set(state["callbacks"]) >= {"ema", "early_stopping"}


def test_a_stop_one_rank_decides_stops_every_rank(exps):
    cmd = [sys.executable, "main.py", "--nproc", "2", str(EXAMPLE), f"experiments_dir={exps}", "exp_name=one"]
    args = [*SMALL, "max_epoch=4", callbacks(stop_at_epoch=1, stop_rank=0)]
    result = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    for rank in (0, 1):
        assert events(exps, "one", rank)[-2:] == ["end 1", "done finished"]
    assert json.loads((exps / "one" / "summary.json").read_text())["epochs"] == 1


def test_on_train_end_sees_a_failed_run(exps, monkeypatch):
    from agents.example import ExampleAgent

    def broken(self, batch):
        raise RuntimeError("a bug in train_step")

    monkeypatch.setattr(ExampleAgent, "train_step", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        train(EXAMPLE, exps, "exp_name=bug", "max_epoch=1", *SMALL, callbacks())
    assert events(exps, "bug")[-1] == "done failed"
    assert json.loads((exps / "bug" / "summary.json").read_text())["status"] == "failed"  # main.py status shows it
    log = (exps / "bug" / "logs" / "run.log").read_text()  # and the run's log the bug's traceback
    assert "failed: Traceback (most recent call last)" in log and log.rstrip().endswith("a bug in train_step")


def test_the_scalars_queued_before_an_image_reach_the_loggers_before_it(tmp_path):
    """A logger whose steps only go up (W&B) must get the queued training scalars before a later step's image."""
    from utils.run.loggers import Logger
    from utils.run.recorder import Recorder

    class Calls(Logger):
        def __init__(self) -> None:
            self.calls = []

        def log_scalars(self, rows) -> None:
            self.calls += [("scalars", step) for _, step in rows]

        def log_image(self, tag, image, step) -> None:
            self.calls.append(("image", step))

    recorder, logger = Recorder(tmp_path / "run", enabled=True), Calls()
    recorder.loggers.append(logger)
    try:
        for step in (1, 2, 3):
            recorder.scalars({"train/loss": 1.0}, step)
        recorder.image("samples", torch.zeros(3, 4, 4, dtype=torch.uint8), 4)
    finally:
        recorder.close()
    assert logger.calls == [("scalars", 1), ("scalars", 2), ("scalars", 3), ("image", 4)]


class TermAtEnd(Callback):
    """Sends its own process SIGTERM as training ends (SLURM's warning coming while the run finishes)."""

    def on_train_end(self, agent) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_while_the_run_finishes_is_noted_and_the_run_ends_well(exps):
    cmd = [sys.executable, "main.py", str(EXAMPLE), f"experiments_dir={exps}", "exp_name=late", "max_epoch=1"]
    spec = json.dumps([{"type": "tests.test_callbacks.TermAtEnd"}])
    done = subprocess.run([*cmd, *SMALL, f"callbacks={spec}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((exps / "late" / "summary.json").read_text())["status"] == "finished"


def test_early_stopping_added_as_a_callback_follows_the_runs_monitor(exps):
    spec = json.dumps([{"type": EARLY, "args": {"patience": 1}}])
    args = [*SMALL, "max_epoch=6", "optimizer.args.lr=0", "monitor=min valid/loss"]  # lr 0: nothing improves
    train(EXAMPLE, exps, "exp_name=es", *args, f"callbacks={spec}")
    summary = json.loads((exps / "es" / "summary.json").read_text())
    assert summary["status"] == "early stopped" and summary["epochs"] == 2


def test_a_second_ctrl_c_is_logged_as_such_not_as_a_bug(exps, monkeypatch):
    from agents.example import ExampleAgent

    def interrupted(self, batch):
        raise KeyboardInterrupt  # what Signals raises on a second Ctrl-C

    monkeypatch.setattr(ExampleAgent, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(EXAMPLE, exps, "exp_name=ctrl_c", "max_epoch=1", *SMALL)
    last = (exps / "ctrl_c" / "logs" / "run.log").read_text().splitlines()[-1]
    assert last.endswith("aborted: stopped at once by a second Ctrl-C (no checkpoint of the last steps)")
    assert json.loads((exps / "ctrl_c" / "summary.json").read_text())["status"] == "aborted"  # not "failed"
