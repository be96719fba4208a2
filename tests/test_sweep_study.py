"""Sweeps: a study and its folder belong together; failed, grown and waiting trials; mistakes in a sweep's keys."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

import main
import utils.sweep.study
import utils.sweep.subprocess
from tests.conftest import EXAMPLE, REPO
from tests.test_sweep import PNG, TINY, rows, sweep_file
from utils.run.recorder import LOCK_NAME
from utils.sweep.spec import load_sweep
from utils.sweep.subprocess import holder

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_a_new_study_never_takes_the_trial_folders_of_another(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    (exps / "s" / "study.journal").unlink()  # a new study, the old one's trial_0000/ still there
    assert main.main(["--sweep", path, "max_epoch=1"]) == 2
    storage = f"storage=sqlite:///{tmp_path / 'other.db'}"  # another storage, the same folder
    assert main.main(["--sweep", path, "max_epoch=1", storage]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) >= 2 and all("holds the trials of another study" in line for line in err[-2:])
    assert "choose another sweep name, or move the folder" in err[-1]
    assert f"{exps / 's'} holds the trials of another study than the one in {exps / 's' / 'study.journal'}" in err[-2]


def test_nproc_trials_run_with_the_python_of_the_sweep(tmp_path, exps, monkeypatch, capsys):
    commands = []

    def run_command(command, overrides, run_dir, after_validation):
        commands.append(command)
        raise main.UserError("not run here")

    monkeypatch.setattr(utils.sweep.subprocess, "run_command", run_command)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "--nproc", "2"]) == 1
    assert commands[0][:4] == [sys.executable, str(REPO / "main.py"), "--nproc", "2"]


def test_failed_trials_run_again_only_with_retry_failed_in_their_own_folders(tmp_path, exps, capsys, monkeypatch):
    def broken(config, overrides, run_dir, after_validation):
        raise main.UserError("the disk was full")  # a cause outside the config, fixed before the next command

    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5, 0.7]})
    with monkeypatch.context() as m:
        m.setattr(main, "_run_trial", broken)
        assert main.main(["--sweep", path, "max_epoch=1"]) == 1  # both trials fail
    assert main.main(["--sweep", path, "max_epoch=1"]) == 1  # the cause fixed: still failed, nothing runs
    assert "2 fail (failed trials are not run again unless retry_failed=true)" in capsys.readouterr().err
    assert main.main(["--sweep", path, "max_epoch=1", "retry_failed=true"]) == 0
    assert "sweep s: 2 complete; best trial" in capsys.readouterr().err  # the failed tries run again: not counted
    results = rows(exps / "s" / "results.csv")
    assert [(r["number"], r["optimizer.args.lr"], r["state"], r["run_dir"][-10:]) for r in results] == [
        ("0", "0.5", "fail", "trial_0000"),
        ("1", "0.7", "fail", "trial_0001"),
        ("2", "0.5", "complete", "trial_0000"),
        ("3", "0.7", "complete", "trial_0001"),
    ]
    assert results[0]["error"] == "the disk was full; run again as trial 2"
    assert results[2]["error"] == ""
    assert main.main(["--sweep", path, "max_epoch=1", "retry_failed=true"]) == 0  # nothing failed: nothing runs
    assert len(rows(exps / "s" / "results.csv")) == 4


def test_a_seeded_study_that_grows_draws_new_values(tmp_path, exps):
    space = {"optimizer.args.lr": {"log_uniform": [0.01, 1.0]}, "batch_size": [16, 32, 64]}
    path = sweep_file(tmp_path, exps, parameters=space, method="random", sampler_seed=7)
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1"]) == 0
    assert main.main(["--sweep", path, "trials=4", "max_epoch=1"]) == 0
    lrs = [r["optimizer.args.lr"] for r in rows(exps / "s" / "results.csv")]
    assert len(set(lrs)) == 4, lrs


def test_a_grid_goes_on_only_in_the_order_it_was_made_with(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.1, 0.2, 0.3]}, sampler_seed=1)
    assert main.main(["--sweep", path, "trials=1", "max_epoch=1"]) == 0
    assert main.main(["--sweep", path, "sampler_seed=4", "max_epoch=1"]) == 2  # 0.3 first, not 0.2
    assert "key 'parameters': the study in" in capsys.readouterr().err


def test_a_grid_goes_on_only_with_its_parameters_in_the_same_order(tmp_path, exps, capsys):
    space = {"optimizer.args.lr": [0.1, 0.2], "batch_size": [16, 32]}
    path = sweep_file(tmp_path, exps, parameters=space)
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1"]) == 0
    reordered = sweep_file(tmp_path, exps, parameters=dict(reversed(space.items())))
    assert main.main(["--sweep", reordered, "max_epoch=1"]) == 2  # slot N would be another combination
    assert "key 'parameters': the study in" in capsys.readouterr().err


def test_machines_of_one_study_mark_their_folders_alike_and_a_silent_trial_keeps_its_grid_point(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(utils.sweep.study, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(utils.sweep.study, "GRACE_SECONDS", 2)
    storage = f"storage=sqlite:///{tmp_path / 'study.db'}"
    a, b = tmp_path / "a", tmp_path / "b"
    path = sweep_file(tmp_path, a, parameters={"optimizer.args.lr": [0.1, 0.2, 0.3]})
    # Machine a made the study; one of its workers took grid point 0 and died before drawing its values.
    spec = load_sweep(path, [storage, "max_epoch=1"], lambda config, more: main.load_config(config, more)[0])
    spec.sweep_dir.mkdir(parents=True)
    study, created = utils.sweep.study.open_study(spec)
    utils.sweep.study._claim(study, spec, created)
    study._storage.record_heartbeat(study.ask()._trial_id)
    time.sleep(3)
    assert main.main(["--sweep", path, storage, "max_epoch=1", f"experiments_dir={b}"]) == 0
    assert (a / "s" / ".study").read_text() == (b / "s" / ".study").read_text()
    results = rows(b / "s" / "results.csv")
    assert [(r["number"], r["optimizer.args.lr"], r["state"]) for r in results] == [
        ("0", "", "fail"),
        ("1", "0.2", "complete"),
        ("2", "0.3", "complete"),
        ("3", "0.1", "complete"),
    ]
    assert "sweep s: 3 complete; best trial" in capsys.readouterr().err


def test_a_machine_with_another_grid_is_refused_before_the_first_trial_too(tmp_path, capsys):
    storage = f"storage=sqlite:///{tmp_path / 'study.db'}"
    (tmp_path / "b").mkdir()
    a = sweep_file(tmp_path, tmp_path / "a", parameters={"optimizer.args.lr": [0.5, 1.0]})
    b = sweep_file(tmp_path / "b", tmp_path / "b", parameters={"optimizer.args.lr": [0.1, 0.2]})
    spec = load_sweep(a, [storage], lambda config, more: main.load_config(config, more)[0])
    spec.sweep_dir.mkdir(parents=True)
    study, created = utils.sweep.study.open_study(spec)
    utils.sweep.study._claim(study, spec, created)  # machine a, before its first trial
    assert main.main(["--sweep", b, storage, "max_epoch=1"]) == 2
    assert "was made with another grid" in capsys.readouterr().err  # before any trial drew a value


def test_a_refused_folder_leaves_the_new_study_free_for_another_space(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    storage = f"storage=sqlite:///{tmp_path / 'new.db'}"
    assert main.main(["--sweep", path, "max_epoch=1", storage]) == 2  # the folder is the journal study's
    (exps / "s").rename(exps / "s_journal")  # as the message says
    (tmp_path / "other").mkdir()
    other = sweep_file(tmp_path / "other", exps, parameters={"optimizer.args.lr": [0.7]})
    assert main.main(["--sweep", other, "max_epoch=1", storage]) == 0
    assert "holds the trials of another study" in capsys.readouterr().err


def test_a_sweep_named_after_a_runs_directory_or_a_file_is_one_line_and_leaves_it_as_it_was(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps)
    (exps / "s").mkdir()
    (exps / "s" / "config.json").write_text("{}")  # a run's directory, not a sweep's
    assert main.main(["--sweep", path]) == 2
    err = capsys.readouterr().err
    assert "key 'name': " in err and "is a run's directory; choose another sweep name" in err and err.count("\n") == 1
    assert [p.name for p in (exps / "s").iterdir()] == ["config.json"]
    (exps / "mlflow.db").write_text("a file")  # a tracker's database, say
    assert main.main(["--sweep", path, "name=mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: override 'name=mlflow.db': {exps / 'mlflow.db'} is a file; choose another sweep name\n"
    assert (exps / "mlflow.db").read_text() == "a file"


HOLDER = """
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_SH)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_trial_that_a_live_worker_runs_is_waited_for_then_run_again_once_it_is_orphaned(tmp_path, exps, monkeypatch):
    # A worker of another command, killed a moment ago and still saving: it holds the folder's lock a while
    # (shared, as while it runs a trial); its trial 0 stays RUNNING until then.
    monkeypatch.setattr(utils.sweep.study, "WAIT_SECONDS", 0.2)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    spec = load_sweep(path, ["max_epoch=1"], lambda config, more: main.load_config(config, more)[0])
    spec.sweep_dir.mkdir(parents=True)
    study, created = utils.sweep.study.open_study(spec)
    utils.sweep.study._claim(study, spec, created)
    saving = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(spec.sweep_dir / ".lock"), "2"], stdout=subprocess.PIPE, text=True
    )
    assert saving.stdout.readline() == "locked\n"
    study.ask()
    started = time.time()
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    assert saving.poll() is not None and time.time() - started > 1.0
    results = rows(exps / "s" / "results.csv")
    assert [(r["number"], r["state"], r["error"]) for r in results] == [
        ("0", "fail", "its sweep was killed; run again as trial 1"),
        ("1", "complete", ""),
    ]


