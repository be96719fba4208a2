"""Data-loader plumbing shared by every dataset: sharding across ranks, seeding, batched tensors.

Every dataset class builds its loaders with ``make_loader``, so distributed training, exact
resume and per-worker seeding come for free to each new dataset.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import cycle, islice

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from utils.training.distributed import rank, world_size
from utils.training.seeding import derive_seed


class ShardedSampler(Sampler[int]):
    """Shuffles with a seed fixed by (seed, epoch) and keeps this rank's share of the indices.

    For training (``pad=True``) every rank gets the same number of samples, as
    DistributedSampler does, so no rank waits at a collective: the order is padded by cycling
    from its start. For evaluation (``pad=False``) each sample is seen exactly once over all
    ranks, so summed metrics are exact.

    ``skip(n)`` drops the first n samples of this epoch's global order (what every rank
    together had consumed when a run stopped mid-epoch; ``consumed`` counts it), so a resumed
    run sees the rest of the same order even with another process count or batch size. The
    skip belongs to one epoch: ``set_epoch`` clears it.
    """

    def __init__(self, length: int, shuffle: bool, seed: int, pad: bool) -> None:
        self.length, self.shuffle, self.seed, self.pad = length, shuffle, seed, pad
        self.rank, self.world = rank(), world_size()
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._skip = epoch, 0

    def skip(self, n: int, batch_size: int = 1) -> int:
        """Leave out the epoch order's first ``n`` samples; returns the batches of ``batch_size`` per rank they
        made (what a mid-epoch resume counts as done, whatever the process count or batch size was)."""
        self._skip = min(n, self.length)
        return -(-n // (batch_size * self.world))

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        rest = order[self._skip :]
        if self.pad and len(rest) % self.world:
            rest += list(islice(cycle(order), self.world - len(rest) % self.world))
        return rest[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return self._share(self.length - self._skip)

    def epoch_len(self) -> int:
        """Samples this rank draws in a whole epoch (``len`` less any mid-epoch skip)."""
        return self._share(self.length)

    def _share(self, rest: int) -> int:
        total = -(-rest // self.world) * self.world if self.pad else rest
        return len(range(self.rank, total, self.world))

    def consumed(self, batches: int, batch_size: int) -> int:
        """Samples of this epoch's global order used once every rank has taken ``batches`` batches."""
        return min(self._skip + min(batches * batch_size, len(self)) * self.world, self.length)


class TensorBatches(Dataset):
    """Tensors indexed a whole batch at a time (``__getitems__``), with an optional batch transform.

    The DataLoader hands it the batch's indices at once, so a batch costs a few tensor gathers
    rather than one Python call and one collate per sample.
    """

    def __init__(self, *tensors: torch.Tensor, transform=None) -> None:
        self.tensors, self.transform = tensors, transform

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices)
        batch = tuple(t[idx] for t in self.tensors)
        return self.transform(*batch) if self.transform else batch


class EpochSeeded(Dataset):
    """A dataset whose random augmentation is fixed by (seed, epoch, sample index).

    Torch's RNG is seeded before each sample (or each batch of a ``TensorBatches``) is made, so
    the result does not depend on which loader worker makes it, nor on whether the run was
    resumed mid-epoch: with workers, the batches after a resume reach other workers than they
    did in a straight run. Transforms must draw from torch's RNG (torchvision's all do).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with self.seeded(index):
            return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]):
        if not hasattr(self.dataset, "__getitems__"):
            return [self[i] for i in indices]
        with self.seeded(indices[0]):
            return self.dataset.__getitems__(indices)

    @contextmanager
    def seeded(self, index: int) -> Iterator[None]:
        """Inside, torch's CPU generator is seeded for sample ``index`` of the current epoch (an augmentation
        applied later, on the device, draws what the loader would have drawn)."""
        # The CPU generator only: transforms draw from it. torch.manual_seed would also reseed every CUDA
        # device's generator (the model's dropout) and costs 0.1 ms a call, as much as decoding a small JPEG.
        cpu, seed = torch.default_generator, derive_seed(self.seed, "sample", self.epoch, index)
        if get_worker_info() is not None:  # a worker's RNG serves nothing else: seed it in place
            cpu.manual_seed(seed)
            yield
            return
        state = cpu.get_state()  # the main process's stream (dropout) stays untouched
        cpu.manual_seed(seed)
        try:
            yield
        finally:
            cpu.set_state(state)


def _keep_batch(batch):
    return batch


def _seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a loader worker from the seed torch gave it; leave stopping to the main process."""
    # A signal to the whole process group (SLURM's scancel and warning, a pod's SIGTERM) reaches the workers too:
    # torch's handler ends a worker on a SIGTERM not from its parent and fails the run before it saves. Such a
    # SIGTERM is ignored; the parent's still ends the worker (multiprocessing ends leftover workers so at exit).
    if hasattr(signal, "sigwaitinfo"):  # Linux (workers forked: make_loader); macOS, Windows: torch's handler
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by the thread below, in every thread
        threading.Thread(target=_end_on_parents_sigterm, args=(os.getppid(),), daemon=True).start()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _end_on_parents_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


def auto_workers() -> int:
    """``num_workers: "auto"``: the cores this process may use (its CPU affinity) shared by the processes
    on this machine, less one for the training loop itself; 0 with one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(8, per_process - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int | str = 0,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader over this rank's shard: shuffled (and padded) for training, exact for evaluation.

    ``collate_fn`` makes a batch of samples (default: torch's stacking), e.g. padding images of
    several sizes to one.

    ``num_workers`` may be "auto" (``auto_workers``).
    ``pin_memory`` defaults to whether this process uses CUDA (BaseAgent initialises it for a CUDA
    device before the agent builds its loaders): pinned batches copy to the GPU asynchronously.
    """
    sampler = ShardedSampler(len(dataset), shuffle=train, seed=seed, pad=train)
    batched = isinstance(dataset, TensorBatches)
    workers = auto_workers() if num_workers == "auto" else num_workers
    # Workers forked, as Linux has always made them (Python 3.14's default is forkserver): a worker is then the
    # training process's own child, from its first thread on, which the SIGTERM rule of _seed_worker needs.
    forked = workers > 0 and hasattr(signal, "sigwaitinfo")
    return DataLoader(
        EpochSeeded(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_initialized() if pin_memory is None else pin_memory,
        drop_last=drop_last and train,
        collate_fn=_keep_batch if batched else collate_fn,
        worker_init_fn=_seed_worker,
        multiprocessing_context="fork" if forked else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def batches_per_epoch(loader: DataLoader) -> int:
    """Batches of a whole epoch of ``loader`` (whatever a mid-epoch resume skips of the current one)."""
    samples = loader.sampler.epoch_len() if isinstance(loader.sampler, ShardedSampler) else len(loader.sampler)
    return samples // loader.batch_size if loader.drop_last else -(-samples // loader.batch_size)


def set_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Fix the loader's shuffle order, augmentation and worker seeds for ``epoch``."""
    if isinstance(loader.sampler, ShardedSampler):
        loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, EpochSeeded):
        loader.dataset.epoch = epoch
    if loader.generator is not None:
        loader.generator.manual_seed(derive_seed(seed, "workers", epoch, rank()))


def to_device(batch, device: torch.device, channels_last: bool = False):
    """Tensors (also inside lists, tuples and dicts) to ``device``; 4-D float ones channels-last if asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch
