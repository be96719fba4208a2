#!/usr/bin/env bash
# ./run.sh [--nproc N] CONFIG [key=value ...]
# One process: python main.py ...; N > 1: torchrun --standalone --nproc_per_node N main.py ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
nproc=1
if [[ "${1:-}" == "--nproc" ]]; then
  nproc="${2:?--nproc needs a number}"
  shift 2
fi
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --nproc: expected a positive integer, got '$nproc'" >&2
  exit 2
fi
# The interpreter: $PYTHON when set, else the project's .venv (the README's install makes it), else python3.
if [[ -z "${PYTHON:-}" && -x "$here/.venv/bin/python" ]]; then
  PYTHON="$here/.venv/bin/python"
fi
PYTHON="${PYTHON:-python3}"
if [[ "$nproc" == 1 ]]; then
  exec "$PYTHON" "$here/main.py" "$@"
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$nproc" "$here/main.py" "$@"
