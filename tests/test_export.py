"""mode=export of every example: model.onnx and model.pt2 written, verified against onnxruntime and the reloaded
program, export.json describing them; an unexportable network is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import main
from agents import AGENTS
from agents.example import ExampleAgent
from tests.conftest import CONFIGS, train
from tests.test_condensenet import QUICK as CONDENSENET
from tests.test_dcgan import TINY as DCGAN
from tests.test_dqn import TINY as DQN
from tests.test_erfnet import TINY as ERFNET
from utils.errors import UserError
from utils.run import export as export_module

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MNIST = ["data_mode=random", "random_size=32", "valid_size=8", "batch_size=16", "max_epoch=1"]
TEMPLATE = ["image_size=16", "random_size=40", "batch_size=8", "max_epoch=1"]
EXAMPLES = {
    "mnist": ("mnist_exp_0.json", MNIST, (1, 28, 28)),
    "example": ("example_exp_0.json", TEMPLATE, (3, 16, 16)),
    "erfnet": ("erfnet_exp_0.json", [*ERFNET, "max_epoch=1", "random_size=8"], (3, 40, 48)),
    "dcgan": ("dcgan_exp_0.json", [*DCGAN, "max_epoch=1", "random_size=40"], (100,)),
    "condensenet": ("condensenet_exp_0.json", [*CONDENSENET, "max_epoch=1", "random_size=64"], (3, 8, 8)),
    "dqn": ("dqn_exp_0.json", [*DQN, "total_steps=200"], (4,)),
}


def exported(exps, name: str) -> tuple[dict, onnxruntime.InferenceSession, torch.export.ExportedProgram]:
    config, overrides, _ = EXAMPLES[name]
    train(CONFIGS / config, exps, f"exp_name={name}", *overrides)
    train(CONFIGS / config, exps, f"exp_name={name}", *overrides, "mode=export")
    folder = exps / name / "export"
    onnx.checker.check_model(str(folder / "model.onnx"))
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(folder / "model.pt2")
    return json.loads((folder / "export.json").read_text()), session, program


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "erfnet" else n for n in EXAMPLES])
def test_every_example_exports_verified_files_with_a_dynamic_batch(exps, name):
    info, session, program = exported(exps, name)
    assert info["checkpoint"].endswith("best.pth") and info["epoch"] >= 1 and info["metrics"]
    assert info["input"]["shape"][0] == "batch" and info["output"]["shape"][0] == "batch"
    differences = info["verified"]["max_abs_diff"]
    assert {"onnxruntime, batch 1", "onnxruntime, batch 5", "pt2, batch 1", "pt2, batch 5"} <= set(differences)
    assert max(differences.values()) <= 1e-4
    # A batch size it was neither traced nor verified at, on new inputs: onnxruntime and the .pt2 agree.
    shape = EXAMPLES[name][2]
    x = torch.randn(3, *shape)
    (by_onnx,) = session.run(None, {info["input"]["name"]: x.numpy()})
    by_pt2 = program.module()(x).detach().numpy()
    assert by_onnx.shape[0] == 3 and np.abs(by_onnx - by_pt2).max() <= 1e-4
    if name == "erfnet":  # per-pixel scores: the output's height and width are the input's, from 16 pixels up
        assert info["output"]["shape"][2:] == ["as the input's dimension 2", "as the input's dimension 3"]
        assert program.module()(torch.randn(1, 3, 16, 24)).shape == (1, 4, 16, 24)


def test_export_json_names_the_preprocessing_and_classes(exps):
    info, session, _ = exported(exps, "mnist")
    assert info["class_names"] == [str(d) for d in range(10)]
    assert info["preprocessing"]["mean"] == [0.1307] and info["preprocessing"]["size"] == [28, 28]
    assert [i.name for i in session.get_inputs()] == [info["input"]["name"]] == ["image"]
    assert info["output"] == {"name": "log_probs", "shape": ["batch", 10], "dtype": "float32"}


@torch.library.custom_op("tests_export::odd", mutates_args=())
def odd(x: torch.Tensor) -> torch.Tensor:
    """An operator of the tests' own, with no ONNX translation."""
    return x * 1


@odd.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class OddNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(odd(x).flatten(1))


class OddAgent(ExampleAgent):
    """The template agent with a network that uses an operator ONNX does not know."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.models.clear()
        self.model = self.prepare_model(OddNet())
        self.optimizer = self.make_optimizer(self.model.parameters())


def test_an_unexportable_network_is_one_line_naming_it_and_its_operator_exit_2(exps, monkeypatch, capsys):
    monkeypatch.setitem(AGENTS, "OddAgent", __name__)
    args = [str(CONFIGS / "example_exp_0.json"), f"experiments_dir={exps}", "agent=OddAgent", *TEMPLATE]
    assert main.main(args) == 0
    capsys.readouterr()
    assert main.main([*args, "mode=export"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: OddNet: cannot export to ONNX: operator tests_export.odd.default has no ONNX translation"
    assert not (exps / "example_exp_0" / "export").exists()


def test_a_mismatch_is_an_error_and_leaves_nothing_written(exps, monkeypatch):
    config, overrides, _ = EXAMPLES["mnist"]
    train(CONFIGS / config, exps, *overrides)
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # any difference, even 0, is now too large
    with pytest.raises(export_module.ExportMismatch, match=r"Mnist: onnxruntime computes other outputs .* batch 1"):
        train(CONFIGS / config, exps, *overrides, "mode=export")
    run = exps / "mnist_exp_0"
    assert not (run / "export").exists() and not list(run.glob(".export*"))


def test_an_earlier_export_is_never_overwritten_and_ddp_is_refused(exps):
    config, overrides, _ = EXAMPLES["example"]
    train(CONFIGS / config, exps, *overrides)
    (exps / "example_exp_0" / "export").mkdir()
    (exps / "example_exp_0" / "export" / "model.onnx").write_text("mine")
    with pytest.raises(UserError, match=r"export/model.onnx: written by an earlier mode=export"):
        train(CONFIGS / config, exps, *overrides, "mode=export")
    assert (exps / "example_exp_0" / "export" / "model.onnx").read_text() == "mine"
    loaded, cls = main.load_config(str(CONFIGS / config), [f"experiments_dir={exps}", *overrides, "mode=export"])
    agent = cls(loaded)
    agent.world_size = 2  # as under torchrun --nproc 2: refused before anything is loaded or written
    try:
        with pytest.raises(UserError, match="mode=export runs in one process; run it without --nproc"):
            agent.run()
    finally:
        agent.finalize()
