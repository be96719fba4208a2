"""BaseAgent switches: mixed precision, gradient clipping, periodic checkpoints, determinism."""

import numpy
import pytest
import torch

import main
from tests.conftest import CONFIGS, load, train
from utils.run import checkpoint

EXAMPLE = CONFIGS / "example_exp_0.json"


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_checkpoints_its_scaler(exps, amp):
    train(EXAMPLE, exps, f"exp_name={amp}", f"amp={amp}", "max_epoch=2")
    state = load(exps / amp / "checkpoints" / "last.pth")
    assert (state["scaler"] is not None) == (amp == "fp16")
    if amp == "fp16":  # the scaler was used: one update per optimizer step (no overflow at this scale)
        assert state["scaler"]["_growth_tracker"] == state["global_step"]
    train(EXAMPLE, exps, f"exp_name={amp}", f"amp={amp}", "max_epoch=3")  # and resumes
    state = load(exps / amp / "checkpoints" / "last.pth")
    assert state["epoch"] == 3
    if amp == "fp16":  # the scaler resumed where it was: its count of good steps goes on
        assert state["scaler"]["_growth_tracker"] == state["global_step"]


def test_grad_clip_norm_bounds_the_update(exps):
    config, cls = main.load_config(
        str(EXAMPLE),
        [
            f"experiments_dir={exps}",
            "exp_name=clip",
            "grad_clip_norm=0.01",
            "optimizer.type=SGD",
            "optimizer.args.lr=1.0",
        ],
    )
    agent = cls(config)
    try:
        before = [p.detach().clone() for p in agent.model.parameters()]
        x = torch.randn(8, config.channels, config.image_size, config.image_size) * 100
        loss = agent.model(x).pow(2).sum()  # a huge gradient
        agent.optimize(loss, agent.optimizer)
        step = torch.sqrt(
            sum(((p.detach() - b) ** 2).sum() for p, b in zip(agent.model.parameters(), before, strict=True))
        )
        assert 0 < step <= 0.01 * 1.0001  # lr 1: the update is the clipped gradient
    finally:
        agent.finalize()


def test_periodic_checkpoints_keep_the_last_k(exps):
    train(EXAMPLE, exps, "exp_name=every", "max_epoch=5", "checkpoint_every=1", "keep_checkpoints=2")
    kept = sorted(p.name for p in (exps / "every" / "checkpoints").glob("epoch_*.pth"))
    assert kept == ["epoch_0004.pth", "epoch_0005.pth"]
    assert load(exps / "every" / "checkpoints" / "epoch_0004.pth")["epoch"] == 4


def test_periodic_checkpoints_are_pruned_by_number_past_epoch_9999(tmp_path):
    for epoch in (9998, 9999, 10000, 10001):
        (tmp_path / f"epoch_{epoch:04d}.pth").write_bytes(b"")
    (tmp_path / "epoch_mine.pth").write_bytes(b"")  # not ours: never deleted
    checkpoint.prune_epochs(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_10000.pth", "epoch_10001.pth", "epoch_mine.pth"]


def test_lr_scheduler_steps_once_per_epoch(exps):
    train(
        EXAMPLE,
        exps,
        "exp_name=sched",
        "max_epoch=3",
        'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}',
        "optimizer.args.lr=0.08",
    )
    state = load(exps / "sched" / "checkpoints" / "last.pth")
    assert state["optimizers"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)


def test_plateau_scheduler_gets_the_monitored_metric(exps):
    train(
        EXAMPLE,
        exps,
        "exp_name=plateau",
        "max_epoch=2",
        'scheduler={"type": "ReduceLROnPlateau", "args": {"mode": "max", "patience": 0}}',
    )
    state = load(exps / "plateau" / "checkpoints" / "last.pth")
    assert state["schedulers"]["scheduler"]["best"] == pytest.approx(state["best"])


@pytest.mark.parametrize("channels", [1, 3])
def test_recorder_png_keeps_every_pixel_of_grey_and_colour_images(tmp_path, channels):
    from PIL import Image

    from utils.run.recorder import Recorder

    image = torch.randint(0, 256, (channels, 5, 7), dtype=torch.uint8)
    recorder = Recorder(tmp_path / "run", enabled=True)
    recorder.png("sub/picture.png", image)
    recorder.close()
    with Image.open(tmp_path / "run" / "out" / "sub" / "picture.png") as png:
        read = torch.from_numpy(numpy.array(png))
    assert torch.equal(read.reshape(5, 7, channels).permute(2, 0, 1), image)


def test_max_test_batches_limits_mode_test(exps, monkeypatch):
    from agents.base import BaseAgent

    train(EXAMPLE, exps, "exp_name=t", "max_epoch=1", "random_size=640", "batch_size=16")  # a test split of 128
    calls = []
    step = BaseAgent.eval_step
    monkeypatch.setattr(
        BaseAgent, "eval_step", lambda self, batch, metrics: calls.append(1) or step(self, batch, metrics)
    )
    train(EXAMPLE, exps, "exp_name=t", "max_epoch=1", "random_size=640", "batch_size=16", "mode=test")
    assert len(calls) == 8
    calls.clear()
    train(
        EXAMPLE,
        exps,
        "exp_name=t",
        "max_epoch=1",
        "random_size=640",
        "batch_size=16",
        "mode=test",
        "max_test_batches=2",
    )
    assert len(calls) == 2
