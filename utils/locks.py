"""Lock files (``fcntl.flock``): a run's directory, a sweep worker's life. The holder writes its pid there."""

from __future__ import annotations

import fcntl
from pathlib import Path


def holder(path: Path, remove_if_free: bool = False) -> str | None:
    """The text of the lock file ``path`` while a process holds it ('' until it is written), None when free
    or missing; ``remove_if_free`` deletes a free one (under its lock, so no new holder loses it)."""
    try:
        f = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip()
        if remove_if_free:
            path.unlink(missing_ok=True)
        return None
