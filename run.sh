#!/usr/bin/env bash
# ./run.sh [--nproc N] CONFIG [key=value ...]
#        ./run.sh [--nproc N] --sweep SWEEP.json [key=value ...] [--workers K]
#        ./run.sh --slurm CONFIG [key=value ...]   (submits the run as a SLURM job: tutorials/09_slurm.md)
# The same as python main.py ...; with --nproc N > 1, main.py checks the config once, then starts
# N processes under torchrun (torch.distributed.run --standalone). A sweep runs in main.py, which
# starts each trial (with N processes, through this script again).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# The interpreter: $PYTHON when set, else the project's .venv (the README's install makes it), else python3.
if [[ -z "${PYTHON:-}" && -x "$here/.venv/bin/python" ]]; then
  PYTHON="$here/.venv/bin/python"
fi
exec "${PYTHON:-python3}" "$here/main.py" "$@"
