"""./run.sh --slurm: settings checked like every key; jobs on a real one-node SLURM (tests/slurm_cluster.py).

The cluster tests submit in this process (main.main) and wait for the job with a deadline; the
jobs train the template agent on small random images with one torch thread, so that a job's
weights can be compared with a run in this process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import main
from tests import slurm_cluster
from tests.conftest import EXAMPLE, REPO, assert_same_tensors, load, train
from utils.errors import UserError
from utils.project import slurm

pytestmark = pytest.mark.slow
TINY = ["image_size=16", "hidden=8", "torch_threads=1", "max_valid_batches=null"]


def submit(capsys, *args: str) -> tuple[int, str, str]:
    """``main.py --slurm args...`` in this process: (exit code, stdout, stderr)."""
    code = main.main(["--slurm", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----- no cluster needed ----------------------------------------------------------------------


def test_a_bad_slurm_key_is_one_line_and_nothing_is_submitted(exps, capsys):
    cases = {
        "slurm.partiton=gpu": "unknown key 'slurm.partiton' (did you mean 'partition'?)",
        "slurm.nodes=0": "key 'slurm.nodes': must be at least 1",
        "slurm.time=2h": "key 'slurm.time': expected minutes (an integer) or 'D-HH:MM:SS', got '2h'",
        "slurm.mem=lots": "key 'slurm.mem': expected a size like '64G'",
        'slurm.extra=["exclusive"]': "key 'slurm.extra': expected sbatch options like '--exclusive'",
        "slurm.file=gpu_nod": "key 'slurm.file': no file",
    }
    for override, message in cases.items():
        code, out, err = submit(capsys, str(EXAMPLE), f"experiments_dir={exps}", override)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, (override, err)
        assert f"override '{override}': " in err  # the command line's mistake, named as typed
    assert "did you mean 'gpu_node'" in submit(capsys, str(EXAMPLE), "slurm.file=gpu_nod")[2]
    assert list(exps.iterdir()) == []
    # A local run checks the block too: a mistake is found before the run, not when it is submitted later.
    code = main.main([str(EXAMPLE), f"experiments_dir={exps}", "slurm.nodse=2"])
    assert code == 2 and "unknown key 'slurm.nodse' (did you mean 'nodes'?)" in capsys.readouterr().err
    code, _, err = submit(capsys, "--nproc", "2", str(EXAMPLE))
    assert code == 2 and "--nproc goes without --slurm" in err


def test_settings_come_from_a_file_in_configs_slurm_and_the_block_overrides_it():
    settings = slurm.resolve({"file": "gpu_node", "time": 30, "partition": "a100"}, "x.json")
    assert settings["gpus_per_node"] == 8 and settings["mem"] == "256G"  # the file's
    assert settings["time"] == 30 and settings["partition"] == "a100"  # the block's
    assert slurm.tasks_per_node(settings) == 8  # one process per GPU
    assert slurm.tasks_per_node(slurm.resolve({"tasks_per_node": 2}, "x.json")) == 2
    assert slurm.tasks_per_node(slurm.resolve({}, "x.json")) == 1
    with pytest.raises(UserError, match="x.json: key 'slurm.tasks_per_node': 4 processes per node, but 2 GPU"):
        slurm.resolve({"tasks_per_node": 4, "gpus_per_node": 2}, "x.json")
    with pytest.raises(UserError, match="x.json: key 'slurm.file': no file .*configs/slurm/nope.json"):
        slurm.resolve({"file": "nope"}, "x.json")
    path = REPO / "configs" / "slurm" / "gpu_node.json"  # a path works as well as a name
    assert slurm.resolve({"file": str(path)}, "x.json") == slurm.resolve({"file": "gpu_node"}, "x.json")


def test_a_refused_setting_names_the_settings_file_it_came_from(tmp_path):
    file = tmp_path / "small.json"
    file.write_text(json.dumps({"gpus_per_node": 2, "tasks_per_node": 4, "time": 2}))
    with pytest.raises(UserError, match=f"^{file}: key 'tasks_per_node': 4 processes per node, but 2 GPU"):
        slurm.resolve({"file": str(file)}, "x.json")
    with pytest.raises(UserError, match="^x.json: key 'slurm.tasks_per_node': 3 processes per node"):
        slurm.resolve({"file": str(file), "tasks_per_node": 3}, "x.json")  # the block's own setting
    with pytest.raises(UserError, match=f"^{file}: key 'time': 2 leaves less than a minute"):
        slurm.resolve({"file": str(file), "tasks_per_node": 2}, "x.json")
    with pytest.raises(UserError, match="^x.json: key 'slurm.time': 2 leaves less than a minute"):
        slurm.resolve({"file": str(file), "tasks_per_node": 2, "signal_delay_s": 90}, "x.json")


def test_without_slurm_commands_submitting_is_one_line(exps, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, sinfo, ...
    code, out, err = submit(capsys, str(EXAMPLE), f"experiments_dir={exps}")
    assert code == 2 and out == "" and err.count("\n") == 1 and "'sbatch' not found" in err
    assert list(exps.iterdir()) == []  # no run directory made


def test_the_jobs_python_holds_a_warning_that_comes_before_any_handler():
    """A job's task is ``python_holding_the_warning()``: a USR2 before Python has a handler (here: the first thing
    the program does) is kept pending, not the end of the task, and reaches the handler once it is unblocked, as
    run_requeued does."""
    program = (
        "import os, signal; os.kill(os.getpid(), signal.SIGUSR2); got = []; "
        "signal.signal(signal.SIGUSR2, lambda *a: got.append(1)); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR2]); print(got)"
    )
    command = f"{slurm.python_holding_the_warning()} -c {shlex.quote(program)}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "[1]\n", done
    plain = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert plain.returncode == -signal.SIGUSR2  # what the wrapper prevents


def test_a_time_limit_that_leaves_no_minute_before_the_warning_is_refused():
    """With less than a minute between SLURM's warning and the limit, every start would be warned: requeues forever."""
    for time_limit, delay in ((2, 120), ("00:02:59", 120), ("1:30", 60)):
        with pytest.raises(UserError, match="key 'slurm.time': .* leaves less than a minute before SLURM's warning"):
            slurm.resolve({"time": time_limit, "signal_delay_s": delay}, "x.json")
    for time_limit, delay in ((3, 120), ("00:03:00", 120), ("0-01", 120), ("2:00", 60)):
        assert slurm.resolve({"time": time_limit, "signal_delay_s": delay}, "x.json")["time"] == time_limit