@pytest.mark.parametrize(
    ("parameters", "overrides", "message"),
    [
        (
            {"optimizer": [{"type": "SGD", "args": {"lr": 0.1}}], "optimizer.args.lr": [0.5]},
            [],
            "key 'parameters.optimizer': sets all of 'optimizer', so 'optimizer.args.lr'",
        ),
        ({"optimizer.args.lr": [0.5]}, ["optimizer.args.lr=0.1"], "so 'optimizer.args.lr' (a parameter or a fixed"),
        ({"max_epoch": {"int": [1, 400]}, "batch_size": {"int": [1, 400]}}, [], "a grid of 160,000 combinations"),
    ],
)
def test_parameters_that_would_lose_a_value_or_a_grid_too_big_are_one_line(
    tmp_path, exps, capsys, parameters, overrides, message
):
    path = sweep_file(tmp_path, exps, parameters=parameters)
    assert main.main(["--sweep", path, *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (exps / "s").exists()


@pytest.mark.slow
def test_sigterm_to_a_sweep_of_nproc_trials_waits_for_the_trial_to_save_then_exits_130(tmp_path, exps):
    overrides = {**TINY, "experiments_dir": str(exps), "max_epoch": 300, "max_train_batches": 1, "max_valid_batches": 1}
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]}, overrides=overrides)
    sweep = subprocess.Popen(
        [sys.executable, "main.py", "--sweep", path, "--nproc", "2"],
        cwd=REPO,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = exps / "s" / "trial_0000"
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"  # saved before the exit
    assert holder(run / LOCK_NAME) is None  # nothing of the trial runs on


def _best(results: list[dict]) -> dict:
    return min((r for r in results if r["state"] == "complete"), key=lambda r: float(r["objective"]))


def test_best_config_is_the_best_trials_own_and_a_study_grows_only_under_its_overrides(tmp_path, exps, capsys):
    # lr 0 cannot learn: trial 0 (2 epochs) is the best, and the study then grows under max_epoch=1.
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5, 0.0]})
    args = ["--sweep", path, "monitor=min valid/loss"]
    assert main.main([*args, "trials=1", "max_epoch=2"]) == 0
    capsys.readouterr()
    assert main.main([*args, "trials=2", "max_epoch=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: override 'max_epoch=1': the study in")  # typed there, not the sweep file's
    assert "max_epoch: 2 then, 1 now" in err and err.count("\n") == 1
    assert main.main([*args, "trials=2", "max_epoch=1", "new_overrides=true"]) == 0
    best = _best(rows(exps / "s" / "results.csv"))
    assert best["number"] == "0"
    own = json.loads((exps / "s" / "trial_0000" / "config.json").read_text())
    written = json.loads((exps / "s" / "best_config.json").read_text())
    assert written == {**own, "exp_name": "s_best", "experiments_dir": str(exps)}
    assert written["max_epoch"] == 2


def test_a_study_grows_only_under_the_base_config_its_trials_ran_with(tmp_path, exps, capsys):
    config = tmp_path / "base.json"
    config.write_text(json.dumps({"base": str(EXAMPLE)}))
    path = sweep_file(tmp_path, exps, config=str(config), parameters={"batch_size": [16, 32, 48]})
    assert main.main(["--sweep", path, "trials=1", "max_epoch=1"]) == 0
    # Edited after a trial: a value every trial gets, besides a parameter's, each machine's own folders and workers.
    edited = {
        "seed": 3,
        "batch_size": 64,
        "exp_name": "other",
        "data_root": "elsewhere",
        "num_workers": 1,
        "description": "new words",  # and what keeps or logs a run, not its results
        "log_every": 7,
        "torch_threads": 2,
        "slurm": {"time": "04:00:00"},
    }
    config.write_text(json.dumps({"base": str(EXAMPLE), **edited}))
    capsys.readouterr()
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: key 'config': the study in ") and err.count("\n") == 1
    assert "ran its trials with other base config values (seed: absent then, 3 now); " in err
    assert not (exps / "s" / "trial_0001").exists()
    # A key added inside an object (an optimizer's argument) is a change too.
    optimizer = json.loads(EXAMPLE.read_text())["optimizer"]
    optimizer = {**optimizer, "args": {**optimizer["args"], "weight_decay": 0.5}}
    config.write_text(json.dumps({"base": str(EXAMPLE), "optimizer": optimizer}))
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1"]) == 2
    assert "(optimizer.args.weight_decay: absent then, 0.5 now)" in capsys.readouterr().err
    config.write_text(json.dumps({"base": str(EXAMPLE), **edited}))
    assert main.main(["--sweep", path, "trials=2", "max_epoch=1", "new_overrides=true"]) == 0
    assert json.loads((exps / "s" / "trial_0001" / "config.json").read_text())["seed"] == 3


def test_the_closing_message_gives_the_command_of_a_best_trial_of_two_processes(tmp_path, exps, monkeypatch, capsys):
    def run_command(command, overrides, run_dir, after_validation):  # the trial in this process, as torchrun would
        main.run(command[-1], overrides, after_validation)

    monkeypatch.setattr(utils.sweep.subprocess, "run_command", run_command)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "--nproc", "2", "max_epoch=1"]) == 0
    assert f"runs with ./run.sh --nproc 2 {exps / 's' / 'best_config.json'}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("monitor=max valid/acc", "key 'monitor': ExampleAgent reports no metric 'valid/acc'"),
        ("device=cuda", "key 'device': 'cuda' asked for, but this machine has no CUDA device"),
    ],
)
def test_a_config_mistake_found_when_the_agent_is_built_is_one_line_before_any_trial(
    tmp_path, exps, capsys, override, message
):
    path = sweep_file(tmp_path, exps)
    assert main.main(["--sweep", path, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (exps / "s").exists(), "no study and no trial for a mistake"


def test_command_line_sweep_keys_take_dotted_config_names(tmp_path, exps):
    path = sweep_file(tmp_path, exps, parameters={"batch_size": [16]})
    extra = ["parameters.optimizer.args.lr=[0.3]", "overrides.optimizer.args.rho=0.8", "max_epoch=1"]
    assert main.main(["--sweep", path, *extra]) == 0
    config = json.loads((exps / "s" / "trial_0000" / "config.json").read_text())
    assert config["optimizer"] == {"type": "Adadelta", "args": {"lr": 0.3, "rho": 0.8}}
    assert config["batch_size"] == 16


def test_a_trial_that_trained_all_its_epochs_is_complete_though_the_pruner_fires_after_the_last(tmp_path, exps):
    pruner = {"type": "ThresholdPruner", "args": {"lower": 1.01}}  # no accuracy reaches it: it fires at once
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]}, pruner=pruner)
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    (result,) = rows(exps / "s" / "results.csv")
    assert (result["state"], result["epochs"]) == ("complete", "1")


