"""Faults and bad input: killed runs, damaged checkpoints, bad configs and data, locks, full disks."""

import json
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import main
from tests.conftest import EXAMPLE, MAIN_WITH_TEST_AGENTS, REPO, assert_same_tensors, load, train
from utils.errors import TrainingStopped, UserError
from utils.run import checkpoint

pytestmark = pytest.mark.usefixtures("test_agents_registered")  # DropoutAgent

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
# The template with dropout and a per-epoch LR decay: a rerun is exact only if the RNG and scheduler are restored.
# 40 training batches and 40 validation batches an epoch (6400 random images: a fifth to validate), so that
# validation is a third of each epoch and kills land in it as well as in training.
# torch_threads fixes the float summation order: exact equality holds for the same thread count.
KILL_ARGS = [
    "agent=DropoutAgent",
    'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.7}}',
    "random_size=6400",
    "batch_size=32",
    "max_train_batches=40",
    "max_epoch=4",
    "torch_threads=1",
]
TINY = ["random_size=160", "image_size=16", "hidden=8"]


def start(exp: str, exps, *args: str, **kwargs) -> subprocess.Popen:
    """``python main.py`` on the template config (the tests' agents registered) in a subprocess."""
    cmd = [*MAIN_WITH_TEST_AGENTS, str(EXAMPLE), f"experiments_dir={exps}", f"exp_name={exp}", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, **kwargs
    )


def wait_for_training(exps, exp: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    log = exps / exp / "logs" / "run.log"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("run directory") > 0:
            return
        time.sleep(0.02)


def kill_and_rerun(exps, exp: str, delays: list[float]) -> list[tuple[int, bool]]:
    """SIGKILL a run after each delay (seconds after training started), re-running it each time.

    Returns, per kill, the epochs checkpointed by then and whether the run was still going.
    """
    kills = []
    for delay in delays:
        log = exps / exp / "logs" / "run.log"
        if log.exists():
            log.unlink()  # so that wait_for_training sees this run's start line
        proc = start(exp, exps, *KILL_ARGS)
        wait_for_training(exps, exp, proc)
        time.sleep(delay)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        last = exps / exp / "checkpoints" / "last.pth"
        kills.append((load(last)["epoch"] if last.exists() else 0, running))
    return kills


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_matches_an_uninterrupted_run(exps):
    straight = start("straight", exps, *KILL_ARGS)  # a process as the killed ones are: the same speed under load
    err = straight.communicate(timeout=600)[1]
    assert straight.returncode == 0, err[-2000:]
    # Kill times are fractions of the straight run's training time, so they land mid-run on any machine.
    wall = json.loads((exps / "straight" / "summary.json").read_text())["wall_seconds"]
    rng = random.Random(0)
    kills = kill_and_rerun(exps, "killed", [rng.uniform(0.1, 0.8) * wall for _ in range(4)])
    assert any(running and 0 < epoch < 4 for epoch, running in kills), kills  # resumed from the middle once
    train(EXAMPLE, exps, "exp_name=killed", *KILL_ARGS)  # the same command, to the end
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("straight", "killed"))
    for key in ("models", "optimizers", "schedulers", "epoch", "global_step", "best"):
        assert_same_tensors(a[key], b[key], key)
    rows = (exps / "killed" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3", "4"]  # rows of lost epochs were redone once
    assert rows == (exps / "straight" / "metrics.csv").read_text().splitlines()


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pth"
    checkpoint.atomic_save({"models": {}, "epoch": 1}, path)
    code = (
        f"import sys, torch; sys.path.insert(0, {str(REPO)!r}); from utils.run.checkpoint import atomic_save; "
        f"atomic_save({{'models': {{'w': torch.ones(300_000_000 // 4)}}, 'epoch': 2}}, {str(path)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV)
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        p.name.endswith(".tmp") and p.stat().st_size > 1_000_000 for p in tmp_path.iterdir()
    ):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), "the kill missed the write"
    assert checkpoint.load(path)["epoch"] == 1


def test_stale_temp_files_of_a_killed_save_are_removed_on_restart(exps):
    train(EXAMPLE, exps, "exp_name=t", "max_epoch=1")
    stale = exps / "t" / "checkpoints" / ".last.pth.abc.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(EXAMPLE, exps, "exp_name=t", "max_epoch=2")
    assert not stale.exists() and load(exps / "t" / "checkpoints" / "last.pth")["epoch"] == 2


# ----- damaged checkpoints ---------------------------------------------------------------------------


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PPT_MARKER']}",))


