"""DQN on CartPole-v1: solve step and seconds over several seeds, and env steps per second.

    python benchmarks/dqn_cartpole.py --seeds 1 2 3 4 5 [--jobs 2] [--in-process] [key=value ...]
    python benchmarks/dqn_cartpole.py --seeds 1-20 --in-process total_steps=25000   # steps to solve only

Each seed is a separate ``python main.py configs/dqn_exp_0.json seed=S`` process (``--jobs``
at a time), writing to a temporary experiments directory; the figures come from its summary.json.
"s to solve" and "wall s" are the agent's own clock (from building the agent; the Python and
torch start-up of about 3 s is not in them); "process s" is the whole command. ``--in-process``
runs the seeds one after another in this process (no start-up per seed): the step a seed solves
at is the same either way (it depends on the seed alone), "process s" is then the run's alone.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_seed(seed: int, exps: Path, overrides: list[str], in_process: bool = False) -> dict:
    args = [f"seed={seed}", f"exp_name=seed{seed}", f"experiments_dir={exps}", "resume=false", *overrides]
    start = time.time()
    if in_process:
        sys.path.insert(0, str(REPO))
        import main

        main.run(str(REPO / "configs" / "dqn_exp_0.json"), args)
    else:
        cmd = [sys.executable, str(REPO / "main.py"), str(REPO / "configs" / "dqn_exp_0.json"), *args]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"seed {seed} failed:\n{result.stderr[-2000:]}")
    summary = json.loads((exps / f"seed{seed}" / "summary.json").read_text())
    summary["process_seconds"] = time.time() - start
    return summary


def seed_range(word: str) -> list[int]:
    first, _, last = word.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", default=["1-5"], help="seeds and ranges: 1 2 7-9")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (1 for clean timings)")
    parser.add_argument("--in-process", action="store_true", help="run the seeds in this process, one at a time")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. hidden=[64,64]")
    args = parser.parse_args()
    args.seeds = [s for word in args.seeds for s in seed_range(word)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.in_process:  # in the main thread: the agent installs its Ctrl-C handler there
            summaries = [run_seed(s, Path(tmp), args.overrides, in_process=True) for s in args.seeds]
        else:
            with ThreadPoolExecutor(args.jobs) as pool:
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
    at = {seed: s["solved_at_step"] for seed, s in zip(args.seeds, summaries, strict=True)}
    print(f"solved_at_step per seed: {at}")
    if solved:
        steps = [s["solved_at_step"] or math.inf for s in summaries]  # an unsolved seed counts as never
        secs = [s["solved_at_seconds"] for s in solved]
        print(f"solved_at_step: median {statistics.median(steps):.0f}, worst {max(steps)}")
        print(f"seconds to solve: median {statistics.median(secs):.1f}, worst {max(secs):.1f}")
    rates = [s["steps"] / s["wall_seconds"] for s in summaries]
    print(f"env steps per second with training: median {statistics.median(rates):.0f}")
    print(
        f"per seed ({'the run' if args.in_process else 'the whole command, start-up included'}): "
        f"median {statistics.median(s['process_seconds'] for s in summaries):.1f} s"
    )


if __name__ == "__main__":
    main()
