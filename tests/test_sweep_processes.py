"""Sweeps across processes: a SIGKILL mid-trial, workers sharing a study (a journal file, a real PostgreSQL
server), and trials that are themselves several processes."""

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

import main
import utils.sweep.study
import utils.sweep.subprocess
from tests.conftest import REPO
from tests.test_sweep import TINY, rows, sweep_file
from utils.run.recorder import LOCK_NAME
from utils.sweep.spec import load_sweep
from utils.sweep.subprocess import holder

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def sweep_command(path: str, *args: str) -> list[str]:
    return [sys.executable, "main.py", "--sweep", path, *args]


def trials_in(study_dir: Path) -> set[int]:
    return {int(p.name.split("_")[1]) for p in study_dir.glob("trial_*")}


def test_sigkill_mid_trial_then_the_same_command_resumes_it_and_ends_with_every_trial(tmp_path, exps):
    overrides = {**TINY, "experiments_dir": str(exps), "max_epoch": 3, "random_size": 320}
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.3, 0.5, 1.0]}, overrides=overrides)
    sweep_dir = exps / "s"
    # run.sh passes a sweep to main.py (exec: the pid is python's).
    first = subprocess.Popen([str(REPO / "run.sh"), "--sweep", path], cwd=REPO, env=ENV, stderr=subprocess.DEVNULL)
    checkpoint = sweep_dir / "trial_0001" / "checkpoints" / "last.pth"
    deadline = time.time() + 180
    while not checkpoint.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert checkpoint.exists(), "trial 1 never saved a checkpoint"
    assert not (sweep_dir / "trial_0001" / "summary.json").exists(), "the kill must land in trial 1"
    first_log = (sweep_dir / "trial_0000" / "logs" / "run.log").read_text()

    # Two GPUs to share out (this CPU-only torch ignores them): each worker's trials see their own.
    gpus = {**ENV, "CUDA_VISIBLE_DEVICES": "0,1"}
    again = subprocess.run(
        sweep_command(path, "--workers", "2"), cwd=REPO, env=gpus, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "trial 1 (its sweep was killed): queued to run again" in again.stderr
    results = rows(sweep_dir / "results.csv")
    assert [(r["number"], r["state"], r["epochs"]) for r in results] == [
        ("0", "complete", "3"),
        ("1", "fail", ""),
        ("2", "complete", "3"),
        ("3", "complete", "3"),
    ]
    assert results[1]["error"] == "its sweep was killed; run again as trial 3"
    assert results[3]["run_dir"] == str(sweep_dir / "trial_0001"), "run again in its own folder"
    assert {r["gpus"] for r in results[2:]} <= {"0", "1"} and results[0]["gpus"] == ""
    assert (sweep_dir / "trial_0000" / "logs" / "run.log").read_text() == first_log, "a finished trial ran again"
    assert "resumed from" in (sweep_dir / "trial_0001" / "logs" / "run.log").read_text()
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == ["trial_0000", "trial_0001", "trial_0002"]


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
def test_a_killed_sweep_stops_its_nproc_trials_and_helpers_and_the_same_command_resumes_them(tmp_path, exps):
    # Two workers (this process and a helper), each running a trial of two processes under torchrun; the
    # trials are long enough (~0.05 s an epoch: ~50 s) that both are under way when the sweep is killed, though
    # the second's torchrun may start 20 s after the first's on a loaded machine (CI: 300 epochs were too few).
    overrides = {
        **TINY, "experiments_dir": str(exps), "max_epoch": 1000, "max_train_batches": 1, "max_valid_batches": 1
    }  # fmt: skip
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.3, 0.5]}, overrides=overrides)
    sweep_dir = exps / "s"
    runs = [sweep_dir / "trial_0000", sweep_dir / "trial_0001"]
    command = sweep_command(path, "--nproc", "2", "--workers", "2")
    first = subprocess.Popen(command, cwd=REPO, env=ENV, stderr=subprocess.DEVNULL)
    started = _wait_for(lambda: all((r / "checkpoints" / "last.pth").exists() for r in runs), 240)
    ended = [r.name for r in runs if (r / "summary.json").exists()]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert started, "the trials never saved a checkpoint"
    assert not ended, "the kill must land in both trials"

    # Nothing the sweep started runs on: the trials saved and stopped, the helper worker ended.
    assert _wait_for(lambda: all(holder(r / LOCK_NAME) is None for r in runs), 90), (
        "a trial's processes outlived the sweep"
    )
    # A worker holds the folder's lock (shared) while it runs a trial: free, the helper ended too.
    assert _wait_for(lambda: holder(sweep_dir / ".lock") is None, 30), "the helper outlived the sweep"
    for run in runs:
        status = json.loads((run / "summary.json").read_text())["status"]
        assert status == "interrupted", f"{run.name} went on after the sweep was killed"

    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    results = [r for r in rows(sweep_dir / "results.csv") if r["state"] != "fail"]  # the tries stopped
    assert sorted((r["run_dir"], r["state"], r["epochs"]) for r in results) == [
        (str(runs[0]), "complete", "1000"),
        (str(runs[1]), "complete", "1000"),
    ]
    for run in runs:
        assert "resumed from" in (run / "logs" / "run.log").read_text()


