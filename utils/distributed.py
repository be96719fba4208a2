"""Process-group setup from torchrun's environment, and the few collectives the agents need.

Run under ``torchrun`` (``./run.sh --nproc N``) and RANK/WORLD_SIZE/LOCAL_RANK are set (a SLURM job's
tasks set the same, utils/slurm.py); run plainly and every helper here degrades to the single-process answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

SHUTDOWN_SECONDS = 120  # torchrun's wait for the workers to save after a signal, unless the environment sets one


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0, or the only process)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def pick_device(name: str) -> torch.device:
    """The config's ``device`` ("auto", "cpu", "cuda", "cuda:N") as a torch.device (a UserError without CUDA)."""
    from utils.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"config: key 'device': {name!r} asked for, but this machine has no CUDA device; "
            "use device=auto or device=cpu"
        )
    return torch.device(name)


def init(device_type: str) -> None:
    """Join the process group torchrun set up: NCCL for CUDA, Gloo for CPU."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in one process); returns it."""
    if world_size() == 1:
        return tensor
    if dist.get_backend() == "nccl" and not tensor.is_cuda:  # NCCL reduces CUDA tensors only
        tensor.copy_(all_reduce_sum(tensor.cuda()).cpu())
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(*flags: bool) -> list[bool]:
    """For each flag, whether it is true on any rank, so that all ranks stop at the same step."""
    if world_size() == 1:
        return list(flags)
    t = all_reduce_sum(torch.tensor([float(f) for f in flags]))
    return [v > 0 for v in t.tolist()]


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others); ``[obj]`` in one process."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process): rank 0 decides, the others follow."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(nproc: int, argv: list[str]) -> int:
    """``torchrun --standalone --nproc_per_node nproc argv...`` in this process; the workers' exit code.

    A signal to the launcher (Ctrl-C, a scheduler's SIGTERM) is passed on to the workers by
    torchrun; they save a checkpoint and stop, and this returns 130 instead of torchrun's traceback.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    # How long torchrun waits for the workers to save after a signal before it kills them (its default: 30 s).
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_SECONDS))
    try:
        torchrun(["--standalone", "--nproc_per_node", str(nproc), *argv])
    except SignalException:
        return 130
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 1  # negative: killed by a signal
    return 0


def no_sync_unless(sync: bool, models: list[torch.nn.Module]) -> contextlib.AbstractContextManager:
    """DDP's gradient all-reduce skipped (``no_sync``) for ``models`` unless ``sync`` (gradient accumulation)."""
    stack = contextlib.ExitStack()
    if not sync:
        for model in models:
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                stack.enter_context(model.no_sync())
    return stack


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (a download into shared storage), the other ranks after it."""
    if world_size() > 1 and not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if world_size() > 1 and is_main():
            dist.barrier()
