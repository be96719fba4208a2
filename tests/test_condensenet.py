"""CondenseNet: condensation stages, conversion, FLOP counts, exact resume, CIFAR-10 pickle batches, learning."""

import json
import os
import pickle
import signal

import numpy as np
import pytest
import torch

import main
from agents.condensenet import CondenseNetAgent
from datasets.cifar10 import Cifar10DataLoader, crop_and_flip
from graphs.models.condensenet import CondenseNet, condense, condensed_skeleton
from graphs.models.custom_layers.learned_group_conv import LearnedGroupConv, condensation_stage
from tests.conftest import CONFIGS, assert_same_tensors, load, train
from utils.errors import RunInterrupted, UserError
from utils.examples.flops import count_flops

CONFIG = CONFIGS / "condensenet_exp_0.json"
TINY = {"stages": [2, 2, 2], "growth": [4, 4, 4]}
# A tiny CondenseNet on 8x8 random images: 8 batches per epoch, so 4 epochs cross every stage boundary.
QUICK = [
    "data_mode=random",
    "random_size=256",
    "valid_size=32",
    "random_image_size=8",
    "stages=[2,2,2]",
    "growth=[4,4,4]",
    "batch_size=32",
    "max_epoch=4",
    "torch_threads=1",
    "log_every=1",  # a stop is honoured at the next check (every log_every steps)
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_stages_start_at_k_over_2_c_minus_1():
    progress = (0, 1 / 6 - 1e-9, 1 / 6, 1 / 3, 0.5 - 1e-9, 0.5, 1)
    assert [condensation_stage(p, 4) for p in progress] == [0, 0, 1, 2, 2, 3, 3]
    assert condensation_stage(1.0, 1) == 0  # condense_factor 1: nothing to prune
    assert [condensation_stage(p, 2) for p in (0.49, 0.5)] == [0, 1]


def test_each_stage_keeps_the_strongest_inputs_of_each_group():
    torch.manual_seed(0)
    layer = LearnedGroupConv(16, 8, groups=4, condense_factor=4)
    # group lasso: the L2 norm of each (group, input) weight group, summed
    expected = layer.conv.weight[:, :, 0, 0].view(2, 4, 16).pow(2).sum(0).sqrt().sum()
    assert layer.lasso_loss().item() == pytest.approx(expected.item(), rel=1e-5)
    kept = [layer.kept_inputs().float().mean().item()]
    for progress in (1 / 6, 1 / 3, 0.5, 0.9):
        layer.update(progress)
        kept.append(layer.kept_inputs().float().mean().item())
        assert (layer.kept_inputs().sum(1) == layer.kept_inputs().sum(1)[0]).all()  # every group alike
    assert kept == [1.0, 0.75, 0.5, 0.25, 0.25]
    assert int(layer.stage) == 3 and layer.lasso_loss().item() == 0  # the final structure is not pushed further
    # Group g holds outputs g, g+4: it keeps the 4 inputs of largest summed |weight| over those outputs.
    importance = layer.conv.weight.abs()[:, :, 0, 0].view(2, 4, 16).sum(0)
    assert torch.equal(layer.kept_inputs(), importance >= importance.topk(4, dim=1).values[:, -1:])
    # Skipping stages (a long first step) prunes as the stages one by one do.
    fresh = LearnedGroupConv(16, 8, groups=4, condense_factor=4)
    fresh.load_state_dict({**layer.state_dict(), "mask": torch.ones(8, 16, 1, 1), "stage": torch.tensor(0)})
    fresh.update(0.7)
    assert torch.equal(fresh.mask, layer.mask)


def trained_tiny_model(progress: float) -> CondenseNet:
    """A tiny CondenseNet after a few SGD steps (so that BN statistics and weights are not at their init)."""
    torch.manual_seed(0)
    model = CondenseNet(**TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(6):
        model.update_condensation(progress * step / 5)
        x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("progress", [0.2, 1.0])  # partly (stage 1) and fully condensed
def test_condensed_model_computes_the_masked_models_outputs(progress):
    model = trained_tiny_model(progress)
    condensed = condense(model).eval()
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        assert (condensed(x) - model(x)).abs().max() <= 1e-4
    layer = condensed.features.denseblock_1.layers[0]
    assert layer.groups == 4 and layer.groups * layer.kept == 4 * 8 * (1 - condensation_stage(progress, 4) / 4)


def test_condensed_model_keeps_the_outputs_with_negative_batch_norm_scales_also_reloaded():
    """A batch norm whose scale is negative flips its clamp's bound (an upper one): still the same outputs, also
    after condensed.pth's way back (a skeleton loading the state dict)."""
    model = trained_tiny_model(1.0)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.weight.data[::3] *= -1
    condensed = condense(model).eval()
    skeleton = condensed_skeleton(**TINY).eval()
    skeleton.load_state_dict(condensed.state_dict())
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        assert (condensed(x) - model(x)).abs().max() <= 1e-4 and (skeleton(x) - model(x)).abs().max() <= 1e-4


def test_condensenet_86_counts_match_the_papers_table():
    model = CondenseNet()  # the defaults: CondenseNet-86
    flops, params = count_flops(model, (3, 32, 32))
    assert abs(flops / 65.8e6 - 1) < 0.02 and abs(params / 0.52e6 - 1) < 0.02
    flops, params = count_flops(condensed_skeleton(), (3, 32, 32))
    assert abs(flops / 65.8e6 - 1) < 0.02 and abs(params / 0.516e6 - 1) < 0.02
    assert model.classifier.in_features == 800


def test_count_flops_follows_the_authors_conventions():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1, groups=2),  # 4*8*9*6*6/2 = 5184; params 8*2*9 + 8 = 152
        torch.nn.BatchNorm2d(8),  # params 16
        torch.nn.ReLU(),  # 8*6*6 = 288
        torch.nn.AvgPool2d(2),  # 8*3*3*4 = 288
        torch.nn.Flatten(),
        torch.nn.Linear(72, 5),  # 365; params 365
    )
    assert count_flops(net, (4, 6, 6)) == (5184 + 288 + 288 + 365, 152 + 16 + 365)
    with pytest.raises(TypeError, match="no rule for a Softmax"):
        count_flops(torch.nn.Sequential(torch.nn.Softmax(dim=1)), (3,))


