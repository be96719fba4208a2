#!/usr/bin/env bash
# ./run.sh [--nproc N] CONFIG [key=value ...]
#        ./run.sh [--nproc N] --sweep SWEEP.json [key=value ...] [--workers K]
# One process: python main.py ...; N > 1: torchrun --standalone --nproc_per_node N main.py ...
# A sweep runs in main.py, which starts each trial (with N processes, through this script again).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
for arg in "$@"; do
  if [[ "$arg" == "--sweep" ]]; then
    exec "$PYTHON" "$here/main.py" "$@"
  fi
done
nproc=1
if [[ "${1:-}" == "--nproc" ]]; then
  nproc="${2:?--nproc needs a number}"
  shift 2
fi
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --nproc: expected a positive integer, got '$nproc'" >&2
  exit 2
fi
if [[ "$nproc" == 1 ]]; then
  exec "$PYTHON" "$here/main.py" "$@"
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$nproc" "$here/main.py" "$@"
