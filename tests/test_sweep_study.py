"""Sweeps: a study and its folder belong together; failed, grown and waiting trials; mistakes in a sweep's keys."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

import main
import utils.sweep
import utils.sweep_subprocess
from tests.conftest import REPO
from tests.test_sweep import TINY, rows, sweep_file
from utils.sweep_spec import load_sweep

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_a_new_study_never_takes_the_trial_folders_of_another(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    (exps / "s" / "study.journal").unlink()  # a new study, the old one's trial_0000/ still there
    assert main.main(["--sweep", path, "max_epoch=1"]) == 2
    storage = f"storage=sqlite:///{tmp_path / 'other.db'}"  # another storage, the same folder
    assert main.main(["--sweep", path, "max_epoch=1", storage]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 2 and all("holds the trials of another study" in line for line in err[-2:])
    assert "choose another sweep name, or move the folder" in err[-1]


def test_nproc_trials_run_with_the_python_of_the_sweep(tmp_path, exps, monkeypatch, capsys):
    commands = []

    def run_command(command, overrides, run_dir, after_validation):
        commands.append(command)
        raise main.UserError("not run here")

    monkeypatch.setattr(utils.sweep_subprocess, "run_command", run_command)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "--nproc", "2"]) == 1
    assert commands[0][:4] == [sys.executable, str(REPO / "main.py"), "--nproc", "2"]


def test_failed_trials_run_again_only_with_retry_failed(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5, 0.7]})
    missing = ["data_mode=folder", f"data_root={tmp_path / 'nowhere'}", "max_epoch=1"]
    assert main.main(["--sweep", path, *missing]) == 1  # no data: both trials fail
    assert main.main(["--sweep", path, "max_epoch=1"]) == 1  # the data fixed: still failed, nothing runs
    assert "2 fail (failed trials are not run again unless retry_failed=true)" in capsys.readouterr().err
    assert main.main(["--sweep", path, "max_epoch=1", "retry_failed=true"]) == 0
    assert "sweep s: 2 complete; best trial" in capsys.readouterr().err  # the failed tries run again: not counted
    results = rows(exps / "s" / "results.csv")
    assert [(r["number"], r["optimizer.args.lr"], r["state"]) for r in results] == [
        ("0", "0.5", "fail"),
        ("1", "0.7", "fail"),
        ("2", "0.5", "complete"),
        ("3", "0.7", "complete"),
    ]
    assert results[0]["error"].endswith("; run again as trial 2") and "nowhere" in results[0]["error"]
    assert results[2]["error"] == ""
    assert main.main(["--sweep", path, "max_epoch=1", "retry_failed=true"]) == 0  # nothing failed: nothing runs
    assert len(rows(exps / "s" / "results.csv")) == 4


def test_a_seeded_study_that_grows_draws_new_values(tmp_path, exps):
    space = {"optimizer.args.lr": {"log_uniform": [0.01, 1.0]}, "batch_size": [16, 32, 64]}
    path = sweep_file(tmp_path, exps, parameters=space, method="random", sampler_seed=7)
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1"]) == 0
    assert main.main(["--sweep", path, "trials=4", "max_epoch=1"]) == 0
    lrs = [r["optimizer.args.lr"] for r in rows(exps / "s" / "results.csv")]
    assert len(set(lrs)) == 4, lrs


def test_a_grid_goes_on_only_in_the_order_it_was_made_with(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.1, 0.2, 0.3]}, sampler_seed=1)
    assert main.main(["--sweep", path, "trials=1", "max_epoch=1"]) == 0
    assert main.main(["--sweep", path, "sampler_seed=2", "max_epoch=1"]) == 2
    assert "key 'sampler_seed': the study in" in capsys.readouterr().err


def test_a_grid_goes_on_only_with_its_parameters_in_the_same_order(tmp_path, exps, capsys):
    space = {"optimizer.args.lr": [0.1, 0.2], "batch_size": [16, 32]}
    path = sweep_file(tmp_path, exps, parameters=space)
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1"]) == 0
    reordered = sweep_file(tmp_path, exps, parameters=dict(reversed(space.items())))
    assert main.main(["--sweep", reordered, "max_epoch=1"]) == 2  # slot N would be another combination
    assert "key 'parameters': the study in" in capsys.readouterr().err


def test_a_study_made_before_studies_kept_their_space_is_checked_against_its_sweep_json(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.1, 0.2, 0.3]})
    assert main.main(["--sweep", path, "trials=1", "max_epoch=1"]) == 0
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(exps / "s" / "study.journal")))
    optuna.load_study(study_name="s", storage=storage).set_user_attr("space", None)  # as an older study
    (tmp_path / "other").mkdir()
    reversed_grid = sweep_file(tmp_path / "other", exps, parameters={"optimizer.args.lr": [0.3, 0.2, 0.1]})
    assert main.main(["--sweep", reversed_grid, "max_epoch=1"]) == 2
    assert "was made with another parameters" in capsys.readouterr().err
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1"]) == 0


def test_machines_of_one_study_mark_their_folders_alike_and_a_retry_queued_twice_runs_once(tmp_path, capsys):
    storage = f"storage=sqlite:///{tmp_path / 'study.db'}"
    a, b = tmp_path / "a", tmp_path / "b"
    path = sweep_file(tmp_path, a, parameters={"optimizer.args.lr": [0.5, 0.7]})
    missing = ["data_mode=folder", f"data_root={tmp_path / 'nowhere'}", "max_epoch=1"]
    assert main.main(["--sweep", path, storage, *missing, f"experiments_dir={a}"]) == 1  # both trials fail
    study = optuna.load_study(study_name="s", storage=storage.removeprefix("storage="))
    # Two machines given retry_failed=true at the same moment: each queues what it read before the other queued.
    read = utils.sweep.counted(study)
    with pytest.MonkeyPatch.context() as same_moment:
        same_moment.setattr(utils.sweep, "counted", lambda study: read)
        utils.sweep._queue_failed(study)
        utils.sweep._queue_failed(study)
    assert main.main(["--sweep", path, storage, "max_epoch=1", f"experiments_dir={b}"]) == 0
    assert (a / "s" / ".study").read_text() == (b / "s" / ".study").read_text()
    results = rows(b / "s" / "results.csv")
    assert [(r["number"], r["optimizer.args.lr"], r["state"]) for r in results] == [
        ("0", "0.5", "fail"),
        ("1", "0.7", "fail"),
        ("2", "0.5", "complete"),
        ("3", "0.7", "complete"),
    ]
    assert "sweep s: 2 complete; best trial" in capsys.readouterr().err
    assert main.main(["--sweep", path, storage, "max_epoch=1", f"experiments_dir={a}"]) == 0  # its folder still its


@pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")
def test_a_silent_trial_without_values_is_run_again_at_its_own_grid_point(tmp_path, exps, monkeypatch):
    monkeypatch.setattr(utils.sweep, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(utils.sweep, "STALE_SECONDS", 2)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.1, 0.2, 0.3]})
    args = [f"storage=sqlite:///{tmp_path / 'study.db'}", "max_epoch=1"]
    # Another machine's worker asked for trial 0 and died before drawing its values.
    spec = load_sweep(path, [*args, "trials=1"], lambda config, more: main.load_config(config, more)[0])
    spec.sweep_dir.mkdir(parents=True)
    study = utils.sweep.open_study(spec)
    elsewhere = utils.sweep.Worker(tmp_path)
    elsewhere.id = "another-machine:/its/lock"
    assert utils.sweep._ask(study, spec, elsewhere).number == 0
    assert main.main(["--sweep", path, *args, "trials=2"]) == 0  # trial 1 runs; trial 0 is not yet silent
    time.sleep(3)
    assert main.main(["--sweep", path, *args, "trials=3"]) == 0
    results = rows(exps / "s" / "results.csv")
    assert [(r["number"], r["optimizer.args.lr"], r["state"]) for r in results] == [
        ("0", "", "fail"),
        ("1", "0.2", "complete"),
        ("2", "0.1", "complete"),
        ("3", "0.3", "complete"),
    ]


def test_a_trial_is_taken_up_only_from_a_dead_worker_of_its_own_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"  # two experiments_dirs of one database's study, on one machine
    first = utils.sweep.Worker(a)
    first.close(done=False)  # stopped mid-trial (or killed): its lock is free, its file stays
    again = utils.sweep.Worker(a)  # the same pid (a container's entrypoint started again)
    assert again.id != first.id and again.is_dead(first.id, local=False)
    assert again.is_dead(f"another-host-name:{first.path}", local=False)  # started again under a new name
    assert again.is_dead(f"{again.host}:{a / '.workers' / 'cleaned-away.lock'}", local=False)
    assert not utils.sweep.Worker(b).is_dead(first.id, local=False)  # the checkpoint is in a's folder
    assert not again.is_dead(again.id, local=False)  # alive
    # Another machine's worker whose lock is on its own disk at the same path: not known here, unless the
    # study is a journal file (its workers' locks are all in this folder).
    elsewhere = f"another-machine:{a / '.workers' / 'on-its-own-disk.lock'}"
    assert not again.is_dead(elsewhere, local=False) and again.is_dead(elsewhere, local=True)
    # The folder moved (or is mounted elsewhere): a worker is known by its lock's name in this .workers/.
    a.rename(tmp_path / "moved")
    moved = utils.sweep.Worker(tmp_path / "moved")
    assert moved.is_dead(first.id, local=True) and not moved.is_dead(again.id, local=True)


def test_a_machine_with_another_grid_is_refused_before_the_first_trial_too(tmp_path, capsys):
    storage = f"storage=sqlite:///{tmp_path / 'study.db'}"
    (tmp_path / "b").mkdir()
    a = sweep_file(tmp_path, tmp_path / "a", parameters={"optimizer.args.lr": [0.5, 1.0]})
    b = sweep_file(tmp_path / "b", tmp_path / "b", parameters={"optimizer.args.lr": [0.1, 0.2]})
    spec = load_sweep(a, [storage], lambda config, more: main.load_config(config, more)[0])
    spec.sweep_dir.mkdir(parents=True)
    utils.sweep._claim(utils.sweep.open_study(spec), spec)  # machine a, just before its first trial
    assert main.main(["--sweep", b, storage, "max_epoch=1"]) == 2
    assert "was made with another parameters" in capsys.readouterr().err


def test_a_refused_folder_leaves_the_new_study_free_for_another_space(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    storage = f"storage=sqlite:///{tmp_path / 'new.db'}"
    assert main.main(["--sweep", path, "max_epoch=1", storage]) == 2  # the folder is the journal study's
    (exps / "s").rename(exps / "s_journal")  # as the message says
    (tmp_path / "other").mkdir()
    other = sweep_file(tmp_path / "other", exps, parameters={"optimizer.args.lr": [0.7]})
    assert main.main(["--sweep", other, "max_epoch=1", storage]) == 0
    assert "holds the trials of another study" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")
def test_the_retry_of_a_trial_asked_beyond_the_last_place_is_surplus_too(tmp_path, exps, monkeypatch):
    monkeypatch.setattr(utils.sweep, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(utils.sweep, "STALE_SECONDS", 2)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5, 0.7]})
    args = [f"storage=sqlite:///{tmp_path / 'study.db'}", "max_epoch=1"]
    assert main.main(["--sweep", path, *args]) == 0
    # Another machine asked for a trial at the same moment as the last one, and died before calling it surplus.
    study = optuna.load_study(study_name="s", storage=args[0].removeprefix("storage="))
    late = study.ask()
    study._storage.record_heartbeat(late._trial_id)
    time.sleep(3)
    assert main.main(["--sweep", path, *args]) == 0  # its retry would be grid point 2 of 2
    results = rows(exps / "s" / "results.csv")
    assert [(r["number"], r["state"]) for r in results] == [("0", "complete"), ("1", "complete"), ("2", "fail")]


HOLDER = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_trial_that_a_worker_of_this_machine_still_runs_is_waited_for_then_taken_up(tmp_path, exps, monkeypatch):
    # A worker killed a moment ago, still saving: it holds its lock a while, its trial 0 stays RUNNING.
    monkeypatch.setattr(utils.sweep, "WAIT_SECONDS", 0.2)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    spec = load_sweep(path, ["max_epoch=1"], lambda config, more: main.load_config(config, more)[0])
    spec.sweep_dir.mkdir(parents=True)
    study = utils.sweep.open_study(spec)
    lock = spec.sweep_dir / ".workers" / "saving.lock"
    lock.parent.mkdir()
    saving = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), "2"], stdout=subprocess.PIPE, text=True)
    assert saving.stdout.readline() == "locked\n"
    trial = study.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{lock}")
    started = time.time()
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    assert saving.poll() is not None and time.time() - started > 1.0
    assert [(r["number"], r["state"]) for r in rows(exps / "s" / "results.csv")] == [("0", "complete")]


@pytest.mark.parametrize(
    ("parameters", "overrides", "message"),
    [
        (
            {"optimizer": [{"type": "SGD", "args": {"lr": 0.1}}], "optimizer.args.lr": [0.5]},
            [],
            "key 'parameters.optimizer': sets all of 'optimizer', so 'optimizer.args.lr'",
        ),
        ({"optimizer.args.lr": [0.5]}, ["optimizer.args.lr=0.1"], "so 'optimizer.args.lr' (a parameter or a fixed"),
        ({"max_epoch": {"int": [1, 400]}, "batch_size": {"int": [1, 400]}}, [], "a grid of 160,000 combinations"),
    ],
)
def test_parameters_that_would_lose_a_value_or_a_grid_too_big_are_one_line(
    tmp_path, exps, capsys, parameters, overrides, message
):
    path = sweep_file(tmp_path, exps, parameters=parameters)
    assert main.main(["--sweep", path, *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (exps / "s").exists()


@pytest.mark.slow
def test_sigterm_to_a_sweep_of_nproc_trials_waits_for_the_trial_to_save_then_exits_130(tmp_path, exps):
    overrides = {**TINY, "experiments_dir": str(exps), "max_epoch": 300, "max_train_batches": 1, "max_valid_batches": 1}
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]}, overrides=overrides)
    sweep = subprocess.Popen(
        [sys.executable, "main.py", "--sweep", path, "--nproc", "2"],
        cwd=REPO,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = exps / "s" / "trial_0000"
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"  # saved before the exit
    assert utils.sweep._run_holder(run) is None  # nothing of the trial runs on
