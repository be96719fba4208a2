"""Sweeps: files checked like configs, trials as ordinary runs, failures and pruning recorded, results to read."""

import csv
import json
import socket
from pathlib import Path

import pytest

import main
import utils.sweep.study
from tests.conftest import EXAMPLE, train
from utils.sweep.results import PLOTS
from utils.sweep.spec import load_sweep

# Tiny trials: the template on a few batches of small random images (160: 96 to train on, 32 to validate), one
# thread (the float sums then repeat exactly); Adadelta, whose lr of about 1 the sweeps below vary.
TINY = {
    "random_size": 160,
    "image_size": 16,
    "hidden": 8,
    "batch_size": 32,
    "max_epoch": 2,
    "torch_threads": 1,
    "optimizer": {"type": "Adadelta", "args": {"lr": 1.0}},
}
PNG = b"\x89PNG\r\n\x1a\n"


def sweep_file(tmp_path, exps, **keys) -> str:
    """A sweep file over the template config writing under ``exps``; ``keys`` replace or add top-level keys."""
    sweep = {
        "name": "s",
        "config": str(EXAMPLE),
        "overrides": {**TINY, "experiments_dir": str(exps)},
        "parameters": {"optimizer.args.lr": [0.5, 1.0]},
        "method": "grid",
    }
    sweep.update(keys)
    swept = sweep["parameters"] if isinstance(sweep["parameters"], dict) else {}
    sweep["overrides"] = {k: v for k, v in sweep["overrides"].items() if k not in swept}  # a parameter sets them
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    return str(path)


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"paramters": {}}, "unknown key 'paramters' (did you mean 'parameters'?)"),
        (
            {"method": "gird"},
            "key 'method': expected one of 'grid', 'random', 'tpe', 'nsga2', 'kfold', got 'gird' (did you mean",
        ),
        ({"parameters": {"batch_sise": [16]}}, "key 'parameters.batch_sise' = 16: "),
        ({"parameters": {"batch_sise": [16]}}, "unknown key 'batch_sise' (did you mean 'batch_size'?)"),
        ({"parameters": {"optimizer.args.lrr": [0.1]}}, "unknown key 'optimizer.args.lrr' (did you mean 'lr'?)"),
        ({"parameters": {"batch_size": [16, 0]}}, "key 'parameters.batch_size' = 0: "),
        ({"parameters": {"optimizer.args.lr": {"log_unifrom": [1e-3, 1]}}}, "(did you mean 'log_uniform'?)"),
        ({"parameters": {"optimizer.args.lr": {"log_uniform": [0, 1]}}}, "a log space needs low > 0"),
        ({"parameters": {"optimizer.args.lr": {"uniform": [1, 0.1]}}}, "two numbers with low < high"),
        ({"parameters": {"batch_size": {"int": [16, 64], "log": True, "step": 2}}}, "(1 with log)"),
        ({"enqueue": [{"batch_size": 16}]}, "key 'enqueue[0]': expected an object of parameters (optimizer.args.lr)"),
        (
            {"parameters": {"batch_size": [16, 32]}, "method": "random", "trials": 1, "enqueue": [{"batch_size": 48}]},
            "key 'enqueue[0]': 48 is outside the space of parameters.batch_size",
        ),
        (
            {
                "parameters": {"optimizer.args.lr": {"log_uniform": [1e-4, 0.1]}},
                "method": "tpe",
                "trials": 1,
                "enqueue": [{"optimizer.args.lr": 0}],
            },
            "key 'enqueue[0]': 0 is outside the space of parameters.optimizer.args.lr",
        ),
        (
            {
                "parameters": {"batch_size": {"int": [16, 48], "step": 16}},
                "method": "random",
                "trials": 1,
                "enqueue": [{"batch_size": 20}],
            },
            "key 'enqueue[0]': 20 is outside the space of parameters.batch_size",
        ),
        ({"parameters": {"batch_size": {"int": [16.5, 32]}}}, "int expects [low, high], two integers"),
        ({"parameters": {"batch_size": []}}, "expected a non-empty list of choices"),
        ({"parameters": {}}, "key 'parameters': expected at least one key"),
        ({"parameters": {"optimizer.args.lr": {"uniform": [0.1, 1]}}}, "method grid needs a list of values"),
        ({"parameters": {"exp_name": ["a", "b"]}}, "key 'parameters.exp_name': set by the sweep"),
        ({"parameters": {"monitor": ["max valid/accuracy"]}}, "the objective cannot change"),
        ({"method": "tpe"}, "missing required key 'trials' (needed by method tpe)"),
        ({"trials": 3}, "the grid has 2 combinations, got trials=3"),
        ({"pruner": "MedianPrunr"}, "unknown pruner 'MedianPrunr' (did you mean 'MedianPruner'?)"),
        ({"pruner": {"type": "MedianPruner", "args": {"n_startup": 1}}}, "MedianPruner rejected"),
        ({"storage": "localhost:5432"}, "key 'storage': expected a database URL"),
        ({"config": "configs/nope.json"}, "nope.json: config file not found"),
        ({"config": "configs/nope.json"}, "key 'config': "),
        ({"metric": ["max valid/accuracy"]}, "key 'metric': expected a list of two or more 'max <metric>'"),
        ({"metric": ["max valid/accuracy", "lowest valid/loss"]}, "key 'metric[1]': expected 'max <metric>' or"),
        ({"metric": ["max valid/accuracy", "min valid/loss"], "pruner": "MedianPruner"}, "Optuna cannot prune"),
        ({"method": "kfold", "folds": 2}, "key 'parameters': method kfold runs one config on each fold"),
        ({"folds": 2}, "key 'folds': goes with method kfold, got method grid"),
        ({"method": "kfold", "folds": 2, "parameters": {}, "pruner": "MedianPruner"}, "kfold runs every fold to its"),
        ({"method": "kfold", "folds": 1, "parameters": {}}, "key 'folds': must be at least 2"),
        ({"method": "kfold", "parameters": {}, "trials": 6}, "key 'trials': 5 folds, got trials=6"),
        ({"method": "kfold", "folds": 2, "parameters": {}, "overrides": {"fold": 1}}, "key 'overrides.fold': set by"),
    ],
)
def test_sweep_file_mistakes_exit_2_with_one_line_before_any_trial(tmp_path, exps, capsys, keys, expected):
    path = sweep_file(tmp_path, exps, **keys)
    code = main.main(["--sweep", path])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert err.startswith(f"error: {path}") and err.count("\n") == 1
    assert not any(exps.iterdir()), "nothing may be created before the sweep file is good"