def damage(kind: str, path, other) -> None:
    good = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "wrong-model":
        path.write_bytes(other.read_bytes())
    elif kind == "crafted-pickle":
        torch.save({"models": RunsCode(), "epoch": 1}, path)
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"not": "a checkpoint"}))
    elif kind == "foreign-dict":
        torch.save({"state_dict": {}}, path)


@pytest.mark.parametrize("via", ["auto", "path"])
@pytest.mark.parametrize(
    "kind", ["truncated", "zero-byte", "random-bytes", "wrong-model", "crafted-pickle", "plain-pickle", "foreign-dict"]
)
def test_damaged_checkpoint_exits_2_naming_the_file(exps, capsys, monkeypatch, kind, via):
    marker = exps / "code-ran"
    monkeypatch.setenv("PPT_MARKER", str(marker))
    train(EXAMPLE, exps, "exp_name=m", "max_epoch=1", "agent=DropoutAgent", *TINY)
    train(EXAMPLE, exps, "exp_name=other", "max_epoch=1", *TINY)  # another agent's
    last = exps / "m" / "checkpoints" / "last.pth"
    damage(kind, last, exps / "other" / "checkpoints" / "last.pth")
    capsys.readouterr()  # drop the training logs above
    resume = "resume=auto" if via == "auto" else f"resume={last}"
    exp = "m" if via == "auto" else "fresh"
    code = main.main(
        [str(EXAMPLE), f"experiments_dir={exps}", f"exp_name={exp}", "max_epoch=2", "agent=DropoutAgent", *TINY, resume]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(last) in err and err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()  # weights_only: the crafted pickle ran nothing
    if kind in ("truncated", "zero-byte", "random-bytes"):  # damaged: the run's other checkpoints are named
        assert "damaged or not a checkpoint" in err and "its folder also has best.pth: resume=<one of them>" in err
        if via == "auto":  # and the advice works: the run goes on from best.pth
            best = f"resume={last.parent / 'best.pth'}"
            train(EXAMPLE, exps, "exp_name=m", "max_epoch=2", "agent=DropoutAgent", *TINY, best)
            assert load(last)["epoch"] == 2
    if kind == "crafted-pickle":
        assert "refused to load: it holds objects a plain checkpoint cannot (" in err and "GLOBAL posix.system" in err


# ----- bad configs (property-based) ------------------------------------------------------------------

BASE = json.loads(EXAMPLE.read_text())
KEYS = sorted(main.load_config(str(EXAMPLE))[1].config_schema)
weird = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just(""),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from([0, -1, 1, 2**31, 1e308, -1e-9, "auto", "..", "/etc", "../x", "SGD", "Adam", "cuda:7"]),
)
near_keys = st.sampled_from(KEYS).map(lambda k: k[:-1] if len(k) > 3 else k + "s")
mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), weird),
    st.tuples(st.just("set"), near_keys, weird),
    st.tuples(st.just("set"), st.text(max_size=10), weird),
    st.tuples(st.just("delete"), st.sampled_from(sorted(BASE)), st.none()),
    st.tuples(
        st.just("args"), st.sampled_from(["lr", "momentum", "betas", "eps", "weight_decay", "lrr", "nesterov"]), weird
    ),
    st.tuples(
        st.just("sched"),
        st.sampled_from(["StepLR", "ExponentialLR", "ReduceLROnPlateau", "CosineAnnealingLR", "LambdaLR", "Nope"]),
        weird,
    ),
)


def mutate(config: dict, mutations) -> dict:
    config = json.loads(json.dumps(config))
    for op, key, value in mutations:
        if op == "set":
            config[key] = value
        elif op == "delete":
            config.pop(key, None)
        elif op == "args":
            config.setdefault("optimizer", {"type": "SGD", "args": {}})
            if isinstance(config["optimizer"], dict) and isinstance(config["optimizer"].get("args"), dict):
                config["optimizer"]["args"][key] = value
        else:
            config["scheduler"] = {"type": key, "args": {"step_size": value, "gamma": value, "T_max": value}}
    return config


