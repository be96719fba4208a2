"""CondenseNet on the CPU: the condensed network vs the masked training network, and training throughput.

    python benchmarks/condensenet.py [--repeats 5] [--batches 20] [--threads N] [--tiny] [--inference-only]

1. Inference images/s of CondenseNet-86 (32x32 input, eval mode, no grad) at batch 64 and batch 1:
   the masked network as trained (fully condensed masks) vs its conversion (``condense``: one gather
   per layer, batch norms folded, grouped 1x1 convolutions as one matrix product, the channel shuffle
   absorbed into the 3x3 convolution, one output tensor per block), in eager PyTorch and in onnxruntime
   (CPUExecutionProvider, as many threads as torch; each network exported by torch.onnx.export with
   dynamo=True), all four timed side by side in one run. The ratio condensed / masked is what the
   conversion is for: on a CPU shared with other processes only such ratios mean something, so each is
   given by wall time and by this process's CPU time (which does not count time others hold the cores).
2. Training images/s of CondenseNet-86 through the agent's own train_step (batch 64, random 32x32
   CIFAR-shaped uint8 data, crop + flip + normalise on whole batches: the same path as data_mode=folder
   after loading), and the data path's share of an epoch: the time to make the batches over the time
   to make them and train on them.
``--tiny`` runs a 3x2-layer CondenseNet instead, to check that the script works.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from common import build_agent, interleaved

from graphs.models.condensenet import CondenseNet, condense

TINY = {"stages": [2, 2, 2], "growth": [4, 4, 4]}


def inference(model: torch.nn.Module, x: torch.Tensor, calls: int):
    """``calls`` forward passes on ``x`` without autograd."""

    def run() -> None:
        with torch.no_grad():
            for _ in range(calls):
                model(x)

    return run


def onnxruntime_session(model: torch.nn.Module, x: torch.Tensor, folder: Path, name: str):
    """``model`` exported to ONNX (dynamic batch) and loaded in onnxruntime's CPU provider with torch's thread count."""
    import onnxruntime

    path = folder / f"{name}.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (x[:2],), str(path), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_inference(session, x: torch.Tensor, calls: int):
    """``calls`` onnxruntime runs on ``x``."""
    feed = {session.get_inputs()[0].name: x.numpy()}

    def run() -> None:
        for _ in range(calls):
            session.run(None, feed)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="training batches timed per repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a tiny CondenseNet: checks the script, measures nothing")
    parser.add_argument("--inference-only", action="store_true", help="skip the training measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arguments = TINY if args.tiny else {}
    name = "tiny CondenseNet" if args.tiny else "CondenseNet-86"
    print(f"{name}, {torch.get_num_threads()} torch thread(s), {args.repeats} interleaved repeats")

    torch.manual_seed(0)
    masked = CondenseNet(**arguments)
    masked.update_condensation(1.0)
    masked.eval()
    condensed = condense(masked).eval()
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        difference = float((condensed(x) - masked(x)).abs().max())
    print(f"max abs difference of the outputs, condensed vs masked (batch 64): {difference:.2e}")
    with tempfile.TemporaryDirectory() as folder:  # a session holds its model: the files can go
        networks = {"masked": masked, "condensed": condensed}
        sessions = {name: onnxruntime_session(m, x, Path(folder), name) for name, m in networks.items()}
    for batch in (64, 1):
        x = torch.randn(batch, 3, 32, 32)
        calls = max(1, 64 // batch)  # batch 1: 64 calls per timing, so each timing is of 64 images
        runs = {"masked": inference(masked, x, calls), "condensed": inference(condensed, x, calls)}
        runs |= {f"onnxruntime {n}": ort_inference(session, x, calls) for n, session in sessions.items()}
        wall, cpu = interleaved(runs, args.repeats)
        for prefix in ("", "onnxruntime "):
            m, c = prefix + "masked", prefix + "condensed"
            speed = {k: batch * calls / statistics.median(wall[k]) for k in (m, c)}
            paired = statistics.median(b / a for a, b in zip(wall[c], wall[m], strict=True))
            cpu_ratio = statistics.median(cpu[m]) / statistics.median(cpu[c])
            print(
                f"{prefix or 'eager '}inference batch {batch:>2}: masked {speed[m]:8.1f} images/s, condensed "
                f"{speed[c]:8.1f} images/s; condensed/masked: wall {speed[c] / speed[m]:.2f} (paired {paired:.2f}), "
                f"CPU time {cpu_ratio:.2f}"
            )
    if args.inference_only:
        return

    overrides = [f"{k}={v}".replace(" ", "") for k, v in arguments.items()]
    agent = build_agent(
        "configs/condensenet_exp_0.json",
        "data_mode=random",
        f"random_size={args.batches * 64}",
        "valid_size=64",
        "batch_size=64",
        *overrides,
    )
    loader = agent.data_loader.train_loader
    batches = list(loader)  # the baseline's batches, made once
    agent.model.train()

    def make_batches() -> None:
        for _ in loader:
            pass

    def train_on_batches() -> None:
        for batch in batches:
            agent.train_step(batch)

    wall, _ = interleaved({"data path": make_batches, "training steps": train_on_batches}, args.repeats)
    agent.finalize()
    data, steps = statistics.median(wall["data path"]), statistics.median(wall["training steps"])
    images = sum(len(b[1]) for b in batches)
    print(
        f"training: {images / steps:.1f} images/s on made batches; data path {images / data:.1f} images/s; "
        f"data path share of an epoch {data / (data + steps):.1%}"
    )


if __name__ == "__main__":
    main()
