"""Config inheritance ("base": dicts merged key by key, lists replaced) and agents named "package.module:Class"."""

import json
import sys

import pytest

import main
from tests.conftest import EXAMPLE, REPO, train
from utils.errors import UserError

TINY = ["random_size=40", "image_size=8", "hidden=4", "batch_size=16", "torch_threads=1", "max_epoch=1"]


def write(path, **config) -> str:
    path.write_text(json.dumps(config))
    return str(path)


def test_a_chain_of_bases_merges_dicts_replaces_lists_and_the_run_keeps_the_resolved_config(tmp_path, exps):
    warmup = [
        {"type": "LinearLR", "args": {"start_factor": 0.5, "total_iters": 1}, "steps": 1},
        {"type": "StepLR", "args": {"step_size": 1}},
    ]
    middle = write(
        tmp_path / "middle.json", base="configs/example_exp_0.json", optimizer={"args": {"lr": 0.5}}, scheduler=warmup
    )
    child = write(
        tmp_path / "child.json",
        base=middle,
        exp_name="child",
        scheduler={"type": "ExponentialLR", "args": {"gamma": 0.9}},
    )
    config, _ = main.load_config(child, TINY)
    assert config.optimizer == {"type": "Adam", "args": {"lr": 0.5}}  # the type from the repository's config
    assert config.scheduler == {"type": "ExponentialLR", "args": {"gamma": 0.9}}  # the list replaced whole
    assert config.monitor == "max valid/accuracy" and config.exp_name == "child"
    train(child, exps, *TINY)
    saved = json.loads((exps / "child" / "config.json").read_text())
    assert "base" not in saved and saved["optimizer"] == {"type": "Adam", "args": {"lr": 0.5}}


def test_keys_says_which_file_each_value_came_from(tmp_path, capsys):
    child = write(tmp_path / "child.json", base="configs/example_exp_0.json", optimizer={"args": {"lr": 0.5}})
    assert main.main([child, "--keys", "max_epoch=3"]) == 0
    lines = {line.split("=")[0].strip(): line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["optimizer"].endswith(f"[from: configs/example_exp_0.json then {child}]")
    assert lines["monitor"].endswith("[from: configs/example_exp_0.json]")
    assert lines["max_epoch"].endswith("[from: command line]")
    assert lines["seed"].endswith("[default]")


def test_a_cycle_or_a_missing_base_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write(a, base=str(b), exp_name="a")
    write(b, base=str(a))
    assert main.main([str(a)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'base': the configs inherit from each other in a cycle" in err
    write(a, base="configs/nope.json")
    assert main.main([str(a)]) == 2
    assert f"key 'base': {REPO / 'configs' / 'nope.json'}: config file not found" in capsys.readouterr().err
    write(b, exp_name="b")
    write(a, base="b.json")  # named from a's folder, as a newcomer may: the file there is suggested
    assert main.main([str(a)]) == 2
    assert f"from the repository) (did you mean '{b}'?)" in capsys.readouterr().err
    with pytest.raises(UserError, match="key 'base': expected the path of a config file"):
        main.load_config(write(a, base=3))


def test_an_agent_from_outside_the_repository_by_module_and_class(tmp_path, exps, monkeypatch):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "__init__.py").write_text("")
    (tmp_path / "lab" / "agents.py").write_text(
        "from agents.example import ExampleAgent\n\n\nclass WiderAgent(ExampleAgent):\n    marker = 'lab'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config, cls = main.load_config(str(EXAMPLE), ["agent=lab.agents:WiderAgent"])
    assert cls.__name__ == "WiderAgent" and cls.marker == "lab"
    train(EXAMPLE, exps, "agent=lab.agents:WiderAgent", "exp_name=lab", *TINY)
    assert json.loads((exps / "lab" / "summary.json").read_text())["agent"] == "WiderAgent"
    with pytest.raises(UserError, match=r"cannot import 'lab.nope': no module named 'lab.nope' \(is the folder"):
        main.load_config(str(EXAMPLE), ["agent=lab.nope:X"])
    with pytest.raises(UserError, match="lab.agents has no agent class 'WidrAgent' \\(did you mean 'WiderAgent'"):
        main.load_config(str(EXAMPLE), ["agent=lab.agents:WidrAgent"])
    (tmp_path / "lab" / "broken.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(UserError, match="cannot import 'lab.broken': no module named 'not_installed_anywhere'$"):
        main.load_config(str(EXAMPLE), ["agent=lab.broken:X"])
    sys.modules.pop("lab.agents", None)


def test_an_object_of_another_type_replaces_the_bases_whole(tmp_path, capsys):
    sgd = {"type": "SGD", "args": {"lr": 0.1, "momentum": 0.9}}
    base = write(tmp_path / "base.json", base="configs/example_exp_0.json", optimizer=sgd)
    child = write(tmp_path / "child.json", base=base, optimizer={"type": "Adam", "args": {"lr": 0.001}})
    config, _ = main.load_config(child)
    assert config.optimizer == {"type": "Adam", "args": {"lr": 0.001}}  # no SGD momentum merged into Adam
    assert main.main([base, "--keys", "optimizer.args.lr=0.5"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("optimizer ="))
    assert line.endswith(f"[from: {base} then command line]")  # SGD replaced the repository config's Adam whole


def test_a_mistake_in_a_base_is_named_in_the_base_and_one_on_the_command_line_there(tmp_path, capsys):
    base, child = tmp_path / "base.json", tmp_path / "child.json"
    write(base, base=str(EXAMPLE), optimiser={"type": "SGD"})
    write(child, base=str(base), exp_name="c", max_epoch=2)
    assert main.main([str(child)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {base}: unknown key 'optimiser'")
    write(base, base=str(EXAMPLE), optimizer={"args": {"lrr": 0.1}})
    assert main.main([str(child)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {base}: ")  # the nested typo, in the file that has it
    write(child, base=str(base), exp_name="c", optimizer={"args": {"lrr": 0.1}})
    assert main.main([str(child)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {child}: ")  # the child sets it too: the nearest file
    write(base, base=str(EXAMPLE))
    write(child, base=str(base), exp_name="c")
    assert main.main([str(child), "callbacks[0].type=x.Y", 'callbacks=[{"type": "a.B"}]']) == 2
    assert capsys.readouterr().err.startswith("error: override 'callbacks[0].type=x.Y': ")
