"""scalars.csv: every scalar with its global step (step,name,value), for tools that read a plain file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from utils.run.files import write_text_atomic
from utils.run.loggers.base import Logger


class CSVLogger(Logger):
    """Appends each batch of scalars; a resumed run first drops the rows logged after its checkpoint's step."""

    FILE = "scalars.csv"

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / self.FILE

    def on_train_start(self, agent) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0], *(r for r in rows[1:] if int(r[0]) <= agent.global_step)]
        if len(kept) < len(rows):  # the interrupted run's steps after the checkpoint: this run logs them again
            buf = io.StringIO()
            csv.writer(buf).writerows(kept)
            write_text_atomic(self.path, buf.getvalue())

    def log_scalars(self, rows: list[tuple[dict[str, float], int]]) -> None:
        new = not self.path.exists()
        buf = io.StringIO()
        out = csv.writer(buf)
        if new:
            out.writerow(["step", "name", "value"])
        out.writerows([step, name, value] for values, step in rows for name, value in values.items())
        with open(self.path, "a", newline="") as f:
            f.write(buf.getvalue())
