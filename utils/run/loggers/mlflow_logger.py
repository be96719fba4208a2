"""MLflow: a tracked run per training run, continued on resume (its id is in the checkpoint); a sweep's trials are
child runs of one run for the sweep. mlflow is imported only when a config names this logger."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import torch

from utils.run.loggers.tracking import (
    DONE,
    FILES_AT_END,
    Tracker,
    experiment_name,
    experiments_root,
    flat_params,
    run_tags,
    sweep_dir,
)

# A server that is down (connection refused) is given up on after about 3 s, one that accepts and never answers
# after about 30 s (3 requests of 10 s; mlflow's defaults retry for minutes); the user's own settings of these
# variables win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # the limits of one log_batch request


class MLflowLogger(Tracker):
    """Params (the flat config), metrics with their global step, images and the run's files as artifacts, tags."""

    name = "mlflow"
    state_key = "mlflow"

    def __init__(self, run_dir: Path, config) -> None:
        super().__init__()
        self.run_dir, self.config = Path(run_dir), config
        self.local = not config.get("mlflow_tracking_uri")
        self.uri = config.get("mlflow_tracking_uri") or f"sqlite:///{experiments_root(config) / 'mlflow.db'}"
        self.experiment = experiment_name(config, "mlflow_experiment")
        self.parent_id: str | None = None
        self.client = None
        self.open = False
        self.logged: dict[str, int] = {}  # metric -> the last step the tracked run has (a resumed run skips to it)
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)

    def on_train_start(self, agent) -> None:
        self.warn = agent.recorder.warning
        from mlflow.tracking import MlflowClient

        if self.local:
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = self.call("connecting", MlflowClient, self.uri)  # a database store connects here
        if self.client is None:
            return
        self.forget_older_run(agent)
        tags = run_tags(self.config, agent.world_size)
        if self.run_id is None or not self.call("reopening its run", self._reopen, tags, agent.recorder.info):
            self.call("starting a run", self._start, tags)
        if self.open:
            agent.recorder.info(f"mlflow: run {self.run_id} in experiment '{self.experiment}' at {self.uri}")

    def _reopen(self, tags: dict[str, str], info) -> bool:
        """Continue the checkpoint's run; False when this tracking store has no such run (another URI)."""
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(self.run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            info(f"mlflow: the checkpoint's run {self.run_id} is not at {self.uri}: a new run starts")
            return False
        if run.info.lifecycle_stage == "deleted":
            info(f"mlflow: the checkpoint's run {self.run_id} was deleted: a new run starts")
            return False
        self.client.update_run(self.run_id, status="RUNNING")
        # Metrics the interrupted run logged after its checkpoint are kept; the same steps are not logged again
        # (MLflow would keep both values of a step).
        self.logged = self._last_steps(run)
        params = flat_params(self.config)
        changed = sorted(k for k, v in params.items() if k in run.data.params and run.data.params[k] != v)
        self._log_params({k: v for k, v in params.items() if k not in run.data.params})
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])  # world size may differ
        if changed:  # MLflow's params cannot change: config.json (and config.N.json) keep each run's values
            info(f"mlflow: run {self.run_id} keeps its first values of {', '.join(changed)} (params cannot change)")
        self.parent_id = run.data.tags.get("mlflow.parentRunId")
        self.open = True
        return True

    def _start(self, tags: dict[str, str]) -> None:
        experiment_id = self._experiment_id()
        # A run of this folder still RUNNING was killed before its checkpoint kept its id (this process holds the
        # folder's lock): it ends KILLED rather than stay running for ever.
        here = str(self.run_dir.resolve())
        query = f"tags.run_dir = '{here}' and attributes.status = 'RUNNING'"
        for stale in self.client.search_runs([experiment_id], query) if "'" not in here else []:
            self.client.set_terminated(stale.info.run_id, "KILLED")
        sweep = sweep_dir()
        tags = {**tags, "run_dir": here}
        if sweep is not None:
            self.parent_id = self._parent(experiment_id, sweep)
            tags = {**tags, "mlflow.parentRunId": self.parent_id}
        run = self.client.create_run(experiment_id, tags=tags, run_name=self.config.exp_name)
        self.run_id = run.info.run_id
        self._log_params(flat_params(self.config))
        self.open = True

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        # A local store keeps its artifacts beside mlflow.db (mlflow's default is ./mlruns of the working directory).
        where = (experiments_root(self.config) / "mlartifacts").as_uri() if self.local else None
        try:
            return self.client.create_experiment(self.experiment, artifact_location=where)
        except MlflowException:  # another worker of a sweep created it first
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _parent(self, experiment_id: str, sweep: Path) -> str:
        """The sweep's run (made by its first trial; a lock in the sweep's folder makes its workers agree)."""
        with open(sweep / ".mlflow_parent.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self.client.search_runs([experiment_id], f"tags.sweep_dir = '{sweep}'", max_results=1)
            if found:
                self.client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
            tags = {"sweep_dir": str(sweep), **run_tags(self.config, 1)}
            return self.client.create_run(experiment_id, tags=tags, run_name=sweep.name).info.run_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_CALL])

    def log_scalars(self, rows: list[tuple[dict[str, float], int]]) -> None:
        if not self.open or self.off:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for values, step in rows
            for key, value in values.items()
            if step > self.logged.get(key, -1)
        ]
        for i in range(0, len(metrics), METRICS_PER_CALL):
            self.call("logging metrics", self.client.log_batch, self.run_id, metrics=metrics[i : i + METRICS_PER_CALL])

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        if not self.open or self.off:
            return
        pixels = image.permute(1, 2, 0).numpy()
        pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        self.call("logging an image", self.client.log_image, self.run_id, pixels, f"images/{tag}/step_{step:08d}.png")

    def on_train_end(self, agent) -> None:
        if not self.open:
            return
        agent.recorder.flush()  # the last scalars before the run ends
        reachable = not self.off
        for name in FILES_AT_END:
            path = self.run_dir / name
            if path.exists():
                folder = str(Path(name).parent) if "/" in name else None
                self.call(f"uploading {name}", self.client.log_artifact, self.run_id, str(path), folder)
        self.off = self.off and not reachable  # a failed upload (the artifact store) still ends the run
        stopped = agent.status in ("interrupted", "aborted")  # by a signal: saved, or at once
        self._end("FINISHED" if agent.status in DONE else "KILLED" if stopped else "FAILED")

    def log_test(self, agent, metrics: dict[str, float]) -> None:
        """At the run's last step."""
        from mlflow.tracking import MlflowClient

        self.client = self.call("connecting", MlflowClient, self.uri)
        if self.client is not None and self.call("logging the test metrics", self._log_test, metrics):
            agent.recorder.info(f"mlflow: test metrics logged to run {self.run_id} at {self.uri}")

    def _log_test(self, metrics: dict[str, float]) -> bool:
        from mlflow.entities import Metric

        step = max(self._last_steps(self.client.get_run(self.run_id)).values(), default=0)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        return True

    def _last_steps(self, run) -> dict[str, int]:
        """Each metric of ``run`` -> the last step it holds."""
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in run.data.metrics}

    def _end(self, status: str) -> None:
        self.call("ending the run", self.client.set_terminated, self.run_id, status)
        if self.parent_id is not None:  # the sweep's run ends with its last running trial
            self.call("ending the sweep's run", self._end_parent)
        self.open = False

    def _end_parent(self) -> None:
        experiment_id = self.client.get_run(self.parent_id).info.experiment_id
        query = f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'"
        if not self.client.search_runs([experiment_id], query, max_results=1):
            self.client.set_terminated(self.parent_id)

    def close(self) -> None:
        if self.open:  # training never reached its end (a failure in another callback's on_train_end)
            self._end("FAILED")
