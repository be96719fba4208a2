"""Run under torchrun by tests/test_distributed.py: train, validate, dump this rank's results.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR CONFIG key=value ...

Writes OUT_DIR/rank<r>.pt with the rank's final parameters and its (all-reduced) validation
metrics, which only a test can see: the agent itself writes from rank 0 alone.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402


def run(out: Path, config_path: str, overrides: list[str]) -> None:
    config, cls = main.load_config(config_path, overrides)
    agent = cls(config)
    try:
        agent.run()
        metrics = agent.validate()
        params = {k: v.detach().cpu() for k, v in agent.unwrap(agent.model).state_dict().items()}
        torch.save({"params": params, "metrics": metrics, "world_size": agent.world_size}, out / f"rank{agent.rank}.pt")
    finally:
        agent.finalize()


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