def test_command_line_keys_go_to_the_sweep_or_the_base_config(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps)
    assert main.main(["--sweep", path, "method=gird"]) == 2
    assert "key 'method'" in capsys.readouterr().err
    assert main.main(["--sweep", path, "max_epohc=2"]) == 2
    assert "unknown key 'max_epohc' (did you mean 'max_epoch'?)" in capsys.readouterr().err
    assert main.main(["--sweep", path, "triales=3"]) == 2
    assert "unknown key 'triales' (or the sweep key 'trials'?)" in capsys.readouterr().err
    # A mistake typed on the command line is named as typed there, not blamed on the sweep file.
    for typed, key in [
        ("trials=abc", "trials"),
        ("max_epoch=0", "max_epoch"),
        ("overrides.max_epoch=0", "max_epoch"),
        ('overrides={"max_epoch": 0}', "max_epoch"),
        ("parameters.log_every=[1, 0]", "parameters.log_every"),
    ]:
        assert main.main(["--sweep", path, typed]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: override '{typed}': key '{key}'") and err.count("\n") == 1, err
    # A config key under overrides. on the command line is one dotted key, also when the file has no overrides.
    without = json.loads(Path(path).read_text())
    del without["overrides"]
    Path(path).write_text(json.dumps(without))
    spec = load_sweep(path, ["overrides.optimizer.args.eps=0.001"], lambda c, more: main.load_config(c, more)[0])
    base = main.load_config(str(EXAMPLE), [])[0]["optimizer"]  # kept, with eps added
    assert spec.resolve([])["optimizer"] == {**base, "args": {**base["args"], "eps": 0.001}}


def test_grid_sweep_runs_every_trial_as_a_run_records_a_failure_and_writes_results(tmp_path, exps, capsys):
    # lr=1e30 makes the loss non-finite: that trial fails with its message and the sweep goes on.
    # The objective is the validation loss: two trials never tie on it (accuracy on 32 images may).
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5, 1e30], "batch_size": [16, 32]})
    assert main.main(["--sweep", path, "trials=3", "monitor=min valid/loss"]) == 0
    assert "best trial" in capsys.readouterr().err
    sweep_dir = exps / "s"
    results = rows(sweep_dir / "results.csv")
    assert [r["number"] for r in results] == ["0", "1", "2"]
    assert {r["host"] for r in results} == {socket.gethostname()}
    assert [(r["optimizer.args.lr"], r["batch_size"]) for r in results] == [
        ("0.5", "16"),
        ("0.5", "32"),
        ("1e+30", "16"),
    ]
    assert [r["state"] for r in results] == ["complete", "complete", "fail"]
    assert "loss is nan" in results[2]["error"] or "loss is inf" in results[2]["error"]
    for r in results[:2]:
        run = sweep_dir / f"trial_000{r['number']}"
        summary = json.loads((run / "summary.json").read_text())
        assert float(r["objective"]) == summary["best"]["value"]
        assert int(r["epochs"]) == summary["epochs"] == 2
        config = json.loads((run / "config.json").read_text())
        assert (config["optimizer"]["args"]["lr"], config["batch_size"]) == (0.5, int(r["batch_size"]))
        assert (run / "checkpoints" / "last.pth").exists()
        assert (run / "out" / "curves.png").read_bytes().startswith(PNG)
    for plot in (f"{name}.png" for name in PLOTS):
        assert (sweep_dir / plot).read_bytes().startswith(PNG)
    assert results[0]["objective"] != results[1]["objective"]
    best = min(results[:2], key=lambda r: float(r["objective"]))
    best_config = sweep_dir / "best_config.json"
    config, _ = main.load_config(str(best_config))
    assert config.batch_size == int(best["batch_size"]) and config.optimizer.args.lr == 0.5
    assert config.exp_name == "s_best" and config.max_epoch == 2
    # Run again: the study has its trials, nothing is re-run.
    before = (sweep_dir / "trial_0000" / "logs" / "run.log").read_text()
    assert main.main(["--sweep", path, "trials=3", "monitor=min valid/loss"]) == 0
    assert (sweep_dir / "trial_0000" / "logs" / "run.log").read_text() == before
    assert len(rows(sweep_dir / "results.csv")) == 3
    # A sweep's folder stands for its trials in a report.
    assert main.main(["report", str(sweep_dir)]) == 0
    table = (sweep_dir / "report" / "report.md").read_text()
    assert "| | trial_0000 | trial_0001 | trial_0002 |" in table and "| config batch_size | 16 | 32 | 16 |" in table


