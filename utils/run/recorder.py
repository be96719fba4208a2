"""Everything a run writes, behind one object that only rank 0 lets through.

Agents never open files or writers themselves: they call the recorder, which on any rank but
0 (and under ``enabled=False``) does nothing, so distributed runs write one set of outputs.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

import torch

from utils.errors import TrainingStopped, UserError
from utils.run.files import write_bytes_atomic, write_text_atomic
from utils.run.report import differing_keys, flatten

DATA_LOG = logging.getLogger("ppt.data")  # datasets log here; the main rank's Recorder writes it to the run log
DATA_LOG.propagate = False  # printed once, by the Recorder (or Python's last-resort stderr handler without one)
LOCK_NAME = ".lock"  # in the run directory, held by the run's main process, which writes its pid there


def _same_file(file: IO, path: Path) -> bool:
    """Whether the open ``file`` is still the one at ``path`` (not removed or replaced since it was opened)."""
    try:
        return os.fstat(file.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _changes(old_text: str, config: dict, shown: int = 6) -> str:
    """' (max_epoch 2 -> 3, optimizer.args.lr 0.1 -> 0.05)': the keys whose values differ."""
    try:
        old = flatten(json.loads(old_text))
    except (ValueError, AttributeError):  # edited by hand into something else than a JSON object
        return ""
    new = flatten(config)
    keys = differing_keys([old, new], leave_out=())

    def value(tree: dict, key: str) -> str:
        return json.dumps(tree[key]) if key in tree else "unset"

    text = [f"{k} {value(old, k)} -> {value(new, k)}" for k in keys[:shown]]
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f" ({', '.join(text)}{more})" if text else ""


def check_run_dir(run_dir: Path) -> None:
    """A run's folder is new or a run's: not a file, a sweep's folder or MLflow's local artifact store."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"config: key 'exp_name': {run_dir} is a file; choose another exp_name")
    sweep = any((run_dir / name).exists() for name in ("sweep.json", ".study"))  # utils/sweep writes them first
    if sweep or run_dir.name == "mlartifacts":
        what = "a sweep's folder (its trials are runs inside it)" if sweep else "MLflow's local artifact store"
        raise UserError(f"config: key 'exp_name': {run_dir} is {what}; choose another exp_name")


