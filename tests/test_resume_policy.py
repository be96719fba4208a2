"""What a resume does when the config changed since the checkpoint: each row of utils/run/checkpoint.py's table."""

import json
import math
import signal
import warnings

import pytest

import main
from agents.example import ExampleAgent
from tests.conftest import EXAMPLE, load, train
from tests.test_resume_edges import interrupt_at
from utils.errors import RunInterrupted, UserError

pytestmark = pytest.mark.usefixtures("test_agents_registered")  # DropoutAgent

# 96 random images: 64 to train on, 2 batches of 32 per epoch; SGD, so that the LR is all there is to compare.
SMALL = ["random_size=96", "image_size=8", "hidden=4", "batch_size=32", "torch_threads=1", "log_every=1"]
SMALL += ["optimizer.type=SGD", "optimizer.args.lr=0.1"]
WARMUP_STEP = (
    'scheduler=[{"type": "LinearLR", "args": {"start_factor": 0.5, "total_iters": 2}, "steps": 2},'
    ' {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}]'
)
COSINE = 'scheduler={"type": "CosineAnnealingLR", "args": {"T_max": "total"}}'


def lr(exps, name: str, file: str = "last.pth") -> float:
    return load(exps / name / "checkpoints" / file)["optimizers"]["optimizer"]["param_groups"][0]["lr"]


def log(exps, name: str) -> str:
    return (exps / name / "logs" / "run.log").read_text()


def test_a_new_lr_scales_the_restored_schedule_even_past_a_warm_up_phase(exps, monkeypatch):
    """A 2-epoch warm-up then step decay from 0.1; stopped in the warm-up, resumed with lr=0.01: the LR follows
    the schedule of a run made with 0.01 from the start, past the SequentialLR milestone that restarts the
    second phase from its base LRs."""
    interrupt_at(monkeypatch, epoch=1, batch=1, agent=ExampleAgent)
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, *SMALL, WARMUP_STEP, "exp_name=changed", "max_epoch=4")
    monkeypatch.undo()
    train(EXAMPLE, exps, *SMALL, WARMUP_STEP, "exp_name=changed", "max_epoch=4", "optimizer.args.lr=0.01")
    train(EXAMPLE, exps, *SMALL, WARMUP_STEP, "exp_name=straight", "max_epoch=4", "optimizer.args.lr=0.01")
    assert lr(exps, "changed") == pytest.approx(lr(exps, "straight"), rel=1e-9) == pytest.approx(0.01 * 0.5**2)
    assert "optimizer.args.lr changed since the checkpoint (0.1 -> 0.01)" in log(exps, "changed")


def test_a_scheduler_added_changed_or_removed_on_resume_restarts_at_the_resumed_step(exps):
    step = 'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}'
    exponential = 'scheduler={"type": "ExponentialLR", "args": {"gamma": 0.9}}'
    train(EXAMPLE, exps, *SMALL, "exp_name=run", "max_epoch=1")  # no scheduler
    train(EXAMPLE, exps, *SMALL, step, "exp_name=run", "max_epoch=3")  # added: 2 decays from 0.1
    assert lr(exps, "run") == pytest.approx(0.1 * 0.5**2)
    assert "scheduler added or changed since the checkpoint: it starts afresh here" in log(exps, "run")
    train(EXAMPLE, exps, *SMALL, exponential, "exp_name=run", "max_epoch=5")  # another type: from 0.1 again
    assert lr(exps, "run") == pytest.approx(0.1 * 0.9**2)
    train(EXAMPLE, exps, *SMALL, step, "exp_name=run", "max_epoch=6")  # StepLR again, not the state saved before
    assert lr(exps, "run") == pytest.approx(0.1 * 0.5)
    train(EXAMPLE, exps, *SMALL, "scheduler=null", "exp_name=run", "max_epoch=7")  # removed: the optimizer's lr
    assert lr(exps, "run") == pytest.approx(0.1)
    assert "scheduler removed since the checkpoint" in log(exps, "run")


