"""Experiment tracking against the real thing: a real ``mlflow server`` (SQLite backend, on 127.0.0.1) read back
through MlflowClient, W&B's offline run files read record by record; env.json; the keys' mistakes in one line."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import main
from tests.conftest import EXAMPLE, REPO, load, train
from utils.errors import RunInterrupted, UserError
from utils.run.loggers.wandb_logger import read_records
from utils.training.callbacks import Callback

mlflow = pytest.importorskip("mlflow")  # requirements-dev.txt installs it; users install it when they use it
from mlflow.tracking import MlflowClient  # noqa: E402

# The template on 54 training images in 7 batches of 8 (18 to validate), the loss logged every 2 steps.
SMALL = ["random_size=90", "batch_size=8", "image_size=8", "hidden=4", "torch_threads=1", "log_every=2"]
BATCHES = 7
MLFLOW = 'loggers=["tensorboard","mlflow","csv"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """``mlflow server`` on a free port of 127.0.0.1 with a SQLite store in ``folder``; yields (uri, process)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield uri, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as (uri, _):
        yield uri


def only_run(client: MlflowClient, experiment: str):
    """The one run of ``experiment`` (the test fails when there are more)."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def metrics_csv(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(found)


def test_a_run_leaves_its_params_metrics_images_files_and_tags_on_the_server(server, exps):
    train(EXAMPLE, exps, "exp_name=tracked_exp_1", "max_epoch=2", *SMALL, MLFLOW, f"mlflow_tracking_uri={server}")
    client = MlflowClient(server)
    run = only_run(client, "tracked")  # the experiment: exp_name before '_exp'
    assert run.info.run_name == "tracked_exp_1" and run.info.status == "FINISHED"
    params = run.data.params
    config = json.loads((exps / "tracked_exp_1" / "config.json").read_text())
    assert params["optimizer.args.lr"] == json.dumps(config["optimizer"]["args"]["lr"]) and params["max_epoch"] == "2"
    assert params["optimizer.type"] == config["optimizer"]["type"] and len(params) >= len(config)
    assert params["loggers"] == '["tensorboard", "mlflow", "csv"]' and params["data_mode"] == "random"
    env = json.loads((exps / "tracked_exp_1" / "env.json").read_text())
    tags = run.data.tags
    assert {k: tags[k] for k in ("agent", "exp_name", "world_size")} == {
        "agent": "ExampleAgent",
        "exp_name": "tracked_exp_1",
        "world_size": "1",
    }
    assert tags["git_commit"] == env["git"]["commit"] and tags["git_dirty"] == str(env["git"]["dirty"])
    assert tags["host"] == socket.gethostname()
    # Every scalar with its step: the loss every 2 batches, validation at the end of each epoch (metrics.csv's steps).
    rows = metrics_csv(exps / "tracked_exp_1")
    assert [s for s, _ in history(client, run.info.run_id, "train/loss")] == list(range(2, 2 * BATCHES + 1, 2))
    for key in ("valid/loss", "valid/accuracy"):
        assert history(client, run.info.run_id, key) == [(int(r["step"]), pytest.approx(float(r[key]))) for r in rows]
    assert artifacts(client, run.info.run_id) == ["config.json", "env.json", "out/curves.png", "summary.json"]
    summary = Path(client.download_artifacts(run.info.run_id, "summary.json", str(exps / "down")))
    assert json.loads(summary.read_text()) == json.loads((exps / "tracked_exp_1" / "summary.json").read_text())
    # csv: the same scalars with their steps.
    with open(exps / "tracked_exp_1" / "scalars.csv", newline="") as f:
        logged = [(int(r["step"]), r["name"]) for r in csv.DictReader(f)]
    assert sorted(s for s, name in logged if name == "train/loss") == list(range(2, 2 * BATCHES + 1, 2))
    assert len(logged) == len(set(logged))
    # mode=test: its metrics go to the same run (at its last step), which stays FINISHED.
    train(EXAMPLE, exps, "exp_name=tracked_exp_1", "mode=test", *SMALL, MLFLOW, f"mlflow_tracking_uri={server}")
    tested = json.loads((exps / "tracked_exp_1" / "summary.json").read_text())["test/accuracy"]
    run = only_run(client, "tracked")
    assert run.info.status == "FINISHED" and history(client, run.info.run_id, "test/accuracy") == [
        (2 * BATCHES, pytest.approx(tested))
    ]


def test_env_json_holds_versions_packages_and_the_git_state(exps):
    train(EXAMPLE, exps, "exp_name=env", "max_epoch=1", *SMALL, "loggers=[]")
    import torch

    env = json.loads((exps / "env" / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["python"] == sys.version and env["cuda"] == torch.version.cuda
    assert f"mlflow=={mlflow.__version__}" in env["pip_freeze"] and isinstance(env["gpus"], list)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert env["git"]["commit"] == head
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    diff = subprocess.run(["git", "diff", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert env["git"]["dirty"] == bool(status) and env["git"]["diff"] == diff
    assert env["git"]["untracked"] == [line[3:] for line in status.splitlines() if line.startswith("??")]
    before = (exps / "env" / "env.json").stat().st_mtime_ns
    train(EXAMPLE, exps, "exp_name=env", "max_epoch=1", *SMALL, "loggers=[]")  # finished: nothing rewritten
    assert (exps / "env" / "env.json").stat().st_mtime_ns == before and not list((exps / "env").glob("env.*.json"))


def test_a_resume_from_an_older_checkpoint_starts_a_new_mlflow_run_that_agrees_with_metrics_csv(server, exps):
    """Two epochs, then a resume from epoch 1's checkpoint with another lr: the tracked run has epoch 2 with the
    old values, so the resumed training goes to a new run, whose metrics are those of metrics.csv."""
    args = ["exp_name=resumed", *SMALL, MLFLOW, f"mlflow_tracking_uri={server}", "mlflow_experiment=resume_test"]
    train(EXAMPLE, exps, *args, "max_epoch=2", "checkpoint_every=1")
    run_dir = exps / "resumed"
    client = MlflowClient(server)
    first = only_run(client, "resume_test")
    assert load(run_dir / "checkpoints" / "epoch_0001.pth")["callbacks"]["mlflow"] == {"run_id": first.info.run_id}
    older = f"resume={run_dir / 'checkpoints' / 'epoch_0001.pth'}"
    train(EXAMPLE, exps, *args, "max_epoch=3", "checkpoint_every=1", older, "optimizer.args.lr=0.05")
    experiment = client.get_experiment_by_name("resume_test").experiment_id
    runs = {r.info.run_id: r for r in client.search_runs([experiment])}
    (second,) = set(runs) - {first.info.run_id}
    assert [s for s, _ in history(client, first.info.run_id, "valid/loss")] == [BATCHES, 2 * BATCHES]
    with open(run_dir / "metrics.csv", newline="") as f:
        expected = [(int(r["step"]), float(r["valid/loss"])) for r in csv.DictReader(f)][1:]
    tracked = history(client, second, "valid/loss")  # epochs 2 and 3 as retrained
    assert [s for s, _ in tracked] == [s for s, _ in expected]
    assert [v for _, v in tracked] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert runs[second].info.status == "FINISHED" and runs[second].data.params["optimizer.args.lr"] == "0.05"
    assert "resumed from" in (run_dir / "logs" / "run.log").read_text()
    # csv: the rows logged after the checkpoint were dropped and logged again, once.
    with open(run_dir / "scalars.csv", newline="") as f:
        logged = [(int(r["step"]), r["name"]) for r in csv.DictReader(f)]
    assert len(logged) == len(set(logged)) and max(s for s, _ in logged) == 3 * BATCHES


def test_an_interrupted_run_resumed_is_one_mlflow_run_with_every_step_once(server, exps):
    """SIGTERM mid-epoch (a checkpoint, exit 130), then the same command: one run, killed then finished."""
    args = [*SMALL, "exp_name=stopped", MLFLOW, f"mlflow_tracking_uri={server}", "mlflow_experiment=stop_test"]
    args += ["max_epoch=3", f"experiments_dir={exps}", "callbacks=" + json.dumps([{"type": f"{__name__}.StopAt"}])]
    stopped = subprocess.run(
        [sys.executable, "main.py", str(EXAMPLE), *args], cwd=REPO, capture_output=True, timeout=300
    )
    assert stopped.returncode == 130, stopped.stderr.decode()[-3000:]
    client = MlflowClient(server)
    assert only_run(client, "stop_test").info.status == "KILLED"
    train(EXAMPLE, exps, *args[:-1])
    run = only_run(client, "stop_test")
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client, run.info.run_id, "train/loss")] == list(range(2, 3 * BATCHES + 1, 2))
    assert [s for s, _ in history(client, run.info.run_id, "valid/loss")] == [BATCHES, 2 * BATCHES, 3 * BATCHES]


class StopAt(Callback):
    """Sends this process SIGTERM at step 10 (in epoch 2): the loop saves at its next check and exits 130."""

    def on_train_batch_end(self, agent, logs: dict) -> None:
        if agent.global_step == 10:
            os.kill(os.getpid(), signal.SIGTERM)


class AbortAt(Callback):
    """What a second Ctrl-C does at step 3: Signals raises KeyboardInterrupt at once, nothing saved."""

    def on_train_batch_end(self, agent, logs: dict) -> None:
        if agent.global_step == 3:
            raise KeyboardInterrupt


def test_a_run_aborted_by_a_second_ctrl_c_is_killed_not_failed(server, exps):
    args = [*SMALL, "exp_name=aborted", MLFLOW, f"mlflow_tracking_uri={server}", "mlflow_experiment=abort_test"]
    with pytest.raises(KeyboardInterrupt):
        train(EXAMPLE, exps, *args, "max_epoch=2", "callbacks=" + json.dumps([{"type": f"{__name__}.AbortAt"}]))
    assert only_run(MlflowClient(server), "abort_test").info.status == "KILLED"
    assert json.loads((exps / "aborted" / "summary.json").read_text())["status"] == "aborted"


def test_a_sweep_is_a_parent_run_with_a_child_run_per_trial(server, exps, tmp_path):
    sweep = {
        "name": "lr_sweep",
        "config": str(EXAMPLE),
        "overrides": {
            "experiments_dir": str(exps),
            "random_size": 90,
            "batch_size": 8,
            "image_size": 8,
            "hidden": 4,
            "torch_threads": 1,
            "max_epoch": 1,
            "loggers": ["mlflow", "wandb"],
            "mlflow_tracking_uri": server,
            "wandb_mode": "offline",
        },
        "parameters": {"optimizer.args.lr": [0.01, 0.02]},
        "method": "grid",
    }
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    assert main.main(["--sweep", str(tmp_path / "sweep.json")]) == 0
    assert "PPT_SWEEP_DIR" not in os.environ
    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("lr_sweep").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_name for p in parents] == ["lr_sweep"] and parents[0].data.tags["sweep_dir"].endswith("lr_sweep")
    children = sorted((r for r in runs if r not in parents), key=lambda r: r.info.run_name)
    assert [c.info.run_name for c in children] == ["trial_0000", "trial_0001"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert [c.data.params["optimizer.args.lr"] for c in children] == ["0.01", "0.02"]
    assert all(c.info.status == "FINISHED" and len(history(client, c.info.run_id, "valid/loss")) == 1 for c in children)
    # W&B: the trials share a group named after the sweep.
    files = sorted((exps / "lr_sweep").glob("trial_*/wandb/offline-run-*/run-*.wandb"))
    runs = [r.run for path in files for r in read_records(path) if r.WhichOneof("record_type") == "run"]
    assert [(r.display_name, r.run_group) for r in runs] == [("trial_0000", "lr_sweep"), ("trial_0001", "lr_sweep")]


def test_two_processes_make_one_run_logged_by_rank_0(server, exps):
    cmd = [sys.executable, "main.py", "--nproc", "2", str(EXAMPLE), f"experiments_dir={exps}", "exp_name=ddp"]
    cmd += [*SMALL, "max_epoch=2", 'loggers=["mlflow"]', f"mlflow_tracking_uri={server}", "mlflow_experiment=ddp"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    client = MlflowClient(server)
    run = only_run(client, "ddp")
    assert run.data.tags["world_size"] == "2" and run.info.status == "FINISHED"
    batches = 4  # 27 images a rank, batches of 8
    assert [s for s, _ in history(client, run.info.run_id, "train/loss")] == list(range(2, 2 * batches + 1, 2))
    assert [s for s, _ in history(client, run.info.run_id, "valid/loss")] == [batches, 2 * batches]
    tested = subprocess.run([*cmd, "mode=test"], cwd=REPO, capture_output=True, timeout=300)  # rank 0 sends it, once
    assert tested.returncode == 0, tested.stderr.decode()[-3000:]
    accuracy = json.loads((exps / "ddp" / "summary.json").read_text())["test/accuracy"]
    assert history(client, run.info.run_id, "test/accuracy") == [(2 * batches, pytest.approx(accuracy))]


class KillServer(Callback):
    """Kills the tracking server (its process group) after the first epoch."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def on_epoch_end(self, agent, metrics: dict) -> None:
        if agent.epoch == 1:
            os.killpg(self.pid, signal.SIGKILL)
            while True:  # until its port refuses
                time.sleep(0.2)
                with contextlib.suppress(OSError), urllib.request.urlopen(agent.config.mlflow_tracking_uri, timeout=1):
                    continue
                break


