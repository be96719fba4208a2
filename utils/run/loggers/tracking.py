"""What the tracking backends (MLflow, W&B) share: the config as flat params, the run's tags, the defaults that
depend on the run (a sweep's trial is filed under its sweep), and a tracked run that a failing service turns off
with one warning instead of ending training."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.config import repo_path, to_plain
from utils.errors import UserError
from utils.run.loggers.base import Logger

# Set by utils/sweep for the run of each trial (the sweep's folder): a tracker files the trial as a child of a
# run for the sweep (MLflow), in the sweep's group (W&B).
SWEEP_ENV = "PPT_SWEEP_DIR"
FILES_AT_END = ("summary.json", "out/curves.png", "config.json", "env.json")  # a tracked run's files, at its end
LOG = logging.getLogger("ppt.tracking")


def sweep_dir() -> Path | None:
    """The folder of the sweep this process runs a trial of, or None."""
    value = os.environ.get(SWEEP_ENV)
    return Path(value) if value else None


def flat_params(config: Any, text: bool = True, prefix: str = "") -> dict[str, Any]:
    """The config as ``{"optimizer.args.lr": 0.01, ...}`` (nested objects flattened); with ``text``, values as
    strings (JSON but for strings), as MLflow keeps params."""
    out: dict[str, Any] = {}
    for key, value in to_plain(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, text, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) or not text else json.dumps(value)
    return out


def run_tags(config: Any, world_size: int) -> dict[str, str]:
    """agent, exp_name, git commit (and whether the tree was dirty), host, world size."""
    from utils.run.environment import git_state

    git = git_state()
    tags = {"agent": config.agent, "exp_name": config.exp_name, "host": socket.gethostname()}
    tags.update({"git_commit": str(git["commit"]), "git_dirty": str(git["dirty"]), "world_size": str(world_size)})
    return tags


def experiment_name(config: Any, key: str) -> str:
    """``config[key]``, else the sweep's name for a trial, else exp_name up to '_exp' ('mnist_exp_0': 'mnist'),
    else the agent's name."""
    if config.get(key):
        return config[key]
    sweep = sweep_dir()
    if sweep is not None:
        return sweep.name
    prefix = config.exp_name.split("_exp")[0] if "_exp" in config.exp_name else ""
    return prefix or config.agent


def experiments_root(config: Any) -> Path:
    """Where run directories go (for a sweep's trial: above the sweep's folder), for shared files (mlflow.db)."""
    sweep = sweep_dir()
    return sweep.parent if sweep is not None else repo_path(config.experiments_dir)


DONE = ("finished", "early stopped")  # the agent's statuses of a run that ended as it should
GIST = 300  # characters of a failure's message that a warning quotes, beyond its first sentence

# Not "file": MLflow 3's file store (file:/path, or a plain path) is in maintenance mode, and recent releases (3.17
# here) refuse to open it unless MLFLOW_ALLOW_FILE_STORE=true: a run would train untracked after one warning.
URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(value: Any, where: str, source: str) -> None:
    """An MLflow tracking URI: http(s)://host:port, sqlite:///path.db, a database URL, databricks."""
    if value is None:
        return
    match = re.match(r"^([a-z][a-z0-9+.-]*)(:|$)", value)  # "databricks" alone: the default profile
    scheme = match.group(1).split("+")[0] if match else None
    ok = scheme in URI_SCHEMES and (match.group(2) or scheme == "databricks")
    ok = ok and (scheme not in ("http", "https") or re.match(r"^https?://[^/:]+", value))
    folder = scheme == "file" or value.startswith(("/", ".", "~"))
    absolute = scheme == "file" or value.startswith("/")  # MLflow expands neither ~ nor the repository's paths
    if absolute and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1"):  # MLflow's own opt-in
        return
    if not ok or (scheme == "sqlite" and not value.startswith("sqlite:///")):
        hint = (
            "; MLflow 3's file store (a folder of runs) refuses to open unless MLFLOW_ALLOW_FILE_STORE=true: "
            "use sqlite:///path/mlflow.db"
        )
        raise UserError(
            f"{source}: key '{where}': expected a tracking URI (http://host:port, sqlite:///path.db, "
            f"postgresql://... or databricks), got {value!r}{hint if folder else ''}"
        )


class Tracker(Logger):
    """A run on a tracking service: the first call that fails (the server down, a refusal) is one warning line and
    turns the tracker off for the rest of the run; training goes on and metrics.csv keeps every validation."""

    name = "tracker"

    def __init__(self) -> None:
        self.off = False
        self.warn: Callable[[str], None] = LOG.warning
        self.run_id: str | None = None  # the tracked run, kept in the checkpoint: a resume continues it

    @classmethod
    def build(cls, run_dir: Path, config) -> Tracker:
        return cls(run_dir, config)

    def state_dict(self) -> dict:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")

    def on_test_end(self, agent, metrics: dict[str, float]) -> None:
        """mode=test: the metrics go to the tested checkpoint's tracked run (its id came with that checkpoint)."""
        if self.run_id is None:
            agent.recorder.info(
                f"{self.name}: the tested checkpoint has no tracked run; test metrics are in summary.json"
            )
            return
        self.warn = agent.recorder.warning
        self.log_test(agent, metrics)

    def log_test(self, agent, metrics: dict[str, float]) -> None:
        """Send mode=test's ``metrics`` to the run ``self.run_id``, which keeps its status."""

    def forget_older_run(self, agent) -> None:
        """A resume from another checkpoint than the run's own last.pth (an older epoch_N.pth, another run's) starts
        a new tracked run: the tracked one has steps the resumed training will log again with other values."""
        resumed = getattr(agent, "resumed_from", None)
        if self.run_id is not None and resumed is not None and resumed != agent.checkpoint_dir / "last.pth":
            agent.recorder.info(f"{self.name}: resumed from {resumed}, not last.pth: a new run (was {self.run_id})")
            self.run_id = None

    def call(self, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or None once the tracker is off (it turns off here when ``fn`` fails)."""
        if self.off:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (any failure of the service: tracking must never end training)
            self.failed(what, e)
            return None

    def failed(self, what: str, error: Exception) -> None:
        """One warning line; the tracker is off from now on."""
        self.off = True
        message = gist(str(error))
        self.warn(
            f"{self.name}: {what} failed ({type(error).__name__}: {message}); tracking is off for the rest of this "
            "run, which goes on (metrics.csv has every validation)"
        )


def gist(message: str) -> str:
    """The first line of ``message``, as many of its sentences as fit in GIST characters, the first always whole: a
    cut that falls inside a word or a URL makes the line harder to read and to search for."""
    line = " ".join(message.strip().split("\n", 1)[0].split())
    first, *others = re.split(r"(?<=[.!?])\s+(?=[A-Z])", line)
    for sentence in others:
        if len(first) + 1 + len(sentence) > GIST:
            break
        first += " " + sentence
    return first