def test_a_longer_run_stretches_a_total_schedule_to_where_it_would_be(exps):
    """Cosine over "total" epochs: 2 epochs, then raised to 4: the LR after epoch 3 is a 4-epoch cosine's."""
    train(EXAMPLE, exps, *SMALL, COSINE, "exp_name=grown", "max_epoch=2", "checkpoint_every=1")
    train(EXAMPLE, exps, *SMALL, COSINE, "exp_name=grown", "max_epoch=4", "checkpoint_every=1")
    train(EXAMPLE, exps, *SMALL, COSINE, "exp_name=straight", "max_epoch=4", "checkpoint_every=1")
    grown, straight = (lr(exps, n, "epoch_0003.pth") for n in ("grown", "straight"))
    assert grown == pytest.approx(straight) == pytest.approx(0.1 * (1 + math.cos(math.pi * 3 / 4)) / 2)
    assert "rebuilt for the run's new length (4 steps) and advanced to step 2" in log(exps, "grown")


def test_a_step_lr_without_total_is_kept_when_the_run_grows(exps):
    step = 'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}'
    train(EXAMPLE, exps, *SMALL, step, "exp_name=run", "max_epoch=1")
    train(EXAMPLE, exps, *SMALL, step, "exp_name=run", "max_epoch=3")
    assert lr(exps, "run") == pytest.approx(0.1 * 0.5**3)
    assert "scheduler" not in log(exps, "run").split("resumed from")[1].split("epoch 2:")[0]  # no restart, no warning


def test_a_changed_monitor_restarts_best_and_early_stopping(exps):
    args = [*SMALL, "exp_name=mon", "early_stop_patience=5"]
    train(EXAMPLE, exps, *args, "max_epoch=2", "monitor=max valid/accuracy")
    train(EXAMPLE, exps, *args, "max_epoch=3", "monitor=min valid/loss")
    summary = json.loads((exps / "mon" / "summary.json").read_text())
    third = [r.split(",") for r in (exps / "mon" / "metrics.csv").read_text().splitlines()]
    loss_at_3 = float(third[3][third[0].index("valid/loss")])
    assert summary["best"] == {"metric": "valid/loss", "value": pytest.approx(loss_at_3), "epoch": 3}
    assert load(exps / "mon" / "checkpoints" / "best.pth")["epoch"] == 3
    assert "monitor changed since the checkpoint (max valid/accuracy -> min valid/loss)" in log(exps, "mon")


def test_mode_test_ignores_a_changed_optimizer_but_training_refuses_it(exps):
    train(EXAMPLE, exps, *SMALL, "exp_name=opt", "max_epoch=1")
    adam = 'optimizer={"type": "Adam", "args": {"lr": 0.001}}'
    train(EXAMPLE, exps, *SMALL, "exp_name=opt", "mode=test", adam)
    assert "test/accuracy" in json.loads((exps / "opt" / "summary.json").read_text())
    with pytest.raises(UserError, match="checkpoint optimizer 'optimizer' is SGD, the config's is Adam"):
        train(EXAMPLE, exps, *SMALL, "exp_name=opt", "max_epoch=2", adam)


def test_resuming_after_an_epochs_last_step_does_not_warn_of_the_scheduler_order(exps, monkeypatch):
    step = 'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}'
    interrupt_at(monkeypatch, epoch=0, batch=2, agent=ExampleAgent)
    with pytest.raises(RunInterrupted):
        train(EXAMPLE, exps, *SMALL, step, "exp_name=edge", "max_epoch=2")
    monkeypatch.undo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(EXAMPLE, exps, *SMALL, step, "exp_name=edge", "max_epoch=2")
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert lr(exps, "edge") == pytest.approx(0.1 * 0.5**2)


