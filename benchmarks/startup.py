"""Start-up and small-run overhead: a whole 1-sample run of the template agent vs ``import torch, torchvision``.

    python benchmarks/startup.py [--repeats 5] [--also DIR] [--epochs 21]

Runs, in turn and ``--repeats`` times each, ``python -c "import torch, torchvision"``, the same followed by
``gc.freeze()`` (what main.py does once the agent is imported: the collections at the process's exit then skip
torch's objects), and ``python main.py configs/example_exp_0.json`` with one training and one validation sample
for one epoch (a fresh run directory each time). Reports the CPU seconds (user + system, of the child process
and its threads) of each and the run's excess over each baseline: what the template adds to the imports every
run pays anyway. ``--also DIR`` times the same run of another checkout (an earlier commit, unpacked with
``git archive``) in the same rounds. Then, in this process, the fixed cost of an epoch: runs of 1 and of
``--epochs`` epochs of the same one-sample data, alternating; (the longer's median - the shorter's) / (epochs - 1)
is what an epoch costs beyond its one training and one validation sample (checkpoint, metrics.csv, logs).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = ["max_epoch=1", "random_size=3", "batch_size=1", "torch_threads=1"]  # 1 training, 1 validation sample


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
    parser.add_argument("--epochs", type=int, default=21, help="the longer in-process run of the per-epoch figure")
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
    per_epoch(args.epochs, args.repeats, exps)


def per_epoch(epochs: int, repeats: int, exps: Path) -> None:
    """CPU seconds an epoch adds beyond its samples: in-process runs of 1 and ``epochs`` epochs, alternating."""
    sys.path.insert(0, str(REPO))
    import main

    lengths: dict[int, list[float]] = {1: [], epochs: []}
    for r in range(repeats + 1):  # the first round warms up (imports, first calls) and is not counted
        for n in (1, epochs) if r % 2 else (epochs, 1):
            start = time.process_time()
            main.run(
                str(REPO / "configs/example_exp_0.json"),
                [*TINY, f"max_epoch={n}", f"experiments_dir={exps}", f"exp_name=epochs{n}_{r}"],
            )
            if r:
                lengths[n].append(time.process_time() - start)
    short, long = (statistics.median(lengths[n]) for n in (1, epochs))
    print(
        f"in-process runs, CPU seconds (medians of {repeats}): 1 epoch {short:.3f}, {epochs} epochs {long:.3f}; "
        f"fixed cost of an epoch {(long - short) / (epochs - 1) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
