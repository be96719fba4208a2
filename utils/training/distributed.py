"""Process-group setup from torchrun's environment, and the few collectives the agents need.

Run under ``torchrun`` (``./run.sh --nproc N``) and RANK/WORLD_SIZE/LOCAL_RANK are set (a SLURM job's
tasks set the same, utils/project/slurm.py); run plainly and every helper here degrades to the single-process answer.

The contract of the collectives (``all_reduce_sum``, ``any_rank``, ``gather_to_main``, ``from_main``,
``on_main``, ``main_first``): every rank calls them, in the same order. Code that only rank 0 runs goes
through ``on_main`` (or inside ``main_only()``), where a collective raises at once -- in one process too,
so that the single-process tests catch what would deadlock under ``--nproc``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from utils.training.compile import unwrap_compiled

SHUTDOWN_SECONDS = 120  # torchrun's wait for the workers to save after a signal, unless the environment sets one
T = TypeVar("T")
_main_only_depth = 0  # how many rank-0-only blocks this process is inside


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


def setup(name: str) -> torch.device:
    """The run's device (config key ``device``), after joining torchrun's process group: under DDP each process's
    own GPU; a CUDA device is made current, so that stray .cuda() calls and pinned memory go to it, not GPU 0."""
    device = pick_device(name)
    init(device.type)
    if world_size() > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def wrap(model: torch.nn.Module, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun (its BatchNorm synced across ranks if asked), as is
    otherwise."""
    if world_size() == 1:
        return model
    if sync_batchnorm:
        from utils.errors import UserError

        if device.type != "cuda":
            raise UserError(
                "config: key 'sync_batchnorm': PyTorch's SyncBatchNorm runs on CUDA devices only; "
                "set sync_batchnorm=false to train on the CPU"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile and DDP wrappers (for evaluation and saving)."""
    model = unwrap_compiled(model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_only() -> Iterator[None]:
    """Mark a block that rank 0 alone runs: a collective called inside it raises instead of deadlocking."""
    global _main_only_depth
    _main_only_depth += 1
    try:
        yield
    finally:
        _main_only_depth -= 1


def _collective(name: str) -> None:
    if _main_only_depth:
        raise RuntimeError(
            f"distributed.{name} called in a block that rank 0 alone runs (on_main / main_only): "
            "the other ranks never reach it, and under --nproc the run would deadlock"
        )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in one process); returns it."""
    _collective("all_reduce_sum")
    if world_size() == 1:
        return tensor
    if dist.get_backend() == "nccl" and not tensor.is_cuda:  # NCCL reduces CUDA tensors only
        tensor.copy_(all_reduce_sum(tensor.cuda()).cpu())
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(*flags: bool) -> list[bool]:
    """For each flag, whether it is true on any rank, so that all ranks stop at the same step."""
    _collective("any_rank")
    if world_size() == 1:
        return list(flags)
    t = all_reduce_sum(torch.tensor([float(f) for f in flags]))
    return [v > 0 for v in t.tolist()]


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others); ``[obj]`` in one process."""
    _collective("gather_to_main")
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process): rank 0 decides, the others follow."""
    _collective("from_main")
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` run by rank 0 alone (inside ``main_only``), its result on every rank.

    A user mistake rank 0 meets (UserError) is raised on every rank, so that no rank is left waiting.
    """
    from utils.errors import UserError

    _collective("on_main")
    result, error = None, None
    if is_main():
        with main_only():
            try:
                result = fn(*args)
            except UserError as e:
                if world_size() == 1:
                    raise
                error = str(e)
    result, error = from_main((result, error))
    if error is not None:
        raise UserError(error)
    return result


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
    """Rank 0 runs the block first (a download into shared storage), the other ranks after it succeeded.

    When it fails on rank 0, the other ranks do not try again: they raise a UserError that says so.
    """
    _collective("main_first")
    if world_size() == 1:
        yield
        return
    if not is_main():
        if from_main(None) is not None:
            from utils.errors import UserError

            raise UserError("rank 0 failed to prepare the data (its error is above); this rank did not try")
        yield
        return
    failed = True
    try:
        yield
        failed = False
    finally:
        from_main(failed or None)
