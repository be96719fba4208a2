"""Running a sweep: an Optuna study whose trials are ordinary runs under experiments/<sweep name>/trial_NNNN.

Workers (processes on this machine, or on several machines sharing a database) each loop: take up a
trial whose worker died, else ask the study for a new one while fewer than ``trials`` exist, run it
to its end, tell the study. Trial numbers are unique across workers and a trial's place among them
(its slot) picks its grid point, so ``trials`` is exact and a grid point is never run twice. A worker
holds a lock file while it lives: a RUNNING trial whose worker's lock is free was cut short (SIGKILL,
power loss) and is resumed from its checkpoint by the next worker started on the same machine, where
the checkpoint is, once what is left of its earlier process has saved and stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from utils.errors import RunInterrupted, TrainingStopped, UserError
from utils.locks import holder
from utils.recorder import LOCK_NAME, write_text_atomic
from utils.seeding import derive_seed
from utils.sweep_spec import Sweep
from utils.sweep_subprocess import popen_tied

# run_trial(overrides, run_dir, after_validation): one trial's run to its end; raises UserError or
# TrainingStopped when it fails, RunInterrupted when stopped by a signal. after_validation(epoch, metrics)
# is BaseAgent's hook; it returns True to stop training (pruned).
RunTrial = Callable[[list[str], Path, Callable[[int, dict[str, float]], bool] | None], None]

LOG = logging.getLogger("ppt.sweep")
STOP_GRACE_SECONDS = 60.0  # for a taken-up trial's earlier process to save its checkpoint and end
# A database study hears from each running trial every HEARTBEAT_SECONDS; one silent for STALE_SECONDS (its
# machine gone) is failed and queued again, for the next worker on any machine (Optuna's heartbeat).
HEARTBEAT_SECONDS = 60
STALE_SECONDS = 600
WAIT_SECONDS = 1.0  # between looks at a trial another worker of this machine still runs


class _GridBySlot(optuna.samplers.BaseSampler):
    """method=grid: the trial in slot N takes combination N (slots are unique across workers and machines)."""

    def __init__(self, grid: list[dict]) -> None:
        self.grid = grid

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self.grid[_slot(study, trial.number)][param_name]


class Worker:
    """This process as a sweep worker: its id (host:lock file) in its trials, and that lock, held while it lives."""

    def __init__(self, sweep_dir: Path) -> None:
        self.host = socket.gethostname()
        folder = sweep_dir / ".workers"
        folder.mkdir(parents=True, exist_ok=True)
        # The pid alone could come back (a container's entrypoint is pid 1 again): a dead worker's name too.
        self.path = (folder / f"{self.host}.{os.getpid()}.{uuid.uuid4().hex[:8]}.lock").resolve()
        self.id = f"{self.host}:{self.path}"  # host, then where its lock is (any experiments_dir on that host)
        self._file = open(self.path, "w")  # noqa: SIM115 (held for the worker's life)
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def lock_here(self, worker_id: str, local: bool) -> Path | None:
        """The lock file of the worker ``worker_id`` in this sweep folder, where its trials' checkpoints are:
        where it was, or under its name in this ``.workers/`` (the folder moved; with a journal file every
        worker of the study is this folder's). None: another folder's (another experiments_dir)."""
        lock = Path(worker_id.partition(":")[2])
        here = self.path.parent / lock.name
        return here if local or lock.parent == self.path.parent or here.exists() else None

    def is_dead(self, worker_id: str, local: bool) -> bool:
        """Whether the worker ``worker_id`` of this folder has ended: its lock is free; or its lock file is gone
        and it was of this host or of a journal file (another machine's lock may be on its own disk)."""
        lock = self.lock_here(worker_id, local)
        if lock is None:
            return False
        if not lock.exists():
            return local or worker_id.partition(":")[0] == self.host
        return holder(lock) is None

    def close(self, done: bool) -> None:
        """Release the lock; its file stays after a worker stopped mid-trial (``done`` false), to tell it is dead."""
        if done:
            self.path.unlink(missing_ok=True)
        self._file.close()


@contextlib.contextmanager
def _machine_lock(sweep_dir: Path) -> Iterator[None]:
    """Serialises taking trials among this machine's workers (no two take up the same orphan)."""
    with open(sweep_dir / ".take.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def open_study(sweep: Sweep, worker_index: int = 0) -> optuna.Study:
    """Create the study, or join it when another worker (or an earlier run of the sweep) made it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = _GridBySlot(sweep.grid) if sweep.method == "grid" else _sampler(sweep, worker_index, 0)
    pruner = getattr(optuna.pruners, sweep.pruner["type"])(**sweep.pruner["args"]) if sweep.pruner else None
    for attempt in range(5):  # workers starting together race to create a database's tables
        try:
            study = optuna.create_study(
                storage=_storage(sweep),
                sampler=sampler,
                pruner=pruner or optuna.pruners.NopPruner(),
                study_name=sweep.name,
                direction=sweep.direction,
                load_if_exists=True,
            )
            break
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 (a database error that the next attempt may not meet)
            if sweep.storage is None:
                raise
            if attempt == 4 or isinstance(e, sqlalchemy.exc.OperationalError):  # unreachable, bad password
                message = f"cannot open {sweep.shown_storage}: {_first_line(e)}"
                raise UserError(f"{sweep.path}: key 'storage': {message}") from None
            time.sleep(0.5 * (attempt + 1))
    if study.direction.name.lower() != sweep.direction:
        raise UserError(
            f"{sweep.path}: study '{sweep.name}' exists and was made to {study.direction.name.lower()}, "
            f"but monitor is '{sweep.monitor}'; use another sweep name"
        )
    if sweep.method != "grid" and sweep.sampler_seed is not None:  # a study that goes on draws new values
        study.sampler = _sampler(sweep, worker_index, len(study.get_trials(deepcopy=False)))
    return study


def _sampler(sweep: Sweep, worker_index: int, trials_before: int) -> optuna.samplers.BaseSampler:
    """method random or tpe; with sampler_seed, seeded by this worker and how many trials the study had."""
    seed = sweep.sampler_seed
    if seed is not None:
        more = (trials_before,) if trials_before else ()  # a new study: the draws of sampler_seed alone
        seed = derive_seed(seed, "sweep worker", worker_index, *more)
    return optuna.samplers.RandomSampler(seed) if sweep.method == "random" else optuna.samplers.TPESampler(seed=seed)


def _storage(sweep: Sweep) -> Any:
    if sweep.storage is None:
        backend = optuna.storages.journal.JournalFileBackend(str(sweep.sweep_dir / "study.journal"))
        return optuna.storages.JournalStorage(backend)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat's, at every start
            return optuna.storages.RDBStorage(
                sweep.storage,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=STALE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            )
    except ImportError:
        scheme = sweep.storage.split("://")[0]
        raise UserError(
            f"{sweep.path}: key 'storage': no database driver for {scheme}:// installed; "
            "for postgresql://: pip install 'psycopg[binary]'"
        ) from None


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _adopt(study: optuna.Study, worker: Worker, local: bool) -> optuna.trial.Trial | None:
    """A RUNNING trial whose worker of this folder died, now this worker's (it resumes from the checkpoint)."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = frozen.user_attrs.get("worker")
        # No owner: cut short between ask and naming its worker; with a journal file every ask is on this
        # machine, under the machine lock we hold, so no live worker is half-way through it.
        if (owner and worker.is_dead(owner, local)) or (not owner and local):
            trial = optuna.trial.Trial(study, frozen._trial_id)  # Optuna's way to continue a trial elsewhere
            try:
                trial.set_user_attr("worker", worker.id)
            except optuna.exceptions.UpdateFinishedTrialError:  # another machine failed it a moment ago
                continue
            _beat(study, trial)  # before another machine takes it for a silent one
            if owner and (lock := worker.lock_here(owner, local)):
                holder(lock, remove_if_free=True)  # the dead worker's lock file
            LOG.info(f"trial {frozen.number}: its worker {owner or '?'} is gone; taking it up")
            return trial
    return None


def trials_of(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The sweep's trials (not those a race between machines asked for beyond ``trials``)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count toward ``trials``: not those given up for a silent machine and queued again."""
    trials = trials_of(study)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.number not in retried]


def _slot(study: optuna.Study, number: int) -> int:
    """Trial ``number``'s place (a grid's point): how many first tries of a trial have smaller numbers (surplus
    trials, which a study keeps between them, left out); a trial run again keeps its first try's place."""
    trials = {t.number: t for t in trials_of(study)}
    if number in trials:
        number = trials[number].system_attrs.get("failed_trial", number)
    return sum(n < number and "failed_trial" not in t.system_attrs for n, t in trials.items())


def _ask(study: optuna.Study, sweep: Sweep, worker: Worker) -> optuna.trial.Trial | None:
    """A trial queued again (its machine went silent), else a new one while fewer than ``sweep.trials`` count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a database study's silent trials: failed, queued again
    trials = counted(study)
    if len(trials) >= sweep.trials and not any(t.state == TrialState.WAITING for t in trials):
        return None
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize": it is (_heartbeat)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()  # a queued trial first
    _beat(study, trial)  # the first: should this worker die now, the trial goes stale
    frozen = study._storage.get_trial(trial._trial_id)
    history = frozen.system_attrs.get("retry_history")
    # Surplus: beyond the last place (another machine asked at the same moment and got it; or this is the
    # retry of such a trial), or a retry another machine queued too.
    surplus = frozen.user_attrs.get("surplus") or _slot(study, trial.number) >= sweep.trials
    surplus = surplus or (history and _queued_twice(study, trial.number, history[-1]))
    if not surplus:
        trial.set_user_attr("worker", worker.id)
        return trial
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    return _ask(study, sweep, worker) if history else None


def _queued_twice(study: optuna.Study, number: int, again: int) -> bool:
    """Whether a trial with a smaller number than ``number`` also runs trial ``again`` again (two machines
    queued it)."""
    trials = trials_of(study)
    return any(t.number < number and t.system_attrs.get("retry_history", [None])[-1] == again for t in trials)


def _beat(study: optuna.Study, trial: optuna.trial.Trial) -> None:
    """One heartbeat of ``trial`` (database studies); a database out of reach a moment is only a warning."""
    if storage := _heartbeat_storage(study):
        try:
            storage.record_heartbeat(trial._trial_id)
        except Exception as e:  # noqa: BLE001 (the next beat may get through)
            LOG.warning(f"trial {trial.number}: heartbeat not recorded: {_first_line(e)}")


def _running_here(study: optuna.Study, worker: Worker, local: bool) -> int | None:
    """A trial that another live worker of this folder still runs (one killed may yet be saving it)."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = frozen.user_attrs.get("worker")
        if owner and owner != worker.id and worker.lock_here(owner, local) and not worker.is_dead(owner, local):
            return frozen.number
    return None


def _stop_earlier_process(run_dir: Path, number: int) -> None:
    """A taken-up trial's earlier process may still hold its run (a ``--nproc`` trial saving its checkpoint
    after the sweep's SIGKILL, or running on where the sweep's children are not tied to it): nothing will
    hear its result, so it is sent SIGTERM (it saves and stops), SIGKILL after ``STOP_GRACE_SECONDS``."""
    pid = _run_holder(run_dir)
    if pid is None:
        return
    LOG.info(f"trial {number}: its earlier process (pid {pid}) still holds {run_dir}; stopping it")
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    sent: dict[int, signal.Signals] = {}
    while pid is not None:
        stop = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        if pid and sent.get(pid) != stop:  # 0: the holder has not written its pid yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stop)
            sent[pid] = stop
        if time.monotonic() > deadline + STOP_GRACE_SECONDS:
            return  # the run's own lock check says who holds it
        time.sleep(0.2)
        pid = _run_holder(run_dir)


def _run_holder(run_dir: Path) -> int | None:
    """The pid of the process holding the run's lock (0 until it has written it), None when free."""
    text = holder(run_dir / LOCK_NAME)
    return None if text is None else int(text) if text.isdigit() else 0


def trial_name(number: int) -> str:
    return f"trial_{number:04d}"


def _run(study: optuna.Study, sweep: Sweep, trial: optuna.trial.Trial, run_trial: RunTrial) -> None:
    """Run one trial to its end and tell the study: complete, pruned, or failed with its message."""
    _mark(study, sweep.sweep_dir)
    try:
        values = {space.key: space.suggest(trial) for space in sweep.spaces}  # a trial taken up keeps its values
    except ValueError as e:  # values stored under another space (a study changed by hand): this trial cannot run
        _fail(study, trial, f"its values do not fit the sweep's parameters: {e}")
        return
    name = trial_name(trial.number)
    run_dir = sweep.sweep_dir / name
    overrides = [
        *sweep.overrides,
        *(space.override(values[space.key]) for space in sweep.spaces),
        f"experiments_dir={sweep.sweep_dir}",
        f"exp_name={name}",
    ]
    described = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
    LOG.info(f"trial {trial.number} ({described}): {run_dir}")
    pruned = False

    def after_validation(epoch: int, metrics: dict[str, float]) -> bool:
        nonlocal pruned
        value = metrics.get(sweep.metric)
        if value is None or not math.isfinite(value):
            return False
        with warnings.catch_warnings():  # a resumed trial reports its earlier epochs again: Optuna keeps the first
            warnings.simplefilter("ignore")
            try:
                trial.report(value, epoch)
            except optuna.exceptions.UpdateFinishedTrialError:
                return True  # given up by the study (see below): nobody waits for the rest
        pruned = trial.should_prune()
        return pruned

    _stop_earlier_process(run_dir, trial.number)
    error = None
    try:
        with _heartbeat(study, trial):
            run_trial(overrides, run_dir, after_validation if sweep.pruner else None)
    except (UserError, TrainingStopped) as e:
        error = str(e)
    except (RunInterrupted, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 (a bug in this trial's code: it fails, the sweep goes on)
        LOG.error(traceback.format_exc())
        error = f"{type(e).__name__}: {e}"
    try:
        _tell(study, sweep, trial, run_dir, error, pruned)
    except optuna.exceptions.UpdateFinishedTrialError:
        LOG.warning(
            f"trial {trial.number}: the study gave it up (no heartbeat for {STALE_SECONDS} s: the database was "
            f"out of reach) and queued it again; its result stays in {run_dir} only"
        )


def _tell(
    study: optuna.Study, sweep: Sweep, trial: optuna.trial.Trial, run_dir: Path, error: str | None, pruned: bool
) -> None:
    """The trial's result to the study: failed with ``error``, pruned, or the best value in its summary.json."""
    summary = _read_json(run_dir / "summary.json")
    trial.set_user_attr("epochs", summary.get("epochs"))
    trial.set_user_attr("wall_seconds", summary.get("wall_seconds"))
    value = (summary.get("best") or {}).get("value")
    if error is not None:
        _fail(study, trial, error)
    elif pruned:
        study.tell(trial, state=TrialState.PRUNED)
        LOG.info(f"trial {trial.number}: pruned after epoch {summary.get('epochs')}")
    elif value is None:
        _fail(study, trial, f"no finite value of {sweep.metric} in {run_dir / 'summary.json'}")
    else:
        study.tell(trial, value)
        LOG.info(f"trial {trial.number}: {sweep.metric} {value:.4g}")


def _heartbeat_storage(study: optuna.Study) -> Any:
    """The study's storage when it keeps heartbeats (a database's, behind Optuna's cache), else None."""
    storage = study._storage
    return storage if hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() else None


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.trial.Trial) -> Iterator[None]:
    """While a trial of a database study runs, its heartbeat every HEARTBEAT_SECONDS (see STALE_SECONDS)."""
    storage = _heartbeat_storage(study)
    if storage is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            _beat(study, trial)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat of trial {trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fail(study: optuna.Study, trial: optuna.trial.Trial, message: str) -> None:
    trial.set_user_attr("error", message)
    study.tell(trial, state=TrialState.FAIL)
    LOG.warning(f"trial {trial.number} failed: {message}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def work(study: optuna.Study, sweep: Sweep, run_trial: RunTrial) -> None:
    """This worker's loop: take a trial, run it, until the study has all of its trials and none is running
    on this machine (a worker killed a moment ago may still be saving the trial that it leaves to take up)."""
    worker = Worker(sweep.sweep_dir)
    local = sweep.storage is None
    running, waited = False, set()
    try:
        while True:
            with _machine_lock(sweep.sweep_dir):
                trial = _adopt(study, worker, local) or _ask(study, sweep, worker)
            if trial is not None:
                running = True
                _run(study, sweep, trial, run_trial)
                running = False
            elif (number := _running_here(study, worker, local)) is not None:
                if number not in waited:
                    LOG.info(f"waiting for trial {number}, which another worker of this folder still runs")
                    waited.add(number)
                time.sleep(WAIT_SECONDS)
            else:
                return
    finally:
        worker.close(done=not running)


def _setup_log(sweep_dir: Path) -> None:
    if LOG.handlers:
        return
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    fmt = logging.Formatter("%(asctime)s sweep %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(sweep_dir / "sweep.log")):
        handler.setFormatter(fmt)
        LOG.addHandler(handler)


def _close_log() -> None:
    for handler in list(LOG.handlers):
        handler.close()
        LOG.removeHandler(handler)


def _claim(study: optuna.Study, sweep: Sweep) -> None:
    """The study goes on only with the space it was made with (Optuna cannot mix two), on every machine; and
    this folder's trial directories are never taken for those of another study (another storage, a study
    file deleted): the folder's ``.study`` names the study it belongs to (its first trial's start)."""
    space = {"parameters": sweep.resolved()["parameters"], "method": sweep.method}
    if sweep.method == "grid":
        space["sampler_seed"] = sweep.sampler_seed  # the order of the grid's points
    where = sweep.shown_storage or sweep.sweep_dir
    mark, first = sweep.sweep_dir / ".study", _first_trial(study)
    if mark.exists() or first is None:
        ours = mark.read_text().strip() == first if mark.exists() else not _trial_dirs(sweep.sweep_dir)
        if not ours:
            raise UserError(
                f"{sweep.path}: key 'name': {sweep.sweep_dir} holds the trials of another study than the one in "
                f"{where} (another storage, or its study file removed); choose another sweep name, or move the "
                "folder"
            )
    # The space the study keeps (another machine may have set it before its first trial); for a study made
    # before studies kept one, its folder's sweep.json.
    earlier = study.user_attrs.get("space") or (_read_json(sweep.sweep_dir / "sweep.json") if first else {})
    made = {key: earlier.get(key, value) for key, value in space.items()}
    for key, value in space.items():
        if json.dumps(made.get(key)) != json.dumps(value):  # the parameters' order too: a grid's combinations
            raise UserError(
                f"{sweep.path}: key '{key}': the study in {where} was made with another {key} "
                f"({json.dumps(made.get(key))}); run it with that, or choose another sweep name"
            )
    study.set_user_attr("space", space)
    _mark(study, sweep.sweep_dir)


def _first_trial(study: optuna.Study) -> str | None:
    """When the study's first trial started: what tells one study from another (None: no trial yet)."""
    first = min(study.get_trials(deepcopy=False), key=lambda t: t.number, default=None)
    return str(first.datetime_start) if first is not None else None


def _mark(study: optuna.Study, sweep_dir: Path) -> None:
    """``.study``: which study this folder's trial directories belong to, once it has a trial."""
    mark = sweep_dir / ".study"
    if not mark.exists() and (first := _first_trial(study)) is not None:  # read the study once, not per trial
        write_text_atomic(mark, first + "\n")


def _queue_failed(study: optuna.Study) -> None:
    """retry_failed: each failed trial queued again with its values (as Optuna queues a silent machine's)."""
    for frozen in counted(study):
        if frozen.state == TrialState.FAIL:
            history = [*frozen.system_attrs.get("retry_history", []), frozen.number]
            again = optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=frozen.params,
                distributions=frozen.distributions,
                system_attrs={"failed_trial": history[0], "retry_history": history},
            )
            study.add_trial(again)
            LOG.info(f"trial {frozen.number} failed ({frozen.user_attrs.get('error')}); queued to run again")


def _trial_dirs(sweep_dir: Path) -> list[Path]:
    return [p for p in sweep_dir.glob("trial_*") if p.is_dir()]


def _write_sweep_file(sweep_dir: Path, resolved: dict) -> None:
    """sweep.json: the checked sweep; an earlier, different one is kept as sweep.N.json."""
    path = sweep_dir / "sweep.json"
    text = json.dumps(resolved, indent=2) + "\n"
    if path.exists() and path.read_text() != text:
        n = 1
        while (sweep_dir / f"sweep.{n}.json").exists():
            n += 1
        os.replace(path, sweep_dir / f"sweep.{n}.json")
    path.write_text(text)


def run_sweep(
    sweep: Sweep,
    run_trial: RunTrial,
    workers: int = 1,
    helper_command: list[str] | None = None,
    helper_index: int | None = None,
) -> optuna.Study:
    """Run the sweep here with ``workers`` processes (this one and ``workers - 1`` helper_command's)."""
    sweep_dir = sweep.sweep_dir
    if (sweep_dir / "config.json").exists():
        raise UserError(f"{sweep.path}: key 'name': {sweep_dir} is a run's directory; choose another sweep name")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _setup_log(sweep_dir)
    try:
        study = open_study(sweep, helper_index or 0)
        if helper_index is None:
            _claim(study, sweep)
            _write_sweep_file(sweep_dir, sweep.resolved())
            if sweep.retry_failed:
                with _machine_lock(sweep_dir):
                    _queue_failed(study)
        helpers = [
            popen_tied([*helper_command, "--worker-index", str(i)], start_new_session=True) for i in range(1, workers)
        ]
        try:
            work(study, sweep, run_trial)
        except BaseException:
            for proc in helpers:  # they run in sessions of their own: pass the stop on
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            raise
        finally:
            for i, proc in enumerate(helpers, start=1):
                if proc.wait():
                    LOG.warning(f"worker {i} (pid {proc.pid}) exited with code {proc.returncode}")
        return study
    finally:
        _close_log()
