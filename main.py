"""Command line: ``python main.py CONFIG [key=value ...]`` (``./run.sh`` does the same).

Loads and validates the config, looks up the agent by name, runs it and finalizes it.
``--sweep FILE [key=value ...] [--workers K]`` runs a sweep's trials (utils/sweep/). Other
commands (``python main.py COMMAND --help``): ``new NAME`` makes a model from the template agent,
``new-project DIR`` copies the template, ``keys`` prints the config reference, ``report RUN_DIR ...``
plots runs and tabulates their summaries (utils/run/report.py), ``status RUN_DIR`` shows a run's SLURM jobs.
``--slurm CONFIG [key=value ...]`` submits the run as a SLURM job (utils/project/slurm.py); ``--sweep FILE --slurm``
makes each trial a job, ``--workers K`` then a job array of K sweep workers.
Exit codes: 0 success, 2 a user mistake (one line, no traceback), 1 anything else,
130 stopped by Ctrl-C/SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

try:
    from easydict import EasyDict
except ModuleNotFoundError:  # nothing installed for this Python yet: one line, not a traceback
    sys.stderr.write(f"error: {sys.executable} lacks the requirements; install them (the README's install lines)\n")
    sys.exit(2)

from agents import config_schemas, get_agent_class
from utils.config import (
    apply_overrides,
    blame_override,
    did_you_mean,
    read_config,
    repo_path,
    run_config,
    to_easydict,
    to_plain,
    validate,
)
from utils.errors import Parser, RunInterrupted, TrainingStopped, UserError
from utils.project.config_reference import keys_command
from utils.project.scaffold import new_command, new_project_command

if TYPE_CHECKING:
    import optuna

    from utils.sweep.spec import Sweep


def load_config(path: str, overrides: list[str] = ()) -> tuple[EasyDict, type]:
    """Read CONFIG (a file with its "base" chain, or a run folder: its config.json), apply overrides, validate
    against the agent's schema; returns (config, agent class). A mistake an override made names the override."""
    folder, overrides = Path(path).is_dir(), list(overrides)
    path = run_config(path)
    raw, _ = read_config(path)
    if folder:  # the run's own checkpoints (not those its training may have started from): best.pth, last.pth
        raw["resume"] = "auto"
    try:
        given = apply_overrides(raw, overrides)  # the file and the command line, before the schema's defaults
        agent = given.get("agent")
        if not isinstance(agent, str):
            raise UserError(f"{path}: missing required key 'agent' (a string naming the agent class)")
        with _imports_whole():  # torch is imported here, after the config is read
            agent_class = get_agent_class(agent, source=path)
            from agents.common_keys import COMMON_KEYS

        schema = agent_class.config_schema
        for key in given:
            if key in COMMON_KEYS and key not in schema:  # a did-you-mean would mislead here
                where = path if key in raw else "command line"
                raise UserError(f"{where}: key '{key}' does not apply to {agent_class.__name__} (not read); remove it")
        # One validation of the file and the overrides together: an override may supply a missing key or fix a bad one.
        config = validate(apply_overrides(raw, overrides, schema), schema, path)
    except UserError as e:
        raise blame_override(e, path, overrides) from None
    return to_easydict(config), agent_class


def run(path: str, overrides: list[str] = (), after_validation: Callable | None = None) -> None:
    """Load the config and run its agent to the end (what main does, minus exit codes).

    ``after_validation(epoch, metrics) -> stop`` runs after each validation (a sweep's pruner, as a callback).
    """
    config, agent_class = load_config(path, overrides)
    _freeze_imports()
    # Created in two steps so that finalize (which releases the run's lock and log files) runs even
    # when the agent's own __init__ fails, e.g. on missing data.
    agent = agent_class.__new__(agent_class)
    try:
        try:
            agent.__init__(config)
            if after_validation is not None:
                from utils.training.callbacks import AfterValidation

                agent.callbacks.append(AfterValidation(after_validation))
            agent.run()
        finally:
            agent.finalize()
    except UserError as e:
        raise _at_config(e, path, overrides) from None


def _at_config(error: UserError, path: str, overrides: list[str]) -> UserError:
    """Agents report config problems found at build time as "config: key ...": named here at the file, or the
    override, that set the key."""
    if not str(error).startswith("config: "):
        return error
    where = run_config(path)
    return blame_override(UserError(f"{where}: {str(error)[len('config: ') :]}"), where, list(overrides))