HOLDER = """
import fcntl, os, signal, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(str(os.getpid()) + {"elsewhere": " node-17"}.get(sys.argv[2], "")); f.flush()
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(7)))  # saves, then ends
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(("on_sigterm", "code"), [("save", 7), ("ignore", -signal.SIGKILL), ("elsewhere", None)])
def test_a_taken_up_trial_first_stops_the_process_that_still_holds_its_run(tmp_path, monkeypatch, on_sigterm, code):
    # What a --nproc trial's processes do when no tie to the sweep stopped them: they hold the run's lock.
    # "elsewhere": the lock names another machine (a SLURM job's): its pid here is not that process, never signalled.
    monkeypatch.setattr(utils.sweep.subprocess, "STOP_GRACE_SECONDS", 1.0)
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / LOCK_NAME), on_sigterm], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "locked\n"
    assert holder(tmp_path / LOCK_NAME).split()[0] == str(process.pid)
    utils.sweep.subprocess.stop_earlier_process(tmp_path)
    if code is None:
        assert process.poll() is None and holder(tmp_path / LOCK_NAME) == f"{process.pid} node-17"
        process.kill()
        return
    assert holder(tmp_path / LOCK_NAME) is None
    assert process.wait(timeout=10) == code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a free local port, run by an unprivileged user (initdb refuses root)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    assert bins[-1], "PostgreSQL's server programs not found: apt-get install postgresql (.ci/run installs it)"
    bindir = Path(bins[-1]).parent
    home = Path(tempfile.mkdtemp(prefix="sweep_pg_"))
    as_user = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    port = _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], cwd=home, check=True, capture_output=True, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(home / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
        pg(str(bindir / "pg_ctl"), "-D", str(home / "db"), "-l", str(home / "log"), "-w", "-o", options, "start")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (home / "db" / "postmaster.pid").exists():
            pg(str(bindir / "pg_ctl"), "-D", str(home / "db"), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_on_a_postgresql_study_run_exactly_the_requested_trials(tmp_path, exps, postgres_url):
    # Two "machines": the same command twice, each with experiments of its own, one database.
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.3, 0.5, 0.7, 0.9]}, method="grid")
    machines = [tmp_path / "machine_a", tmp_path / "machine_b"]
    procs = [
        subprocess.Popen(
            sweep_command(path, "max_epoch=1", f"storage={postgres_url}", f"experiments_dir={m}"),
            cwd=REPO,
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in machines
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    study = optuna.load_study(study_name="s", storage=postgres_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(t.params["optimizer.args.lr"] for t in study.trials) == [0.3, 0.5, 0.7, 0.9]
    ran = [trials_in(m / "s") for m in machines]
    assert ran[0] | ran[1] == {0, 1, 2, 3} and not ran[0] & ran[1], ran
    for m in machines:  # each machine's results cover the whole study, each trial with the host that ran it
        results = rows(m / "s" / "results.csv")
        assert [r["number"] for r in results] == ["0", "1", "2", "3"]
        assert {r["host"] for r in results} == {socket.gethostname()}
        assert all(Path(r["run_dir"]).is_dir() for r in results), "a path on the machine that ran it"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_silent_machines_trial_is_run_again_and_a_live_one_is_not(tmp_path, exps, postgres_url, monkeypatch):
    monkeypatch.setattr(utils.sweep.study, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(utils.sweep.study, "GRACE_SECONDS", 2)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5, 0.7]}, method="grid")
    args = [f"storage={postgres_url}", "max_epoch=1"]
    # Another machine took trial 0 (the first grid point), started it, and was never heard of again.
    spec = load_sweep(path, args, lambda config, more: main.load_config(config, more)[0])
    spec.sweep_dir.mkdir(parents=True)
    study, created = utils.sweep.study.open_study(spec)
    utils.sweep.study._claim(study, spec, created)
    gone = study.ask()
    assert [space.suggest(gone) for space in spec.spaces] == [0.5]
    study._storage.record_heartbeat(gone._trial_id)
    time.sleep(3)
    assert main.main(["--sweep", path, *args]) == 0
    results = rows(exps / "s" / "results.csv")
    assert [(r["number"], r["optimizer.args.lr"], r["state"], r["run_dir"]) for r in results] == [
        ("0", "0.5", "fail", str(exps / "s" / "trial_0000")),
        ("1", "0.7", "complete", str(exps / "s" / "trial_0001")),
        ("2", "0.5", "complete", str(exps / "s" / "trial_0000")),
    ]
    assert results[0]["error"] == "no heartbeat from its machine; run again as trial 2"

    # A trial that runs longer than GRACE_SECONDS beats all along (Optuna's heartbeat thread): never given up.
    def long_trial(trial):
        time.sleep(3)
        optuna.storages.fail_stale_trials(study)
        return study._storage.get_trial(trial._trial_id).state == optuna.trial.TrialState.RUNNING

    study.optimize(long_trial, n_trials=1)
    assert study.trials[-1].value == 1.0


@pytest.mark.slow
def test_a_trial_of_two_processes_runs_under_torchrun_and_is_pruned_by_a_signal(tmp_path, exps, capsys, monkeypatch):
    # No accuracy reaches 1.01: the threshold pruner stops the trial at its first report, through SIGTERM.
    monkeypatch.setattr(utils.sweep.subprocess, "POLL_SECONDS", 0.05)
    pruner = {"type": "ThresholdPruner", "args": {"lower": 1.01}}
    overrides = {**TINY, "experiments_dir": str(exps), "max_epoch": 30, "max_train_batches": 1}
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]}, pruner=pruner, overrides=overrides)
    assert main.main(["--sweep", path, "--nproc", "2"]) == 1  # no trial completed
    assert "1 pruned; no trial completed" in capsys.readouterr().err
    (result,) = rows(exps / "s" / "results.csv")
    assert result["state"] == "pruned" and 1 <= int(result["epochs"]) < 30
    summary = json.loads((exps / "s" / "trial_0000" / "summary.json").read_text())
    assert summary["world_size"] == 2
