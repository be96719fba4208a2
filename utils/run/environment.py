"""env.json: what a result needs to be reproduced months later (Python, torch, CUDA, cuDNN, GPUs, the installed
packages as ``pip freeze`` lists them, the git commit and the diff of a dirty tree)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.cache
def git_state() -> dict:
    """The repository's commit, whether its tree is dirty, the diff against the commit and untracked files."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff": None, "untracked": []}
    status = _git("status", "--porcelain") or ""
    untracked = [line[3:] for line in status.splitlines() if line.startswith("?? ")]
    diff = _git("diff", "HEAD")
    return {"commit": commit.strip(), "dirty": bool(status.strip()), "diff": diff, "untracked": untracked}


@functools.cache  # once a process: reading every package's metadata takes 0.1 s, and a sweep's trials share it
def pip_freeze() -> tuple[str, ...]:
    """``name==version`` of every installed distribution, sorted (what ``pip freeze`` prints, without a process)."""
    names = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return tuple(sorted(f"{name}=={version}" for name, version in names.items()))


def environment() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "git": git_state(),
        "pip_freeze": pip_freeze(),
    }


def write_environment(recorder) -> None:
    """env.json in the run directory (rank 0); an earlier, different one (a resume elsewhere) is kept as env.N.json."""
    if not recorder.enabled:
        return
    path = recorder.run_dir / "env.json"
    text = json.dumps(environment(), indent=2) + "\n"
    if path.exists():
        if path.read_text() == text:
            return  # a re-run of a finished run rewrites nothing
        n = 1
        while (recorder.run_dir / f"env.{n}.json").exists():
            n += 1
        os.replace(path, recorder.run_dir / f"env.{n}.json")
    path.write_text(text)
