"""The sampler every loader uses: sharding across ranks, per-epoch order, mid-epoch skip."""

import os

import pytest
import torch

from utils.errors import UserError
from utils.training.data import EpochSeeded, ShardedSampler, batches_per_epoch, make_loader, set_epoch


def sampler(length: int, rank: int, world: int, pad: bool = True, epoch: int = 5) -> ShardedSampler:
    s = ShardedSampler(length, shuffle=True, seed=3, pad=pad)
    s.rank, s.world = rank, world
    s.set_epoch(epoch)
    return s


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize(("length", "world"), [(10, 1), (10, 3), (9, 3), (1, 2), (7, 4)])
def test_sharded_sampler_covers_the_data_once_per_epoch(pad, length, world):
    shards = [list(sampler(length, rank, world, pad)) for rank in range(world)]
    seen = [i for shard in shards for i in shard]
    assert sorted(set(seen)) == list(range(length))  # every sample, in one epoch
    if pad:
        assert len({len(s) for s in shards}) == 1  # equal work per rank: no rank waits at a collective
    else:
        assert len(seen) == length  # evaluation: each sample exactly once
    again = sampler(length, 0, world, pad)
    again.skip(world)  # one sample per rank done
    assert list(again) == shards[0][1:]  # a mid-epoch resume sees the rest of the same order


@pytest.mark.parametrize("pad", [True, False])
def test_len_matches_what_is_yielded_for_every_small_length_and_world(pad):
    for length in range(1, 10):
        for world in range(1, 9):
            for skip in (0, 1, world, length):
                counts = []
                for rank in range(world):
                    s = sampler(length, rank, world, pad)
                    s.skip(skip)
                    counts.append(len(list(s)))
                    assert counts[-1] == len(s), (length, world, skip, rank)
                if pad:  # every rank reaches every collective: equal counts, data smaller than the world too
                    assert len(set(counts)) == 1, (length, world, skip, counts)


def consume(length: int, world: int, batch: int, batches: int) -> tuple[list[int], int]:
    """What ``world`` ranks train on in ``batches`` batches of ``batch``, and the position to resume at."""
    seen = []
    for rank in range(world):
        s = sampler(length, rank, world)
        seen += list(s)[: batches * batch]
    return seen, sampler(length, 0, world).consumed(batches, batch)


@pytest.mark.parametrize(
    ("before", "after"),
    [((1, 8), (2, 8)), ((2, 8), (1, 8)), ((1, 8), (1, 6)), ((2, 4), (3, 5)), ((3, 5), (2, 4))],
)
def test_mid_epoch_resume_with_another_layout_sees_each_sample_once(before, after):
    """(processes, batch_size) before and after the resume: nothing of the epoch dropped or repeated."""
    length = 64
    seen, position = consume(length, *before, batches=2)
    world, _ = after
    rest = []
    for rank in range(world):
        s = sampler(length, rank, world)
        s.skip(position)
        rest += list(s)
    assert sorted(set(seen + rest)) == list(range(length))  # nothing dropped

    assert len(seen) + len(rest) - length < world  # at most the padding of one shard


def test_an_epoch_consumed_to_its_end_leaves_nothing_and_the_skip_ends_with_the_epoch():
    length, world = 10, 4  # padded to 12
    position = sampler(length, 0, world).consumed(3, 1)
    assert position == length
    s = sampler(length, 1, world)
    s.skip(position)
    assert len(s) == 0 and list(s) == []
    s.set_epoch(6)  # the next epoch is whole again, although the skipped epoch was never iterated
    assert len(s) == 3


class Noise(torch.utils.data.Dataset):
    """Each sample is a random draw: the stand-in for a random augmentation."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), torch.rand(()).item()])


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_does_not_depend_on_the_worker_or_a_mid_epoch_resume(workers):
    def epoch(skip: int) -> dict[int, float]:
        loader = make_loader(Noise(), batch_size=2, train=True, seed=7, num_workers=workers)
        set_epoch(loader, 3, seed=7)
        loader.sampler.skip(skip)
        return {int(i): float(v) for batch in loader for i, v in batch.tolist()}

    straight, resumed = epoch(0), epoch(6)
    assert len(resumed) == 6 and all(straight[i] == v for i, v in resumed.items())
    in_process = make_loader(Noise(), batch_size=2, train=True, seed=7)
    set_epoch(in_process, 3, seed=7)
    assert {int(i): float(v) for b in in_process for i, v in b.tolist()} == straight
    assert isinstance(in_process.dataset, EpochSeeded)


def test_augmentation_seeds_only_the_cpu_generator_and_restores_the_main_stream(monkeypatch):
    """A batch made in the main process reseeds no accelerator's generator (a GPU model's dropout draws from it;
    torch.manual_seed would reseed it per batch) and leaves the main CPU stream where it was."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    reseeded = []
    for device in (torch.cuda, torch.xpu, torch.mtia):
        monkeypatch.setattr(device, "manual_seed_all", reseeded.append)
    loader = make_loader(Noise(), batch_size=2, train=True, seed=7)
    torch.default_generator.manual_seed(0)
    assert len(list(loader)) == 6
    assert reseeded == [] and torch.equal(torch.rand(3), expected)


def test_batches_per_epoch_ignores_a_mid_epoch_skip():
    loader = make_loader(Noise(), batch_size=5, train=True, seed=7)
    set_epoch(loader, 0, seed=7)
    loader.sampler.skip(6)
    assert len(loader) == 2 and batches_per_epoch(loader) == 3  # 6 of 12 skipped; a whole epoch is 3 batches


def test_num_workers_auto_follows_the_cores_this_process_may_use(monkeypatch, exps):
    import main
    from tests.conftest import EXAMPLE, train
    from utils.training.data import auto_workers

    for cores, local_world, expected in [
        ({0}, None, 0),
        ({0, 1}, None, 1),
        ({0, 1, 2, 3}, "2", 1),
        (set(range(64)), None, 8),
    ]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: cores)
        if local_world:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
        assert auto_workers() == expected, (cores, local_world)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    train(EXAMPLE, exps, "exp_name=auto", "num_workers=auto", "max_epoch=1", "random_size=40")
    assert "; num_workers auto: 0" in (exps / "auto" / "logs" / "run.log").read_text()
    for bad in ("four", "-1", "true"):
        with pytest.raises(UserError, match="key 'num_workers'"):
            main.load_config(str(EXAMPLE), [f"num_workers={bad}"])
