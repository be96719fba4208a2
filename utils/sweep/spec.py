"""Sweep files (keys in ``SWEEP_SCHEMA``): a base config, fixed overrides and a space per key. Every override and
every value a parameter can take is validated against the agent's schema: a mistake is one line before any trial."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import (
    REQUIRED,
    Key,
    apply_overrides,
    blame_override,
    check_monitor,
    did_you_mean,
    parse_override,
    plain_name,
    read_config,
    read_json,
    repo_path,
    to_plain,
    validate,
)
from utils.errors import UserError
from utils.run.report import flatten

METHODS = ("grid", "random", "tpe", "nsga2", "kfold")
SPACE_KINDS = ("log_uniform", "uniform", "int", "choice")
OWNED_KEYS = ("exp_name", "mode", "resume")  # set by the sweep for each trial's run: a sweep file may not set them
MAX_GRID = 100_000  # combinations of a grid (a grid is built whole before the first trial)
# Fixed overrides that may differ between the commands of one study (each machine's own folders).
PER_MACHINE = ("experiments_dir", "data_root", "num_workers")
# Config keys that change how a run is kept, logged or scheduled, not its results: a study grows across them.
NOT_RESULTS = ("exp_name", "description", "slurm", "loggers", "torch_threads", "log_every")
TRACKER_KEYS = ("mlflow_", "wandb_")  # prefixes


def _storage_check(value: str, where: str, source: str) -> None:
    if "://" not in value:
        raise UserError(
            f"{source}: key '{where}': expected a database URL such as "
            f"postgresql://user:password@host:5432/db (null: a journal file in the sweep folder), got {value!r}"
        )


def _check_metric(value: list, where: str, source: str) -> None:
    if len(value) < 2 or not all(isinstance(v, str) for v in value):
        raise UserError(
            f"{source}: key '{where}': expected a list of two or more 'max <metric>' or 'min <metric>' "
            f"(one objective: the config's monitor), got {json.dumps(value)}"
        )
    for i, text in enumerate(value):
        check_monitor(text, f"{where}[{i}]", source)


_PRUNER = 'an optuna.pruners class, "MedianPruner" or {"type": "MedianPruner", "args": {...}}; null: none'
SWEEP_SCHEMA: dict[str, Key] = {
    "name": Key(REQUIRED, str, "the study's name and its folder under the config's experiments_dir", check=plain_name),
    "config": Key(REQUIRED, str, "the base config every trial runs (relative to the repository)"),
    "overrides": Key({}, dict, 'fixed key: value pairs applied to every trial, e.g. {"max_epoch": 3}'),
    "parameters": Key({}, dict, "key: space (a list of values, or one of SPACE_KINDS: tutorial 06)"),
    "method": Key(
        None,
        str,
        "grid (every combination), random, tpe, nsga2 (Optuna's samplers) or kfold (one config on each fold); "
        "null: tpe, or nsga2 with several objectives",
        choices=METHODS,
        nullable=True,
    ),
    "metric": Key(None, list, "objectives of a Pareto front; null: the monitor", nullable=True, check=_check_metric),
    "folds": Key(None, int, "method kfold: the number of folds, a trial each (null: 5)", min=2, max=100, nullable=True),
    "trials": Key(None, int, "number of trials (grid: all combinations when null)", min=1, nullable=True),
    "enqueue": Key([], list, 'configurations tried first, e.g. [{"optimizer.args.lr": 0.1}] (random, tpe)'),
    "pruner": Key(None, (str, dict), _PRUNER, nullable=True),
    "storage": Key(
        None, str, "database URL (postgresql://...); null: a journal file", nullable=True, check=_storage_check
    ),
    "sampler_seed": Key(
        None, int, "seed of the sampler (one worker: the same trials)", min=0, max=2**31 - 1, nullable=True
    ),
    "nproc": Key(1, int, "processes per trial (under torchrun when > 1)", min=1, max=1024),
    "retry_failed": Key(False, bool, "true: the trials that failed run again (once a command), with their values"),
    "new_overrides": Key(
        False, bool, "true: the study grows under fixed overrides (or a base config) other than its earlier trials'"
    ),
}


@dataclass
class Space:
    """The values one config key takes in a sweep."""

    key: str
    kind: str  # one of SPACE_KINDS
    values: list  # the choices, or [low, high]
    log: bool = False  # int only (log_uniform is a float space with log)
    step: int = 1  # int only

    @property
    def encoded(self) -> bool:
        """Whether choices are stored in Optuna as JSON text (it keeps only None, bool, int, float, str)."""
        return self.kind == "choice" and any(isinstance(v, (list, dict)) for v in self.values)

    def grid(self) -> list:
        """Every value (Optuna's), for method=grid."""
        if self.kind == "choice":
            return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)
        return list(range(self.values[0], self.values[1] + 1, self.step))

    def distribution(self) -> Any:
        """The Optuna distribution this space draws from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.grid())
        if self.kind == "int":
            return IntDistribution(*self.values, log=self.log, step=self.step)
        return FloatDistribution(*self.values, log=self.kind == "log_uniform")

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value for an Optuna trial (a queued trial gets its own); returns the config value."""
        d = self.distribution()
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.key, d.choices))
        return (trial.suggest_int if self.kind == "int" else trial.suggest_float)(
            self.key, d.low, d.high, log=d.log, step=d.step
        )

    def decode(self, value: Any) -> Any:
        """The config value of what Optuna stored."""
        return json.loads(value) if self.encoded else value

    def override(self, value: Any) -> str:
        return f"{self.key}={json.dumps(value)}"

    def takes(self, value: Any) -> bool:
        """Whether the config value ``value`` (an ``enqueue`` point's) is one this space draws."""
        if self.kind == "choice":
            return value in self.values
        number = int if self.kind == "int" else (int, float)
        inside = isinstance(value, number) and not isinstance(value, bool) and self.values[0] <= value <= self.values[1]
        return inside and (self.kind != "int" or (value - self.values[0]) % self.step == 0)