def test_extra_sbatch_options_that_would_override_the_jobs_own_are_refused():
    for option, instead in [
        ("--signal=USR1@300", "use slurm.signal_delay_s"),
        ("--chdir=/tmp", "the template sets it"),
    ]:
        with pytest.raises(UserError, match=f"would override what the job needs \\({instead}\\)"):
            slurm.resolve({"extra": [option]}, "x.json")
    assert slurm.resolve({"extra": ["--exclusive", "--mail-type=END"]}, "x.json")["extra"] == [
        "--exclusive",
        "--mail-type=END",
    ]


class _Job:
    """What run_task and run_requeued read of submitit's JobEnvironment, for one task."""

    job_id, num_tasks, global_rank = "7", 1, 0
    requeued = 0
    folder = Path("slurm")  # set by a test: the run's slurm/ folder
    requeue_error: Exception | None = None  # scontrol refusing the requeue

    @property
    def paths(self):
        return types.SimpleNamespace(folder=self.folder)

    def _requeue(self, countdown: int) -> None:
        if self.requeue_error is not None:
            raise self.requeue_error
        type(self).requeued += 1


def test_a_warned_job_requeues_until_max_requeues_tries_in_a_row_save_nothing(tmp_path, monkeypatch, capsys):
    """A warned run that saved a checkpoint in its try always requeues (a long run on a short partition); tries that
    saved nothing (a time limit too short to reach a checkpoint) requeue max_requeues times in a row, then end."""
    import submitit

    monkeypatch.setattr(submitit, "JobEnvironment", _Job)
    monkeypatch.setattr(_Job, "requeued", 0)
    monkeypatch.setattr(_Job, "folder", tmp_path / "run" / "slurm")
    _Job.folder.mkdir(parents=True)
    monkeypatch.setenv(slurm.MAX_REQUEUES_ENV, "2")
    last = tmp_path / "run" / "checkpoints" / "last.pth"
    last.parent.mkdir()

    def warned(code: int, saves: bool = False) -> Callable[[], int]:
        """A run that takes SIGTERM (to save), is warned, (saves a checkpoint,) and ends with ``code``."""

        def run() -> int:
            before = signal.signal(signal.SIGTERM, lambda *_: None)
            try:
                os.kill(os.getpid(), signal.SIGUSR2)
                if saves:
                    last.write_bytes(b"a checkpoint")
                return code
            finally:
                signal.signal(signal.SIGTERM, before)

        return run

    for saves in (True, True, True, False, False, True, False, False, False):
        with pytest.raises(SystemExit) as stopped:
            slurm.run_requeued(warned(130, saves))
        assert stopped.value.code == 130
    assert _Job.requeued == 8  # every try but the last: the third in a row that saved nothing
    err = capsys.readouterr().err
    assert err.count("requeued, it resumes") == 8, err
    assert "error: job 7: not requeued: 3 tries in a row saved no checkpoint before SLURM's warning" in err, err
    (_Job.folder / "7_tries_without_a_checkpoint").unlink()
    with pytest.raises(SystemExit):  # rank 0 warned, then failed at a collective as rank 1 stopped in start-up
        slurm.run_requeued(warned(1))
    assert _Job.requeued == 9
    slurm.run_requeued(warned(0))  # warned as it finished: done
    assert _Job.requeued == 9
    # SLURM requeued the job itself (a preemption that requeues) while rank 0 asked for it: no traceback.
    monkeypatch.setattr(_Job, "requeue_error", subprocess.CalledProcessError(1, ["scontrol", "requeue", "7"]))
    monkeypatch.setattr(slurm, "job_state", lambda job: {"JobState": "PENDING"})
    with pytest.raises(SystemExit):
        slurm.run_requeued(warned(130, saves=True))
    assert "job 7: SLURM had requeued it itself" in capsys.readouterr().err
    assert slurm.resolve({}, "x.json")["max_requeues"] == 3


