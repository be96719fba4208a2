"""Count how mutated configs end: trained, a one-line error (exit 2), or a traceback.

    python benchmarks/bad_configs.py [--examples 500]

Uses the same mutations as tests/test_faults.py (wrong types, unknown and misspelled keys,
nested garbage, huge and negative numbers, empty strings) on the template agent's config, plus
random bytes as whole files; each mutated config runs in this process with debug limits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
from tests.test_faults import BASE, mutate, mutation  # noqa: E402


def outcome(data: bytes, tmp: Path) -> str:
    path = tmp / "mutated.json"
    path.write_bytes(data)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main.main(
                [
                    str(path),
                    f"experiments_dir={tmp}",
                    "max_epoch=1",
                    "max_train_batches=2",
                    "max_valid_batches=1",
                    "num_workers=0",
                    "resume=false",
                ]
            )
        except Exception:  # noqa: BLE001 (what we count: an escaped exception is a traceback)
            return "traceback"
    text = err.getvalue()
    if "Traceback" in text:
        return "traceback"
    if code == 2:
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        return "clear error (exit 2)" if len(errors) == 1 and text.rstrip().endswith(errors[0]) else "unclear exit 2"
    return {0: "ran (exit 0)", 1: "stopped with a message (exit 1)"}.get(code, f"exit {code}")


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=500)
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    tmp = Path(tempfile.mkdtemp(prefix="badcfg-"))
    n = [0]

    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutations=st.lists(mutation, min_size=1, max_size=3))
    def configs(mutations) -> None:
        n[0] += 1
        config = mutate(BASE, mutations)
        if config.get("exp_name") == BASE["exp_name"]:
            config["exp_name"] = f"run{n[0]}"
        counts[outcome(json.dumps(config, allow_nan=True).encode(), tmp)] += 1

    @settings(
        max_examples=max(1, args.examples // 5), deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(data=st.binary(max_size=64))
    def garbage(data: bytes) -> None:
        counts[outcome(data, tmp)] += 1

    configs()
    garbage()
    total = sum(counts.values())
    print(f"{total} mutated configs tried")
    for name, count in counts.most_common():
        print(f"  {name:<32} {count}")


if __name__ == "__main__":
    main_()