@dataclass
class Sweep:
    """A checked sweep file; its keys (``SWEEP_SCHEMA``) read as attributes: ``sweep.method``."""

    path: str
    keys: dict  # the sweep file's keys, checked, with the command line's
    overrides: list[str]  # key=value, fixed for every trial
    spaces: list[Space]
    objectives: list[str]  # e.g. ["max valid/accuracy"]: the config's monitor, or the sweep's metric
    device: str  # the config's device ("cpu": no GPU per worker)
    sweep_dir: Path
    grid: list[dict]  # method=grid: every combination in trial order (Optuna's values)
    enqueue: list[dict]  # configurations tried first (Optuna's values)
    resolve: Callable[[list[str]], dict]  # a trial's overrides -> its resolved config
    origins: dict[str, str]  # the sweep keys set on the command line (a fixed override: overrides.KEY) -> key=value

    def __getattr__(self, name: str) -> Any:  # the sweep file's keys
        if name in SWEEP_SCHEMA:
            return self.__dict__["keys"][name]
        raise AttributeError(name)

    def resolved(self) -> dict:
        """The checked sweep as JSON (a password in the storage URL left out)."""
        spaces = {s.key: {s.kind: s.values, "log": s.log, "step": s.step} for s in self.spaces}
        return {**self.keys, "overrides": self.fixed(), "parameters": spaces, "storage": self.shown_storage}

    def origin(self, key: str, *within: str) -> str:
        """An error's start about sweep key ``key``: the key=value typed on the command line that set it (or one of
        ``within``, keys as ``origins`` names them), else the sweep file's key."""
        near = [
            t
            for k, t in self.origins.items()
            for w in within or (key,)
            if f"{w}.".startswith(f"{k}.") or k.startswith(f"{w}.")
        ]
        return f"override '{_hide_password(near[-1])}'" if near else f"{self.path}: key '{key}'"

    def fixed(self, shared: bool = False) -> dict:
        """The fixed overrides as {key: value}; ``shared``: without those each machine may set its own."""
        pairs = {".".join(parts): value for parts, value in map(parse_override, self.overrides)}
        return {k: v for k, v in pairs.items() if not (shared and _skipped(k, ()))}

    def base_values(self) -> dict:
        """The base config's own values (its file and those it inherits, not the template's defaults) as {dotted
        key: value}, less its parameters' keys, each machine's and those that do not change results."""
        values = flatten(read_config(repo_path(self.config))[0])
        return {k: v for k, v in values.items() if not _skipped(k, [s.key for s in self.spaces])}

    @property
    def shown_storage(self) -> str | None:
        """The storage URL without its password, for logs and files."""
        return _hide_password(self.storage) if self.storage else None

    @property
    def directions(self) -> list[str]:
        return ["maximize" if o.split()[0] == "max" else "minimize" for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o.split()[1] for o in self.objectives]


