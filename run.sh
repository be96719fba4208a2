#!/usr/bin/env bash
# ./run.sh [--nproc N] CONFIG [key=value ...]
# The same as python main.py ...; with --nproc N > 1, main.py checks the config once, then starts
# N processes under torchrun (torch.distributed.run --standalone).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${PYTHON:-python3}" "$here/main.py" "$@"