def run_mutated(tmp_path, data: bytes, capsys) -> tuple[int, str]:
    path = tmp_path / "mutated.json"
    path.write_bytes(data)
    # Limits after the file: a valid mutated file still trains briefly; a bad one fails on loading.
    code = main.main(
        [
            str(path),
            f"experiments_dir={tmp_path}",
            "max_epoch=1",
            "max_train_batches=2",
            "max_valid_batches=1",
            "num_workers=0",
            "resume=false",
        ]
    )
    return code, capsys.readouterr().err


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=3), exp=st.integers(0, 10**9))
def test_mutated_configs_run_or_exit_2_with_one_line(tmp_path, capsys, mutations, exp):
    config = mutate(BASE, mutations)
    if isinstance(config.get("exp_name"), str) and config["exp_name"] == BASE["exp_name"]:
        config["exp_name"] = f"run{exp}"  # each valid example trains in a directory of its own
    code, err = run_mutated(tmp_path, json.dumps(config, allow_nan=True).encode(), capsys)
    assert "Traceback" not in err
    assert code in (0, 1, 2), err
    if code == 2:
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    if code == 1:
        assert "loss is" in err  # the only non-2 failure allowed: a config that diverges, said in one line


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_garbage_config_files_exit_2(tmp_path, capsys, data):
    code, err = run_mutated(tmp_path, data, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.args.lr=-0.1", "key 'optimizer.args'"),
        ("batch_size=0", "key 'batch_size': must be at least 1"),
        ("validate_every=0", "key 'validate_every': must be at least 1"),
        ("max_epoch=-3", "key 'max_epoch': must be at least 1"),
        ("experiments_dir=../outside", "key 'experiments_dir': expected a folder inside the repository"),
        ("data_root=data/../../etc", "key 'data_root': expected a folder inside the repository"),
        ("exp_name=a/b", "key 'exp_name': expected a plain name"),
        ("exp_name=..", "key 'exp_name': expected a plain name"),
        ('scheduler={"type": "StepLR", "args": {"step_size": "x"}}', "key 'scheduler.args'"),
        ("device=cuda:0", "key 'device'"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, capsys, override, message):
    code = main.main([str(EXAMPLE), f"experiments_dir={tmp_path}", override])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


# ----- bad data ----------------------------------------------------------------------------------------


def test_missing_data_names_the_folder_and_a_run_that_wrote_nothing_leaves_no_run_directory(tmp_path, exps):
    with pytest.raises(UserError, match="Put your images in") as info:
        train(EXAMPLE, exps, "data_mode=folder", f"data_root={tmp_path}", "exp_name=offline")
    assert str(tmp_path / "example" / "train") in str(info.value)
    assert not (exps / "offline").exists()  # a run that wrote nothing leaves no empty run directory behind
    (exps / "offline").mkdir()
    (exps / "offline" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="Put your images in"):
        train(EXAMPLE, exps, "data_mode=folder", f"data_root={tmp_path}", "exp_name=offline")
    assert (exps / "offline" / "notes.txt").read_text() == "mine"  # a directory it did not create stays


# ----- output safety -------------------------------------------------------------------------------------


def test_a_run_is_refused_a_file_a_sweeps_folder_and_mlflows_store(exps, capsys):
    (exps / "mlflow.db").write_bytes(b"SQLite format 3")
    (exps / "lr_sweep").mkdir()
    (exps / "lr_sweep" / "sweep.json").write_text("{}")
    for name, what in [("mlflow.db", "is a file"), ("lr_sweep", "is a sweep's folder"), ("mlartifacts", "is MLflow's")]:
        code = main.main([str(EXAMPLE), f"experiments_dir={exps}", f"exp_name={name}", "max_epoch=1"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"key 'exp_name': {exps / name} {what}" in err, err
    assert sorted(p.name for p in exps.iterdir()) == ["lr_sweep", "mlflow.db"]  # nothing made, nothing added
    assert [p.name for p in (exps / "lr_sweep").iterdir()] == ["sweep.json"]


def test_a_second_run_of_the_same_experiment_is_refused_while_the_first_runs(exps):
    proc = start("busy", exps, "random_size=20000", "max_epoch=50")
    try:
        wait_for_training(exps, "busy", proc)
        with pytest.raises(
            UserError, match=rf"another run of this experiment is in progress \(pid {proc.pid} on [^)]+\)"
        ):
            train(EXAMPLE, exps, "exp_name=busy")
    finally:
        proc.kill()
        proc.wait()
    assert (
        not (exps / "busy" / "checkpoints" / "last.pth").exists()
        or load(exps / "busy" / "checkpoints" / "last.pth")["agent"] == "ExampleAgent"
    )


# ----- resource faults -------------------------------------------------------------------------------------


def test_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(exps):
    args = ["random_size=160", "batch_size=32"]
    train(EXAMPLE, exps, "exp_name=disk", "max_epoch=1", *args)
    before = (exps / "disk" / "checkpoints" / "last.pth").read_bytes()
    size = len(before)

    def small_disk():  # files may not grow past half a checkpoint: the next save fails half-way (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    proc = start("disk", exps, "max_epoch=2", *args, preexec_fn=small_disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "could not save a checkpoint at epoch 2" in err and "File too large" in err
    assert "previous checkpoint files are intact" in err and "Traceback" not in err
    assert (exps / "disk" / "checkpoints" / "last.pth").read_bytes() == before
    assert not list((exps / "disk" / "checkpoints").glob(".*.tmp"))


def test_out_of_memory_names_the_batch_size(exps, monkeypatch):
    from agents.example import ExampleAgent

    def oom(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ExampleAgent, "train_step", oom)
    with pytest.raises(
        TrainingStopped, match="out of CPU memory at epoch 1, step 0 with batch_size 32 per process: lower batch_size"
    ):
        train(EXAMPLE, exps, "exp_name=oom")


def test_sigterm_saves_and_the_same_command_resumes(exps):
    args = ["random_size=20000", "image_size=16", "max_valid_batches=4", "batch_size=16", "max_epoch=1"]
    proc = start("term", exps, *args)
    wait_for_training(exps, "term", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped by SIGTERM" in err, err
    assert load(exps / "term" / "checkpoints" / "last.pth")["batch_in_epoch"] > 0
    train(EXAMPLE, exps, "exp_name=term", *args)
    assert json.loads((exps / "term" / "summary.json").read_text())["steps"] == 750


def test_sigterm_to_the_process_group_with_loader_workers_saves(exps):
    """SLURM's scancel (and a warning) signal every process of the job, the loader workers too: the run saves and
    stops as when the main process alone gets it (a worker ended by torch's handler failed the run)."""
    args = ["random_size=20000", "image_size=16", "batch_size=16", "max_epoch=1", "num_workers=2", "log_every=1"]
    proc = start("group", exps, *args, start_new_session=True)
    wait_for_training(exps, "group", proc)
    time.sleep(1.5)  # the workers are up
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped by SIGTERM" in err and "DataLoader worker" not in err, err
    assert load(exps / "group" / "checkpoints" / "last.pth")["batch_in_epoch"] > 0


LEFT_WORKER = """
import multiprocessing, subprocess, sys, torch
multiprocessing.set_start_method(sys.argv[1])  # the loader forks its workers whatever the default
from utils.training.data import TensorBatches, make_loader
loader = make_loader(TensorBatches(torch.arange(64.0).view(64, 1)), 4, train=True, seed=0, num_workers=1)
batches = iter(loader)
first = next(batches)
worker = batches._workers[0]
subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # not from its parent: ignored
assert next(batches) is not None and worker.is_alive()
print("ignored", flush=True)
sys.exit(0)  # the iterator left open: multiprocessing ends the worker at exit with its parent's SIGTERM
"""


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])  # forkserver: Python 3.14's default
def test_a_loader_worker_ignores_others_sigterm_and_ends_on_its_parents(start_method):
    """SLURM's SIGTERM to every process of a job is ignored by loader workers; the parent's own SIGTERM, which
    multiprocessing sends to the workers left at exit, ends them (ignoring it too hung that exit forever)."""
    command = [sys.executable, "-c", LEFT_WORKER, start_method]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == "ignored\n", proc.stderr


def test_checkpoint_files_load_lazily_by_memory_map(exps):
    """Zip archives with aligned storages: torch.load(mmap=True), which refuses the legacy format, maps them."""
    train(EXAMPLE, exps, "exp_name=z", "max_epoch=1")
    path = exps / "z" / "checkpoints" / "last.pth"
    assert zipfile.is_zipfile(path)
    mapped = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    assert_same_tensors(mapped["models"], load(path)["models"])


def test_a_finished_run_leaves_no_lock_file_and_the_lock_still_excludes(exps):
    from utils.run.recorder import LOCK_NAME, Recorder, _same_file

    train(EXAMPLE, exps, "exp_name=done", "max_epoch=1", "random_size=40")
    assert (exps / "done" / "summary.json").exists() and not (exps / "done" / LOCK_NAME).exists()
    first = Recorder(exps / "done", True, name="first")
    first.lock()
    with open(exps / "done" / LOCK_NAME) as opened_before_removal:  # what a starting run may hold as it ends
        first.close()
        assert not (exps / "done" / LOCK_NAME).exists()
        assert not _same_file(opened_before_removal, exps / "done" / LOCK_NAME)
    second, third = Recorder(exps / "done", True, "second"), Recorder(exps / "done", True, "third")
    second.lock()
    with pytest.raises(UserError, match="another run of this experiment is in progress"):
        third.lock()
    second.close()
    third.close()


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(exps):
    """Ctrl-C while torch is still being imported: no traceback, the same exit code as a saved interrupt."""
    proc = subprocess.Popen(
        [sys.executable, "main.py", str(EXAMPLE), f"experiments_dir={exps}"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C's default action, even when this test runs from a background job (which ignores SIGINT).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(0.4)  # importing torch takes seconds
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted"
