"""Checkpoints: plain (weights_only), exact resume, Ctrl-C, NaN stop, nothing overwritten."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.conftest import EXAMPLE, MAIN_WITH_TEST_AGENTS, REPO, assert_same_tensors, load, train
from utils.errors import TrainingStopped, UserError
from utils.run import checkpoint
from utils.run.report import read_run

pytestmark = pytest.mark.usefixtures("test_agents_registered")  # DropoutAgent

# The template with dropout and a per-epoch LR decay: the resume must restore the RNG and the scheduler to
# be exact. 640 random images: 384 to train on (8 batches of 32 used), 128 to validate.
STEP_LR = 'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.7}}'
QUICK = ["agent=DropoutAgent", STEP_LR, "random_size=640", "image_size=16", "hidden=8"]
QUICK += ["batch_size=32", "max_train_batches=8"]


def test_checkpoint_is_plain_and_complete(exps):
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", *QUICK)
    state = torch.load(exps / "a" / "checkpoints" / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 8 and state["batch_in_epoch"] == 0
    assert set(state["models"]) == {"model"} and set(state["optimizers"]) == {"optimizer"}
    assert set(state["schedulers"]) == {"scheduler"}
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert state["config"]["exp_name"] == "a" and state["versions"]["torch"] == torch.__version__
    assert (exps / "a" / "checkpoints" / "best.pth").exists()


def test_resume_is_exact(exps):
    train(EXAMPLE, exps, "exp_name=straight", "max_epoch=2", *QUICK)
    train(EXAMPLE, exps, "exp_name=resumed", "max_epoch=1", *QUICK)
    train(EXAMPLE, exps, "exp_name=resumed", "max_epoch=2", *QUICK)
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("straight", "resumed"))
    for key in ("models", "optimizers", "schedulers", "epoch", "global_step"):
        assert_same_tensors(a[key], b[key], key)
    rows = (exps / "resumed" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2"]
    summary = json.loads((exps / "resumed" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 16


def test_rerun_of_a_finished_run_changes_nothing(exps):
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", *QUICK)
    files = ("checkpoints/last.pth", "checkpoints/best.pth", "summary.json", "metrics.csv", "config.json")
    before = {name: (exps / "a" / name).read_bytes() for name in files}
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", *QUICK)
    assert {name: (exps / "a" / name).read_bytes() for name in files} == before
    assert "raise max_epoch to continue" in (exps / "a" / "logs" / "run.log").read_text()


def test_resume_false_never_overwrites(exps):
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", *QUICK)
    before = (exps / "a" / "checkpoints" / "last.pth").read_bytes()
    with pytest.raises(UserError, match="already has checkpoints and resume is false"):
        train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", "resume=false", *QUICK)
    assert (exps / "a" / "checkpoints" / "last.pth").read_bytes() == before


def test_changed_config_keeps_the_old_one(exps):
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", *QUICK)
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=2", "optimizer.args.lr=0.05", *QUICK)
    assert json.loads((exps / "a" / "config.1.json").read_text())["max_epoch"] == 1
    assert json.loads((exps / "a" / "config.json").read_text())["max_epoch"] == 2
    changes = "max_epoch 1 -> 2, optimizer.args.lr 0.01 -> 0.05"  # the keys that differ, named in the log
    assert (
        f"config changed since the last run ({changes}); the old one is config.1.json"
        in (exps / "a" / "logs" / "run.log").read_text()
    )


def test_resume_from_a_path_and_test_mode(exps):
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=1", *QUICK)
    path = exps / "a" / "checkpoints" / "last.pth"
    train(EXAMPLE, exps, "exp_name=b", "max_epoch=2", f"resume={path}", *QUICK)
    assert load(exps / "b" / "checkpoints" / "last.pth")["epoch"] == 2
    # The same command again (after a Ctrl-C, or for more epochs) goes on from b's own progress, not from a's.
    train(EXAMPLE, exps, "exp_name=b", "max_epoch=3", f"resume={path}", *QUICK)
    assert [row["epoch"] for row in read_run(exps / "b").rows] == [2, 3]
    resumed = [line for line in (exps / "b" / "logs" / "run.log").read_text().splitlines() if "resumed from" in line]
    assert str(exps / "b" / "checkpoints" / "last.pth") in resumed[-1], resumed
    # Another path is loaded as asked, also in a run that has a last.pth: a roll-back to the run's best.pth.
    best = exps / "b" / "checkpoints" / "best.pth"
    train(EXAMPLE, exps, "exp_name=b", "max_epoch=4", f"resume={best}", *QUICK)
    assert f"resumed from {best}" in (exps / "b" / "logs" / "run.log").read_text()
    with pytest.raises(UserError, match="key 'resume': checkpoint .*nope.pth not found"):
        train(EXAMPLE, exps, "exp_name=b", "max_epoch=4", f"resume={exps / 'nope.pth'}", *QUICK)
    train(EXAMPLE, exps, "exp_name=b", "mode=test", *QUICK)
    summary = json.loads((exps / "b" / "summary.json").read_text())
    assert 0 <= summary["test/accuracy"] <= 1 and summary["tested_checkpoint"].endswith("best.pth")


def test_init_weights_starts_a_new_run_from_another_runs_weights(exps):
    train(EXAMPLE, exps, "exp_name=a", "max_epoch=2", *QUICK)
    path = exps / "a" / "checkpoints" / "last.pth"
    # lr 0: the weights stay those it started from; its epochs, optimizer and schedule are its own.
    args = ["exp_name=ft", "max_epoch=1", f"init_weights={path}", *QUICK, "optimizer.args.lr=0"]
    train(EXAMPLE, exps, *args)
    started, tuned = load(path), load(exps / "ft" / "checkpoints" / "last.pth")
    assert_same_tensors(tuned["models"], started["models"])
    assert tuned["epoch"] == 1 and tuned["global_step"] == 8 and tuned["schedulers"]["scheduler"]["last_epoch"] == 1
    assert f"weights from {path} (epoch 2)" in (exps / "ft" / "logs" / "run.log").read_text()
    train(EXAMPLE, exps, *args[:1], "max_epoch=2", *args[2:])  # the same command, longer: its own last.pth
    assert load(exps / "ft" / "checkpoints" / "last.pth")["epoch"] == 2
    # It only starts a run: another value for a run that goes on, or with resume=PATH, would do nothing.
    with pytest.raises(UserError, match=f"key 'init_weights': the run started from {path} and goes on from its own"):
        train(EXAMPLE, exps, *args[:1], "max_epoch=3", f"init_weights={exps / 'nope.pth'}", *args[3:])
    with pytest.raises(UserError, match="key 'init_weights': a run starts from resume's checkpoint or from these"):
        train(EXAMPLE, exps, "exp_name=ft_both", f"init_weights={path}", f"resume={path}", *QUICK)
    # Another number of classes: the new head keeps its initial values, the rest is the checkpoint's.
    train(EXAMPLE, exps, "exp_name=ft_head", f"init_weights={path}", *args[1:], "num_classes=3")
    head = load(exps / "ft_head" / "checkpoints" / "last.pth")["models"]["model"]
    assert torch.equal(head["features.0.weight"], started["models"]["model"]["features.0.weight"])
    log = (exps / "ft_head" / "logs" / "run.log").read_text()
    assert (
        "; 2 keep their initial values: classifier.1.weight (4, 256) -> (3, 256), classifier.1.bias (4,) -> (3,)" in log
    )
    with pytest.raises(UserError, match="key .init_weights.: 1 of the 6 tensors of model .model. fit .*: another conf"):
        train(EXAMPLE, exps, "exp_name=ft_wide", f"init_weights={path}", *QUICK, "hidden=9")
    with pytest.raises(UserError, match=f"key 'init_weights': checkpoint {exps / 'nope.pth'} not found"):
        train(EXAMPLE, exps, "exp_name=ft_none", f"init_weights={exps / 'nope.pth'}", *QUICK)


def test_checkpoint_of_another_model_is_a_clear_error(exps):
    train(EXAMPLE, exps, "exp_name=ex", "max_epoch=1")
    other = exps / "ex" / "checkpoints" / "last.pth"
    with pytest.raises(UserError, match="checkpoint of ExampleAgent, but the config's agent is DropoutAgent"):
        train(EXAMPLE, exps, "exp_name=m", f"resume={other}", *QUICK)
    with pytest.raises(UserError) as info:
        train(EXAMPLE, exps, "exp_name=ex2", f"resume={other}", "hidden=7")
    message = str(info.value)  # short: how many tensors differ and one of them, not torch's whole list
    assert (
        "model 'model' differs from the checkpoint's: 5 tensors (checkpoint -> config), e.g. features.0.weight"
        in message
    )
    assert "(16, 3, 3, 3) -> (7, 3, 3, 3)" in message and len(message) < 400 and "\n" not in message
    with pytest.raises(UserError, match="checkpoint optimizer 'optimizer' is Adam, the config's is SGD"):
        train(EXAMPLE, exps, "exp_name=ex3", f"resume={other}", "optimizer.type=SGD")


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good(exps):
    train(EXAMPLE, exps, "exp_name=nan", "max_epoch=1", "optimizer.type=SGD")
    good = (exps / "nan" / "checkpoints" / "last.pth").read_bytes()
    with pytest.raises(
        TrainingStopped, match=r"loss is (nan|inf) \(checked every log_every steps\) at epoch 2, step \d+"
    ) as info:
        train(EXAMPLE, exps, "exp_name=nan", "max_epoch=3", "optimizer.type=SGD", "optimizer.args.lr=1e12")
    assert "last good checkpoint" in str(info.value)
    assert (exps / "nan" / "checkpoints" / "last.pth").read_bytes() == good
    assert json.loads((exps / "nan" / "summary.json").read_text())["status"] == "diverged"
    last = (exps / "nan" / "logs" / "run.log").read_text().splitlines()[-1]  # why, in one line, as on the terminal
    assert "failed: loss is " in last and "last good checkpoint" in last


def test_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    checkpoint.atomic_save({"models": {}, "epoch": 1}, path)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.atomic_save({"models": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_checkpoints_get_the_mode_of_every_other_file(tmp_path):
    old = os.umask(0o022)  # a teammate on shared storage reads (and resumes from) a run's files
    try:
        checkpoint.atomic_save({"models": {}, "epoch": 1}, tmp_path / "last.pth")
        (tmp_path / "other.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "last.pth").stat().st_mode & 0o777 == (tmp_path / "other.json").stat().st_mode & 0o777 == 0o644


def test_sigint_mid_epoch_saves_and_resume_finishes_identically(exps):
    args = [
        "agent=DropoutAgent",
        STEP_LR,
        "random_size=20000",  # 12000 to train on: 750 steps
        "batch_size=16",
        "max_epoch=1",
        "max_valid_batches=2",
        "torch_threads=1",  # the same float summation order in both processes
    ]
    cmd = [*MAIN_WITH_TEST_AGENTS, str(EXAMPLE), f"experiments_dir={exps}", "exp_name=int", *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    log = exps / "int" / "logs" / "run.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and "run directory" in log.read_text()):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    state = load(exps / "int" / "checkpoints" / "last.pth")
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 750  # stopped inside the epoch
    train(EXAMPLE, exps, "exp_name=int", *args)
    train(EXAMPLE, exps, "exp_name=straight", *args)
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("int", "straight"))
    assert a["global_step"] == b["global_step"] == 750
    assert_same_tensors(a["models"], b["models"], "models")
    assert_same_tensors(a["optimizers"], b["optimizers"], "optimizers")
