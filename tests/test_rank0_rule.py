"""The DDP rule, checked in one process: a collective called where rank 0 alone runs raises at once."""

import pytest
import torch

from utils.training import distributed

COLLECTIVES = {
    "all_reduce_sum": lambda: distributed.all_reduce_sum(torch.ones(1)),
    "any_rank": lambda: distributed.any_rank(True),
    "gather_to_main": lambda: distributed.gather_to_main(1),
    "from_main": lambda: distributed.from_main(1),
    "on_main": lambda: distributed.on_main(lambda: 1),
    "main_first": lambda: distributed.main_first().__enter__(),
}


@pytest.mark.parametrize("name", list(COLLECTIVES))
def test_a_collective_in_a_rank0_only_block_raises_in_one_process_too(name):
    call = COLLECTIVES[name]
    call()  # every rank may call it
    rank0_only = pytest.raises(RuntimeError, match=f"distributed.{name} called in a block that rank 0 alone runs")
    with rank0_only, distributed.main_only():
        call()
    with pytest.raises(RuntimeError, match=f"distributed.{name} called in a block"):
        distributed.on_main(call)
    call()  # the mark is gone after the block, also after an error


def test_on_main_returns_rank0s_result():
    assert distributed.on_main(lambda a, b: a + b, 2, 3) == 5