@functools.cache
def _freeze_imports() -> None:
    """Once per process, after the agent's modules are imported: move the objects that exist now (torch's 300,000)
    to the garbage collector's permanent generation, so that a full collection skips them (the first one of
    a run cost 0.18 CPU-seconds here: benchmarks/startup.py) and loader workers forked later share their
    pages. Garbage made after this call is collected as usual."""
    gc.freeze()


def one_line(text: str) -> str:
    """The message with control characters (newlines included) escaped, so it stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@contextlib.contextmanager
def _imports_whole() -> Iterator[None]:
    """Ctrl-C waits until the imports inside are done, then raises as usual: a KeyboardInterrupt in the middle of
    numpy's or torch's import leaves a module half-made, and the next import fails with a traceback."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _saved_after_signal(config: dict, since: float) -> bool:
    """Whether the run's processes stopped by saving (summary.json marked interrupted after ``since``)."""
    summary = repo_path(config["experiments_dir"]) / config["exp_name"] / "summary.json"
    try:
        return summary.stat().st_mtime >= since and json.loads(summary.read_text())["status"] == "interrupted"
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def new(argv: list[str]) -> int:
    def schemas() -> dict:
        import agents

        importlib.reload(agents)  # the registry as new_command wrote it
        return agents.config_schemas()

    return new_command(schemas, argv)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(message + "\n")
    return code


def describe_keys(path: str, overrides: list[str] = ()) -> str:
    """Every key the config's agent reads: its value in this config, and what it means."""
    config, agent_class = load_config(path, overrides)
    from utils.training.callbacks import build_callback

    try:  # a callback's class is found only when built: a name typed wrong is one line here, as in a run
        for i, spec in enumerate(config.get("callbacks") or []):
            build_callback(spec, f"callbacks[{i}]")
    except UserError as e:
        raise _at_config(e, path, overrides) from None
    _, sources = read_config(run_config(path))
    for text in overrides:
        key, nested = text.partition("=")[0].split(".")[0], "." in text.partition("=")[0]
        sources[key] = [*sources.get(key, []), "command line"] if nested else ["command line"]
    lines = [f"{agent_class.__name__} ({path}): key = value  # meaning [from: the file it was set in]"]
    for key, spec in agent_class.config_schema.items():
        where = f"  [from: {' then '.join(sources[key])}]" if key in sources else "  [default]"
        lines.append(f"  {key} = {json.dumps(config[key])}  # {spec.doc}{where}")
    return "\n".join(lines)


def sweep(
    path: str,
    overrides: list[str],
    workers: int = 1,
    worker_index: int | None = None,
    on_slurm: bool = False,
    wait: bool = False,
) -> int:
    """Run the sweep file's trials (this process and ``workers - 1`` more); 1 when no trial completed.

    ``on_slurm``: each trial is a SLURM job (its settings: the config's ``slurm`` key) that a worker waits for;
    with ``workers`` > 1, the workers are a job array instead (``wait``: for its end).
    """
    from utils.sweep.spec import load_sweep
    from utils.sweep.study import run_sweep
    from utils.sweep.subprocess import run_command

    spec = load_sweep(path, overrides, lambda config, more: load_config(config, more)[0])
    config = str(repo_path(spec.config))
    first = [*spec.overrides, *(s.override(s.values[0]) for s in spec.spaces)]

    def check_first() -> None:
        names = _check_agent(config, first)
        for i, metric in enumerate(spec.metrics):  # one objective: the monitor, checked with the agent
            if metric not in names:
                hint = did_you_mean(metric, names)
                raise UserError(f"{path}: key 'metric[{i}]': no metric '{metric}' (reported: {', '.join(names)}){hint}")

    if on_slurm:
        from utils.project import slurm

        if spec.nproc != 1:
            raise UserError(f"{path}: nproc goes without --slurm: a job's processes are slurm.tasks_per_node x nodes")
        settings = _slurm_settings(config, spec.overrides)
        slurm.check_cluster(settings, spec.config)
        if workers > 1 and worker_index is None:
            return _sweep_array(spec, settings, path, overrides, workers, wait, check_first)
        # Each trial is a process that submits its job and waits for it (pruned: SIGTERM, which cancels the job).
        command = [sys.executable, str(Path(__file__).resolve()), "--slurm", "--wait", config]
        run_trial = functools.partial(run_command, command)
    elif spec.nproc == 1:
        run_trial = functools.partial(_run_trial, config)
    else:  # several processes per trial: each trial is its own torchrun
        command = [sys.executable, str(Path(__file__).resolve()), "--nproc", str(spec.nproc), config]
        run_trial = functools.partial(run_command, command)
    helper = [sys.executable, str(Path(__file__).resolve()), "--sweep", path, *overrides]
    # SIGTERM stops a sweep as Ctrl-C does: the trial running saves (its own process, or the agent's handler).
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        study = run_sweep(spec, run_trial, workers, helper, worker_index, check_first)
    finally:
        signal.signal(signal.SIGTERM, before)
    if worker_index is not None:  # a helper: the first worker writes the results
        return 0
    return _sweep_end(study, spec)


