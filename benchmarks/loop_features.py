"""BaseAgent's loop with compile / channels_last against the default, and the host-sync change.

    python benchmarks/loop_features.py [--steps 100] [--repeats 5] [--device cpu|cuda]

Each variant is an agent of the same config with one key changed; the epochs are timed in turn
(rotating order, after one untimed warm-up epoch that also compiles). Nets: the MNIST net (28x28)
and a deeper one, torchvision's ResNet-18 on 32x32 images (the template agent with its model
swapped). ``log_every=1`` reads the loss on the host at every step, as the loop did before it
read it every ``log_every`` steps: the "sync every step" row shows what that cost.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torchvision
from common import build_agent, interleaved, report


def agents(net: str, steps: int, device: str) -> dict[str, object]:
    common = [f"max_train_batches={steps}", "log_every=50", f"device={device}", "data_mode=random"]
    if net == "mnist":
        config, common = "configs/mnist_exp_0.json", [*common, "random_size=20000", "net=seed"]
    else:
        config, common = "configs/example_exp_0.json", [*common, "random_size=8192", "num_classes=10"]
    variants = {
        "default": [],
        "sync every step (log_every=1)": ["log_every=1"],
        "channels_last": ["channels_last=true"],
        "compile": ["compile=true"],
    }
    built = {}
    for name, overrides in variants.items():
        agent = build_agent(config, *common, *overrides)
        if net == "resnet18":
            agent.models.clear()
            model = torchvision.models.resnet18(num_classes=10)
            agent.model = agent.prepare_model(model)
            agent.optimizer = agent.make_optimizer(agent.model.parameters())
        built[name] = agent
    return built


def one_epoch(agent) -> Callable[[], None]:
    def run() -> None:
        agent.train_one_epoch()
        if agent.device.type == "cuda":
            torch.cuda.synchronize()  # the GPU's work is part of the step

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nets", nargs="+", default=["mnist", "resnet18"])
    args = parser.parse_args()
    for net in args.nets:
        built = agents(net, args.steps, args.device)

        runs = {name: one_epoch(agent) for name, agent in built.items()}
        for run in runs.values():
            run()  # warm-up (and compilation)
        wall, _ = interleaved(runs, args.repeats)
        for agent in built.values():
            agent.finalize()
        print(f"-- {net}: {args.steps} steps, batch 64, {args.device}, {args.repeats} interleaved repeats; ms/step")
        report({k: [t / args.steps * 1e3 for t in v] for k, v in wall.items()}, "default", "ms")


if __name__ == "__main__":
    main()