def _skipped(key: str, more: list[str] | tuple) -> bool:
    """Whether a study compares its trials' ``key`` (dotted) in vain: a machine's own, not a result's, or ``more``."""
    names = [*NOT_RESULTS, *PER_MACHINE, *more]
    return key.startswith(TRACKER_KEYS) or any(f"{key}.".startswith(f"{s}.") for s in names)


def _hide_password(text: str) -> str:
    """``text`` with the password of a database URL in it left out."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", text)


def _parse_space(key: str, value: Any, source: str) -> Space:
    where = f"{source}: key 'parameters.{key}'"
    value = {"choice": value} if isinstance(value, list) else value
    given = set(value) if isinstance(value, dict) else set()
    kinds, extra = [k for k in SPACE_KINDS if k in given], given - {*SPACE_KINDS, "log", "step"}
    if len(kinds) != 1 or extra or (kinds != ["int"] and len(value) != 1):
        unknown = next(iter(extra), None)
        hint = f"unknown space '{unknown}'{did_you_mean(unknown, SPACE_KINDS)}; " if unknown else ""
        raise UserError(
            f"{where}: {hint}expected a list of values or one of "
            + ", ".join(f'{{"{k}": [...]}}' for k in SPACE_KINDS)
            + f' ("log" and "step" with int), got {json.dumps(value)}'
        )
    kind, bounds = kinds[0], value[kinds[0]]
    if kind == "choice":
        if not isinstance(bounds, list) or not bounds:
            raise UserError(f"{where}: expected a non-empty list of choices, got {json.dumps(bounds)}")
        return Space(key, kind, bounds)
    number = int if kind == "int" else (int, float)
    ok = isinstance(bounds, list) and len(bounds) == 2
    ok = ok and all(isinstance(b, number) and not isinstance(b, bool) for b in bounds) and bounds[0] < bounds[1]
    if not ok:
        what = "integers" if kind == "int" else "numbers"
        raise UserError(f"{where}: {kind} expects [low, high], two {what} with low < high, got {json.dumps(bounds)}")
    log, step = value.get("log", False), value.get("step", 1)
    if type(log) is not bool or type(step) is not int or step < 1 or (log and step != 1):
        raise UserError(f'{where}: expected "log": true or false and "step": a positive integer (1 with log)')
    if (kind == "log_uniform" or log) and bounds[0] <= 0:
        raise UserError(f"{where}: a log space needs low > 0, got {json.dumps(bounds)}")
    return Space(key, kind, bounds, log, step)


def _check_keys(spaces: list[Space], fixed: list[str], source: str) -> None:
    """Keys the sweep sets for each trial are not the file's; a parameter sets all of its key: another parameter or
    a fixed override inside it would be lost."""
    keys = [s.key for s in spaces]
    for where, key in [*(("overrides", k) for k in fixed), *(("parameters", k) for k in keys)]:
        if key.split(".")[0] in OWNED_KEYS:
            raise UserError(f"{source}: key '{where}.{key}': set by the sweep for each trial; remove it")
    for key in keys:
        inside = [k for k in fixed if k == key] + [k for k in [*keys, *fixed] if k.startswith(f"{key}.")]
        if inside:
            raise UserError(
                f"{source}: key 'parameters.{key}': sets all of '{key}', so '{inside[0]}' (a parameter or a fixed "
                "override) would be lost in every trial; keep one of the two"
            )


def _pruner(value: str | dict | None, source: str) -> dict | None:
    """{"type", "args"} of an optuna.pruners class, checked by building it once."""
    if value is None:
        return None
    import optuna

    spec = {"type": value, "args": {}} if isinstance(value, str) else value
    schema = {"type": Key(REQUIRED, str, "pruner class"), "args": Key({}, dict, "its arguments")}
    spec = validate(spec, schema, source, prefix="pruner.")
    names = [n for n in dir(optuna.pruners) if n.endswith("Pruner") and n != "BasePruner"]
    if spec["type"] not in names:
        hint = did_you_mean(spec["type"], names)
        raise UserError(f"{source}: key 'pruner': unknown pruner '{spec['type']}'{hint}; known: {', '.join(names)}")
    try:
        getattr(optuna.pruners, spec["type"])(**spec["args"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: key 'pruner.args': {spec['type']} rejected {spec['args']}: {e}") from None
    return spec


def load_sweep(path: str, overrides: list[str], check_config: Callable[[str, list[str]], Any]) -> Sweep:
    """Read and check a sweep file with command-line overrides; a mistake in one of these is named as the override.

    ``check_config(config_path, overrides)`` loads and validates the base config (main.load_config),
    returning the config; every value a trial can get goes through it once here.
    """
    try:
        return _load_sweep(path, overrides, check_config)
    except UserError as e:
        raise blame_override(e, path, [t for t in overrides if t.split("=")[0].split(".")[0] in SWEEP_SCHEMA]) from None


def _load_sweep(path: str, overrides: list[str], check_config: Callable[[str, list[str]], Any]) -> Sweep:
    raw, theirs, typed, origins = read_json(path), {}, {}, {}
    if {"agent", "base"} & raw.keys() and not {"parameters", "method"} & raw.keys():
        raise UserError(
            f"{path}: a config file, not a sweep file: run it with ./run.sh {path}, or sweep it from a sweep file "
            "that names it as its config"
        )
    for text in overrides:  # a sweep key (under parameters and overrides the rest is one dotted key), else the config's
        parts, value = parse_override(text)
        if parts[0] not in SWEEP_SCHEMA or parts[0] == "overrides":  # fixed overrides: an error of one names this text
            key = ".".join(parts[1:] if parts[0] == "overrides" else parts)
            pairs = value if not key and isinstance(value, dict) else {key: value}
            typed.update({f"override '{k}={json.dumps(v)}': ": f"override '{text}': " for k, v in pairs.items()})
            origins.update({f"overrides.{k}": text for k in pairs})
        else:
            origins[".".join(parts)] = text
        if parts[0] not in SWEEP_SCHEMA:  # joins the fixed overrides
            theirs[".".join(parts)] = value
        elif parts[0] in ("parameters", "overrides") and len(parts) > 1 and isinstance(raw.get(parts[0], {}), dict):
            raw = {**raw, parts[0]: {**raw.get(parts[0], {}), ".".join(parts[1:]): value}}
        else:
            raw = apply_overrides(raw, [text])
    sweep = validate(raw, SWEEP_SCHEMA, path)
    fixed = {**sweep["overrides"], **theirs}
    base = [f"{k}={json.dumps(v)}" for k, v in fixed.items()]
    kfold, objectives = sweep["method"] == "kfold", sweep["metric"]
    method = sweep["method"] or ("nsga2" if objectives else "tpe")
    if kfold and sweep["parameters"]:
        raise UserError(f"{path}: key 'parameters': method kfold runs one config on each fold: set it in overrides")
    if not kfold and not sweep["parameters"]:
        raise UserError(f"{path}: key 'parameters': expected at least one key to sweep")
    if not kfold and sweep["folds"] is not None:
        raise UserError(f"{path}: key 'folds': goes with method kfold, got method {method}")
    if sweep["pruner"] and (kfold or objectives):  # a pruned fold would bias the mean
        why = "runs every fold to its end" if kfold else "cannot prune a study of several objectives"
        raise UserError(f"{path}: key 'pruner': {'method kfold' if kfold else 'Optuna'} {why}; remove the pruner")
    if kfold and objectives:
        raise UserError(f"{path}: key 'metric': method kfold averages one objective, the config's monitor")
    spaces = [_parse_space(k, v, path) for k, v in sweep["parameters"].items()]
    if kfold:
        sweep["folds"] = sweep["folds"] or 5
        for key in ("fold", "folds"):
            if key in fixed:
                raise UserError(f"{path}: key 'overrides.{key}': set by method kfold for each trial; remove it")
        spaces = [Space("fold", "choice", list(range(sweep["folds"])))]
    _check_keys(spaces, list(fixed), path)

    # The config as the sweep file names it when that is the same file from here (messages stay short).
    given, in_repo = Path(sweep["config"]), repo_path(sweep["config"])
    config_path = str(given if given.resolve() == in_repo.resolve() else in_repo)

    def check(extra: list[str], where: str) -> Any:
        try:
            return check_config(config_path, [*base, *extra])
        except UserError as e:
            # A key=value that is neither the config's nor the sweep's: maybe a misspelt sweep key (triales=3).
            typo = next((k for k in (key.split(".")[0] for key in theirs) if f"unknown key '{k}'" in str(e)), None)
            hint = did_you_mean(typo, list(SWEEP_SCHEMA)).replace("did you mean", "or the sweep key") if typo else ""
            ours = next((d for d in typed if str(e).startswith(d)), None)  # the command line's: named as a run's are
            if ours is not None:
                raise UserError(f"{typed[ours]}{str(e)[len(ours) :]}{hint}") from None
            if where == "overrides" and not str(e).startswith("override '"):  # the config's own (or its base's)
                where = "key 'config'"
            raise UserError(f"{path}: {where}: {e}{hint}") from None

    config = check([], "overrides")
    if kfold and "folds" not in config:
        raise UserError(
            f"{path}: key 'method': kfold needs data with folds (keys 'folds' and 'fold': the template, MNIST); "
            f"the agent {config['agent']} has none"
        )
    if kfold:
        base.append(f"folds={sweep['folds']}")
    for space in spaces:
        if space.key.split(".")[0] == "monitor":
            raise UserError(f"{path}: key 'parameters.monitor': the objective cannot change between trials")
        for value in space.values:  # every choice, or both ends of a range
            check([space.override(value)], f"key 'parameters.{space.key}' = {json.dumps(value)}")
    by_key = {s.key: s for s in spaces}
    enqueue = []
    for i, point in enumerate(sweep["enqueue"]):
        if not isinstance(point, dict) or not point.keys() <= by_key.keys():
            raise UserError(f"{path}: key 'enqueue[{i}]': expected an object of parameters ({', '.join(by_key)})")
        outside = next((k for k, v in point.items() if not by_key[k].takes(v)), None)
        if outside is not None:
            value = json.dumps(point[outside])
            raise UserError(f"{path}: key 'enqueue[{i}]': {value} is outside the space of parameters.{outside}")
        check([by_key[k].override(v) for k, v in point.items()], f"key 'enqueue[{i}]'")
        enqueue.append({k: json.dumps(v) if by_key[k].encoded else v for k, v in point.items()})

    trials, grid = sweep["trials"], []
    if method in ("grid", "kfold"):
        for space in (s for s in spaces if s.kind not in ("choice", "int")):
            what = f"a list of values, a choice or an int range, got {space.kind}"
            raise UserError(f"{path}: key 'parameters.{space.key}': method grid needs {what}")
        size = math.prod(len(s.grid()) for s in spaces)
        if size > MAX_GRID:
            raise UserError(
                f"{path}: key 'parameters': a grid of {size:,} combinations (at most {MAX_GRID:,}); "
                "sample it with method random or tpe and a number of trials"
            )
        grid = [dict(zip(by_key, combo, strict=True)) for combo in itertools.product(*(s.grid() for s in spaces))]
        if sweep["sampler_seed"] is not None:
            random.Random(sweep["sampler_seed"]).shuffle(grid)
        if trials is not None and trials > len(grid):
            what = f"{len(grid)} folds" if kfold else f"the grid has {len(grid)} combinations"
            raise UserError(f"{path}: key 'trials': {what}, got trials={trials}")
        trials = trials or len(grid)
    elif trials is None:
        raise UserError(f"{path}: missing required key 'trials' (needed by method {method})")

    keys = {**sweep, "method": method, "trials": trials, "pruner": _pruner(sweep["pruner"], path)}
    resolve = lambda more: to_plain(check_config(config_path, [*base, *more]))  # noqa: E731
    sweep_dir = repo_path(config["experiments_dir"]) / sweep["name"]
    objectives = objectives or [config["monitor"]]
    return Sweep(path, keys, base, spaces, objectives, config["device"], sweep_dir, grid, enqueue, resolve, origins)
