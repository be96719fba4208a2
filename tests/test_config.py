"""Every kind of user mistake exits 2 with one line naming the file and key; overrides work."""

import json
import subprocess

import pytest

import main
from tests.conftest import CONFIGS, REPO, cli
from utils.config import apply_overrides, parse_override
from utils.errors import UserError

EXAMPLE = str(CONFIGS / "example_exp_0.json")


def write(tmp_path, text: str | bytes):
    path = tmp_path / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def good(**changes) -> str:
    config = {"exp_name": "t", "agent": "ExampleAgent", "data_mode": "random"}
    config.update(changes)
    return json.dumps(config)


def exit_of(argv, capsys) -> tuple[int, str]:
    code = main.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ('{"exp_name": "t",\n "agent": "ExampleAgent",,}', [], "malformed JSON at line 2 column 26"),
        (good(max_epochs=3), [], "unknown key 'max_epochs' (did you mean 'max_epoch'?)"),
        (good(max_epoch="3"), [], "key 'max_epoch': expected an integer, got str '3'"),
        (good(max_epoch=True), [], "key 'max_epoch': expected an integer, got a boolean"),
        (good(batch_size=0), [], "key 'batch_size': must be at least 1"),
        (good(validate_every=0), [], "key 'validate_every': must be at least 1"),
        ('{"agent": "ExampleAgent"}', [], "missing required key 'exp_name'"),
        ('{"exp_name": "t"}', [], "missing required key 'agent'"),
        (good(agent="ExampleAgnt"), [], "unknown agent 'ExampleAgnt' (did you mean 'ExampleAgent'?)"),
        (good(exp_name="../escape"), [], "key 'exp_name': expected a plain name"),
        (good(exp_name="/tmp/abs"), [], "key 'exp_name': expected a plain name"),
        (good(exp_name=""), [], "key 'exp_name': expected a plain name"),
        (good(data_mode="randm"), [], "key 'data_mode': expected one of"),
        (
            good(optimizer={"type": "Adm", "args": {}}),
            [],
            "unknown optimizer 'Adm' (did you mean",
        ),
        (good(optimizer={"type": "SGD", "args": {"lr": -1}}), [], "key 'optimizer.args': SGD rejected"),
        (
            good(optimizer={"type": "SGD", "args": {"lrr": 1}}),
            [],
            "'optimizer.args.lrr' (did you mean 'lr'?)",
        ),
        (good(scheduler={"type": "StepLr", "args": {}}), [], "unknown lr scheduler 'StepLr' (did you mean 'StepLR'?)"),
        (good(monitor="max valid/acc"), [], "did you mean 'valid/accuracy'"),
        (good(), ["max_epochs=3"], "override 'max_epochs=3': unknown key 'max_epochs' (did you mean 'max_epoch'?)"),
        (good(), ["lr=0.1"], "override 'lr=0.1': unknown key 'lr' (did you mean 'optimizer.args.lr'?)"),
        (
            good(),
            ["optimizer.args.learning_rate=0.1"],
            "unknown key 'optimizer.args.learning_rate' (did you mean 'optimizer.args.lr'?)",
        ),
        (good(), ["agent=example"], "unknown agent 'example' (did you mean 'ExampleAgent'?)"),  # case aside
        (good(), ["agent=ExampleAgnt"], "override 'agent=ExampleAgnt': key 'agent': unknown agent 'ExampleAgnt'"),
        (good(), ["batch_size=0"], "override 'batch_size=0': key 'batch_size': must be at least 1"),
        (good(), ["max_epoch"], "override 'max_epoch': expected key=value"),
        (good(), ["=3"], "override '=3': expected key=value"),
        (good(), ["max_epoch.x=3"], "key 'max_epoch' holds 10, not an object"),
        (good(), ["optimizer.args.lr=abc"], "key 'optimizer.args': SGD rejected"),
        (good(), ["optimizer.args.lr=false"], "key 'optimizer.args.lr': expected a number like 0.001, got false"),
        (
            good(),
            ['optimizer={"type": "Adam"'],
            "the value is not valid JSON (Expecting ',' delimiter at character 15)",
        ),
        (
            good(optimizer={"type": "Adam", "lr": 0.01}),
            [],
            "unknown key 'optimizer.lr' (did you mean 'optimizer.args.lr'?)",
        ),
        (b'{"exp_name": "\xff"}', [], "not UTF-8"),
        ("[1, 2]", [], "expected a JSON object"),
    ],
)
def test_user_mistake_is_one_line_exit_2(tmp_path, capsys, text, overrides, expected):
    path = write(tmp_path, text)
    code, err = exit_of([path, *overrides, f"experiments_dir={tmp_path}"], capsys)
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert path in err or "override" in err


def test_missing_config_file(capsys):
    code, err = exit_of(["configs/nope.json"], capsys)
    assert code == 2 and "configs/nope.json: config file not found" in err
    code, err = exit_of(["configs/example_exp0.json"], capsys)
    assert code == 2 and "not found (did you mean 'configs/example_exp_0.json'?)" in err


def test_a_mistake_of_an_override_names_the_override_not_the_file(tmp_path, capsys):
    path = write(tmp_path, good())
    code, err = exit_of([path, "max_epochs=3", f"experiments_dir={tmp_path}"], capsys)
    assert code == 2 and err.startswith("error: override 'max_epochs=3': unknown key") and path not in err
    path = write(tmp_path, good(max_epochs=3))  # the file's own mistake still names the file
    code, err = exit_of([path, "max_epoch=3", f"experiments_dir={tmp_path}"], capsys)
    assert code == 2 and err.startswith(f"error: {path}: unknown key 'max_epochs'")