@pytest.mark.parametrize("mode", ["test", "predict"])
def test_a_signal_in_an_evaluation_mode_stops_it_at_once(exps, monkeypatch, mode):
    """Nothing to save: the first Ctrl-C or SIGTERM stops mode=test/predict (it was swallowed before)."""
    train(EXAMPLE, exps, *SMALL, "exp_name=ev", "max_epoch=1")
    reached = []

    def evaluate(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        reached.append("after the signal")  # never: the handler raises
        return {}

    monkeypatch.setattr(ExampleAgent, "validate" if mode == "test" else "predict", evaluate)
    with pytest.raises(RunInterrupted, match=f"stopped by SIGTERM during mode={mode}: nothing to save"):
        train(EXAMPLE, exps, *SMALL, "exp_name=ev", f"mode={mode}")
    assert not reached


def test_early_stopping_on_a_metric_that_is_never_finite_stops_after_saving(exps, monkeypatch):
    monkeypatch.setattr(ExampleAgent, "validate", lambda self: {"valid/loss": math.nan, "valid/accuracy": math.nan})
    train(EXAMPLE, exps, *SMALL, "exp_name=nan", "max_epoch=5", "early_stop_patience=2")
    assert load(exps / "nan" / "checkpoints" / "last.pth")["epoch"] == 2
    assert json.loads((exps / "nan" / "summary.json").read_text())["status"] == "early stopped"
    assert "(it was never a finite number)" in log(exps, "nan")


def test_override_a_list_item_by_its_index_and_errors_name_it_so():
    phases = [*SMALL, WARMUP_STEP]
    config, _ = main.load_config(str(EXAMPLE), [*phases, "scheduler.0.steps=2", "scheduler.1.args.gamma=0.25"])
    assert config.scheduler[0]["steps"] == 2 and config.scheduler[1]["args"]["gamma"] == 0.25
    with pytest.raises(UserError, match=r"key 'scheduler\.0\.steps': must be at least 1"):
        main.load_config(str(EXAMPLE), [*phases, "scheduler.0.steps=0"])
    with pytest.raises(UserError, match="key 'scheduler' is a list of 2: expected an index 0 to 1"):
        main.load_config(str(EXAMPLE), [*phases, "scheduler.2.steps=1"])


class OneStepAgent(ExampleAgent):
    """The template agent without gradient accumulation (as DCGAN and DQN drop it)."""

    config_schema = {k: v for k, v in ExampleAgent.config_schema.items() if k != "accumulate_grad_batches"}


def test_a_common_key_an_agent_does_not_read_is_named_so_not_given_a_did_you_mean():
    agent = "agent=tests.test_resume_policy:OneStepAgent"
    with pytest.raises(UserError, match="key 'accumulate_grad_batches' does not apply to OneStepAgent") as e:
        main.load_config(str(EXAMPLE), [agent, "accumulate_grad_batches=2"])
    assert "did you mean" not in str(e.value) and str(e.value).startswith("command line:")


def test_nproc_evaluation_stopped_by_a_signal_is_130_without_a_checkpoint_claim(monkeypatch, capsys):
    """mode=test has nothing to save: the launcher's "ended before they saved" error is for training only."""
    from utils.training import distributed

    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: 130)
    assert main.main(["--nproc", "2", str(EXAMPLE), "mode=test"]) == 130
    assert "before they saved a checkpoint" not in capsys.readouterr().err
    assert main.main(["--nproc", "2", str(EXAMPLE), "exp_name=never-run"]) == 1  # training: it says so
    assert "before they saved a checkpoint" in capsys.readouterr().err


