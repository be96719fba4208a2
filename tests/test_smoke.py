"""Every config in configs/ runs end to end on random data with debug limits."""

import json

import pytest

from tests.conftest import CONFIGS, load, train
from utils.run.report import plot_curves, read_run

# Per-agent overrides that make a run take seconds.
FAST = {
    "DQNAgent": [
        "total_steps=300",
        "learning_starts=100",
        "validate_every=150",
        "eval_episodes=2",
        "solve_episodes=2",
        "buffer_size=500",
    ],
    # The 64x64 default networks at batch 128 take seconds per step on a CPU: tiny ones on 32x32 blobs.
    "DCGANAgent": [
        "data_mode=random",
        "max_epoch=2",
        "max_train_batches=3",
        "image_size=32",
        "ngf=8",
        "ndf=8",
        "batch_size=16",
        "random_size=96",
        "num_workers=0",
    ],
}
DEFAULT_FAST = ["data_mode=random", "max_epoch=2", "max_train_batches=3", "max_valid_batches=2"]
# CondenseNet-86 trains at seconds per step on this CPU: a tiny one on 8x8 images, through every stage.
FAST["CondenseNetAgent"] = [
    *DEFAULT_FAST,
    "stages=[2,2,2]",
    "growth=[4,4,4]",
    "random_size=256",
    "valid_size=64",
    "random_image_size=8",
    "torch_threads=1",
]
# ERFNet at 512x512 crops takes seconds per step on a CPU: 32x32 crops (its 1/8 bottleneck is then 4x4).
FAST["ERFNetAgent"] = [
    *DEFAULT_FAST,
    "crop_size=32",
    "random_image_size=40",
    "batch_size=4",
    "num_workers=0",
    "torch_threads=1",
]


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.json")))
def test_config_runs_on_random_data(config, exps):
    agent = json.loads((CONFIGS / config).read_text())["agent"]
    train(CONFIGS / config, exps, "exp_name=smoke", *FAST.get(agent, DEFAULT_FAST))
    run = exps / "smoke"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["num_params"] > 0 and summary["steps"] > 0
    assert json.loads((run / "config.json").read_text())["agent"] == agent
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    assert rows and "train/loss" in header.split(",")  # the epoch's mean training loss beside the validation
    assert not (run / ".lock").exists()  # released and removed at the end
    state = load(run / "checkpoints" / "last.pth")
    assert state["agent"] == agent and state["models"]
    assert list((run / "summaries").glob("events.out.tfevents.*"))


def test_curves_draw_each_metric_once(exps):
    train(CONFIGS / "example_exp_0.json", exps, "exp_name=curves", *DEFAULT_FAST)
    run = read_run(exps / "curves")
    metrics = [k for k in run.rows[0] if k not in ("epoch", "step")]
    assert plot_curves([run], [run.name], exps / "c.png") == metrics == ["train/loss", "valid/loss", "valid/accuracy"]


def test_curves_leave_room_for_long_tick_labels(tmp_path):
    """Margins are fixed in inches (a layout engine drew each figure twice): tick labels such as
    "-54305.0" still fit, so no ink touches the image's edges."""
    import numpy as np
    from PIL import Image

    from utils.run.report import RunFiles

    rows = [{"epoch": e, "a": -54321.5 + 3.3 * e, "b": 1e-4 * e, "c": 123456.0 * e} for e in range(1, 6)]
    run = RunFiles(tmp_path, "run", {}, rows, {})
    plot_curves([run, run], ["one", "two"], tmp_path / "c.png", ["a", "b", "c"])
    pixels = np.asarray(Image.open(tmp_path / "c.png").convert("L"))
    edges = np.concatenate([pixels[:, :2].ravel(), pixels[:, -2:].ravel(), pixels[:2].ravel(), pixels[-2:].ravel()])
    assert edges.min() > 250, "a label reaches the edge of curves.png"
