"""BaseAgent's training loop vs a hand-written PyTorch loop: same net, data, optimizer and steps.

    python benchmarks/loop_overhead.py [--steps 400] [--repeats 7] [--mlflow]

All loops draw batches from the same DataLoader (MNIST-shaped random data) and train the MNIST
agent's own model and optimizer; only the loop differs. The second calls BaseAgent.train_step
from a plain loop, to show where any overhead sits; the last runs BaseAgent's loop with three
callbacks that take every per-step stage (the callbacks' own cost). Repetitions alternate in a
rotating order.
With --mlflow, a second agent with loggers=["tensorboard", "mlflow"] (MLflow's default local store, a SQLite file,
its run open as in training) runs beside the first (loggers=["tensorboard"]): what tracking costs the loop.
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
    parser.add_argument("--mlflow", action="store_true", help="also the loop with an MLflow logger")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [
        "data_mode=random",
        "net=seed",  # the net of the recorded figures
        "random_size=60000",
        f"max_train_batches={args.steps}",
        "log_every=50",
    ]
    agent = build_agent("configs/mnist_exp_0.json", *overrides, 'loggers=["tensorboard"]')
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

    runs = {
        "plain PyTorch loop": plain_loop,
        "plain loop + train_step": plain_loop_with_train_step,
        "BaseAgent.train_one_epoch": agent.train_one_epoch,
        "BaseAgent + 3 per-step callbacks": loop_with_callbacks,
    }
    tracked = None
    if args.mlflow:
        tracked = build_agent("configs/mnist_exp_0.json", *overrides, 'loggers=["tensorboard","mlflow"]')
        tracked.callbacks.call("on_train_start", tracked)  # opens the MLflow run (untimed)
        runs["train_one_epoch + mlflow"] = tracked.train_one_epoch
    wall, cpu = interleaved(runs, args.repeats)
    agent.finalize()
    if tracked is not None:
        tracked.status = "finished"
        tracked.callbacks.call("on_train_end", tracked)
        tracked.finalize()
    print(f"{args.steps} steps of the MNIST net, batch 64, 1 torch thread, {args.repeats} interleaved repeats")
    for clock, times in (("wall", wall), ("CPU", cpu)):
        print(f"-- {clock} time per step")
        report({k: [t / args.steps * 1e3 for t in v] for k, v in times.items()}, "plain PyTorch loop", "ms")
        if tracked is not None:  # what the MLflow logger adds to the same loop
            pair = {k: [t / args.steps * 1e3 for t in times[k]] for k in runs if "train_one_epoch" in k}
            report(pair, "BaseAgent.train_one_epoch", "ms")


if __name__ == "__main__":
    main()
