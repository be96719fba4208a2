"""What a sweep leaves for people: results.csv, the best trial's own config (best_config.json; several objectives:
one per trial of the Pareto front, pareto_front/trial_NNNN.json) and Optuna's plots."""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from utils.run.files import write_bytes_atomic, write_text_atomic
from utils.sweep.spec import Sweep
from utils.sweep.study import first_number, latest, trial_name, tries

# optuna.visualization.matplotlib's views (plot_<name>), each saved as <name>.png next to results.csv.
PLOTS = ("optimization_history", "slice", "param_importances", "parallel_coordinate", "intermediate_values")


def write_results(study: optuna.Study, sweep: Sweep) -> str | None:
    """results.csv, the best configs and the plots; returns what the study found, in a line (None: no trial
    completed): the best trial, the Pareto front, or the folds' mean and standard deviation (method kfold)."""
    complete = [t for t in latest(study) if t.state == TrialState.COMPLETE]
    front = study.best_trials if complete and len(sweep.objectives) > 1 else []
    values = [t.value for t in complete] if sweep.method == "kfold" else []
    spread = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
    _write_csv(tries(study), sweep, {t.number for t in front}, spread)
    _plot(study, sweep)
    if not complete:
        return None
    if sweep.method == "kfold":
        mean, std = spread
        return f"{sweep.metrics[0]} {mean:.4g} ± {std:.2g} (mean ± standard deviation of {len(values)} folds)"
    if front:
        folder = sweep.sweep_dir / "pareto_front"  # rewritten each time: the front of the whole study
        folder.mkdir(exist_ok=True)
        for old in folder.glob("trial_*.json"):
            old.unlink()
        for t in front:
            write_text_atomic(folder / f"{trial_name(t.number)}.json", _config(sweep, t, f"_trial_{t.number}"))
        numbers = ", ".join(str(t.number) for t in sorted(front, key=lambda t: t.number))
        command = f"{_run(front[0])} {folder}/trial_NNNN.json"
        return f"Pareto front ({', '.join(sweep.objectives)}): trials {numbers}, each runs with {command}"
    best, where = study.best_trial, sweep.sweep_dir / "best_config.json"
    write_text_atomic(where, _config(sweep, best, "_best"))
    return f"best trial {best.number}, {sweep.metrics[0]} {best.value:.4g} (its config runs with {_run(best)} {where})"


def _run(trial: FrozenTrial) -> str:
    """The command that runs a trial's config (``--nproc N`` as the trial ran)."""
    nproc = trial.user_attrs.get("nproc", 1)
    return f"./run.sh{f' --nproc {nproc}' if nproc > 1 else ''}"


def _write_csv(trials: list[FrozenTrial], sweep: Sweep, front: set[int], spread: tuple | None) -> None:
    keys, attrs = [s.key for s in sweep.spaces], ["epochs", "wall_seconds", "host", "gpus"]
    objectives = sweep.metrics if len(sweep.objectives) > 1 else ["objective"]
    more = ["pareto"] if len(sweep.objectives) > 1 else []
    columns = ["number", *keys, *objectives, *more, "state", *attrs, "run_dir", "error"]
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=columns)
    out.writeheader()
    again = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    decode = {s.key: s.decode for s in sweep.spaces}
    for t in trials:
        # A trial failed by the study, not by a worker, has no error of its own: no heartbeat from its machine.
        error = t.user_attrs.get("error", "no heartbeat from its machine") if t.state == TrialState.FAIL else None
        if t.number in again:
            error = f"{error}; run again as trial {again[t.number]}"
        values = {k: decode[k](v) for k, v in t.params.items() if k in decode}  # the config's, not Optuna's text
        out.writerow(
            {
                "number": t.number,
                **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()},
                **dict(zip(objectives, t.values or [None] * len(objectives), strict=True)),
                **({"pareto": t.number in front} if more else {}),
                "state": t.state.name.lower(),
                **{k: t.user_attrs.get(k) for k in attrs},
                "run_dir": t.user_attrs.get("run_dir", sweep.sweep_dir / trial_name(first_number(t))),
                "error": error,
            }
        )
    for name, value in zip(("mean", "std"), spread or (), strict=False):  # kfold: the complete folds'
        out.writerow({"number": name, "objective": value})
    write_text_atomic(sweep.sweep_dir / "results.csv", buf.getvalue())


def _config(sweep: Sweep, trial: FrozenTrial, suffix: str) -> str:
    """A trial's own resolved config as a run of its own (exp_name: the sweep's name and ``suffix``)."""
    return json.dumps({**trial.user_attrs["config"], "exp_name": f"{sweep.name}{suffix}"}, indent=2) + "\n"


def _plot(study: optuna.Study, sweep: Sweep) -> None:
    """Optuna's views of the study as PNG; one that cannot be drawn (a font, too few trials) is a warning: a plot
    never costs the results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    # A view with nothing to compare is left out: importances and parallel coordinates compare parameters (one
    # parameter: the slice shows it all; fANOVA's forest took most of the plots' time); curves need two epochs.
    empty = {"param_importances", "parallel_coordinate"} if len(sweep.spaces) < 2 else set()
    if not any(len(t.intermediate_values) > 1 for t in study.trials):
        empty.add("intermediate_values")
    names = tuple(n for n in PLOTS if n not in empty)
    if len(sweep.objectives) > 1 or sweep.method == "kfold":  # kfold: the folds' values, alone
        names = ("pareto_front",) if len(sweep.objectives) > 1 else ("intermediate_values",)
    for name in set(PLOTS) - set(names):  # a view of the study before it grew
        (sweep.sweep_dir / f"{name}.png").unlink(missing_ok=True)
    for name in names:
        try:
            with warnings.catch_warnings():  # "experimental", "too few trials to compute importances"
                warnings.simplefilter("ignore")
                axes = getattr(views, f"plot_{name}")(study)
            fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")  # long parameter names: Optuna clips them
            plt.close(fig)
            write_bytes_atomic(sweep.sweep_dir / f"{name}.png", buf.getvalue())
        except Exception as e:  # noqa: BLE001 (a font, a view that needs more trials: results.csv stands)
            sys.stderr.write(f"warning: {sweep.sweep_dir}: {name}.png not written: {type(e).__name__}: {e}\n")
