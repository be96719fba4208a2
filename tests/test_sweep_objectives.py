"""Sweeps of several objectives (NSGA-II, the Pareto front) and k-fold cross-validation (the folds of the data)."""

import json
import statistics

import optuna
import pytest

import main
from agents import AGENTS
from agents.example import ExampleAgent
from datasets.common import FOLD_KEYS
from datasets.example import ExampleDataLoader
from tests.conftest import EXAMPLE
from tests.test_example import write_class_folders
from tests.test_sweep import PNG, TINY, rows, sweep_file

OBJECTIVES = ["max valid/accuracy", "min valid/loss"]


class NoFoldsAgent(ExampleAgent):
    """The template agent without the keys folds and fold, as an agent whose data has no folds."""

    config_schema = {k: v for k, v in ExampleAgent.config_schema.items() if k not in FOLD_KEYS}


@pytest.fixture
def no_folds_agent():
    AGENTS["NoFoldsAgent"] = __name__
    yield
    del AGENTS["NoFoldsAgent"]


def samples(loader) -> list[bytes]:
    """Every sample of a loader's batches, as bytes."""
    return [x.numpy().tobytes() for images, _ in loader for x in images]


def check_folds(make_data, settings: list[str], usual_valid_trains: bool) -> None:
    """Folds 0-2 of 3 (``make_data(overrides)`` -> a data loader): each a split of the training data (with
    ``usual_valid_trains``, the usual split's validation samples count as training data), each sample
    validating in exactly one."""
    usual = make_data(settings)
    training = samples(usual.train_loader) + (samples(usual.valid_loader) if usual_valid_trains else [])
    folds = []
    for fold in range(3):
        data = make_data([*settings, "folds=3", f"fold={fold}"])
        valid, train = samples(data.valid_loader), samples(data.train_loader)
        assert sorted(valid + train) == sorted(training)
        folds.append(valid)
    assert sorted(sum(folds, [])) == sorted(training)
    assert min(map(len, folds)) >= len(training) // 3


@pytest.mark.parametrize(
    "settings",
    [["data_mode=random", "random_size=50", "image_size=8"], ["data_mode=folder", "image_size=12"]],
)
def test_the_templates_folds_are_disjoint_and_cover_its_training_data(tmp_path, settings):
    write_class_folders(tmp_path)  # folder mode: the folds are cut from train/ (valid/ is left out)
    settings = [*settings, f"data_root={tmp_path}"]
    check_folds(
        lambda more: ExampleDataLoader(main.load_config(str(EXAMPLE), more)[0]), settings, "random" in settings[0]
    )


def test_fold_goes_with_folds_and_an_agent_without_folds_refuses_it(exps, capsys, no_folds_agent):
    assert main.main([str(EXAMPLE), "data_mode=random", "fold=1", f"experiments_dir={exps}"]) == 2
    assert "key 'fold': goes with folds" in capsys.readouterr().err
    assert main.main([str(EXAMPLE), "agent=NoFoldsAgent", "data_mode=random", "fold=1"]) == 2
    assert "unknown key 'fold'" in capsys.readouterr().err


def test_a_kfold_sweep_runs_its_config_on_each_fold_and_reports_their_mean_and_standard_deviation(
    tmp_path, exps, capsys
):
    path = sweep_file(tmp_path, exps, method="kfold", folds=3, parameters={})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    results = rows(exps / "s" / "results.csv")
    assert [(r["number"], r["fold"], r["state"]) for r in results[:3]] == [
        ("0", "0", "complete"),
        ("1", "1", "complete"),
        ("2", "2", "complete"),
    ]
    values = [float(r["objective"]) for r in results[:3]]
    for i, value in enumerate(values):
        run = exps / "s" / f"trial_000{i}"
        assert json.loads((run / "summary.json").read_text())["best"]["value"] == value
        config = json.loads((run / "config.json").read_text())
        assert (config["folds"], config["fold"], config["optimizer"]) == (3, i, TINY["optimizer"])
    mean, std = statistics.mean(values), statistics.stdev(values)
    assert [(r["number"], float(r["objective"])) for r in results[3:]] == [("mean", mean), ("std", std)]
    assert f"sweep s: 3 complete; valid/accuracy {mean:.4g} ± {std:.2g} (mean ± standard deviation of 3 folds)" in (
        capsys.readouterr().err
    )
    assert {p.stem for p in (exps / "s").glob("*.png")} == {"intermediate_values"}  # the folds' values alone


