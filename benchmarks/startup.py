"""Start-up and small-run overhead: a whole 1-sample run of the template agent vs ``import torch, torchvision``.

    python benchmarks/startup.py [--repeats 5] [--also DIR]

Runs, in turn and ``--repeats`` times each, ``python -c "import torch, torchvision"``, the same followed by
``gc.freeze()`` (what main.py does once the agent is imported: the collections at the process's exit then skip
torch's objects), and ``python main.py configs/example_exp_0.json`` with one training and one validation sample
for one epoch (a fresh run directory each time). Reports the CPU seconds (user + system, of the child process
and its threads) of each and the run's excess over each baseline: what the template adds to the imports every
run pays anyway. ``--also DIR`` times the same run of another checkout (an earlier commit, unpacked with
``git archive``) in the same rounds.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = ["max_epoch=1", "random_size=3", "batch_size=1", "torch_threads=1"]


def cpu_seconds(cwd: Path, command: list[str]) -> float:
    """User + system CPU seconds of ``command`` run in ``cwd`` to its end (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--also", type=Path, help="another checkout whose main.py runs the same, side by side")
    args = parser.parse_args()
    exps = Path(tempfile.mkdtemp(prefix="startup-"))
    baselines = {
        "import torch, torchvision": "import torch, torchvision",
        "the same + gc.freeze()": "import gc, torch, torchvision; gc.freeze()",
    }
    commands = {name: (REPO, [sys.executable, "-c", code]) for name, code in baselines.items()}
    runs = {"1-sample run": REPO, **({f"1-sample run of {args.also}": args.also.resolve()} if args.also else {})}
    times: dict[str, list[float]] = {name: [] for name in [*commands, *runs]}
    for r in range(args.repeats):
        for i, (name, checkout) in enumerate(runs.items()):
            run = [sys.executable, "main.py", "configs/example_exp_0.json", *TINY, f"exp_name=run{r}_{i}"]
            commands[name] = (checkout, [*run, f"experiments_dir={exps}"])
        names = list(commands)
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: a speed drift hits all alike
            times[name].append(cpu_seconds(*commands[name]))
    print(f"CPU seconds (user + system), {args.repeats} rotating repeats; run: example_exp_0 {' '.join(TINY)}")
    for name, values in times.items():
        print(f"{name:<28} median {statistics.median(values):.3f}  all {' '.join(f'{v:.2f}' for v in values)}")
    for run in runs:
        whole = times[run]
        for name in baselines:
            diffs = [w - b for w, b in zip(whole, times[name], strict=True)]
            print(
                f"{run} - {name}: median of the per-repeat differences {statistics.median(diffs):+.3f}, "
                f"difference of the medians {statistics.median(whole) - statistics.median(times[name]):+.3f}"
            )


if __name__ == "__main__":
    main()
