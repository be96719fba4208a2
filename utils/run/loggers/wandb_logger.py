"""Weights & Biases: one W&B run per training run, continued on resume (its id is in the checkpoint); a sweep's
trials share the sweep's group. ``wandb_mode=offline`` writes the run under the run's wandb/ folder for a later
``wandb sync``. wandb is imported only when a config names this logger."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch

from utils.errors import UserError
from utils.run.loggers.tracking import (
    DONE,
    FILES_AT_END,
    Tracker,
    experiment_name,
    flat_params,
    run_tags,
    sweep_dir,
)


class WandbLogger(Tracker):
    """The flat config, scalars at their global step, images, the run's files at the end, tags."""

    name = "wandb"
    state_key = "wandb"

    def __init__(self, run_dir: Path, config) -> None:
        super().__init__()
        self.run_dir, self.config = Path(run_dir), config
        self.mode = config.get("wandb_mode") or "online"
        self.project = experiment_name(config, "wandb_project")
        self.run = None
        self.step = 0  # W&B's steps only go up: a resumed run skips those its run already has

    def on_train_start(self, agent) -> None:
        self.forget_older_run(agent)
        self.run_id = self.run_id or secrets.token_hex(4)  # W&B's run ids: lowercase letters and digits
        if not self._init(agent):
            return
        self.call("logging the config", self.run.config.update, flat_params(self.config, text=False), True)
        # A resumed run logs only steps after those its run has: W&B's own count online, the earlier folders offline.
        offline = last_offline_step(self.run_dir, self.run_id) + 1 if self.mode == "offline" else 0
        self.step = max(self.run.step, offline)
        agent.recorder.info(f"wandb: run {self.run_id} in project '{self.project}' ({self.mode})")

    def log_test(self, agent, metrics: dict[str, float]) -> None:
        """In the run's summary."""
        if self._init(agent):
            self.call("writing the test metrics", self.run.summary.update, metrics)
            agent.recorder.info(f"wandb: test metrics written to run {self.run_id} ({self.mode})")
            self._end(0)

    def _init(self, agent) -> bool:
        """Start or continue the W&B run ``self.run_id`` (True), or warn once (False)."""
        self.warn = agent.recorder.warning
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")  # W&B takes our agents/ for an LLM library's
        import wandb

        sweep = sweep_dir()
        tags = [f"{k}={v}"[:64] for k, v in run_tags(self.config, agent.world_size).items()]
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, x_disable_meta=True)
        try:
            self.run = wandb.init(
                project=self.project,
                name=self.config.exp_name,
                id=self.run_id,
                resume="allow",
                dir=str(self.run_dir),
                mode=self.mode,
                group=sweep.name if sweep is not None else None,
                tags=tags,
                settings=settings,
                reinit="create_new",
            )
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as e:
            raise UserError(
                f"config: key 'loggers': wandb: {' '.join(str(e).split())} (wandb login, or wandb_mode=offline)"
            ) from None
        except Exception as e:  # noqa: BLE001 (W&B unreachable: training goes on without it)
            self.failed("starting a run", e)
            return False
        return True

    def log_scalars(self, rows: list[tuple[dict[str, float], int]]) -> None:
        if self.run is None or self.off:
            return
        for values, step in rows:
            if step >= self.step:
                self.call("logging metrics", self.run.log, {k: float(v) for k, v in values.items()}, step=step)
                self.step = step

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        if self.run is None or self.off or step < self.step:
            return
        import wandb

        pixels = image.permute(1, 2, 0).numpy()
        self.call("logging an image", self.run.log, {tag: wandb.Image(pixels)}, step=step)
        self.step = step

    def on_train_end(self, agent) -> None:
        if self.run is None:
            return
        agent.recorder.flush()
        summary = agent.recorder.read_json("summary.json")
        if summary:
            self.call("writing the summary", self.run.summary.update, summary)
        for name in FILES_AT_END:  # files in the run's folder are uploaded as it finishes (run.save would link)
            if (self.run_dir / name).exists():
                (Path(self.run.dir) / name).parent.mkdir(parents=True, exist_ok=True)
                self.call(f"saving {name}", shutil.copyfile, self.run_dir / name, Path(self.run.dir) / name)
        self._end(0 if agent.status in DONE else 1)

    def _end(self, exit_code: int) -> None:
        import wandb

        run, self.run = self.run, None
        self.call("finishing the run", run.finish, exit_code)
        self.call("finishing the run", wandb.teardown)  # waits for W&B's process to have written the run's files

    def close(self) -> None:
        if self.run is not None:
            self._end(1)


def read_records(path: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``): LevelDB's log format (32 KiB blocks; each record a
    crc32, a little-endian length, a type: full, first, middle, last) after a 7-byte ':W&B' header, holding
    wandb_internal.proto Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, records, pending, block = 7, [], b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # a record cut short (its writer was killed)
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def last_offline_step(run_dir: Path, run_id: str) -> int:
    """The last step the earlier offline folders of run ``run_id`` hold (-1: none)."""
    steps = [-1]
    for path in run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"):
        for record in read_records(path):
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                steps += [json.loads(i.value_json) for i in items if (i.key or "/".join(i.nested_key)) == "_step"]
    return max(steps)