class Recorder:
    """Run directory writer: text log, TensorBoard scalars, metrics.csv, JSON files, the lock."""

    FLUSH_SECONDS = 10.0

    def __init__(self, run_dir: Path, enabled: bool, name: str = "agent") -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.logger = logging.getLogger(f"ppt.{name}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO if enabled else logging.WARNING)
        self.loggers: list = []  # utils/run/loggers.py: TensorBoard and the others the config names (rank 0)
        self._pending: list[tuple[dict[str, float], int]] = []
        self._last_flush = time.monotonic()
        self._lock_file = None
        self._file_log: logging.FileHandler | None = None  # run.log (rank 0)
        self._columns: list[str] | None = None  # metrics.csv's header, once read or written
        self._created = enabled and not self.run_dir.exists()
        if not enabled:
            quiet = logging.NullHandler()  # other ranks stay silent, their datasets too
            self.logger.addHandler(quiet)
            DATA_LOG.addHandler(quiet)
            return
        for sub in ("checkpoints", "summaries", "out", "logs"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        self._file_log = logging.FileHandler(self.run_dir / "logs" / "run.log")
        for handler in (logging.StreamHandler(sys.stderr), self._file_log):
            handler.setFormatter(fmt)
            self.logger.addHandler(handler)
            DATA_LOG.addHandler(handler)  # what datasets report (skipped files) goes to the run log too

    def lock(self) -> None:
        """Hold an exclusive lock on the run directory; a second run on it is a UserError."""
        if not self.enabled:
            return
        path = self.run_dir / LOCK_NAME
        while self._lock_file is None:
            self._lock_file = open(path, "a+")  # noqa: SIM115 (held open for the whole run)
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.seek(0)
                pid, _, host = self._lock_file.read().strip().partition(" ")
                self._lock_file.close()
                self._lock_file = None
                raise UserError(
                    f"{path}: another run of this experiment is in progress (pid {pid or '?'}"
                    f"{f' on {host}' if host else ''}); "
                    "wait for it or choose another exp_name"
                ) from None
            if not _same_file(self._lock_file, path):  # its holder removed it as it finished: lock the new one
                self._lock_file.close()
                self._lock_file = None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()} {socket.gethostname()}")  # a sweep signals only its own machine's
        self._lock_file.flush()

    def info(self, msg: str) -> None:
        self.logger.info(msg)

    def warning(self, msg: str) -> None:
        self.logger.warning(msg)

    def failed(self, error: BaseException) -> None:
        """Why the run ended, in run.log only (main prints it on the terminal): a mistake's message (one line), a
        bug's traceback."""
        if self._file_log is None or self._wrote_nothing():  # a new folder that goes away
            return
        if isinstance(error, KeyboardInterrupt):
            why = "aborted: stopped at once by a second Ctrl-C (no checkpoint of the last steps)"
        elif isinstance(error, (UserError, TrainingStopped)):
            why = "failed: " + " ".join(str(error).split())
        else:
            why = "failed: " + "".join(traceback.format_exception(error)).strip()
        self._file_log.handle(logging.LogRecord(self.logger.name, logging.ERROR, "", 0, why, (), None))

    def scalars(self, values: dict[str, float], step: int, flush: bool = False) -> None:
        """Queue scalars for the loggers; they are written in bursts (every few seconds, on ``flush``, at close).

        Writing each as it comes costs the training loop far more than its share: tensorboardX wakes its writer
        thread for every event (competing with the loop for the GIL), and a tracking server takes a request each.
        """
        if not self.enabled:
            return
        self._pending.append((values, step))
        if flush or time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Hand the queued scalars to the loggers now."""
        if not self._pending:
            return
        for logger in self.loggers:
            logger.log_scalars(self._pending)
        self._pending = []
        self._last_flush = time.monotonic()

    def image(self, tag: str, image: torch.Tensor, step: int, file: str | None = None) -> None:
        """A uint8 (C, H, W) image to the loggers under ``tag`` and, with ``file``, as ``out/<file>`` (a PNG)."""
        if not self.enabled:
            return
        image = image.detach().cpu()
        if file is not None:
            self.png(file, image)
        self.flush()  # the scalars queued before it first: a logger's steps only go up (W&B)
        for logger in self.loggers:
            logger.log_image(tag, image, step)

    def png(self, file: str, image: torch.Tensor) -> None:
        """A uint8 (C, H, W) image as ``out/<file>`` (a PNG; folders in ``file`` are made), not to TensorBoard."""
        if not self.enabled:
            return
        from PIL import Image  # torchvision's encode_png is deprecated since 0.29

        pixels = image.detach().cpu().permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buf, format="PNG")
        path = self.run_dir / "out" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buf.getvalue())

    def text(self, file: str, text: str) -> None:
        """``text`` as ``out/<file>`` (folders in ``file`` are made), written atomically."""
        if not self.enabled:
            return
        path = self.run_dir / "out" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)

    def gif(self, file: str, frames: list[str | torch.Tensor], seconds_per_frame: float = 0.5) -> None:
        """An animated GIF ``out/<file>`` (looping) of ``frames`` in order: uint8 (C, H, W) images, or names of
        PNGs ``out/<frame>`` (those that exist)."""
        if not self.enabled:
            return
        from PIL import Image

        images = [
            Image.fromarray(f.cpu().permute(1, 2, 0).squeeze(2).numpy())
            if isinstance(f, torch.Tensor)
            else Image.open(self.run_dir / "out" / f)
            for f in frames
            if isinstance(f, torch.Tensor) or (self.run_dir / "out" / f).exists()
        ]
        if not images:
            return
        buf = io.BytesIO()
        images[0].save(
            buf,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=round(seconds_per_frame * 1000),
            loop=0,
        )
        for image in images:
            image.close()
        path = self.run_dir / "out" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buf.getvalue())

    def epoch(self, epoch: int, step: int, metrics: dict[str, float], train_loss: float | None) -> None:
        """An epoch's validation: to the loggers, a metrics.csv row (with the epoch's mean training loss), the log."""
        self.scalars(metrics, step, flush=True)
        trained = {"train/loss": train_loss} if train_loss is not None else {}
        self.metrics_row({"epoch": epoch, "step": step, **trained, **metrics})
        self.info(f"epoch {epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def class_names(self, names: list[str] | None, trained: bool) -> None:
        """class_names.json: the classes the run trains on (predict and export name their outputs with them). Once
        ``trained`` on them, data of other classes is refused: a label is a class folder's place among them."""
        saved = self.read_json("class_names.json").get("class_names")
        if not names or names == saved:
            return
        if saved and trained:
            raise UserError(
                f"{self.run_dir / 'class_names.json'}: the run learnt the classes {', '.join(saved)}, but the data's "
                f"class folders are {', '.join(names)}, so its labels would mean other classes; name the folders as "
                "before, or train another run (another exp_name)"
            )
        self.write_json("class_names.json", {"class_names": names})

    def metrics_row(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.csv; the file is rewritten only when a row brings a new column."""
        if not self.enabled:
            return
        path = self.run_dir / "metrics.csv"
        if self._columns is None:  # read the header once; later rows are appended
            self._columns = []
            if path.exists():
                with open(path, newline="") as f:
                    self._columns = next(csv.reader(f), [])
        if not self._columns or not set(row) <= set(self._columns):
            rows = [*self.read_metrics(), row]
            self._write_metrics(rows)
            return
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self._columns).writerow(row)
        with open(path, "a", newline="") as f:  # one write of one line
            f.write(buf.getvalue())

    def read_metrics(self) -> list[dict[str, str]]:
        path = self.run_dir / "metrics.csv"
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def truncate_metrics(self, after_epoch: int) -> None:
        """Drop rows of epochs later than ``after_epoch`` (written before a crash, then redone)."""
        if not self.enabled:
            return
        rows = self.read_metrics()
        kept = [r for r in rows if int(r.get("epoch") or 0) <= after_epoch]
        if len(kept) < len(rows):
            self._write_metrics(kept)

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Replace metrics.csv with ``rows`` in one atomic write (a crash keeps the old file whole)."""
        columns = list(dict.fromkeys(k for r in rows for k in r))
        self._columns = columns
        buf = io.StringIO()
        out = csv.DictWriter(buf, fieldnames=columns)
        out.writeheader()
        out.writerows(rows)
        write_text_atomic(self.run_dir / "metrics.csv", buf.getvalue())

    def curves(self) -> None:
        """out/curves.png: every metrics.csv column against epoch, once; a failure is a warning, not a failed run."""
        if not self.enabled:
            return
        try:
            from utils.run.report import write_run_curves

            write_run_curves(self.run_dir)
        except Exception as e:  # noqa: BLE001 (a plot must never cost a finished run: matplotlib missing, a font...)
            self.warning(f"out/curves.png not written: {type(e).__name__}: {e}")

    def write_json(self, name: str, data: dict) -> None:
        if not self.enabled:
            return
        text = json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2, default=str) + "\n"
        write_text_atomic(self.run_dir / name, text)

    def write_config(self, config: dict) -> None:
        """config.json of this run; an earlier, different one is kept as config.N.json."""
        if not self.enabled:
            return
        path = self.run_dir / "config.json"
        text = json.dumps(config, indent=2) + "\n"
        old = path.read_text() if path.exists() else text
        if old != text:
            changes = _changes(old, config)
            n = 1
            while (self.run_dir / f"config.{n}.json").exists():
                n += 1
            os.replace(path, self.run_dir / f"config.{n}.json")
            self.info(f"config changed since the last run{changes}; the old one is config.{n}.json")
        path.write_text(text)

    def read_json(self, name: str) -> dict:
        path = self.run_dir / name
        return json.loads(path.read_text()) if path.exists() else {}

    def _wrote_nothing(self) -> bool:
        """Whether this run made its directory and wrote nothing in it (its files all empty)."""
        written = (p for p in self.run_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME)
        return self._created and not any(p.stat().st_size for p in written)

    def close(self) -> None:
        if self.enabled:
            self.flush()
        for logger in self.loggers:
            logger.close()
        self.loggers = []
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
            DATA_LOG.removeHandler(handler)
        if self._wrote_nothing():
            shutil.rmtree(self.run_dir)  # a run that failed before writing anything leaves no empty directory
        if self._lock_file is not None:  # released last: no other run starts in a directory being removed
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)  # still held: a finished run leaves no .lock behind
            self._lock_file.close()
            self._lock_file = None