def test_a_requeued_job_resumes_from_its_own_last_checkpoint_whatever_resume_says(tmp_path, monkeypatch):
    """resume=false would refuse the first try's checkpoints: auto; resume=PATH goes on from the run's own last.pth
    by itself (tests/test_checkpoint.py), and from PATH when the first try saved nothing."""
    import submitit

    monkeypatch.setattr(submitit, "JobEnvironment", _Job)
    (tmp_path / "slurm").mkdir()
    seen = []
    slurm.run_task({"resume": False, "exp_name": "x"}, str(tmp_path), lambda path: seen.append(read(path)) or 0)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    slurm.run_task({"resume": "/elsewhere/epoch_0001.pth"}, str(tmp_path), lambda path: seen.append(read(path)) or 0)
    slurm.run_task({"resume": False, "exp_name": "x"}, str(tmp_path), lambda path: seen.append(read(path)) or 0)
    assert [c["resume"] for c in seen] == [False, "/elsewhere/epoch_0001.pth", "auto"]


def read(path: str) -> dict:
    return json.loads(Path(path).read_text())


def test_a_warning_after_the_run_ended_changes_nothing_whichever_thread_gets_it():
    """After the run, SLURM's warning (to the process: any thread may take it) must not end the task with an error."""
    program = (
        "import os, signal, threading, time, submitit; from tests.test_slurm import _Job; "
        "submitit.JobEnvironment = _Job; from utils.project import slurm; "
        "slurm.run_requeued(lambda: 0); threading.Thread(target=time.sleep, args=(1,)).start(); "
        "os.kill(os.getpid(), signal.SIGUSR2); time.sleep(0.3); print('alive')"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "alive\n", done.stderr[-2000:]


def test_local_executor_two_tasks_ddp_then_the_warning_saves_requeues_and_resumes(exps, one_thread):
    """The job's side without a cluster: submitit's local executor runs main.slurm_task in 2 tasks (DDP
    from submitit's environment); USR2 to them mid-run: the run saves, rank 0 requeues (the local
    executor starts the tasks again), the run resumes and finishes."""
    import submitit

    config, _ = main.load_config(str(EXAMPLE), [f"experiments_dir={exps}", "exp_name=local", *TINY, "max_epoch=2",
                                                "random_size=12000", "log_every=1"])  # fmt: skip
    run = exps / "local"
    executor = submitit.LocalExecutor(folder=run / "slurm")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    job = executor.submit(main.slurm_task, slurm.frozen_config(dict(config), slurm.resolve({}, "x")), str(run))
    wait_for(lambda: (run / "metrics.csv").exists(), "epoch 1")
    tasks = subprocess.run(["pgrep", "-P", str(job._process.pid)], capture_output=True, text=True, timeout=30)
    for pid in tasks.stdout.split():
        os.kill(int(pid), signal.SIGUSR2)
    job.results()  # raises when a task failed
    log = (run / "logs" / "run.log").read_text()
    assert "x 2 process(es)" in log and log.count("saving a checkpoint") == 1 and log.count("resumed from") == 1
    assert "requeued, it resumes" in job.task(0).stderr()
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


# ----- on a real one-node SLURM ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd in a temp folder, SLURM_CONF set for this process (and so for the jobs)."""
    folder = Path(tmp_path_factory.mktemp("slurm"))
    with slurm_cluster.cluster(folder) as env, pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield folder


def scontrol(*args: str) -> str:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(ready, what: str, timeout: float = 180, job: str | None = None):
    """Poll ``ready()`` until it is truthy; a timeout fails with the job's state and log."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > deadline:
            state = slurm.job_state(job) if job else {}
            pytest.fail(f"timed out waiting for {what}: job {job} {state}")
        time.sleep(0.3)
    return value


def finished(job: str, timeout: float = 240) -> dict[str, str]:
    ends = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    return wait_for(lambda: (s := slurm.job_state(job)) and s["JobState"] in ends and s, "the job's end", timeout, job)


def logs_of(run_dir: Path, job: str) -> str:
    """The end of each task's stderr and of sweep.log: what a failed job assertion shows."""
    paths = [*slurm.log_paths(run_dir, job), run_dir / "sweep.log"]
    return "\n".join(f"--- {p}\n" + "\n".join(p.read_text().splitlines()[-40:]) for p in paths if p.exists())


def job_id(out: str) -> str:
    assert out.startswith("submitted job "), out
    return out.split()[2].rstrip(":")


def restart_now(job: str, restarts: int) -> None:
    """Once the requeued job waits, start it (SLURM holds a requeued job back for two minutes) two seconds on:
    slurmd refuses a job started within the second its last try's credential was revoked ("Job credential
    revoked": the try fails with exit code 1)."""
    wait_for(
        lambda: (s := slurm.job_state(job)) and s["JobState"] == "PENDING" and s["Restarts"] == str(restarts),
        f"requeue {restarts}",
        job=job,
    )
    time.sleep(2)
    scontrol("update", f"JobId={job}", "StartTime=now")


def test_a_job_trains_as_a_local_run_does_and_status_shows_it(cluster, exps, capsys, one_thread):
    args = [str(EXAMPLE), f"experiments_dir={exps}", *TINY, "max_epoch=2", "random_size=320"]
    code, out, err = submit(capsys, *args, "exp_name=job")
    assert code == 0, err
    job = job_id(out)
    run = exps / "job"
    assert f"tail -f {run / 'slurm' / f'{job}_0_log.err'}" in out and f"./run.sh status {run}" in out
    train(EXAMPLE, exps, *args[1:], "exp_name=local")  # the same run in this process, meanwhile
    state = finished(job)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "0", run / "slurm" / f"{job}_0_log.err"
    job_ckpt, local_ckpt = load(run / "checkpoints" / "last.pth"), load(exps / "local" / "checkpoints" / "last.pth")
    for key in ("models", "optimizers", "epoch", "global_step", "best"):
        assert_same_tensors(job_ckpt[key], local_ckpt[key], key)
    assert (run / "metrics.csv").read_text() == (exps / "local" / "metrics.csv").read_text()
    files = {p.name for p in (run / "slurm").iterdir()}
    assert {"jobs.json", f"{job}_submission.sh", f"{job}_0_log.out", f"{job}_0_log.err", f"{job}_config.json"} <= files
    assert json.loads((run / "slurm" / "jobs.json").read_text())[0]["job_id"] == job
    assert json.loads((run / "config.json").read_text())["slurm"]["time"] == 60  # the settings it ran with
    assert main.main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert f"job {job} " in status and "COMPLETED, requeued 0 time(s), exit code 0:0" in status
    assert f"log: {run / 'slurm' / f'{job}_0_log.err'}" in status and "run: finished after 2 epoch(s)" in status


def test_a_two_task_job_trains_with_ddp_in_two_processes(cluster, exps, capsys):
    args = [str(EXAMPLE), f"experiments_dir={exps}", *TINY, "max_epoch=1", "random_size=256", "exp_name=ddp"]
    code, out, err = submit(capsys, *args, "slurm.tasks_per_node=2")
    assert code == 0 and "1 node(s), 2 process(es)" in out, err
    job = job_id(out)
    assert finished(job)["JobState"] == "COMPLETED"
    run = exps / "ddp"
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert "x 2 process(es)" in (run / "logs" / "run.log").read_text()
    assert len(slurm.log_paths(run, job)) == 2  # one log per task
    assert load(run / "checkpoints" / "last.pth")["world_size"] == 2


def test_a_process_of_a_two_task_job_killed_in_start_up_ends_the_job(cluster, exps, capsys, monkeypatch):
    """The other rank would wait 30 min at the rendezvous; srun ends it SRUN_WAIT_SECONDS after the first."""
    monkeypatch.setattr(slurm, "SRUN_WAIT_SECONDS", 5)
    args = [str(EXAMPLE), f"experiments_dir={exps}", *TINY, "max_epoch=1", "exp_name=dead"]
    code, out, err = submit(capsys, *args, "slurm.tasks_per_node=2")
    assert code == 0, err
    job = job_id(out)
    folder = exps / "dead" / "slurm"
    task = f"^{re.escape(sys.executable)} -u -m submitit.core._submit {re.escape(str(folder))}$"  # not srun's line
    pids = lambda: subprocess.run(["pgrep", "-f", task], capture_output=True, text=True).stdout.split()  # noqa: E731
    wait_for(lambda: len(pids()) == 2, "the job's two processes", job=job)
    os.kill(int(pids()[0]), signal.SIGKILL)
    state = finished(job, timeout=90)
    assert state["JobState"] in ("FAILED", "CANCELLED"), state


def test_preemption_warning_and_a_requeue_resume_exactly(cluster, exps, capsys, one_thread):
    """SLURM's warning (USR2, as before a time limit) in epoch 2: the job saves and requeues itself;
    ``scontrol requeue`` (SIGTERM) in epoch 3: saves, SLURM requeues; the end equals a straight run."""
    args = [str(EXAMPLE), f"experiments_dir={exps}", *TINY, "max_epoch=4", "random_size=8000", "log_every=1"]
    code, out, err = submit(capsys, *args, "exp_name=preempted")
    assert code == 0, err
    job = job_id(out)
    run = exps / "preempted"
    rows = lambda: len((run / "metrics.csv").read_text().splitlines()) - 1 if (run / "metrics.csv").exists() else 0  # noqa: E731
    wait_for(lambda: rows() >= 1, "epoch 1", job=job)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    restart_now(job, 1)
    wait_for(lambda: rows() >= 2, "epoch 2 after the requeue", job=job)
    scontrol("requeue", job)
    restart_now(job, 2)
    state = finished(job)
    log = (run / "logs" / "run.log").read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "2", state
    assert log.count("resumed from") == 2 and log.count("saving a checkpoint") == 2
    assert "requeued, it resumes" in (run / "slurm" / f"{job}_0_log.err").read_text()
    assert rows() == 4
    train(EXAMPLE, exps, *args[1:], "exp_name=straight")
    job_ckpt, straight = load(run / "checkpoints" / "last.pth"), load(exps / "straight" / "checkpoints" / "last.pth")
    for key in ("models", "optimizers", "epoch", "global_step"):
        assert_same_tensors(job_ckpt[key], straight[key], key)


def test_a_warning_during_start_up_requeues_the_job(cluster, exps, capsys):
    """USR2 as the job starts (its config written, torch still importing): the run has nothing to save yet and has
    not taken SIGTERM (submitit's handler ignores it): the job requeues at once and the next start trains."""
    args = [str(EXAMPLE), f"experiments_dir={exps}", *TINY, "max_epoch=1", "random_size=160", "exp_name=early"]
    code, out, err = submit(capsys, *args)
    assert code == 0, err
    job = job_id(out)
    run = exps / "early"
    wait_for(lambda: (run / "slurm" / f"{job}_config.json").exists(), "the job's start", job=job)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    restart_now(job, 1)
    state = finished(job)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", state
    assert "SLURM's warning (SIGUSR2) during start-up" in (run / "slurm" / f"{job}_0_log.err").read_text()
    log = (run / "logs" / "run.log").read_text()
    assert "saving a checkpoint" not in log and "resumed from" not in log  # it had not trained: it starts afresh
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1


def test_a_failed_run_is_not_requeued(cluster, exps, capsys, tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    args = [str(EXAMPLE), f"experiments_dir={exps}", "exp_name=broken", "data_mode=folder", f"data_root={empty}"]
    code, out, err = submit(capsys, "--wait", *args, "slurm.time=3")  # waits for the job: its run's exit code
    assert code == 2 and err.startswith("error: ") and str(empty) in err, err
    job = job_id(out)
    state = finished(job)
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "2:0" and state["Restarts"] == "0", state
    errors = [line for line in (exps / "broken" / "slurm" / f"{job}_0_log.err").read_text().splitlines()]
    assert any(line.startswith("error: ") and str(empty) in line for line in errors)


def test_a_bad_partition_or_a_refused_job_is_one_line_and_nothing_is_submitted(cluster, exps, capsys):
    code, out, err = submit(capsys, str(EXAMPLE), f"experiments_dir={exps}", "slurm.partition=debgu")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert (
        "key 'slurm.partition': no partition 'debgu' on this cluster (there are: debug) (did you mean 'debug'?)" in err
    )
    code, out, err = submit(capsys, str(EXAMPLE), f"experiments_dir={exps}", "slurm.constraint=warp_drive")
    assert code == 2 and out == "" and err.count("\n") == 1 and "SLURM refused the job: " in err, err
    assert list(exps.iterdir()) == []
    queue = subprocess.run(["squeue", "-h", "-t", "all", "-n", "example_exp_0"], capture_output=True, text=True)
    assert queue.stdout.strip() == "", queue.stdout
    assert os.environ["SLURM_CONF"].startswith(str(cluster))


def sweep_file(tmp_path: Path, exps: Path, **more) -> str:
    """A grid of 3 learning rates of 1-epoch trials of the template agent, ``more`` keys of its own."""
    sweep = {
        "name": "s",
        "config": str(EXAMPLE),
        "overrides": {"experiments_dir": str(exps), "random_size": 160, "image_size": 16, "hidden": 8,
                      "max_epoch": 1, "torch_threads": 1, "slurm": {"time": 3}},
        "parameters": {"optimizer.args.lr": [0.001, 0.01, 0.1]},
        "method": "grid",
        **more,
    }  # fmt: skip
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    return str(path)


def test_a_sweep_runs_each_trial_as_a_job(cluster, exps, capsys, tmp_path):
    path = sweep_file(tmp_path, exps)
    assert main.main(["--sweep", path, "--slurm"]) == 0, capsys.readouterr().err
    results = (exps / "s" / "results.csv").read_text().splitlines()
    assert len(results) == 4 and all(",complete," in row for row in results[1:]), results
    jobs = set()
    for number in range(3):
        trial = exps / "s" / f"trial_{number:04d}"
        [entry] = json.loads((trial / "slurm" / "jobs.json").read_text())  # one job each
        assert slurm.job_state(entry["job_id"])["JobState"] == "COMPLETED"
        jobs.add(entry["job_id"])
    assert len(jobs) == 3


def test_a_trial_job_is_pruned_through_the_metrics_it_writes(cluster, exps, capsys, tmp_path):
    """The sweep reads a trial job's metrics.csv as the job writes it (storage the nodes share): a pruned trial's
    job is cancelled, saves and ends before the sweep records it."""
    pruner = {"type": "ThresholdPruner", "args": {"lower": 1.01}}  # no accuracy reaches it: pruned at the 1st report
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.01]}, pruner=pruner)
    assert main.main(["--sweep", path, "--slurm", "max_epoch=30", "random_size=1600"]) == 1
    assert "1 pruned; no trial completed" in capsys.readouterr().err
    [row] = list(csv.DictReader((exps / "s" / "results.csv").open()))
    assert row["state"] == "pruned" and 1 <= int(row["epochs"]) < 30, row
    trial = exps / "s" / "trial_0000"
    [entry] = json.loads((trial / "slurm" / "jobs.json").read_text())
    assert slurm.job_state(entry["job_id"])["JobState"] == "CANCELLED"
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] == int(row["epochs"])


