"""Run under torchrun by the test of every shipped config under DDP: several runs of main.run, one after
the other, in the same processes.

    torchrun --nproc_per_node 2 tests/ddp_jobs.py JOBS.json OUT_DIR

The runs share one process group: finalize leaves it in place here (tearing the default group down and making it
again in the same processes races on torchrun's store). JOBS.json is a list of [config, [key=value, ...]];
"{rank}" in a key=value becomes the rank (a per-rank experiments_dir: machines without shared storage). After
each run, OUT_DIR/rank<r>.json lists every run's outcome so far: "ok", or the UserError's message (a timeout then
shows which run hung).
"""

import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.training import distributed  # noqa: E402


def run_jobs(jobs_file: Path, out: Path) -> None:
    rank = os.environ.get("RANK", "0")
    teardown, distributed.teardown = distributed.teardown, lambda: None
    outcomes = []
    for config, overrides in json.loads(jobs_file.read_text()):
        try:
            main.run(config, [o.replace("{rank}", rank) for o in overrides])
            outcomes.append("ok")
        except UserError as e:
            outcomes.append(f"error: {e}")
        except Exception:  # noqa: BLE001 (a bug: kept with its traceback for the test's message)
            outcomes.append(f"bug: {traceback.format_exc()}")
            (out / f"rank{rank}.json").write_text(json.dumps(outcomes))
            raise
        (out / f"rank{rank}.json").write_text(json.dumps(outcomes))
    teardown()


if __name__ == "__main__":
    run_jobs(Path(sys.argv[1]), Path(sys.argv[2]))