def test_a_random_study_takes_a_wider_range_but_not_another_kind_of_space(tmp_path, exps, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": {"uniform": [0.4, 0.6]}}, method="random")
    assert main.main(["--sweep", path, "trials=1", "max_epoch=1"]) == 0
    wider = 'parameters={"optimizer.args.lr": {"uniform": [0.1, 0.9]}}'
    assert main.main(["--sweep", path, wider, "trials=2", "max_epoch=1"]) == 0
    capsys.readouterr()
    log = 'parameters={"optimizer.args.lr": {"log_uniform": [0.1, 0.9]}}'
    assert main.main(["--sweep", path, log, "trials=3", "max_epoch=1"]) == 2
    assert "Optuna refuses the change (Cannot set different log configuration" in capsys.readouterr().err
    assert len(rows(exps / "s" / "results.csv")) == 2


def test_report_of_an_experiments_folder_takes_the_trials_of_its_sweeps_too(exps, capsys):
    for run in ("plain", "s/trial_0000", "s/trial_0001"):
        (exps / run).mkdir(parents=True)
        (exps / run / "metrics.csv").write_text("epoch,step,valid/loss\n1,1,0.5\n")
        (exps / run / "summary.json").write_text(json.dumps({"epochs": 1}))
    assert main.main(["report", str(exps), "--out", str(exps.parent / "r")]) == 0
    assert "| | plain | trial_0000 | trial_0001 |" in capsys.readouterr().out


def test_each_worker_gets_gpus_of_its_own_and_its_trials_run_with_them(tmp_path, exps, monkeypatch, capsys):
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    spec = load_sweep(path, ["nproc=2"], lambda config, more: main.load_config(config, more)[0])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # what the tests' CPU-only torch ignores
    assert utils.sweep.study.gpu_sets(spec, 2) == ["0,1", "2,3"]
    with pytest.raises(main.UserError, match="6 in all, but this machine has 4"):
        utils.sweep.study.gpu_sets(spec, 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert main.main(["--sweep", path, "--workers", "3", "max_epoch=1"]) == 2
    assert "--workers 3 with nproc 1: each worker takes 1 GPU(s) of its own" in capsys.readouterr().err
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    assert [r["gpus"] for r in rows(exps / "s" / "results.csv")] == ["3"]  # the first of the machine's


def test_baselines_run_first_values_are_reported_at_every_validation_and_int_spaces_take_a_step(tmp_path, exps):
    space = {"batch_size": {"int": [16, 48], "step": 16}, "optimizer.args.lr": {"log_uniform": [0.1, 1.0]}}
    baseline = {"batch_size": 32, "optimizer.args.lr": 0.25}
    path = sweep_file(tmp_path, exps, parameters=space, method="random", enqueue=[baseline], sampler_seed=0)
    assert main.main(["--sweep", path, "trials=3", "max_epoch=2"]) == 0
    results = rows(exps / "s" / "results.csv")
    assert (results[0]["batch_size"], results[0]["optimizer.args.lr"]) == ("32", "0.25")
    assert {r["batch_size"] for r in results} <= {"16", "32", "48"}
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(exps / "s" / "study.journal")))
    study = optuna.load_study(study_name="s", storage=storage)
    assert [sorted(t.intermediate_values) for t in study.trials] == [[1, 2]] * 3  # learning curves, no pruner


