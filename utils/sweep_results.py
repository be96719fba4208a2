"""What a sweep leaves for people: results.csv, best_config.json (runnable) and PNG plots, from the study."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from utils import report
from utils.config import apply_overrides, read_json, repo_path
from utils.recorder import write_bytes_atomic, write_text_atomic
from utils.sweep import trial_name, trials_of
from utils.sweep_spec import Sweep


def write_results(study: optuna.Study, sweep: Sweep) -> FrozenTrial | None:
    """results.csv, best_config.json and the plots; returns the best complete trial (None: there is none)."""
    trials = trials_of(study)
    _write_csv(trials, sweep)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        best = (max if sweep.direction == "maximize" else min)(complete, key=lambda t: t.value)
        write_text_atomic(sweep.sweep_dir / "best_config.json", json.dumps(best_config(sweep, best), indent=2) + "\n")
    try:  # as for a run's curves.png: a plot never costs the results
        _plot_objective(trials, sweep, sweep.sweep_dir / "objective.png")
        _plot_parameters(trials, sweep, sweep.sweep_dir / "parameters.png")
        ranked = sorted(complete, key=lambda t: t.value, reverse=sweep.direction == "maximize")
        dirs = (sweep.sweep_dir / trial_name(t.number) for t in ranked[:3])
        runs = [report.read_run(d) for d in dirs if d.exists()]
        if runs:
            valid = [m for m in report.metric_names(runs) if m.startswith("valid/")]
            report.plot_curves(runs, report.labels(runs), sweep.sweep_dir / "best_curves.png", valid or None)
    except Exception as e:  # noqa: BLE001 (matplotlib missing, a font...: results.csv and best_config.json stand)
        sys.stderr.write(f"warning: {sweep.sweep_dir}: plots not written: {type(e).__name__}: {e}\n")
    return best


def _values(trial: FrozenTrial, sweep: Sweep) -> dict:
    return {s.key: s.decode(trial.params[s.key]) for s in sweep.spaces if s.key in trial.params}


def _write_csv(trials: list[FrozenTrial], sweep: Sweep) -> None:
    keys = [s.key for s in sweep.spaces]
    columns = ["number", *keys, "objective", "state", "epochs", "wall_seconds", "run_dir", "error"]
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=columns)
    out.writeheader()
    retried_as = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    for t in trials:
        values = _values(t, sweep)
        error = t.user_attrs.get("error")
        if t.state == TrialState.FAIL and error is None:  # failed by the study, not by a worker: no heartbeat
            error = "no heartbeat from its machine"
        if t.number in retried_as:
            error = f"{error}; run again as trial {retried_as[t.number]}"
        out.writerow(
            {
                "number": t.number,
                **{k: _cell(values.get(k)) for k in keys},
                "objective": t.value if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                "state": t.state.name.lower(),
                "epochs": t.user_attrs.get("epochs"),
                "wall_seconds": t.user_attrs.get("wall_seconds"),
                "run_dir": sweep.sweep_dir / trial_name(t.number),
                "error": error,
            }
        )
    write_text_atomic(sweep.sweep_dir / "results.csv", buf.getvalue())


def _cell(value: object) -> object:
    """A parameter value for the CSV: exact numbers, JSON for lists and objects."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def best_config(sweep: Sweep, best: FrozenTrial) -> dict:
    """The base config with the sweep's overrides and the best trial's values: ``./run.sh best_config.json``."""
    raw = read_json(repo_path(sweep.config))
    values = [s.override(v) for s, v in zip(sweep.spaces, _values(best, sweep).values(), strict=True)]
    config = apply_overrides(raw, [*sweep.overrides, *values])
    config["exp_name"] = f"{sweep.name}_best"
    return config


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    write_bytes_atomic(path, buf.getvalue())


def _scored(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in trials if t.state in done and t.value is not None and math.isfinite(t.value)]


def _plot_objective(trials: list[FrozenTrial], sweep: Sweep, path: Path) -> None:
    """Each trial's objective (pruned: its last reported value) and the running best."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    scored = _scored(trials)
    for state, marker, colour in ((TrialState.COMPLETE, "o", "C0"), (TrialState.PRUNED, "x", "0.5")):
        points = [(t.number, t.value) for t in scored if t.state == state]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, color=colour, label=state.name.lower())
    best, steps = None, []
    pick = max if sweep.direction == "maximize" else min
    for t in sorted((t for t in scored if t.state == TrialState.COMPLETE), key=lambda t: t.number):
        best = t.value if best is None else pick(best, t.value)
        steps.append((t.number, best))
    if steps:
        steps.append((max(t.number for t in trials), best))  # drawn on to the last trial
        ax.step(*zip(*steps, strict=True), where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(sweep.metric)
    ax.set_title(f"{sweep.name}: {sweep.direction} {sweep.metric}")
    ax.grid(alpha=0.3)
    if scored:  # (no trial scored yet: nothing to name)
        ax.legend(fontsize="small")
    _save(fig, path)


def _plot_parameters(trials: list[FrozenTrial], sweep: Sweep, path: Path) -> None:
    """The objective against each parameter (log axis for log_uniform, positions for choices)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(4.5 * len(sweep.spaces), 3.8), layout="constrained")
    axes = fig.subplots(1, len(sweep.spaces), squeeze=False)[0]
    scored = _scored(trials)
    for ax, space in zip(axes, sweep.spaces, strict=True):
        for state, marker, colour in ((TrialState.COMPLETE, "o", "C0"), (TrialState.PRUNED, "x", "0.5")):
            points = [(t.params[space.key], t.value) for t in scored if t.state == state and space.key in t.params]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if space.kind == "choice":
                options = [json.dumps(v) if space.encoded else v for v in space.values]
                xs = [options.index(x) for x in xs]
            ax.scatter(xs, ys, marker=marker, color=colour, label=state.name.lower())
        if space.kind == "choice":
            ax.set_xticks(range(len(space.values)), [report.fmt(v) for v in space.values], fontsize="small")
        if space.kind == "log_uniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labels on the decades only
        ax.set_xlabel(space.key)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
    _save(fig, path)