def test_a_sweep_as_a_job_array_of_two_workers(cluster, exps, capsys, tmp_path):
    """--workers 2: one job array whose tasks are sweep workers (trials in their process), task 0 the first worker
    (results.csv); --wait waits for the array and prints the sweep's line."""
    path = sweep_file(tmp_path, exps)
    code = main.main(["--sweep", path, "--slurm", "--workers", "2", "--wait"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("submitted job array ") and "2 workers" in out and f"./run.sh status {exps / 's'}" in out
    assert "sweep s: 3 complete; best trial" in err
    results = (exps / "s" / "results.csv").read_text().splitlines()
    assert len(results) == 4 and all(",complete," in row for row in results[1:]), results
    [entry] = json.loads((exps / "s" / "slurm" / "jobs.json").read_text())  # one job: the array
    states = slurm.job_states(entry["job_id"])
    assert [s["task"] for s in states] == ["0", "1"] and {s["JobState"] for s in states} == {"COMPLETED"}, states
    assert len(slurm.log_paths(exps / "s", entry["job_id"])) == 2  # a log per worker
    assert not any((exps / "s" / f"trial_{n:04d}" / "slurm").exists() for n in range(3))  # no job per trial
    assert main.main(["status", str(exps / "s")]) == 0
    status = capsys.readouterr().out
    assert "task 0: COMPLETED" in status and "task 1: COMPLETED" in status
    assert f"sweep: results in {exps / 's' / 'results.csv'}" in status


def test_a_warned_sweep_worker_saves_its_trial_requeues_and_the_trial_resumes(cluster, exps, capsys, tmp_path):
    """USR2 to a job array of 2 workers while trial 0 trains: its trial saves and goes back to the study, each task
    requeues; started again, a worker resumes the trial from its checkpoint and the sweep completes."""
    more = {"max_epoch": 3, "random_size": 8000, "log_every": 1}
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.001, 0.01]})
    code = main.main(["--sweep", path, "--slurm", "--workers", "2", *(f"{k}={v}" for k, v in more.items())])
    out, err = capsys.readouterr()
    assert code == 0, err
    job = out.split()[3].rstrip(":")
    trial = exps / "s" / "trial_0000"
    wait_for(lambda: (trial / "metrics.csv").exists(), "trial 0's epoch 1", job=job)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    tasks = [f"{job}_0", f"{job}_1"]
    for task in tasks:
        restart_now(task, 1)
    for task in tasks:
        state = finished(task)
        assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", (task, state, logs_of(exps / "s", job))
    rows = list(csv.DictReader((exps / "s" / "results.csv").open()))
    assert [r["state"] for r in rows if r["state"] != "fail"] == ["complete", "complete"], rows
    assert any("stopped by a signal" in r["error"] for r in rows)  # trial 0's try that the warning stopped
    log = (trial / "logs" / "run.log").read_text()
    assert log.count("saving a checkpoint") == 1 and log.count("resumed from") == 1, log
    assert json.loads((trial / "summary.json").read_text())["epochs"] == 3