def test_tiny_condensenet_trains_through_every_stage_and_exports_the_condensed_model(exps):
    train(CONFIG, exps, "exp_name=tiny", *QUICK)
    run = exps / "tiny"
    log = (run / "logs" / "run.log").read_text()
    assert all(f"condensation stage {k} of 3" in log for k in (1, 2, 3))
    state = torch.load(run / "checkpoints" / "condensed.pth", weights_only=True)
    assert state["condensed"] is True and not any(k.endswith("mask") for k in state["models"]["model"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 32
    assert summary["condensed_params"] < summary["num_params"] and summary["condensed_flops"] <= summary["flops"]
    # mode=test on the condensed checkpoint gives the masked last.pth's metrics.
    results = {}
    for name in ("last", "condensed"):
        path = run / "checkpoints" / f"{name}.pth"
        train(CONFIG, exps, "exp_name=tiny", *QUICK, "mode=test", f"resume={path}")
        results[name] = json.loads((run / "summary.json").read_text())
    for key in ("test/loss", "test/accuracy", "test/top5_accuracy"):
        assert results["condensed"][key] == pytest.approx(results["last"][key], abs=1e-5)
    tests = results["condensed"]["tests"]  # each checkpoint tested keeps its own entry
    assert set(tests) == {"checkpoints/last.pth", "checkpoints/condensed.pth"}
    assert tests["checkpoints/last.pth"]["test/loss"] == results["last"]["test/loss"]
    with pytest.raises(UserError, match="cannot be trained further"):
        train(CONFIG, exps, "exp_name=other", *QUICK, f"resume={run / 'checkpoints' / 'condensed.pth'}")
    before = (run / "checkpoints" / "condensed.pth").read_bytes()
    train(CONFIG, exps, "exp_name=tiny", *QUICK)  # a finished run, run again, rewrites nothing
    assert (run / "checkpoints" / "condensed.pth").read_bytes() == before
    # mode=export of condensed.pth exports it as it is (it was condensed a second time, and crashed).
    train(CONFIG, exps, "exp_name=tiny", *QUICK, "mode=export", f"resume={run / 'checkpoints' / 'condensed.pth'}")
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["checkpoint"].endswith("condensed.pth") and max(info["verified"]["max_abs_diff"].values()) <= 1e-4


def stop_at(monkeypatch, step: int) -> None:
    """Simulate Ctrl-C arriving during step ``step`` (BaseAgent saves and stops after that step)."""
    original = CondenseNetAgent.train_step

    def train_step(self, batch):
        if self.global_step == step:
            self.signals.received = signal.SIGINT
        return original(self, batch)

    monkeypatch.setattr(CondenseNetAgent, "train_step", train_step)


def test_resume_mid_epoch_across_a_stage_boundary_is_exact(exps, monkeypatch):
    # 8 batches per epoch, 32 steps: stage 2 comes at progress 1/3, step 11 (epoch 2, batch 3).
    train(CONFIG, exps, "exp_name=straight", *QUICK, "augment=true")
    stop_at(monkeypatch, 9)
    with pytest.raises(RunInterrupted):
        train(CONFIG, exps, "exp_name=resumed", *QUICK, "augment=true")
    monkeypatch.undo()
    stopped = load(exps / "resumed" / "checkpoints" / "last.pth")
    assert stopped["epoch"] == 1 and stopped["batch_in_epoch"] == 2
    assert int(stopped["models"]["model"]["features.denseblock_1.denselayer_1.conv_1.stage"]) == 1
    train(CONFIG, exps, "exp_name=resumed", *QUICK, "augment=true")
    a, b = (load(exps / n / "checkpoints" / "last.pth") for n in ("straight", "resumed"))
    assert int(b["models"]["model"]["features.denseblock_1.denselayer_1.conv_1.stage"]) == 3
    for key in ("models", "optimizers", "epoch", "global_step"):
        assert_same_tensors(a[key], b[key], key)
    c, d = (load(exps / n / "checkpoints" / "condensed.pth") for n in ("straight", "resumed"))
    assert_same_tensors(c["models"], d["models"], "condensed")


def test_learns_a_learnable_random_set(exps):
    args = ["random_size=640", "valid_size=200", "max_epoch=3", "augment=false", "group_lasso_lambda=1e-5"]
    train(CONFIG, exps, "exp_name=learn", *QUICK, *args)
    summary = json.loads((exps / "learn" / "summary.json").read_text())
    assert summary["best"]["value"] > 0.4  # chance is 0.1


# ----- CIFAR-10 on disk: the python version's pickle batches ------------------------------------------------


def write_cifar(root, per_batch=12, n_test=10, protocol=2, seed=0):
    """cifar-10-batches-py as the official archive unpacks: dicts of uint8 rows (3072 = 3x32x32) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {
            "batch_label": f"{name} of 6",
            "labels": [int(k) for k in labels],
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile"], "num_vis": 3072}, f, protocol=protocol)
    return folder


def cifar_config(root, *overrides):
    return main.load_config(str(CONFIG), ["data_mode=folder", f"data_root={root}", *overrides])[0]


@pytest.mark.parametrize("protocol", [2, 4])
def test_folder_mode_reads_the_pickle_batches(tmp_path, protocol):
    folder = write_cifar(tmp_path, protocol=protocol)
    data = Cifar10DataLoader(cifar_config(tmp_path, "valid_size=20", "batch_size=8", "augment=false"))
    assert len(data.train_loader.sampler) == 40 and len(data.valid_loader.sampler) == 20
    assert len(data.test_loader.sampler) == 10
    x, y = next(iter(data.valid_loader))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    with open(folder / "data_batch_5", "rb") as f:
        raw = pickle.load(f)
    # valid = the last 20 training images: data_batch_4's last 8, then data_batch_5; rows are CHW.
    first = torch.from_numpy(raw["data"][0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor([0.4914, 0.4824, 0.4467]), torch.tensor([0.2471, 0.2435, 0.2616])
    valid_x = torch.cat([b[0] for b in data.valid_loader])
    assert torch.allclose(valid_x[8], (first - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    assert torch.equal(torch.cat([b[1] for b in data.valid_loader])[8:], torch.tensor(raw["labels"]))


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PPT_MARKER']}",))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:500]), "not a readable CIFAR-10 batch"),
        (lambda p: p.write_bytes(b""), "not a readable CIFAR-10 batch"),
        (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "expected a dict with 'data' and 'labels'"),
        (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]})), "3072"),
        (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]})), "1 labels"),
        (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10]})), "label 10"),
        (lambda p: p.write_bytes(pickle.dumps(RunsCode())), "holds a posix.system"),
    ],
)
def test_damaged_or_foreign_batch_is_one_line_naming_it(tmp_path, monkeypatch, damage, message):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("PPT_MARKER", str(marker))
    target = write_cifar(tmp_path / "data") / "data_batch_3"
    damage(target)
    with pytest.raises(UserError, match=message) as info:
        Cifar10DataLoader(cifar_config(tmp_path / "data"))
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_missing_folder_says_how_to_get_the_data(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py: CIFAR-10 folder not found.*data_mode=download"):
        Cifar10DataLoader(cifar_config(tmp_path))


def test_crop_and_flip_takes_a_window_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 6, 6), dtype=torch.uint8)
    torch.manual_seed(1)
    out = crop_and_flip(images)
    padded = torch.nn.functional.pad(images, (4,) * 4)
    seen = set()
    for i in range(len(images)):
        windows = {(t, left): padded[i, :, t : t + 6, left : left + 6] for t in range(9) for left in range(9)}
        matches = [
            (t, left, flip)
            for (t, left), w in windows.items()
            for flip in (False, True)
            if torch.equal(out[i], w.flip(-1) if flip else w)
        ]
        assert matches, f"image {i} is no window of its padded self"
        seen.update(matches)
    assert {flip for _, _, flip in seen} == {False, True} and len({(t, left) for t, left, _ in seen}) > 20
    torch.manual_seed(1)
    assert torch.equal(crop_and_flip(images), out)  # drawn from torch's RNG: seeded, it repeats