def test_choices_that_are_objects_run_as_their_values_and_read_back_in_results(tmp_path, exps):
    optimizers = [{"type": "Adadelta", "args": {"lr": 1.0}}, {"type": "SGD", "args": {"lr": 0.1}}]
    path = sweep_file(tmp_path, exps, parameters={"optimizer": optimizers})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    results = rows(exps / "s" / "results.csv")
    assert [json.loads(r["optimizer"]) for r in results] == optimizers
    for r in results:
        config = json.loads((exps / "s" / f"trial_000{r['number']}" / "config.json").read_text())
        assert config["optimizer"] == json.loads(r["optimizer"])


def test_a_signal_after_a_trials_run_ended_but_before_optuna_was_told_queues_it_again(
    tmp_path, exps, monkeypatch, capsys
):
    """A warning or Ctrl-C that lands after the trial's run trained all its epochs, while the sweep reads its
    results: the trial is queued again (it was marked FAIL for good), and the next command completes it."""
    read_run = utils.sweep.study.read_run

    def stopped(run_dir):
        monkeypatch.setattr(utils.sweep.study, "read_run", read_run)  # once
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.sweep.study, "read_run", stopped)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 130
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    assert "sweep s: 1 complete; best trial" in capsys.readouterr().err
    results = rows(exps / "s" / "results.csv")
    assert [(r["state"], r["run_dir"][-10:]) for r in results] == [("fail", "trial_0000"), ("complete", "trial_0000")]
    assert results[0]["error"] == "stopped by a signal; run again as trial 1"