def test_a_sweep_on_slurm_with_a_bad_partition_or_key_is_one_line_and_nothing_is_submitted(
    cluster, exps, capsys, tmp_path
):
    path = sweep_file(tmp_path, exps, name="bad")
    cases = {
        ("slurm.partition=debgu",): "key 'slurm.partition': no partition 'debgu' on this cluster",
        ("slurm.partiton=debug",): "unknown key 'slurm.partiton' (did you mean 'partition'?)",
        ("--workers", "2", "slurm.partition=debgu"): "key 'slurm.partition': no partition 'debgu' on this cluster",
        ("--workers", "2", "slurm.partiton=debug"): "unknown key 'slurm.partiton' (did you mean 'partition'?)",
        ("--workers", "2", "slurm.nodes=2"): "key 'slurm.nodes': a sweep worker (--workers) is one process on one node",
        ("--workers", "2", "slurm.constraint=warp_drive"): "SLURM refused the job: ",
    }
    for args, message in cases.items():
        code = main.main(["--sweep", path, "--slurm", *args])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, (args, err)
        assert list(exps.iterdir()) == [], args
    queue = subprocess.run(["squeue", "-h", "-t", "all", "-n", "bad"], capture_output=True, text=True, timeout=30)
    assert queue.stdout.strip() == "", queue.stdout


