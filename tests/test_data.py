"""The sampler every loader uses: sharding across ranks, per-epoch order, mid-epoch skip."""

import pytest

from utils.data import ShardedSampler


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize(("length", "world"), [(10, 1), (10, 3), (9, 3), (1, 2), (7, 4)])
def test_sharded_sampler_covers_the_data_once_per_epoch(pad, length, world):
    shards = []
    for rank in range(world):
        sampler = ShardedSampler(length, shuffle=True, seed=3, pad=pad)
        sampler.rank, sampler.world = rank, world
        sampler.set_epoch(5)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    seen = [i for shard in shards for i in shard]
    assert sorted(set(seen)) == list(range(length))  # every sample, in one epoch
    if pad:
        assert len({len(s) for s in shards}) == 1  # equal work per rank: no rank waits at a collective
    else:
        assert len(seen) == length  # evaluation: each sample exactly once
    again = ShardedSampler(length, shuffle=True, seed=3, pad=pad)
    again.rank, again.world = 0, world
    again.set_epoch(5)
    again.skip(1)
    assert list(again) == shards[0][1:]  # a mid-epoch resume sees the rest of the same order
