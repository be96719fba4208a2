"""BaseAgent's training loop vs a hand-written PyTorch loop: same net, data, optimizer and steps.

    python benchmarks/loop_overhead.py [--steps 400] [--repeats 7]

All loops draw batches from the same DataLoader (MNIST-shaped random data) and train the MNIST
agent's own model and optimizer; only the loop differs. The second calls BaseAgent.train_step
from a plain loop, to show where any overhead sits; the last runs BaseAgent's loop with three
callbacks that take every per-step stage (the callbacks' own cost). Repetitions alternate in a
rotating order.
"""

from __future__ import annotations

import argparse
from itertools import islice

import torch
from common import build_agent, interleaved, report

from utils.training.callbacks import Callback, Callbacks


class PerStep(Callback):
    """Takes the per-step stages and does nothing: what the callback machinery costs a step."""

    def on_train_batch_end(self, agent, logs: dict) -> None:
        pass

    def on_optimizer_step(self, agent, optimizer) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    agent = build_agent(
        "configs/mnist_exp_0.json",
        "data_mode=random",
        "net=seed",  # the net of the recorded figures
        "random_size=60000",
        f"max_train_batches={args.steps}",
        "log_every=50",
    )
    loader, model, optimizer, loss_fn = agent.data_loader.train_loader, agent.model, agent.optimizer, agent.loss

    def plain_loop() -> None:
        model.train()
        for x, y in islice(loader, args.steps):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            loss.item()

    def plain_loop_with_train_step() -> None:  # isolates the cost of BaseAgent.train_step itself
        model.train()
        for batch in islice(loader, args.steps):
            agent.train_step(batch)["loss"].item()

    own, with_callbacks = agent.callbacks, Callbacks([*agent.callbacks.items, PerStep(), PerStep(), PerStep()])

    def loop_with_callbacks() -> None:
        agent.callbacks = with_callbacks
        try:
            agent.train_one_epoch()
        finally:
            agent.callbacks = own

    wall, cpu = interleaved(
        {
            "plain PyTorch loop": plain_loop,
            "plain loop + train_step": plain_loop_with_train_step,
            "BaseAgent.train_one_epoch": agent.train_one_epoch,
            "BaseAgent + 3 per-step callbacks": loop_with_callbacks,
        },
        args.repeats,
    )
    agent.finalize()
    print(f"{args.steps} steps of the MNIST net, batch 64, 1 torch thread, {args.repeats} interleaved repeats")
    for clock, times in (("wall", wall), ("CPU", cpu)):
        print(f"-- {clock} time per step")
        report({k: [t / args.steps * 1e3 for t in v] for k, v in times.items()}, "plain PyTorch loop", "ms")


if __name__ == "__main__":
    main()