def test_a_trial_stopped_by_a_signal_in_this_process_is_queued_again(tmp_path, exps, monkeypatch, capsys):
    """SIGTERM or SLURM's warning to an in-process trial: the run saves and raises RunInterrupted; the trial goes
    back to the study (not failed as a bug), and the next command resumes it."""
    run_trial = main._run_trial

    def stopped(*args):
        monkeypatch.setattr(main, "_run_trial", run_trial)  # once
        raise main.RunInterrupted("stopped by SIGTERM in epoch 1 after batch 1, step 1; checkpoint saved")

    monkeypatch.setattr(main, "_run_trial", stopped)
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]})
    assert main.main(["--sweep", path, "max_epoch=1"]) == 130
    assert holder(exps / "s" / ".lock") is None  # the stopped worker keeps no hold on the folder's lock
    assert main.main(["--sweep", path, "max_epoch=1"]) == 0
    results = rows(exps / "s" / "results.csv")
    assert [(r["state"], r["error"]) for r in results] == [
        ("fail", "stopped by a signal; run again as trial 1"),
        ("complete", ""),
    ]


def test_results_csv_writes_a_choice_as_the_config_got_it_when_optuna_keeps_it_as_json(tmp_path, exps):
    """A choice of an object and null: Optuna keeps both as JSON text; results.csv has the object's JSON and, for
    null, an empty cell, as any space's None."""
    step = {"type": "StepLR", "args": {"step_size": 1}}
    main.main(["--sweep", sweep_file(tmp_path, exps, parameters={"scheduler": [None, step]})])
    assert [r["scheduler"] for r in rows(exps / "s" / "results.csv")] == ["", json.dumps(step)]
    # One parameter, two epochs: nothing to compare in importances or parallel coordinates; the other views.
    drawn = {p.stem for p in (exps / "s").glob("*.png")}
    assert drawn == {"optimization_history", "slice", "intermediate_values"}, drawn
    (exps / "one_epoch").mkdir()
    (exps / "one_epoch" / "intermediate_values.png").write_bytes(PNG)  # a view drawn before: now out of date
    one_epoch = {**TINY, "max_epoch": 1, "experiments_dir": str(exps)}
    main.main(["--sweep", sweep_file(tmp_path, exps, name="one_epoch", overrides=one_epoch)])
    assert {p.stem for p in (exps / "one_epoch").glob("*.png")} == {"optimization_history", "slice"}  # no curves


def test_a_helper_worker_makes_the_sweep_folder_on_a_machine_that_has_none_yet(tmp_path, exps):
    """A database study made on one machine; a worker of another (its own experiments_dir) joins it."""
    path = sweep_file(tmp_path, exps, parameters={"optimizer.args.lr": [0.5]}, storage=f"sqlite:///{tmp_path}/db")
    utils.sweep.study.create(load_sweep(path, [], lambda c, o: main.load_config(c, o)[0]))
    other = tmp_path / "other_machine"
    assert main.main(["--sweep", path, f"experiments_dir={other}", "--worker-index", "1"]) == 0
    assert json.loads((other / "s" / "trial_0000" / "summary.json").read_text())["status"] == "finished"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