def test_a_pruner_stops_a_poor_trial_early_and_records_it_as_pruned(tmp_path, exps):
    # Trial 0 learns; trial 1 (lr 0) cannot, so its first validation is worse than trial 0's at that
    # epoch: the median pruner (one finished trial suffices) stops it after one epoch of three.
    pruner = {"type": "MedianPruner", "args": {"n_startup_trials": 1, "n_warmup_steps": 0}}
    path = sweep_file(
        tmp_path,
        exps,
        parameters={"optimizer.args.lr": [0.5, 0.0]},
        pruner=pruner,
        overrides={
            **TINY,
            "max_epoch": 3,
            "experiments_dir": str(exps),
            "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
            "random_size": 512,
        },
    )
    assert main.main(["--sweep", path]) == 0
    results = rows(exps / "s" / "results.csv")
    assert [r["state"] for r in results] == ["complete", "pruned"]
    assert [r["epochs"] for r in results] == ["3", "1"]


def test_report_plots_runs_overlaid_and_tabulates_their_summaries(exps, capsys):
    for lr in ("0.5", "1.0"):
        train(
            EXAMPLE,
            exps,
            f"exp_name=lr{lr}",
            *(f"{k}={json.dumps(v)}" for k, v in TINY.items()),
            f"optimizer.args.lr={lr}",
        )
    code = main.main(["report", str(exps / "lr0.5"), str(exps / "lr1.0")])
    out = capsys.readouterr().out
    assert code == 0
    report = exps / "report"
    assert (report / "curves.png").read_bytes().startswith(PNG)
    assert out == (report / "report.md").read_text()
    assert "| | lr0.5 | lr1.0 |" in out
    assert "| config optimizer.args.lr | 0.5 | 1 |" in out
    assert "| epochs | 2 | 2 |" in out
    assert "- **lr0.5**: lr0.5 lr=0.5" in out


def test_report_tells_apart_runs_of_one_folder_name_and_takes_a_run_once(exps, capsys):
    for sweep, epochs in (("a", 2), ("b", 3)):  # trial_0000 of two sweeps
        run = exps / sweep / "trial_0000"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text("epoch,step,valid/loss\n" + "".join(f"{e},{e},0.5\n" for e in range(epochs)))
        (run / "summary.json").write_text(json.dumps({"epochs": epochs}))
    runs = [str(exps / "a" / "trial_0000"), str(exps / "b"), str(exps / "a" / ".." / "a" / "trial_0000")]
    assert main.main(["report", *runs, "--out", str(exps / "r")]) == 0
    out = capsys.readouterr().out
    assert "| | a/trial_0000 | b/trial_0000 |" in out
    assert "| epochs | 2 | 3 |" in out


