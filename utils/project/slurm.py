"""SLURM jobs through submitit: ``./run.sh --slurm CONFIG`` submits the run, the job trains it.

The cluster settings are the config's ``slurm`` block (``SETTINGS``), optionally read from a file
under ``configs/slurm/`` that the block's own keys override. The job runs one task per process
(``tasks_per_node``, by default one per GPU) on every node; with more than one task, each exports
the DDP environment of its task (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, from submitit) and
the run takes the same path as under torchrun. SLURM's warning before the time limit or a
preemption (USR2, ``signal_delay_s`` ahead) stops the run as SIGTERM does (a checkpoint within
``log_every`` steps) and requeues the job, which resumes from it; a run that fails is not requeued. A warning
during start-up, before the run handles signals, stops it as Ctrl-C does (nothing to save yet) and requeues too.
``--sweep FILE --slurm`` makes each trial a job; with ``--workers K`` a job array of K sweep workers instead
(``check_worker``), each task requeued after a warning like a run (its trial goes back to the study).
Everything of the jobs lives in ``<run dir>/slurm/``: jobs.json (ids and commands), the submitted
scripts, one stdout/stderr per task, the config each job runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT, Key, did_you_mean, read_json, repo_path, validate
from utils.errors import UserError

SLURM_DIR = "configs/slurm"
MAX_REQUEUES_ENV = "PPT_MAX_REQUEUES"  # slurm.max_requeues, in the job's environment
# srun ends a job's other processes this long after one ended (a rank dead in start-up leaves the others waiting
# 30 min at the rendezvous); long enough for rank 0 to requeue the job after the others stopped.
SRUN_WAIT_SECONDS = 120
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # sbatch --time: minutes, [D-]HH:MM[:SS], D-HH
_MEM = re.compile(r"^\d+[KMGT]?$")


def _check_time(value: int | str, where: str, source: str) -> None:
    if isinstance(value, int) and value < 1 or isinstance(value, str) and not _TIME.match(value):
        raise UserError(f"{source}: key '{where}': expected minutes (an integer) or 'D-HH:MM:SS', got {value!r}")


def _check_mem(value: str | None, where: str, source: str) -> None:
    if value is not None and not _MEM.match(value):
        raise UserError(f"{source}: key '{where}': expected a size like '64G' or '500M', got {value!r}")


# sbatch options the template sets itself (the warning that saves, the requeue, where logs go, the layout):
# an option in ``extra`` would silently override them; the key that sets each instead.
OWN_OPTIONS = {
    "signal": "signal_delay_s",
    "requeue": None,
    "no-requeue": None,
    "chdir": None,
    "output": None,
    "error": None,
    "array": "--workers",
    "nodes": "nodes",
    "ntasks-per-node": "tasks_per_node",
    "gpus-per-node": "gpus_per_node",
    "time": "time",
    "partition": "partition",
}


def _check_extra(value: list, where: str, source: str) -> None:
    for option in value:
        if not isinstance(option, str) or not re.match(r"^--[a-z][a-z0-9-]*(=.+)?$", option):
            raise UserError(f"{source}: key '{where}': expected sbatch options like '--exclusive', got {option!r}")
        name = option[2:].partition("=")[0]
        if name in OWN_OPTIONS:
            instead = (
                f"use slurm.{OWN_OPTIONS[name]}"
                if OWN_OPTIONS[name] not in (None, "--workers")
                else ("a sweep's --workers makes the array" if OWN_OPTIONS[name] else "the template sets it")
            )
            raise UserError(f"{source}: key '{where}': {option!r} would override what the job needs ({instead})")


def _check_lines(value: list, where: str, source: str) -> None:
    if not all(isinstance(line, str) for line in value):
        raise UserError(f"{source}: key '{where}': expected a list of shell lines (strings)")


SETTINGS: dict[str, Key] = {
    "partition": Key(None, str, "partition to run in (null: the cluster's default)", nullable=True),
    "nodes": Key(1, int, "nodes", min=1, max=10**5),
    "gpus_per_node": Key(0, int, "GPUs per node (one process each unless tasks_per_node says otherwise)", min=0),
    "tasks_per_node": Key(
        None, int, "processes per node (null: gpus_per_node, or 1 without GPUs)", min=1, max=1024, nullable=True
    ),
    "cpus_per_task": Key(None, int, "CPUs per process (null: the cluster's default)", min=1, nullable=True),
    "mem": Key(None, str, "memory per node, e.g. '64G' (null: the cluster's default)", nullable=True, check=_check_mem),
    "time": Key(60, (int, str), "time limit: minutes, or 'D-HH:MM:SS'", check=_check_time),
    "account": Key(None, str, "account to charge", nullable=True),
    "qos": Key(None, str, "quality of service", nullable=True),
    "constraint": Key(None, str, "node features required, e.g. 'a100'", nullable=True),
    "signal_delay_s": Key(
        120, int, "seconds before the time limit when SLURM warns the job (it saves and requeues)", min=10
    ),
    "max_requeues": Key(
        3, int, "warned tries in a row that saved no new checkpoint, requeued; then the job ends", min=0, max=10**4
    ),
    "extra": Key([], list, "more sbatch options, e.g. ['--exclusive', '--mail-type=END']", check=_check_extra),
    "setup": Key([], list, "shell lines the job runs first, e.g. ['module load cuda']", check=_check_lines),
}


def _settings_file(name: str, where: str, source: str) -> Path:
    """The file ``slurm.file`` names: 'gpu' is configs/slurm/gpu.json; a path ending in .json as given."""
    if "/" in name or name.endswith(".json"):
        path = repo_path(name) if not Path(name).exists() else Path(name)
    else:
        path = REPO_ROOT / SLURM_DIR / f"{name}.json"
    if not path.is_file():
        names = sorted(p.stem for p in (REPO_ROOT / SLURM_DIR).glob("*.json"))
        known = f" (files there: {', '.join(names)})" if names else ""
        raise UserError(f"{source}: key '{where}': no file {path}{known}{did_you_mean(Path(name).stem, names)}")
    return path


def _check_block(value: dict, where: str, source: str) -> None:
    if value.get("file"):
        path = _settings_file(value["file"], f"{where}.file", source)
        validate(read_json(path), SETTINGS, str(path))


def slurm_key() -> Key:
    """The config key ``slurm``: the cluster settings of ``./run.sh --slurm`` (unused by a local run)."""
    schema = {
        "file": Key(
            None, str, f"settings from a file: a name in {SLURM_DIR}/ or a path; this block's keys override it",
            nullable=True,
        ),
        **SETTINGS,
    }  # fmt: skip
    doc = "SLURM settings of ./run.sh --slurm (tutorials/09_slurm.md); a local run ignores them"
    return Key(None, dict, doc, schema=schema, nullable=True, check=_check_block)


def resolve(block: dict | None, source: str) -> dict:
    """The settings a job is submitted with: the file's, then the keys the block itself gives."""
    block = dict(block or {})
    name = block.pop("file", None)
    path = _settings_file(name, "slurm.file", source) if name else None
    base = read_json(path) if path else {}
    settings = validate({**base, **block}, SETTINGS, source)
    gpus, tasks = settings["gpus_per_node"], tasks_per_node(settings)

    def at(key: str, *also: str) -> str:  # the settings file, where the keys of a refused setting came from it
        if path and not any(k in block for k in (key, *also)):
            return f"{path}: key '{key}'"
        return f"{source}: key 'slurm.{key}'"

    if gpus and tasks > gpus:  # each process takes the GPU of its local rank
        raise UserError(
            f"{at('tasks_per_node', 'gpus_per_node')}: {tasks} processes per node, but {gpus} GPU(s) per node: each "
            "process takes a GPU of its own (set tasks_per_node to at most gpus_per_node, or null)"
        )
    if _seconds(settings["time"]) < settings["signal_delay_s"] + 60:  # else every start is warned: requeues forever
        raise UserError(
            f"{at('time', 'signal_delay_s')}: {settings['time']!r} leaves less than a minute before SLURM's warning "
            f"(signal_delay_s={settings['signal_delay_s']} s ahead of the limit); ask for more time"
        )
    return settings


