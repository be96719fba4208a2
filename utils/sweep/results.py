"""What a sweep leaves for people: results.csv, best_config.json (the best trial's own config) and Optuna's plots."""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from utils.run.files import write_bytes_atomic, write_text_atomic
from utils.sweep.spec import Sweep
from utils.sweep.study import first_number, latest, trial_name, tries

# optuna.visualization.matplotlib's views (plot_<name>), each saved as <name>.png next to results.csv.
PLOTS = ("optimization_history", "slice", "param_importances", "parallel_coordinate", "intermediate_values")


def write_results(study: optuna.Study, sweep: Sweep) -> FrozenTrial | None:
    """results.csv, best_config.json and the plots; returns the best complete trial (None: there is none)."""
    _write_csv(tries(study), sweep)
    complete = [t for t in latest(study) if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        best = (max if sweep.direction == "maximize" else min)(complete, key=lambda t: t.value)
        write_text_atomic(sweep.sweep_dir / "best_config.json", json.dumps(best_config(sweep, best), indent=2) + "\n")
    _plot(study, sweep)
    return best


def _write_csv(trials: list[FrozenTrial], sweep: Sweep) -> None:
    keys = [s.key for s in sweep.spaces]
    columns = ["number", *keys, "objective", "state", "epochs", "wall_seconds", "host", "gpus", "run_dir", "error"]
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=columns)
    out.writeheader()
    again = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    decode = {s.key: s.decode for s in sweep.spaces}
    for t in trials:
        error = None
        if t.state == TrialState.FAIL:  # failed by the study, not by a worker: no heartbeat from its machine
            error = t.user_attrs.get("error", "no heartbeat from its machine")
        if t.number in again:
            error = f"{error}; run again as trial {again[t.number]}"
        values = {k: decode[k](v) for k, v in t.params.items() if k in decode}
        out.writerow(
            {
                "number": t.number,
                **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()},
                "objective": t.value if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
                "state": t.state.name.lower(),
                "epochs": t.user_attrs.get("epochs"),
                "wall_seconds": t.user_attrs.get("wall_seconds"),
                "host": t.user_attrs.get("host"),
                "gpus": t.user_attrs.get("gpus"),
                "run_dir": t.user_attrs.get("run_dir", sweep.sweep_dir / trial_name(first_number(t))),
                "error": error,
            }
        )
    write_text_atomic(sweep.sweep_dir / "results.csv", buf.getvalue())


def best_config(sweep: Sweep, best: FrozenTrial) -> dict:
    """The best trial's own resolved config, as a run of its own: ``./run.sh best_config.json``."""
    return {**best.user_attrs["config"], "exp_name": f"{sweep.name}_best"}


def _plot(study: optuna.Study, sweep: Sweep) -> None:
    """Optuna's views of the study as PNG; one that cannot be drawn (matplotlib missing, too few trials) is
    a warning: a plot never costs the results."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as views
    except ImportError as e:
        sys.stderr.write(f"warning: {sweep.sweep_dir}: plots not written: {e}\n")
        return
    for name in PLOTS:
        try:
            with warnings.catch_warnings():  # "experimental", "too few trials to compute importances"
                warnings.simplefilter("ignore")
                axes = getattr(views, f"plot_{name}")(study)
            fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            plt.close(fig)
            write_bytes_atomic(sweep.sweep_dir / f"{name}.png", buf.getvalue())
        except Exception as e:  # noqa: BLE001 (a font, a view that needs more trials: results.csv stands)
            sys.stderr.write(f"warning: {sweep.sweep_dir}: {name}.png not written: {type(e).__name__}: {e}\n")