def test_a_kfold_sweep_of_an_agent_without_folds_is_one_line(tmp_path, exps, capsys, no_folds_agent):
    path = sweep_file(tmp_path, exps, method="kfold", folds=3, parameters={})
    assert main.main(["--sweep", path, "agent=NoFoldsAgent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'method': kfold needs data with folds" in err and "NoFoldsAgent" in err
    assert not any(exps.iterdir())


def test_several_objectives_run_nsga2_and_mark_the_pareto_front_with_its_configs_and_plot(
    tmp_path, exps, capsys, monkeypatch
):
    samplers = []
    monkeypatch.setattr(
        optuna.samplers, "NSGAIISampler", lambda seed: samplers.append(seed) or optuna.samplers.RandomSampler(seed)
    )
    space = {"optimizer.args.lr": {"log_uniform": [0.01, 2.0]}}
    path = sweep_file(tmp_path, exps, parameters=space, method=None, trials=5, metric=OBJECTIVES, sampler_seed=3)
    assert main.main(["--sweep", path, "max_epoch=2", "random_size=320"]) == 0
    assert samplers and json.loads((exps / "s" / "sweep.json").read_text())["method"] == "nsga2"
    results = rows(exps / "s" / "results.csv")
    assert [r["state"] for r in results] == ["complete"] * 5
    points = {}
    for r in results:  # each objective: its value at the trial's best epoch (best.pth's)
        run = exps / "s" / f"trial_000{r['number']}"
        best = json.loads((run / "summary.json").read_text())["best"]["epoch"]
        metrics = [row for row in rows(run / "metrics.csv") if int(row["epoch"]) == best][-1]
        points[r["number"]] = (float(r["valid/accuracy"]), float(r["valid/loss"]))
        assert points[r["number"]] == (float(metrics["valid/accuracy"]), float(metrics["valid/loss"]))

    def dominated(p):
        return any(q != p and q[0] >= p[0] and q[1] <= p[1] for q in points.values())

    front = [r["number"] for r in results if r["pareto"] == "True"]
    assert front == [n for n, p in points.items() if not dominated(p)] and front
    assert {r["number"] for r in results if r["pareto"] == "False"} == set(points) - set(front)
    written = sorted(p.name for p in (exps / "s" / "pareto_front").iterdir())
    assert written == [f"trial_000{n}.json" for n in front]
    for n in front:
        own = json.loads((exps / "s" / f"trial_000{n}" / "config.json").read_text())
        assert json.loads((exps / "s" / "pareto_front" / f"trial_000{n}.json").read_text()) == {
            **own,
            "exp_name": f"s_trial_{n}",
            "experiments_dir": str(exps),
        }
    assert (exps / "s" / "pareto_front.png").read_bytes().startswith(PNG)
    assert not (exps / "s" / "best_config.json").exists()
    err = capsys.readouterr().err
    assert f"Pareto front (max valid/accuracy, min valid/loss): trials {', '.join(front)}, each runs with" in err


def test_a_metric_the_agent_does_not_report_is_one_line_before_any_trial(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, metric=["max valid/acuracy", "min valid/loss"])
    assert main.main(["--sweep", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: key 'metric[0]': no metric 'valid/acuracy'") and err.count("\n") == 1
    assert "(did you mean 'valid/accuracy'?)" in err
    assert not any(exps.iterdir())