def _seconds(time: int | str) -> int:
    """sbatch --time in seconds: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    if isinstance(time, int):
        return 60 * time
    days, _, clock = time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    weights = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
    return sum(p * w for p, w in zip(parts, weights, strict=True))


def tasks_per_node(settings: dict) -> int:
    return settings["tasks_per_node"] or max(settings["gpus_per_node"], 1)


def check_cluster(settings: dict, source: str) -> None:
    """SLURM's commands are here and the cluster has the partition: else one line, before anything is submitted."""
    missing = [c for c in ("sbatch", "srun", "sinfo", "scontrol") if shutil.which(c) is None]
    if missing:
        raise UserError(
            f"--slurm: '{missing[0]}' not found: submit from a machine with SLURM's commands (a login node)"
        )
    partition = settings["partition"]
    if partition is None:
        return
    out = _slurm_command(["sinfo", "-h", "-o", "%R"])
    names = sorted(set(out.split()))
    if partition not in names:
        raise UserError(
            f"{source}: key 'slurm.partition': no partition {partition!r} on this cluster "
            f"(there are: {', '.join(names)}){did_you_mean(partition, names)}"
        )


def _slurm_command(argv: list[str], timeout: float = 60) -> str:
    """Run a SLURM client command; its output, or a UserError when SLURM is missing or refuses."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"--slurm: '{' '.join(argv)}' did not answer within {timeout:.0f} s") from None
    if done.returncode:
        raise UserError(f"--slurm: {' '.join(argv)}: {_last_line(done.stderr)}")
    return done.stdout


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def check_worker(settings: dict, source: str) -> None:
    """A sweep worker of a job array is one process on one node: its trials run in it, one at a time."""
    for key, value in (("nodes", settings["nodes"]), ("tasks_per_node", tasks_per_node(settings))):
        if value > 1:
            raise UserError(
                f"{source}: key 'slurm.{key}': a sweep worker (--workers) is one process on one node, got {value} "
                f"{key.replace('_', ' ')}; a trial of several processes: --sweep --slurm without --workers (a job each)"
            )


def submit(
    entry: Callable[..., Any], calls: list[tuple], name: str, settings: dict, run_dir: Path, source: str,
    command: list[str],
) -> str:  # fmt: skip
    """Submit ``entry(*args)`` for each ``args`` of ``calls`` with ``settings``: one job, or a job array of a task
    per call; writes slurm/jobs.json; the job id (a job array's own)."""
    import submitit

    check_cluster(settings, source)
    folder = run_dir / "slurm"
    made = [p for p in (run_dir, folder) if not p.exists()]
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0, python=python_holding_the_warning())
    extra = {}
    for option in settings["extra"]:
        key, sep, value = option[2:].partition("=")
        extra[key] = value if sep else True
    gpus = settings["gpus_per_node"]
    executor.update_parameters(
        job_name=name,
        partition=settings["partition"],
        nodes=settings["nodes"],
        ntasks_per_node=tasks_per_node(settings),
        gpus_per_node=gpus or None,
        cpus_per_task=settings["cpus_per_task"],
        mem=settings["mem"],
        time=settings["time"],
        account=settings["account"],
        qos=settings["qos"],
        constraint=settings["constraint"],
        signal_delay_s=settings["signal_delay_s"],
        setup=[f"export {MAX_REQUEUES_ENV}={settings['max_requeues']}", *settings["setup"]],
        srun_args=[f"--wait={SRUN_WAIT_SECONDS}"],
        # The job runs in the repository (the agents import from it); requeued after a preemption.
        additional_parameters={"chdir": str(REPO_ROOT), "requeue": True, **extra},
    )
    stderr = io.StringIO()  # submitit prints sbatch's complaint itself: it becomes our one line instead
    try:
        with contextlib.redirect_stderr(stderr):
            if len(calls) == 1:
                job = executor.submit(entry, *calls[0])
            else:
                with executor.batch():  # one sbatch --array, a task per call
                    job = [executor.submit(entry, *args) for args in calls][0]
    except Exception as e:  # noqa: BLE001 (sbatch's refusal: the settings are the user's to fix)
        for path in reversed(made):
            shutil.rmtree(path, ignore_errors=True)
        raise UserError(f"{source}: SLURM refused the job: {_last_line(str(e))}") from None
    job_id = job.job_id.split("_")[0]  # a task of an array: <array id>_<task>
    _record(folder, {"job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command})
    return job_id


def python_holding_the_warning() -> str:
    """The job's python command: this interpreter, started with SLURM's warning (USR2) blocked, so that one that
    comes while Python and submitit start is kept pending until run_requeued handles it, instead of ending the
    task (USR2's default action); a bare interpreter blocks it (~20 ms) and execs the real one (the mask stays)."""
    block = "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2]); "
    block += "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    return f"{shlex.quote(sys.executable)} -S -c {shlex.quote(block)}"


def _record(folder: Path, entry: dict) -> None:
    path = folder / "jobs.json"
    jobs = json.loads(path.read_text()) if path.exists() else []
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([*jobs, entry], indent=1) + "\n")
    os.replace(tmp, path)


def jobs(run_dir: Path) -> list[dict]:
    """The jobs submitted for a run directory (slurm/jobs.json), oldest first."""
    path = run_dir / "slurm" / "jobs.json"
    if not path.exists():
        raise UserError(f"{run_dir}: no SLURM jobs here ({path} is missing): submit one with ./run.sh --slurm CONFIG")
    return json.loads(path.read_text())


def log_paths(run_dir: Path, job_id: str) -> list[Path]:
    """Each task's stderr of a job: the run's own lines and errors (its stdout, .out next to it, is submitit's)."""
    return sorted((run_dir / "slurm").glob(f"{job_id}_*_log.err"), key=lambda p: int(p.name.split("_")[1]))


FIELDS = ("JobState", "Restarts", "ExitCode", "NodeList", "Reason")


def job_states(job_id: str) -> list[dict[str, str]]:
    """SLURM's view of a job, of each task of a job array: FIELDS and ``task`` (the array's task numbers, '' for
    a plain job); empty when SLURM forgot the job."""
    try:
        done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode:
        return []
    states = []
    for line in done.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        states.append({"task": fields.get("ArrayTaskId", ""), **{k: fields.get(k, "") for k in FIELDS}})
    return sorted(states, key=lambda s: int(re.match(r"\d*", s["task"])[0] or 0))


def job_state(job_id: str) -> dict[str, str]:
    """SLURM's view of a plain job (empty when it forgot the job)."""
    states = job_states(job_id)
    return states[0] if states else {}


def _log_name(job_id: str, state: dict[str, str]) -> str:
    """The first task's log of a job, or of one task of a job array (submitit names them so)."""
    return f"{job_id}_{state['task']}_0_log.err" if state["task"] else f"{job_id}_0_log.err"


def status(run_dir: Path) -> str:
    """``main.py status RUN_DIR``: each job's state, requeues and log files, and the run's own state."""
    lines = []
    for entry in jobs(run_dir):
        job_id = entry["job_id"]
        states = job_states(job_id)
        lines.append(f"job {job_id} (submitted {entry['submitted']}):")
        for state in states:
            text = f"{state['JobState']}, requeued {state['Restarts']} time(s), exit code {state['ExitCode']}"
            if state["Reason"] not in ("", "None"):
                text += f", reason {state['Reason']}"
            lines[-1] += f" {text}" if len(states) == 1 and not state["task"] else f"\n  task {state['task']}: {text}"
        if not states:
            lines[-1] += " no longer known to SLURM (finished a while ago; sacct -j shows its accounting)"
        lines += [f"  log: {p}" for p in log_paths(run_dir, job_id)] or [f"  log: none yet ({run_dir / 'slurm'})"]
    summary, results = run_dir / "summary.json", run_dir / "results.csv"
    if summary.exists():
        s = json.loads(summary.read_text())
        lines.append(f"run: {s.get('status')} after {s.get('epochs')} epoch(s), {s.get('steps')} steps ({summary})")
    elif (run_dir / "sweep.json").exists():
        lines.append(f"sweep: {f'results in {results}' if results.exists() else 'no results.csv yet'}")
    else:
        lines.append("run: no summary.json yet")
    return "\n".join(lines)


class _Warned:
    """SLURM's warning before a time limit or a preemption (USR2): stop the run as SIGTERM does. Before the run
    takes SIGTERM (start-up: submitit's handler ignores it) there is nothing to save: it stops as Ctrl-C does."""

    def __init__(self) -> None:
        self.received = False
        self.startup = signal.getsignal(signal.SIGTERM)

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        if signal.getsignal(signal.SIGTERM) == self.startup:
            sys.stderr.write("SLURM's warning (SIGUSR2) during start-up: nothing to save yet, the job requeues\n")
            raise KeyboardInterrupt
        sys.stderr.write("SLURM's warning (SIGUSR2: a time limit or a preemption): the run saves, the job requeues\n")
        signal.raise_signal(signal.SIGTERM)  # the run's own handler: save within log_every steps, stop


def run_task(config: dict, run_dir: str, run: Callable[[str], int]) -> None:
    """One task of a job: the DDP environment of its task (several tasks), ``run(config file)``, requeued when warned.

    ``run`` returns the exit code of the run; a non-zero one ends the task with it (SLURM marks the
    job failed)."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        # CUDA_VISIBLE_DEVICES is left alone: each process takes the GPU of its LOCAL_RANK, as under torchrun.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    # The config as submitted, whatever became of its file since: a requeued job goes on with the same run.
    # Requeued: on from its own last.pth. resume=PATH does that by itself (the run's config.json names PATH; with no
    # last.pth yet, PATH is where it starts); resume=false would refuse the checkpoints the first try wrote.
    if int(os.environ.get("SLURM_RESTART_COUNT", "0")) and config.get("resume") is False:
        config = {**config, "resume": "auto"}
    path = Path(run_dir) / "slurm" / f"{env.job_id}_config.json"
    tmp = path.with_suffix(f".{env.global_rank}.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)
    run_requeued(lambda: run(str(path)))


def run_requeued(run: Callable[[], int]) -> None:
    """``run()`` (a run, a sweep worker: its exit code) in a task; after SLURM's warning, one that did not finish is
    requeued by rank 0 (it resumes from its checkpoint): it stopped by saving (130), during start-up, or at a
    collective when another rank stopped in another phase. A non-zero code ends the task."""
    import submitit

    env = submitit.JobEnvironment()
    started = time.time()
    warned = _Warned()
    signal.signal(signal.SIGUSR2, warned)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR2])  # one that came during the start: delivered now
        code = run()
    except KeyboardInterrupt:  # the warning before the run's own handling of it
        code = 130
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # the run has ended: a late warning (any thread's) changes nothing
    if warned.received and code and env.global_rank == 0:
        _requeue(env, started)
    if code:
        sys.exit(code)


def _requeue(env: Any, started: float) -> None:
    """Requeue the warned job (it resumes from its last checkpoint), unless more than ``slurm.max_requeues`` tries in
    a row saved no checkpoint (a job warned at every start would requeue forever); a job SLURM requeued itself
    (a preemption that requeues) is left as it is."""
    folder = Path(env.paths.folder)  # the run's (or sweep's) slurm/: its checkpoints are next to it
    saved = any(p.stat().st_mtime >= started for p in folder.parent.glob("**/checkpoints/last.pth"))
    counter = folder / f"{env.job_id}_tries_without_a_checkpoint"
    idle = 0 if saved else (int(counter.read_text()) if counter.exists() else 0) + 1
    most = int(os.environ.get(MAX_REQUEUES_ENV, "3"))
    if idle > most:
        sys.stderr.write(
            f"error: job {env.job_id}: not requeued: {idle} tries in a row saved no checkpoint before SLURM's "
            f"warning (slurm.max_requeues={most}); give the job more time (slurm.time), then submit it again\n"
        )
        return
    counter.write_text(f"{idle}\n")
    sys.stderr.write(f"job {env.job_id}: requeued, it resumes from its last checkpoint\n")  # before: a local job ends
    try:
        env._requeue(0)  # the executor's own requeue (scontrol requeue), as submitit's checkpointing does
    except subprocess.CalledProcessError:
        if job_state(env.job_id).get("JobState") not in ("PENDING", "REQUEUED", "REQUEUE_FED", "COMPLETING"):
            raise
        sys.stderr.write(f"job {env.job_id}: SLURM had requeued it itself\n")


ENDED = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)
POLL_SECONDS = 2.0
FORGOTTEN_SECONDS = 600  # a job SLURM no longer answers for this long is taken for lost
CANCEL_WAIT_SECONDS = 120  # for a cancelled job to save and end (SLURM's KillWait is 30 s by default)


def wait_for_job(job_id: str, run_dir: Path) -> int:
    """Wait for a job (every task of a job array) to end, a requeued one running again; the exit code of its run:
    0, 2 (a mistake), 130 (cancelled) or 1, with the run's error line on stderr. Stopping the wait (Ctrl-C)
    cancels the job, which saves a checkpoint."""
    last_seen, held = time.monotonic(), False
    ended: dict[str, dict[str, str]] = {}  # each task's end, kept when SLURM forgets it before the others end
    try:
        while not (states := job_states(job_id)) or any(s["JobState"] not in ENDED for s in states):
            for s in states:
                if s["JobState"] in ENDED:
                    ended[s["task"]] = s
                else:  # requeued after it ended: it runs again
                    ended.pop(s["task"], None)
            if states:
                last_seen = time.monotonic()
            elif time.monotonic() - last_seen > FORGOTTEN_SECONDS:
                sys.stderr.write(f"error: job {job_id}: SLURM has not known it for {FORGOTTEN_SECONDS} s\n")
                return 1
            reasons = [s["Reason"] for s in states if "Held" in s["Reason"] or s["JobState"] == "SPECIAL_EXIT"]
            if reasons and not held:  # it will not start again by itself
                sys.stderr.write(
                    f"job {job_id} is held by SLURM ({reasons[0]}): still waiting; release it with "
                    f"'scontrol release {job_id}', or stop it with 'scancel {job_id}'\n"
                )
            held = bool(reasons)
            time.sleep(POLL_SECONDS)
    except BaseException:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
        # Its run saves a checkpoint first: the run's files are whole once the wait ends (a sweep reads them).
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while any(s["JobState"] not in ENDED for s in job_states(job_id)) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        raise
    failed = [s for s in {**ended, **{s["task"]: s for s in states}}.values() if s["JobState"] != "COMPLETED"]
    if not failed:
        return 0
    state = failed[0]
    log = run_dir / "slurm" / _log_name(job_id, state)
    errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")] if (
        log.exists()) else []  # fmt: skip
    task = f" task {state['task']}" if state["task"] else ""
    fallback = f"error: job {job_id}{task} ended {state['JobState']}: see {log}"
    sys.stderr.write((errors[-1] if errors else fallback) + "\n")
    if state["JobState"] == "CANCELLED":
        return 130
    return 2 if state["ExitCode"].startswith("2:") else 1


def frozen_config(config: dict, settings: dict) -> dict:
    """The resolved config a job runs (the cluster settings in place of a file's name)."""
    return {**config, "slurm": settings}