def _sweep_end(study: optuna.Study, spec: Sweep) -> int:
    """results.csv and the sweep's line (its trials' states, the best); 1 when no trial completed."""
    from utils.sweep.results import write_results
    from utils.sweep.study import latest

    found = write_results(study, spec)
    states = collections.Counter(t.state.name.lower() for t in latest(study))  # tries run again left out
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    if states["fail"] and not spec.retry_failed:
        counts += " (failed trials are not run again unless retry_failed=true)"
    if found is None:
        return _fail(f"sweep {spec.name}: {counts}; no trial completed: see {spec.sweep_dir / 'results.csv'}", 1)
    sys.stderr.write(f"sweep {spec.name}: {counts}; {found}; results in {spec.sweep_dir}\n")
    return 0


def _sweep_array(
    spec: Sweep, settings: dict, path: str, overrides: list[str], workers: int, wait: bool, check: Callable[[], None]
) -> int:
    """``--sweep FILE --slurm --workers K``: the study made here, then a job array of K sweep workers that join it
    (task 0 is the first worker: it writes results.csv at the end); ``wait``: for them, then the sweep's line."""
    import shutil

    from utils.project import slurm
    from utils.sweep.study import create, open_study

    slurm.check_worker(settings, spec.config)
    check()
    new = not spec.sweep_dir.exists()
    create(spec)  # before any worker starts: each finds the study, its grid queued
    entry = importlib.import_module("main").sweep_task  # by name, as slurm_task
    calls = [(str(Path(path).resolve()), list(overrides), i) for i in range(workers)]
    command = ["--sweep", path, "--slurm", "--workers", str(workers), *overrides]
    try:
        job_id = slurm.submit(entry, calls, spec.name, settings, spec.sweep_dir, spec.config, command)
    except UserError:
        if new:  # nothing submitted: nothing left behind
            shutil.rmtree(spec.sweep_dir, ignore_errors=True)
        raise
    last = f"{job_id}_{workers - 1}"
    sys.stdout.write(
        f"submitted job array {job_id}: sweep {spec.name}, {workers} workers (tasks {job_id}_0 ... {last})\n"
        f"  follow: tail -f {spec.sweep_dir / 'sweep.log'}   state: ./run.sh status {spec.sweep_dir}   "
        f"cancel: scancel {job_id}\n"
    )
    if not wait:
        return 0
    before = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the wait as Ctrl-C does: scancel
    try:
        code = slurm.wait_for_job(job_id, spec.sweep_dir)
    finally:
        signal.signal(signal.SIGTERM, before)
    if code in (2, 130):
        return code
    return _sweep_end(open_study(spec)[0], spec) or code


def sweep_task(path: str, overrides: list[str], index: int) -> None:
    """A task of the job array --sweep --slurm --workers submitted: a sweep worker (task 0: the first, which writes
    the results), its trials in this process; requeued when SLURM warns (its trial then saves and is queued again)."""
    from utils.project.slurm import run_requeued

    worker = ["--worker-index", str(index)] if index else []
    run_requeued(lambda: main(["--sweep", path, *overrides, *worker]))


