"""DQN on CartPole-v1: solve step and seconds over several seeds, and env steps per second.

    python benchmarks/dqn_cartpole.py --seeds 1 2 3 4 5 [--jobs 2] [key=value ...]

Each seed is a separate ``python main.py configs/dqn_exp_0.json seed=S`` process (``--jobs``
at a time), writing to a temporary experiments directory; the figures come from its summary.json.
"s to solve" and "wall s" are the agent's own clock (from building the agent; the Python and
torch start-up of about 3 s is not in them); "process s" is the whole command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_seed(seed: int, exps: Path, overrides: list[str]) -> dict:
    cmd = [
        sys.executable,
        str(REPO / "main.py"),
        str(REPO / "configs" / "dqn_exp_0.json"),
        f"seed={seed}",
        f"exp_name=seed{seed}",
        f"experiments_dir={exps}",
        "resume=false",
        *overrides,
    ]
    start = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{result.stderr[-2000:]}")
    summary = json.loads((exps / f"seed{seed}" / "summary.json").read_text())
    summary["process_seconds"] = time.time() - start
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (1 for clean timings)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. hidden=[64,64]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(lambda s: run_seed(s, Path(tmp), args.overrides), args.seeds))
    print(
        f"{'seed':>4} {'solved':>6} {'at step':>8} {'s to solve':>10} {'steps':>7} {'wall s':>7} {'steps/s':>8} "
        f"{'process s':>9}"
    )
    for seed, s in zip(args.seeds, summaries, strict=True):
        rate = s["steps"] / s["wall_seconds"]
        print(
            f"{seed:>4} {s['solved']!s:>6} {s['solved_at_step'] or '-':>8} "
            f"{s['solved_at_seconds'] or float('nan'):>10.1f} {s['steps']:>7} {s['wall_seconds']:>7.1f} {rate:>8.0f} "
            f"{s['process_seconds']:>9.1f}"
        )
    solved = [s for s in summaries if s["solved"]]
    print(f"solved {len(solved)}/{len(summaries)} within the step budget")
    if solved:
        steps = [s["solved_at_step"] for s in solved]
        secs = [s["solved_at_seconds"] for s in solved]
        print(f"solved_at_step: median {statistics.median(steps):.0f}, worst {max(steps)}")
        print(f"seconds to solve: median {statistics.median(secs):.1f}, worst {max(secs):.1f}")
    rates = [s["steps"] / s["wall_seconds"] for s in summaries]
    print(f"env steps per second with training: median {statistics.median(rates):.0f}")
    print(
        f"whole command (start-up included): median {statistics.median(s['process_seconds'] for s in summaries):.1f} s"
    )


if __name__ == "__main__":
    main()
