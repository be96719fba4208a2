"""Running a sweep: an Optuna study whose trials are ordinary runs under experiments/<sweep name>/trial_NNNN.

Each worker (a process here, or on another machine sharing a database) runs a trial at a time: a queued one first
(grid points and ``enqueue`` baselines; a trial cut short, which keeps its values and run folder, so it resumes from
its checkpoint), else a new one while fewer than ``trials`` exist. Cut short: on a database, no heartbeat for
GRACE_SECONDS; with a journal file, RUNNING while no process holds the folder's lock (SIGKILL); or a signal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import optuna
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from utils.errors import RunInterrupted, TrainingStopped, UserError
from utils.run.loggers.tracking import SWEEP_ENV
from utils.run.report import read_run
from utils.sweep.spec import Sweep
from utils.sweep.subprocess import popen_tied, stop_earlier_process
from utils.training.seeding import derive_seed

# run_trial(overrides, run_dir, after_validation): a trial's run to its end; raises UserError or TrainingStopped
# when it fails, RunInterrupted when stopped by a signal. after_validation(epoch, metrics) -> True: pruned.
RunTrial = Callable[[list[str], Path, Callable[[int, dict[str, float]], bool]], None]

LOG = logging.getLogger("ppt.sweep")
HEARTBEAT_SECONDS = 60  # a database study hears from each running trial this often ...
GRACE_SECONDS = 120  # ... and queues again one silent this long (its machine gone), at most MAX_RETRY times
MAX_RETRY = 3
WAIT_SECONDS = 1.0  # between looks at trials that other workers run
# Optuna marks the heartbeat, its callback and retried_trial_number experimental: the sweep relies on them.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class TrialFailed(Exception):
    """A trial that failed (its message in the trial's ``error``); the sweep goes on."""


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


def first_number(trial: FrozenTrial) -> int:
    """The number of a trial's first try: its run folder, whichever try runs it."""
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if first is None else first


def tries(study: optuna.Study) -> list[FrozenTrial]:
    """Every try of the sweep's trials (not a grid's trial asked beyond its points by a race of workers)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


def latest(study: optuna.Study) -> list[FrozenTrial]:
    """The last try of each trial: what counts toward ``trials`` and what results.csv ranks."""
    trials = tries(study)
    again = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return [t for t in trials if t.number not in again]


def _requeue(study: optuna.Study, frozen: FrozenTrial, why: str) -> None:
    """Queue a trial again with its values and run folder (Optuna's retry: ``failed_trial``, ``retry_history``)."""
    if frozen.state == TrialState.RUNNING:
        study._storage.set_trial_user_attr(frozen._trial_id, "error", why)
    RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, frozen)
    LOG.info(f"trial {frozen.number} ({why}): queued to run again")


def open_study(sweep: Sweep, worker_index: int = 0) -> tuple[optuna.Study, bool]:
    """Create the study (True), or join it when another worker (or an earlier run of the sweep) made it."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is logged here, with its message
    pruner = getattr(optuna.pruners, sweep.pruner["type"])(**sweep.pruner["args"]) if sweep.pruner else None
    names = {"study_name": sweep.name, "pruner": pruner or optuna.pruners.NopPruner()}
    for attempt in range(5):  # workers starting together race to create a database's tables
        try:
            storage = _storage(sweep)
            try:
                study, created = optuna.create_study(storage=storage, directions=sweep.directions, **names), True
            except optuna.exceptions.DuplicatedStudyError:
                study, created = optuna.load_study(storage=storage, **names), False
            break
        except Exception as e:  # noqa: BLE001 (a database error that the next attempt may not meet)
            if isinstance(e, UserError) or sweep.storage is None:
                raise
            if attempt == 4 or isinstance(e, sqlalchemy.exc.OperationalError):  # unreachable, bad password
                message = f"cannot open {sweep.shown_storage}: {(str(e).strip() or type(e).__name__).splitlines()[0]}"
                raise UserError(f"{sweep.origin('storage')}: {message}") from None
            time.sleep(0.5 * (attempt + 1))
    directions = [d.name.lower() for d in study.directions]
    if directions != sweep.directions:
        raise UserError(
            f"{sweep.origin('metric', 'metric', 'overrides.monitor')}: study '{sweep.name}' exists and was made to "
            f"{', '.join(directions)}, but the objectives are {', '.join(sweep.objectives)}; use another sweep name"
        )
    seed = sweep.sampler_seed
    if seed is not None:  # one worker of a new study: the draws of sampler_seed; a study that goes on: new ones
        before = len(study.get_trials(deepcopy=False))
        seed = derive_seed(seed, "sweep worker", worker_index, *((before,) if before else ()))
    samplers = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler}
    study.sampler = samplers.get(sweep.method, optuna.samplers.RandomSampler)(seed=seed)  # grid, kfold: queued
    return study, created


def _storage(sweep: Sweep) -> Any:
    if sweep.storage is None:
        backend = optuna.storages.journal.JournalFileBackend(str(sweep.sweep_dir / "study.journal"))
        return optuna.storages.JournalStorage(backend)
    try:
        return optuna.storages.RDBStorage(
            sweep.storage,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    except ImportError:
        scheme = sweep.storage.split("://")[0]
        install = "postgresql: pip install 'psycopg[binary]'"
        raise UserError(f"{sweep.origin('storage')}: no database driver for {scheme}:// ({install})") from None


def run_one(study: optuna.Study, sweep: Sweep, run_trial: RunTrial, trial: optuna.trial.Trial) -> list[float]:
    """Optuna's objective: run one trial's run to its end in its folder; its value of each objective at its
    best epoch (best.pth's: one objective, the monitor's best value).

    Raises TrialFailed (its message in ``error``) or optuna.TrialPruned; a trial stopped by a signal is queued
    again before the signal goes on. The one place a trial is launched (``run_trial`` says where and how)."""
    frozen = study._storage.get_trial(trial._trial_id)
    if sweep.grid and not (frozen.system_attrs.get("fixed_params") or first_number(frozen) != trial.number):
        trial.set_user_attr("surplus", True)  # asked while another worker took the grid's last point
        raise TrialFailed("no grid point left")
    try:
        return _run_trial_of(sweep, run_trial, trial, sweep.sweep_dir / trial_name(first_number(frozen)))
    except (RunInterrupted, KeyboardInterrupt):  # also after its run ended, before Optuna was told: it runs again
        _requeue(study, study._storage.get_trial(trial._trial_id), "stopped by a signal")
        raise


def _run_trial_of(sweep: Sweep, run_trial: RunTrial, trial: optuna.trial.Trial, run_dir: Path) -> list[float]:
    chosen = [space.override(space.suggest(trial)) for space in sweep.spaces]  # a queued trial keeps its values
    config = sweep.resolve(chosen)
    attrs = {"host": socket.gethostname(), "run_dir": str(run_dir), "config": config, "nproc": sweep.nproc}
    for key, value in {**attrs, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}.items():
        trial.set_user_attr(key, value)
    LOG.info(f"trial {trial.number} ({', '.join(chosen)}): {run_dir}")
    pruned = False

    def after_validation(epoch: int, metrics: dict[str, float]) -> bool:
        nonlocal pruned
        value = metrics.get(sweep.metrics[0])
        if len(sweep.objectives) > 1 or value is None or not math.isfinite(value):  # Optuna: one objective only
            return False
        with warnings.catch_warnings():  # a resumed trial reports its earlier epochs again: Optuna keeps the first
            warnings.simplefilter("ignore")
            trial.report(value, epoch)
        pruned = epoch < config.get("max_epoch", math.inf) and trial.should_prune()  # not after the last: complete
        return pruned

    stop_earlier_process(run_dir)
    overrides = [*sweep.overrides, *chosen, f"experiments_dir={sweep.sweep_dir}", f"exp_name={run_dir.name}"]
    error = None
    os.environ[SWEEP_ENV] = str(sweep.sweep_dir)  # trackers file the trial under the sweep (utils/run/loggers)
    try:
        run_trial(overrides, run_dir, after_validation)
    except (UserError, TrainingStopped) as e:
        error = str(e)
    except RunInterrupted:  # queued again by run_one
        raise
    except Exception as e:  # noqa: BLE001 (a bug in this trial's code: it fails, the sweep goes on)
        LOG.error(traceback.format_exc())
        error = f"{type(e).__name__}: {e}"
    finally:
        os.environ.pop(SWEEP_ENV, None)
    run = read_run(run_dir)
    trial.set_user_attr("epochs", run.summary.get("epochs"))
    trial.set_user_attr("wall_seconds", run.summary.get("wall_seconds"))
    best = run.summary.get("best") or {}
    row = next((r for r in reversed(run.rows) if r.get("epoch") == best.get("epoch")), {})
    values = [best.get("value")] if len(sweep.objectives) == 1 else [row.get(m) for m in sweep.metrics]
    if error is None and not pruned and not all(v is not None and math.isfinite(v) for v in values):
        error = f"no finite value of {', '.join(sweep.metrics)} at its best epoch in {run_dir}"
    if error is not None:
        trial.set_user_attr("error", error)
        LOG.warning(f"trial {trial.number} failed: {error}")
        raise TrialFailed(error)
    if pruned:
        LOG.info(f"trial {trial.number}: pruned after epoch {run.summary.get('epochs')}")
        raise optuna.TrialPruned()
    LOG.info(f"trial {trial.number}: " + ", ".join(f"{m} {v:.4g}" for m, v in zip(sweep.metrics, values, strict=True)))
    return values


def work(study: optuna.Study, sweep: Sweep, run_trial: RunTrial) -> None:
    """This worker's loop: a trial at a time while one is queued or fewer than ``trials`` exist; then wait
    for the trials others run (one cut short is queued again, and this worker may be the one to run it)."""
    # A journal study's processes hold its folder's lock shared while they run a trial: whoever gets it
    # exclusive knows that every RUNNING trial was cut short.
    with open(sweep.sweep_dir / ".lock", "a") if sweep.storage is None else contextlib.nullcontext() as lock:
        while True:
            if lock is None:
                optuna.storages.fail_stale_trials(study)  # a silent machine's trial: failed, queued again
            elif _flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB):
                try:
                    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                        _requeue(study, frozen, "its sweep was killed")
                        study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
                finally:
                    _flock(lock, fcntl.LOCK_UN)
            trials = latest(study)
            states = [t.state for t in trials]
            if TrialState.WAITING in states or (not sweep.grid and len(trials) < sweep.trials):
                _flock(lock, fcntl.LOCK_SH)
                try:
                    study.optimize(lambda t: run_one(study, sweep, run_trial, t), n_trials=1, catch=TrialFailed)
                finally:
                    _flock(lock, fcntl.LOCK_UN)
            elif TrialState.RUNNING in states:
                time.sleep(WAIT_SECONDS)
            else:
                return


def _flock(file: IO | None, operation: int) -> bool:
    """``fcntl.flock`` of ``file`` (None: nothing to lock); False when a non-blocking lock is refused (another
    open file holds it, in this process or another)."""
    if file is not None:
        try:
            fcntl.flock(file, operation)
        except BlockingIOError:
            return False
    return True


def _claim(study: optuna.Study, sweep: Sweep, created: bool) -> None:
    """The folder's trial directories are the study's (``.study``); it goes on with what Optuna accepts and, unless
    ``new_overrides``, its fixed overrides and base config values; its maker queues the grid's points, others wait
    (its ``id``)."""
    where = sweep.shown_storage or sweep.sweep_dir / "study.journal"
    deadline = time.monotonic() + 30
    while not created and not study.user_attrs.get("id") and time.monotonic() < deadline:
        time.sleep(0.2)
    attrs = study.user_attrs
    mark, made = sweep.sweep_dir / ".study", attrs.get("id") or uuid.uuid4().hex
    ours = mark.read_text().strip() == made if mark.exists() else not any(sweep.sweep_dir.glob("trial_*"))
    if not ours:
        raise UserError(
            f"{sweep.origin('name')}: {sweep.sweep_dir} holds the trials of another study than the one in {where} "
            "(another storage, or its study file removed); choose another sweep name, or move the folder"
        )
    drawn = {k: d for t in study.get_trials(deepcopy=False) for k, d in t.distributions.items()}
    for space in (s for s in sweep.spaces if s.key in drawn):
        try:
            optuna.distributions.check_distribution_compatibility(drawn[space.key], space.distribution())
        except ValueError as e:
            raise UserError(
                f"{sweep.origin(f'parameters.{space.key}')}: the study in {where} was made with another space "
                f"({drawn[space.key]}), and Optuna refuses the change ({e}); choose another sweep name"
            ) from None
    if sweep.grid and attrs.get("grid", sweep.grid) != sweep.grid:
        what = "another grid (its points or their order: parameters, sampler_seed)"
        raise UserError(f"{sweep.origin('parameters')}: the study in {where} was made with {what}; keep it")
    kept = {
        "overrides": ("fixed overrides", sweep.fixed(shared=True)),
        "config": ("base config values", sweep.base_values()),
    }
    for key, (what, now) in kept.items():
        earlier = attrs.get(key, now) if latest(study) else now
        changed = sorted(k for k in {*earlier, *now} if earlier.get(k, "-") != now.get(k, "-"))
        if changed and not sweep.new_overrides:
            shown = lambda values, k: json.dumps(values[k]) if k in values else "absent"  # noqa: E731
            then = ", ".join(f"{k}: {shown(earlier, k)} then, {shown(now, k)} now" for k in changed)
            raise UserError(
                f"{sweep.origin(key, *(f'{key}.{k}' for k in changed))}: the study in {where} ran its trials with "
                f"other {what} ({then}); run it with those, or add new_overrides=true to grow it under these"
            )
        study.set_user_attr(key, now)
    if sweep.grid:
        study.set_user_attr("grid", sweep.grid)
    points = (sweep.grid or sweep.enqueue)[: sweep.trials]
    done = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False)}
    for i, point in enumerate(points):  # each point queued once (a study grown by more trials: the new ones)
        if i not in done:
            study.enqueue_trial(point, user_attrs={"point": i})
    study.set_user_attr("id", made)
    mark.write_text(made + "\n")


def gpu_sets(sweep: Sweep, workers: int) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES: its own ``nproc`` GPUs of this machine's (as it was: none to share)."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # else NVML's count (CUDA is not started)
    ids = [d.strip() for d in (visible or ",".join(map(str, range(torch.cuda.device_count())))).split(",")]
    ids = [d for d in ids if d]
    if sweep.device not in ("auto", "cuda") or not ids:
        return [visible] * workers
    if workers * sweep.nproc > len(ids):
        raise UserError(
            f"--workers {workers} with nproc {sweep.nproc}: each worker takes {sweep.nproc} GPU(s) of its own, "
            f"{workers * sweep.nproc} in all, but this machine has {len(ids)} ({','.join(ids)}); use fewer workers"
        )
    return [",".join(ids[i * sweep.nproc : (i + 1) * sweep.nproc]) for i in range(workers)]


def run_sweep(
    sweep: Sweep,
    run_trial: RunTrial,
    workers: int = 1,
    helper_command: list[str] | None = None,
    helper_index: int | None = None,
    check_first: Callable[[], None] | None = None,
) -> optuna.Study:
    """Run the sweep here with ``workers`` processes (this one and ``workers - 1`` helper_command's), each on
    GPUs of its own; ``check_first`` (the first worker) checks a trial's config before any trial runs."""
    sweep_dir = sweep.sweep_dir
    gpus = gpu_sets(sweep, workers) if helper_index is None else [None]
    if gpus[0] is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
    if helper_index is not None:
        sweep_dir.mkdir(parents=True, exist_ok=True)  # its machine's own experiments_dir may not have it yet
        study = open_study(sweep, helper_index)[0]
    else:
        if check_first is not None:
            check_first()
        study = create(sweep)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    logs = [logging.StreamHandler(sys.stderr), logging.FileHandler(sweep_dir / "sweep.log")]  # a trial's lines
    for handler in logs:
        handler.setFormatter(logging.Formatter("%(asctime)s sweep %(message)s", "%Y-%m-%d %H:%M:%S"))
        LOG.addHandler(handler)
    helpers = []
    try:
        if helper_index is None:
            (sweep_dir / "sweep.json").write_text(json.dumps(sweep.resolved(), indent=2) + "\n")
            for frozen in latest(study) if sweep.retry_failed else []:
                if frozen.state == TrialState.FAIL:
                    _requeue(study, frozen, frozen.user_attrs.get("error", "failed"))
        for i in range(1, workers):
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[i]} if gpus[i] is not None else {})}
            helpers.append(popen_tied([*helper_command, "--worker-index", str(i)], start_new_session=True, env=env))
        work(study, sweep, run_trial)
        return study
    except BaseException:
        for proc in helpers:  # they run in sessions of their own: pass the stop on
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        raise
    finally:
        for i, proc in enumerate(helpers, start=1):
            if proc.wait():
                LOG.warning(f"worker {i} (pid {proc.pid}) exited with code {proc.returncode}")
        for handler in logs:
            handler.close()
            LOG.removeHandler(handler)


def create(sweep: Sweep) -> optuna.Study:
    """The first worker's part before any trial: make (or join) the study and claim its folder. Also what is done
    before the workers of a SLURM job array start, which then join it (one of them the first worker)."""
    if sweep.sweep_dir.is_file() or (sweep.sweep_dir / "config.json").exists():
        found = "a file" if sweep.sweep_dir.is_file() else "a run's directory"
        raise UserError(f"{sweep.origin('name')}: {sweep.sweep_dir} is {found}; choose another sweep name")
    made = next((p for p in [*reversed(sweep.sweep_dir.parents), sweep.sweep_dir] if not p.exists()), None)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        study, created = open_study(sweep)
        _claim(study, sweep, created)
    except UserError:
        # Refused: no folder of its own left behind, unless another command started the sweep there meanwhile.
        if made is not None and not (sweep.sweep_dir / ".study").exists():
            shutil.rmtree(made)
        raise
    return study