def test_a_run_folder_stands_for_its_own_config(tmp_path, capsys):
    """mode=test on a run folder uses the run's overrides (data_mode=random here) without repeating them."""
    overrides = [f"experiments_dir={tmp_path}", "exp_name=folder", "data_mode=random", "random_size=40"]
    assert main.main([str(CONFIGS / "example_exp_0.json"), *overrides, "max_epoch=1"]) == 0
    run = tmp_path / "folder"
    assert main.main([str(run), "mode=test"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "test/accuracy" in summary and summary["epochs"] == 1
    # A run started from another run's checkpoint: its folder still means its own best.pth.
    assert (
        main.main(
            [
                str(CONFIGS / "example_exp_0.json"),
                *overrides[:1],
                "exp_name=child",
                *overrides[2:],
                "max_epoch=2",
                f"resume={run / 'checkpoints' / 'last.pth'}",
            ]
        )
        == 0
    )
    assert main.main([str(tmp_path / "child"), "mode=test"]) == 0
    tested = json.loads((tmp_path / "child" / "summary.json").read_text())["tested_checkpoint"]
    assert tested == str(tmp_path / "child" / "checkpoints" / "best.pth")
    code, err = exit_of([str(tmp_path), "mode=test"], capsys)  # a folder that is no run
    assert code == 2 and "a folder without config.json" in err


def test_missing_data_names_path_and_way_out(tmp_path, capsys):
    code, err = exit_of([EXAMPLE, "data_mode=folder", f"data_root={tmp_path}", f"experiments_dir={tmp_path}"], capsys)
    assert code == 2
    assert str(tmp_path / "example" / "train") in err and "data_mode=random" in err


def test_subprocess_mistake_has_no_traceback():
    result = cli(EXAMPLE, "optimizer.args.betas=fast")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_parse_override_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("x=0.5") == (["x"], 0.5)
    assert parse_override("x=null") == (["x"], None)
    assert parse_override("x=false") == (["x"], False)
    assert parse_override("x=hello") == (["x"], "hello")
    assert parse_override('x={"a": [1]}') == (["x"], {"a": [1]})
    assert parse_override("x=a=b") == (["x"], "a=b")
    assert parse_override("description=[WIP] smaller lr") == (["description"], "[WIP] smaller lr")  # a bare word
    with pytest.raises(UserError, match="not valid JSON"):
        parse_override("x=[1, 2,]")


def test_overrides_reach_the_agent_config():
    config, agent = main.load_config(EXAMPLE, ["max_epoch=3", "optimizer.args.lr=0.05", "scheduler=null"])
    assert agent.__name__ == "ExampleAgent"
    assert config.max_epoch == 3 and config.optimizer.args.lr == 0.05 and config.scheduler is None
    assert config.optimizer.type == "Adam"  # untouched siblings stay
    assert config.num_workers == 0  # defaults filled in


def test_apply_overrides_does_not_mutate_input():
    raw = {"optimizer": {"args": {"lr": 1}}}
    apply_overrides(raw, ["optimizer.args.lr=2"])
    assert raw["optimizer"]["args"]["lr"] == 1


def test_float_key_accepts_int_and_rejects_nan(tmp_path, capsys):
    config, _ = main.load_config(write(tmp_path, good(grad_clip_norm=1)))
    assert config.grad_clip_norm == 1.0 and isinstance(config.grad_clip_norm, float)
    with pytest.raises(UserError, match="grad_clip_norm"):
        main.load_config(write(tmp_path, good()), ["grad_clip_norm=NaN"])


def test_keys_lists_every_key_with_its_value_and_meaning(capsys):
    assert main.main([EXAMPLE, "--keys", "max_epoch=3"]) == 0
    out = capsys.readouterr().out
    assert "  max_epoch = 3  # train until this many epochs are done" in out
    assert "  hidden = 16  # channels of the first convolution" in out
    assert '  optimizer = {"type": "Adam", "args": {"lr": 0.01}}' in out


def test_data_mode_must_be_said_for_agents_with_data(tmp_path, capsys):
    path = write(tmp_path, json.dumps({"exp_name": "t", "agent": "ExampleAgent"}))
    code, err = exit_of([path, f"experiments_dir={tmp_path}"], capsys)
    assert code == 2 and "missing required key 'data_mode'" in err


def test_overrides_can_supply_a_missing_key_or_fix_a_bad_value_in_the_file(tmp_path):
    path = write(tmp_path, json.dumps({"agent": "ExampleAgent", "data_mode": "random", "max_epoch": -1}))
    config, _ = main.load_config(path, ["exp_name=fixed", "max_epoch=2", "optimizer.args.lr=0.5"])
    assert config.exp_name == "fixed" and config.max_epoch == 2
    assert config.optimizer == {"type": "SGD", "args": {"lr": 0.5}}  # the default optimizer, its lr overridden


def test_a_number_given_for_a_string_key_is_that_text():
    config, _ = main.load_config(str(CONFIGS / "example_exp_0.json"), ["exp_name=2024", "description=1.50"])
    assert config.exp_name == "2024" and config.description == "1.50"
    config, _ = main.load_config(str(CONFIGS / "example_exp_0.json"), ["resume=false"])
    assert config.resume is False  # a key that takes true/false keeps it


def test_nproc_config_mistake_is_one_line_before_any_process_starts():
    result = subprocess.run(
        ["./run.sh", "--nproc", "2", str(CONFIGS / "example_exp_0.json"), "max_epoch=-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: override 'max_epoch=-1': key 'max_epoch': must be at least 1, got -1"
    ]
