"""Plots and a side-by-side table of runs, from the files every run writes (metrics.csv, config.json, summary.json).

``python main.py report RUN_DIR [RUN_DIR ...]`` writes them; every run draws its own ``out/curves.png``
at its end. Matplotlib draws through its Agg canvas (``matplotlib.figure.Figure``): no display, no
pyplot state shared with the user's code.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.run.files import write_bytes_atomic

AXES = ("epoch", "step")
# Config keys that differ between any two runs without saying anything about them.
NOT_IN_LEGENDS = ("exp_name", "experiments_dir", "description")
OUTPUTS = ("curves.png", "report.md")
HEADER = "# Report\n\n![curves](curves.png)\n"  # how every report.md of ours begins


@dataclass
class RunFiles:
    """What one run directory holds for a report."""

    path: Path
    name: str
    config: dict[str, Any]  # flattened: {"optimizer.args.lr": 0.1, ...}
    rows: list[dict[str, float]]  # metrics.csv, numbers only
    summary: dict


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a JSON file") from None
    return data if isinstance(data, dict) else {}


def read_run(path: Path) -> RunFiles:
    rows = []
    if (path / "metrics.csv").exists():
        with open(path / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: v for k, v in ((k, _number(v)) for k, v in row.items() if k) if v is not None})
    return RunFiles(path, path.name, flatten(_read_json(path / "config.json")), rows, _read_json(path / "summary.json"))


def is_run(path: Path) -> bool:
    return (path / "metrics.csv").exists() or (path / "summary.json").exists()


def find_runs(paths: list[str | Path]) -> list[Path]:
    """The run directories among ``paths``; a directory of runs stands for all the runs below it (a sweep's
    trials, experiments/ with its runs and sweeps)."""
    found = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{p}: not a directory (expected a run directory such as experiments/mnist_exp_0)")
        inside = _runs_below(p)
        if not inside:
            raise UserError(f"{p}: holds no metrics.csv or summary.json, nor run directories that do")
        found.extend(run for run in inside if run.resolve() not in map(Path.resolve, found))
    return found


def _runs_below(path: Path) -> list[Path]:
    """``path`` when it is a run, else the runs in its folders at any depth (a run's own folders not searched)."""
    if is_run(path):
        return [path]
    return [run for child in sorted(path.iterdir()) if child.is_dir() for run in _runs_below(child)]


def name_apart(runs: list[RunFiles]) -> None:
    """Runs of one folder name (trial_0000 of two sweeps) are named with as many parent folders as tell them apart."""
    depth = 1
    while len({r.path.resolve().parts[-depth:] for r in runs}) < len(runs):
        depth += 1
    for run in runs:
        run.name = "/".join(run.path.resolve().parts[-depth:])


def differing_keys(configs: list[dict[str, Any]], leave_out: tuple[str, ...] = NOT_IN_LEGENDS) -> list[str]:
    """Keys of flat configs whose values are not the same in every config (``leave_out`` aside)."""
    keys = sorted({k for c in configs for k in c} - set(leave_out))
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]


def labels(runs: list[RunFiles]) -> list[str]:
    """Each run's name and the config values in which the runs differ (``lr=0.01`` for ``optimizer.args.lr``)."""
    keys = differing_keys([r.config for r in runs])
    last = [k.split(".")[-1] for k in keys]
    short = dict(zip(keys, [s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)], strict=True))
    return [" ".join([r.name, *(f"{short[k]}={fmt(r.config.get(k))}" for k in keys)]) for r in runs]