def test_the_wait_keeps_a_task_slurm_forgot_and_says_when_a_job_is_held(tmp_path, monkeypatch, capsys):
    """SLURM forgets an ended array task after MinJobAge while others run: its failure still counts. A held job
    (it will not start again by itself) is said once."""

    def state(task: str, job_state: str, reason: str = "None") -> dict[str, str]:
        return {"task": task, "JobState": job_state, "Restarts": "0", "ExitCode": "1:0", "Reason": reason}

    polls = iter(
        [
            [state("0", "RUNNING"), state("1", "FAILED")],
            [state("0", "PENDING", "JobHeldAdmin"), state("1", "FAILED")],
            [state("0", "PENDING", "JobHeldAdmin")],  # task 1 forgotten
            [state("0", "RUNNING")],
            [{**state("0", "COMPLETED"), "ExitCode": "0:0"}],
        ]
    )
    monkeypatch.setattr(slurm, "job_states", lambda job: next(polls))
    monkeypatch.setattr(slurm, "POLL_SECONDS", 0)
    assert slurm.wait_for_job("9", tmp_path) == 1
    err = capsys.readouterr().err
    assert err.count("job 9 is held by SLURM (JobHeldAdmin)") == 1, err
    assert "error: job 9 task 1 ended FAILED" in err, err


def test_a_setting_typed_on_the_command_line_is_named_as_typed(exps, capsys):
    """Checks across keys (processes per GPU, the time before the warning) name the override, not the config."""
    cases = {
        "slurm.tasks_per_node=4": "override 'slurm.tasks_per_node=4': key 'slurm.tasks_per_node': 4 processes",
        "slurm.time=2": "override 'slurm.time=2': key 'slurm.time': 2 leaves less than a minute",
    }
    for override, message in cases.items():
        code, out, err = submit(capsys, str(EXAMPLE), f"experiments_dir={exps}", "slurm.gpus_per_node=2", override)
        assert code == 2 and err.count("\n") == 1 and message in err, (override, err)
