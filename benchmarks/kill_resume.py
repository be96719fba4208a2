"""SIGKILL a training run at random moments, re-run the same command, compare with an unkilled run.

    python benchmarks/kill_resume.py [--trials 12] [--kills 2]

Each trial starts the template agent with dropout (tests/conftest.py's DropoutAgent; random data,
4 short epochs, validation a third of each), kills it --kills times at random moments (training,
validation or a checkpoint save), then runs the same command to the end and compares the final
checkpoint with an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import AGENTS  # noqa: E402
from tests.conftest import EXAMPLE, TEST_AGENTS, load, train  # noqa: E402
from tests.test_faults import KILL_ARGS, kill_and_rerun  # noqa: E402


def same(a: dict, b: dict) -> bool:
    from tests.conftest import assert_same_tensors

    try:
        for key in ("models", "optimizers", "schedulers", "epoch", "global_step", "best"):
            assert_same_tensors(a[key], b[key], key)
    except AssertionError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--kills", type=int, default=2)
    args = parser.parse_args()
    AGENTS.update(TEST_AGENTS)  # KILL_ARGS train DropoutAgent
    exps = Path(tempfile.mkdtemp(prefix="kills-"))
    train(EXAMPLE, exps, "exp_name=straight", *KILL_ARGS)
    reference = load(exps / "straight" / "checkpoints" / "last.pth")
    rng = random.Random(1)
    identical = landed = 0
    for trial in range(args.trials):
        exp = f"trial{trial}"
        kills = kill_and_rerun(exps, exp, [rng.uniform(0.0, 2.0) for _ in range(args.kills)])
        train(EXAMPLE, exps, f"exp_name={exp}", *KILL_ARGS)
        ok = same(reference, load(exps / exp / "checkpoints" / "last.pth"))
        identical += ok
        landed += sum(running for _, running in kills)
        print(f"trial {trial}: kills (epochs checkpointed, run still going) {kills}; identical: {ok}", flush=True)
    print(
        f"{landed} kills landed in a running process ({args.trials * args.kills} tried) over {args.trials} "
        f"trials; {identical}/{args.trials} trials resumed to a result identical to the uninterrupted run"
    )


if __name__ == "__main__":
    main()