def test_report_writes_over_no_file_it_did_not_make(exps, capsys):
    """A folder holding the user's own report.md (or any other file), a file as --out: one line, exit 2, nothing
    written; the folder of an earlier report is written again."""
    run = exps / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,valid/loss\n1,1,0.5\n")
    mine = exps / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    (exps / "notes.txt").write_text("mine too\n")
    for out, expected in [
        (mine, "holds files the report did not write (report.md); nothing was written"),
        (exps / "notes.txt", "notes.txt: cannot make the report's folder there (File exists); --out takes a folder"),
    ]:
        assert main.main(["report", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"] and (mine / "report.md").read_text() == "my notes\n"
    assert (exps / "notes.txt").read_text() == "mine too\n"
    (exps / "r").mkdir()
    (exps / "r" / ".DS_Store").write_bytes(b"\0")  # a file browser's: the folder is as good as empty
    for _ in range(2):  # an earlier report's folder, and the default one in the run's folder
        assert main.main(["report", str(run), "--out", str(exps / "r")]) == 0
        assert main.main(["report", str(run)]) == 0
    assert sorted(p.name for p in (exps / "r").iterdir()) == [".DS_Store", "curves.png", "report.md"]
    (run / "report" / "report.md").unlink()  # a curves.png alone may be the user's
    assert main.main(["report", str(run)]) == 2
    assert "report: holds files the report did not write (curves.png)" in capsys.readouterr().err


def test_a_failing_plot_does_not_fail_the_run(exps, monkeypatch):
    import utils.run.report

    def broken(run_dir):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(utils.run.report, "write_run_curves", broken)
    train(EXAMPLE, exps, "exp_name=t", *(f"{k}={json.dumps(v)}" for k, v in TINY.items()))
    assert json.loads((exps / "t" / "summary.json").read_text())["status"] == "finished"
    assert "out/curves.png not written: RuntimeError: no fonts" in (exps / "t" / "logs" / "run.log").read_text()


def test_an_unreachable_database_is_one_line_without_its_password_and_leaves_no_folder(
    tmp_path, exps, capsys, monkeypatch
):
    path = sweep_file(tmp_path, exps, storage="postgresql://me:secret@127.0.0.1:1/db")
    assert main.main(["--sweep", path]) == 2
    err = capsys.readouterr().err
    assert "key 'storage': cannot open postgresql://me:***@127.0.0.1:1/db: " in err and "secret" not in err
    assert err.count("\n") == 1
    assert not any(exps.iterdir()), "a refused sweep leaves no folder behind"
    assert main.main(["--sweep", path, f"experiments_dir={exps / 'new' / 'runs'}"]) == 2
    assert not any(exps.iterdir()), "nor the experiments_dir it made for it"
    real_open = utils.sweep.study.open_study

    def claimed_meanwhile(sweep, *args):  # another command of the sweep, started at the same moment, got there first
        (sweep.sweep_dir / ".study").write_text("theirs\n")
        return real_open(sweep, *args)

    monkeypatch.setattr(utils.sweep.study, "open_study", claimed_meanwhile)
    assert main.main(["--sweep", path]) == 2
    assert (exps / "s" / ".study").read_text() == "theirs\n"  # its folder stays
    monkeypatch.undo()
    capsys.readouterr()
    typed = "storage=postgresql://me:secret@127.0.0.1:1/db"  # on the command line: named as typed, less its password
    assert main.main(["--sweep", sweep_file(tmp_path, exps), typed]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: override 'storage=postgresql://me:***@127.0.0.1:1/db': cannot open ")
        and "secret" not in err
    )


def test_a_study_goes_on_only_with_the_parameters_it_was_made_with(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]}, method="grid")
    assert main.main(["--sweep", path, "trials=1"]) == 0
    capsys.readouterr()
    other = 'parameters={"optimizer.args.lr": {"log_uniform": [0.01, 1.0]}}'
    assert main.main(["--sweep", path, other, "method=random", "trials=2"]) == 2  # Optuna cannot mix the two
    err = capsys.readouterr().err
    assert err.startswith(f"error: override '{other}': the study in") and "Optuna refuses the change" in err
    assert err.count("\n") == 1


def test_a_config_file_given_as_a_sweep_file_is_one_line_saying_so(exps, capsys):
    assert main.main(["--sweep", str(EXAMPLE)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {EXAMPLE}: a config file, not a sweep file: run it with ./run.sh {EXAMPLE}")
    assert err.count("\n") == 1 and not any(exps.iterdir())


def test_a_mistake_in_the_base_config_or_its_base_is_the_sweep_files_key_config(tmp_path, exps, capsys):
    for name, config in [("bad.json", {"base": str(EXAMPLE), "log_every": 0}), ("orphan.json", {"base": "gone.json"})]:
        (tmp_path / name).write_text(json.dumps(config))
        path = sweep_file(tmp_path, exps, config=str(tmp_path / name))
        assert main.main(["--sweep", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: key 'config': {tmp_path / name}: key '"), err