def _check_agent(config: str, overrides: list[str]) -> list[str]:
    """Build a trial's agent (its data, model, device) and check its monitor in a throwaway folder, as a run
    does before it trains: a mistake found there is one line before any trial, not a failure of each.
    Returns the names of the metrics the agent reports."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            resolved, agent_class = load_config(config, [*overrides, f"experiments_dir={tmp}", "exp_name=check"])
            agent = agent_class.__new__(agent_class)
            try:
                agent.__init__(resolved)
                agent.monitor.check(agent.metric_names(), agent_class.__name__)
                return agent.metric_names()
            finally:
                agent.finalize()
        except UserError as e:
            raise UserError(f"{config}: {str(e).removeprefix('config: ')}") from None


def _run_trial(config: str, overrides: list[str], run_dir: Path, after_validation: Callable | None) -> None:
    run(config, overrides, after_validation)


def report_main(argv: list[str]) -> int:
    """``python main.py report RUN_DIR [RUN_DIR ...] [--out DIR]``: curves.png and report.md."""
    from utils.run.report import write_report

    parser = Parser(prog="main.py report", description="Plots and a table of finished runs.")
    parser.add_argument("runs", nargs="+", help="run directories, or a sweep's directory (all of its trials)")
    parser.add_argument(
        "--out",
        help="output folder, new, empty or an earlier report's (default: report/ in the run's folder, or in their "
        "parent); a folder holding other files is refused",
    )
    args = parser.parse_args(argv)
    dirs = [Path(r) for r in args.runs]
    common = dirs[0] if len(dirs) == 1 else Path(os.path.commonpath([d.resolve() for d in dirs]))
    out = Path(args.out) if args.out else common / "report"
    try:
        text = write_report(dirs, out)
    except UserError as e:
        return _fail(f"error: {one_line(str(e))}", 2)
    sys.stdout.write(text)
    sys.stderr.write(f"report written to {out}\n")
    return 0


def submit_slurm(path: str, overrides: list[str]) -> tuple[str, Path]:
    """``--slurm``: check the config and its cluster settings, submit the run as a job, say how to follow it."""
    from utils.project import slurm

    config, _ = load_config(path, overrides)
    run_dir = repo_path(config.experiments_dir) / config.exp_name
    # cloudpickle stores a function of __main__ by value: submit the importable module's one, by name.
    entry = importlib.import_module("main").slurm_task
    try:
        settings = _slurm_settings(path, overrides)
        frozen = slurm.frozen_config(to_plain(config), settings)
        job_id = slurm.submit(
            entry, [(frozen, str(run_dir))], config.exp_name, settings, run_dir, path, ["--slurm", path, *overrides]
        )
    except UserError as e:  # a setting typed on the command line (checked across keys, the partition) as typed
        raise blame_override(e, path, list(overrides)) from None
    tasks = settings["nodes"] * slurm.tasks_per_node(settings)
    logs = run_dir / "slurm" / f"{job_id}_0_log.err"  # the run's own lines and errors (stdout: submitit's)
    sys.stdout.write(
        f"submitted job {job_id}: {config.exp_name} on {settings['nodes']} node(s), {tasks} process(es)\n"
        f"  follow: tail -f {logs}   state: ./run.sh status {run_dir}   cancel: scancel {job_id}\n"
    )
    return job_id, run_dir


def _slurm_settings(path: str, overrides: list[str]) -> dict:
    """The cluster settings of CONFIG with overrides: its ``slurm`` block (the keys given, over its file's)."""
    from utils.project import slurm

    return slurm.resolve(apply_overrides(read_config(run_config(path))[0], list(overrides)).get("slurm"), path)


def slurm_task(config: dict, run_dir: str) -> None:
    """A task of a job --slurm submitted: one process of the run of ``config``; requeued when SLURM warns."""
    from utils.project.slurm import run_task

    run_task(config, run_dir, lambda path: main([path]))


def status_main(argv: list[str]) -> int:
    """``python main.py status RUN_DIR``: the state of the run's SLURM jobs and where their logs are."""
    from utils.project.slurm import status

    parser = Parser(prog="main.py status", description="The SLURM jobs of a run directory.")
    parser.add_argument("run_dir", help="the run directory, e.g. experiments/example_exp_0")
    args = parser.parse_args(argv)
    sys.stdout.write(status(Path(args.run_dir)) + "\n")
    return 0


# python main.py COMMAND ...: each takes the rest of the arguments and returns an exit code.
COMMANDS = {
    "new": new,
    "new-project": partial(new_project_command, config_schemas),
    "keys": partial(keys_command, config_schemas),
    "report": report_main,
    "status": status_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        try:
            return COMMANDS[argv[0]](argv[1:])
        except UserError as e:
            return _fail(f"error: {one_line(str(e))}", 2)
    parser = Parser(
        prog="main.py",
        description="Train or test the agent a JSON config names. "
        f"Other commands: {', '.join(COMMANDS)} (python main.py COMMAND --help).",
    )
    parser.add_argument("config", nargs="?", help="path to a JSON config, e.g. configs/example_exp_0.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_epoch=3 optimizer.args.lr=0.05")
    parser.add_argument("--keys", action="store_true", help="list the config's keys, values and meanings, then exit")
    parser.add_argument(
        "--nproc", type=int, metavar="N", help="train in N processes under torchrun (DDP); with --sweep: per trial"
    )
    parser.add_argument(
        "--slurm",
        action="store_true",
        help="submit the run as a SLURM job (the config's slurm key); with --sweep: each trial",
    )
    parser.add_argument("--wait", action="store_true", help="with --slurm: wait for the job, exit with its run's code")
    parser.add_argument("--sweep", metavar="FILE", help="run a sweep's trials (key=value: sweep or config keys)")
    parser.add_argument("--workers", type=int, default=1, help="with --sweep: worker processes on this machine")
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # a --workers helper's number
    args = parser.parse_intermixed_args(argv)
    overrides = ([args.config] if args.config else []) + args.overrides
    try:
        if args.sweep:
            if args.workers < 1:
                raise UserError(f"--workers: expected a positive integer, got {args.workers}")
            extra = [f"nproc={args.nproc}"] if args.nproc else []
            if args.wait and not args.slurm:
                parser.error("--wait goes with --slurm")
            return sweep(args.sweep, overrides + extra, args.workers, args.worker_index, args.slurm, args.wait)
        if args.config is None:
            parser.error("the following arguments are required: config (or --sweep FILE)")
        if args.workers != 1:
            parser.error("--workers goes with --sweep")
        if args.wait and not args.slurm:
            parser.error("--wait goes with --slurm")
        if args.slurm:
            if args.nproc is not None:
                raise UserError("--nproc goes without --slurm: a job's processes are slurm.tasks_per_node x nodes")
            job_id, run_dir = submit_slurm(args.config, args.overrides)
            if not args.wait:
                return 0
            from utils.project.slurm import wait_for_job

            before = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the wait as Ctrl-C does: scancel
            try:
                return wait_for_job(job_id, run_dir)
            finally:
                signal.signal(signal.SIGTERM, before)
        if args.keys:
            try:
                sys.stdout.write(describe_keys(args.config, args.overrides) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:  # piped into head or grep -m: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        nproc = 1 if args.nproc is None else args.nproc
        if nproc < 1:
            raise UserError(f"--nproc: expected a positive integer, got {nproc}")
        if nproc > 1:
            config, _ = load_config(args.config, args.overrides)  # a mistake is one line here, not one per process
            from utils.training import distributed  # imports torch: after the config's check, inside Ctrl-C's handling

            started = time.time() - 1  # file times may be rounded down to the second
            code = distributed.launch(nproc, [__file__, args.config, *args.overrides])
            if code == 130 and config.mode == "train" and not _saved_after_signal(config, started):
                return _fail(
                    "error: stopped by a signal, but torchrun ended the processes before they saved a checkpoint "
                    f"(they save within log_every steps; its wait is TORCH_ELASTIC_SHUTDOWN_TIMEOUT="
                    f"{os.environ.get('TORCH_ELASTIC_SHUTDOWN_TIMEOUT')} s): the run resumes from its last checkpoint",
                    1,
                )
            return code
        run(args.config, args.overrides)
    except UserError as e:
        return _fail(f"error: {one_line(str(e))}", 2)
    except TrainingStopped as e:
        return _fail(f"error: {one_line(str(e))}", 1)
    except RunInterrupted as e:
        return _fail(str(e), 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before a run's own handler is installed (while torch is imported)
        sys.exit(_fail("interrupted", 130))