class GroupsAgent(ExampleAgent):
    """The template agent whose first layer learns at a tenth of the lr (two param groups)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        first, rest = list(self.model.parameters())[:2], list(self.model.parameters())[2:]
        lr = config.optimizer.args.lr
        self.optimizers.clear()
        self.optimizer = self.make_optimizer([{"params": first, "lr": lr / 10}, {"params": rest}])
        self.make_scheduler(self.optimizer)


def group_lrs(exps, name: str) -> list[float]:
    groups = load(exps / name / "checkpoints" / "last.pth")["optimizers"]["optimizer"]["param_groups"]
    return [g["lr"] for g in groups]


@pytest.mark.parametrize("scheduler", ["null", "changed"])
def test_a_new_lr_keeps_the_ratios_of_param_groups(exps, scheduler):
    first = 'scheduler={"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}' if scheduler == "changed" else ""
    then = 'scheduler={"type": "ExponentialLR", "args": {"gamma": 0.9}}' if scheduler == "changed" else ""
    args = [*SMALL, "agent=tests.test_resume_policy:GroupsAgent"]
    train(EXAMPLE, exps, *args, *filter(None, [first]), "exp_name=g", "max_epoch=1")
    train(EXAMPLE, exps, *args, *filter(None, [then]), "exp_name=g", "max_epoch=3", "optimizer.args.lr=0.01")
    train(EXAMPLE, exps, *args, *filter(None, [then]), "exp_name=s", "max_epoch=3", "optimizer.args.lr=0.01")
    if scheduler == "null":
        assert group_lrs(exps, "s") == pytest.approx([0.001, 0.01])
        assert group_lrs(exps, "g") == pytest.approx([0.001, 0.01])
    else:  # restarted at the resume: 2 decays from the new lr, each group at its own ratio
        assert group_lrs(exps, "g") == pytest.approx([0.001 * 0.81, 0.01 * 0.81])


def test_a_new_monitor_restarts_a_plateau_scheduler_that_followed_the_old_one(exps):
    plateau = 'scheduler={"type": "ReduceLROnPlateau", "args": {"patience": 0, "factor": 0.5}}'
    train(EXAMPLE, exps, *SMALL, plateau, "exp_name=p", "max_epoch=1", "monitor=min valid/accuracy")
    train(EXAMPLE, exps, *SMALL, plateau, "exp_name=p", "max_epoch=2", "monitor=min valid/loss")
    assert lr(exps, "p") == pytest.approx(0.1)  # the loss's first value is its first best: no decay
    state = load(exps / "p" / "checkpoints" / "last.pth")["schedulers"]["scheduler"]
    metrics = [r.split(",") for r in (exps / "p" / "metrics.csv").read_text().splitlines()]
    assert state["best"] == pytest.approx(float(metrics[2][metrics[0].index("valid/loss")]))


def test_a_new_lr_under_a_schedule_that_owns_the_lr_is_said_to_have_no_effect(exps):
    one_cycle = 'scheduler={"type": "OneCycleLR", "args": {"max_lr": 0.1, "total_steps": "total"}}'
    args = [*SMALL, one_cycle, "scheduler_interval=step"]
    train(EXAMPLE, exps, *args, "exp_name=o", "max_epoch=1")
    train(EXAMPLE, exps, *args, "exp_name=o", "max_epoch=2", "optimizer.args.lr=0.01")
    train(EXAMPLE, exps, *args, "exp_name=s", "max_epoch=2")
    assert lr(exps, "o") == pytest.approx(lr(exps, "s"))
    assert "optimizer.args.lr changed since the checkpoint, but OneCycleLR sets the LR from its own args" in log(
        exps, "o"
    )


def test_debug_limits_are_said_in_the_log(exps):
    """max_train_batches stays in the run's config.json: every later run of its folder says it is on."""
    train(EXAMPLE, exps, *SMALL, "exp_name=lim", "max_epoch=1", "max_train_batches=1")
    assert "debug limits on: max_train_batches=1" in log(exps, "lim")


def test_a_mistake_found_when_the_agent_is_built_names_the_override_that_made_it(exps, capsys):
    code = main.main([str(EXAMPLE), *SMALL, f"experiments_dir={exps}", "monitor=max valid/top3"])
    assert code == 2 and capsys.readouterr().err.startswith("error: override 'monitor=max valid/top3': key 'monitor'")