def fmt(value: Any) -> str:
    """A config value or figure for a legend or a table cell (floats to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if not isinstance(value, str) else value


def metric_names(runs: list[RunFiles]) -> list[str]:
    return list(dict.fromkeys(k for r in runs for row in r.rows for k in row if k not in AXES))


def _colours(n: int) -> list:
    """One colour per run, all different: matplotlib's qualitative tables, then evenly spaced viridis."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def plot_curves(runs: list[RunFiles], names: list[str], path: Path, metrics: list[str] | None = None) -> list[str]:
    """One plot per metric against epoch (two plots a row), one colour per run; returns the plots' titles."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = metrics or metric_names(runs)
    colours = _colours(len(runs))
    rows, cols = max(1, -(-len(metrics) // 2)), 2 if len(metrics) > 1 else 1
    width, height = 5.0 * cols, 2.6 * rows
    fig = Figure(figsize=(width, height))
    # Margins fixed in inches: room for a title, "epoch" and tick labels of up to nine characters ("-54305.25").
    # A layout engine would draw the figure twice: 0.15 s, not 0.09.
    left, right, top, bottom, across, down = 0.95, 0.2, 0.35, 0.5, 1.0, 0.85
    axis_width = (width - left - right - across * (cols - 1)) / cols
    axis_height = (height - top - bottom - down * (rows - 1)) / rows
    fig.subplots_adjust(
        left / width, bottom / height, 1 - right / width, 1 - top / height, across / axis_width, down / axis_height
    )
    axes = [ax for row in fig.subplots(rows, cols, squeeze=False) for ax in row]
    for ax, metric in zip(axes, metrics, strict=False):
        for i, (run, name) in enumerate(zip(runs, names, strict=True)):
            points = [
                (r["epoch"], r[metric]) for r in run.rows if "epoch" in r and metric in r and math.isfinite(r[metric])
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, color=colours[i], marker="o" if len(xs) <= 30 else None, ms=3, label=name)
        ax.set_title(metric, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)  # an odd number of metrics: the last row's second place stays empty
    if metrics and len(runs) > 1:
        axes[0].legend(fontsize="small", loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
    return [ax.get_title() for ax in axes if ax.get_visible()]


def summary_table(runs: list[RunFiles], names: list[str]) -> str:
    """A markdown table: one column per run, one row per summary.json figure (and differing config value)."""
    differ = differing_keys([r.config for r in runs])
    summaries = [flatten(r.summary) for r in runs]
    figures = [k for k in dict.fromkeys(k for s in summaries for k in s) if k not in ("agent", "exp_name")]
    header = "| | " + " | ".join(r.name for r in runs) + " |"
    lines = [header, "|---" * (len(runs) + 1) + "|"]
    for key in differ:
        lines.append(f"| config {key} | " + " | ".join(fmt(r.config.get(key)) for r in runs) + " |")
    for key in figures:
        cells = [fmt(s[key]) if key in s else "" for s in summaries]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    legend = [f"- **{r.name}**: {name}" for r, name in zip(runs, names, strict=True) if name != r.name]
    return "\n".join(lines + ([""] + legend if legend else [])) + "\n"


def write_report(paths: list[str | Path], out: Path) -> str:
    """curves.png and report.md in ``out`` (new, empty or an earlier report's) for the runs under ``paths``; returns
    the markdown."""
    runs = [read_run(p) for p in find_runs(paths)]
    name_apart(runs)
    names = labels(runs)
    _refuse_others(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file there, or above it; no permission
        raise UserError(f"{out}: cannot make the report's folder there ({e.strerror}); --out takes a folder") from None
    plot_curves(runs, names, out / "curves.png")
    text = f"{HEADER}\n{summary_table(runs, names)}"
    (out / "report.md").write_text(text)
    return text


def _refuse_others(out: Path) -> None:
    """A folder ``out`` may hold an earlier report's files only (rewritten): never replace or mix with the user's.
    Its curves.png counts as ours only beside a report.md of ours (a user's curves.png alone is theirs); hidden
    files (a file browser's .DS_Store) do not count."""
    if not out.is_dir():
        return
    report = out / "report.md"
    ours = report.is_file() and report.read_text(errors="replace").startswith(HEADER)
    others = sorted(p.name for p in out.iterdir() if not (ours and p.name in OUTPUTS or p.name.startswith(".")))
    if others:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        raise UserError(
            f"{out}: holds files the report did not write ({', '.join(others[:3])}{more}); nothing was written: "
            "give --out a new or empty folder, or one of an earlier report"
        )


def write_run_curves(run_dir: Path) -> None:
    """out/curves.png of one run: every metric of its metrics.csv against epoch."""
    run = read_run(run_dir)
    if run.rows:
        plot_curves([run], [run.name], run_dir / "out" / "curves.png")