def test_a_server_killed_mid_run_costs_one_warning_and_training_goes_on(exps, tmp_path):
    with mlflow_server(tmp_path / "doomed") as (uri, proc):
        kill = "callbacks=" + json.dumps([{"type": f"{__name__}.KillServer", "args": {"pid": proc.pid}}])
        args = ["exp_name=orphan2", *SMALL, "max_epoch=3", MLFLOW, f"mlflow_tracking_uri={uri}", kill]
        code = main.main([str(EXAMPLE), f"experiments_dir={exps}", *args])
        assert code == 0
    log = (exps / "orphan2" / "logs" / "run.log").read_text()
    warnings = [line for line in log.splitlines() if "mlflow:" in line and "failed" in line]
    assert len(warnings) == 1, log
    assert "tracking is off for the rest of this run" in warnings[0]
    assert [r["epoch"] for r in metrics_csv(exps / "orphan2")] == ["1", "2", "3"]
    assert json.loads((exps / "orphan2" / "summary.json").read_text())["epochs"] == 3


def wandb_history(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in read_records(path):
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def test_wandb_offline_writes_the_run_with_its_metrics_and_resumes_it_without_a_step_twice(exps):
    """Stopped by SIGTERM in epoch 2 (a checkpoint mid-epoch), then the same command to epoch 3: one W&B run in two
    offline folders, whose history has each step once; a resume from an older checkpoint would start a new run."""
    args = ["exp_name=wb", *SMALL, 'loggers=["wandb","csv"]', "wandb_mode=offline", "wandb_project=proj", "max_epoch=3"]
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, *args, "callbacks=" + json.dumps([{"type": f"{__name__}.StopAt"}]))
    train(EXAMPLE, exps, *args)
    run_dir = exps / "wb"
    run_id = load(run_dir / "checkpoints" / "last.pth")["callbacks"]["wandb"]["run_id"]
    folders = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len(folders) == 2 and all(f"-{run_id}" in f.name for f in folders)  # "-1" after one of the same second
    rows = wandb_history(run_dir)
    losses = [r["_step"] for r in rows if "train/loss" in r]
    assert losses == list(range(2, 3 * BATCHES + 1, 2))
    valid = [(r["_step"], r["valid/loss"]) for r in rows if "valid/loss" in r]
    assert valid == [(int(r["step"]), pytest.approx(float(r["valid/loss"]))) for r in metrics_csv(run_dir)]
    records = [r for p in folders for r in read_records(p / f"run-{run_id}.wandb")]
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {r.project for r in runs} == {"proj"} and "agent=ExampleAgent" in runs[0].tags
    uploaded = json.loads((folders[-1] / "files" / "summary.json").read_text())
    assert uploaded == json.loads((run_dir / "summary.json").read_text())
    # mode=test: its metrics go to the same run's summary (a third offline folder of the run).
    train(EXAMPLE, exps, *args, "mode=test")
    tested = sorted(run_dir.glob("wandb/offline-run-*"))
    assert len(tested) == 3 and all(f"-{run_id}" in f.name for f in tested)
    new = [r for r in read_records(tested[-1] / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "summary"]
    written = {i.key: json.loads(i.value_json) for r in new for i in r.summary.update}
    assert written["test/accuracy"] == pytest.approx(
        json.loads((run_dir / "summary.json").read_text())["test/accuracy"]
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            'loggers=["mlfow"]',
            "key 'loggers': no logger 'mlfow' (there are tensorboard, mlflow, wandb, csv) (did you mean 'mlflow'?)",
        ),
        ("mlflow_tracking_uri=htp://localhost:5000", "key 'mlflow_tracking_uri': expected a tracking URI"),
        ("mlflow_tracking_uri=localhost:5000", "key 'mlflow_tracking_uri': expected a tracking URI"),
        (
            "wandb_mode=ofline",
            "key 'wandb_mode': expected one of 'online', 'offline', 'disabled', got 'ofline' (did you mean 'offline'?)",
        ),
        ("mlflow_tracking_uri=sqlite:/relative.db", "key 'mlflow_tracking_uri': expected a tracking URI"),
        ("mlflow_experimnt=x", "unknown key 'mlflow_experimnt' (did you mean 'mlflow_experiment'?)"),
    ],
)
def test_tracking_key_mistakes_are_one_line_and_exit_2(exps, capsys, override, expected):
    assert main.main([str(EXAMPLE), f"experiments_dir={exps}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not list(exps.iterdir())


def test_a_logger_whose_package_is_missing_is_one_line_before_training(exps, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    assert main.main([str(EXAMPLE), f"experiments_dir={exps}", 'loggers=["tensorboard","wandb"]']) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("key 'loggers': logger 'wandb' needs the wandb package: pip install wandb"), err
    assert len(err.splitlines()) == 1 and not list(exps.iterdir())


def test_the_tracking_libraries_are_imported_only_when_a_config_names_them(exps):
    code = (
        "import sys, main; main.run(sys.argv[1], sys.argv[2:]); "
        "assert 'mlflow' not in sys.modules and 'wandb' not in sys.modules, 'imported'"
    )
    args = [str(EXAMPLE), f"experiments_dir={exps}", "max_epoch=1", *SMALL, 'loggers=["tensorboard","csv"]']
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-2000:]


def test_wandb_disabled_logs_nothing_and_the_run_goes_on(exps):
    train(EXAMPLE, exps, "exp_name=off", "max_epoch=1", *SMALL, 'loggers=["wandb"]', "wandb_mode=disabled")
    assert not list((exps / "off").glob("wandb/offline-run-*")) and (exps / "off" / "summary.json").exists()


def test_the_mlflow_default_is_a_sqlite_file_under_experiments(exps):
    """... and a run stopped early ended as it should: FINISHED (valid/accuracy stays at 1/6 on this data)."""
    train(EXAMPLE, exps, "exp_name=local_exp_0", "max_epoch=4", *SMALL, 'loggers=["mlflow"]', "early_stop_patience=1")
    assert json.loads((exps / "local_exp_0" / "summary.json").read_text())["status"] == "early stopped"
    client = MlflowClient(f"sqlite:///{exps / 'mlflow.db'}")
    run = only_run(client, "local")
    assert run.info.status == "FINISHED"
    assert artifacts(client, run.info.run_id) == ["config.json", "env.json", "out/curves.png", "summary.json"]
    assert (exps / "mlartifacts").is_dir() and not (REPO / "mlruns").exists()


def test_a_server_down_from_the_start_costs_one_warning_and_the_run_trains(exps):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["exp_name=alone", *SMALL, "max_epoch=2", MLFLOW, f"mlflow_tracking_uri={uri}"]
    assert main.main([str(EXAMPLE), f"experiments_dir={exps}", *args]) == 0
    log = (exps / "alone" / "logs" / "run.log").read_text()
    warnings = [line for line in log.splitlines() if "mlflow:" in line]
    assert len(warnings) == 1 and "mlflow: starting a run failed (" in warnings[0], log
    assert [r["epoch"] for r in metrics_csv(exps / "alone")] == ["1", "2"]
    assert load(exps / "alone" / "checkpoints" / "last.pth")["callbacks"].get("mlflow") is None


def test_the_tracking_uris_mlflow_takes_pass_the_check_and_others_do_not():
    from utils.run.loggers.tracking import check_tracking_uri

    for uri in ["databricks", "databricks://profile", "http://127.0.0.1:5000", "sqlite:///a.db"]:
        check_tracking_uri(uri, "mlflow_tracking_uri", "c.json")
    for uri in ["file", "postgresql", "localhost:5000", "htp://x", "sqlite://a.db", "http"]:
        with pytest.raises(UserError, match="key 'mlflow_tracking_uri': expected a tracking URI"):
            check_tracking_uri(uri, "mlflow_tracking_uri", "c.json")


@pytest.mark.parametrize("uri", ["file:/tmp/x/mlruns", "file:///tmp/x/mlruns", "/tmp/x/mlruns", "./mlruns"])
def test_a_folder_as_tracking_uri_is_one_line_that_suggests_sqlite(exps, capsys, monkeypatch, uri):
    """MLflow 3 refuses to open its file store: such a run would train untracked after a warning."""
    with pytest.raises(mlflow.exceptions.MlflowException, match="filesystem tracking backend"):
        MlflowClient(uri)  # the mlflow installed: the reason for the check
    assert main.main([str(EXAMPLE), f"experiments_dir={exps}", MLFLOW, f"mlflow_tracking_uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert "key 'mlflow_tracking_uri': expected a tracking URI" in err and err.count("\n") == 1, err
    assert err.strip().endswith("unless MLFLOW_ALLOW_FILE_STORE=true: use sqlite:///path/mlflow.db"), err
    assert not list(exps.iterdir())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-in: the store opens, the key passes
    monkeypatch.chdir(exps)  # ./mlruns: where MLflow makes it, not in the repository
    MlflowClient(uri)
    if uri.startswith("."):  # but a relative folder would be the working directory's: still refused
        with pytest.raises(UserError, match="expected a tracking URI"):
            main.load_config(str(EXAMPLE), [MLFLOW, f"mlflow_tracking_uri={uri}"])
    else:
        main.load_config(str(EXAMPLE), [MLFLOW, f"mlflow_tracking_uri={uri}"])


def test_a_failure_is_quoted_in_whole_sentences_of_its_first_line():
    """As many sentences as fit in GIST characters, the first whole however long: no word cut in two."""
    from utils.run.loggers.tracking import GIST, Tracker

    first = "The filesystem tracking backend (e.g., './mlruns') is in maintenance mode and will not receive updates."
    second = "Please migrate to a database backend (e.g., 'sqlite:///mlflow.db') to get the latest MLflow features."
    long = "See" + " https://mlflow.org/docs/latest/self-hosting/migrate-from-file-store" * 5 + " for guidance."
    said = []
    for message, quoted in [
        (f"{first} {second} {long}\nmore lines", f"{first} {second}"),
        (f"{long} {first}", long),
    ]:
        tracker = Tracker()
        tracker.warn = said.append
        tracker.failed("connecting", Exception(message))
        assert f"(Exception: {quoted}); tracking is off" in said[-1], said[-1]
    assert len(f"{first} {second}") < GIST < len(long)


def local_runs(exps: Path) -> list:
    from mlflow.entities import ViewType

    client = MlflowClient(f"sqlite:///{exps}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, run_view_type=ViewType.ALL)


def test_a_failed_upload_still_ends_the_run_and_a_deleted_run_is_replaced(exps):
    args = ["exp_name=up", *SMALL, 'loggers=["mlflow"]', "max_epoch=1"]
    (exps / "mlartifacts").write_text("a file where the artifact store goes")  # the tracking store itself works
    train(EXAMPLE, exps, *args)
    (run,) = local_runs(exps)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert "uploading summary.json failed" in (exps / "up" / "logs" / "run.log").read_text()
    MlflowClient(f"sqlite:///{exps}/mlflow.db").delete_run(run.info.run_id)  # deleted in the UI
    (exps / "mlartifacts").unlink()
    train(EXAMPLE, exps, *args[:-1], "max_epoch=2")
    runs = {r.info.lifecycle_stage: r for r in local_runs(exps)}
    assert set(runs) == {"deleted", "active"} and runs["active"].info.status == "FINISHED"
    assert "was deleted: a new run starts" in (exps / "up" / "logs" / "run.log").read_text()


class KillSelf(Callback):
    """SIGKILL to this process after the first batch: no checkpoint ever kept its tracked run's id."""

    def on_train_batch_end(self, agent, logs: dict) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_run_killed_before_its_first_checkpoint_ends_killed_when_its_folder_runs_again(exps):
    args = [str(EXAMPLE), f"experiments_dir={exps}", "exp_name=early", *SMALL, 'loggers=["mlflow"]', "max_epoch=1"]
    kill = "callbacks=" + json.dumps([{"type": f"{__name__}.KillSelf"}])
    killed = subprocess.run([sys.executable, "main.py", *args, kill], cwd=REPO, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL and not (exps / "early" / "checkpoints" / "last.pth").exists()
    (stale,) = local_runs(exps)
    assert stale.info.status == "RUNNING"
    train(EXAMPLE, exps, *args[2:])
    runs = {r.info.run_id: r.info.status for r in local_runs(exps)}
    assert len(runs) == 2 and runs.pop(stale.info.run_id) == "KILLED" and list(runs.values()) == ["FINISHED"]
